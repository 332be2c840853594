"""Build and run Lava 0.10 processes for an ``FxGraph`` (``docs/lava.md``, ``docs/fixed-point.md`` 7).

Imports lava at module level: import it only through ``lnm_deploy.lava_backend``.

One compiled network runs many samples back to back (``samples_per_network``): sample ``b``
occupies Lava steps ``b * total .. b * total + total - 1`` with ``total = T + max depth``; the
RingBuffer source holds every sample of the chunk, LIF layers are Lava's ``LIFReset`` (the stock
bit-accurate LIF that zeroes ``u`` and ``v`` once per ``total`` steps, exactly at the step the
layer's sample starts), ``PolyNeuron`` resets itself at its start step, and the few states no
process resets itself (recurrent synapse buffers, non-zero initial LIF states) are set with
``Var.set`` at a pause. ``Recorder`` probes write spikes and states into shared memory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar, cast

import numpy as np

from lnm_deploy.lava_backend._mp import lava_import_guard

with lava_import_guard():
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.atrlif.process import ATRLIF
    from lava.proc.conv.process import Conv
    from lava.proc.dense.process import Dense
    from lava.proc.io.source import RingBuffer as Source
    from lava.proc.lif.process import LIF, LIFReset
    from lava.utils.weightutils import SignMode

from lnm_deploy.errors import UnsupportedError, UserInputError
from lnm_deploy.execute import RunResult
from lnm_deploy.fixedpoint import (
    FxConv2d,
    FxDense,
    FxGraph,
    FxLIF,
    FxNeuron,
    FxNode,
    FxPoly,
)
from lnm_deploy.fixedpoint.primitives import (
    lookup,
    output_state,
    primitive_of,
    primitives,
    synapse_bounds,
)
from lnm_deploy.lava_backend.procs.process import MAX_STATES, ContractNeuron, PolyNeuron, Recorder
from lnm_deploy.signals import SIGNALS, Terminated, deferred_termination

_SIGN = {"mixed": SignMode.MIXED, "excitatory": SignMode.EXCITATORY, "inhibitory": SignMode.INHIBITORY}
TAGS = ("fixed_pt", "floating_pt")
#: Upper bound on the bytes of input one compiled network holds (its RingBuffer source).
CHUNK_BYTES = 64 * 2**20
#: Lava's Conv runs in float32 (torch); exact while every output's sum of |w| stays below this.
CONV_EXACT = 2**24


@dataclass
class LavaTimings:
    """Where the time of a Lava run went (seconds, summed over the compiled networks)."""

    samples: int = 0
    networks: int = 0  # compiled networks (one per chunk of samples)
    steps: int = 0  # Lava steps run (samples x (T + max depth))
    pauses: int = 0  # run() calls beyond one per sample (Var.set points)
    build_s: float = 0.0  # creating the Process objects
    compile_s: float = 0.0  # first run() call: compile, start one OS process per Process, one step
    run_s: float = 0.0  # run() calls: stepping, plus Var.set at pauses
    read_s: float = 0.0  # reading the recorders
    stop_s: float = 0.0

    @property
    def total_s(self) -> float:
        return self.build_s + self.compile_s + self.run_s + self.read_s + self.stop_s

    @property
    def step_s(self) -> float:
        """Mean seconds per Lava step (run time / steps)."""
        return self.run_s / self.steps if self.steps else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "total_s": self.total_s, "step_s": self.step_s}


# ------------------------------------------------------------------------------------------------
# Layouts


def to_lava(a: np.ndarray | int) -> np.ndarray:
    """(C, H, W) -> Lava's (X, Y, C) = (W, H, C); 1-d unchanged."""
    a = np.asarray(a)
    return a.transpose(2, 1, 0) if a.ndim == 3 else a


def lava_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(reversed(shape)) if len(shape) == 3 else tuple(shape)


def to_lava_seq(x: np.ndarray, ndim: int) -> np.ndarray:
    """(..., C, H, W) -> (..., W, H, C) when the item shape (last ``ndim`` axes) is 3-d."""
    return np.swapaxes(x, -1, -3) if ndim == 3 else x


def _from_lava_seq(a: np.ndarray, ndim: int) -> np.ndarray:
    """(T, W, H, C) -> (T, C, H, W) when the layer is 3-d."""
    return np.swapaxes(a, -1, -3) if ndim == 3 else a


def _flatten_perm(shape: tuple[int, ...]) -> np.ndarray:
    """fx flat index at each position of Lava's C-order flatten of the (W, H, C) layout."""
    return np.arange(int(np.prod(shape))).reshape(shape).transpose(2, 1, 0).reshape(-1)


# ------------------------------------------------------------------------------------------------
# Plan: depths and what Lava can map


@dataclass
class _Plan:
    depth: dict[str, int] = field(default_factory=dict)
    spike_src: dict[str, tuple[str, bool]] = field(default_factory=dict)  # synapse -> (origin, flattened)
    recurrent: dict[str, list[str]] = field(default_factory=dict)  # neuron -> its self-loop synapses
    #: synapse -> the largest value its input spikes carry (> 1: a graded source, fixed-point.md 5.2)
    payload: dict[str, int] = field(default_factory=dict)

    @property
    def max_depth(self) -> int:
        return max([0, *self.depth.values()])


def plan(graph: FxGraph) -> _Plan:
    """Depth (Lava latency) of every node; raise ``UnsupportedError`` naming the node where Lava
    cannot reproduce the contract's time base or arithmetic."""
    sched = graph.schedule()
    p = _Plan()
    for name in sched.order:
        node = graph.nodes[name]
        ins = sched.inputs[name]
        kind = primitive_of(node, name).kind
        check = lookup(lava_kinds(), kind, "the Lava backend", name)
        if node.role == "input":
            p.depth[name] = 0
        elif node.role in ("reshape", "output"):
            p.depth[name] = p.depth[ins[0][0]]
        elif node.role == "synapse":
            src = ins[0][0]
            origin, flat = src, False
            if graph.nodes[src].kind == "flatten":
                origin, flat = sched.inputs[src][0][0], True
            if ins[0][1]:
                raise UnsupportedError("a synapse that reads a back edge (its source runs later in the "
                                       "step) is not a self-loop through one synapse", node=name)
            p.depth[name] = p.depth[src] + 1
            p.spike_src[name] = (origin, flat)
            src_node = graph.nodes[origin]
            p.payload[name] = int(src_node.spike_payload()) if isinstance(src_node, FxNeuron) else 1
            if p.payload[name] > 1:
                lookup(GRADED_CHECKS, kind, "the Lava backend's graded spikes", name)(name, node, p.payload[name])
        else:
            fresh = {p.depth[s] for s, d in ins if not d}
            if len(fresh) != 1:
                raise UnsupportedError(
                    f"inputs arrive through paths of different lengths {sorted(fresh)}; Lava adds one "
                    "step per synapse, so only equal-depth paths can be aligned", node=name)
            p.depth[name] = fresh.pop()
        if check is not None:
            check(name, node)
    for name in sched.order:
        for s, d in sched.inputs[name]:
            if not d:
                continue
            if p.spike_src.get(s, ("", False))[0] != name:
                raise UnsupportedError(
                    f"recurrent edge from '{s}' is not a self-loop through one synapse; Lava's "
                    "latency cannot match the one-step delay of longer cycles", node=name)
            p.recurrent.setdefault(name, []).append(s)
    return p


#: The name of the k-th relay (k = 1, 2, ...) inserted before synapse ``s`` by ``align_paths``;
#: its synapse is ``<relay>_syn``.
RELAY_NAME = "{synapse}__delay{k}"


def relay_nodes(shape: tuple[int, ...]) -> tuple[FxNode, FxLIF]:
    """One relay: a unit-weight synapse (a depthwise 1x1 convolution for (C, H, W) spikes, an
    identity Dense for 1-d) into a memoryless stock LIF (du = dv = 4095, vth = 0). On binary spikes
    it is the identity, exactly: an input spike gives u = v = 1 << 6 > 0, a spike, v reset to 0;
    no spike gives u = 0 (the previous u decays by (4096 - 4095 - 1)/4096 = 0) and v = trunc(v /
    4096) = 0. In the contract's time base it is instantaneous; on Lava it costs one step (its
    synapse), which is what ``align_paths`` uses it for."""
    if len(shape) == 3:
        c = int(shape[0])
        syn: FxNode = FxConv2d(weight=np.ones((c, 1, 1, 1), np.int64), groups=c)
    else:
        n = int(np.prod(shape))
        syn = FxDense(weight=np.eye(n, dtype=np.int64), sign_mode="excitatory")
    return syn, FxLIF(shape=tuple(shape), du=4095, dv=4095, vth=0)


def align_paths(graph: FxGraph) -> tuple[FxGraph, list[str]]:
    """``graph`` with relays (``relay_nodes``) inserted before every synapse whose path into its
    neuron layer is shorter, in Lava's terms (``FxGraph.path_lengths``), than the layer's longest, one
    relay per missing step: every layer then reads inputs of one depth, and Lava runs the network
    on the contract's time base. A flatten between a source and a delayed synapse is repeated after
    the relays. Returns the graph (``graph`` itself where nothing differs) and the relay layers
    added (they are not recorded or returned by ``run``). The contract's results are unchanged:
    a relay passes binary spikes through within the step."""
    lengths = graph.path_lengths()
    sched = graph.schedule()
    nodes = dict(graph.nodes)
    edges = list(graph.edges)
    relays: list[str] = []
    for syns in lengths.values():
        longest = max(syns.values())
        for syn, length in syns.items():
            if length == longest:
                continue
            (src, _), = sched.inputs[syn]
            origin, flat = (sched.inputs[src][0][0], src) if graph.nodes[src].kind == "flatten" else (src, None)
            src_node = graph.nodes[origin]
            if isinstance(src_node, FxNeuron) and src_node.spike_payload() > 1:
                raise UnsupportedError(f"its path is {longest - length} synapse(s) shorter than the layer's longest, "
                                       f"and Lava's relays (stock LIFs) carry binary spikes only, while '{origin}' "
                                       "sends graded spikes; make the paths into the layer equally long",
                                       node=syn)
            prev = origin
            for k in range(1, longest - length + 1):
                relay = RELAY_NAME.format(synapse=syn, k=k)
                if relay in nodes or f"{relay}_syn" in nodes:
                    raise UnsupportedError(f"cannot name the relay '{relay}': the graph has a node of that name",
                                           node=syn)
                rsyn, rlif = relay_nodes(sched.shapes[origin])
                nodes[f"{relay}_syn"], nodes[relay] = rsyn, rlif
                edges += [(prev, f"{relay}_syn"), (f"{relay}_syn", relay)]
                relays.append(relay)
                prev = relay
            if flat is not None:
                nodes[f"{prev}_flatten"] = graph.nodes[flat]
                edges.append((prev, f"{prev}_flatten"))
                prev = f"{prev}_flatten"
            edges[edges.index((src, syn))] = (prev, syn)
    if not relays:
        return graph, []
    return FxGraph(nodes=nodes, edges=edges, metadata=dict(graph.metadata), delays=graph.delayed_edges(),
                   target=graph.target), relays


def _check_conv(name: str, node: FxConv2d) -> None:
    if node.weight_exp < 0:
        raise UnsupportedError("Lava's Conv ignores weight_exp; a negative one cannot be emulated "
                               "(the loihi2 target pins it to 0)", node=name)
    fan = np.abs(node.weight).reshape(node.weight.shape[0], -1).sum(axis=1).max(initial=0)
    if int(fan) << node.weight_exp >= CONV_EXACT:
        raise UnsupportedError(f"sum |w| * 2^weight_exp = {int(fan) << node.weight_exp} per output "
                               f"reaches 2^24: Lava's Conv computes in float32 and would round",
                               node=name)


def _check_graded_dense(name: str, node: FxDense, payload: int) -> None:
    """Lava's Dense with ``num_message_bits > 0`` multiplies ``weights @ s`` in int32: exact under
    the contract's ``wrap_32`` when ``weight_exp >= 0`` (the wrap commutes with the left shift),
    otherwise only while ``payload * sum |w| < 2^31`` (fixed-point.md 5.2)."""
    acc = synapse_bounds(node, name, payload).acc
    if node.weight_exp < 0 and acc >= 2**31:
        raise UnsupportedError(f"fed graded spikes (counts up to {payload}), its accumulator reaches {acc} >= 2^31 "
                               f"before the weight_exp {node.weight_exp} shift, and Lava's Dense accumulates "
                               "graded spikes in int32; lower the source's max_payload or the weights",
                               node=name)


def _check_graded_conv(name: str, node: FxConv2d, payload: int) -> None:
    """Lava's Conv on graded spikes: exact while ``payload * sum |w| * 2^weight_exp < 2^24``, as
    for binary spikes (section 7)."""
    acc = synapse_bounds(node, name, payload).acc << max(node.weight_exp, 0)
    if acc >= CONV_EXACT:
        raise UnsupportedError(f"fed graded spikes (counts up to {payload}), sum |w| * count reaches {acc} >= 2^24 "
                               "per output: Lava's Conv computes in float32 and would round; lower the "
                               "source's max_payload or the weights", node=name)


#: The check of each synapse kind fed by a graded layer on Lava (``num_message_bits > 0``).
GRADED_CHECKS: dict[str, Any] = {"dense": _check_graded_dense, "conv2d": _check_graded_conv}
#: ``num_message_bits`` of a Dense/Conv fed by a graded layer (Lava only tests ``> 0``): the
#: payload's width, 8 bits for ``MAX_PAYLOAD`` = 255.
GRADED_MESSAGE_BITS = 8


def _check_lif(name: str, node: FxLIF) -> None:
    if (node.state_bits, node.decay_bits, node.vth_shift, node.act_shift) != (24, 12, 6, 6):
        raise UnsupportedError("Lava's LIF has fixed widths (state 24, decay 12, vth_shift 6, "
                               f"act_shift 6), this layer has ({node.state_bits}, {node.decay_bits}, "
                               f"{node.vth_shift}, {node.act_shift})", node=name)


def _check_atrlif(name: str, node: Any) -> None:
    if (node.state_bits, node.decay_bits, node.theta_shift, node.act_shift) != (24, 12, 6, 6):
        raise UnsupportedError("Lava's ATRLIF has fixed widths (state 24, decay 12, theta_shift 6, act_shift 6), "
                               f"this layer has ({node.state_bits}, {node.decay_bits}, {node.theta_shift}, "
                               f"{node.act_shift})", node=name)


def _check_contract(name: str, node: FxNode) -> None:
    """A ``ContractNeuron`` layer: at most ``MAX_STATES`` states, and its contract step must run
    on the host (one step from the initial states on a zero input): a process model that raises
    leaves Lava 0.10's ``run()`` waiting forever, so a failing step is refused here instead."""
    neuron = cast(FxNeuron, node)
    p = primitive_of(node, name)
    names = neuron.state_names()
    if not 1 <= len(names) <= MAX_STATES:
        raise UnsupportedError(f"a {p.kind} layer has {len(names)} states {list(names)}; Lava's "
                               f"ContractNeuron holds 1..{MAX_STATES}", node=name)
    assert p.params is not None and p.step is not None
    try:
        state = {k: np.broadcast_to(np.asarray(getattr(node, f"{k}_init"), np.int64), neuron.shape).copy()
                 for k in names}
        new, s = p.step(p.params(node), state, np.zeros(neuron.shape, np.int64))
        missing = [k for k in names if np.shape(new.get(k)) != neuron.shape]
        if missing or np.shape(s) != neuron.shape:
            raise ValueError(f"it returns states {sorted(new)} and spikes of shape {np.shape(s)}; "
                             f"expected {list(names)} and spikes shaped {neuron.shape}")
    except Exception as e:
        raise UnsupportedError(f"the contract step of primitive {p.kind!r} fails on the host ({e}); "
                               "fix it before running on Lava (a failing process model hangs Lava 0.10)",
                               node=name) from e


#: The primitive kinds Lava runs with a process of their own, each with the check of what Lava's
#: process can reproduce (None: nothing to check). The processes are built by
#: ``_Network.BUILDERS``. Any other neuron primitive with a registered contract step runs as a
#: ``ContractNeuron`` (``lava_kinds``).
LAVA_KINDS: dict[str, Any] = {"input": None, "output": None, "flatten": None, "dense": None,
                              "conv2d": _check_conv, "lif": _check_lif,
                              "poly": None, "atrlif": _check_atrlif}


def _contract_kinds() -> set[str]:
    """Neuron primitives without a process of their own that register a contract step."""
    return {k for k, p in primitives().items()
            if p.role == "neuron" and p.step is not None and p.params is not None and k not in LAVA_KINDS}


def lava_kinds() -> dict[str, Any]:
    """Every primitive kind the Lava backend runs, with its check: ``LAVA_KINDS``, plus each
    neuron primitive with a registered contract step (a ``ContractNeuron``)."""
    return {**dict.fromkeys(_contract_kinds(), _check_contract), **LAVA_KINDS}


#: The input buffer of each synapse kind's Lava process (a self-loop's is cleared at the start).
SYNAPSE_BUFFERS: dict[str, str] = {"dense": "a_buff", "conv2d": "a_buf"}
#: Neuron kinds whose process runs before its start step (the stock ``LIF``, its bias on), so a
#: self-loop synapse holds its spikes of that step: cleared at the start (``PolyNeuron`` and
#: ``ContractNeuron`` are inert before it and send zeros).
RUNS_BEFORE_START = frozenset({"lif", "atrlif"})
#: The scale of a neuron kind's states in Lava's ``floating_pt`` model, in LSBs of the
#: fixed-point state (the float LIF counts in units of ``2**vth_shift``); 1 when absent.
FLOAT_STATE_SCALE: dict[str, Any] = {"lif": lambda node: 2.0**node.vth_shift,
                                     "atrlif": lambda node: 2.0**node.theta_shift}


# ------------------------------------------------------------------------------------------------
# Building one network for a chunk of samples


def _state_var(proc: Any, state: str) -> Any:
    """The Var of a neuron process holding ``state``: a ``ContractNeuron`` maps names to its
    Vars (``state_var``); the other processes name their Vars after the states."""
    by_name = getattr(proc, "state_var", None)
    return by_name(state) if by_name is not None else getattr(proc, state)


class _Network:
    """Lava processes for a chunk of samples ``xs`` (B, T, *in_shape), run back to back."""

    def __init__(self, graph: FxGraph, p: _Plan, xs: np.ndarray, *, record: bool, tag: str,
                 layers: list[str], workdir: str) -> None:
        sched = graph.schedule()
        self.graph, self.plan, self.tag = graph, p, tag
        self.shapes: dict[str, tuple[int, ...]] = dict(sched.shapes)
        self.workdir = workdir
        self.errors: dict[str, str] = {}  # ContractNeuron layer -> its error file
        self.batch, self.steps = xs.shape[0], xs.shape[1]
        self.total = self.steps + p.max_depth
        self.layers = layers
        fixed = tag == "fixed_pt"
        procs: dict[str, Any] = {}
        self.procs = procs
        # Var.set points: local step -> [(Var, value)], applied before that step of every sample.
        self.events: dict[int, list[tuple[Any, np.ndarray]]] = {}
        self.files: dict[str, list[tuple[str, str]]] = {}  # layer -> [(quantity, path)]
        for name in sched.order:
            node = graph.nodes[name]
            if node.role == "input":
                in_shape = sched.shapes[name]
                data = np.zeros((*lava_shape(in_shape), self.batch * self.total),
                                dtype=np.int32 if fixed else np.float64)
                seq = np.zeros((self.batch, self.total, *lava_shape(in_shape)), dtype=data.dtype)
                seq[:, : self.steps] = to_lava_seq(xs, len(in_shape))
                data[:] = np.moveaxis(seq.reshape(self.batch * self.total, *seq.shape[2:]), 0, -1)
                procs[name] = Source(data=data)
            elif node.role in ("synapse", "neuron"):
                method = self.BUILDERS.get(node.kind, "_contract")  # plan() accepted the kind
                procs[name] = getattr(self, method)(name, node, sched, fixed)
        for n, syns in p.recurrent.items():
            if graph.nodes[n].kind in RUNS_BEFORE_START:
                # The LIF runs (bias on) before its start step: its spikes of step start-1 sit in the
                # self-loop synapse's buffer. The contract's back edge delivers 0 at t = 0.
                for s in syns:
                    buf = getattr(procs[s], lookup(SYNAPSE_BUFFERS, graph.nodes[s].kind, "the Lava backend", s))
                    self.events.setdefault(p.depth[n], []).append((buf, np.zeros(buf.shape)))
        for s, d in graph.edges:
            dst = graph.nodes[d]
            if dst.role == "synapse":
                origin, flat = p.spike_src[d]
                port = procs[origin].s_out
                if flat and len(sched.shapes[origin]) == 3:
                    port = port.flatten()
                port.connect(procs[d].s_in)
            elif dst.role == "neuron":
                procs[s].a_out.connect(procs[d].a_in)
        self.recorders: dict[str, Recorder] = {}
        for name in layers:
            neuron = cast(FxNeuron, graph.nodes[name])  # plan(): layers are neurons
            shp = lava_shape(sched.shapes[name])
            # A non-spiking readout's output is a state (Primitive.output_state): probed always.
            graded = output_state(neuron, name)
            states = list(neuron.state_names()) if record else ([graded] if graded is not None else [])
            files = [("spikes", os.path.join(workdir, f"{len(self.files)}.s"))]
            files += [(v, os.path.join(workdir, f"{len(self.files)}.{v}")) for v in states]
            for i, (_, path) in enumerate(files):
                dt = np.uint8 if i == 0 else (np.int64 if fixed else np.float64)
                np.memmap(path, dtype=dt, mode="w+", shape=(self.total, *shp)).flush()
            rec = Recorder(shape=shp, files=[f for _, f in files], length=self.total, n_refs=len(states),
                           name=f"rec_{name}")
            procs[name].s_out.connect(rec.s_in)
            proc = procs[name]
            for i, v in enumerate(states):
                getattr(rec, f"ref_{i}").connect_var(_state_var(proc, v))
            self.recorders[name] = rec
            self.files[name] = files
        self.source = procs[sched.input_node]
        self.pauses = sorted(k for k in self.events if 0 < k < self.total)

    # -------------------------------------------------------------------------------- processes

    #: The method that builds the Lava process of each primitive kind with a process of its own;
    #: any other neuron kind ``plan`` accepts is a ``ContractNeuron`` (``_contract``).
    BUILDERS: ClassVar[dict[str, str]] = {"dense": "_dense", "conv2d": "_conv", "lif": "_lif", "poly": "_poly",
                                          "atrlif": "_atrlif"}

    def _dense(self, name: str, node: FxDense, sched: Any, fixed: bool) -> Dense:
        origin, flat = self.plan.spike_src[name]
        perm = _flatten_perm(sched.shapes[origin]) if flat and len(sched.shapes[origin]) == 3 else None
        graded = {"num_message_bits": GRADED_MESSAGE_BITS} if self.plan.payload.get(name, 1) > 1 else {}
        if fixed:
            w = node.weight if perm is None else node.weight[:, perm]
            return Dense(weights=w.astype(np.int32), weight_exp=node.weight_exp,
                         num_weight_bits=node.num_weight_bits, sign_mode=_SIGN[node.sign_mode], name=name,
                         **graded)
        w = node.effective_weight().astype(np.float64) * 2.0**node.weight_exp
        return Dense(weights=w if perm is None else w[:, perm], name=name, **graded)

    def _conv(self, name: str, node: FxConv2d, sched: Any, fixed: bool) -> Conv:
        w = (node.weight << node.weight_exp).transpose(0, 3, 2, 1)[:, ::-1, ::-1, :]
        kw = {"padding": node.padding[::-1], "stride": node.stride[::-1],
              "dilation": node.dilation[::-1], "groups": node.groups}
        return self._lava_conv(name, w, kw, sched, fixed)

    def _lava_conv(self, name: str, w: np.ndarray, kw: dict[str, Any], sched: Any, fixed: bool) -> Conv:
        in_shape = sched.shapes[sched.inputs[name][0][0]]
        w = np.ascontiguousarray(w).astype(np.int32 if fixed else np.float64)
        if self.plan.payload.get(name, 1) > 1:
            kw = {**kw, "num_message_bits": GRADED_MESSAGE_BITS}
        return Conv(weight=w, input_shape=lava_shape(in_shape), name=name, **kw)

    def _lif(self, name: str, node: FxLIF, sched: Any, fixed: bool) -> LIF:
        shp = lava_shape(node.shape)
        d = self.plan.depth[name]
        unity = 2**node.decay_bits
        if fixed:
            par: dict[str, Any] = {"du": node.du, "dv": node.dv, "vth": node.vth,
                                   "bias_mant": to_lava(node.bias_mant), "bias_exp": to_lava(node.bias_exp)}
            u0, v0 = to_lava(node.u_init), to_lava(node.v_init)
        else:  # Lava's float LIF in units of 2^vth_shift LSBs (it ignores bias_exp)
            sc = 2.0**node.vth_shift
            par = {"du": (node.du + 1) / unity, "dv": node.dv / unity, "vth": float(node.vth),
                   "bias_mant": to_lava(node.bias).astype(np.float64) / sc, "bias_exp": np.zeros(shp)}
            u0, v0 = to_lava(node.u_init) / sc, to_lava(node.v_init) / sc
        if np.any(u0) or np.any(v0):
            # LIFReset resets to 0: a non-zero initial state is set with Var.set at the start step.
            proc = LIF(shape=shp, u=u0, v=v0, name=name, **par)
            self.events.setdefault(d, []).extend([(proc.u, np.asarray(u0, np.float64)),
                                                  (proc.v, np.asarray(v0, np.float64))])
            return proc
        # Zero u, v at the start of Lava step b * total + d: time_step (1-based) = d + 1 mod total.
        return LIFReset(shape=shp, u=np.zeros(shp), v=np.zeros(shp), reset_interval=self.total,
                        reset_offset=(d + 1) % self.total, name=name, **par)

    def _atrlif(self, name: str, node: Any, sched: Any, fixed: bool) -> ATRLIF:
        """Lava's own ATRLIF (``lnm_deploy.adaptive.FxATRLIF``). Its decays are Lava's fractions
        ``delta = d / 4096`` (exact in float64: the fixed_pt model multiplies them back by 4096);
        its states are set to the node's initial ones before the layer's start step of every
        sample (Lava's model has no periodic reset; it resets theta to theta_0 itself only once)."""
        shp = lava_shape(node.shape)
        unity = 2**node.decay_bits
        keys = ("i", "v", "theta", "r")
        if fixed:
            par: dict[str, Any] = {"delta_i": node.di / unity, "delta_v": node.dv / unity,
                                   "delta_theta": node.dtheta / unity, "delta_r": node.dr / unity,
                                   "theta_0": node.theta_0, "theta_step": node.theta_step,
                                   "bias_mant": to_lava(node.bias_mant), "bias_exp": to_lava(node.bias_exp)}
            inits = {k: to_lava(getattr(node, f"{k}_init")).astype(np.float64) for k in keys}
        else:  # Lava's float ATRLIF in units of 2^theta_shift LSBs (it ignores bias_exp)
            sc = 2.0**node.theta_shift
            par = {"delta_i": (node.di + 1) / unity, "delta_v": node.dv / unity,
                   "delta_theta": node.dtheta / unity, "delta_r": node.dr / unity,
                   "theta_0": float(node.theta_0), "theta_step": float(node.theta_step),
                   "bias_mant": to_lava(node.bias).astype(np.float64) / sc, "bias_exp": np.zeros(shp)}
            inits = {k: to_lava(getattr(node, f"{k}_init")) / sc for k in keys}
        proc = ATRLIF(shape=shp, name=name, **{k: inits[k] for k in keys}, **par)
        self.events.setdefault(self.plan.depth[name], []).extend((getattr(proc, k), inits[k]) for k in keys)
        return proc

    def _poly(self, name: str, node: FxPoly, sched: Any, fixed: bool) -> PolyNeuron:
        shp = lava_shape(node.shape)
        return PolyNeuron(
            shape=shp, coef=np.stack([to_lava(c) for c in node.coef]), shifts=node.shifts,
            vth=to_lava(node.vth), v_reset=to_lava(node.v_reset), v_init=to_lava(node.v_init),
            c_init=to_lava(node.c_init),
            c_bias=None if node.c_bias is None else to_lava(node.c_bias),
            syn_decay=None if node.syn_decay is None else to_lava(node.syn_decay),
            reset=node.reset, rounding=node.rounding, overflow=node.overflow,
            in_shift=node.in_shift, state_bits=node.state_bits, acc_bits=node.acc_bits,
            decay_bits=node.decay_bits, start=self.plan.depth[name], period=self.total, name=name,
            threshold=node.threshold, max_payload=node.max_payload,
            v_floor=None if node.v_floor is None else to_lava(node.v_floor))

    def _contract(self, name: str, node: FxNeuron, sched: Any, fixed: bool) -> ContractNeuron:
        if not fixed:
            raise UnsupportedError(f"a {node.kind} layer runs its integer contract step (ContractNeuron); "
                                   "it has no floating_pt model", node=name)
        prim = primitive_of(node, name)
        assert prim.params is not None  # plan(): a contract neuron registers params and step
        names = node.state_names()
        return ContractNeuron(
            shape=lava_shape(node.shape), kind=prim.kind, params=prim.params(node), states=names, inits=[to_lava(np.broadcast_to(getattr(node, f"{k}_init"), node.shape)) for k in names],
            layout_ndim=len(node.shape), error_file=self.errors.setdefault(name, os.path.join(self.workdir, f"{len(self.errors)}.err")),
            start=self.plan.depth[name], period=self.total, name=name)

    # -------------------------------------------------------------------------------- read back

    def read_sample(self) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
        """Spikes and states of the sample that just ran, on the contract's time base."""
        for name, path in self.errors.items():
            if os.path.exists(path):
                with open(path) as f:
                    first = f.readline().strip()
                raise UnsupportedError(f"the contract step of primitive {self.graph.nodes[name].kind!r} "
                                       f"raised in Lava's process model ({first})", node=name)
        spikes: dict[str, np.ndarray] = {}
        states: dict[str, dict[str, np.ndarray]] = {}
        fixed = self.tag == "fixed_pt"
        for name, files in self.files.items():
            node = self.graph.nodes[name]
            d, shp, nd = self.plan.depth[name], lava_shape(self.shapes[name]), len(self.shapes[name])
            scale = FLOAT_STATE_SCALE.get(node.kind)
            for i, (q, path) in enumerate(files):
                dt = np.uint8 if i == 0 else (np.int64 if fixed else np.float64)
                mm = np.memmap(path, dtype=dt, mode="r", shape=(self.total, *shp))
                seq = _from_lava_seq(np.array(mm[d : d + self.steps]), nd)
                del mm
                if i == 0:
                    spikes[name] = seq
                else:
                    if scale is not None and not fixed:
                        seq = seq * scale(node)  # back to LSB units of the fixed-point state
                    states.setdefault(name, {})[q] = seq
        return spikes, states


# ------------------------------------------------------------------------------------------------
# Running


def _check_input(x: Any, in_shape: tuple[int, ...]) -> np.ndarray:
    from lnm_deploy import validate

    return validate.spikes(x, tuple(in_shape), "input", allow_empty=True)


def _workdir() -> str:
    shm = "/dev/shm"
    base = shm if os.path.isdir(shm) and os.access(shm, os.W_OK) else None
    # the creating process's id in the name: a leftover (a SIGKILLed run) can be told apart
    return tempfile.mkdtemp(prefix=f"lnm-lava-{os.getpid()}-", dir=base)


@contextlib.contextmanager
def _children_ignore_sigint() -> Iterator[None]:
    """Lava forks its processes in the first ``run()``. A Ctrl-C reaches the whole process group,
    and so do the SIGTERM of ``timeout``, of a CI cancellation or of a job scheduler and the SIGHUP
    of a closed terminal; Lava processes killed by one leave ``run()`` and ``stop()`` waiting
    forever. Forked while SIGINT, SIGTERM and SIGHUP only set a flag, they keep that handler: a
    later signal raises KeyboardInterrupt (``Terminated`` for SIGTERM/SIGHUP, see
    ``lnm_deploy.signals``) in this process alone, and the ``finally`` that stops the runtime can
    still talk to them. A signal during the first ``run()`` itself is raised when it returns."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []

    def _note(signum: int, frame: Any) -> None:
        caught.append(signum)

    old = {s: signal.signal(s, _note) for s in (signal.SIGINT, *SIGNALS)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    if caught:
        if caught[0] == signal.SIGINT:
            raise KeyboardInterrupt
        raise Terminated(caught[0])


def _run_network(net: _Network, cfg: Loihi2SimCfg, timings: LavaTimings, on_sample: Any) -> None:
    """Run every sample of ``net``; always stops the runtime it started.

    The first ``run()`` call compiles the network and starts the runtime; it runs a single step
    so that its duration is (almost) all compile and start-up. ``create_runtime`` is not called
    on its own: Lava 0.10's ``stop()`` hangs on a runtime that was initialised but never run.
    """
    src = net.source
    first = True
    completed = False
    try:
        for _ in range(net.batch):
            t0 = time.perf_counter()
            k = 0
            for stop in [*net.pauses, net.total]:
                if first:
                    first = False
                    with _children_ignore_sigint():
                        src.run(condition=RunSteps(num_steps=1), run_cfg=cfg)
                    k = 1
                    t1 = time.perf_counter()
                    timings.compile_s += t1 - t0
                    t0 = t1
                if stop > k:
                    src.run(condition=RunSteps(num_steps=stop - k), run_cfg=cfg)
                    k = stop
                for var, val in net.events.get(stop, ()) if stop < net.total else ():
                    var.set(val)
            t1 = time.perf_counter()
            spikes, states = net.read_sample()
            t2 = time.perf_counter()
            timings.run_s += t1 - t0
            timings.read_s += t2 - t1
            timings.steps += net.total
            timings.pauses += len(net.pauses)
            on_sample(spikes, states)
        completed = True
    finally:
        rt = getattr(src, "_runtime", None)
        if rt is not None and getattr(rt, "_is_started", False):
            t0 = time.perf_counter()
            try:
                src.stop()
            except RuntimeError:
                # After an interrupted run() (Ctrl-C), the reply to that run can still be queued
                # when stop() reads the services' replies: Lava 0.10 then raises "Runtime Received
                # ..." after it has told the processes to stop and joined them. The interrupt (or
                # the error) that got us here is what the caller must see.
                if completed:
                    raise
            timings.stop_s += time.perf_counter() - t0


def run(graph: FxGraph, x: Any, *, record: bool = False, progress: bool = False, tag: str = "fixed_pt",
        samples_per_network: int | None = None, layers: list[str] | None = None) -> tuple[RunResult, LavaTimings]:
    """Run every sample of ``x`` (samples, T, *in_shape) through Lava; the result and the timings.

    ``tag``: ``fixed_pt`` (bit-accurate, what ``run_lava`` uses) or ``floating_pt`` (Lava's float
    models and ``PolyNeuron``'s float model: a different model, states in LSB units as float).
    ``samples_per_network``: samples run by one compiled network (default: as many as fit in
    ``CHUNK_BYTES`` of input; 1 compiles a fresh network per sample). ``layers``: the neuron
    layers to record (default all; each is one more Lava process; the output layer always).
    """
    if tag not in TAGS:
        raise UserInputError(f"tag must be one of {TAGS}, got {tag!r}")
    sched = graph.schedule()
    names = graph.neuron_names()
    graph, _ = align_paths(graph)  # relays: run, never recorded
    p = plan(graph)
    xs = _check_input(x, sched.shapes[sched.input_node])
    batch, steps = xs.shape[:2]
    out_src = sched.inputs[sched.output_node][0][0]
    layers = list(names) if layers is None else [n for n in names if n in layers or n == out_src]
    fixed = tag == "fixed_pt"
    sdt = np.int64 if fixed else np.float64
    spikes = {n: np.zeros((batch, steps, *sched.shapes[n]), dtype=np.uint8) for n in layers}
    states: dict[str, dict[str, np.ndarray]] = {}
    if record:
        for n in layers:
            states[n] = {v: np.zeros((batch, steps, *sched.shapes[n]), dtype=sdt)
                         for v in graph.nodes[n].state_names()}  # type: ignore[attr-defined]
    graded = output_state(graph.nodes[out_src], out_src)
    if graded is not None and not record:
        states[out_src] = {graded: np.zeros((batch, steps, *sched.shapes[out_src]), dtype=sdt)}
    timings = LavaTimings(samples=batch)
    if batch and steps:
        total = steps + p.max_depth
        per_sample = int(np.prod(sched.shapes[sched.input_node])) * total * 8
        chunk = max(1, min(batch, CHUNK_BYTES // max(per_sample, 1)))
        if samples_per_network is not None:
            chunk = max(1, min(chunk, int(samples_per_network)))
        cfg = Loihi2SimCfg(select_tag=tag)
        bar = None
        if progress:
            from lnm_deploy.progress import progress as progress_bar

            bar = progress_bar(total=batch, desc=f"lava ({tag})", unit="sample")
        b = 0

        def store(sp: dict[str, np.ndarray], st: dict[str, dict[str, np.ndarray]]) -> None:
            nonlocal b
            for n, a in sp.items():
                spikes[n][b] = a
            for n, d in st.items():
                for v, a in d.items():
                    states[n][v][b] = a
            b += 1
            if bar is not None:
                bar.update(1)

        # SIGTERM/SIGHUP with their default action would kill this process at once, leaving the Lava
        # processes running and the shared memory behind: raised here, re-sent after the cleanup.
        with deferred_termination():
            try:
                for lo in range(0, batch, chunk):
                    workdir = _workdir()
                    try:
                        t0 = time.perf_counter()
                        net = _Network(graph, p, xs[lo : lo + chunk], record=record, tag=tag,
                                       layers=layers, workdir=workdir)
                        timings.build_s += time.perf_counter() - t0
                        timings.networks += 1
                        _run_network(net, cfg, timings, store)
                    finally:
                        shutil.rmtree(workdir, ignore_errors=True)
            finally:
                if bar is not None:
                    bar.close()
    if graded is None:
        return RunResult(output=spikes[out_src], spikes=spikes, states=states), timings
    output = states[out_src][graded]
    spikes = {n: a for n, a in spikes.items() if output_state(graph.nodes[n], n) is None}
    return RunResult(output=output, spikes=spikes, states=states if record else {}), timings


def run_lava(graph: FxGraph, x: Any, *, record: bool = False, progress: bool = False) -> RunResult:
    """Run ``graph`` on Lava's bit-accurate models (``Loihi2SimCfg(select_tag='fixed_pt')``).

    Same signature, time base and result as ``lnm_deploy.fxsim.run_fx``: spikes of every spiking
    neuron layer (uint8; the output of a non-spiking readout is its probed membrane, int64) and, with ``record``, states as int64 (``u``, ``v`` for LIF; ``v`` and, with a
    synapse, ``c`` for the polynomial neuron), each (samples, timesteps, *shape), after the reset.
    """
    return run(graph, x, record=record, progress=progress)[0]


def run_lava_float(graph: FxGraph, x: Any, *, record: bool = False, progress: bool = False) -> RunResult:
    """The same network on Lava's ``floating_pt`` models (float Dense/Conv/LIF, ``PolyNeuron``'s
    float model): the float model of the integers, not the chip. States come back as float64 in
    LSB units of the fixed-point state (multiply by the layer's scale ``q`` for real units)."""
    return run(graph, x, record=record, progress=progress, tag="floating_pt")[0]
