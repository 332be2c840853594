"""Float reference executor of the IR (numpy).

It is the bridge between the PyTorch model and fixed point: it runs any IR graph (ours or one
imported from snnTorch / Norse) on batched inputs over time, with the exact step semantics written
in ``lnm_deploy.ir.nodes`` and ``lnm_deploy.ir.graph`` (zero latency along feed-forward edges, one
step along recurrent ones).
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import DTypeLike

from lnm_deploy.errors import NumericError, UnsupportedError
from lnm_deploy.ir import (
    Affine,
    AvgPool2d,
    Conv2d,
    Flatten,
    Graph,
    Input,
    Neuron,
    Node,
    Output,
    Scale,
    Schedule,
    SumPool2d,
    Threshold,
)
from lnm_deploy.ir.nodes import _Pool2d

Array = np.ndarray


@dataclass
class RunResult:
    """What a run returns; every array is (batch, timesteps, *shape).

    ``output``: the Output node's values. ``spikes``: every spiking node's spikes (Neuron with a
    threshold, Threshold), always recorded. ``states``: per Neuron node ``{"v": membrane after
    reset, "v_pre": membrane before the spike test, "c": synaptic current}`` (``c`` only for nodes
    with a synapse), only with ``record=True``. ``values``: the output of each node named in
    ``run_float``'s ``keep_outputs``; ``inputs``: the summed input (what its step receives) of each
    node named in ``keep_inputs`` (both empty unless asked for).
    """

    output: Array
    spikes: dict[str, Array] = field(default_factory=dict)
    states: dict[str, dict[str, Array]] = field(default_factory=dict)
    values: dict[str, Array] = field(default_factory=dict)
    inputs: dict[str, Array] = field(default_factory=dict)


def horner(poly: Array, v: Array) -> Array:
    """``P(v) = (...(poly[d] v + poly[d-1]) v + ...) v + poly[0]``; poly (d+1, *shape)."""
    p = np.broadcast_to(poly[-1], v.shape).astype(v.dtype, copy=True)
    for k in range(poly.shape[0] - 2, -1, -1):
        p = p * v + poly[k]
    return p


def conv2d(x: Array, w: Array, bias: Array | None, stride: tuple[int, int], padding: tuple[int, int],
           dilation: tuple[int, int], groups: int) -> Array:
    """``torch.nn.functional.conv2d`` semantics in numpy; x (B, C_in, H, W)."""
    if any(padding):
        x = np.pad(x, ((0, 0), (0, 0), (padding[0], padding[0]), (padding[1], padding[1])))
    cout, cin_g, kh, kw = w.shape
    win = sliding_window_view(x, (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1), axis=(2, 3))  # type: ignore[call-overload]
    win = win[:, :, :: stride[0], :: stride[1], :: dilation[0], :: dilation[1]]  # B,C,Ho,Wo,kh,kw
    outs = []
    cout_g = cout // groups
    for g in range(groups):
        xs = win[:, g * cin_g : (g + 1) * cin_g]
        ws = w[g * cout_g : (g + 1) * cout_g]
        outs.append(np.einsum("bchwij,ocij->bohw", xs, ws, optimize=True))
    y = outs[0] if groups == 1 else np.concatenate(outs, axis=1)
    if bias is not None:
        y = y + bias[None, :, None, None]
    return y


def pool2d(x: Array, node: _Pool2d, average: bool) -> Array:
    """Sum (or mean, zero padding counted) over windows; x (B, C, H, W)."""
    ph, pw = node.padding
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    assert node.stride is not None
    win = sliding_window_view(x, node.kernel_size, axis=(2, 3))[:, :, :: node.stride[0], :: node.stride[1]]  # type: ignore[call-overload]
    y = win.sum(axis=(-2, -1))
    if average:
        y = y / float(node.kernel_size[0] * node.kernel_size[1])
    return y


Step = Callable[[Array], Array]


class _NeuronState:
    """Per-run state and step function of one Neuron node."""

    def __init__(self, node: Neuron, batch: int, dtype: DTypeLike) -> None:
        self.node = node
        self.v = np.zeros((batch, *node.shape), dtype=dtype)
        self.c = np.zeros((batch, *node.shape), dtype=dtype) if node.syn_decay is not None else None
        self.poly = node.poly.astype(dtype)

        def cast(a: Array | None) -> Array | None:
            return None if a is None else a.astype(dtype)

        self.v_th, self.v_reset = cast(node.v_th), cast(node.v_reset)
        self.in_gain, self.syn_decay, self.syn_gain = cast(node.in_gain), cast(node.syn_decay), cast(node.syn_gain)
        self.s: Array | None = None
        self.v_pre = self.v

    def __call__(self, x: Array) -> Array:
        if self.c is not None:
            self.c = self.syn_decay * self.c + self.syn_gain * x
            cur = self.c
        else:
            cur = x
        v_pre = horner(self.poly, self.v) + self.in_gain * cur
        self.v_pre = v_pre
        if self.v_th is None:
            self.v = v_pre
            return v_pre
        s = v_pre > self.v_th
        if self.node.reset == "value":
            self.v = np.where(s, self.node.v_reset.astype(v_pre.dtype), v_pre)
        else:
            self.v = np.where(s, v_pre - self.v_th, v_pre)
        self.s = s
        return s.astype(v_pre.dtype)


def stateless_step(name: str, node: Node, dtype: DTypeLike) -> Step:
    if isinstance(node, (Input, Output)):
        return lambda x: x
    if isinstance(node, Affine):
        w, b = node.weight.astype(dtype), None if node.bias is None else node.bias.astype(dtype)
        return (lambda x: x @ w.T) if b is None else (lambda x: x @ w.T + b)
    if isinstance(node, Scale):
        sc = node.scale.astype(dtype)
        return lambda x: x * sc
    if isinstance(node, Conv2d):
        w = node.weight.astype(dtype)
        b = None if node.bias is None else node.bias.astype(dtype)
        return lambda x: conv2d(x, w, b, node.stride, node.padding, node.dilation, node.groups)
    if isinstance(node, SumPool2d):
        return lambda x: pool2d(x, node, average=False)
    if isinstance(node, AvgPool2d):
        return lambda x: pool2d(x, node, average=True)
    if isinstance(node, Threshold):
        th = node.v_th.astype(dtype)
        return lambda x: (x > th).astype(dtype)
    if isinstance(node, Flatten):
        def flat(x: Array, _n: Flatten = node) -> Array:
            n = x.ndim - 1
            s, e = _n.start_dim % n, _n.end_dim % n
            return x.reshape(*x.shape[: 1 + s], -1, *x.shape[2 + e :])
        return flat
    raise UnsupportedError(f"the float executor has no implementation for {type(node).__name__}", node=name)


def initial_values(graph: Graph, sched: Schedule, steps_fn: dict[str, Step], batch: int,
                    dtype: DTypeLike) -> dict[str, Array]:
    """What back edges deliver at t = 0: every node's output at a virtual step t = -1 in which the
    input is zero and every neuron shows its initial output (no spike, v = 0). So a recurrent
    Affine contributes its bias from the first step on, as in snnTorch and as a bias folded into
    the neuron does on a chip."""
    vals: dict[str, Array] = {}
    for name in sched.order:
        shape = (batch, *sched.shapes[name])
        if name == sched.input_node or isinstance(graph.nodes[name], Neuron):
            vals[name] = np.zeros(shape, dtype=dtype)
            continue
        total = np.zeros((batch, *sched.shapes[next(s for s, d in sched.inputs[name] if not d)]), dtype=dtype)
        for src, delayed in sched.inputs[name]:
            if not delayed:
                total = total + vals[src]
        vals[name] = steps_fn[name](total)
    return vals


def run_float(graph: Graph, x: Array, *, record: bool = False, dtype: DTypeLike = np.float64,
              progress: bool = False, keep_outputs: Collection[str] = (),
              keep_inputs: Collection[str] = ()) -> RunResult:
    """Run ``graph`` on ``x`` shaped (batch, timesteps, *input_shape); see ``RunResult``.

    ``keep_outputs`` / ``keep_inputs``: nodes whose per-step output / summed input is kept in
    ``RunResult.values`` / ``RunResult.inputs`` (batch, timesteps, *shape) (what the calibration
    statistics read: the values the run itself computed)."""
    sched = graph.schedule()
    from lnm_deploy import validate

    x = validate.values(x, tuple(sched.shapes[sched.input_node]), "input")
    batch, steps = x.shape[:2]
    x = x.astype(dtype, copy=False)

    neurons: dict[str, _NeuronState] = {}
    steps_fn: dict[str, Step] = {}
    for name in sched.order:
        node = graph.nodes[name]
        if isinstance(node, Neuron):
            neurons[name] = _NeuronState(node, batch, dtype)
            steps_fn[name] = neurons[name]
        else:
            steps_fn[name] = stateless_step(name, node, dtype)

    spiking = [n for n, node in ((n, graph.nodes[n]) for n in sched.order)
               if isinstance(node, Threshold) or (isinstance(node, Neuron) and node.spiking)]
    spikes = {n: np.zeros((batch, steps, *sched.shapes[n]), dtype=np.uint8) for n in spiking}
    states: dict[str, dict[str, Array]] = {}
    if record:
        for n, st in neurons.items():
            states[n] = {"v": np.zeros((batch, steps, *st.node.shape), dtype=dtype),
                         "v_pre": np.zeros((batch, steps, *st.node.shape), dtype=dtype)}
            if st.c is not None:
                states[n]["c"] = np.zeros((batch, steps, *st.node.shape), dtype=dtype)
    output = np.zeros((batch, steps, *sched.shapes[sched.output_node]), dtype=dtype)
    values: dict[str, Array] = {}
    inputs: dict[str, Array] = {}

    prev = initial_values(graph, sched, steps_fn, batch, dtype)
    it = range(steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="float", unit="step", leave=False)
    for t in it:
        cur: dict[str, Array] = {}
        for name in sched.order:
            if name == sched.input_node:
                val = x[:, t]
            else:
                total: Array | None = None
                for src, delayed in sched.inputs[name]:
                    term = prev[src] if delayed else cur[src]
                    total = term if total is None else total + term
                assert total is not None
                val = total
                if name in keep_inputs:
                    if name not in inputs:
                        inputs[name] = np.empty((batch, steps, *val.shape[1:]), dtype=val.dtype)
                    inputs[name][:, t] = val
            with np.errstate(over="ignore", invalid="ignore"):
                cur[name] = steps_fn[name](val)
            if name in neurons and not np.all(np.isfinite(neurons[name].v)):
                raise NumericError(
                    f"membrane potential diverged (inf/NaN) at step {t}: the dynamics are unstable "
                    "over the range this input reaches",
                    node=name,
                )
        for n in keep_outputs:
            if n not in values:
                values[n] = np.empty((batch, steps, *cur[n].shape[1:]), dtype=cur[n].dtype)
            values[n][:, t] = cur[n]
        for n in spiking:
            spikes[n][:, t] = cur[n]
        if record:
            for n, st in neurons.items():
                states[n]["v"][:, t] = st.v
                states[n]["v_pre"][:, t] = st.v_pre
                if st.c is not None:
                    states[n]["c"][:, t] = st.c
        output[:, t] = cur[sched.output_node]
        prev = cur
    return RunResult(output=output, spikes=spikes, states=states, values=values, inputs=inputs)
