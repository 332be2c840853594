"""Sinabs and Rockpool networks, exported by their frameworks' own ``to_nir``, deployed end to end
(issue #16, first "Done when"): the ``.nir`` file read with the producer's convention runs in the
float executor spike count for spike count like the framework, calibrates for ``loihi2`` (graded
spikes, ``>=`` and the floor on the programmable neuron, docs/fixed-point.md 5.2), and ``verify``
of the artifact FILE reloads the float graph with the reading options recorded at calibration (no
float graph given) and holds Lava and ONNX bit-exact against fxsim.

The float-vs-fixed agreement of every layer is printed (``pytest -s``), not asserted: it measures
the 8-bit weights' rounding, which integrate-and-fire layers (no leak) carry on from step to step
(docs/nir.md, "Sinabs and Rockpool on loihi2"); what must hold is asserted: the reload as
calibrated, bit-exactness, and the verdict.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nir
import numpy as np
import pytest
import torch
from test_frameworks import (
    ROCKPOOL_GAIN,
    _as_float64,
    _rockpool_mlp,
    _sinabs_mlp,
    _sinabs_run,
    assert_same_spikes,
    sinabs_from_nir_run,
)
from test_frameworks import (
    _sinabs_cnn as _sinabs_cnn_net,
)

from lnm_deploy.artifact import read_artifact, write_artifact
from lnm_deploy.calibrate import calibrate_network, load_recipe
from lnm_deploy.cli import main
from lnm_deploy.errors import LNMDeployWarning, UnsupportedError
from lnm_deploy.execute import run_float
from lnm_deploy.fixedpoint import FxPoly
from lnm_deploy.fxsim import run_fx
from lnm_deploy.nir_io import read_nir
from lnm_deploy.targets import load_target
from lnm_deploy.verify import verify

pytest.importorskip("lava")
pytest.importorskip("onnxruntime")

PAPER_CNN = Path(__file__).parent / "data" / "cnn_sinabs.nir"


@pytest.fixture(autouse=True)
def _seed() -> Iterator[None]:
    torch.manual_seed(1234)
    with warnings.catch_warnings():  # nirtorch's deprecation noise and our reading notes
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=LNMDeployWarning)
        yield


def save(g: nir.NIRGraph, path: Path) -> Path:
    """Write an exporter's graph as a user would. Two nir 1.0.8 limits met on the way: Sinabs'
    ``to_nir`` leaves a Conv2d's ``input_shape`` and a Flatten's ``input_type`` unset (``None``,
    which ``nir.write`` cannot store: ``g.infer_types()``, nir's own pass, fills them in), and its LIF
    writes 0-d parameters (which ``nir.write``'s default gzip compression rejects)."""
    if any(v is None for node in g.nodes.values() for v in (getattr(node, "input_shape", 0),
                                                           *getattr(node, "input_type", {}).values())):
        g.infer_types()
    nir.write(path, g, compression=None)
    return path


def deploy(tmp_path: Path, src: Path, x: np.ndarray, read: dict[str, Any], *, cli: bool = False,
           samples: int = 2, steps: int | None = None, label: str = "") -> dict[str, Any]:
    """Calibrate ``src`` (read with ``read``) for loihi2 and write the artifact; verify the artifact
    file without a float graph (so verify reloads ``src`` with the recorded options), Lava and ONNX
    on the first ``samples`` samples of ``x[:, :steps]``. Returns the verdict as JSON (``verify
    --json``); prints every layer's float-vs-fixed agreement."""
    art = tmp_path / "art.nir"
    xv = x[:, :steps]
    if cli:
        np.savez(tmp_path / "calib.npz", x=x)
        np.savez(tmp_path / "test.npz", x=xv)
        opts = [f"--{k.replace('_', '-')}={v}" for k, v in read.items()]
        assert main(["calibrate", str(src), "--data", str(tmp_path / "calib.npz"), "--target", "loihi2",
                     "--out", str(art), "--quiet", *opts]) == 0
        code = main(["verify", str(art), "--data", str(tmp_path / "test.npz"), "--backend", "lava", "--backend",
                     "onnx", "--backend-samples", str(samples), "--json", str(tmp_path / "v.json"), "--quiet"])
        doc = json.loads((tmp_path / "v.json").read_text())
        assert code == (0 if doc["passed"] else 1)
    else:
        res = calibrate_network(read_nir(src, **read), x, load_target("loihi2"), load_recipe("default"), source=src,
                                progress=False)
        write_artifact(res.artifact, art)
        doc = verify(art, xv, backends=("lava", "onnx"), backend_samples=samples, progress=False).to_dict()
    agreement = {c["name"]: round(c["spike_agreement"], 4) for c in doc["layers"]}
    print(f"\n{label or src.name}: float-vs-fixed count agreement per layer {agreement}; output bins "
          f"{doc['output_agreement']:.4f}, predicted class {doc['prediction_agreement']:.4f}; "
          f"{'PASSED' if doc['passed'] else 'FAILED: ' + '; '.join(doc['reasons'])}")
    f, q = run_float(read_nir(src, **read), xv), run_fx(read_artifact(art).fx, xv)
    for n in q.spikes:  # how far apart the spikes are: running counts, totals
        lag = np.abs(f.spikes[n].astype(np.int64).cumsum(1) - q.spikes[n].astype(np.int64).cumsum(1))
        total = abs(int(f.spikes[n].sum()) - int(q.spikes[n].sum())) / max(int(f.spikes[n].sum()), 1)
        print(f"  layer {n}: at most {int(q.spikes[n].max())} spikes per step; running counts within one "
              f"spike on {np.mean(lag <= 1):.3f} of the bins (at most {int(lag.max())} apart); totals differ "
              f"by {total:.4f}")
    # The float model is the source file re-read with the options recorded at calibration.
    assert doc["float"]["source"] == str(src.resolve()) and doc["float"]["as_calibrated"] is True, doc["float"]
    assert all(doc["float"]["read_options"]["requested"].get(k) == v for k, v in read.items())
    for b in ("lava", "onnx"):
        assert doc["backends"][b]["bit_exact"] and doc["backends"][b]["samples"] == samples, (b, doc["backends"][b])
    return doc


def assert_verdict(doc: dict[str, Any]) -> None:
    """verify passes, or fails only on its floor on equal output bins (0.95 without labels) while
    fixed point predicts the float model's class on at least that fraction of the samples (measured:
    all). Measured (docs/nir.md): the Sinabs MLPs pass; the Sinabs CNN (output bins 0.79), Rockpool
    LIFTorch (0.87), LIFNeuronTorch (0.92) and cnn_sinabs.nir (0.88) fail that floor. Why: loihi2's
    8-bit weights. The float model run with the artifact's (rounded) weights and exact neurons moves
    its own spikes as far: it equals the integers count for count on the Rockpool LIFNeuronTorch
    MLP, and gives 0.86 / 0.87 against the exact float model on LIFTorch (the remaining 0.05 against
    fixed point: its neurons' own rounding, the 12-bit current decay and the threshold). An offset in
    a membrane that leaks slowly (IAF: not at all; Rockpool: tau 20 ms at dt 1 ms) moves later
    spikes by a step, so the running counts stay within a spike or two (graded layers emitting
    tens of spikes per step: a few) and the totals within about 1 %."""
    if doc["passed"]:
        return
    assert all("output spikes of fixed point and float agree on" in r for r in doc["reasons"]), doc["reasons"]
    assert doc["prediction_agreement"] >= doc["criteria"]["min_agreement"], doc["prediction_agreement"]


def assert_graded_poly(tmp_path: Path, floor: bool = False) -> None:
    fx = read_artifact(tmp_path / "art.nir").fx
    for n in fx.neuron_names():
        node = fx.nodes[n]
        assert isinstance(node, FxPoly) and node.threshold == ">=" and node.max_payload == 255, n
        assert (node.v_floor is not None) == floor, n


# --------------------------------------------------------------------------------------- Sinabs


@pytest.mark.parametrize(("neuron", "cli"), [("IAF", True), ("LIF", False)], ids=["IAF-cli", "LIF-api"])
def test_sinabs_mlp_deploys_and_verifies_as_calibrated(neuron: str, cli: bool, tmp_path: Path) -> None:
    """Sinabs defaults (MultiSpike, MembraneSubtract): exact in float (also test_frameworks.py
    test_sinabs_mlp_exact), graded on loihi2, Lava and ONNX bit-exact, reloaded with producer sinabs.
    (tests/test_graded.py deploys the same networks from a Graph object, without the reload.)"""
    g, ref, x = _sinabs_mlp(neuron, torch.float64)
    src = save(g, tmp_path / "sinabs.nir")
    assert_same_spikes(ref, read_nir(src, producer="sinabs"), x)
    xs = x.numpy().astype(np.uint8)
    doc = deploy(tmp_path, src, xs, {"producer": "sinabs"}, cli=cli, label=f"Sinabs {neuron} MLP")
    assert doc["float"]["read_options"]["resolved"]["producer"] == "sinabs"
    assert_graded_poly(tmp_path)
    assert_verdict(doc)


def _sinabs_cnn(b: int, t: int) -> tuple[nir.NIRGraph, dict[str, np.ndarray], torch.Tensor]:
    """Conv2d -> IAF -> SumPool2d -> Conv2d -> IAF -> Flatten -> Linear -> IAF on 1x8x8 (Sinabs
    exports no AvgPool2d: ``NotImplementedError``), Sinabs defaults, run in float64."""
    net, x = _sinabs_cnn_net(b, t, channels=1, classes=5)
    from sinabs.nir import to_nir as sinabs_to_nir

    g = _as_float64(sinabs_to_nir(net, x[:b]))
    ref = _sinabs_run(net.double(), x, (1, 4, 7), torch.float64)
    return g, {k: v.reshape(b, t, *v.shape[1:]) for k, v in ref.items()}, x.reshape(b, t, 1, 8, 8).double()


def test_sinabs_cnn_deploys_and_verifies_as_calibrated(tmp_path: Path) -> None:
    g, ref, x = _sinabs_cnn(6, 30)
    assert max(int(s.max()) for s in ref.values()) >= 2  # graded counts
    src = save(g, tmp_path / "cnn.nir")
    assert_same_spikes(ref, read_nir(src, producer="sinabs"), x)
    doc = deploy(tmp_path, src, x.numpy().astype(np.uint8), {"producer": "sinabs"}, label="Sinabs CNN")
    assert_graded_poly(tmp_path)
    assert_verdict(doc)


# ------------------------------------------------------------------------------------- Rockpool


@pytest.mark.parametrize("cls_name", ["LIFTorch", "LIFNeuronTorch"])
def test_rockpool_mlp_deploys_and_verifies_as_calibrated(cls_name: str, tmp_path: Path) -> None:
    """Rockpool 3.1 Sequential(LinearTorch, LIF*) with the default max_spikes_per_dt (2**16, capped
    at loihi2's 255 payload): the producer is detected from the node names, at calibration and again
    at verify's reload (also test_frameworks.py test_rockpool_mlp_exact)."""
    g, ref, x = _rockpool_mlp(cls_name, ROCKPOOL_GAIN[cls_name], torch.float64)
    src = save(g, tmp_path / "rockpool.nir")
    ir = read_nir(src)
    assert ir.metadata["read_options"]["resolved"]["producer"] == "rockpool"
    assert_same_spikes(ref, ir, x)
    doc = deploy(tmp_path, src, x.numpy().astype(np.uint8), {}, label=f"Rockpool {cls_name} MLP")
    assert doc["float"]["read_options"]["resolved"]["producer"] == "rockpool"
    assert doc["float"]["read_options"]["requested"]["producer"] is None  # detected, both times
    assert_graded_poly(tmp_path)
    assert_verdict(doc)


# ------------------------------------------------------------------- the NIR paper's Sinabs CNN


def _paper_input(b: int, t: int) -> np.ndarray:
    return (np.random.default_rng(0).random((b, t, 2, 34, 34)) < 0.1).astype(np.uint8)


def test_the_nir_papers_sinabs_cnn_as_sinabs_runs_it_on_loihi2(tmp_path: Path) -> None:
    """cnn_sinabs.nir read as Sinabs' ``from_nir`` runs it (MultiSpike, MembraneSubtract, ``>=``,
    ``min_v_mem = -v_th``: ``v_floor="-v_th"``, docs/nir.md): Sinabs' counts exactly, then graded
    neurons with a floor on loihi2, Lava bit-exact on 2 samples of 10 steps."""
    x = _paper_input(3, 10)
    read = {"producer": "sinabs", "v_floor": "-v_th"}
    ref = sinabs_from_nir_run(PAPER_CNN, x)
    assert_same_spikes(ref, read_nir(PAPER_CNN, **read), torch.from_numpy(x.astype(np.float64)))
    doc = deploy(tmp_path, PAPER_CNN, x, read, label="cnn_sinabs.nir as Sinabs")
    assert_graded_poly(tmp_path, floor=True)
    assert_verdict(doc)


def test_the_nir_papers_sinabs_cnn_as_sinabs_is_refused_on_the_stock_lif() -> None:
    """On loihi2-lif (stock LIF: one spike per step, v > v_th, no floor) the Sinabs reading is
    refused, naming the first neuron and the rules; the generic reading calibrates there
    (tests/test_cnn.py)."""
    graph = read_nir(PAPER_CNN, producer="sinabs", v_floor="-v_th")
    with pytest.raises(UnsupportedError, match="node '1'") as e:
        calibrate_network(graph, _paper_input(2, 4), load_target("loihi2-lif"), load_recipe("default"),
                          progress=False)
    msg = str(e.value)
    assert all(w in msg for w in ("v >= v_th", "graded spikes", "floor", "--target loihi2")), msg


def test_no_lzc_readout_on_graded_outputs_and_the_report_says_why(tmp_path: Path) -> None:
    """The LZC readout needs 0/1 output spikes: with labels, a graded Sinabs output is calibrated
    without one, and the report's reason names graded spikes."""
    g, ref, x = _sinabs_mlp("IAF", torch.float64)
    assert int(ref["3"].max()) > 1
    xs = x.numpy().astype(np.uint8)
    y = np.arange(xs.shape[0]) % 8
    res = calibrate_network(read_nir(save(g, tmp_path / "g.nir"), producer="sinabs"), xs, load_target("loihi2"),
                            load_recipe("default"), y=y, progress=False)
    lzc = res.report["lzc_readout"]
    assert lzc["fitted"] is False and "graded spikes" in lzc["reason"], lzc
    assert "readouts" not in res.artifact.record
