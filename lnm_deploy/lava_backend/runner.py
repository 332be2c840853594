"""Build and run Lava 0.10 processes for an ``FxGraph`` (``docs/fixed-point.md`` section 7).

Imports lava at module level: import it only through ``lnm_deploy.lava_backend.run_lava``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from lava.magma.core.run_conditions import RunSteps
from lava.magma.core.run_configs import Loihi2SimCfg
from lava.proc.conv.process import Conv
from lava.proc.dense.process import Dense
from lava.proc.io.sink import RingBuffer as Sink
from lava.proc.io.source import RingBuffer as Source
from lava.proc.lif.process import LIF
from lava.proc.monitor.process import Monitor
from lava.utils.weightutils import SignMode

from lnm_deploy.errors import UnsupportedError
from lnm_deploy.execute import RunResult
from lnm_deploy.fixedpoint import (
    FxConv2d,
    FxDense,
    FxFlatten,
    FxGraph,
    FxInput,
    FxLIF,
    FxNeuron,
    FxOutput,
    FxPoly,
    FxSumPool2d,
)
from lnm_deploy.lava_backend.procs.process import PolyNeuron

_SIGN = {"mixed": SignMode.MIXED, "excitatory": SignMode.EXCITATORY, "inhibitory": SignMode.INHIBITORY}


def to_lava(a: np.ndarray | int) -> np.ndarray:
    """(C, H, W) -> Lava's (X, Y, C) = (W, H, C); 1-d unchanged. Works on trailing dims' prefix."""
    a = np.asarray(a)
    return a.transpose(2, 1, 0) if a.ndim == 3 else a


def lava_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(reversed(shape)) if len(shape) == 3 else tuple(shape)


def _flatten_perm(shape: tuple[int, ...]) -> np.ndarray:
    """fx flat index at each position of Lava's C-order flatten of the (W, H, C) layout."""
    return np.arange(int(np.prod(shape))).reshape(shape).transpose(2, 1, 0).reshape(-1)


@dataclass
class _Plan:
    depth: dict[str, int] = field(default_factory=dict)
    spike_src: dict[str, tuple[str, bool]] = field(default_factory=dict)  # node -> (origin, flattened)


def plan(graph: FxGraph) -> _Plan:
    """Depth (Lava latency) of every node; raise ``UnsupportedError`` where Lava cannot match."""
    sched = graph.schedule()
    p = _Plan()
    for name in sched.order:
        node = graph.nodes[name]
        ins = sched.inputs[name]
        if isinstance(node, FxInput):
            p.depth[name] = 0
        elif isinstance(node, (FxFlatten, FxOutput)):
            p.depth[name] = p.depth[ins[0][0]]
        elif node.role == "synapse":
            src = ins[0][0]
            p.depth[name] = p.depth[src] + 1
            origin, flat = src, False
            if isinstance(graph.nodes[src], FxFlatten):
                origin, flat = sched.inputs[src][0][0], True
            p.spike_src[name] = (origin, flat)
        elif isinstance(node, FxNeuron):
            fresh = {p.depth[s] for s, d in ins if not d}
            if len(fresh) != 1:
                raise UnsupportedError(
                    f"inputs arrive through paths of different lengths {sorted(fresh)}; Lava adds one "
                    "step per synapse, so only equal-depth paths can be aligned", node=name)
            p.depth[name] = fresh.pop()
        else:
            raise UnsupportedError(f"no Lava mapping for {type(node).__name__}", node=name)
    for name in sched.order:
        for s, d in sched.inputs[name]:
            if d and p.spike_src.get(s, ("", False))[0] != name:
                raise UnsupportedError(
                    f"recurrent edge from '{s}' is not a self-loop through one synapse; Lava's "
                    "latency cannot match the one-step delay of longer cycles", node=name)
    return p


def _build(graph: FxGraph, x: np.ndarray, total: int, record: bool) -> dict[str, Any]:
    """Processes for one sample x (T, *in_shape). Returns handles."""
    sched = graph.schedule()
    p = plan(graph)
    steps = x.shape[0]
    procs: dict[str, Any] = {}
    sinks: dict[str, Any] = {}
    monitors: dict[str, dict[str, Any]] = {}
    deferred: dict[str, dict[str, np.ndarray]] = {}
    for name in sched.order:
        node = graph.nodes[name]
        if isinstance(node, FxInput):
            data = np.zeros((*lava_shape(node.shape), total), dtype=np.int32)
            data[..., :steps] = np.moveaxis(to_lava_seq(x), 0, -1)
            procs[name] = Source(data=data)
        elif isinstance(node, FxDense):
            origin, flat = p.spike_src[name]
            w = node.weight
            if flat and len(sched.shapes[origin]) == 3:
                w = w[:, _flatten_perm(sched.shapes[origin])]
            procs[name] = Dense(weights=w.astype(np.int32), weight_exp=node.weight_exp,
                                num_weight_bits=node.num_weight_bits, sign_mode=_SIGN[node.sign_mode],
                                name=name)
        elif isinstance(node, FxConv2d):
            if node.weight_exp < 0:
                raise UnsupportedError("Lava's Conv ignores weight_exp; a negative one cannot be emulated", node=name)
            w = (node.weight << node.weight_exp).transpose(0, 3, 2, 1)[:, ::-1, ::-1, :]
            in_shape = sched.shapes[sched.inputs[name][0][0]]
            procs[name] = Conv(weight=np.ascontiguousarray(w).astype(np.int32), input_shape=lava_shape(in_shape),
                               padding=node.padding[::-1], stride=node.stride[::-1],
                               dilation=node.dilation[::-1], groups=node.groups, name=name)
        elif isinstance(node, FxSumPool2d):
            assert node.stride is not None
            in_shape = sched.shapes[sched.inputs[name][0][0]]
            c = in_shape[0]
            w = np.ones((c, node.kernel_size[1], node.kernel_size[0], 1), dtype=np.int32)
            procs[name] = Conv(weight=w, input_shape=lava_shape(in_shape), padding=node.padding[::-1],
                               stride=node.stride[::-1], groups=c, name=name)
        elif isinstance(node, FxLIF):
            shp = lava_shape(node.shape)
            procs[name] = LIF(shape=shp, du=node.du, dv=node.dv, vth=node.vth,
                              bias_mant=np.zeros(shp, np.int32), bias_exp=to_lava(node.bias_exp),
                              u=np.zeros(shp, np.int32), v=np.zeros(shp, np.int32), name=name)
            later = {"bias_mant": to_lava(node.bias_mant), "u": to_lava(node.u_init), "v": to_lava(node.v_init)}
            deferred[name] = {k: v for k, v in later.items() if np.any(v)}
            if node.state_bits != 24 or node.decay_bits != 12 or node.vth_shift != 6 or node.act_shift != 6:
                raise UnsupportedError("Lava's LIF has fixed widths (24, 12, 6, 6)", node=name)
        elif isinstance(node, FxPoly):
            shp = lava_shape(node.shape)
            procs[name] = PolyNeuron(
                shape=shp, coef=np.stack([to_lava(c) for c in node.coef]), shifts=node.shifts,
                vth=to_lava(node.vth), v_reset=to_lava(node.v_reset), v_init=to_lava(node.v_init),
                c_init=to_lava(node.c_init),
                syn_decay=None if node.syn_decay is None else to_lava(node.syn_decay),
                reset=node.reset, rounding=node.rounding, overflow=node.overflow,
                in_shift=node.in_shift, state_bits=node.state_bits, acc_bits=node.acc_bits,
                decay_bits=node.decay_bits, start=p.depth[name], name=name)
        if isinstance(node, FxNeuron):
            shp = lava_shape(node.shape)
            sinks[name] = Sink(shape=shp, buffer=total)
            procs[name].s_out.connect(sinks[name].a_in)
            if record:
                monitors[name] = {}
                for var in node.state_names():
                    m = Monitor()
                    m.probe(target=getattr(procs[name], var), num_steps=total)
                    monitors[name][var] = m
    # Connections.
    for s, d in graph.edges:
        src, dst = graph.nodes[s], graph.nodes[d]
        if dst.role == "synapse":
            origin, flat = p.spike_src[d]
            port = procs[origin].s_out
            if flat and len(sched.shapes[origin]) == 3:
                port = port.flatten()
            port.connect(procs[d].s_in)
        elif isinstance(dst, FxNeuron):
            procs[s].a_out.connect(procs[d].a_in)
        del src
    return {"procs": procs, "sinks": sinks, "monitors": monitors, "deferred": deferred, "plan": p,
            "input": sched.input_node}


def to_lava_seq(x: np.ndarray) -> np.ndarray:
    """(T, C, H, W) -> (T, W, H, C); (T, n) unchanged."""
    return x.transpose(0, 3, 2, 1) if x.ndim == 4 else x


def _from_lava_seq(a: np.ndarray) -> np.ndarray:
    """(T, W, H, C) -> (T, C, H, W)."""
    return a.transpose(0, 3, 2, 1) if a.ndim == 4 else a


def run_sample(graph: FxGraph, x: np.ndarray, *, record: bool = False,
               layers: list[str] | None = None) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    """One sample x (T, *in_shape) through Lava; spikes (T, *shape) and states on fxsim's time base.

    ``layers`` limits which neuron layers are read back (Lava's ``Var.get`` costs about 1 s per
    25,000 values); default all."""
    steps = x.shape[0]
    p = plan(graph)
    dmax = max(p.depth[n] for n in graph.neuron_names())
    total = steps + dmax
    h = _build(graph, x, total, record)
    procs, deferred = h["procs"], h["deferred"]
    src = procs[h["input"]]
    cfg = Loihi2SimCfg(select_tag="fixed_pt")
    try:
        src.run(condition=RunSteps(num_steps=1), run_cfg=cfg)  # Lava step 0: every layer inert
        k = 1
        while k < total:
            for name, vals in deferred.items():
                if p.depth[name] == k:
                    for var, val in vals.items():
                        getattr(procs[name], var).set(np.asarray(val, dtype=np.float64))
            n = 1 if k < dmax else total - k
            src.run(condition=RunSteps(num_steps=n), run_cfg=cfg)
            k += n
        spikes: dict[str, np.ndarray] = {}
        states: dict[str, dict[str, np.ndarray]] = {}
        for name, sink in h["sinks"].items():
            if layers is not None and name not in layers:
                continue
            d = p.depth[name]
            data = np.asarray(sink.data.get())  # (*lava_shape, total)
            seq = np.moveaxis(data, -1, 0)[d : d + steps]
            spikes[name] = _from_lava_seq(np.rint(seq).astype(np.int64)).astype(np.uint8)
        for name, mons in h["monitors"].items():
            if layers is not None and name not in layers:
                continue
            d = p.depth[name]
            states[name] = {}
            for var, m in mons.items():
                arr = np.asarray(m.get_data()[name][var])  # (total, *lava_shape)
                states[name][var] = _from_lava_seq(np.rint(arr[d : d + steps]).astype(np.int64))
    finally:
        src.stop()
    return spikes, states


def run_lava(graph: FxGraph, x: np.ndarray, *, record: bool = False, progress: bool = False) -> RunResult:
    """Run every sample of x (samples, T, *in_shape) through Lava's fixed_pt models, one at a time."""
    sched = graph.schedule()
    xs = np.asarray(x).astype(np.int64)
    it = range(xs.shape[0])
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="lava", unit="sample", leave=False)
    per: list[tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]] = [
        run_sample(graph, xs[b], record=record) for b in it
    ]
    spikes = {n: np.stack([s[n] for s, _ in per]) for n in per[0][0]}
    states = {n: {k: np.stack([st[n][k] for _, st in per]) for k in per[0][1][n]} for n in per[0][1]}
    out_src = sched.inputs[sched.output_node][0][0]
    return RunResult(output=spikes[out_src], spikes=spikes, states=states)
