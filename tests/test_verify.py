"""``verify``: Lava against fxsim bit for bit, float against fixed point, the JSON and HTML reports,
and the exit codes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from artifact_files import calibrated_files

from lnm_deploy.artifact import read_artifact, write_artifact
from lnm_deploy.cli import main
from lnm_deploy.ir import Affine, Graph, Input, Neuron, Output
from lnm_deploy.nir_io import write_nir
from lnm_deploy.verify import verify


def _net(seed: int = 0) -> Graph:
    """input(12) -> fc1 -> lnm1 (degree 2, recurrent) -> fc2 -> lnm2 (degree 2): spiking, not saturated."""
    rng = np.random.default_rng(seed)
    return Graph(
        nodes={
            "input": Input(shape=(12,)),
            "fc1": Affine(weight=rng.normal(0.15, 0.5, (16, 12)), bias=rng.normal(0, 0.05, 16)),
            "lnm1": Neuron(shape=(16,), poly=[0.0, 0.85, 0.03], v_th=1.0),
            "rec": Affine(weight=rng.normal(0, 0.3, (16, 16))),
            "fc2": Affine(weight=rng.normal(0.1, 0.6, (4, 16))),
            "lnm2": Neuron(shape=(4,), poly=[0.0, 0.7, 0.01], v_th=0.8, reset="subtract"),
            "output": Output(),
        },
        edges=[("input", "fc1"), ("fc1", "lnm1"), ("lnm1", "rec"), ("rec", "lnm1"), ("lnm1", "fc2"),
               ("fc2", "lnm2"), ("lnm2", "output")],
    )


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return calibrated_files(tmp_path_factory.mktemp("verify"), _net(), samples=40, test=6)


@pytest.mark.lava
def test_verify_lava_bit_exact_and_report_fields(files: dict[str, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    js, page = tmp_path / "r.json", tmp_path / "r.html"
    code = main(["verify", str(files["art"]), "--data", str(files["test"]), "--backend", "lava",
                 "--json", str(js), "--html", str(page), "--max-accuracy-drop", "1", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    doc = json.loads(js.read_text())
    assert doc["target"] == "loihi2" and doc["samples"] == 6 and doc["timesteps"] == 24
    assert doc["passed"] is True
    assert {"accuracy"} <= set(doc["float"]) and {"accuracy"} <= set(doc["fixed"])
    lava = doc["backends"]["lava"]
    assert lava["bit_exact"] is True and lava["mismatched_spikes"] == 0
    assert lava["compared_spikes"] == 6 * 24 * (16 + 4)
    names = [layer["name"] for layer in doc["layers"]]
    assert names == ["lnm1", "lnm2"]
    for layer in doc["layers"]:
        assert set(layer) == {"name", "spike_agreement", "rate_float", "rate_fixed"}
        assert 0 < layer["rate_float"] < 1 and 0 < layer["rate_fixed"] < 1
    assert "first_divergence" in doc
    # The page works offline: every image inline, no external resource.
    text = page.read_text()
    assert "data:image/png;base64," in text
    assert not re.search(r"""(src|href)=["']https?://""", text)
    assert "PASSED" in text and "lnm1" in text


def test_verify_api_compares_every_layer_and_explains_divergence(files: dict[str, Path]) -> None:
    z = np.load(files["test"])
    res = verify(files["art"], z["x"], z["y"], backends=(), progress=False)
    assert res.float_source == str(files["float"])  # found through the artifact's provenance
    assert [layer.name for layer in res.layers] == ["lnm1", "lnm2"]
    if res.first_divergence is not None:
        d = res.first_divergence
        assert {"layer", "sample", "timestep", "neuron", "cause"} <= set(d)
        assert not d["cause"].startswith("undetermined"), d
    # The divergence really is the earliest differing spike.
    ref, fixed = res.runs["float"], res.runs["fxsim"]
    diffs = [(int(np.argwhere(ref.spikes[n] != fixed.spikes[n])[:, 1].min()), i)
             for i, n in enumerate(["lnm1", "lnm2"]) if np.any(ref.spikes[n] != fixed.spikes[n])]
    if diffs:
        assert res.first_divergence is not None and res.first_divergence["timestep"] == min(diffs)[0]


def test_verify_fails_with_exit_1_and_bad_input_exits_2(files: dict[str, Path], tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    # A float model that is another network: without labels, fixed point must predict its class on
    # every sample (--min-agreement 1), which it does not.
    other, nolabels = tmp_path / "other.nir", tmp_path / "nolabels.npz"
    write_nir(_net(seed=7), other)
    np.savez(nolabels, x=np.load(files["test"])["x"])
    assert main(["verify", str(files["art"]), "--data", str(nolabels), "--backend", "fxsim",
                 "--float", str(other), "--min-agreement", "1", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and "NOT as calibrated" in out
    # Out-of-range thresholds are usage errors (exit 2), not a failed check.
    for bad_arg in (["--max-accuracy-drop", "-1"], ["--max-accuracy-drop", "nan"], ["--backend-samples", "0"],
                    ["--backend-samples", "-1"], ["--min-agreement", "2"]):
        with pytest.raises(SystemExit) as e:
            main(["verify", str(files["art"]), "--data", str(files["test"]), *bad_arg, "--quiet"])
        assert e.value.code == 2, bad_arg
    capsys.readouterr()
    assert main(["verify", str(files["float"]), "--data", str(files["test"]), "--quiet"]) == 2
    assert "not a calibrated artifact" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.full((2, 24, 12), 0.5))
    assert main(["verify", str(files["art"]), "--data", str(bad), "--backend", "lava", "--quiet",
                 "--json", str(tmp_path / "r.json")]) == 2
    assert "binary spikes" in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


def test_artifact_round_trip_keeps_integers(files: dict[str, Path]) -> None:
    art = read_artifact(files["art"])
    assert art.target == "loihi2"
    assert art.record["provenance"]["source_graph"]["path"] == str(files["float"].resolve())
    # Writing it again gives an identical integer network.
    again = files["dir"] / "again.nir"
    write_artifact(art, again)
    art2 = read_artifact(again)
    for name, node in art.fx.nodes.items():
        other = art2.fx.nodes[name]
        for f in ("weight", "coef", "vth", "bias_mant"):
            if hasattr(node, f):
                assert np.array_equal(getattr(node, f), getattr(other, f)), (name, f)


def test_compile_onnx_and_verify_onnx_bit_exact(files: dict[str, Path], tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    assert main(["compile", str(files["art"]), "--backend", "onnx", "--out", str(model)]) == 0
    assert model.stat().st_size > 0
    assert main(["compile", str(files["art"]), "--out", str(model)]) == 2  # exists, no --force
    js = tmp_path / "r.json"
    assert main(["verify", str(files["art"]), "--data", str(files["test"]), "--backend", "onnx",
                 "--json", str(js), "--max-accuracy-drop", "1", "--quiet"]) == 0
    onnx = json.loads(js.read_text())["backends"]["onnx"]
    assert onnx["bit_exact"] is True and onnx["compared_spikes"] == 6 * 24 * 20


def test_data_without_any_input_is_warned_about(tmp_path: Path) -> None:
    """All-zero data passes every check there is (the network's biases still drive it), so the
    verdict and the scales say nothing about the network on real input: a warning says so."""
    from lnm_deploy.calibrate import calibrate_network, load_recipe
    from lnm_deploy.errors import LNMDeployWarning
    from lnm_deploy.targets import load_target

    f = calibrated_files(tmp_path, _net(), samples=12, test=4)
    zeros = np.zeros_like(f["x"])
    with pytest.warns(LNMDeployWarning, match=r"calibration data holds no input at all \(its 12 samples"):
        calibrate_network(f["graph"], zeros, load_target("loihi2"), load_recipe("default"), progress=False)
    with pytest.warns(LNMDeployWarning, match=r"verification data holds no input at all \(its 4 samples"):
        verify(f["art"], zeros[:4], backends=("fxsim",), progress=False)
    import warnings

    with warnings.catch_warnings():  # real data: no such warning
        warnings.simplefilter("error", LNMDeployWarning)
        verify(f["art"], f["x"][:4], backends=("fxsim",), progress=False)
