"""The input-validation layer (``lnm_deploy.validate``) and the bad inputs it was written for: the
API refuses what the CLI refuses, with the same message, and every bad file is a typed error that
names the file (or node) and the fix."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path
from typing import Any

import h5py
import nir
import numpy as np
import pytest

import lnm_deploy
from lnm_deploy import validate
from lnm_deploy.calibrate import calibrate_network
from lnm_deploy.calibrate.pipeline import check_spikes
from lnm_deploy.cli import main
from lnm_deploy.errors import GraphError, NumericError, UserInputError
from lnm_deploy.fileio import read_dataset
from lnm_deploy.ir import Affine, Neuron, sequential
from lnm_deploy.metrics import accuracy
from lnm_deploy.nir_io import from_nir, read_nir, write_nir
from lnm_deploy.targets import load_target

RNG = np.random.default_rng(11)


def float_graph() -> Any:
    return sequential(
        [
            ("fc1", Affine(weight=RNG.normal(0, 1.0, (8, 6)), bias=RNG.normal(0, 0.1, 8))),
            ("n1", Neuron(shape=(8,), poly=[0.0, 0.9], v_th=1.0, dt=1e-3)),
            ("fc2", Affine(weight=RNG.normal(0, 1.0, (3, 8)))),
            ("n2", Neuron(shape=(3,), poly=[0.0, 0.8], v_th=0.5, dt=1e-3)),
        ],
        (6,),
    )


def spikes(n: int = 6, t: int = 12, shape: tuple[int, ...] = (6,)) -> np.ndarray:
    return (RNG.random((n, t, *shape)) < 0.4).astype(np.uint8)


def lif_nir(**kw: Any) -> nir.NIRGraph:
    p: dict[str, Any] = {"tau": np.full(4, 1e-3), "r": np.full(4, 1.0), "v_leak": np.zeros(4),
                         "v_threshold": np.ones(4)}
    p.update(kw)
    return nir.NIRGraph(
        nodes={"input": nir.Input(np.array([3])), "fc": nir.Linear(weight=RNG.normal(size=(4, 3))),
               "lif": nir.LIF(**p), "output": nir.Output(np.array([4]))},
        edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")],
    )


@pytest.fixture
def graph_file(tmp_path: Path) -> Path:
    path = tmp_path / "g.nir"
    write_nir(float_graph(), path)
    return path


def run_cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


# ------------------------------------------------------------------------------------------------
# The validators


@pytest.mark.parametrize("x", [
    np.array([[[0, 1]]], dtype=bool), np.array([[[0, 1]]], dtype=np.int16),
    np.array([[[0.0, 1.0]]]), [[[0, 1]]],
])
def test_spikes_accepts_exact_zero_one(x: Any) -> None:
    out = validate.spikes(x, (2,))
    assert out.dtype == np.uint8 and out.tolist() == [[[0, 1]]]


@pytest.mark.parametrize("x, message", [
    (np.array([[[0.5, 1.0]]]), "binary spikes"),
    (np.array([[[np.nan, 1.0]]]), "binary spikes"),
    (np.array([[[0, 1j]]]), "real numeric"),
    (np.array([[[0, 1]]], dtype=object), "real numeric"),
    (np.array([[["0", "1"]]]), "real numeric"),
    (np.zeros((0, 3, 2)), "empty"),
    (np.zeros((2, 3, 3)), r"shaped \(samples, timesteps, 2\)"),
])
def test_spikes_refuses(x: Any, message: str) -> None:
    with pytest.raises(UserInputError, match=message):
        validate.spikes(x, (2,))


def test_check_spikes_still_importable_from_the_pipeline() -> None:
    g = float_graph()
    assert check_spikes(spikes(), g).dtype == np.uint8
    with pytest.raises(UserInputError, match="calibration data"):
        check_spikes(np.full((1, 2, 6), 2), g)


def test_labels() -> None:
    assert validate.labels([0, 2, 1.0], 3, 3).tolist() == [0, 2, 1]
    for y, message in [([0, 3, 1], "< 3"), ([0, -1, 1], ">= 0"), ([0, 1.5, 1], "whole numbers"),
                       ([0, 1], r"shaped \(3,\)"), (["a", "b", "c"], "integer class"),
                       ([0, np.nan, 1], "whole numbers")]:
        with pytest.raises(UserInputError, match=message):
            validate.labels(y, 3, 3)


def test_accuracy_validates_labels() -> None:
    out = np.zeros((2, 4, 3))
    out[0, :, 1] = 1
    assert accuracy(out, np.array([1, 0])) == 1.0
    with pytest.raises(UserInputError, match="< 3"):
        accuracy(out, np.array([1, 7]))
    with pytest.raises(UserInputError, match="whole numbers"):
        accuracy(out, np.array([1.0, 0.5]))


def test_shape_option_and_scalars() -> None:
    assert validate.shape_option(64) == (64,)
    assert validate.shape_option("2,34,34") == validate.shape_option("2x34x34") == (2, 34, 34)
    assert validate.shape_option([2, np.int64(3)]) == (2, 3)
    for bad in ("", "a,b", 0, (2, 0), 2.5, (2.0, 3), True, None):
        with pytest.raises(UserInputError, match="--input-shape"):
            validate.shape_option(bad)
    assert validate.positive_int(3, "n") == 3 and validate.positive_int(3.0, "n") == 3
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(UserInputError, match=r"n must"):
            validate.positive_int(bad, "n")
    assert validate.finite_float(2, "d") == 2.0
    for bad, kw in ((np.nan, {}), (np.inf, {}), ("1", {}), (0.0, {"positive": True})):
        with pytest.raises(UserInputError, match="d must"):
            validate.finite_float(bad, "d", **kw)


def test_backends() -> None:
    assert validate.backends("onnx") == ("onnx",)
    assert validate.backends(["lava", "onnx", "lava"]) == ("lava", "onnx")
    assert validate.backends(()) == ()
    with pytest.raises(UserInputError, match=r"'float'.*integer backends"):
        validate.backends("float")
    assert validate.backends("float", integer_only=False) == ("float",)
    with pytest.raises(UserInputError, match="'onx'"):
        validate.backends(["onx"])
    with pytest.raises(UserInputError, match="backend name"):
        validate.backends(3)  # type: ignore[arg-type]


def test_target_and_recipe_coercion(tmp_path: Path) -> None:
    t = load_target("loihi2")
    assert validate.target(t) is t and validate.target("loihi2").name == "loihi2"
    assert validate.recipe(None).name == validate.recipe("default").name == "default"
    with pytest.raises(UserInputError, match="unknown target 'nope'"):
        validate.target("nope")
    with pytest.raises(UserInputError, match="target must be a Target"):
        validate.target(3)
    with pytest.raises(UserInputError, match="recipe must be a Recipe"):
        validate.recipe(3.0)


# ------------------------------------------------------------------------------------------------
# The API accepts what the CLI accepts, and refuses what it refuses


def test_run_float_refuses_zero_samples_and_complex() -> None:
    g = float_graph()
    with pytest.raises(UserInputError, match="empty"):
        lnm_deploy.run_float(g, np.zeros((0, 5, 6)))
    with pytest.raises(UserInputError, match="empty"):
        lnm_deploy.run_float(g, np.zeros((2, 0, 6)))
    with pytest.raises(UserInputError, match="complex"):
        lnm_deploy.run_float(g, np.zeros((2, 5, 6), dtype=complex))
    assert lnm_deploy.run_float(g, np.full((1, 3, 6), 0.25)).output.shape == (1, 3, 3)  # currents: fine


def test_calibrate_and_verify_accept_names_and_single_backend() -> None:
    from lnm_deploy.verify import verify

    g, x = float_graph(), spikes(8, 10)
    res = calibrate_network(g, x, "loihi2", "default", y=RNG.integers(0, 3, 8), progress=False)
    assert res.report["target"] == "loihi2"
    with pytest.raises(UserInputError, match="calibration labels must be < 3"):
        calibrate_network(g, x, "loihi2", "default", y=np.full(8, 5), progress=False)
    with pytest.raises(UserInputError, match="unknown target"):
        calibrate_network(g, x, "no-such-chip", "default", progress=False)
    with pytest.raises(UserInputError, match="IR Graph"):
        calibrate_network("g.nir", x, "loihi2", "default", progress=False)
    with pytest.raises(UserInputError, match="not available"):  # calibrated from no file: say which float model
        verify(res.artifact, x, backends="fxsim", progress=False)
    out = verify(res.artifact, x, backends="fxsim", float_graph=g, progress=False, min_agreement=0)
    assert list(out.backends) == ["fxsim"] and out.backends["fxsim"].bit_exact
    with pytest.raises(UserInputError, match="'float'"):
        verify(res.artifact, x, backends="float", progress=False)
    with pytest.raises(UserInputError, match="backend_samples"):
        verify(res.artifact, x, backends="fxsim", backend_samples=0, progress=False)
    with pytest.raises(UserInputError, match="max_accuracy_drop"):
        verify(res.artifact, x, backends="fxsim", max_accuracy_drop=float("nan"), progress=False)


def test_export_accepts_an_int_shape_and_names_the_option() -> None:
    torch = pytest.importorskip("torch")
    from lnm_deploy.model import LNM, LNMSequential

    model = LNMSequential(torch.nn.Linear(64, 4), LNM(4, 1))
    g = lnm_deploy.export(model, input_shape=64)
    assert isinstance(g, nir.NIRGraph)
    with pytest.raises(UserInputError, match=r"--input-shape.*does not fit") as e:
        lnm_deploy.export(model, input_shape=(2, 32))
    assert "Flatten" not in str(e.value)
    with pytest.raises(UserInputError, match="--input-shape"):
        lnm_deploy.export(model, input_shape="sixty-four")


# ------------------------------------------------------------------------------------------------
# Graph files


def test_no_input_is_a_malformed_graph(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(GraphError, match="no Input"):
        from_nir(nir.NIRGraph(nodes={}, edges=[]))
    path = tmp_path / "noin.nir"
    nir.write(path, lif_nir())
    with h5py.File(path, "r+") as f:
        del f["node/nodes/input"], f["node/edges"]
        f["node"].create_dataset("edges", data=np.array([[b"fc", b"lif"], [b"lif", b"output"]]))
    code, err = run_cli(["inspect", str(path)], capsys)
    assert code == 3 and "no Input" in err


def test_wrong_input_shape_option_is_bad_usage(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "lif.nir"
    nir.write(path, lif_nir())
    code, err = run_cli(["inspect", str(path), "--dt", "1e-4", "--input-shape", "5"], capsys)
    assert code == 2 and "--input-shape" in err and "'fc'" in err and "Flatten" not in err
    assert main(["inspect", str(path), "--dt", "1e-4", "--input-shape", "3"]) == 0
    with pytest.raises(SystemExit) as e:  # not a shape at all: argparse, exit 2
        main(["inspect", str(path), "--input-shape", "3,a"])
    assert e.value.code == 2


@pytest.mark.parametrize("field, value, cls", [
    ("tau", -1e-3, GraphError), ("tau", 0.0, NumericError), ("r", -2.0, GraphError), ("r", 0.0, GraphError),
    ("v_threshold", np.nan, NumericError), ("v_leak", np.inf, NumericError),
])
def test_nonsensical_neuron_parameters_are_refused(field: str, value: float, cls: type) -> None:
    vals = np.full(4, 1e-3 if field == "tau" else 1.0)
    vals[2] = value
    with pytest.raises(cls, match=f"'{field}'") as e:
        from_nir(lif_nir(**{field: vals}), dt=1e-4)
    assert e.value.node == "lif"


def test_cuba_negative_tau_syn(capsys: pytest.CaptureFixture[str]) -> None:
    g = nir.NIRGraph(
        nodes={"input": nir.Input(np.array([2])),
               "n": nir.CubaLIF(tau_mem=np.full(2, 1e-3), tau_syn=np.array([1e-3, -1e-3]), r=np.ones(2),
                                v_leak=np.zeros(2), v_threshold=np.ones(2)),
               "output": nir.Output(np.array([2]))},
        edges=[("input", "n"), ("n", "output")],
    )
    with pytest.raises(GraphError, match="'tau_syn' is negative") as e:
        from_nir(g, dt=1e-4)
    assert e.value.node == "n"


def test_output_without_shape_is_inferred(tmp_path: Path) -> None:
    path = tmp_path / "g.nir"
    nir.write(path, lif_nir())
    with h5py.File(path, "r+") as f:
        del f["node/nodes/output/shape"]
    g = read_nir(path, dt=1e-4)
    assert g.schedule().shapes["output"] == (4,)


def test_input_without_shape_names_node_and_option(tmp_path: Path) -> None:
    path = tmp_path / "g.nir"
    nir.write(path, lif_nir())
    with h5py.File(path, "r+") as f:
        del f["node/nodes/input/shape"]
    with pytest.raises(GraphError, match=r"no shape.*input_shape") as e:
        read_nir(path, dt=1e-4)
    assert e.value.node == "input"
    assert read_nir(path, dt=1e-4, input_shape=(3,)).input_shape == (3,)


def test_truncated_hdf5_is_typed(tmp_path: Path) -> None:
    path = tmp_path / "g.nir"
    write_nir(float_graph(), path)
    raw = path.read_bytes()
    for cut in (len(raw) // 4, len(raw) // 2, len(raw) - 100):
        bad = tmp_path / f"cut{cut}.nir"
        bad.write_bytes(raw[:cut])
        with pytest.raises((UserInputError, GraphError)) as e:
            read_nir(bad)
        assert str(bad) in str(e.value)


# ------------------------------------------------------------------------------------------------
# Data files


def test_npy_renamed_npz(tmp_path: Path, graph_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "x.npz"
    with open(path, "wb") as f:
        np.save(f, spikes())
    with pytest.raises(UserInputError, match=r"x\.npz is not a readable \.npz file \(a \.npy file\)"):
        read_dataset(path)
    code, err = run_cli(["run", str(graph_file), "--data", str(path), "--out", str(tmp_path / "o.npz")], capsys)
    assert code == 2 and "x.npz" in err and "Traceback" not in err


def test_complex_data_is_refused(tmp_path: Path, graph_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.npz"
    np.savez(path, x=spikes().astype(complex))
    with pytest.raises(UserInputError, match="complex"):
        read_dataset(path)
    code, err = run_cli(["run", str(graph_file), "--data", str(path), "--out", str(tmp_path / "o.npz")], capsys)
    assert code == 2 and "c.npz" in err


def test_bad_labels_in_a_data_file(tmp_path: Path, graph_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "d.npz"
    np.savez(path, x=spikes(), y=np.array([0, 1, 2, 9, 1, 0]))
    code, err = run_cli(["run", str(graph_file), "--data", str(path), "--out", str(tmp_path / "o.npz")], capsys)
    assert code == 2 and "< 3" in err and not (tmp_path / "o.npz").exists()
    np.savez(path, x=spikes(), y=np.array([0, 1, 2, 0.5, 1, 0]))
    with pytest.raises(UserInputError, match="whole numbers"):
        read_dataset(path)


def _npz_declaring(path: Path, shape: tuple[int, ...]) -> None:
    """An .npz whose 'x' header declares ``shape`` (float64) but holds (almost) no data."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": shape})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x.npy", header.getvalue() + b"\0" * 64)


def test_declared_size_is_checked_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "bomb.npz"
    _npz_declaring(path, (10**6, 10**4, 10**3))  # 80 PB
    with pytest.raises(UserInputError, match=r"bomb\.npz.*'x' declares shape.*LNM_DEPLOY_MAX_DATA_BYTES"):
        read_dataset(path)
    small = tmp_path / "small.npz"
    np.savez(small, x=spikes())  # 6 * 12 * 6 bytes
    monkeypatch.setenv("LNM_DEPLOY_MAX_DATA_BYTES", "100")
    with pytest.raises(UserInputError, match="above the limit of 100 bytes"):
        read_dataset(small)
    monkeypatch.setenv("LNM_DEPLOY_MAX_DATA_BYTES", "1e6")
    assert read_dataset(small)[0].shape == (6, 12, 6)
    for bad in ("lots", "nan", "0", "-1"):
        monkeypatch.setenv("LNM_DEPLOY_MAX_DATA_BYTES", bad)
        with pytest.raises(UserInputError, match="LNM_DEPLOY_MAX_DATA_BYTES"):
            read_dataset(small)
    for bad in ("inf", "1e400"):  # OverflowError in int(float(...)) before
        monkeypatch.setenv("LNM_DEPLOY_MAX_DATA_BYTES", bad)
        with pytest.raises(UserInputError, match="not a finite number of bytes"):
            read_dataset(small)


# ------------------------------------------------------------------------------------------------
# Target and recipe files


@pytest.mark.parametrize("option", ["--target", "--recipe"])
def test_binary_toml_is_user_input_error(tmp_path: Path, graph_file: Path, option: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    junk = tmp_path / "junk.toml"
    junk.write_bytes(bytes(range(256)) * 4)
    data = tmp_path / "d.npz"
    np.savez(data, x=spikes())
    target = str(junk) if option == "--target" else "loihi2"
    recipe = str(junk) if option == "--recipe" else "default"
    args = ["calibrate", str(graph_file), "--data", str(data), "--target", target, "--recipe", recipe,
            "--out", str(tmp_path / "a.nir"), "--quiet"]
    code, err = run_cli(args, capsys)
    assert code == 2 and "junk.toml" in err and "UTF-8" in err


def test_a_data_file_that_is_no_npz_says_what_it_is(tmp_path: Path) -> None:
    from lnm_deploy.validate import npz_dataset

    cases = {"empty.npz": b"", "text.npz": b"hello\n", "hdf5.npz": b"\x89HDF\r\n\x1a\n" + bytes(8),
             "cut.npz": b"PK\x03\x04" + bytes(40)}
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
    np.save(tmp_path / "a.npy", np.zeros(3))
    (tmp_path / "a.npy").rename(tmp_path / "npy.npz")
    for name, kind in (("empty.npz", "an empty file"), ("text.npz", "not a zip archive"),
                       ("hdf5.npz", "an HDF5 file, a .nir graph?"), ("npy.npz", "a .npy file"),
                       ("cut.npz", "a truncated zip archive")):
        with pytest.raises(UserInputError, match=rf"{name} is not a readable \.npz file \({re.escape(kind)}\)"):
            npz_dataset(tmp_path / name)
