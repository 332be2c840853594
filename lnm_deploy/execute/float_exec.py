"""Float reference executor of the IR (numpy).

It is the bridge between the PyTorch model and fixed point: it runs any IR graph (ours or one
imported from snnTorch / Norse) on batched inputs over time, with the step semantics each node kind
owns (``Node.float_step``, ``lnm_deploy.ir.nodes``) and the time base of ``lnm_deploy.ir.graph``
(zero latency along feed-forward edges, one step along delayed ones). It contains no per-kind code:
what a node computes, which states it keeps and whether it emits spikes are the node's.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import numpy as np
from numpy.typing import DTypeLike

from lnm_deploy.core.results import RunResult
from lnm_deploy.errors import NumericError, UnsupportedError
from lnm_deploy.ir import FloatStep, Graph, Node, Schedule
from lnm_deploy.ir.ops import conv2d, horner, pool2d
from lnm_deploy.progress import progress as progress_bar

__all__ = ["RunResult", "conv2d", "horner", "initial_values", "pool2d", "run_float", "stateless_step"]

Array = np.ndarray
Step = Callable[[Array], Array]


def stateless_step(name: str, node: Node, dtype: DTypeLike) -> Step:
    """The float step of a stateless node (any batch size): ``node.float_step``.

    Raises:
        UnsupportedError: ``node`` keeps state (a Neuron: use ``node.float_step(name, batch, dtype)``)
            or has no float step.
    """
    if node.stateful:
        raise UnsupportedError(f"{node.kind} nodes keep state: their step is node.float_step(name, batch, "
                               "dtype), not a stateless function", node=name)
    return node.float_step(name, 1, dtype)


def initial_values(graph: Graph, sched: Schedule, steps_fn: Mapping[str, Step], batch: int,
                   dtype: DTypeLike) -> dict[str, Array]:
    """What back edges deliver at t = 0: every node's output at a virtual step t = -1 in which the
    input is zero and every stateful node (a neuron) shows its initial output, 0 (no spike, v = 0).
    So a recurrent Affine contributes its bias from the first step on, as in snnTorch and as a bias
    folded into the neuron does on a chip. ``steps_fn`` needs the steps of the stateless nodes."""
    vals: dict[str, Array] = {}
    for name in sched.order:
        shape = (batch, *sched.shapes[name])
        if name == sched.input_node or graph.nodes[name].stateful:
            vals[name] = np.zeros(shape, dtype=dtype)
            continue
        total = np.zeros((batch, *sched.shapes[next(s for s, d in sched.inputs[name] if not d)]), dtype=dtype)
        for src, delayed in sched.inputs[name]:
            if not delayed:
                total = total + vals[src]
        vals[name] = steps_fn[name](total)
    return vals


def spike_dtype(max_count: int | None) -> np.dtype:
    """The record dtype of a layer's spikes: uint8 for binary spikes and counts up to 255, uint16 /
    uint32 for larger counts; an unbounded count (None) is recorded in uint32 (``run_float`` raises
    ``NumericError`` for a step beyond it rather than wrap)."""
    if max_count is None:
        return np.dtype(np.uint32)
    for dt in (np.uint8, np.uint16, np.uint32):
        if max_count <= np.iinfo(dt).max:
            return np.dtype(dt)
    return np.dtype(np.uint32)


def run_float(graph: Graph, x: Array, *, record: bool = False, dtype: DTypeLike = np.float64,
              progress: bool = False, keep_outputs: Collection[str] = (),
              keep_inputs: Collection[str] = ()) -> RunResult:
    """Run ``graph`` on ``x`` shaped (batch, timesteps, *input_shape); see ``RunResult``.

    ``keep_outputs`` / ``keep_inputs``: nodes whose per-step output / summed input is kept in
    ``RunResult.values`` / ``RunResult.inputs`` (batch, timesteps, *shape) (what the calibration
    statistics read: the values the run itself computed).

    Raises:
        UserInputError: ``graph`` is not a float IR ``Graph`` (an ``FxGraph``, an ``Artifact``,
            None...: ``validate.float_graph``), or ``x`` is not (batch, timesteps, *input_shape)
            finite numbers.
        NumericError: a node's state diverged (inf / NaN), naming the node and the step.
        UnsupportedError: a node kind without a float step.
    """
    from lnm_deploy import validate

    validate.float_graph(graph, "run_float")
    sched = graph.schedule()

    keep_inputs, keep_outputs = frozenset(keep_inputs), tuple(dict.fromkeys(keep_outputs))

    x = validate.values(x, tuple(sched.shapes[sched.input_node]), "input")
    batch, steps = x.shape[:2]
    x = x.astype(dtype, copy=False)

    steps_fn: dict[str, FloatStep] = {name: graph.nodes[name].float_step(name, batch, dtype)
                                      for name in sched.order}
    stateful = {n: st for n, st in steps_fn.items() if st.state_names}
    spiking = [n for n in sched.order if graph.nodes[n].emits_spikes]
    # Every row of the records is written by the loop below: no zero-filling.
    spikes = {n: np.empty((batch, steps, *sched.shapes[n]), dtype=spike_dtype(graph.nodes[n].max_spike_count))
              for n in spiking}
    # graded layers whose counts could outgrow their record: checked every step, never wrapped
    unbounded = {n: int(np.iinfo(spikes[n].dtype).max) for n in spiking}
    unbounded = {n: hi for n, hi in unbounded.items() if (graph.nodes[n].max_spike_count or hi + 1) > hi}
    states: dict[str, dict[str, Array]] = {}
    if record:
        states = {n: {k: np.empty((batch, steps, *st.state(k).shape[1:]), dtype=dtype) for k in st.state_names}
                  for n, st in stateful.items()}
    output = np.empty((batch, steps, *sched.shapes[sched.output_node]), dtype=dtype)
    values: dict[str, Array] = {}
    inputs: dict[str, Array] = {}

    # Only delayed edges read the previous step's values (at t = 0, the initial values).
    has_delays = any(delayed for ins in sched.inputs.values() for _, delayed in ins)
    prev = initial_values(graph, sched, steps_fn, batch, dtype) if has_delays else {}
    for t in progress_bar(range(steps), desc="float", unit="step", enabled=progress):
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
            if name in stateful:
                stateful[name].check(name, t)
        for n in keep_outputs:
            if n not in values:
                values[n] = np.empty((batch, steps, *cur[n].shape[1:]), dtype=cur[n].dtype)
            values[n][:, t] = cur[n]
        for n in spiking:
            if n in unbounded and cur[n].size and float(cur[n].max()) > unbounded[n]:
                raise NumericError(f"{float(cur[n].max()):.0f} spikes in one step at step {t}: more than the "
                                   f"{unbounded[n]} a spike record holds (the membrane is far above the "
                                   "threshold; give the layer max_spikes or check the input scale)", node=n)
            spikes[n][:, t] = cur[n]
        if record:
            for n, st in stateful.items():
                for k, rec in states[n].items():
                    rec[:, t] = st.state(k)
        output[:, t] = cur[sched.output_node]
        prev = cur
    return RunResult(output=output, spikes=spikes, states=states, values=values, inputs=inputs)
