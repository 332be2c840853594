"""``calibrate_network``: statistics -> scales -> integers -> a verified artifact and its report.

0. Fold the graph's synapse chains (``passes.fold``, data-independent): a structure the target
   cannot hold is refused before any statistics are collected.
1. Run the calibration set through the float executor once and collect per-layer statistics
   (``stats.collect_with_recipe``: histograms, exact ranges, spike rates, range traces); the same
   recorded runs are the float reference of step 4 where they cover its samples (a single-process
   pass over every sample; otherwise the reference is one more float run).
2. The folded ``MappedGraph`` (step 0) is kept on the result. Choose the weight clips by the
   recipe's weight calibrator; optionally search, layer by layer, the weight clip that maximises spike agreement with the float model (``[search]``): each
   candidate re-runs only the scale planning and encoding passes.
3. Quantize for the target (``passes.quantize_mapped``): integers, shifts, the LIF fit where the
   target has no programmable neuron, and a static proof that no register overflows over the
   calibrated range times the recipe's margin.
4. Run fxsim on the calibration set and compare with the float model per layer: spike agreement,
   rate drift, membrane SQNR, first divergence. All of it goes into the report and the artifact.
5. With labels: the spike-count accuracy of both runs, and the LZC readout (``fit_lzc_readout``)
   fitted on the float run's output spikes, stored in the artifact (``record["readouts"]["lzc"]``)
   for ``verify``, its float and fxsim accuracy in the report (``lzc_readout``).
"""

from __future__ import annotations

import hashlib
import os
import platform
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lnm_deploy._version import __version__
from lnm_deploy.artifact import Artifact
from lnm_deploy.calibrate.calibrators import ClipRange
from lnm_deploy.calibrate.compare import compare_spikes, first_divergence, sqnr_db
from lnm_deploy.calibrate.passes import (
    MappedGraph,
    NeuronRange,
    Quantized,
    Selection,
    WeightClip,
    fold,
    quantize_mapped,
)
from lnm_deploy.calibrate.recipes import Recipe, collect_with_recipe
from lnm_deploy.calibrate.stats import CalibrationStats
from lnm_deploy.errors import LNMDeployWarning
from lnm_deploy.execute import RunResult, run_float
from lnm_deploy.fileio import sha256_file
from lnm_deploy.ir import Graph
from lnm_deploy.nir_io import READ_OPTIONS_KEY
from lnm_deploy.progress import progress as progress_bar
from lnm_deploy.readout import READOUTS_KEY
from lnm_deploy.targets import Target
from lnm_deploy.validate import check_spikes  # noqa: F401  (re-export: moved to lnm_deploy.validate)

Array = np.ndarray


@dataclass
class CalibrationResult:
    """Everything a calibration run produced; ``report`` is JSON-ready."""

    artifact: Artifact
    stats: CalibrationStats
    quantized: Quantized
    #: the float reference of the compared samples (the first ``max_samples``, in order): output,
    #: spikes and, per neuron layer, the membrane ``v`` (``REFERENCE_STATES``: what the comparison reads)
    float_run: RunResult
    fixed_run: RunResult
    report: dict[str, Any] = field(default_factory=dict)
    #: the float graph folded onto synapses and neuron layers (``passes.fold``), what the quantizer
    #: mapped: for verify and the reports, which need not re-derive it
    mapped: MappedGraph | None = None


def target_spec(target: Target) -> dict[str, Any]:
    """The target description an artifact embeds (its TOML text and SHA-256), so that every reader
    re-checks the artifact's integers against the target they were calibrated for."""
    text = Path(target.path).read_text(encoding="utf-8")
    return {"name": target.name, "toml": text,
            "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}


def neuron_ranges(stats: CalibrationStats) -> dict[str, NeuronRange]:
    """The quantizer's ranges from the collected statistics of every neuron layer (the states its
    float op names ``v``, ``v_pre`` and, with a synaptic current, ``c``: exact min / max, the v
    histogram)."""
    out: dict[str, NeuronRange] = {}
    for name, ns in stats.neurons.items():
        h = ns.v.hist
        centres, counts = h.nonzero_bins()
        out[name] = NeuronRange(
            v_min=h.minimum if h.n else 0.0, v_max=h.maximum if h.n else 0.0,
            v_pre_min=ns.v_pre.hist.minimum if ns.v_pre.hist.n else 0.0,
            v_pre_max=ns.v_pre.hist.maximum if ns.v_pre.hist.n else 0.0,
            c_absmax=ns.c.hist.abs_max if ns.c is not None else 0.0,
            input_absmax=ns.input.hist.abs_max,
            v_values=np.asarray(centres, dtype=np.float64), v_weights=np.asarray(counts, dtype=np.float64),
        )
    return out


def _weight_clip(recipe: Recipe, factors: dict[str, float], notes: list[str]) -> WeightClip:
    """The recipe's weight calibrator for the bit width the quantizer rounds each synapse to,
    scaled per synapse by the search's factor."""

    def clip(name: str, w: Array, bits: int) -> float:
        c = recipe.calibrate_weight(w, bits)
        if isinstance(c, ClipRange):
            return float(c.clip) * factors.get(name, 1.0)
        notes.append(f"{name}: per-channel weight clips reduced to one per layer (one weight exponent "
                     "per Dense/Conv on the target)")
        return float(np.max(c.clips)) * factors.get(name, 1.0)

    return clip


def compare_runs_float_fixed(graph: Graph, qz: Quantized, ref: RunResult, fixed: RunResult) -> dict[str, Any]:
    """Per-layer agreement, rate drift and membrane SQNR of ``fixed`` (fxsim) against ``ref`` (float)."""
    order = [n for n in graph.schedule().order if n in fixed.spikes and n in ref.spikes]
    layers = compare_spikes(ref.spikes, fixed.spikes, order)
    out: dict[str, Any] = {}
    for n in order:
        d: dict[str, Any] = layers[n].to_dict()
        if ref.states.get(n) and fixed.states.get(n) and "v" in fixed.states[n]:
            d["membrane_sqnr_db"] = sqnr_db(ref.states[n]["v"], fixed.states[n]["v"], test_scale=qz.layers[n].q)
        out[n] = d
    div = first_divergence(ref.spikes, fixed.spikes, order)
    return {"layers": out, "first_divergence": None if div is None else div._asdict()}




def fit_lzc_readout(ref: RunResult, fixed: RunResult, y: Array) -> tuple[dict[str, Any] | None, dict[str, Any]]:
    """The LZC readout (``lnm_deploy.readout.LZCReadout``: per-output-neuron normalised Lempel-Ziv
    complexity, nearest centroid) fitted on the FLOAT run's output spikes ``ref.output`` (samples,
    timesteps, *output_shape) with labels ``y`` (samples,), and its accuracy on both runs.

    Returns ``(record, report)``. ``record``: None when the readout does not apply, else the
    artifact's ``record["readouts"]["lzc"]``: ``{"readout": LZCReadout.to_dict(), "fitted_on":
    {"run": "float", "samples", "timesteps"}}`` (plain JSON, never pickle). ``report``: the
    calibration report's ``lzc_readout``: ``fitted`` (bool), ``float_accuracy`` and
    ``fixed_accuracy`` (fxsim, ``fixed``) on these samples (fractions in [0, 1]), or ``reason`` why
    it was not fitted: the output is not 0/1 spikes (a non-spiking output layer, or graded spikes), or fewer than 2
    timesteps (normalised LZC needs n >= 2). Never raises for those: calibration goes on without it.
    """
    from lnm_deploy.readout import LZCReadout

    n, steps = int(ref.output.shape[0]), int(ref.output.shape[1])
    why = None
    if steps < 2:
        why = f"{steps} timestep: the normalised LZC needs at least 2"
    elif not all(np.all((a == 0) | (a == 1)) for a in (ref.output, fixed.output)):
        why = ("the network's output is not 0/1 spikes (a non-spiking output layer, or graded spikes: several "
               "per step)")
    if why is not None:
        return None, {"fitted": False, "reason": why}
    readout = LZCReadout.fit(ref.output, y)
    rec = {"readout": readout.to_dict(), "fitted_on": {"run": "float", "samples": n, "timesteps": steps}}
    return rec, {"fitted": True, "fitted_on": rec["fitted_on"], "float_accuracy": readout.accuracy(ref.output, y),
                 "fixed_accuracy": readout.accuracy(fixed.output, y)}


#: The states of the float reference a calibration keeps per neuron layer: the membrane the
#: comparison's SQNR reads (the statistics read every state during their pass).
REFERENCE_STATES: tuple[str, ...] = ("v",)


def _reference_states(states: dict[str, dict[str, Array]]) -> dict[str, dict[str, Array]]:
    return {n: {k: v for k, v in st.items() if k in REFERENCE_STATES} for n, st in states.items()}


class _ReferenceKeeper:
    """Keeps, from the statistics pass's recorded float runs (``collect_stats``'s ``on_batch``),
    the rows of the first ``n`` samples: the float reference without a second float run (output,
    spikes and the ``REFERENCE_STATES``)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.parts: list[tuple[Array, RunResult]] = []

    def __call__(self, index: Array, res: RunResult) -> None:
        sel = np.flatnonzero(index < self.n)
        if sel.size == index.size:  # the whole batch: keep the run's arrays (no copies)
            self.parts.append((index, RunResult(output=res.output, spikes=res.spikes,
                                                states=_reference_states(res.states))))
        elif sel.size:
            self.parts.append((index[sel], RunResult(
                output=res.output[sel], spikes={k: v[sel] for k, v in res.spikes.items()},
                states={n: {k: v[sel] for k, v in st.items()} for n, st in _reference_states(res.states).items()})))

    def result(self) -> RunResult | None:
        """The reference over samples ``0 .. n - 1`` in order, or None where the runs kept do not
        cover every one of them."""
        if not self.parts:
            return None
        rows = np.concatenate([i for i, _ in self.parts])
        if rows.size != self.n or not np.array_equal(np.sort(rows), np.arange(self.n)):
            return None
        order = np.argsort(rows, kind="stable")
        runs = [r for _, r in self.parts]

        in_order = bool(np.array_equal(order, np.arange(order.size)))

        def cat(arrays: list[Array]) -> Array:
            if len(arrays) == 1:
                return arrays[0] if in_order else arrays[0][order]
            joined = np.concatenate(arrays)
            return joined if in_order else joined[order]

        first = runs[0]
        out = RunResult(
            output=cat([r.output for r in runs]),
            spikes={k: cat([r.spikes[k] for r in runs]) for k in first.spikes},
            states={n: {k: cat([r.states[n][k] for r in runs]) for k in st} for n, st in first.states.items()})
        self.parts = []
        return out


def _search(build: Any, ref: RunResult, x: Array, recipe: Recipe, log: list[dict[str, Any]],
            progress: bool) -> dict[str, float]:
    """Coordinate search over the weight clip of each synapse (``recipe.search``): each candidate
    scales the calibrated clip; the one that maximises the objective on the search subset wins."""
    from lnm_deploy.calibrate.compare import OBJECTIVES
    from lnm_deploy.fxsim import run_fx

    sr = recipe.search
    n = min(x.shape[0], sr.max_samples or x.shape[0])
    xs = x[:n]
    refs = {k: v[:n] for k, v in ref.spikes.items()}
    objective = OBJECTIVES[sr.objective]
    # The synapses of the layers the objective compares (spikes): a non-spiking readout's keep
    # their calibrated clip (no spike changes with them, every factor would score the same).
    synapses = [syn for name, layer in build({}).layers.items() if name in refs for syn in layer.exponents]
    groups = [[s] for s in synapses] if sr.per_layer else [synapses]
    factors: dict[str, float] = {}
    bar = progress_bar(total=sr.rounds * len(groups) * len(sr.scale_factors), desc="search", unit="candidate",
                       enabled=progress)
    for _ in range(sr.rounds):
        for group in groups:
            best = (-np.inf, factors.get(group[0], 1.0))
            for fct in sr.scale_factors:
                trial = dict(factors, **{g: fct for g in group})
                bar.update()
                try:
                    fixed = run_fx(build(trial).fx, xs)
                except Exception as e:  # a candidate the target cannot represent is skipped, and logged
                    log.append({"synapses": group, "factor": fct, "error": str(e)})
                    continue
                score = objective(refs, fixed.spikes, [k for k in refs if k in fixed.spikes])
                log.append({"synapses": group, "factor": fct, sr.objective: score})
                if score > best[0]:
                    best = (score, fct)
            factors.update({g: best[1] for g in group})
    bar.close()
    return factors


def calibrate_network(graph: Graph, x: Array, target: Target, recipe: Recipe, *, y: Array | None = None,
              source: str | os.PathLike[str] | None = None, data_path: str | os.PathLike[str] | None = None,
              progress: bool = True, workers: int | None = 1, ray_address: str | None = None,
              engine: str = "auto") -> CalibrationResult:
    """Calibrate and quantize ``graph`` for ``target`` on spikes ``x`` (see the module docstring).

    ``workers`` / ``ray_address`` / ``engine``: where the statistics pass runs
    (``lnm_deploy.distributed``)."""
    from lnm_deploy import validate
    from lnm_deploy.fxsim import run_fx

    graph, x, target, recipe, y = validate.calibration_args(graph, x, target, recipe, y)
    if x.size and not np.any(x):
        warnings.warn(f"the calibration data holds no input at all (its {x.shape[0]} samples are all "
                      "zeros): the scales are set on what the network does on silence (biases); "
                      "calibrate on data like the data it will run on", LNMDeployWarning, stacklevel=2)
    # The comparison set: the first max_samples samples of x.
    n_eval = min(x.shape[0], recipe.info.max_samples or x.shape[0])
    x_eval = x[:n_eval]
    keeper = _ReferenceKeeper(n_eval)
    # Pass 1 is data-independent: a structure the target cannot hold is refused before the statistics.
    mapped = fold(graph)
    stats = collect_with_recipe(graph, x, recipe, progress=progress, workers=workers,
                                ray_address=ray_address, engine=engine, on_batch=keeper)
    ranges = neuron_ranges(stats)
    ref = keeper.result()
    if ref is None:  # the statistics saw other samples, or ran elsewhere
        ref = run_float(graph, x_eval, record=True)
        ref = RunResult(output=ref.output, spikes=ref.spikes, states=_reference_states(ref.states))
    if ref.spikes and not any(np.any(a) for a in ref.spikes.values()):
        warnings.warn(f"no layer of the float model spikes on the {x.shape[0]} calibration samples: the scales "
                      "are set on silence and nothing checks the network; check how the graph was read "
                      "(--producer, --dt) and the data's scale", LNMDeployWarning, stacklevel=2)
    selections: dict[str, Selection] = {}  # pass 2, shared by every candidate
    notes: list[str] = []
    factors: dict[str, float] = {}

    def build(f: dict[str, float]) -> Quantized:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LNMDeployWarning)
            return quantize_mapped(mapped, ranges, target, weight_clip=_weight_clip(recipe, f, []),
                                   margin=recipe.info.margin, selections=selections)

    search_log: list[dict[str, Any]] = []
    if recipe.search.enabled:
        factors = _search(build, ref, x_eval, recipe, search_log, progress)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LNMDeployWarning)
        qz = quantize_mapped(mapped, ranges, target, weight_clip=_weight_clip(recipe, factors, notes),
                             margin=recipe.info.margin, selections=selections)
    for w in caught:  # re-emit once, after the search's silent trials
        warnings.warn(w.message, LNMDeployWarning, stacklevel=2)
    from lnm_deploy.resources import check_fits

    fit = check_fits(qz.fx, target)  # GraphError (layer, resource) when no mapping can fit; warns when it may not
    fixed = run_fx(qz.fx, x_eval, record=True)
    comparison = compare_runs_float_fixed(graph, qz, ref, fixed)

    report: dict[str, Any] = {
        "target": target.name,
        "recipe": recipe.to_dict(),
        "samples": int(n_eval),
        "timesteps": int(x.shape[1]),
        "layers": {n: qz.layers[n].to_dict() for n in qz.layers},
        "comparison": comparison,
        "stability": {k: v.to_dict() if hasattr(v, "to_dict") else v for k, v in stats.stability().items()},
        "search": {"factors": factors, "log": search_log} if recipe.search.enabled else None,
        "notes": sorted(set(notes)),
        "resources": None if fit is None else fit.to_dict(),
    }
    readouts: dict[str, Any] = {}
    if y is not None:
        from lnm_deploy.metrics import accuracy

        report["float_accuracy"] = accuracy(ref.output, y[:n_eval])
        report["fixed_accuracy"] = accuracy(fixed.output, y[:n_eval])
        lzc, report["lzc_readout"] = fit_lzc_readout(ref, fixed, y[:n_eval])
        if lzc is not None:
            readouts["lzc"] = lzc
    source_graph: dict[str, Any] | None = None
    if source is not None:
        # How the float graph was read (producer, dt, input shape: asked for and resolved), so that
        # verify reloads exactly this float model (see lnm_deploy.verify.resolve_float_graph).
        source_graph = {"path": str(Path(source).resolve()), "sha256": sha256_file(source),
                        "read_options": graph.metadata.get(READ_OPTIONS_KEY)}
    provenance = {
        "lnm_deploy": __version__, "numpy": np.__version__, "python": platform.python_version(),
        "source_graph": source_graph,
        "calibration_data": None if data_path is None else {"path": str(Path(data_path).resolve()),
                                                            "sha256": sha256_file(data_path)},
    }
    report["provenance"] = provenance
    record = {"target": target.name, "target_spec": target_spec(target), "recipe": recipe.to_dict(), "calibration": {
        "layers": report["layers"], "comparison": comparison, "notes": report["notes"],
        "stats": stats.to_dict(histograms=False)}, "provenance": provenance}
    if readouts:  # absent (not empty) without labels: an artifact without readouts reads as before
        record[READOUTS_KEY] = readouts
    neurons = [n for n in graph.nodes if n in mapped.layers]
    qz.graph.metadata.update({"calibrated_from_neurons": neurons})
    return CalibrationResult(Artifact(graph=qz.graph, fx=qz.fx, record=record), stats, qz, ref, fixed, report,
                             mapped)
