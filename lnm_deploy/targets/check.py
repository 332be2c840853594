"""Design-rule checks of an ``FxGraph`` against a ``Target``: small named rules, one driver.

Each rule raises ``GraphError`` (a value outside the target's limits) or ``UnsupportedError`` (a
node or topology the target does not offer), naming the node, the parameter and the limit.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from lnm_deploy.errors import GraphError, UnsupportedError
from lnm_deploy.fixedpoint import (
    FxConv2d,
    FxDense,
    FxFlatten,
    FxGraph,
    FxLIF,
    FxNode,
    FxPoly,
    FxSumPool2d,
)
from lnm_deploy.targets.spec import Range, Target


def _in(node: str, what: str, values: np.ndarray | int, r: Range, target: str) -> None:
    a = np.asarray(values)
    if a.size and (a.min() < r[0] or a.max() > r[1]):
        raise GraphError(
            f"{what} in [{a.min()}, {a.max()}] exceeds target '{target}' range [{r[0]}, {r[1]}]", node=node
        )


def _eq(node: str, what: str, value: object, expected: object, target: str) -> None:
    if value != expected:
        raise GraphError(f"{what} is {value!r}; target '{target}' has {expected!r}", node=node)


def _member(node: str, what: str, value: str, allowed: tuple[str, ...], target: str) -> None:
    if value not in allowed:
        raise GraphError(f"{what} {value!r} not offered by target '{target}' (offers {list(allowed)})", node=node)


def check_dense(name: str, n: FxDense, t: Target) -> None:
    d = t.dense
    _in(name, "num_weight_bits", n.num_weight_bits, d.num_weight_bits, t.name)
    _in(name, "weight_exp", n.weight_exp, d.weight_exp, t.name)
    _member(name, "sign_mode", n.sign_mode, d.sign_modes, t.name)
    _eq(name, "out_bits", n.out_bits, d.out_bits, t.name)
    if n.weight.shape[1] > d.max_fan_in:
        raise GraphError(f"fan-in {n.weight.shape[1]} exceeds target '{t.name}' max_fan_in {d.max_fan_in}", node=name)
    eff = n.effective_weight()
    if not np.array_equal(eff, n.weight):
        idx = tuple(int(i) for i in np.argwhere(eff != n.weight)[0])
        from lnm_deploy.fixedpoint import dense_weight_grid

        step, lo, hi = dense_weight_grid(n.num_weight_bits, n.sign_mode)
        raise GraphError(
            f"weight {int(n.weight[idx])} at {idx} would become {int(eff[idx])} on the chip; "
            f"{n.sign_mode} {n.num_weight_bits}-bit weights are multiples of {step} in [{lo}, {hi}]",
            node=name,
        )


def check_conv(name: str, n: FxConv2d, t: Target) -> None:
    if t.conv is None:
        raise UnsupportedError(f"target '{t.name}' has no convolution", node=name)
    _in(name, "weight", n.weight, t.conv.weight, t.name)
    _in(name, "weight_exp", n.weight_exp, t.conv.weight_exp, t.name)
    _eq(name, "out_bits", n.out_bits, t.conv.out_bits, t.name)
    fan_in = int(np.prod(n.weight.shape[1:]))
    if fan_in > t.conv.max_fan_in:
        raise GraphError(f"fan-in {fan_in} exceeds target '{t.name}' max_fan_in {t.conv.max_fan_in}", node=name)


def check_sumpool(name: str, n: FxSumPool2d, t: Target) -> None:
    if t.sumpool is None:
        raise UnsupportedError(f"target '{t.name}' has no sum pooling", node=name)
    _eq(name, "out_bits", n.out_bits, t.sumpool.out_bits, t.name)
    window = n.kernel_size[0] * n.kernel_size[1]
    if window > t.sumpool.max_window:
        raise GraphError(f"window {window} exceeds target '{t.name}' max_window {t.sumpool.max_window}", node=name)


def check_flatten(name: str, n: FxFlatten, t: Target) -> None:
    if not t.info.flatten:
        raise UnsupportedError(f"target '{t.name}' cannot flatten", node=name)


def check_lif(name: str, n: FxLIF, t: Target) -> None:
    s = t.lif
    if s is None:
        raise UnsupportedError(f"target '{t.name}' has no stock LIF neuron", node=name)
    for what in ("state_bits", "decay_bits", "vth_shift", "act_shift"):
        _eq(name, what, getattr(n, what), getattr(s, what), t.name)
    _in(name, "du", n.du, s.du, t.name)
    _in(name, "dv", n.dv, s.dv, t.name)
    _in(name, "vth", n.vth, s.vth, t.name)
    _in(name, "bias_mant", n.bias_mant, s.bias_mant, t.name)
    _in(name, "bias_exp", n.bias_exp, s.bias_exp, t.name)


def check_poly(name: str, n: FxPoly, t: Target) -> None:
    s = t.poly
    if s is None:
        raise UnsupportedError(
            f"target '{t.name}' has no programmable neuron; fit the polynomial to its LIF", node=name)
    if n.degree > s.max_degree:
        raise GraphError(f"degree {n.degree} exceeds target '{t.name}' max_degree {s.max_degree}", node=name)
    for what in ("state_bits", "acc_bits", "coef_bits", "decay_bits"):
        _eq(name, what, getattr(n, what), getattr(s, what), t.name)
    _in(name, "shifts", np.asarray(n.shifts, dtype=np.int64), s.shift, t.name)
    _in(name, "in_shift", n.in_shift, s.in_shift, t.name)
    _member(name, "rounding", n.rounding, s.rounding, t.name)
    _member(name, "overflow", n.overflow, s.overflow, t.name)
    _member(name, "reset", n.reset, s.reset, t.name)
    if n.has_synapse and not s.synapse:
        raise UnsupportedError(f"target '{t.name}' has no current (synapse) state", node=name)


RULES: dict[type[FxNode], Callable[..., None]] = {
    FxDense: check_dense,
    FxConv2d: check_conv,
    FxSumPool2d: check_sumpool,
    FxFlatten: check_flatten,
    FxLIF: check_lif,
    FxPoly: check_poly,
}


def check_recurrence(graph: FxGraph, t: Target) -> None:
    sched = graph.schedule()
    for name in sched.order:
        for src, delayed in sched.inputs[name]:
            if not delayed:
                continue
            if t.info.recurrence == "none":
                raise UnsupportedError(f"target '{t.name}' has no recurrent connections (edge from '{src}')", node=name)
            if t.info.recurrence == "self":
                origin = sched.inputs[src][0][0]
                if origin != name:
                    raise UnsupportedError(
                        f"target '{t.name}' allows only self-recurrence; '{src}' reads '{origin}'", node=name)


def check_graph(graph: FxGraph, target: Target) -> None:
    """Run every design rule; raise on the first violation (node, parameter and limit named)."""
    graph.schedule()
    for name, node in graph.nodes.items():
        rule = RULES.get(type(node))
        if rule is not None:
            rule(name, node, target)
    check_recurrence(graph, target)
