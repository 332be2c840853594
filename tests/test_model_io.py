"""Model files (lnm_deploy.model.save_model / load_model): safetensors plus architecture JSON.

Round trips give identical outputs and identical NIR exports; pickles are refused without being
run (a payload that would create a marker file never does); garbage gives UserInputError.
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

import lnm_deploy
from lnm_deploy.cli import main
from lnm_deploy.errors import UserInputError
from lnm_deploy.model import (
    LNM,
    LNMSequential,
    RecurrentLNM,
    SumPool2d,
    convert_legacy_model,
    load_model,
    save_model,
)
from lnm_deploy.model.io import FORMAT, VERSION
from lnm_deploy.model.layers import LAYER_TYPES

F64 = torch.float64


def _linear_lnm(degree: int) -> Callable[[], tuple[LNMSequential, tuple[int, ...]]]:
    def build() -> tuple[LNMSequential, tuple[int, ...]]:
        return LNMSequential(nn.Linear(6, 5), LNM(5, degree), nn.Linear(5, 3), LNM(3, degree)), (6,)

    return build


def _per_channel() -> tuple[LNMSequential, tuple[int, ...]]:
    model = LNMSequential(
        nn.Conv2d(1, 3, 3, padding="same"),
        LNM((3, 5, 5), 2, granularity="channel", threshold_granularity="neuron", reset="subtract"),
        nn.Flatten(),
        nn.Linear(75, 4, bias=False),
        LNM(4, 3, granularity="neuron", learn_threshold=False, surrogate="atan", v_lo=-2.0),
    )
    return model, (1, 5, 5)


def _synapse() -> tuple[LNMSequential, tuple[int, ...]]:
    model = LNMSequential({
        "hidden": nn.Linear(6, 5),
        "neurons": LNM(5, 2, synapse=True, alpha=0.7, learn_reset=True, granularity="neuron"),
        "readout": nn.Linear(5, 2),
        "out_lnm": LNM(2, 1, synapse=True, learn_alpha=False, poly_scale=4.0),
    })
    return model, (6,)


def _recurrent() -> tuple[LNMSequential, tuple[int, ...]]:
    model = LNMSequential(
        nn.Linear(6, 5, dtype=F64),
        RecurrentLNM(5, 3, rec_bias=True, synapse=True, dtype=F64),
        nn.Linear(5, 3, dtype=F64),
        RecurrentLNM(3, 1, dtype=F64),
    )
    return model, (6,)


def _conv_pool() -> tuple[LNMSequential, tuple[int, ...]]:
    model = LNMSequential(
        nn.Conv2d(2, 4, 3, stride=1, padding=1),
        LNM((4, 8, 8), 2, granularity="channel"),
        SumPool2d(2),
        nn.Conv2d(4, 4, 3, padding=1, dilation=1, bias=False),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 3),
        LNM(3, 2),
    )
    return model, (2, 8, 8)


ARCHITECTURES = {
    "linear_deg1": _linear_lnm(1),
    "linear_deg2": _linear_lnm(2),
    "linear_deg3": _linear_lnm(3),
    "per_channel": _per_channel,
    "synapse": _synapse,
    "recurrent": _recurrent,
    "conv_pool": _conv_pool,
}


def _randomize(model: LNMSequential, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in model.named_parameters():
            noise = torch.randn(t.shape, generator=g, dtype=F64).to(t.dtype)
            t.add_(0.05 * noise if "theta_raw" in name or "alpha" in name else 0.5 * noise)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_round_trip_same_outputs_and_nir(arch: str, tmp_path: Path) -> None:
    torch.manual_seed(0)  # the layers' initial weights
    model, input_shape = ARCHITECTURES[arch]()
    _randomize(model)
    model.eval()
    path = save_model(model, tmp_path / "m.safetensors")
    loaded = load_model(path)
    assert not loaded.training
    assert [n for n, _ in loaded.named_layers()] == [n for n, _ in model.named_layers()]
    assert [type(m) for _, m in loaded.named_layers()] == [type(m) for _, m in model.named_layers()]
    # The same tensors, as parameters or buffers exactly as before.
    assert [n for n, _ in loaded.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert [n for n, _ in loaded.named_buffers()] == [n for n, _ in model.named_buffers()]
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b), k
    x = 2.0 * torch.rand(3, 12, *input_shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out, rec = model(x, record=True)
        out2, rec2 = loaded(x, record=True)
    assert sum(float(r["s"].sum()) for r in rec.values() if "s" in r) > 0  # spikes to compare
    assert torch.equal(out, out2)
    for layer, r in rec.items():
        for key, v in r.items():
            assert torch.equal(v, rec2[layer][key]), (layer, key)
    lnm_deploy.export(model, tmp_path / "a.nir", input_shape=input_shape)
    lnm_deploy.export(loaded, tmp_path / "b.nir", input_shape=input_shape)
    assert (tmp_path / "a.nir").read_bytes() == (tmp_path / "b.nir").read_bytes()


def test_file_format(tmp_path: Path) -> None:
    model, _ = _linear_lnm(2)()
    path = save_model(model, tmp_path / "m.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["m.safetensors"]  # no temporary file left behind
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["format"] == FORMAT and meta["version"] == VERSION == "2"
    arch = json.loads(meta["architecture"])
    assert [(layer["name"], layer["type"]) for layer in arch["layers"]] == [
        ("fc1", "Linear"), ("lnm1", "LNM"), ("fc2", "Linear"), ("lnm2", "LNM")
    ]
    assert keys == set(model.state_dict())


def test_nan_loads(tmp_path: Path) -> None:
    model, _ = _linear_lnm(1)()
    with torch.no_grad():
        model["fc1"].weight[0, 0] = float("nan")
    loaded = load_model(save_model(model, tmp_path / "m.safetensors"))
    assert torch.isnan(loaded["fc1"].weight[0, 0])


def test_save_rejects_unregistered_layer(tmp_path: Path) -> None:
    model = LNMSequential(nn.Linear(3, 3), nn.ReLU(), LNM(3))
    with pytest.raises(UserInputError, match=r"ReLU cannot be saved.*known: (AdaptiveLNM, )?AvgPool2d, BatchNorm1d, BatchNorm2d, Conv2d"):
        save_model(model, tmp_path / "m.safetensors")
    assert not (tmp_path / "m.safetensors").exists()


def test_save_rejects_mixed_dtypes(tmp_path: Path) -> None:
    model = LNMSequential(nn.Linear(3, 3), LNM(3))
    model["lnm1"].v_th.data = model["lnm1"].v_th.data.double()
    with pytest.raises(UserInputError, match=r"layers.lnm1.v_th has dtype torch.float64"):
        save_model(model, tmp_path / "m.safetensors")


# -- malicious pickles -----------------------------------------------------------------------------
class _Payload:
    """Unpickling this runs ``touch <marker>`` (what an attacker's model file would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _evil_files(tmp_path: Path) -> dict[str, tuple[Path, Path]]:
    files = {}
    for kind in ("pickle", "pickle_protocol2", "torch_zip", "torch_legacy"):
        marker = tmp_path / f"MARKER_{kind}"
        path = tmp_path / f"{kind}.pt"
        payload = {"format": FORMAT, "version": 1, "model": _Payload(marker)}
        if kind == "pickle":
            path.write_bytes(pickle.dumps(payload))
        elif kind == "pickle_protocol2":
            path.write_bytes(pickle.dumps(payload, protocol=2))
        elif kind == "torch_zip":
            torch.save(payload, path)
        else:
            torch.save(payload, path, _use_new_zipfile_serialization=False)
        files[kind] = (path, marker)
    return files


def test_payload_is_live(tmp_path: Path) -> None:
    """Control: the payload does create its marker when unpickled, so its absence below counts."""
    path, marker = _evil_files(tmp_path)["pickle"]
    pickle.loads(path.read_bytes())
    assert marker.exists()


@pytest.mark.parametrize("kind", ["pickle", "pickle_protocol2", "torch_zip", "torch_legacy"])
def test_malicious_pickle_refused_not_run(kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path, marker = _evil_files(tmp_path)[kind]
    with pytest.raises(UserInputError, match=r"never unpickles.*convert_legacy_model"):
        load_model(path)
    assert not marker.exists()
    out = tmp_path / "out.nir"
    rc = main(["export", str(path), "--input-shape", "4", "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "never unpickles" in err and "convert_legacy_model" in err
    assert not marker.exists() and not out.exists()


@pytest.mark.parametrize("kind", ["torch_zip", "torch_legacy"])
def test_convert_legacy_refuses_payload(kind: str, tmp_path: Path) -> None:
    path, marker = _evil_files(tmp_path)[kind]
    with pytest.raises(UserInputError, match="restricted unpickler"):
        convert_legacy_model(path, tmp_path / "m.safetensors")
    assert not marker.exists() and not (tmp_path / "m.safetensors").exists()


def test_convert_legacy_model(tmp_path: Path) -> None:
    model, input_shape = _conv_pool()
    _randomize(model)
    legacy = tmp_path / "model.pt"
    torch.save({"format": FORMAT, "version": 1, "model": model}, legacy)  # what version 1 wrote
    converted = load_model(convert_legacy_model(legacy, tmp_path / "model.safetensors"))
    x = 2.0 * torch.rand(2, 6, *input_shape)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), converted(x))


def test_cli_export(tmp_path: Path) -> None:
    model, _ = _linear_lnm(2)()
    path = save_model(model, tmp_path / "model.safetensors")
    out = tmp_path / "model.nir"
    assert main(["export", str(path), "--input-shape", "6", "--out", str(out)]) == 0
    assert out.exists()


# -- garbage ---------------------------------------------------------------------------------------
def _valid(tmp_path: Path) -> Path:
    model, _ = _linear_lnm(2)()
    return save_model(model, tmp_path / "valid.safetensors")


def _rewrite(src: Path, dst: Path, meta: dict[str, str | None] | None = None,
             tensors: dict[str, torch.Tensor | None] | None = None) -> Path:
    """Copy ``src`` with metadata keys / tensors replaced (None deletes)."""
    with safe_open(str(src), "pt") as f:
        m = dict(f.metadata())
        t = {k: f.get_tensor(k) for k in f.keys()}
    for k, v in (meta or {}).items():
        if v is None:
            m.pop(k, None)
        else:
            m[k] = v
    for k, tv in (tensors or {}).items():
        if tv is None:
            t.pop(k, None)
        else:
            t[k] = tv
    save_file(t, str(dst), metadata=m)
    return dst


def _arch_edit(src: Path, edit: Callable[[dict], None]) -> str:
    with safe_open(str(src), "pt") as f:
        arch = json.loads(f.metadata()["architecture"])
    edit(arch)
    return json.dumps(arch)


def test_random_and_empty_files(tmp_path: Path) -> None:
    for name, data in {
        "empty": b"",
        "short": b"\x01\x02",
        "random": os.urandom(4096),
        "text": b"hello, not a model\n" * 10,
        "npz": b"PK\x05\x06" + bytes(18),
        "json_not_object": (2).to_bytes(8, "little") + b"[]",
    }.items():
        path = tmp_path / name
        path.write_bytes(data)
        with pytest.raises(UserInputError):
            load_model(path)
    # a NumPy archive (the calibration data, say) is named as such: no pointer to the pickle converter
    np.savez(tmp_path / "data.npz", x=np.zeros((2, 3, 4), np.uint8))
    with pytest.raises(UserInputError, match="is a NumPy archive") as e:
        load_model(tmp_path / "data.npz")
    assert "convert_legacy_model" not in str(e.value)


def test_truncated(tmp_path: Path) -> None:
    data = _valid(tmp_path).read_bytes()
    for cut in (4, 12, 100, len(data) // 2, len(data) - 1):
        path = tmp_path / f"cut{cut}.safetensors"
        path.write_bytes(data[:cut])
        with pytest.raises(UserInputError):
            load_model(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match="does not exist"):
        load_model(tmp_path / "nope.safetensors")


@pytest.mark.parametrize(
    ("meta", "match"),
    [
        ({"format": "something.else"}, "format tag 'something.else'"),
        ({"format": None}, "format tag None"),
        ({"version": None}, "no version"),
        ({"version": "1"}, "version '1' is not supported"),
        ({"architecture": None}, "no architecture"),
        ({"architecture": "{not json"}, "not valid JSON"),
        ({"architecture": "[]"}, "architecture must be"),
        ({"architecture": '{"layers": [{"name": "fc1"}]}'}, "name, type, config"),
    ],
)
def test_bad_metadata(meta: dict[str, str | None], match: str, tmp_path: Path) -> None:
    path = _rewrite(_valid(tmp_path), tmp_path / "bad.safetensors", meta=meta)
    with pytest.raises(UserInputError, match=match):
        load_model(path)


def test_plain_safetensors_without_metadata(tmp_path: Path) -> None:
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(UserInputError, match="not an lnm-deploy model"):
        load_model(path)


def test_unknown_layer_type(tmp_path: Path) -> None:
    src = _valid(tmp_path)

    def edit(arch: dict) -> None:
        arch["layers"][1]["type"] = "os.system"

    path = _rewrite(src, tmp_path / "bad.safetensors", meta={"architecture": _arch_edit(src, edit)})
    known = ", ".join(sorted(LAYER_TYPES))
    with pytest.raises(UserInputError, match=rf"lnm1.*unknown layer type 'os.system' \(known: {known}\)"):
        load_model(path)


@pytest.mark.parametrize(
    ("layer", "key", "value", "match"),
    [
        (1, "degree", "2", "'degree' must be an integer"),
        (1, "degree", 7, "degree must be 1, 2 or 3"),
        (1, "reset", "explode", "'reset' must be one of"),
        (1, "dtype", "int64", "'dtype' must be one of"),
        (1, "shape", [5, "x"], "'shape' must be a list of integers"),
        (1, "bogus", 1, r"unknown keys \['bogus'\]"),
        (0, "in_features", -1, "invalid config"),
        (0, "bias", 1, "'bias' must be true or false"),
    ],
)
def test_bad_layer_config(layer: int, key: str, value: object, match: str, tmp_path: Path) -> None:
    src = _valid(tmp_path)

    def edit(arch: dict) -> None:
        arch["layers"][layer]["config"][key] = value

    path = _rewrite(src, tmp_path / "bad.safetensors", meta={"architecture": _arch_edit(src, edit)})
    with pytest.raises(UserInputError, match=match):
        load_model(path)


def test_missing_config_key(tmp_path: Path) -> None:
    src = _valid(tmp_path)
    path = _rewrite(src, tmp_path / "bad.safetensors",
                    meta={"architecture": _arch_edit(src, lambda a: a["layers"][1]["config"].pop("synapse"))})
    with pytest.raises(UserInputError, match="LNM config lacks 'synapse'"):
        load_model(path)


def test_duplicate_and_reserved_names(tmp_path: Path) -> None:
    src = _valid(tmp_path)

    def dup(arch: dict) -> None:
        arch["layers"][2]["name"] = "fc1"

    path = _rewrite(src, tmp_path / "dup.safetensors", meta={"architecture": _arch_edit(src, dup)})
    with pytest.raises(UserInputError, match="'fc1' is used twice"):
        load_model(path)

    def reserved(arch: dict) -> None:
        arch["layers"][0]["name"] = "input"

    path = _rewrite(src, tmp_path / "res.safetensors", meta={"architecture": _arch_edit(src, reserved)})
    with pytest.raises(UserInputError, match="reserved or invalid"):
        load_model(path)


@pytest.mark.parametrize(
    ("tensors", "match"),
    [
        ({"layers.fc1.weight": torch.zeros(5, 7)}, r"layers.fc1.weight has shape \(5, 7\).*\(5, 6\)"),
        ({"layers.fc1.weight": torch.zeros(5, 6, dtype=F64)}, "layers.fc1.weight has dtype torch.float64"),
        ({"layers.lnm1.v_th": None}, "missing: layers.lnm1.v_th"),
        ({"layers.lnm1.extra": torch.zeros(1)}, "unexpected tensor.*layers.lnm1.extra"),
    ],
)
def test_tensor_mismatch(tensors: dict[str, torch.Tensor | None], match: str, tmp_path: Path) -> None:
    path = _rewrite(_valid(tmp_path), tmp_path / "bad.safetensors", tensors=tensors)
    with pytest.raises(UserInputError, match=match):
        load_model(path)


def test_model_file_starting_like_a_pickle_loads(tmp_path: Path) -> None:
    """A real model file whose header length begins with 0x80 0x02..0x05 is not taken for a pickle."""
    model = LNMSequential(nn.Linear(2, 2))
    ref = save_model(model, tmp_path / "ref.safetensors")
    with safe_open(str(ref), "pt") as f:
        meta = dict(f.metadata())
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = tmp_path / "padded.safetensors"
    for pad in range(1200):
        save_file(tensors, str(path), metadata={**meta, "note": "x" * pad})
        head = path.read_bytes()[:2]
        if head[0] == 0x80 and 2 <= head[1] <= 5:
            break
    else:
        pytest.fail("no padding gave a pickle-like first two bytes")
    loaded = load_model(path)
    assert torch.equal(loaded["fc1"].weight, model["fc1"].weight)


def test_every_layer_type_loads_in_a_fresh_interpreter(tmp_path: Path) -> None:
    """``load_model`` and ``export`` read every layer type ``save_model`` writes without the caller
    importing the module that defines it (the poisson demo's AdaptiveLNM model was refused as an
    unknown layer type unless ``lnm_deploy.model.adaptive`` happened to be imported)."""
    import subprocess
    import sys

    from lnm_deploy.model.adaptive import AdaptiveLNM

    model = LNMSequential(nn.Linear(3, 4), AdaptiveLNM(4, 2, theta_decay=0.9, theta_step=0.2))
    path = save_model(model, tmp_path / "adaptive.safetensors")
    code = ("import sys\nfrom lnm_deploy.model import load_model\nfrom lnm_deploy.cli import main\n"
            "m = load_model(sys.argv[1])\nprint(*[type(x).__name__ for x in m.modules()])\n"
            "sys.exit(main(['export', sys.argv[1], '--input-shape', '3', '--out', sys.argv[2]]))\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(lnm_deploy.__file__).parents[1]),
                                                        *filter(None, [os.environ.get("PYTHONPATH")])])}
    out = subprocess.run([sys.executable, "-c", code, str(path), str(tmp_path / "a.nir")], env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "AdaptiveLNM" in out.stdout.split()
    assert (tmp_path / "a.nir").exists()


def test_security_doc_lists_every_layer_type() -> None:
    """docs/security.md's allow-list of layer types is the registry's (it had fallen behind)."""
    import re

    text = (Path(__file__).parents[1] / "docs" / "security.md").read_text()
    start = text.index("allow-list of layer types (")
    listed = set(re.findall(r"`(\w+)`", text[start : text.index("LAYER_TYPES", start)]))
    assert listed == set(LAYER_TYPES), (sorted(listed), sorted(LAYER_TYPES))
