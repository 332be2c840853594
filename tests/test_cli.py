"""The command line as a user meets it: outputs, exit codes, one-line errors, no partial files."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import warnings
from pathlib import Path

import h5py
import nir
import numpy as np
import pytest

from lnm_deploy.cli import main
from lnm_deploy.errors import LNMDeployWarning
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


# --------------------------------------------------------------------- reading options on the CLI


@pytest.fixture
def lif_file(tmp_path: Path) -> Path:
    """A generic NIR graph (Input 6 -> Affine -> LIF 4 -> Output), thresholds 0.5, 0.3, 1.0 and 0.8:
    the reading options (``--v-floor`` ...) apply to it, unlike lnm-deploy's own graphs."""
    rng = np.random.default_rng(2)
    n = 4
    g = nir.NIRGraph(nodes={
        "input": nir.Input(input_type={"input": np.array([6])}),
        "fc": nir.Affine(weight=rng.normal(0, 1.0, (n, 6)), bias=np.zeros(n)),
        "lif": nir.LIF(tau=np.full(n, 1e-2), r=np.full(n, 10.0), v_leak=np.zeros(n),
                       v_threshold=np.array([0.5, 0.3, 1.0, 0.8]), v_reset=np.zeros(n)),
        "output": nir.Output(output_type={"output": np.array([n])}),
    }, edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")])
    path = tmp_path / "lif.nir"
    nir.write(path, g)
    return path


def _reading_cmd(command: str, graph: Path, data: Path, out: Path) -> list[str]:
    tail = ["--target", "loihi2", "--data", str(data), "--out", str(out), "--quiet"] if command == "calibrate" else []
    return [command, str(graph), "--producer", "generic", "--dt", "1e-3", *tail]


@pytest.mark.filterwarnings("ignore::lnm_deploy.errors.LNMDeployWarning")
@pytest.mark.parametrize("command", ["inspect", "calibrate"])
@pytest.mark.parametrize("floor", ["0.3", "0.4", "2"])
def test_a_v_floor_at_or_above_a_threshold_is_refused(command: str, floor: str, lif_file: Path, data_file: Path,
                                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A floor at or above a neuron's v_th would hold it at its threshold after every reset (a spike
    every step): refused at reading, by inspect exactly as by calibrate, naming the layer, the floor
    and the smallest threshold; nothing is written."""
    out = tmp_path / "art.nir"
    assert main([*_reading_cmd(command, lif_file, data_file, out), "--v-floor", floor]) == 2
    err = capsys.readouterr().err
    assert f"lnm-deploy {command}: error: node 'lif': the membrane floor v_floor={float(floor)!r}" in err
    assert "the smallest v_th is 0.3" in err and "give a floor below 0.3" in err
    assert not out.exists()


@pytest.mark.filterwarnings("ignore::lnm_deploy.errors.LNMDeployWarning")
def test_a_v_floor_below_every_threshold_is_read(lif_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(lif_file), "--producer", "generic", "--v-floor", "0.29"]) == 0
    assert "membrane floor 0.29" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::lnm_deploy.errors.LNMDeployWarning")
def test_v_floor_minus_v_th_is_refused_where_a_threshold_is_not_positive(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    g = nir.NIRGraph(nodes={
        "input": nir.Input(input_type={"input": np.array([2])}),
        "fc": nir.Affine(weight=np.eye(2), bias=np.zeros(2)),
        "lif": nir.LIF(tau=np.full(2, 1e-2), r=np.ones(2), v_leak=np.zeros(2), v_threshold=np.array([0.0, 0.5]),
                       v_reset=np.zeros(2)),
        "output": nir.Output(output_type={"output": np.array([2])}),
    }, edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")])
    nir.write(tmp_path / "g.nir", g)
    assert main(["inspect", str(tmp_path / "g.nir"), "--producer", "generic", "--v-floor", "-v_th"]) == 2
    err = capsys.readouterr().err
    assert "node 'lif': the membrane floor v_floor=-v_th" in err and "neuron (0,): floor -0.0, v_th 0.0" in err


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1e400"])
@pytest.mark.parametrize("joined", [False, True])
def test_a_non_finite_v_floor_is_a_usage_error(value: str, joined: bool, lif_file: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    given = [f"--v-floor={value}"] if joined else ["--v-floor", value]
    with pytest.raises(SystemExit) as e:
        main(["inspect", str(lif_file), *given])
    assert e.value.code == 2
    assert f"argument --v-floor: v_floor={value!r}: give a finite number" in capsys.readouterr().err


@pytest.mark.filterwarnings("ignore::lnm_deploy.errors.LNMDeployWarning")
@pytest.mark.parametrize(("value", "shown"), [("-1e30", "-1e+30"), ("-2.5", "-2.5"), ("-.5", "-0.5"),
                                              ("-1E+3", "-1000.0"), ("-v_th", "-v_th")])
@pytest.mark.parametrize("joined", [False, True])
def test_a_negative_v_floor_in_any_form(value: str, shown: str, joined: bool, lif_file: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """``--v-floor -1e30`` as well as ``--v-floor=-1e30``: argparse alone reads -1e30 as an option."""
    given = [f"--v-floor={value}"] if joined else ["--v-floor", value]
    assert main(["inspect", str(lif_file), "--producer", "generic", *given]) == 0
    assert f"membrane floor {shown}; options given: producer=generic, v_floor={shown}" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::lnm_deploy.errors.LNMDeployWarning")
def test_calibrate_takes_a_negative_v_floor_in_exponent_form(lif_file: Path, data_file: Path, tmp_path: Path) -> None:
    from lnm_deploy.artifact import read_artifact

    out = tmp_path / "art.nir"
    assert main([*_reading_cmd("calibrate", lif_file, data_file, out), "--v-floor", "-1e3"]) == 0
    requested = read_artifact(out).record["provenance"]["source_graph"]["read_options"]["requested"]
    assert requested["v_floor"] == -1000.0


@pytest.mark.parametrize(("option", "value", "says"), [
    ("--dt", "-1e-3", "argument --dt: dt (seconds per step) must be > 0, got -0.001"),
    ("--spikes", "-1e3", "argument --spikes: spikes='-1e3': choose one of"),
    ("--max-accuracy-drop", "-1e-3", "argument --max-accuracy-drop:"),
    ("--min-agreement", "-inf", "argument --min-agreement:"),
])
def test_other_options_read_a_negative_value_and_refuse_it_by_its_rule(option: str, value: str, says: str,
                                                                       lif_file: Path,
                                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """A negative number in any float form reaches the option's own check (its message), not argparse's
    'expected one argument'."""
    command = "verify" if option in ("--max-accuracy-drop", "--min-agreement") else "inspect"
    extra = ["--data", "x.npz"] if command == "verify" else []
    with pytest.raises(SystemExit) as e:
        main([command, str(lif_file), *extra, option, value])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert says in err and "expected one argument" not in err


def test_an_option_is_not_taken_for_a_value(lif_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["inspect", str(lif_file), "--v-floor", "--json"])
    assert e.value.code == 2
    assert "argument --v-floor: expected one argument" in capsys.readouterr().err


def test_a_spike_count_option_beyond_32_bits_is_a_usage_error(lif_file: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    for value in ("18446744073709551616", "2147483648"):
        with pytest.raises(SystemExit) as e:
            main(["inspect", str(lif_file), "--producer", "generic", "--spikes", value])
        assert e.value.code == 2
        assert "argument --spikes" in capsys.readouterr().err
    assert main(["inspect", str(lif_file), "--producer", "generic", "--spikes", "2147483647"]) == 0


def test_reading_options_on_an_artifact_are_ignored_with_a_warning(lif_file: Path, data_file: Path, tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """An artifact's float model is read as it was calibrated: a --readout-node (or a spike rule) given
    with it must not change the float model alone (the integers cannot follow), and says so."""
    art = tmp_path / "art.nir"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LNMDeployWarning)
        assert main(_reading_cmd("calibrate", lif_file, data_file, art)) == 0
    outs = {}
    for name, extra in (("plain", []), ("given", ["--readout-node", "lif", "--v-floor", "5", "--spikes", "3"])):
        out = tmp_path / f"{name}.npz"
        capsys.readouterr()
        assert main(["run", str(art), "--data", str(data_file), "--backend", "float", "--out", str(out),
                     "--quiet", *extra]) == 0
        said = [line for line in capsys.readouterr().err.splitlines() if "ignored" in line]
        assert bool(said) == bool(extra), said
        if extra:
            assert "readout_nodes=['lif']" in said[0] and "v_floor=5.0" in said[0], said
        with np.load(out) as f:
            outs[name] = {k: f[k] for k in f.files}
    assert outs["plain"].keys() == outs["given"].keys()
    for k in outs["plain"]:
        assert np.array_equal(outs["plain"][k], outs["given"][k]), k


@pytest.mark.parametrize("argv", [
    ["inspect", ""], ["run", "{g}", "--data", "{d}", "--out", ""], ["run", "{g}", "--data", "", "--out", "o.npz"],
    ["calibrate", "{g}", "--data", "{d}", "--target", "loihi2", "--out", ""],
    ["calibrate", "{g}", "--data", "{d}", "--target", "loihi2", "--out", "a.nir", "--report-dir", " "],
    ["verify", "{g}", "--data", "{d}", "--json", ""], ["compile", "{g}", "--out", ""], ["demo", "--out", ""],
    ["inspect", "{g}", "--resources", "--target", ""],
    ["calibrate", "{g}", "--data", "{d}", "--target", "loihi2", "--recipe", " ", "--out", "a.nir"]])
def test_an_empty_path_is_a_usage_error(argv: list[str], lif_file: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """An empty path option named the current directory (``calibrate --out ""`` was a traceback); an
    empty --target was taken as not given."""
    d = tmp_path / "d.npz"
    np.savez(d, x=np.zeros((1, 2, 2), np.uint8))
    args = [a.format(g=lif_file, d=d) for a in argv]
    with pytest.raises(SystemExit) as e:
        main(args)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert ("empty: name a file or directory" in err or "empty: give a shipped name or a .toml path" in err), err


@pytest.mark.parametrize("command", ["run", "calibrate"])
def test_data_of_the_wrong_shape_names_the_file(command: str, lif_file: Path, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "five.npz"
    np.savez(data, x=np.zeros((3, 4, 5), np.uint8))
    extra = ["--backend", "float"] if command == "run" else ["--target", "loihi2"]
    code = main([command, str(lif_file), "--producer", "generic", "--data", str(data), *extra,
                 "--out", str(tmp_path / "o.nir"), "--quiet"])
    assert code == 2
    assert f"x in {data} must be shaped (samples, timesteps, 6), got (3, 4, 5)" in capsys.readouterr().err


@pytest.mark.parametrize("out", [".", "./", "/"])
def test_calibrate_out_a_directory_is_a_usage_error(out: str, lif_file: Path, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """``calibrate --out .`` was a traceback: the report directory was named after --out before
    --out was checked."""
    d = tmp_path / "d.npz"
    np.savez(d, x=np.zeros((1, 2, 6), np.uint8))
    code = main(["calibrate", str(lif_file), "--producer", "generic", "--data", str(d), "--target", "loihi2",
                 "--out", out, "--quiet"])
    assert code == 2
    assert f"{out.rstrip('/') or '/'} is a directory; --out must name a file" in capsys.readouterr().err


def test_an_unknown_option_is_reported_by_its_command(lif_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as e:
        main(["inspect", str(lif_file), "--nope", "1"])
    assert e.value.code == 2
    assert capsys.readouterr().err == ("lnm-deploy inspect: error: unrecognized arguments: --nope 1 "
                                       "(lnm-deploy inspect --help lists the options)\n")
