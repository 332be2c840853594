"""``verify``: does the deployed network do what the simulator says, and how close is it to float?

Three runs on the same inputs: the float model (the graph the artifact was calibrated from), fxsim
on the artifact's integers, and each requested backend (Lava, ONNX) on the same integers.

- fxsim against every backend: bit for bit, every spike of every layer (``np.array_equal``); a
  mismatch names the first layer, timestep, sample and neuron.
- float against fixed point: accuracy (with labels), per-layer spike agreement and rates, and the
  first divergence, with its cause where a replay can tell: the diverging neuron is re-simulated in
  float from t = 0 with one group of quantized quantities swapped in at a time (weights and biases,
  leak dynamics, threshold and reset); the groups that alone flip that spike are the cause.

Passes when every backend is bit-exact and (with labels) the fixed-point accuracy is within
``max_accuracy_drop`` of the float accuracy.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lnm_deploy.artifact import Artifact, read_artifact
from lnm_deploy.errors import LNMDeployWarning, UserInputError
from lnm_deploy.execute import RunResult, run_float
from lnm_deploy.ir import Graph, Neuron

Array = np.ndarray


@dataclass
class LayerCheck:
    name: str
    spike_agreement: float
    rate_float: float
    rate_fixed: float


@dataclass
class BackendCheck:
    bit_exact: bool
    mismatched_spikes: int
    compared_spikes: int
    first_mismatch: dict[str, Any] | None = None
    seconds: float = 0.0


@dataclass
class VerifyResult:
    """What ``lnm-deploy verify`` reports (``to_dict`` is the JSON document)."""

    target: str
    samples: int
    timesteps: int
    float_accuracy: float | None
    fixed_accuracy: float | None
    layers: list[LayerCheck]
    backends: dict[str, BackendCheck]
    first_divergence: dict[str, Any] | None
    passed: bool
    reasons: list[str] = field(default_factory=list)
    float_source: str = ""
    max_accuracy_drop: float = 0.005
    runs: dict[str, RunResult] = field(default_factory=dict, repr=False)  # for the HTML page

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "samples": self.samples,
            "timesteps": self.timesteps,
            "float": {"accuracy": self.float_accuracy, "source": self.float_source},
            "fixed": {"accuracy": self.fixed_accuracy},
            "max_accuracy_drop": self.max_accuracy_drop,
            "layers": [asdict(x) for x in self.layers],
            "backends": {k: asdict(v) for k, v in self.backends.items()},
            "first_divergence": self.first_divergence,
            "passed": self.passed,
            "reasons": self.reasons,
        }


def resolve_float_graph(artifact: Artifact, float_path: str | os.PathLike[str] | None) -> tuple[Graph, str]:
    """The float model to compare with: ``float_path``, else the graph the artifact was calibrated
    from (its recorded path, if the file is still there with the recorded SHA-256), else the
    artifact's own dequantized graph (then float and fixed differ only by integer rounding)."""
    from lnm_deploy.calibrate.pipeline import sha256_file
    from lnm_deploy.nir_io import read_nir

    if float_path is not None:
        return read_nir(float_path), str(float_path)
    src = (artifact.record.get("provenance") or {}).get("source_graph") or {}
    path = src.get("path")
    if path and Path(path).is_file():
        if sha256_file(path) == src.get("sha256"):
            return read_nir(path), str(path)
        warnings.warn(f"{path} changed since calibration (SHA-256 differs); comparing with the artifact's "
                      "dequantized graph instead (pass --float to choose)", LNMDeployWarning, stacklevel=2)
    else:
        warnings.warn("the float graph the artifact was calibrated from is not available; comparing with "
                      "the artifact's dequantized graph (pass --float GRAPH.nir)", LNMDeployWarning, stacklevel=2)
    return artifact.graph, "artifact (dequantized)"


def _replay(graph: Graph, deq: Graph, layer: str, flat: int, sample: int, t_end: int,
            spikes: dict[str, Array], swap: set[str]) -> int:
    """Re-simulate neuron ``flat`` of ``layer`` in float64 from t = 0 to ``t_end`` on the float
    run's input spikes, with the quantity groups in ``swap`` taken from the dequantized graph;
    return its spike at ``t_end``."""
    from lnm_deploy.calibrate.quantize import find_synapses

    def current(g: Graph) -> tuple[Array, float, Neuron]:
        node = g.nodes[layer]
        assert isinstance(node, Neuron)
        syns, bias = find_synapses(g, layer)
        gain = float((node.in_gain * (node.syn_gain if node.syn_gain is not None else 1.0)).reshape(-1)[flat])
        x = np.zeros(t_end + 1)
        for s in syns:
            src = spikes[s.source][sample, : t_end + 1].reshape(t_end + 1, -1).astype(np.float64)
            if s.delayed:  # a back edge: the previous step's spikes (none at t = 0)
                src = np.vstack([np.zeros((1, src.shape[1])), src[:-1]])
            if s.kind == "dense":
                x += gain * (src @ s.weight[flat])
            else:
                from lnm_deploy.execute.float_exec import conv2d

                sh = spikes[s.source].shape[2:]
                y = conv2d(src.reshape(-1, *sh), s.weight, None, s.conv["stride"], s.conv["padding"],
                           s.conv["dilation"], s.conv["groups"])
                x += gain * y.reshape(t_end + 1, -1)[:, flat]
        return x, gain * float(bias.reshape(-1)[flat]), node

    x_f, b_f, nf = current(graph)
    x_q, b_q, nq = current(deq)

    def p(node: Neuron, k: int) -> float:
        return float(node.poly[k].reshape(-1)[flat]) if k < node.poly.shape[0] else 0.0

    use_q = {g: g in swap for g in ("weights", "dynamics", "threshold")}
    x, bias = (x_q, b_q) if use_q["weights"] else (x_f, b_f)
    dyn = nq if use_q["dynamics"] else nf
    thr = nq if use_q["threshold"] else nf
    # The quantized constant term carries the folded biases: keep the two consistent.
    theta0 = p(nq, 0) if use_q["weights"] else p(nf, 0)
    degree = max(dyn.poly.shape[0] - 1, 1)
    theta = [theta0] + [p(dyn, k) for k in range(1, degree + 1)]
    decay = None if dyn.syn_decay is None else float(dyn.syn_decay.reshape(-1)[flat])
    v_th = float(thr.v_th.reshape(-1)[flat])  # type: ignore[union-attr]
    v_reset = float(thr.v_reset.reshape(-1)[flat])
    v = c = 0.0
    s = 0
    for t in range(t_end + 1):
        inp = x[t] + (bias if decay is not None else 0.0)
        c = decay * c + inp if decay is not None else inp + bias
        h = theta[-1]
        for k in range(len(theta) - 2, -1, -1):
            h = h * v + theta[k]
        v_pre = h + c
        s = int(v_pre > v_th)
        v = (v_reset if thr.reset == "value" else v_pre - v_th) if s else v_pre
    return s


def explain_divergence(graph: Graph, artifact: Artifact, div: Any, ref: RunResult, x: Array) -> dict[str, Any]:
    """The first divergence with its likely cause (see the module docstring)."""
    from itertools import combinations

    spikes = {**ref.spikes, graph.input_name: x}

    layer, sample, t, neuron = div.layer, div.sample, div.timestep, div.neuron
    out: dict[str, Any] = {"layer": layer, "sample": int(sample), "timestep": int(t), "neuron": int(neuron)}
    node = graph.nodes.get(layer)
    if not isinstance(node, Neuron) or layer not in artifact.graph.nodes:
        out["cause"] = "undetermined (the layer has no float counterpart)"
        return out
    try:
        base = _replay(graph, artifact.graph, layer, neuron, sample, t, spikes, set())
        fixed_like = _replay(graph, artifact.graph, layer, neuron, sample, t, spikes,
                             {"weights", "dynamics", "threshold"})
    except Exception as e:  # structures the replay does not cover: say so instead of guessing
        out["cause"] = f"undetermined ({type(e).__name__}: {e})"
        return out
    groups = ("weights", "dynamics", "threshold")
    single = [g for g in groups if _replay(graph, artifact.graph, layer, neuron, sample, t, spikes, {g}) != base]
    out["float_spike"], out["dequantized_spike"] = base, fixed_like
    names = {"weights": "synaptic weights and biases", "dynamics": "leak polynomial / decays",
             "threshold": "threshold and reset"}
    if single:
        out["cause"] = " and ".join(names[g] for g in single) + " (each alone flips this spike)"
        out["causes"] = single
    else:
        pairs = [set(p) for p in combinations(groups, 2)
                 if _replay(graph, artifact.graph, layer, neuron, sample, t, spikes, set(p)) != base]
        if pairs:
            out["cause"] = "the combination of " + " + ".join(names[g] for g in sorted(pairs[0]))
            out["causes"] = sorted(pairs[0])
        elif fixed_like != base:
            out["cause"] = "all quantized quantities together"
            out["causes"] = list(groups)
        else:
            out["cause"] = "integer rounding of the state (no quantized parameter alone explains it)"
            out["causes"] = ["rounding"]
    return out


def verify(artifact: Artifact | str | os.PathLike[str], x: Array, y: Array | None = None, *,
           backends: tuple[str, ...] = ("lava",), float_graph: str | os.PathLike[str] | None = None,
           max_accuracy_drop: float = 0.005, backend_samples: int | None = None,
           progress: bool = True, workers: int | None = 1, ray_address: str | None = None) -> VerifyResult:
    """Run float, fxsim and ``backends`` on ``x`` and compare (see the module docstring).

    ``backend_samples``: hold the backends against fxsim on the first N samples only (Lava runs
    one sample at a time); float and fxsim always run on all of ``x``. ``workers`` /
    ``ray_address``: the backends' runs are split by samples (``lnm_deploy.distributed``).
    """
    import time

    from lnm_deploy.backends import BACKENDS
    from lnm_deploy.calibrate.compare import compare_spikes, first_divergence
    from lnm_deploy.calibrate.pipeline import check_spikes
    from lnm_deploy.distributed import check_workers, run_sharded
    from lnm_deploy.fxsim import first_mismatch, run_fx
    from lnm_deploy.metrics import accuracy

    workers = check_workers(workers)
    art = artifact if isinstance(artifact, Artifact) else read_artifact(artifact)
    for b in backends:
        if b not in BACKENDS or not BACKENDS[b].integer:
            raise UserInputError(f"--backend {b}: verify compares integer backends "
                                 f"({', '.join(k for k, v in BACKENDS.items() if v.integer)})")
    graph, source = resolve_float_graph(art, float_graph)
    x = check_spikes(x, art.graph, "verification data")
    ref = run_float(graph, x, record=True, progress=progress)
    fixed = run_fx(art.fx, x, record=True, progress=progress)
    order = [n for n in art.fx.schedule().order if n in fixed.spikes]
    missing = [n for n in order if n not in ref.spikes]
    if missing:
        raise UserInputError(f"the float graph ({source}) has no layers {missing}: pass the graph the artifact "
                             "was calibrated from with --float")
    runs: dict[str, RunResult] = {"float": ref, "fxsim": fixed}
    checks: dict[str, BackendCheck] = {}
    reasons: list[str] = []
    for b in backends:
        t0 = time.perf_counter()
        nb = x.shape[0] if backend_samples is None else max(1, min(backend_samples, x.shape[0]))
        res = run_sharded(b, art.fx, x[:nb], workers=workers, ray_address=ray_address, progress=progress)
        runs[b] = res
        sub = {n: fixed.spikes[n][:nb] for n in order}
        mism = sum(int(np.sum(sub[n] != res.spikes[n])) for n in order if n in res.spikes)
        total = sum(int(sub[n].size) for n in order)
        m = first_mismatch(sub, res.spikes, order=order)
        checks[b] = BackendCheck(bit_exact=m is None, mismatched_spikes=mism, compared_spikes=total,
                                 first_mismatch=None if m is None else {**asdict(m), "text": str(m)},
                                 seconds=time.perf_counter() - t0)
        if m is not None:
            reasons.append(f"{b} differs from fxsim: {m}")

    comps = compare_spikes(ref.spikes, fixed.spikes, order)
    layers = [LayerCheck(n, comps[n].agreement, comps[n].rate_reference, comps[n].rate_test) for n in order]
    div = first_divergence(ref.spikes, fixed.spikes, order)
    divergence = None if div is None else explain_divergence(graph, art, div, ref, x)
    f_acc = q_acc = None
    if y is not None:
        f_acc, q_acc = accuracy(ref.output, y), accuracy(fixed.output, y)
        if f_acc - q_acc > max_accuracy_drop:
            reasons.append(f"fixed-point accuracy {q_acc:.4f} is more than {max_accuracy_drop * 100:.2g} points "
                           f"below float {f_acc:.4f}")
    return VerifyResult(
        target=art.target, samples=int(x.shape[0]), timesteps=int(x.shape[1]), float_accuracy=f_acc,
        fixed_accuracy=q_acc, layers=layers, backends=checks, first_divergence=divergence,
        passed=not reasons, reasons=reasons, float_source=source, max_accuracy_drop=max_accuracy_drop,
        runs=runs,
    )
