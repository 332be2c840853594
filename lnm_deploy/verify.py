"""``verify``: does the deployed network do what the simulator says, and how close is it to float?

Three runs on the same inputs: the float model (the graph the artifact was calibrated from), fxsim
on the artifact's integers, and each requested backend (Lava, ONNX) on the same integers.

- fxsim against every backend: bit for bit, every spike of every layer (``np.array_equal``); a
  mismatch names the first layer, timestep, sample and neuron.
- float against fixed point: accuracy (with labels), per-layer spike agreement and rates, and the
  first divergence, with its cause where a replay can tell: the diverging neuron is re-simulated in
  float from t = 0 with one group of quantized quantities swapped in at a time (weights and biases,
  leak dynamics, threshold and reset); the groups that alone flip that spike are the cause.

What ``verify`` establishes before it says PASSED (``docs/pipeline.md``, "What verify checks"):

1. the artifact's integers satisfy its target (re-checked when the artifact is read);
2. the float model is the graph the artifact was calibrated from (same SHA-256), read with the
   options recorded at calibration (producer, dt, input shape, reset, threshold, spikes), or else the user's explicit choice
   (``float_graph``, shown in the verdict; ``"dequantized"`` is a visible opt-out);
3. every requested backend ran and is bit-exact with fxsim on every spike of every layer of the
   stated number of samples (``backend_samples``, reported per backend);
4. the float model's output spikes at least once on the data (else nothing meaningful was compared);
5. with labels (integer class indices in [0, n_out)), the fixed-point accuracy is at most
   ``max_accuracy_drop`` below the float accuracy; without labels, fixed point predicts the float
   model's class on at least ``min_agreement`` of the samples, and at least that fraction of the
   output's (sample, step, neuron) bins agree (default ``MIN_AGREEMENT``).

The accuracy in 5 is the spike-count readout's (``readout="count"``, the default) or, with
``readout="lzc"`` (CLI ``--readout lzc``), the Lempel-Ziv complexity readout's that ``calibrate``
fitted on the float model's outputs and stored in the artifact (``record["readouts"]["lzc"]``);
without labels the class agreement then uses that readout's classes. Whatever the criterion, the
result reports the LZC readout's accuracies when the artifact carries one, and the per-output-neuron
LZC drift between float and fixed point always (``LZCCheck``; docs/readouts.md).

When the Output reads a non-spiking readout layer (``lnm_deploy.li_readout``: NIR LI / CubaLI),
the output is that layer's membrane: every backend's integer membrane must equal fxsim's
(``np.array_equal``), the float membrane is compared with the dequantized one (rms and max abs
error in the membrane's units, ``MembraneCheck``), and classes come from ``--readout
membrane-max`` / ``membrane-last`` / ``membrane-sum`` (``count`` is ``membrane-sum``). The
output-bin criterion then counts the (sample, step) bins whose arg-max neuron agrees, and is
reported only (float and integer membranes are never equal bin for bin).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lnm_deploy.artifact import Artifact, read_artifact
from lnm_deploy.core import RunResult
from lnm_deploy.errors import (
    GraphError,
    LNMDeployError,
    LNMDeployWarning,
    UnsupportedError,
    UserInputError,
)
from lnm_deploy.execute import run_float
from lnm_deploy.fixedpoint import FxNeuron
from lnm_deploy.ir import Graph, Neuron
from lnm_deploy.ir.ops import conv2d
from lnm_deploy.metrics import LZCDrift, lzc_drift
from lnm_deploy.readout import (
    MEMBRANE_READOUTS,
    READOUTS_KEY,
    LZCReadout,
    MembraneCheck,
    membrane_check,
)

if TYPE_CHECKING:
    from lnm_deploy.calibrate.passes import MappedGraph

Array = np.ndarray

#: Without labels, verify passes only if fixed point predicts the float model's class (arg-max of the
#: output spike counts) on at least this fraction of the samples (``--min-agreement``).
MIN_AGREEMENT = 0.95

#: The readouts the accuracy criterion can use (``verify(readout=...)``, CLI ``--readout``): the
#: spike count (arg-max over output neurons, the default) or the artifact's LZC readout; for an
#: artifact whose Output reads a non-spiking readout (``lnm_deploy.li_readout``), the rules of its
#: membrane (``lnm_deploy.readout.MEMBRANE_READOUTS``: arg-max of the maximum over time, of the
#: last step, of the sum over time).
READOUTS: tuple[str, ...] = ("count", "lzc", *MEMBRANE_READOUTS)

#: The artifact record's key for its readouts (written by ``calibrate`` with labels).


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
    samples: int = 0  # how many samples (the first ones) this backend was compared on


@dataclass
class LZCCheck:
    """The Lempel-Ziv complexity part of ``verify`` (``lnm_deploy.metrics`` / ``lnm_deploy.readout``).

    ``readout``: the artifact carries an LZC readout (fitted at calibration) and it applied to these
    runs; ``fitted_on``: its record (``{"run": "float", "samples", "timesteps"}``).
    ``float_accuracy`` / ``fixed_accuracy``: that readout's accuracy (fraction in [0, 1]) on the float
    and fxsim outputs, with labels, on ``samples`` samples; ``backend_accuracy``: on each backend's
    outputs, over its first ``backend_samples[name]`` samples (``BackendCheck.samples``: fewer than
    ``samples`` when the backend ran a subset, so the accuracies differ in sample, not in spikes).
    ``prediction_agreement``: fraction of samples where it
    gives float and fxsim the same class. ``drift``: per output neuron, mean over samples of
    |LZC(float) - LZC(fxsim)| (normalised LZC, ``metrics.lzc_drift``), None where LZC does not
    apply (``notes`` say why: an output that is not 0/1 spikes, fewer than 2 timesteps).
    """

    readout: bool = False
    fitted_on: dict[str, Any] | None = None
    float_accuracy: float | None = None
    fixed_accuracy: float | None = None
    backend_accuracy: dict[str, float] = field(default_factory=dict)
    backend_samples: dict[str, int] = field(default_factory=dict)
    samples: int = 0
    prediction_agreement: float | None = None
    drift: LZCDrift | None = None
    notes: list[str] = field(default_factory=list)

    def samples_note(self, backend: str) -> str:
        """`` (48 of 400 samples)``: the samples ``backend``'s accuracy covers, of ``samples``
        (empty when that backend has no LZC accuracy)."""
        n = self.backend_samples.get(backend)
        if n is None:
            return ""
        return f" ({n} of {self.samples} samples)" if self.samples else f" ({n} samples)"

    def to_dict(self) -> dict[str, Any]:
        return {"readout": self.readout, "fitted_on": self.fitted_on, "float_accuracy": self.float_accuracy,
                "fixed_accuracy": self.fixed_accuracy, "backend_accuracy": dict(self.backend_accuracy),
                "backend_samples": dict(self.backend_samples), "samples": self.samples,
                "prediction_agreement": self.prediction_agreement,
                "drift": None if self.drift is None else self.drift.to_dict(), "notes": list(self.notes)}


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
    float_graph: Graph | None = field(default=None, repr=False)  # the float model compared with
    float_model: dict[str, Any] = field(default_factory=dict)  # FloatModel.to_dict()
    prediction_agreement: float = 1.0  # fraction of samples where float and fixed predict the same class
    output_agreement: float = 1.0  # fraction of equal output bins (sample, step, neuron)
    min_agreement: float = MIN_AGREEMENT
    labels: bool = False
    readout: str = "count"  # which readout the accuracy / class-agreement criterion used (READOUTS)
    lzc: LZCCheck = field(default_factory=LZCCheck)
    #: The Output reads a non-spiking readout: its membrane compared (backends bit-exact against
    #: fxsim, float against the dequantized fixed point in real units); None for a spike output.
    membrane: MembraneCheck | None = None
    #: mapping and cost (``lnm_deploy.cost.resources_report``), with ``comparison`` rows when verify
    #: was given another artifact to compare with (``compare``)
    resources: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "samples": self.samples,
            "timesteps": self.timesteps,
            "float": {"accuracy": self.float_accuracy, **self.float_model, "source": self.float_source},
            "fixed": {"accuracy": self.fixed_accuracy},
            "prediction_agreement": self.prediction_agreement,
            "output_agreement": self.output_agreement,
            "criteria": {"labels": self.labels, "max_accuracy_drop": self.max_accuracy_drop,
                         "min_agreement": None if self.labels else self.min_agreement,
                         "readout": self.readout},
            "max_accuracy_drop": self.max_accuracy_drop,
            "layers": [asdict(x) for x in self.layers],
            "backends": {k: asdict(v) for k, v in self.backends.items()},
            "first_divergence": self.first_divergence,
            "passed": self.passed,
            "reasons": self.reasons,
            "lzc": self.lzc.to_dict(),
            **({"membrane": self.membrane.to_dict()} if self.membrane is not None else {}),
            "resources": self.resources,
        }


#: ``float_graph`` value (CLI ``--float dequantized``) that compares with the artifact's own
#: dequantized graph: an explicit opt-out, shown in the verdict.
DEQUANTIZED = "dequantized"


@dataclass
class FloatModel:
    """The float model ``verify`` compares with, and how it was obtained.

    ``read_options``: the options the graph was read with (producer, dt in seconds, input shape),
    None for the artifact's dequantized graph. ``as_calibrated``: read exactly as it was read when the
    artifact was calibrated (same file, same options). ``opt_out``: the user chose the artifact's own
    dequantized graph, so float and fixed point differ only by integer rounding.
    """

    graph: Graph
    source: str
    read_options: dict[str, Any] | None
    as_calibrated: bool
    opt_out: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.source, "read_options": self.read_options, "as_calibrated": self.as_calibrated,
                "opt_out": self.opt_out, "notes": self.notes}


#: The options of ``nir_io.read_nir`` a float graph is read with, as recorded at calibration
#: (``read_options["requested"]``): all of them are replayed, so that verify reads the graph as it
#: was calibrated (a producer's reset, threshold and spike reading included).
READING_OPTIONS = ("producer", "dt", "input_shape", "reset", "threshold", "spikes", "v_floor", "readout_nodes")


def _same_option(key: str, a: Any, b: Any) -> bool:
    """One reading option (producer, dt, input_shape) compared across JSON round trips: dt as a
    number, the shape as a list."""
    if key == "dt":
        return (a is None and b is None) or (a is not None and b is not None and float(a) == float(b))
    if key == "input_shape":
        return (a is None) == (b is None) and list(a or []) == list(b or [])
    return bool(a == b)


def _same_options(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    if a is None or b is None:
        return a is b
    return all(_same_option(k, a.get(k), b.get(k)) for k in READING_OPTIONS)


def resolve_float_graph(artifact: Artifact, float_path: str | os.PathLike[str] | Graph | None = None, *,
                        producer: str | None = None, dt: float | None = None,
                        input_shape: tuple[int, ...] | None = None) -> FloatModel:
    """The float model to compare ``artifact`` with, read exactly as it was read at calibration.

    The file: ``float_path``, else the graph the artifact was calibrated from (its recorded path, with
    the recorded SHA-256). The reading: the options recorded in the artifact's provenance
    (``source_graph.read_options``: producer, dt, input shape as given to ``calibrate``), each one
    replaced by ``producer`` / ``dt`` / ``input_shape`` where given, with a warning when that
    contradicts the record. ``float_path="dequantized"`` (``DEQUANTIZED``) is the explicit opt-out:
    the artifact's own dequantized graph.

    Raises:
        UserInputError: the source graph is missing or changed and no ``float_path`` was given; the
            artifact records no read options for a graph that needs them and none were given.
        GraphError: the recorded options now resolve differently than at calibration.
    """
    from lnm_deploy.fileio import sha256_file
    from lnm_deploy.nir_io import READ_OPTIONS_KEY, read_nir

    if isinstance(float_path, Graph):  # the API: a graph object the caller holds
        if any(v is not None for v in (producer, dt, input_shape)):
            raise UserInputError("producer/dt/input_shape read a float graph file; float_graph is a Graph already")
        return FloatModel(float_path, "graph object given by the caller",
                          float_path.metadata.get(READ_OPTIONS_KEY), as_calibrated=False,
                          notes=["float model: a Graph object given by the caller (not checked against the "
                                 "artifact's record)"])
    if float_path is not None and os.fspath(float_path) == DEQUANTIZED:
        if any(v is not None for v in (producer, dt, input_shape)):
            raise UserInputError("--producer/--dt/--input-shape read a float graph; --float dequantized uses "
                                 "the artifact's own graph")
        return FloatModel(artifact.graph, "artifact (dequantized)", None, as_calibrated=False, opt_out=True,
                          notes=["float model: the artifact's own dequantized graph (--float dequantized): "
                                 "float and fixed point differ only by integer rounding"])
    provenance = artifact.record.get("provenance")
    src = provenance.get("source_graph") if isinstance(provenance, dict) else None
    src = src if isinstance(src, dict) else {}
    recorded = src.get("read_options") if isinstance(src.get("read_options"), dict) else None
    hint = ("pass --float GRAPH.nir (the float graph, read with the recorded options), or --float dequantized "
            "to compare with the artifact's own dequantized graph (the verdict then says so); API: "
            "float_graph=PATH, a Graph, or 'dequantized'")
    if float_path is None:
        path = src.get("path")
        if not path or not Path(path).is_file():
            raise UserInputError(f"the float graph the artifact was calibrated from ({path or 'not recorded'}) is "
                                 f"not available: {hint}")
        if sha256_file(path) != src.get("sha256"):
            raise UserInputError(f"{path} changed since calibration (its SHA-256 differs from the artifact's "
                                 f"record): {hint}")
        path = str(path)
    else:
        path = os.fspath(float_path)
    given = {"producer": producer, "dt": None if dt is None else float(dt),
             "input_shape": None if input_shape is None else [int(s) for s in input_shape]}
    notes: list[str] = []
    if recorded is not None:
        requested = dict(recorded.get("requested") or {})
        conv = recorded.get("convention")
        if isinstance(conv, dict) and "max_spikes" not in conv:
            # Recorded by a reader that read every neuron with v > v_th and one spike per step
            # whatever the producer's convention declared (lnm-deploy before the spike rules):
            # replay that reading, not today's.
            requested.setdefault("threshold", ">")
            requested.setdefault("spikes", "single")
        resolved = recorded.get("resolved") if isinstance(recorded.get("resolved"), dict) else {}
        own = float_path is None and resolved.get("producer") == "lnm-deploy"
        for key, value in given.items():
            if value is None:
                continue
            if own:  # the reader ignores reading options for lnm-deploy's own graphs: say so once
                msg = (f"--{key.replace('_', '-')} {value} ignored: the float graph is lnm-deploy's own, which "
                       f"carries its {key} ({resolved.get(key)})")
                warnings.warn(msg, LNMDeployWarning, stacklevel=2)
                notes.append(msg)
                continue
            # what calibration asked for, else what its reading resolved (detected) when it asked nothing
            old = requested.get(key)
            old = resolved.get(key) if old is None else old
            if not _same_option(key, old, value):
                msg = (f"--{key.replace('_', '-')} {value} contradicts the artifact's record (calibrated with "
                       f"{key}={old}); the float model is read with {value}")
                warnings.warn(msg, LNMDeployWarning, stacklevel=2)
                notes.append(msg)
            requested[key] = value
    else:
        requested = given
    shape = requested.get("input_shape")
    graph = read_nir(path, producer=requested.get("producer"), dt=requested.get("dt"),
                     input_shape=None if shape is None else tuple(int(s) for s in shape),
                     reset=requested.get("reset"), threshold=requested.get("threshold"),
                     spikes=requested.get("spikes"), v_floor=requested.get("v_floor"),
                     readout_nodes=requested.get("readout_nodes"))
    now = graph.metadata.get(READ_OPTIONS_KEY, {}).get("resolved")
    if recorded is None:
        if now is not None and now.get("producer") != "lnm-deploy" and not any(v is not None for v in given.values()):
            raise UserInputError(
                f"the artifact does not record how its float graph {path} was read (calibrated by an older "
                "lnm-deploy) and that graph needs reading options: pass --producer, --dt and --input-shape "
                "as given to 'calibrate'")
        as_calibrated = bool(now is not None and now.get("producer") == "lnm-deploy")
        if not as_calibrated:
            notes.append("reading options given on the command line; the artifact does not record them")
    else:
        as_calibrated = _same_options(now, recorded.get("resolved"))
        if not as_calibrated and not any(v is not None for v in given.values()):
            raise GraphError(f"{path} now reads as {now} but was read as {recorded.get('resolved')} at "
                             "calibration: pass --producer/--dt/--input-shape to choose")
    if float_path is not None and src.get("sha256") and sha256_file(path) != src.get("sha256"):
        as_calibrated = False
        notes.append(f"--float {path} is not the file the artifact was calibrated from")
    differs = spike_rule_differences(graph, artifact.graph)
    if differs:
        raise GraphError(f"{path} now reads with other spike rules than the artifact was calibrated with "
                         f"({'; '.join(differs)}): comparing them would judge another model. Recalibrate from "
                         "the graph, or pass --float dequantized to compare with the artifact's own "
                         "dequantized graph")
    return FloatModel(graph, path, {"requested": requested, "resolved": now}, as_calibrated, notes=notes)


def spike_rule_differences(graph: Graph, deq: Graph) -> list[str]:
    """Where a float graph's neurons and an artifact's dequantized graph (``Artifact.graph``)
    disagree on how a neuron spikes: spiking or a readout, the spike test, graded or binary spikes
    (the dequantized graph holds the target's cap, so only binary against graded counts), a
    membrane floor or none. Empty when they agree (nodes in only one graph are not compared)."""
    out = []
    for name, node in graph.nodes.items():
        other = deq.nodes.get(name)
        if not isinstance(node, Neuron) or not isinstance(other, Neuron):
            continue
        for what, a, b in (("spiking", node.spiking, other.spiking),
                           ("spike test", f"v {node.threshold} v_th", f"v {other.threshold} v_th"),
                           ("graded spikes", node.graded, other.graded),
                           ("membrane floor", node.v_floor is not None, other.v_floor is not None)):
            if a != b:
                out.append(f"node '{name}': {what} {a} in the float graph, {b} at calibration")
    return out


def artifact_rule_differences(artifact: Artifact) -> list[str]:
    """Where an artifact's integer network (``Artifact.fx``) and its dequantized graph
    (``Artifact.graph``, the spike rules the float model is checked against) disagree on how a
    neuron layer spikes (``FxNeuron.spike_rule``): the spike test, the spikes per step (the
    dequantized graph holds the target's cap), a membrane floor or none, the reset. ``calibrate``
    writes them together, so a difference means files from two calibrations or an edit. Empty
    when they agree (kinds without a rule are not compared)."""
    out = []
    for name, fxn in artifact.fx.nodes.items():
        deq = artifact.graph.nodes.get(name)
        rule = fxn.spike_rule() if isinstance(fxn, FxNeuron) else None
        if rule is None or not isinstance(deq, Neuron):
            continue
        if not deq.spiking:
            out.append(f"node '{name}': spiking in the integer network, a non-spiking readout in the dequantized graph")
            continue
        for what, a, b in (("spike test", f"v {rule.test} v_th", f"v {deq.threshold} v_th"),
                           ("spikes per step at most", rule.max_spikes, deq.max_spikes),
                           ("membrane floor", rule.floor, deq.v_floor is not None),
                           ("reset", rule.reset, deq.reset)):
            if a != b:
                out.append(f"node '{name}': {what} {a} in the integer network, {b} in the dequantized graph")
    return out


def artifact_lzc_readout(artifact: Artifact) -> tuple[LZCReadout | None, dict[str, Any] | None]:
    """The LZC readout ``calibrate`` stored in ``artifact`` (``record["readouts"]["lzc"]``, fitted on
    the float model's output spikes of the calibration set) and its ``fitted_on`` record; ``(None,
    None)`` when the artifact has none (calibrated without labels, or before readouts existed).

    Raises:
        GraphError: the record is there but malformed (not what ``calibrate`` writes).
    """
    readouts = artifact.record.get(READOUTS_KEY)
    if readouts is None:
        return None, None
    if not isinstance(readouts, dict):
        raise GraphError(f"the artifact's record '{READOUTS_KEY}' is {type(readouts).__name__}, not a mapping: "
                         "recalibrate the artifact")
    entry = readouts.get("lzc")
    if entry is None:
        return None, None
    try:
        if not isinstance(entry, dict) or not isinstance(entry.get("fitted_on"), dict):
            raise UserInputError("expected {'readout': ..., 'fitted_on': {...}}")
        return LZCReadout.from_dict(entry.get("readout")), dict(entry["fitted_on"])
    except UserInputError as e:
        raise GraphError(f"the artifact's LZC readout ('{READOUTS_KEY}.lzc') is malformed ({e}): recalibrate "
                         "the artifact with labels") from None


def _is_spikes(a: Array) -> bool:
    return bool(np.all((a == 0) | (a == 1)))


def lzc_check(readout: LZCReadout | None, fitted_on: dict[str, Any] | None, runs: dict[str, RunResult],
              y: Array | None, *, required: bool = False) -> LZCCheck:
    """The ``LZCCheck`` of ``runs`` (``"float"``, ``"fxsim"`` and any backends, each ``output``
    (samples, timesteps, *output_shape); a backend's the first samples of fxsim's) with labels ``y``
    (samples,) or None.

    ``required`` (``readout="lzc"``): raise ``UserInputError`` instead of a note when the readout
    cannot be applied to these runs (another number of timesteps than it was fitted on, outputs that
    are not 0/1 spikes).
    """
    fixed = runs["fxsim"].output
    ref = runs["float"].output.reshape(fixed.shape)
    out = LZCCheck(fitted_on=fitted_on, samples=int(fixed.shape[0]))
    why = None
    if fixed.shape[1] < 2:
        why = f"{fixed.shape[1]} timestep: LZC needs at least 2"
    elif not (_is_spikes(ref) and _is_spikes(fixed)):
        why = "the output is not 0/1 spikes (a non-spiking output layer, or graded spike counts): LZC does not apply"
    if why is None:
        out.drift = lzc_drift(ref, fixed)
    else:
        out.notes.append(why)
    if readout is None:
        out.notes.append("the artifact carries no LZC readout (calibrate with labels to fit one)")
        return out
    if why is None and readout.timesteps is not None and readout.timesteps != fixed.shape[1]:
        why = (f"the LZC readout was fitted on {readout.timesteps} timesteps, these runs have "
               f"{fixed.shape[1]}: verify on data of that length")
        out.notes.append(why)
    if why is not None:
        if required:
            raise UserInputError(f"--readout lzc: {why}")
        return out
    out.readout = True
    f_pred, q_pred = readout.predict(ref), readout.predict(fixed)
    out.prediction_agreement = float(np.mean(f_pred == q_pred))
    if y is not None:
        out.float_accuracy = float(np.mean(f_pred == y))
        out.fixed_accuracy = float(np.mean(q_pred == y))
        for name, res in runs.items():
            if name in ("float", "fxsim"):
                continue
            o = res.output
            if o.ndim == fixed.ndim and o.shape[1:] == fixed.shape[1:] and 0 < o.shape[0] <= fixed.shape[0] \
                    and _is_spikes(o):
                out.backend_accuracy[name] = float(np.mean(readout.predict(o) == y[: o.shape[0]]))
                out.backend_samples[name] = int(o.shape[0])
            else:
                out.notes.append(f"{name}: outputs shaped {o.shape} are not fxsim's: no LZC accuracy")
    return out


#: The groups of quantized quantities the divergence replay swaps in, one at a time.
REPLAY_GROUPS: tuple[str, ...] = ("weights", "dynamics", "threshold")


def replay_neuron(graph: Graph, deq: Graph, layer: str, flat: int, sample: int, t_end: int,
                  spikes: dict[str, Array], swap: set[str] | frozenset[str] = frozenset(), *,
                  mapped: tuple[MappedGraph, MappedGraph] | None = None) -> dict[str, Array]:
    """Re-simulate neuron ``flat`` (index into the layer's flattened shape) of the Neuron ``layer``
    in float64 from t = 0 to ``t_end`` on the recorded spikes of its sources (``spikes``: layer ->
    (samples, timesteps, *shape), the input included), with the quantity groups in ``swap``
    (``REPLAY_GROUPS``) taken from the dequantized graph ``deq``: ``weights`` (synaptic weights,
    biases, input gains and the constant term of P, which carries the folded biases), ``dynamics``
    (P's other coefficients, the synaptic decay), ``threshold`` (threshold, reset value and mode,
    the spike test, the spikes per step and the membrane floor).

    The neuron is stepped by the Neuron's own float step (``Neuron.float_step``, sliced to one
    neuron), so with ``swap`` empty the trace is the float executor's. Returns ``{"s": spikes,
    "v": membrane after reset, "v_pre": membrane before the spike test}``, each (t_end + 1,) float64.

    ``mapped``: both graphs folded onto their synapses (``lnm_deploy.calibrate.fold``), as
    ``(fold(graph), fold(deq))``; folded here when None (pass them when replaying many times).

    Raises:
        UnsupportedError: the layer is not a spiking Neuron in both graphs, or the graphs are a
            structure the quantizer's ``fold`` does not cover.
    """
    if mapped is None:
        from lnm_deploy.calibrate.passes import fold

        mapped = (fold(graph), fold(deq))

    def current(g: Graph, mg: MappedGraph) -> tuple[Array, Neuron]:
        """The neuron's input per step as the executor sums it (synapse outputs plus biases)."""
        node = g.nodes[layer]
        # A kind derived from the LNM Neuron (an adaptive threshold) is replayed with its own float
        # step: its extra parameters are part of the threshold group (``_one_neuron``).
        if not isinstance(node, Neuron) or not node.spiking:
            raise UnsupportedError(f"the divergence replay needs a spiking '{Neuron.kind}' node or a kind derived "
                                   f"from it, not '{node.kind}'", node=layer)
        ml = mg.layers[layer]
        syns, bias = ml.synapses, ml.bias
        x = np.zeros(t_end + 1)
        for s in syns:
            src = spikes[s.source][sample, : t_end + 1].reshape(t_end + 1, -1).astype(np.float64)
            if s.delayed:  # a back edge: the previous step's spikes (none at t = 0)
                src = np.vstack([np.zeros((1, src.shape[1])), src[:-1]])
            if s.kind == "dense":
                x += src @ s.weight[flat]
            else:
                sh = spikes[s.source].shape[2:]
                y = conv2d(src.reshape(-1, *sh), s.weight, None, s.conv["stride"], s.conv["padding"],
                           s.conv["dilation"], s.conv["groups"])
                x += y.reshape(t_end + 1, -1)[:, flat]
        return x + float(bias.reshape(-1)[flat]), node

    x_f, nf = current(graph, mapped[0])
    x_q, nq = current(deq, mapped[1])
    if type(nf) is not type(nq):
        raise UnsupportedError(f"the float layer is a '{nf.kind}' and the dequantized one a '{nq.kind}': the replay "
                               "swaps parameters between nodes of one kind", node=layer)
    wts, x = (nq, x_q) if "weights" in swap else (nf, x_f)
    dyn = nq if "dynamics" in swap else nf
    thr = nq if "threshold" in swap else nf

    def one(a: Array) -> Array:
        return a.reshape(-1)[flat : flat + 1]

    poly = np.stack([one(wts.poly[0])] + [one(dyn.poly[k]) for k in range(1, dyn.poly.shape[0])])
    syn_gain = one(wts.syn_gain) if wts.syn_gain is not None else np.ones(1)
    with_syn = dyn.syn_decay is not None
    assert thr.v_th is not None
    # parameters a derived kind adds (an adaptive threshold's decay and jump, a refractory decay) go
    # with the threshold group
    base_fields = {f.name for f in dataclasses.fields(Neuron)}
    extra: dict[str, Any] = {f.name: (None if getattr(thr, f.name) is None else one(getattr(thr, f.name)))
                             for f in dataclasses.fields(type(thr)) if f.init and f.name not in base_fields}
    neuron = type(thr)(**extra, shape=(1,), poly=poly, v_th=one(thr.v_th), v_reset=one(thr.v_reset), reset=thr.reset,
                    in_gain=one(wts.in_gain) if with_syn else one(wts.in_gain) * syn_gain,
                    syn_decay=one(dyn.syn_decay) if dyn.syn_decay is not None else None,
                    syn_gain=syn_gain if with_syn else None, dt=dyn.dt, threshold=thr.threshold,
                    max_spikes=thr.max_spikes, v_floor=None if thr.v_floor is None else one(thr.v_floor))
    step = neuron.float_step(layer, 1, np.float64)
    out = {k: np.zeros(t_end + 1) for k in ("s", "v", "v_pre")}
    for t in range(t_end + 1):
        out["s"][t] = step(x[t : t + 1].reshape(1, 1))[0, 0]
        out["v"][t] = step.state("v")[0, 0]
        out["v_pre"][t] = step.state("v_pre")[0, 0]
    return out


def _replay(graph: Graph, deq: Graph, layer: str, flat: int, sample: int, t_end: int,
            spikes: dict[str, Array], swap: set[str], mapped: tuple[MappedGraph, MappedGraph]) -> int:
    """The replayed neuron's spike at ``t_end`` (``replay_neuron``)."""
    return int(replay_neuron(graph, deq, layer, flat, sample, t_end, spikes, swap, mapped=mapped)["s"][t_end])


def explain_divergence(graph: Graph, artifact: Artifact, div: Any, ref: RunResult, x: Array) -> dict[str, Any]:
    """The first divergence with its likely cause (see the module docstring)."""
    from itertools import combinations

    spikes = {**ref.spikes, graph.input_name: x}

    layer, sample, t, neuron = div.layer, div.sample, div.timestep, div.neuron
    out: dict[str, Any] = {"layer": layer, "sample": int(sample), "timestep": int(t), "neuron": int(neuron)}
    node = graph.nodes.get(layer)
    if node is None or layer not in artifact.graph.nodes:
        out["cause"] = "undetermined (the layer has no float counterpart)"
        return out
    if not isinstance(node, Neuron):
        out["cause"] = (f"undetermined (the divergence replay covers '{Neuron.kind}' layers and kinds derived from it, "
                        f"not '{node.kind}')")
        return out
    try:
        from lnm_deploy.calibrate.passes import fold

        mapped = (fold(graph), fold(artifact.graph))  # once for every replay below
        base = _replay(graph, artifact.graph, layer, neuron, sample, t, spikes, set(), mapped)
        fixed_like = _replay(graph, artifact.graph, layer, neuron, sample, t, spikes, set(REPLAY_GROUPS), mapped)
    except LNMDeployError as e:  # structures the replay does not cover: say so instead of guessing
        out["cause"] = f"undetermined ({type(e).__name__}: {e})"
        return out
    groups = REPLAY_GROUPS
    single = [g for g in groups
              if _replay(graph, artifact.graph, layer, neuron, sample, t, spikes, {g}, mapped) != base]
    out["float_spike"], out["dequantized_spike"] = base, fixed_like
    names = {"weights": "synaptic weights and biases", "dynamics": "leak polynomial / decays",
             "threshold": "threshold and reset"}
    if single:
        out["cause"] = " and ".join(names[g] for g in single) + " (each alone flips this spike)"
        out["causes"] = single
    else:
        pairs = [set(p) for p in combinations(groups, 2)
                 if _replay(graph, artifact.graph, layer, neuron, sample, t, spikes, set(p), mapped) != base]
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
           backends: str | tuple[str, ...] | list[str] = ("lava",),
           float_graph: str | os.PathLike[str] | Graph | None = None,
           max_accuracy_drop: float = 0.005, backend_samples: int | None = None,
           min_agreement: float = MIN_AGREEMENT, producer: str | None = None, dt: float | None = None,
           input_shape: tuple[int, ...] | None = None, progress: bool = True, workers: int | None = 1,
           ray_address: str | None = None, engine: str = "auto", readout: str = "count",
           compare: Artifact | str | os.PathLike[str] | None = None,
           artifact_path: str | os.PathLike[str] | None = None) -> VerifyResult:
    """Run float, fxsim and ``backends`` on ``x`` and compare (see the module docstring).

    Args:
        artifact: an ``Artifact`` or the path of one (its integers are re-checked against its target).
        x: spikes (samples, timesteps, *input_shape), 0/1.
        y: optional labels (samples,), integer class indices in [0, n_out).
        backends: integer backend name(s) held bit-exact against fxsim.
        float_graph: the float graph to compare with; default the one the artifact was calibrated
            from; a ``Graph`` object (used as given, the verdict says so); ``"dequantized"`` for the
            artifact's own dequantized graph (an opt-out the verdict shows). Read with the
            artifact's recorded options, replaced by ``producer``, ``dt`` (seconds) and
            ``input_shape`` where given.
        max_accuracy_drop: with labels, the largest accepted float - fixed accuracy, in [0, 1].
        backend_samples: hold the backends against fxsim on the first N >= 1 samples (Lava runs one
            sample at a time); float and fxsim always run on all of ``x``.
        min_agreement: without labels, the smallest accepted fraction of samples on which fixed
            point predicts the float model's class, and of equal output bins, in [0, 1].
        workers, ray_address, engine: the backends' runs are split by samples over N local
            processes or a Ray cluster (``lnm_deploy.distributed``); results are identical whatever N.
        readout: which readout the accuracy criterion (with labels) and the class agreement
            (without) use: ``"count"`` (spike counts, the default) or ``"lzc"`` (the artifact's LZC
            readout, ``artifact_lzc_readout``). The LZC accuracies and drift are reported either way.
            For an Output reading a non-spiking readout layer (its membrane, ``lnm_deploy.li_readout``)
            also ``"membrane-max"``, ``"membrane-last"``, ``"membrane-sum"``
            (``lnm_deploy.readout.MEMBRANE_READOUTS``); such a membrane is held bit-exact against
            fxsim on every backend and compared with the float membrane in real units
            (``VerifyResult.membrane``; ``count`` classifies it as ``membrane-sum``).
        compare: another artifact of the same network (for example calibrated for ``loihi2-lif``)
            whose fxsim accuracy and cost on ``x`` are set beside this one's
            (``VerifyResult.resources["comparison"]``, rows labelled by file name, ``lnm_deploy.cost``);
            it decides nothing, but must be the same network (``compared_artifact``).
        artifact_path: the file ``artifact`` was read from when it is given as an ``Artifact`` (names
            it in ``compare``'s messages and row label); default its path when given as one.

    Raises:
        UserInputError: bad arguments, labels or data; ``compare`` is not a calibrated artifact of
            the same network (another input or output shape, other neuron layers); the float model cannot be reloaded as calibrated;
            ``readout="lzc"`` on an artifact without an LZC readout (recalibrate with labels) or on
            runs it does not apply to (another number of timesteps, non-spike outputs).
        GraphError: the artifact's integers violate its target; its LZC readout record is malformed.
    """
    import time

    from lnm_deploy import validate
    from lnm_deploy.calibrate.compare import compare_spikes
    from lnm_deploy.core import first_divergence
    from lnm_deploy.distributed import check_workers, run_sharded
    from lnm_deploy.fxsim import first_mismatch, run_fx
    from lnm_deploy.metrics import accuracy, predictions

    workers = check_workers(workers)
    art = artifact if isinstance(artifact, Artifact) else read_artifact(artifact)
    if differs := artifact_rule_differences(art):
        more = f"; {len(differs) - 3} more" if len(differs) > 3 else ""
        raise GraphError(f"the artifact's integer network and its dequantized graph spike by different rules "
                         f"({'; '.join(differs[:3])}{more}): its parts come from different calibrations or were "
                         "edited, and no float model would judge the network it runs. Recalibrate")
    backends, max_accuracy_drop, backend_samples = validate.verify_options(
        backends, max_accuracy_drop, backend_samples)
    min_agreement = validate.fraction(min_agreement, "min_agreement (--min-agreement)")
    if not isinstance(readout, str) or readout not in READOUTS:
        raise UserInputError(f"readout (--readout) must be one of {list(READOUTS)}, got {readout!r}")
    lzc_readout, fitted_on = artifact_lzc_readout(art)
    graded = _readout_layer(art)
    if readout in MEMBRANE_READOUTS and graded is None:
        raise UserInputError(f"--readout {readout}: the artifact's Output reads spikes, not the membrane of a "
                             "non-spiking readout layer: use --readout count or lzc")
    if readout == "lzc" and lzc_readout is None and graded is not None:
        raise UserInputError("--readout lzc: the artifact's Output reads the membrane of a non-spiking readout "
                             f"layer ('{graded}'), not spikes, so no LZC readout applies: use --readout "
                             f"{' or '.join(MEMBRANE_READOUTS)}")
    if readout == "lzc" and lzc_readout is None:
        raise UserInputError("--readout lzc: the artifact carries no LZC readout (it was calibrated without "
                             "labels, or by an lnm-deploy without readouts): recalibrate it with labels (a "
                             "calibration .npz with y) to fit one, or use --readout count")
    if artifact_path is None and not isinstance(artifact, Artifact):
        artifact_path = artifact
    other = None if compare is None else compared_artifact(art, artifact_path, compare)
    x = validate.spikes(x, art.graph, "verification data")
    if x.size and not np.any(x):
        warnings.warn(f"the verification data holds no input at all (its {x.shape[0]} samples are all "
                      "zeros): the verdict covers only what the network does on silence (biases)",
                      LNMDeployWarning, stacklevel=2)
    if y is not None:
        y = validate.labels(y, x.shape[0], validate.n_outputs(art.fx), "verification labels")
    model = resolve_float_graph(art, float_graph, producer=producer, dt=dt, input_shape=input_shape)
    graph = model.graph
    ref = run_float(graph, x, record=True, progress=progress)
    fixed = run_fx(art.fx, x, record=True, progress=progress)
    order = [n for n in art.fx.schedule().order if n in fixed.spikes]
    missing = [n for n in order if n not in ref.spikes]
    if missing:
        raise UserInputError(f"the float graph ({model.source}) has no layers {missing}: pass the graph the "
                             "artifact was calibrated from with --float")
    runs: dict[str, RunResult] = {"float": ref, "fxsim": fixed}
    backend_outputs: dict[str, Array] = {}
    checks: dict[str, BackendCheck] = {}
    reasons: list[str] = []
    for b in backends:
        t0 = time.perf_counter()
        nb = x.shape[0] if backend_samples is None else min(int(backend_samples), x.shape[0])
        res = run_sharded(b, art.fx, x[:nb], workers=workers, ray_address=ray_address, engine=engine,
                          progress=progress)
        backend_outputs[b] = res.output
        if b != "fxsim":  # a sharded fxsim run is checked below; the full reference run stays runs["fxsim"]
            runs[b] = res
        sub = {n: fixed.spikes[n][:nb] for n in order}
        absent = [n for n in order if n not in res.spikes or res.spikes[n].shape != sub[n].shape]
        if absent:
            reasons.append(f"{b} returned no spikes (or wrongly shaped ones) for layers {absent}")
        mism = sum(int(np.sum(sub[n] != res.spikes[n])) for n in order if n not in absent)
        total = sum(int(sub[n].size) for n in order if n not in absent)
        m = first_mismatch({n: sub[n] for n in order if n not in absent}, res.spikes,
                           order=[n for n in order if n not in absent])
        checks[b] = BackendCheck(bit_exact=m is None and not absent, mismatched_spikes=mism, compared_spikes=total,
                                 first_mismatch=None if m is None else {**asdict(m), "text": str(m)},
                                 seconds=time.perf_counter() - t0, samples=int(nb))
        if m is not None:
            reasons.append(f"{b} differs from fxsim: {m}")
        if graded is not None:  # the readout's membrane, integer, bit for bit
            same = res.output.shape == fixed.output[:nb].shape and np.array_equal(res.output, fixed.output[:nb])
            checks[b].bit_exact = checks[b].bit_exact and bool(same)
            if not same:
                reasons.append(f"{b} differs from fxsim on the membrane of readout layer '{graded}'")

    comps = compare_spikes(ref.spikes, fixed.spikes, order)
    layers = [LayerCheck(n, comps[n].agreement, comps[n].rate_reference, comps[n].rate_test) for n in order]
    div = first_divergence(ref.spikes, fixed.spikes, order)
    divergence = None if div is None else explain_divergence(graph, art, div, ref, x)
    pred_agreement = float(np.mean(predictions(ref.output) == predictions(fixed.output)))
    membrane = None
    if graded is not None:
        # The membrane: float against q * integer; per step, the same arg-max neuron (the output
        # bins of a spike output), and the rule's classes.
        membrane = membrane_check(graded, float(art.record["calibration"]["layers"][graded]["q"]),
                                  readout if readout in MEMBRANE_READOUTS else "membrane-sum", ref.output,
                                  fixed.output, backend_outputs, y)
        flat = fixed.output.reshape(*fixed.output.shape[:2], -1)
        out_agreement = float(np.mean(np.argmax(ref.output.reshape(flat.shape), axis=2) == np.argmax(flat, axis=2)))
        if readout in MEMBRANE_READOUTS:
            pred_agreement = membrane.prediction_agreement
    else:
        out_agreement = float(np.mean(ref.output.reshape(fixed.output.shape) == fixed.output))
    if not np.any(ref.output):
        reasons.append(f"the float model's output never spikes on these {x.shape[0]} samples: float and fixed "
                       "point cannot be compared meaningfully (check how the graph was read: --producer, --dt)")
    lzc = lzc_check(lzc_readout, fitted_on, runs, y, required=readout == "lzc")
    f_acc = q_acc = None
    which = {"count": "", "lzc": "LZC readout "}.get(readout, f"{readout} readout ")
    if y is not None:
        f_acc, q_acc = accuracy(ref.output, y), accuracy(fixed.output, y)
        if membrane is not None and readout in MEMBRANE_READOUTS:
            f_acc, q_acc = membrane.float_accuracy, membrane.fixed_accuracy
        f_crit, q_crit = (f_acc, q_acc) if readout != "lzc" else (lzc.float_accuracy, lzc.fixed_accuracy)
        assert f_crit is not None and q_crit is not None  # lzc_check(required=True) raised otherwise
        if f_crit - q_crit > max_accuracy_drop:
            reasons.append(f"fixed-point {which}accuracy {q_crit:.4f} is more than {max_accuracy_drop * 100:.2g} "
                           f"points below float {f_crit:.4f}")
    else:
        agree = pred_agreement if readout != "lzc" else lzc.prediction_agreement
        assert agree is not None
        if agree < min_agreement:
            reasons.append(f"fixed point predicts the float model's {which}class on {agree:.4f} of the "
                           f"samples, below the floor {min_agreement:.4g} (no labels given; --min-agreement)")
        if out_agreement < min_agreement and graded is None:  # a membrane: float and q * integer differ
            reasons.append(f"the output spikes of fixed point and float agree on {out_agreement:.4f} of the "
                           f"(sample, step, neuron) bins, below the floor {min_agreement:.4g} (no labels given; "
                           "--min-agreement)")
    resources = resources_section(art, x, y, ref, fixed, other, this_label=(
        "this artifact" if artifact_path is None else Path(artifact_path).name), readout=readout)
    return VerifyResult(
        target=art.target, samples=int(x.shape[0]), timesteps=int(x.shape[1]), float_accuracy=f_acc,
        fixed_accuracy=q_acc, layers=layers, backends=checks, first_divergence=divergence,
        passed=not reasons, reasons=reasons, float_source=model.source, max_accuracy_drop=max_accuracy_drop,
        runs=runs, float_graph=graph, float_model=model.to_dict(), prediction_agreement=pred_agreement,
        output_agreement=out_agreement, min_agreement=min_agreement,
        labels=y is not None, readout=readout, lzc=lzc, membrane=membrane, resources=resources,
    )


def _readout_layer(art: Artifact) -> str | None:
    """The layer the artifact's Output reads when it is a non-spiking readout
    (``Primitive.output_state``), else None."""
    from lnm_deploy.fixedpoint.primitives import output_state

    sched = art.fx.schedule()
    src = sched.inputs[sched.output_node][0][0]
    node = art.fx.nodes[src]
    return src if node.role == "neuron" and output_state(node, src) is not None else None


def _label(source: Artifact | str | os.PathLike[str], default: str) -> str:
    """A comparison row's label: the artifact's file name, ``default`` for an in-memory one."""
    return default if isinstance(source, Artifact) else Path(source).name


def network_signature(fx: Any) -> dict[str, Any]:
    """What makes two artifacts the same network deployed differently: the ``input`` and
    ``output`` shapes and the neuron ``layers`` (name -> shape, execution order) of the integer
    graph. An LNM and a LIF artifact calibrated from one float model share it."""
    sched = fx.schedule()
    out_src = sched.inputs[sched.output_node][0][0]
    return {"input": tuple(sched.shapes[sched.input_node]), "output": tuple(sched.shapes[out_src]),
            "layers": {n: tuple(sched.shapes[n]) for n in sched.order if fx.nodes[n].role == "neuron"}}


def _source_sha(art: Artifact) -> str | None:
    """The SHA-256 of the float graph file ``art`` was calibrated from, as recorded (None: none)."""
    prov = art.record.get("provenance")
    src = prov.get("source_graph") if isinstance(prov, dict) else None
    sha = src.get("sha256") if isinstance(src, dict) else None
    return sha if isinstance(sha, str) and sha else None


def compared_artifact(art: Artifact, source: str | os.PathLike[str] | None,
                      compare: Artifact | str | os.PathLike[str]) -> tuple[Artifact, str, str | None]:
    """The other artifact of ``verify(..., compare=)``, its label (file name) and its path (None
    for an in-memory one), read and held
    against ``art`` (read from the file ``source``; None: in memory): ``UserInputError`` naming ``--compare``, both files and
    what differs when it is not a calibrated artifact or not the same network
    (``network_signature``: input shape, output shape, neuron layer names and shapes; and, where
    both record the float graph file they were calibrated from, its SHA-256)."""
    this = "the artifact" if source is None else str(source)
    that = "the compared artifact" if isinstance(compare, Artifact) else str(compare)
    if isinstance(compare, Artifact):
        other = compare
    else:
        try:
            other = read_artifact(compare)
        except UserInputError as e:
            raise UserInputError(f"--compare: {e}") from e
    a, b = network_signature(art.fx), network_signature(other.fx)

    def fmt(layers: dict[str, tuple[int, ...]]) -> str:
        return "[" + ", ".join(f"{n} {s}" for n, s in layers.items()) + "]"

    what = next(((k, str(a[key]) if key != "layers" else fmt(a[key]), str(b[key]) if key != "layers" else fmt(b[key]))
                 for key, k in (("input", "input shape"), ("output", "output shape"), ("layers", "neuron layers"))
                 if a[key] != b[key]), None)
    if what is None:  # same structure: where both record the float graph they came from, it must be one
        sa, sb = _source_sha(art), _source_sha(other)
        if sa is not None and sb is not None and sa != sb:
            what = ("float graph (SHA-256)", sa[:12], sb[:12])
    if what is not None:
        raise UserInputError(f"--compare: {that} is not the same network as {this} deployed differently "
                             f"({what[0]}: {what[1]} in {this}, {what[2]} in {that}): compare artifacts "
                             "calibrated from the same float model")
    return other, _label(compare, "compared artifact"), None if isinstance(compare, Artifact) else str(compare)


def readout_accuracy(art: Artifact, output: Array, y: Array, readout: str = "count") -> tuple[float | None, str]:
    """The accuracy of ``art``'s ``output`` (samples, timesteps, ...) on labels ``y`` by ``readout``
    (``READOUTS``: the spike count, the artifact's own LZC readout, or a membrane rule of a
    non-spiking readout output), and a note (empty when it applied). None where the readout does not
    apply to this artifact (it carries no LZC readout, or its output is not a membrane), with the
    note saying why."""
    from lnm_deploy.metrics import accuracy

    if readout == "count":
        return accuracy(output, y), ""
    if readout == "lzc":
        lzc, _ = artifact_lzc_readout(art)
        if lzc is None:
            return None, "it carries no LZC readout (calibrate with labels to fit one)"
        return float(lzc.accuracy(output, y)), ""
    if readout in MEMBRANE_READOUTS:
        if _readout_layer(art) is None:
            return None, f"its output is spikes, not a membrane, so --readout {readout} does not apply"
        return float(np.mean(MEMBRANE_READOUTS[readout](output) == np.asarray(y))), ""
    raise UserInputError(f"unknown readout {readout!r}; known: {', '.join(READOUTS)}")


def resources_section(art: Artifact, x: Array, y: Array | None, ref: RunResult, fixed: RunResult,
                      compare: Artifact | str | os.PathLike[str] | tuple[Artifact, str, str | None] | None = None, *,
                      this_label: str = "this artifact", readout: str = "count") -> dict[str, Any]:
    """The report's resources and cost section: ``lnm_deploy.cost.resources_report`` of the
    artifact on its own target (fxsim's and the float model's spikes) and, with ``compare`` (an
    artifact or its path, held against ``art`` by ``compared_artifact``; or what that returned),
    ``comparison``: accuracy against cost rows for this artifact and the other one (fxsim), each
    labelled with its file name (``this_label`` for ``art``), and the other's ``path``. The rows'
    accuracy is ``readout``'s (``readout_accuracy``: each artifact's own LZC readout for "lzc");
    None, with a note, where that readout does not apply to an artifact."""
    from lnm_deploy.artifact import artifact_target
    from lnm_deploy.cost import comparison_row, resources_report
    from lnm_deploy.fxsim import run_fx

    rep = resources_report(art.fx, artifact_target(art.fx, art.record, "the artifact"), x,
                           {"fxsim": fixed, "float": ref})
    if compare is None:
        return rep
    other, label, path = compare if isinstance(compare, tuple) else compared_artifact(art, None, compare)
    run = run_fx(other.fx, x)
    orep = resources_report(other.fx, artifact_target(other.fx, other.record, "the compared artifact"), x,
                            {"fxsim": run})
    acc = oacc = None
    notes = []
    if y is not None:
        acc, why = readout_accuracy(art, fixed.output, y, readout)
        notes += [f"{this_label}: {why}"] if why else []
        oacc, why = readout_accuracy(other, run.output, y, readout)
        notes += [f"{label}: {why}"] if why else []
    which = {"count": "spike-count", "lzc": "LZC"}.get(readout, readout)
    rep["comparison"] = {
        "rows": [comparison_row(this_label, art.target, acc, rep["cost"].get("fxsim")),
                 comparison_row(label, other.target, oacc, orep["cost"].get("fxsim"))],
        "other": {"path": path, "label": label, "target": other.target, "mapping": orep["mapping"],
                  "notes": orep["notes"]},
        "readout": readout,
        "note": (f"fxsim accuracy ({which} readout) and cost of the same inputs; energy and latency are estimates "
                 "(see the sources)" + "".join(f"; {n}" for n in notes))}
    return rep
