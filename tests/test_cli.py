"""The command line as a user meets it: outputs, exit codes, one-line errors, no partial files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import h5py
import nir
import numpy as np
import pytest

from lnm_deploy.cli import main
from lnm_deploy.execute import run_float
from lnm_deploy.ir import Affine, Neuron, sequential
from lnm_deploy.nir_io import read_nir, write_nir


@pytest.fixture
def graph_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    g = sequential(
        [
            ("fc1", Affine(weight=rng.normal(0, 1.0, (12, 6)), bias=rng.normal(0, 0.1, 12))),
            ("lnm1", Neuron(shape=(12,), poly=[0.0, 0.9, 0.05], v_th=1.0, dt=1e-3)),
            ("fc2", Affine(weight=rng.normal(0, 1.0, (4, 12)))),
            ("lnm2", Neuron(shape=(4,), poly=[0.0, 0.8], v_th=0.5, reset="subtract", syn_decay=0.5, dt=1e-3)),
        ],
        (6,),
        metadata={"trained_on": "digits"},
    )
    path = tmp_path / "g.nir"
    write_nir(g, path)
    return path


@pytest.fixture
def data_file(tmp_path: Path) -> Path:
    rng = np.random.default_rng(1)
    path = tmp_path / "x.npz"
    np.savez(path, x=(rng.random((5, 30, 6)) < 0.4).astype(np.uint8), y=rng.integers(0, 4, 5))
    return path


def test_inspect_text_and_json(graph_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(graph_file)]) == 0
    out = capsys.readouterr().out
    for expected in ("lnm1", "neuron", "(12,) -> (12,)", "degree: 2", "trained_on: digits", "fc2"):
        assert expected in out
    assert main(["inspect", str(graph_file), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    names = [n["name"] for n in doc["nodes"]]
    assert names == ["input", "fc1", "lnm1", "fc2", "lnm2", "output"]
    lnm2 = doc["nodes"][4]
    assert lnm2["params"]["dynamics"]["synapse"] is True
    assert lnm2["params"]["dynamics"]["reset"] == "subtract"


def test_run_float_writes_output_and_layer_spikes(graph_file: Path, data_file: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.npz"
    assert main(["run", str(graph_file), "--data", str(data_file), "--backend", "float",
                 "--out", str(out), "--states", "--quiet"]) == 0
    assert "accuracy" in capsys.readouterr().out
    z = np.load(out)
    x = np.load(data_file)["x"]
    ref = run_float(read_nir(graph_file), x, record=True)
    assert z["output"].shape == (5, 30, 4)
    assert np.array_equal(z["output"], ref.output)
    assert np.array_equal(z["spikes/lnm1"], ref.spikes["lnm1"])
    assert np.array_equal(z["v/lnm2"], ref.states["lnm2"]["v"])
    assert "c/lnm2" in z.files and "c/lnm1" not in z.files
    assert z["spikes/lnm1"].sum() > 0

    # An existing output is kept unless --force.
    before = out.read_bytes()
    assert main(["run", str(graph_file), "--data", str(data_file), "--out", str(out), "--quiet"]) == 2
    assert "exists; pass --force" in capsys.readouterr().err
    assert out.read_bytes() == before
    assert main(["run", str(graph_file), "--data", str(data_file), "--out", str(out), "--quiet", "--force"]) == 0


@pytest.mark.parametrize(
    ("make_data", "code", "message"),
    [
        (lambda p: np.savez(p, x=np.zeros((5, 30, 7))), 2, r"\(samples, timesteps, 6\)"),
        (lambda p: np.savez(p, y=np.zeros(3)), 2, "no array 'x'"),
        (lambda p: p.write_text("not an npz"), 2, "not a readable .npz"),
        (lambda p: np.savez(p, x=np.zeros((5, 30, 6)), y=np.zeros(4)), 2, r"'y' must be shaped \(5,\)"),
        (lambda p: np.savez(p, x=np.full((5, 30, 6), np.nan)), 2, "NaN"),
    ],
)
def test_run_bad_data_is_one_line_and_leaves_nothing(graph_file: Path, tmp_path: Path, make_data, code: int,
                                                     message: str, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "bad.npz"
    make_data(data)
    out = tmp_path / "out.npz"
    assert main(["run", str(graph_file), "--data", str(data), "--out", str(out), "--quiet"]) == code
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert re.search(message, err), err
    assert not out.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_graph_errors_have_distinct_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tmp_path / "missing.nir")]) == 2
    assert "does not exist" in capsys.readouterr().err

    text = tmp_path / "text.nir"
    text.write_text("hello")
    assert main(["inspect", str(text)]) == 2

    # A graph with a node type NIR has but we do not support: exit 4, naming the node.
    g = nir.NIRGraph(
        nodes={"input": nir.Input(np.array([3])), "d": nir.Delay(np.ones(3)), "output": nir.Output(np.array([3]))},
        edges=[("input", "d"), ("d", "output")],
    )
    path = tmp_path / "delay.nir"
    nir.write(path, g)
    assert main(["inspect", str(path)]) == 4
    assert "'d'" in capsys.readouterr().err

    # NaN weights: exit 5, naming the node.
    g = nir.NIRGraph(
        nodes={"input": nir.Input(np.array([3])), "fc": nir.Linear(np.full((2, 3), np.nan)),
               "output": nir.Output(np.array([2]))},
        edges=[("input", "fc"), ("fc", "output")],
    )
    path = tmp_path / "nan.nir"
    nir.write(path, g)
    assert main(["inspect", str(path)]) == 5
    assert "'fc'" in capsys.readouterr().err


def test_console_script_prints_no_traceback(tmp_path: Path) -> None:
    exe = Path(sys.executable).with_name("lnm-deploy")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "lnm_deploy.cli"]
    p = subprocess.run([*cmd, "inspect", str(tmp_path / "nope.nir")], capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.startswith("lnm-deploy inspect: error:") and "Traceback" not in p.stderr
    p = subprocess.run([*cmd, "--help"], capture_output=True, text=True)
    assert p.returncode == 0 and "inspect" in p.stdout and "run" in p.stdout


def test_hdf5_without_graph(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "empty.nir"
    with h5py.File(path, "w") as f:
        f.create_dataset("something", data=np.zeros(3))
    assert main(["inspect", str(path)]) in (2, 3)
    err = capsys.readouterr().err
    assert "empty.nir" in err and "Traceback" not in err


def test_broken_pipe_is_quiet(tmp_path: Path) -> None:
    """`lnm-deploy inspect G.nir | head -1`: no traceback when the reader leaves early."""
    import subprocess
    import sys

    from lnm_deploy.ir import Affine, Input, Neuron, Output, sequential

    g = sequential([("fc", Affine(weight=np.ones((3, 2)))), ("n", Neuron(shape=(3,), poly=[0.0, 0.9], v_th=1.0))],
                   (2,))
    assert isinstance(g.nodes["input"], Input) and isinstance(g.nodes["output"], Output)
    from lnm_deploy.nir_io import write_nir

    write_nir(g, tmp_path / "g.nir")
    # `true` exits at once: the pipe is closed long before lnm-deploy (seconds of imports) writes.
    p = subprocess.run(f"{sys.executable} -m lnm_deploy.cli inspect {tmp_path / 'g.nir'} | true",
                       shell=True, capture_output=True, text=True)
    assert p.stderr == "", p.stderr


def test_version_is_defined_once_per_file_and_agrees() -> None:
    """``lnm_deploy._version`` (what the package reports) and pyproject.toml (what pip installs)."""
    import tomli

    import lnm_deploy
    from lnm_deploy._version import __version__

    project = tomli.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    assert lnm_deploy.__version__ == __version__ == project["version"]
