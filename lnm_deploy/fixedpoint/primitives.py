"""The registry of integer primitives: one definition per ``FxNode`` kind.

A ``Primitive`` ties together what the toolchain knows about one kind of integer node:

* ``node_type``: the ``FxNode`` class (parameters, structural validation, ranges);
* ``spec_section``: the section of a target file that describes it (``targets/*.toml``), or
  ``None`` for graph-level nodes governed by ``[target]``;
* ``design_rule(name, node, target)``: whether the node fits a target (raises ``GraphError`` for a
  value outside the target's limits, ``UnsupportedError`` for what the target does not offer);
* ``bounds``: the static bound analysis (``lnm_deploy.fixedpoint.contract``): for a synapse
  ``bounds(node) -> SynapseBounds``; for a neuron ``bounds(node, input_bound)``;
* ``params``/``step``: for a neuron, the contract step (``contract.lif_step``/``poly_step``)
  and the constructor of its parameters from a node.

Backends register their own implementations per kind (fxsim's runners, the ONNX lowerings, the
Lava builders) and look kinds up here; ``primitive(kind)`` raises ``UnsupportedError`` listing the
known kinds, so a new kind without a definition fails loudly everywhere instead of being skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from lnm_deploy.errors import GraphError, UnsupportedError
from lnm_deploy.fixedpoint import contract
from lnm_deploy.fixedpoint.nodes import (
    FxConv2d,
    FxDense,
    FxFlatten,
    FxInput,
    FxLIF,
    FxNode,
    FxOutput,
    FxPoly,
    FxSumPool2d,
    dense_weight_grid,
)

if TYPE_CHECKING:
    from lnm_deploy.targets.spec import Range, Target

DesignRule = Callable[[str, Any, "Target"], None]


@dataclass(frozen=True)
class Primitive:
    """One integer node kind (see the module docstring)."""

    kind: str
    node_type: type[FxNode]
    spec_section: str | None
    design_rule: DesignRule | None
    bounds: Callable[..., Any] | None = None
    params: Callable[[Any], Any] | None = None
    step: Callable[..., Any] | None = None

    @property
    def role(self) -> str:
        return self.node_type.role


_REGISTRY: dict[str, Primitive] = {}


def register(p: Primitive) -> Primitive:
    """Add ``p`` to the registry (its ``kind`` must be the node class's ``kind`` and new)."""
    if p.kind != p.node_type.kind:
        raise ValueError(f"primitive kind {p.kind!r} differs from {p.node_type.__name__}.kind")
    if p.kind in _REGISTRY:
        raise ValueError(f"primitive kind {p.kind!r} is registered twice")
    _REGISTRY[p.kind] = p
    return p


def primitives() -> dict[str, Primitive]:
    """Every registered primitive by kind (a copy)."""
    return dict(_REGISTRY)


def primitive(kind: str, node: str | None = None) -> Primitive:
    """The primitive of ``kind``; ``UnsupportedError`` naming ``node`` and listing the known kinds."""
    p = _REGISTRY.get(kind)
    if p is None:
        raise UnsupportedError(f"unknown integer primitive kind {kind!r}; known: {sorted(_REGISTRY)}", node=node)
    return p


def primitive_of(node: FxNode, name: str | None = None) -> Primitive:
    """The primitive of ``node`` (by its class's ``kind``); the class must be the registered one or
    a subclass of it."""
    p = primitive(node.kind, name)
    if not isinstance(node, p.node_type):
        raise UnsupportedError(f"{type(node).__name__} claims kind {node.kind!r} of "
                               f"{p.node_type.__name__} without deriving from it", node=name)
    return p


def lookup(table: dict[str, Any], kind: str, what: str, node: str | None = None) -> Any:
    """``table[kind]`` of a backend's per-kind table, or ``UnsupportedError`` naming ``what`` (for
    example "fxsim synapse"), the node, and the kinds the table knows."""
    try:
        return table[kind]
    except KeyError:
        raise UnsupportedError(f"{what} has no implementation for kind {kind!r}; known: {sorted(table)}",
                               node=node) from None


# ----------------------------------------------------------------------------- design rules


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


def check_input(name: str, n: FxInput, t: Target) -> None:
    """Every target reads binary spikes (``[target] input = "binary"``, checked on load)."""


def check_output(name: str, n: FxOutput, t: Target) -> None:
    """The output repeats a neuron layer's spikes: nothing to check against a target."""


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


# ------------------------------------------------------------------------------- the registry

INPUT = register(Primitive("input", FxInput, None, check_input))
OUTPUT = register(Primitive("output", FxOutput, None, check_output))
FLATTEN = register(Primitive("flatten", FxFlatten, None, check_flatten))
DENSE = register(Primitive("dense", FxDense, "dense", check_dense, bounds=contract.dense_bounds))
CONV2D = register(Primitive("conv2d", FxConv2d, "conv", check_conv, bounds=contract.conv_bounds))
SUMPOOL2D = register(Primitive("sumpool2d", FxSumPool2d, "sumpool", check_sumpool,
                               bounds=contract.sumpool_bounds))
LIF = register(Primitive("lif", FxLIF, "neurons.lif", check_lif, bounds=contract.lif_bounds,
                         params=contract.LIFParams.of, step=contract.lif_step))
POLY = register(Primitive("poly", FxPoly, "neurons.poly", check_poly, bounds=contract.poly_bounds,
                          params=contract.PolyParams.of, step=contract.poly_step))


def synapse_bounds(node: FxNode, name: str | None = None) -> contract.SynapseBounds:
    """The registered ``SynapseBounds`` of a synapse node (``UnsupportedError`` for other roles)."""
    p = primitive_of(node, name)
    if p.role != "synapse" or p.bounds is None:
        raise UnsupportedError(f"a {p.kind} node is not a synapse", node=name)
    out: contract.SynapseBounds = p.bounds(node)
    return out
