"""Will it fit: a greedy mapping of an integer network's neuron layers onto a target's cores.

The target's ``[resources]`` section (``lnm_deploy.targets.spec.ResourceSpec``) declares the
system: ``chips`` x ``cores_per_chip`` neuro cores, each updating up to ``neurons_per_core`` neurons
and holding ``synaptic_memory_bits`` of synapses. ``map_network`` assigns every neuron layer, in
execution order, to consecutive cores of its own: a layer is cut, in its flattened (C order)
neuron index, into slices as large as the core allows, each slice bounded by whichever of the two
per-core resources runs out first (neurons, or the synaptic memory its neurons' incoming synapses
take). A core holds the synapses *into* its neurons (as on Loihi, where synapses live with their
destination). ``check_fits`` refuses, with ``GraphError`` naming the layer and the resource, a
network whose cores exceed the declared system or whose single neuron exceeds a core's memory.

How a synapse occupies memory (``weight_storage = "dense"``): each synapse of the connectivity takes
its weight's stored width, zero weights included: a dense layer ``num_weight_bits`` per weight (the
width Lava's Dense stores, sign included), a convolution the signed width of the target's
``[conv2d] weight`` range, for every (output neuron, input neuron) pair it connects, padding edges
counted exactly (an output neuron at the border has fewer synapses). Sparsity therefore saves
nothing here; a sparse or compressed format would store only the nonzero weights plus an index each,
and is not modelled.

What the mapper ignores (``IGNORED``; ``docs/resources.md``): sharing one core between small layers
(each layer starts a new core, so small networks over-count cores), convolution weight sharing
(weights are counted per output neuron, an over-estimate), neuron state, routing tables and axon
limits (not published for Loihi 2), and the placement of cores on the mesh (messages are counted
between cores, not hops); for a graph whose paths into a layer differ in length, the relay neurons
Lava inserts (``RELAYS_IGNORED``, added to the mapping's ``ignored``). A network that does not fit
is limited by ``SYSTEM_CORES`` (the system's chips x cores_per_chip).

The per-kind connectivity lives in one table (``CONNECTIVITY``: ``Connectivity.into`` and
``Connectivity.weight_bits`` for each synapse primitive); an unknown synapse kind is an
``UnsupportedError`` listing the known ones. The cost model (``lnm_deploy.cost``) counts synaptic
operations with the same ``into``.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lnm_deploy.errors import GraphError, LNMDeployWarning, UnsupportedError
from lnm_deploy.fixedpoint import FxGraph, FxNode
from lnm_deploy.fixedpoint.primitives import lookup
from lnm_deploy.targets.spec import ResourceSpec, Target

Array = np.ndarray

#: What the mapper does not model (printed with every mapping).
IGNORED: tuple[str, ...] = (
    "each layer starts its own core (small layers never share one)",
    "convolution weights are counted per output neuron (no weight sharing)",
    "neuron state, routing tables and axon limits take no core memory",
    "cores are not placed on the mesh (messages are counted between cores, not hops)",
)

#: The per-core resources a slice of a layer can run out of.
NEURONS, MEMORY = "neurons per core", "synaptic memory per core"
#: The system-wide resource a network that does not fit runs out of (chips x cores_per_chip).
SYSTEM_CORES = "cores of the system"

#: Added to ``IGNORED`` for a graph whose paths into a layer differ in length (``FxGraph.path_lengths``).
RELAYS_IGNORED = ("relay neurons the Lava backend inserts to delay the shorter paths into {layers} "
                  "(lnm_deploy.lava_backend.runner.align_paths; Lava only) are not counted")


# ----------------------------------------------------------------------- connectivity by kind


@dataclass(frozen=True)
class Connectivity:
    """How one synapse primitive connects its input neurons to its output neurons.

    ``into(node, counts)``: ``counts`` holds one integer per input neuron (shape: the synapse's
    input shape); returns, per output neuron (the synapse's output shape), the sum of ``counts``
    over the input neurons it has a synapse from (int64). With ``counts`` all ones that is each
    output neuron's fan-in; with spike counts, the synaptic operations into it.
    ``weight_bits(node, target)``: the stored width of one weight, in bits."""

    into: Callable[[Any, Array], Array]
    weight_bits: Callable[[Any, Target], int]


def _dense_into(node: Any, counts: Array) -> Array:
    return np.full(node.weight.shape[0], int(np.asarray(counts, dtype=np.int64).sum()), dtype=np.int64)


def _dense_bits(node: Any, target: Target) -> int:
    return int(node.num_weight_bits)


def _conv_into(node: Any, counts: Array) -> Array:
    c = np.asarray(counts, dtype=np.int64)
    cout, cin_g, kh, kw = node.weight.shape
    g = node.groups
    (sh, sw), (ph, pw), (dh, dw) = node.stride, node.padding, node.dilation
    h, w = c.shape[1:]
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    per_group = c.reshape(g, cin_g, h, w).sum(axis=1)  # every input channel of the group feeds each output
    padded = np.zeros((g, h + 2 * ph, w + 2 * pw), dtype=np.int64)
    padded[:, ph:ph + h, pw:pw + w] = per_group  # padding holds no neuron: zero counts
    out = np.zeros((g, oh, ow), dtype=np.int64)
    for i in range(kh):
        for j in range(kw):
            out += padded[:, i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
    return np.repeat(out, cout // g, axis=0)


def signed_bits(lo: int, hi: int) -> int:
    """The two's-complement width that holds every integer of ``[lo, hi]``."""
    return max(1, max((-lo - 1).bit_length() if lo < 0 else lo.bit_length(),
                      (-hi - 1).bit_length() if hi < 0 else hi.bit_length()) + 1)


def _conv_bits(node: Any, target: Target) -> int:
    lo, hi = target.spec("conv2d").weight
    return signed_bits(int(lo), int(hi))


#: The connectivity of every synapse primitive, by kind (``register_connectivity`` adds one).
CONNECTIVITY: dict[str, Connectivity] = {
    "dense": Connectivity(_dense_into, _dense_bits),
    "conv2d": Connectivity(_conv_into, _conv_bits),
}


def register_connectivity(kind: str, conn: Connectivity) -> None:
    """Add the connectivity of a new synapse primitive ``kind`` (once)."""
    if kind in CONNECTIVITY:
        raise ValueError(f"connectivity of {kind!r} is registered twice")
    CONNECTIVITY[kind] = conn


def connectivity(node: FxNode, name: str | None = None) -> Connectivity:
    """The ``Connectivity`` of a synapse node (``UnsupportedError`` listing the known kinds)."""
    out: Connectivity = lookup(CONNECTIVITY, node.kind, "the resource and cost model's connectivity", name)
    return out


# ----------------------------------------------------------------------------- graph structure


@dataclass(frozen=True)
class Projection:
    """A synapse node into a neuron layer: ``synapse``, its spike ``source`` (the input or a neuron
    layer, reshapes followed back), the synapse's input shape ``in_shape``, and whether the edge
    into the layer is ``delayed`` (a back edge)."""

    synapse: str
    source: str
    in_shape: tuple[int, ...]
    delayed: bool


def projections(fx: FxGraph) -> dict[str, list[Projection]]:
    """For every neuron layer (execution order), the synapses into it."""
    sched = fx.schedule()

    def spike_source(n: str) -> str:
        while fx.nodes[n].role == "reshape":
            n = sched.inputs[n][0][0]
        return n

    out: dict[str, list[Projection]] = {}
    for name in sched.order:
        if fx.nodes[name].role != "neuron":
            continue
        out[name] = []
        for syn, delayed in sched.inputs[name]:
            feed = sched.inputs[syn][0][0]
            out[name].append(Projection(syn, spike_source(feed), tuple(sched.shapes[feed]), bool(delayed)))
    return out


# ------------------------------------------------------------------------------------ mapping


@dataclass(frozen=True)
class CoreUse:
    """One core: ``core`` (index in the system), its ``chip``, the ``layer`` slice
    ``[start, stop)`` (flattened neuron indices), the ``synapses`` and ``synaptic_bits`` into those
    neurons, and ``limit``: the resource that ended the slice (``NEURONS``, ``MEMORY``, or
    "layer end")."""

    core: int
    chip: int
    layer: str
    start: int
    stop: int
    synapses: int
    synaptic_bits: int
    limit: str

    @property
    def neurons(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class LayerMap:
    """One neuron layer: its ``kind``, ``neurons``, incoming ``synapses`` and their
    ``synaptic_bits``, the ``cores`` it occupies and the ``limit`` that split it (``NEURONS``,
    ``MEMORY``, or "none" when it fits one core)."""

    layer: str
    kind: str
    neurons: int
    synapses: int
    synaptic_bits: int
    cores: tuple[int, ...]
    limit: str


@dataclass
class ResourceMap:
    """The mapping of a network onto a target's declared system (see the module docstring)."""

    target: str
    resources: ResourceSpec
    layers: dict[str, LayerMap]
    cores: list[CoreUse]
    ignored: tuple[str, ...] = IGNORED
    _core_of: dict[str, Array] = field(default_factory=dict, repr=False)

    @property
    def cores_used(self) -> int:
        return len(self.cores)

    @property
    def chips_used(self) -> int:
        return -(-self.cores_used // self.resources.cores_per_chip)

    @property
    def fits(self) -> bool:
        return self.cores_used <= self.resources.cores

    @property
    def limiting_resource(self) -> str:
        """The resource that bounds the mapping: ``SYSTEM_CORES`` when the network does not fit
        (the system's chips x cores_per_chip ran out), else the per-core resource that ended the
        most slices (``NEURONS`` or ``MEMORY``), or "none" when every layer fits one core."""
        if not self.fits:
            return SYSTEM_CORES
        bound = [c.limit for c in self.cores if c.limit in (NEURONS, MEMORY)]
        if not bound:
            return "none"
        return max((NEURONS, MEMORY), key=bound.count)

    def core_of(self, layer: str) -> Array:
        """The core of every neuron of ``layer`` (flattened index -> core index, int64)."""
        if layer not in self._core_of:
            lm = self.layers[layer]
            a = np.empty(lm.neurons, dtype=np.int64)
            for c in self.cores:
                if c.layer == layer:
                    a[c.start:c.stop] = c.core
            self._core_of[layer] = a
        return self._core_of[layer]

    def to_dict(self) -> dict[str, Any]:
        r = self.resources
        mem = [c.synaptic_bits for c in self.cores]
        neu = [c.neurons for c in self.cores]
        return {
            "target": self.target,
            "system": {"chips": r.chips, "cores_per_chip": r.cores_per_chip, "neurons_per_core": r.neurons_per_core,
                       "synaptic_memory_bits": r.synaptic_memory_bits, "weight_storage": r.weight_storage,
                       "source": r.source},
            "fits": self.fits, "cores_used": self.cores_used, "chips_used": self.chips_used,
            "limiting_resource": self.limiting_resource,
            "per_core": {"neurons_max": max(neu, default=0), "neurons_mean": float(np.mean(neu)) if neu else 0.0,
                         "synaptic_bits_max": max(mem, default=0),
                         "synaptic_bits_mean": float(np.mean(mem)) if mem else 0.0,
                         "synaptic_memory_use_max": max(mem, default=0) / r.synaptic_memory_bits},
            "layers": [{"layer": m.layer, "kind": m.kind, "neurons": m.neurons, "synapses": m.synapses,
                        "synaptic_bits": m.synaptic_bits, "cores": len(m.cores),
                        "first_core": m.cores[0] if m.cores else None, "limit": m.limit,
                        "neurons_per_core_max": max((c.neurons for c in self.cores if c.layer == m.layer), default=0),
                        "synaptic_bits_per_core_max": max((c.synaptic_bits for c in self.cores if c.layer == m.layer),
                                                          default=0)}
                       for m in self.layers.values()],
            "ignored": list(self.ignored),
        }

    def to_text(self) -> str:
        d = self.to_dict()
        r, pc = d["system"], d["per_core"]
        lines = [f"resources on target '{self.target}' ({r['chips']} chip(s) x {r['cores_per_chip']} cores, "
                 f"{r['neurons_per_core']} neurons and {r['synaptic_memory_bits']} bits of synaptic memory per core)",
                 f"  fits: {self.cores_used} cores on {self.chips_used} chip(s); "
                 f"limiting resource: {self.limiting_resource}" if self.fits else
                 f"  DOES NOT FIT: needs {self.cores_used} cores on {self.chips_used} chip(s), the system has "
                 f"{r['chips']} x {r['cores_per_chip']} = {self.resources.cores}; limiting resource: "
                 f"{self.limiting_resource} ([resources] chips, cores_per_chip)",
                 f"  per core: up to {pc['neurons_max']} neurons, up to {pc['synaptic_bits_max']} bits of synapses "
                 f"({pc['synaptic_memory_use_max']:.1%} of a core's memory)"]
        for m in d["layers"]:
            lines.append(f"  {m['layer']:<14} {m['kind']:<14} {m['neurons']:>8} neurons {m['synapses']:>10} synapses "
                         f"{m['synaptic_bits']:>11} bits  {m['cores']:>4} core(s)  split by: {m['limit']}")
        lines.append(f"  source: {r['source']}")
        lines.append("  ignored: " + "; ".join(self.ignored))
        return "\n".join(lines)


def neuron_memory(fx: FxGraph, target: Target) -> dict[str, tuple[Array, Array]]:
    """Per neuron layer, ``(synapses, bits)``: the synapses into each neuron (flattened) and the
    bits they take (``weight_storage = "dense"``)."""
    out: dict[str, tuple[Array, Array]] = {}
    shapes = fx.schedule().shapes
    for layer, projs in projections(fx).items():
        n = int(np.prod(shapes[layer]))
        syn = np.zeros(n, dtype=np.int64)
        bits = np.zeros(n, dtype=np.int64)
        for p in projs:
            node = fx.nodes[p.synapse]
            conn = connectivity(node, p.synapse)
            fan_in = conn.into(node, np.ones(p.in_shape, dtype=np.int64)).reshape(-1)
            syn += fan_in
            bits += fan_in * conn.weight_bits(node, target)
        out[layer] = (syn, bits)
    return out


def map_network(fx: FxGraph, target: Target) -> ResourceMap:
    """Map ``fx``'s neuron layers onto ``target``'s cores (greedy, see the module docstring).

    Returns the mapping whether or not it fits (``ResourceMap.fits``). Raises
    ``UnsupportedError`` when the target declares no ``[resources]`` (nothing to map onto) or a
    synapse kind has no connectivity, and ``GraphError`` naming the layer when one of its neurons
    alone needs more synaptic memory than a core has."""
    r = target.resources
    if r is None:
        raise UnsupportedError(f"target '{target.name}' declares no [resources] section: nothing to map onto "
                               "(see docs/resources.md)")
    mem = neuron_memory(fx, target)
    layers: dict[str, LayerMap] = {}
    cores: list[CoreUse] = []
    for layer, (syn, bits) in mem.items():
        n = syn.size
        first = len(cores)
        start = 0
        limits: set[str] = set()
        while start < n:
            room = min(r.neurons_per_core, n - start)
            k_mem = int(np.searchsorted(np.cumsum(bits[start:start + room]), r.synaptic_memory_bits, side="right"))
            k = min(room, k_mem)
            if k == 0:
                raise GraphError(
                    f"one neuron (index {start}) needs {int(bits[start])} bits of synaptic memory "
                    f"({int(syn[start])} synapses), more than a core of target '{target.name}' has "
                    f"([resources] synaptic_memory_bits = {r.synaptic_memory_bits}): reduce its fan-in or its "
                    "weight bits", node=layer)
            if start + k == n:
                limit = "layer end"
            else:
                limit = MEMORY if k_mem < room else NEURONS
                limits.add(limit)
            idx = len(cores)
            cores.append(CoreUse(idx, idx // r.cores_per_chip, layer, start, start + k,
                                 int(syn[start:start + k].sum()), int(bits[start:start + k].sum()), limit))
            start += k
        layers[layer] = LayerMap(layer, fx.nodes[layer].kind, n, int(syn.sum()), int(bits.sum()),
                                 tuple(range(first, len(cores))),
                                 MEMORY if MEMORY in limits else NEURONS if limits else "none")
    uneven = [layer for layer, lengths in fx.path_lengths().items() if len(set(lengths.values())) > 1]
    ignored = IGNORED + ((RELAYS_IGNORED.format(layers=", ".join(f"'{n}'" for n in uneven)),) if uneven else ())
    return ResourceMap(target.name, r, layers, cores, ignored)


def lower_bound(fx: FxGraph, target: Target) -> tuple[int, list[tuple[str, int, int]]]:
    """The fewest cores any mapping needs, whatever the greedy mapper's conservative choices: neurons
    packed into full cores across layers, and every stored weight held once (a convolution's kernel
    once, as with weight sharing; a Dense matrix whole). Returns ``(cores, steps)``: ``steps`` per
    neuron layer in execution order ``(layer, cumulative neurons, cumulative weight bits)``."""
    r = target.resources
    assert r is not None
    shapes = fx.schedule().shapes
    per_neuron: dict[str, tuple[Array, Array]] | None = None
    steps, neurons, bits = [], 0, 0
    for layer, projs in projections(fx).items():
        neurons += int(np.prod(shapes[layer]))
        if all(getattr(fx.nodes[p.synapse], "weight", None) is not None for p in projs):
            for p in projs:
                node = fx.nodes[p.synapse]
                conn = connectivity(node, p.synapse)
                bits += int(np.asarray(getattr(node, "weight", None)).size) * conn.weight_bits(node, target)
        else:  # a synapse kind without a weight array: its per-neuron storage, as the mapper counts it
            per_neuron = per_neuron if per_neuron is not None else neuron_memory(fx, target)
            bits += int(per_neuron[layer][1].sum())
        steps.append((layer, neurons, bits))
    cores = max(-(-neurons // r.neurons_per_core), -(-bits // r.synaptic_memory_bits)) if steps else 0
    return cores, steps


def check_fits(fx: FxGraph, target: Target) -> ResourceMap | None:
    """``map_network``, and the design rule of the declared system.

    ``GraphError`` naming the layer and the resource when no mapping can fit: the ``lower_bound``
    (neurons packed across layers, every weight stored once) already needs more cores than the
    system has; the layer named is the one where that bound passes the system's cores. Where only
    the greedy mapping does not fit (it starts every layer on a core of its own and stores a
    convolution's weights per neuron), an ``LNMDeployWarning`` says the network may not fit, and
    the mapping is returned. None (nothing checked) for a target without ``[resources]``, and,
    with an ``LNMDeployWarning`` saying so, for a network with a synapse kind that has no
    ``Connectivity`` yet."""
    if target.resources is None:
        return None
    try:
        m = map_network(fx, target)
    except UnsupportedError as e:
        warnings.warn(f"resources not checked: {e}", LNMDeployWarning, stacklevel=2)
        return None
    if m.fits:
        return m
    r = m.resources
    least, steps = lower_bound(fx, target)
    if least > r.cores:
        for layer, neurons, bits in steps:
            by_neurons, by_memory = -(-neurons // r.neurons_per_core), -(-bits // r.synaptic_memory_bits)
            if max(by_neurons, by_memory) > r.cores:
                what = (f"neurons per core ({r.neurons_per_core})" if by_neurons >= by_memory
                        else f"synaptic memory per core ({r.synaptic_memory_bits} bits)")
                raise GraphError(
                    f"does not fit target '{target.name}': the network needs at least {least} cores even with "
                    f"layers sharing cores and every weight stored once, the system has {r.chips} chip(s) x "
                    f"{r.cores_per_chip} cores = {r.cores} ([resources] chips, cores_per_chip); up to this layer "
                    f"{neurons} neurons and {bits} bits of weights already need {max(by_neurons, by_memory)}, "
                    f"limited by {what}: use a system with more chips or cores, or fewer neurons and synapses",
                    node=layer)
    over = next(c for c in m.cores if c.core >= r.cores)
    warnings.warn(f"layer '{over.layer}': the conservative mapping (a core of its own per layer, convolution "
                  f"weights stored per neuron) needs {m.cores_used} cores, the system has {r.cores}; the least any "
                  f"mapping needs is {least}: the network may not fit target '{target.name}'", LNMDeployWarning,
                  stacklevel=2)
    return m


__all__ = [
    "CONNECTIVITY",
    "IGNORED",
    "MEMORY",
    "NEURONS",
    "RELAYS_IGNORED",
    "SYSTEM_CORES",
    "Connectivity",
    "CoreUse",
    "LayerMap",
    "Projection",
    "ResourceMap",
    "check_fits",
    "connectivity",
    "lower_bound",
    "map_network",
    "neuron_memory",
    "projections",
    "register_connectivity",
    "signed_bits",
]
