"""What ``verify`` must establish before it says PASSED (issue: verdicts you can trust).

Each test rebuilds a case where an earlier ``verify`` printed PASSED (or crashed) without checking
what it claimed: a float model re-read with other conventions than at calibration, labels that are
not class indices, thresholds that are not fractions, a missing float graph, a tampered artifact,
and a report that claimed more samples than a backend compared.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nir
import numpy as np
import pytest
from test_verify import _net

from lnm_deploy.artifact import read_artifact, write_artifact
from lnm_deploy.calibrate.compare import compare_spikes
from lnm_deploy.cli import main
from lnm_deploy.errors import GraphError, LNMDeployWarning, UserInputError
from lnm_deploy.execute import run_float
from lnm_deploy.fxsim import run_fx
from lnm_deploy.nir_io import read_nir, write_nir
from lnm_deploy.verify import verify


def _spikes(n: int, t: int, k: int, p: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random((n, t, k)) < p).astype(np.uint8)


def _by_hand(graph_path: Path, art_path: Path, x: np.ndarray, **read_kw: object) -> dict[str, float]:
    """``run --backend float`` (with the reading options) against ``run --backend fxsim``, per layer."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LNMDeployWarning)
        ref = run_float(read_nir(graph_path, **read_kw), x)  # type: ignore[arg-type]
    fx = run_fx(read_artifact(art_path).fx, x)
    layers = [n for n in fx.spikes if n in ref.spikes]
    return {n: c.agreement for n, c in compare_spikes(ref.spikes, fx.spikes, layers).items()}


def _norse_graph(path: Path) -> None:
    """A Norse 1.1.0 LIFBox -> LIF network written by Norse's own ``to_nir`` (tau = dt/tau_inv)."""
    torch = pytest.importorskip("torch")
    norse = pytest.importorskip("norse.torch")
    from norse.torch.functional.lif import LIFParameters
    from norse.torch.functional.lif_box import LIFBoxParameters
    from norse.torch.module.lif_box import LIFBoxCell

    torch.manual_seed(0)
    z = {"dtype": torch.float64}
    lin1 = torch.nn.Linear(10, 12, bias=False).double()
    lin2 = torch.nn.Linear(12, 6, bias=False).double()
    with torch.no_grad():
        lin1.weight.mul_(40.0)
        lin2.weight.mul_(20.0)
    box = LIFBoxCell(LIFBoxParameters(tau_mem_inv=torch.full((12,), 150.0, **z), v_th=torch.full((12,), 0.6, **z),
                                      v_leak=torch.zeros(12, **z), v_reset=torch.zeros(12, **z),
                                      method="heaviside"))
    lif = norse.LIFCell(LIFParameters(tau_syn_inv=torch.full((6,), 200.0, **z),
                                      tau_mem_inv=torch.full((6,), 100.0, **z), v_th=torch.full((6,), 0.3, **z),
                                      v_leak=torch.zeros(6, **z), v_reset=torch.zeros(6, **z), method="heaviside"))
    g = norse.to_nir(norse.SequentialState(lin1, box, lin2, lif), torch.zeros(1, 10, dtype=torch.float64))
    nir.write(path, g)


def _if_graph(path: Path) -> None:
    """A generic NIR integrator network (IF neurons): its dynamics depend on dt (r dt per input)."""
    rng = np.random.default_rng(3)
    g = nir.NIRGraph(
        nodes={
            "input": nir.Input(input_type=np.array([8])),
            "fc1": nir.Linear(weight=rng.normal(0.25, 0.4, (10, 8))),
            "if1": nir.IF(r=np.full(10, 1.0), v_threshold=np.full(10, 1.0), v_reset=np.zeros(10)),
            "fc2": nir.Linear(weight=rng.normal(0.2, 0.5, (4, 10))),
            "if2": nir.IF(r=np.full(4, 1.0), v_threshold=np.full(4, 1.0), v_reset=np.zeros(4)),
            "output": nir.Output(output_type=np.array([4])),
        },
        edges=[("input", "fc1"), ("fc1", "if1"), ("if1", "fc2"), ("fc2", "if2"), ("if2", "output")],
    )
    nir.write(path, g)


def _calibrate(graph: Path, calib: Path, art: Path, *opts: str, target: str = "loihi2") -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LNMDeployWarning)
        code = main(["calibrate", str(graph), "--data", str(calib), "--target", target, "--out", str(art),
                     "--quiet", *opts])
    assert code == 0


@pytest.mark.parametrize("case", ["norse", "if-dt1"])
def test_verify_reloads_the_float_model_as_calibrated(case: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """verify must report what comparing ``run --backend float`` (with the calibration's reading
    options) against ``run --backend fxsim`` by hand gives: not a re-read at dt = 1e-4 s."""
    src, art, js = tmp_path / "g.nir", tmp_path / "art.nir", tmp_path / "r.json"
    if case == "norse":
        _norse_graph(src)
        opts, read_kw, k = ["--producer", "norse"], {"producer": "norse"}, 10
    else:
        _if_graph(src)
        opts, read_kw, k = ["--dt", "1"], {"dt": 1.0}, 8
    x = _spikes(24, 30, k, 0.3, 1)
    np.savez(tmp_path / "calib.npz", x=x)
    np.savez(tmp_path / "test.npz", x=x[:8])
    _calibrate(src, tmp_path / "calib.npz", art, *opts)
    rec = read_artifact(art).record["provenance"]["source_graph"]["read_options"]
    assert rec["requested"] == {"producer": read_kw.get("producer"), "dt": read_kw.get("dt"), "input_shape": None}
    main(["verify", str(art), "--data", str(tmp_path / "test.npz"), "--backend", "fxsim", "--json", str(js),
          "--min-agreement", "0", "--quiet"])
    doc = json.loads(js.read_text())
    assert doc["float"]["as_calibrated"] is True
    hand = _by_hand(src, art, x[:8], **read_kw)
    assert {layer["name"]: layer["spike_agreement"] for layer in doc["layers"]} == hand
    # What the old verify did (generic reading at the default dt) gives another answer.
    wrong = _by_hand(src, art, x[:8])
    assert wrong != hand
    capsys.readouterr()


def test_verify_option_that_contradicts_the_record_warns_and_is_shown(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    src, art, _ = tmp_path / "g.nir", tmp_path / "art.nir", None
    _if_graph(src)
    x = _spikes(16, 20, 8, 0.3, 2)
    np.savez(tmp_path / "calib.npz", x=x)
    _calibrate(src, tmp_path / "calib.npz", art, "--dt", "1")
    with pytest.warns(LNMDeployWarning, match="contradicts the artifact's record"):
        res = verify(art, x, backends=(), dt=0.5, progress=False, min_agreement=0)
    assert res.float_model["as_calibrated"] is False
    assert any("contradicts" in n for n in res.float_model["notes"])
    assert res.float_model["read_options"]["resolved"]["dt"] == 0.5
    # the input shape calibration resolved (not asked for): no contradiction, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error", LNMDeployWarning)
        res = verify(art, x, backends=(), input_shape=(8,), progress=False, min_agreement=0)
    assert res.float_model["as_calibrated"] is True and not any("contradicts" in n for n in res.float_model["notes"])


def test_reading_options_on_an_lnm_deploy_graph_are_said_ignored_once(tmp_path: Path) -> None:
    """lnm-deploy's own graphs carry their dt, shape and spike rules: verify's --dt/--producer are
    ignored, said once (it said 'read with 0.002' and then 'dt=0.002 ignored')."""
    from lnm_deploy.ir import Affine, Neuron, sequential
    from lnm_deploy.nir_io import write_nir

    rng = np.random.default_rng(0)
    src = tmp_path / "own.nir"
    write_nir(sequential([("fc", Affine(weight=rng.normal(0.3, 0.5, (6, 8)))),
                          ("n", Neuron(shape=(6,), poly=[0.0, 0.9], v_th=0.8, dt=1e-3))], (8,)), src)
    x = _spikes(12, 20, 8, 0.3, 4)
    np.savez(tmp_path / "calib.npz", x=x)
    _calibrate(src, tmp_path / "calib.npz", tmp_path / "a.nir")
    for kw, said in (({"dt": 0.002}, "--dt 0.002 ignored"), ({"producer": "snntorch"}, "--producer snntorch ignored")):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", LNMDeployWarning)
            res = verify(tmp_path / "a.nir", x, backends=(), progress=False, min_agreement=0, **kw)
        msgs = [str(w.message) for w in caught if issubclass(w.category, LNMDeployWarning)]
        assert [m for m in msgs if "ignored" in m or "contradicts" in m] == [m for m in msgs if said in m], msgs
        assert len([m for m in msgs if said in m]) == 1 and res.float_model["as_calibrated"] is True
        assert any(said in n for n in res.float_model["notes"])


def test_an_artifact_mixed_from_two_calibrations_is_refused(tmp_path: Path) -> None:
    """The integer network of one calibration (v > v_th) under the record and dequantized graph of
    another (v >= v_th): the float model would judge another network than the one that runs (it
    once passed, both against the source graph and against --float dequantized)."""
    from lnm_deploy.artifact import Artifact

    src = tmp_path / "g.nir"
    _if_graph(src)
    x = _spikes(16, 20, 8, 0.3, 2)
    np.savez(tmp_path / "calib.npz", x=x)
    _calibrate(src, tmp_path / "calib.npz", tmp_path / "ge.nir", "--dt", "1", "--threshold", ">=")
    _calibrate(src, tmp_path / "calib.npz", tmp_path / "gt.nir", "--dt", "1")
    _calibrate(src, tmp_path / "calib.npz", tmp_path / "gs.nir", "--dt", "1", "--reset", "subtract")
    ge, gt, gs = (read_artifact(tmp_path / f"{k}.nir") for k in ("ge", "gt", "gs"))
    for float_graph in (None, "dequantized"):
        verify(ge, x, backends=(), float_graph=float_graph, progress=False, min_agreement=0)  # each is whole
        mixed = Artifact(graph=ge.graph, fx=gt.fx, record=ge.record)
        with pytest.raises(GraphError, match=r"node 'if1': spike test v > v_th in the integer network, v >= v_th in"):
            verify(mixed, x, backends=(), float_graph=float_graph, progress=False, min_agreement=0)
        mixed = Artifact(graph=gt.graph, fx=gs.fx, record=gt.record)  # subtractive reset under reset-to-value
        with pytest.raises(GraphError, match=r"node 'if1': reset subtract in the integer network, value in"):
            verify(mixed, x, backends=(), float_graph=float_graph, progress=False, min_agreement=0)


def test_missing_float_graph_is_an_error_unless_the_opt_out_is_explicit(tmp_path: Path,
                                                                         capsys: pytest.CaptureFixture[str]) -> None:
    src, art, js = tmp_path / "g.nir", tmp_path / "art.nir", tmp_path / "r.json"
    write_nir(_net(), src)
    x = _spikes(16, 20, 12, 0.35, 3)
    y = np.arange(16) % 4
    np.savez(tmp_path / "calib.npz", x=x)
    np.savez(tmp_path / "test.npz", x=x, y=y)
    _calibrate(src, tmp_path / "calib.npz", art)
    src.unlink()
    assert main(["verify", str(art), "--data", str(tmp_path / "test.npz"), "--backend", "fxsim",
                 "--json", str(js), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "is not available" in err and "--float dequantized" in err
    assert not js.exists()
    # The explicit opt-out runs, and the verdict says what was compared.
    assert main(["verify", str(art), "--data", str(tmp_path / "test.npz"), "--backend", "fxsim",
                 "--float", "dequantized", "--json", str(js), "--max-accuracy-drop", "1", "--quiet"]) == 0
    doc = json.loads(js.read_text())
    assert doc["float"]["opt_out"] is True and doc["float"]["as_calibrated"] is False
    assert "OPT-OUT" in capsys.readouterr().out
    # A changed source graph is refused too (its SHA-256 differs from the record).
    write_nir(_net(seed=4), src)
    assert main(["verify", str(art), "--data", str(tmp_path / "test.npz"), "--backend", "fxsim", "--quiet"]) == 2
    assert "changed since calibration" in capsys.readouterr().err


@pytest.fixture(scope="module")
def art_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("verdicts")
    write_nir(_net(), d / "float.nir")
    x = _spikes(24, 24, 12, 0.35, 1)
    np.savez(d / "calib.npz", x=x)
    np.savez(d / "test.npz", x=x[:6], y=np.arange(6) % 4)
    _calibrate(d / "float.nir", d / "calib.npz", d / "art.nir")
    return {"dir": d, "float": d / "float.nir", "art": d / "art.nir", "test": d / "test.npz", "x": d / "calib.npz"}


@pytest.mark.parametrize("labels", [
    np.array([0, 1, 2, 3, 4, 0]),  # 4 is not a class of a 4-neuron output
    np.array([0, -1, 2, 3, 1, 0]),
    np.array([0, 1.5, 2, 3, 1, 0]),
    np.array(["a", "b", "c", "d", "a", "b"]),
    np.array([0, 1, 2, 3, 1, np.nan]),
])
def test_invalid_labels_are_bad_input_not_a_pass(art_files: dict[str, Path], tmp_path: Path, labels: np.ndarray,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "d.npz"
    np.savez(data, x=np.load(art_files["test"])["x"], y=labels)
    assert main(["verify", str(art_files["art"]), "--data", str(data), "--backend", "fxsim", "--quiet"]) == 2
    assert "labels" in capsys.readouterr().err
    with pytest.raises(UserInputError, match="labels"):
        verify(art_files["art"], np.load(art_files["test"])["x"], labels, backends="fxsim", progress=False)


def test_api_arguments_are_validated(art_files: dict[str, Path]) -> None:
    x = np.load(art_files["test"])["x"]
    for kw in ({"max_accuracy_drop": float("nan")}, {"max_accuracy_drop": -1}, {"backend_samples": 0},
               {"backend_samples": -1}, {"min_agreement": 1.5}, {"backends": "float"}):
        with pytest.raises(UserInputError):
            verify(art_files["art"], x, backends=kw.pop("backends", "fxsim"), progress=False, **kw)  # type: ignore[arg-type]


def test_backend_samples_are_reported_per_backend(art_files: dict[str, Path], tmp_path: Path) -> None:
    js, page = tmp_path / "r.json", tmp_path / "r.html"
    assert main(["verify", str(art_files["art"]), "--data", str(art_files["test"]), "--backend", "onnx",
                 "--backend-samples", "2", "--json", str(js), "--html", str(page), "--max-accuracy-drop", "1",
                 "--quiet"]) == 0
    doc = json.loads(js.read_text())
    assert doc["samples"] == 6 and doc["backends"]["onnx"]["samples"] == 2
    assert doc["backends"]["onnx"]["compared_spikes"] == 2 * 24 * 20
    assert "onnx against fxsim on 2 samples" in page.read_text()
    # More than there are: all of them, and the report says how many.
    res = verify(art_files["art"], np.load(art_files["test"])["x"], backends="fxsim", backend_samples=100,
                 progress=False, min_agreement=0)
    assert res.backends["fxsim"].samples == 6
    # fxsim as a backend on fewer samples: held against the full reference run, which stays whole
    js2, page2 = tmp_path / "f.json", tmp_path / "f.html"
    assert main(["verify", str(art_files["art"]), "--data", str(art_files["test"]), "--backend", "fxsim",
                 "--backend", "onnx", "--backend-samples", "2", "--json", str(js2), "--html", str(page2),
                 "--max-accuracy-drop", "1", "--quiet"]) == 0
    doc = json.loads(js2.read_text())
    assert doc["backends"]["fxsim"]["samples"] == 2 and doc["backends"]["fxsim"]["bit_exact"] is True
    assert doc["samples"] == 6 and doc["backends"]["onnx"]["samples"] == 2


def test_silent_float_model_fails(art_files: dict[str, Path], tmp_path: Path) -> None:
    """A float model that never spikes (as a Sinabs CNN read at the wrong dt did) is no reference."""
    g = _net()
    g.nodes["lnm2"].v_th[...] = 1e9  # type: ignore[union-attr]
    write_nir(g, tmp_path / "silent.nir")
    x, y = np.load(art_files["test"])["x"], np.zeros(6, dtype=int)
    res = verify(art_files["art"], x, y, backends=(), float_graph=tmp_path / "silent.nir", progress=False,
                 max_accuracy_drop=1)
    assert not res.passed and any("never spikes" in r for r in res.reasons)


def test_tampered_artifact_is_refused_by_every_reader(art_files: dict[str, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    art = read_artifact(art_files["art"])
    dense = next(n for n in art.fx.nodes.values() if type(n).__name__ == "FxDense")
    dense.weight = dense.weight.copy()  # type: ignore[attr-defined]
    dense.weight.flat[0] = 1000  # type: ignore[attr-defined]
    dense.weight.flat[1] = 10**6  # type: ignore[attr-defined]
    bad = tmp_path / "tampered.nir"
    write_artifact(art, bad)
    with pytest.raises(GraphError, match="do not satisfy its target"):
        read_artifact(bad)
    test = str(art_files["test"])
    for argv in (["verify", str(bad), "--data", test, "--backend", "lava", "--quiet"],
                 ["run", str(bad), "--data", test, "--backend", "fxsim", "--out", str(tmp_path / "o.npz")],
                 ["inspect", str(bad)],
                 ["compile", str(bad), "--out", str(tmp_path / "m.onnx")]):
        assert main(argv) == 3, argv
        assert "do not satisfy its target" in capsys.readouterr().err
    assert not (tmp_path / "o.npz").exists() and not (tmp_path / "m.onnx").exists()


def test_artifact_embeds_its_target(art_files: dict[str, Path]) -> None:
    rec = read_artifact(art_files["art"]).record
    assert rec["target_spec"]["name"] == "loihi2" and "[dense]" in rec["target_spec"]["toml"]


def test_verify_replays_every_reading_option_of_the_calibration(tmp_path: Path) -> None:
    """Options a file cannot state (here Sinabs' reset read as reset-to-value and single spikes)
    are recorded at calibration and replayed by verify, which then reads the float model as it was
    calibrated (and agrees with a by-hand comparison made with the same options)."""
    from lnm_deploy.calibrate import calibrate_network, load_recipe
    from lnm_deploy.targets import load_target

    src, art = tmp_path / "g.nir", tmp_path / "art.nir"
    _if_graph(src)
    read_kw = {"producer": "sinabs", "reset": "value", "spikes": "single", "threshold": ">"}
    x = _spikes(24, 30, 8, 0.3, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LNMDeployWarning)
        graph = read_nir(src, **read_kw)  # type: ignore[arg-type]
        res = calibrate_network(graph, x, load_target("loihi2"), load_recipe("default"), source=src, progress=False)
    write_artifact(res.artifact, art)
    rec = read_artifact(art).record["provenance"]["source_graph"]["read_options"]["requested"]
    assert {k: rec.get(k) for k in read_kw} == read_kw
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LNMDeployWarning)
        result = verify(art, x[:8], backends=(), min_agreement=0.0, progress=False)
    doc = result.to_dict()
    assert doc["float"]["as_calibrated"] is True
    assert {k: doc["float"]["read_options"]["requested"].get(k) for k in read_kw} == read_kw
    hand = _by_hand(src, art, x[:8], **read_kw)
    assert {layer["name"]: layer["spike_agreement"] for layer in doc["layers"]} == hand


def test_cli_reading_options_are_recorded_and_replayed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``calibrate --producer sinabs --reset value --spikes single`` records what the file cannot
    say; ``verify`` reads the float graph with it again (as calibrated)."""
    src, art, js = tmp_path / "g.nir", tmp_path / "art.nir", tmp_path / "r.json"
    _if_graph(src)
    x = _spikes(24, 30, 8, 0.3, 1)
    np.savez(tmp_path / "calib.npz", x=x)
    np.savez(tmp_path / "test.npz", x=x[:8])
    _calibrate(src, tmp_path / "calib.npz", art, "--producer", "sinabs", "--reset", "value", "--spikes", "single",
               "--threshold", ">")
    rec = read_artifact(art).record["provenance"]["source_graph"]["read_options"]["requested"]
    assert (rec["producer"], rec["reset"], rec["spikes"], rec["threshold"]) == ("sinabs", "value", "single", ">")
    main(["verify", str(art), "--data", str(tmp_path / "test.npz"), "--backend", "fxsim", "--json", str(js),
          "--min-agreement", "0", "--quiet"])
    doc = json.loads(js.read_text())
    assert doc["float"]["as_calibrated"] is True
    hand = _by_hand(src, art, x[:8], producer="sinabs", reset="value", spikes="single", threshold=">")
    assert {layer["name"]: layer["spike_agreement"] for layer in doc["layers"]} == hand
    capsys.readouterr()


def test_verify_never_reads_the_float_model_with_other_spike_rules_than_calibrated(tmp_path: Path) -> None:
    """An artifact recorded by the reader before the spike rules (a Sinabs graph read with v > v_th
    and one spike per step whatever its convention declared) is reread that way; and where a
    reading would give the float model other spike rules than the artifact's neurons, verify
    refuses instead of judging another model."""
    import copy

    from lnm_deploy.calibrate import calibrate_network, load_recipe
    from lnm_deploy.targets import load_target

    src = tmp_path / "g.nir"
    _if_graph(src)
    x = _spikes(24, 30, 8, 0.3, 1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LNMDeployWarning)
        graph = read_nir(src, producer="sinabs", threshold=">", spikes="single")
        res = calibrate_network(graph, x, load_target("loihi2"), load_recipe("default"), source=src, progress=False)
    art = read_artifact(write_artifact(res.artifact, tmp_path / "art.nir"))
    opts = art.record["provenance"]["source_graph"]["read_options"]
    # as the reader before this change recorded it: only the producer asked for, no max_spikes
    old = copy.deepcopy(art)
    old_opts = old.record["provenance"]["source_graph"]["read_options"]
    old_opts["requested"] = {k: v for k, v in opts["requested"].items() if k not in ("threshold", "spikes")}
    del old_opts["convention"]["max_spikes"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LNMDeployWarning)
        ok = verify(old, x[:8], backends=(), min_agreement=0.0, progress=False)
    assert ok.to_dict()["float"]["as_calibrated"] is True
    assert ok.to_dict()["float"]["read_options"]["requested"]["threshold"] == ">"
    # a record whose replay gives other rules (Sinabs' own: v >= v_th, graded): refused, naming them
    new = copy.deepcopy(art)
    new.record["provenance"]["source_graph"]["read_options"]["requested"] = {"producer": "sinabs"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LNMDeployWarning)
        with pytest.raises(GraphError, match=r"other spike rules.*node '.*': spike test v >= v_th in the float graph"):
            verify(new, x[:8], backends=(), min_agreement=0.0, progress=False)
