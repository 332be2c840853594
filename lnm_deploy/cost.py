"""What one inference costs, counted from the spikes of an actual run (``docs/resources.md``).

``count_cost(fx, x, run, target)`` takes an integer network, its input spikes ``x`` (samples,
timesteps, *input_shape) and a ``RunResult`` of it on ``x`` (fxsim's, or the float model's for
comparison: same layer names), and counts, per inference (averaged over the samples):

* **synaptic operations** per neuron layer: every spike of a source (the input or a neuron layer)
  times its fan-out into the layer, i.e. once per stored synapse it reaches, zero weights
  included (``weight_storage = "dense"``); dense and convolution synapses (padding edges exact:
  ``lnm_deploy.resources.Connectivity.into``), delayed and recurrent edges included (a spike at the
  last step through a back edge is counted although no later step reads it);
* **neuron updates**: every neuron every timestep, each priced by its primitive's operations per
  update (``[energy.neuron_ops]`` of the target file: ``base + per_state * states + per_degree *
  degree``), so a degree-d polynomial or an adaptive threshold costs more than a stock LIF;
* **messages between cores** (needs the mapping, ``lnm_deploy.resources.map_network``): each spike
  is sent once to every core holding a part of a layer it projects to, other than its own core;
  input spikes come from off-chip and reach every such core. For a convolution this is an upper
  bound (a spike reaches only the cores whose neurons see it);
* **energy and latency ESTIMATES** from the target's ``[energy]`` per-operation figures (published
  figures; their ``source`` is reported with every estimate): energy = synops x ``synop_pj`` +
  operations x ``neuron_update_pj / reference_ops`` + messages x ``message_pj``; latency = the
  busiest core's work (its synops x ``synop_ns`` + its operations x ``neuron_update_ns /
  reference_ops``), cores working in parallel. Dynamic energy only: static power, message hops,
  barrier synchronisation and I/O are ignored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lnm_deploy.core import RunResult
from lnm_deploy.errors import UnsupportedError, UserInputError
from lnm_deploy.fixedpoint import FxGraph
from lnm_deploy.fixedpoint.nodes import FxNeuron
from lnm_deploy.fixedpoint.primitives import output_state
from lnm_deploy.resources import ResourceMap, connectivity, projections
from lnm_deploy.targets.spec import EnergySpec, Target

Array = np.ndarray

#: Printed with every energy and latency figure.
ESTIMATE_NOTE = ("estimates from published per-operation figures (see source): dynamic energy only; static power, "
                 "message hops, synchronisation and I/O are ignored")


@dataclass(frozen=True)
class LayerCost:
    """One neuron layer, per inference: ``spikes`` it emits, ``synops`` into it, neuron ``updates``
    (neurons x timesteps), ``ops_per_update`` (its primitive's, None without ``[energy]``),
    ``messages`` its spikes send to other cores (None without a mapping) and ``energy_pj`` (None
    without ``[energy]``: synaptic, neuron, messages, total)."""

    layer: str
    kind: str
    neurons: int
    spikes: float
    synops: float
    updates: float
    ops_per_update: int | None
    messages: float | None
    energy_pj: dict[str, float] | None


@dataclass
class Cost:
    """The cost of one inference (see the module docstring); totals are per inference."""

    target: str
    run: str  # which run the spikes came from ("fxsim", "float", ...)
    samples: int
    timesteps: int
    layers: list[LayerCost]
    input_spikes: float
    input_messages: float | None
    figures: EnergySpec | None
    latency_us: float | None
    notes: list[str] = field(default_factory=list)

    @property
    def synops(self) -> float:
        return float(sum(c.synops for c in self.layers))

    @property
    def neuron_updates(self) -> float:
        return float(sum(c.updates for c in self.layers))

    @property
    def update_ops(self) -> float | None:
        """Operations of every neuron update (updates x each primitive's ops), None without [energy]."""
        if any(c.ops_per_update is None for c in self.layers):
            return None
        return float(sum(c.updates * (c.ops_per_update or 0) for c in self.layers))

    @property
    def messages(self) -> float | None:
        if self.input_messages is None:
            return None
        return float(self.input_messages + sum(c.messages or 0.0 for c in self.layers))

    @property
    def energy_pj(self) -> dict[str, float] | None:
        """Energy per inference by part (``synaptic``, ``neuron``, ``messages``, ``total``), pJ."""
        if self.figures is None:
            return None
        parts = {k: float(sum((c.energy_pj or {}).get(k, 0.0) for c in self.layers))
                 for k in ("synaptic", "neuron", "messages")}
        parts["messages"] += (self.input_messages or 0.0) * self.figures.message_pj
        parts["total"] = parts["synaptic"] + parts["neuron"] + parts["messages"]
        return parts

    def to_dict(self) -> dict[str, Any]:
        f = self.figures
        return {
            "target": self.target, "run": self.run, "samples": self.samples, "timesteps": self.timesteps,
            "per_inference": {"synops": self.synops, "neuron_updates": self.neuron_updates,
                              "neuron_update_ops": self.update_ops, "messages": self.messages,
                              "input_spikes": self.input_spikes, "input_messages": self.input_messages,
                              "energy_pj": self.energy_pj, "latency_us": self.latency_us},
            "layers": [asdict(c) for c in self.layers],
            "estimates": None if f is None else {
                "note": ESTIMATE_NOTE, "source": f.source,
                "figures": {"synop_pj": f.synop_pj, "synop_ns": f.synop_ns, "neuron_update_pj": f.neuron_update_pj,
                            "neuron_update_ns": f.neuron_update_ns, "reference_ops": f.reference_ops,
                            "message_pj": f.message_pj, "message_ns": f.message_ns,
                            "neuron_ops": {k: asdict(v) for k, v in f.neuron_ops.items()}}},
            "notes": list(self.notes),
        }

    def to_text(self) -> str:
        lines = [f"cost per inference on target '{self.target}' (spikes of the {self.run} run, mean of "
                 f"{self.samples} samples x {self.timesteps} steps)"]
        for c in self.layers:
            ops = "" if c.ops_per_update is None else f" x {c.ops_per_update} ops"
            msg = "" if c.messages is None else f", {c.messages:.1f} messages"
            lines.append(f"  {c.layer:<14} {c.kind:<14} spikes {c.spikes:>10.1f}  synops {c.synops:>12.1f}  "
                         f"updates {c.updates:>9.0f}{ops}{msg}")
        lines.append(f"  total: {self.synops:.1f} synaptic operations, {self.neuron_updates:.0f} neuron updates"
                     + ("" if self.update_ops is None else f" ({self.update_ops:.0f} operations)")
                     + ("" if self.messages is None else f", {self.messages:.1f} messages between cores"))
        e = self.energy_pj
        if e is not None and self.figures is not None:
            lines.append(f"  energy ESTIMATE: {e['total'] / 1e3:.3f} nJ per inference (synaptic {e['synaptic'] / 1e3:.3f}, "
                         f"neuron {e['neuron'] / 1e3:.3f}, messages {e['messages'] / 1e3:.3f} nJ)"
                         + ("" if self.latency_us is None else f"; latency ESTIMATE {self.latency_us:.2f} us"))
            lines.append(f"  {ESTIMATE_NOTE}")
            lines.append(f"  source: {self.figures.source}")
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def offered_or_refuse(target: Target, node: FxNeuron, layer: str) -> None:
    """``UnsupportedError`` naming ``layer`` when ``target`` does not offer its neuron primitive at
    all (then no ``[energy.neuron_ops]`` line could price it: the network cannot run there)."""
    from lnm_deploy.fixedpoint.primitives import primitive_of, primitives

    kind = primitive_of(node, layer).kind
    if kind not in target.sections:
        offered = sorted(k for k in target.sections if k in primitives() and primitives()[k].role == "neuron")
        raise UnsupportedError(f"target '{target.name}' does not offer neuron kind {kind!r} (it offers {offered}), "
                               "so nothing can price its updates: the network cannot run on this target; "
                               "calibrate for a target that offers it", node=layer)


def _counts(a: Array, shape: tuple[int, ...]) -> Array:
    """Spike events over samples and timesteps (int64), reshaped to ``shape`` (C order): nonzero bins,
    since a graded spike (a count, docs/fixed-point.md 5.2) is one message carrying its payload."""
    return (np.asarray(a) != 0).sum(axis=(0, 1), dtype=np.int64).reshape(shape)


def count_cost(fx: FxGraph, x: Array, run: RunResult, target: Target, mapping: ResourceMap | None = None, *,
               run_name: str = "fxsim") -> Cost:
    """Count the cost of ``run`` (``fx`` on spikes ``x``) per inference; see the module docstring.

    Args:
        fx: the integer network (its synapses define the connectivity, its neurons the primitives).
        x: the input spikes (samples, timesteps, *input_shape), 0/1.
        run: a run on ``x`` whose ``spikes`` hold every neuron layer of ``fx`` (samples, timesteps,
            *shape): fxsim's, or the float model's for comparison.
        target: the target whose ``[energy]`` prices the operations (none: counts only).
        mapping: the network's mapping (``map_network``) for messages and latency (None: neither).
        run_name: names the run in the report.

    Raises:
        UserInputError: ``run`` lacks a layer's spikes, or shapes differ from ``x``'s.
        UnsupportedError: a neuron kind the target does not offer at all (``offered_or_refuse``), one
            it offers but ``[energy.neuron_ops]`` does not price, or a synapse kind without
            connectivity.
    """
    sched = fx.schedule()
    x = np.asarray(x)
    in_shape = tuple(sched.shapes[sched.input_node])
    if x.ndim != 2 + len(in_shape) or tuple(x.shape[2:]) != in_shape:
        raise UserInputError(f"input spikes of shape {x.shape} do not match the network's input {in_shape}")
    samples, steps = int(x.shape[0]), int(x.shape[1])
    projs = projections(fx)
    # A non-spiking readout (Primitive.output_state; lnm_deploy.li_readout) emits no spikes: 0.
    silent = {n for n in projs if output_state(fx.nodes[n], n) is not None}
    missing = [n for n in projs if n not in run.spikes and n not in silent]
    if missing:
        raise UserInputError(f"the {run_name} run has no spikes for layers {missing}")
    spikes: dict[str, Array] = {sched.input_node: x}
    spikes.update({n: np.asarray(run.spikes[n]) if n not in silent else
                   np.zeros((samples, steps, *sched.shapes[n]), dtype=np.uint8) for n in projs})
    for n in projs:
        if spikes[n].shape[:2] != (samples, steps):
            raise UserInputError(f"the {run_name} run's spikes of '{n}' are {spikes[n].shape}, expected "
                                 f"({samples}, {steps}, ...)")
    energy = target.energy
    per_op_pj = None if energy is None else energy.neuron_update_pj / energy.reference_ops
    per_op_ns = None if energy is None else energy.neuron_update_ns / energy.reference_ops
    flat_counts = {n: _counts(a, (-1,)) for n, a in spikes.items()}
    # messages: every spike goes to each core of the layers it projects to, except its own core
    dest_cores: dict[str, set[int]] = {}
    if mapping is not None:
        for layer, ps in projs.items():
            for p in ps:
                dest_cores.setdefault(p.source, set()).update(mapping.layers[layer].cores)

    def messages_of(src: str) -> float | None:
        if mapping is None:
            return None
        dests = dest_cores.get(src, set())
        if not dests:
            return 0.0
        counts = flat_counts[src]
        if src == sched.input_node:
            return float(counts.sum() * len(dests)) / samples
        own = np.isin(mapping.core_of(src), np.fromiter(dests, dtype=np.int64))
        return float((counts * (len(dests) - own.astype(np.int64))).sum()) / samples

    layers: list[LayerCost] = []
    busiest = 0.0
    for layer, ps in projs.items():
        node = fx.nodes[layer]
        assert isinstance(node, FxNeuron)  # projections() lists neuron layers only
        size = int(np.prod(sched.shapes[layer]))
        into = np.zeros(size, dtype=np.int64)
        for p in ps:
            syn = fx.nodes[p.synapse]
            into += connectivity(syn, p.synapse).into(syn, _counts(spikes[p.source], p.in_shape)).reshape(-1)
        synops = float(into.sum()) / samples
        updates = float(size * steps)
        ops = None
        e = None
        msgs = messages_of(layer)
        if energy is not None:
            offered_or_refuse(target, node, layer)
            ops = energy.ops_of(node.kind, layer).ops(len(node.state_names()), int(getattr(node, "degree", 0)))
            assert per_op_pj is not None
            e = {"synaptic": synops * energy.synop_pj, "neuron": updates * ops * per_op_pj,
                 "messages": (msgs or 0.0) * energy.message_pj}
            e["total"] = e["synaptic"] + e["neuron"] + e["messages"]
            if mapping is not None:
                assert per_op_ns is not None
                for c in mapping.layers[layer].cores:
                    cu = mapping.cores[c]
                    t_ns = (float(into[cu.start:cu.stop].sum()) / samples * energy.synop_ns
                            + cu.neurons * steps * ops * per_op_ns)
                    busiest = max(busiest, t_ns)
        layers.append(LayerCost(layer, node.kind, size, float(flat_counts[layer].sum()) / samples, synops, updates,
                                ops, msgs, e))
    notes = []
    if energy is None:
        notes.append(f"target '{target.name}' declares no [energy] section: no energy or latency estimates")
    if mapping is None:
        notes.append("no mapping (the target declares no [resources]): messages between cores and latency not counted")
    return Cost(target.name, run_name, samples, steps, layers, float(flat_counts[sched.input_node].sum()) / samples,
                messages_of(sched.input_node), energy,
                busiest / 1e3 if energy is not None and mapping is not None else None, notes)


def _resources(fx: FxGraph, target: Target, x: Array | None,
               runs: dict[str, RunResult]) -> tuple[ResourceMap | None, dict[str, Cost], list[str]]:
    from lnm_deploy.errors import LNMDeployError
    from lnm_deploy.resources import map_network

    notes: list[str] = []
    mapping = None
    try:
        mapping = map_network(fx, target)
    except LNMDeployError as e:
        notes.append(f"not mapped: {e}")
    costs: dict[str, Cost] = {}
    if x is None:
        notes.append("no spikes given: the cost of an inference is counted from a run (pass data)")
    else:
        for name, run in runs.items():
            try:
                costs[name] = count_cost(fx, x, run, target, mapping, run_name=name)
            except LNMDeployError as e:
                notes.append(f"no cost for the {name} run: {e}")
    return mapping, costs, notes


def resources_report(fx: FxGraph, target: Target, x: Array | None, runs: dict[str, RunResult]) -> dict[str, Any]:
    """The resources and cost section of a report (JSON-ready): ``mapping`` (``ResourceMap.to_dict``,
    None for a target without ``[resources]`` or a network that cannot be mapped, with a note) and
    ``cost`` per run name in ``runs`` (``Cost.to_dict``; none when ``x`` is None). Never raises for
    what the target or the network lacks: it says so in ``notes``."""
    mapping, costs, notes = _resources(fx, target, x, runs)
    return {"target": target.name, "mapping": None if mapping is None else mapping.to_dict(),
            "cost": {k: c.to_dict() for k, c in costs.items()}, "notes": notes}


def resources_text(fx: FxGraph, target: Target, x: Array | None, runs: dict[str, RunResult]) -> str:
    """``resources_report`` as text (for ``lnm-deploy inspect ARTIFACT --resources``)."""
    mapping, costs, notes = _resources(fx, target, x, runs)
    parts = [] if mapping is None else [mapping.to_text()]
    parts += [c.to_text() for c in costs.values()]
    parts += [f"note: {n}" for n in notes]
    return "\n".join(parts)


def comparison_row(label: str, target: str, accuracy: float | None, cost: dict[str, Any] | None) -> dict[str, Any]:
    """One row of an accuracy-against-cost comparison from a ``Cost.to_dict()`` (None: unknown)."""
    per = (cost or {}).get("per_inference", {})
    energy = per.get("energy_pj") or {}
    return {"label": label, "target": target, "accuracy": accuracy, "synops": per.get("synops"),
            "neuron_updates": per.get("neuron_updates"), "neuron_update_ops": per.get("neuron_update_ops"),
            "energy_pj": energy.get("total"), "neuron_energy_pj": energy.get("neuron"),
            "latency_us": per.get("latency_us")}


def summary_lines(section: dict[str, Any] | None) -> list[str]:
    """A few lines for a terminal from a ``resources_report`` section (with its ``comparison``)."""
    if not section:
        return []
    out = []
    m = section.get("mapping")
    if m:
        out.append(f"resources: {m['cores_used']} cores on {m['chips_used']} chip(s) of target '{m['target']}' "
                   f"({'fits' if m['fits'] else 'DOES NOT FIT'}; limiting resource: {m['limiting_resource']})")
    cost = (section.get("cost") or {}).get("fxsim")
    if cost:
        per = cost["per_inference"]
        e = per.get("energy_pj")
        out.append(f"cost per inference (fxsim spikes): {per['synops']:.0f} synaptic operations, "
                   f"{per['neuron_updates']:.0f} neuron updates"
                   + ("" if e is None else f", energy ESTIMATE {e['total'] / 1e3:.2f} nJ"))
    for row in (section.get("comparison") or {}).get("rows", []):
        acc = "-" if row["accuracy"] is None else f"{row['accuracy']:.4f}"
        energy = "-" if row["energy_pj"] is None else f"{row['energy_pj'] / 1e3:.2f} nJ"
        ops = "-" if row["neuron_update_ops"] is None else f"{row['neuron_update_ops']:.0f}"
        synops = "-" if row["synops"] is None else f"{row['synops']:.0f}"
        out.append(f"  {row['label']} (target {row['target']}): accuracy {acc}, synops {synops}, neuron-update ops {ops}, "
                   f"energy {energy} (estimate)")
    out.extend(f"note: {n}" for n in section.get("notes", []))
    return out


__all__ = ["ESTIMATE_NOTE", "Cost", "LayerCost", "comparison_row", "count_cost", "resources_report",
           "resources_text", "summary_lines"]
