"""The registry of integer primitives: one definition per ``FxNode`` kind.

A ``Primitive`` ties together what the toolchain knows about one kind of integer node:

* ``node_type``: the ``FxNode`` class (parameters, structural validation, ranges);
* ``spec``: the dataclass of its section in a target file (``targets/*.toml``: the section
  ``[<kind>]``, whose keys are the dataclass's fields), or ``None`` for a primitive without
  parameters (its section is empty: ``[flatten]``). The class validates a loaded section against
  the node class's limits (``check``) and describes it in one line (``summary``);
* ``implicit``: offered by every target without a section (the graph's ``input`` and ``output``);
  ``missing_hint``: what to do when a target does not offer it;
* ``design_rule(name, node, target)``: whether the node fits a target that offers the primitive
  (raises ``GraphError`` for a value outside the target's limits, ``UnsupportedError`` for what
  the target does not offer); ``lnm_deploy.targets.check_graph`` refuses a node whose primitive
  the target does not offer before the rule runs;
* ``bounds``: the static bound analysis (``lnm_deploy.fixedpoint.contract``): for a synapse
  ``bounds(node) -> SynapseBounds``; for a neuron ``bounds(node, input_bound)``;
* ``params``/``step``: for a neuron, the contract step (``contract.lif_step``/``poly_step``)
  and the constructor of its parameters from a node;
* ``output_state``: for a non-spiking neuron (a readout, ``lnm_deploy.li_readout``), the state
  its layer outputs instead of spikes.

Backends register their own implementations per kind (fxsim's runners, the ONNX lowerings, the
Lava builders) and look kinds up here; ``primitive(kind)`` raises ``UnsupportedError`` listing the
known kinds, so a new kind without a definition fails loudly everywhere instead of being skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lnm_deploy.errors import GraphError, UnsupportedError, UserInputError
from lnm_deploy.fixedpoint import contract
from lnm_deploy.fixedpoint.arith import OVERFLOWS, ROUNDINGS
from lnm_deploy.fixedpoint.nodes import (
    FAN_IN,
    MAX_PAYLOAD,
    SIGN_MODES,
    FxConv2d,
    FxDense,
    FxFlatten,
    FxInput,
    FxLIF,
    FxNeuron,
    FxNode,
    FxOutput,
    FxPoly,
    Range,
    dense_weight_grid,
)

if TYPE_CHECKING:
    from lnm_deploy.fixedpoint.graph import FxGraph
    from lnm_deploy.ir import Schedule
    from lnm_deploy.targets.spec import Target

DesignRule = Callable[[str, Any, "Target"], None]


@dataclass(frozen=True)
class Primitive:
    """One integer node kind (see the module docstring)."""

    kind: str
    node_type: type[FxNode]
    spec: type | None
    design_rule: DesignRule | None
    bounds: Callable[..., Any] | None = None
    params: Callable[[Any], Any] | None = None
    step: Callable[..., Any] | None = None
    implicit: bool = False
    #: What to do when a target does not offer the primitive (appended to the refusal).
    missing_hint: str = ""
    #: A non-spiking neuron (a readout): the state its layer outputs in place of spikes (its
    #: contract step's spikes are all 0, and backends leave it out of ``RunResult.spikes``); an
    #: Output reading it repeats that state (int64). None for a spiking neuron and other roles.
    output_state: str | None = None

    @property
    def role(self) -> str:
        return self.node_type.role

    @property
    def spec_section(self) -> str | None:
        """The target-file section of a primitive with parameters (its kind), else None."""
        return self.kind if self.spec is not None else None


_REGISTRY: dict[str, Primitive] = {}


def register(p: Primitive) -> Primitive:
    """Add ``p`` to the registry (its ``kind`` must be the node class's ``kind`` and new)."""
    if p.kind != p.node_type.kind:
        raise ValueError(f"primitive kind {p.kind!r} differs from {p.node_type.__name__}.kind")
    if p.kind in _REGISTRY:
        raise ValueError(f"primitive kind {p.kind!r} is registered twice")
    if p.implicit and p.spec is not None:
        raise ValueError(f"primitive kind {p.kind!r} is offered implicitly and cannot have a target section")
    _REGISTRY[p.kind] = p
    return p


def unregister(kind: str) -> None:
    """Remove ``kind`` from the registry (for a primitive registered by a test or a plugin)."""
    _REGISTRY.pop(kind, None)


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


# ------------------------------------------------------------------ target sections (schemas)


@dataclass(frozen=True)
class SpecCheck:
    """Validation of one loaded target section: every method raises ``UserInputError`` naming the
    file and the key (``<section>.<key>``) and the allowed values."""

    file: Path
    section: str

    def _key(self, key: str) -> str:
        return f"{self.file}: key '{self.section}.{key}'"

    def width(self, key: str, value: int, r: Range) -> None:
        """``value`` (a width, a count) lies in ``r``."""
        if not r[0] <= value <= r[1]:
            raise UserInputError(f"{self._key(key)} = {value} is out of range [{r[0]}, {r[1]}]")

    def within(self, key: str, value: Range, r: Range) -> None:
        """The declared range ``value`` lies inside ``r``."""
        if value[0] < r[0] or value[1] > r[1]:
            raise UserInputError(f"{self._key(key)} = [{value[0]}, {value[1]}] exceeds [{r[0]}, {r[1]}]")

    def member(self, key: str, value: str | tuple[str, ...], allowed: tuple[str, ...]) -> None:
        """``value`` (or each of a list) is one of ``allowed``."""
        for v in (value,) if isinstance(value, str) else value:
            if v not in allowed:
                raise UserInputError(f"{self._key(key)} has {v!r}; allowed: {list(allowed)}")


@dataclass(frozen=True)
class DenseSpec:
    """``[dense]``: Lava Dense; weights are clipped to 8 bits then LSB-truncated to
    ``num_weight_bits`` (``FxDense``). ``weight_bits`` is the widest weight mantissa the target
    stores (1..8), the width the quantizer rounds to: it must equal ``num_weight_bits[1]``."""

    weight_bits: int
    num_weight_bits: Range
    weight_exp: Range
    sign_modes: tuple[str, ...]
    out_bits: int
    max_fan_in: int

    def check(self, c: SpecCheck) -> None:
        lim = FxDense.limits()
        c.width("weight_bits", self.weight_bits, lim["num_weight_bits"])
        c.within("num_weight_bits", self.num_weight_bits, (lim["num_weight_bits"][0], self.weight_bits))
        if self.num_weight_bits[1] != self.weight_bits:
            raise UserInputError(f"{c.file}: key '{c.section}.num_weight_bits' = {list(self.num_weight_bits)} "
                                 f"must end at '{c.section}.weight_bits' = {self.weight_bits} (the width the "
                                 "quantizer rounds dense weights to)")
        c.within("weight_exp", self.weight_exp, lim["weight_exp"])
        c.member("sign_modes", self.sign_modes, SIGN_MODES)
        c.width("out_bits", self.out_bits, lim["out_bits"])
        c.width("max_fan_in", self.max_fan_in, FAN_IN)

    def summary(self) -> str:
        return f"dense {self.weight_bits}-bit weights, exp {self.weight_exp[0]}..{self.weight_exp[1]}"


@dataclass(frozen=True)
class ConvSpec:
    """``[conv2d]``: Lava Conv; weights used as given, output wraps to ``out_bits`` (``FxConv2d``)."""

    weight: Range
    weight_exp: Range
    out_bits: int
    max_fan_in: int

    def check(self, c: SpecCheck) -> None:
        lim = FxConv2d.limits()
        c.within("weight", self.weight, lim["weight"])
        c.within("weight_exp", self.weight_exp, lim["weight_exp"])
        c.width("out_bits", self.out_bits, lim["out_bits"])
        c.width("max_fan_in", self.max_fan_in, FAN_IN)

    def summary(self) -> str:
        return f"conv (weights {self.weight[0]}..{self.weight[1]})"


@dataclass(frozen=True)
class LIFSpec:
    """``[lif]``: the stock Loihi LIF (``FxLIF``, ``docs/fixed-point.md`` section 4). Its rules
    (``u_overflow``, ``v_overflow``, ``decay_rounding``) are fixed: ``FxLIF.U_OVERFLOW`` etc."""

    state_bits: int
    decay_bits: int
    vth_shift: int
    act_shift: int
    du: Range
    dv: Range
    vth: Range
    bias_mant: Range
    bias_exp: Range
    u_overflow: str
    v_overflow: str
    decay_rounding: str

    def check(self, c: SpecCheck) -> None:
        lim = FxLIF.limits(self.decay_bits, self.vth_shift)
        for key in ("state_bits", "decay_bits", "vth_shift", "act_shift"):
            c.width(key, getattr(self, key), lim[key])
        for key in ("du", "dv", "vth", "bias_mant", "bias_exp"):
            c.within(key, getattr(self, key), lim[key])
        check_lif_rules(c, self)

    def summary(self) -> str:
        return f"LIF ({self.state_bits}-bit state, {self.decay_bits}-bit decays)"


def check_lif_rules(c: SpecCheck, spec: Any) -> None:
    """The stock LIF's fixed rules, which a section holding them (``[lif]``, ``[li_readout]``) must
    state as they are: fxsim, ONNX and Lava implement exactly these (docs/fixed-point.md 4.2)."""
    c.member("u_overflow", spec.u_overflow, (FxLIF.U_OVERFLOW,))
    c.member("v_overflow", spec.v_overflow, (FxLIF.V_OVERFLOW,))
    c.member("decay_rounding", spec.decay_rounding, (FxLIF.DECAY_ROUNDING,))


@dataclass(frozen=True)
class PolySpec:
    """``[poly]``: the programmable polynomial neuron (``FxPoly``, section 5).

    ``c_bias``: the range of the current-bias register (``FxPoly.c_bias``, state LSBs);
    optional in a target file, ``(0, 0)`` (the default) for a neuron without one.
    ``max_spike_payload``: the largest graded spike count a layer may send (section 5.2), 1..255
    (``MAX_PAYLOAD``: spike arrays are uint8 everywhere); 1 = binary spikes only. Optional in a
    file (default 1: the files and artifacts written before it existed)."""

    max_degree: int
    state_bits: int
    acc_bits: int
    coef_bits: int
    decay_bits: int
    shift: Range
    in_shift: Range
    rounding: tuple[str, ...]
    overflow: tuple[str, ...]
    reset: tuple[str, ...]
    synapse: bool
    c_bias: Range = field(default=(0, 0), kw_only=True)
    max_spike_payload: int = field(default=1, kw_only=True)

    def check(self, c: SpecCheck) -> None:
        c.width("max_spike_payload", self.max_spike_payload, (1, MAX_PAYLOAD))
        lim = FxPoly.limits(self.state_bits, self.acc_bits)
        c.within("c_bias", self.c_bias, lim["c_bias"])
        c.width("max_degree", self.max_degree, lim["degree"])
        for key in ("state_bits", "acc_bits", "coef_bits", "decay_bits"):
            c.width(key, getattr(self, key), lim[key])
        c.within("shift", self.shift, lim["shifts"])
        c.within("in_shift", self.in_shift, lim["in_shift"])
        c.member("rounding", self.rounding, ROUNDINGS)
        c.member("overflow", self.overflow, OVERFLOWS)
        c.member("reset", self.reset, FxPoly.RESETS)

    def summary(self) -> str:
        return (f"polynomial neuron deg<={self.max_degree} ({self.state_bits}-bit state, "
                f"{self.acc_bits}-bit Horner register, {self.coef_bits}-bit coefficients)")


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
    d: DenseSpec = t.spec("dense")
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
    s: ConvSpec = t.spec("conv2d")
    _in(name, "weight", n.weight, s.weight, t.name)
    _in(name, "weight_exp", n.weight_exp, s.weight_exp, t.name)
    _eq(name, "out_bits", n.out_bits, s.out_bits, t.name)
    fan_in = int(np.prod(n.weight.shape[1:]))
    if fan_in > s.max_fan_in:
        raise GraphError(f"fan-in {fan_in} exceeds target '{t.name}' max_fan_in {s.max_fan_in}", node=name)


def check_flatten(name: str, n: FxFlatten, t: Target) -> None:
    """A flatten has no parameters: a target that offers it (``[flatten]``) takes every one."""


def check_lif(name: str, n: FxLIF, t: Target) -> None:
    s: LIFSpec = t.spec("lif")
    for what in ("state_bits", "decay_bits", "vth_shift", "act_shift"):
        _eq(name, what, getattr(n, what), getattr(s, what), t.name)
    _in(name, "du", n.du, s.du, t.name)
    _in(name, "dv", n.dv, s.dv, t.name)
    _in(name, "vth", n.vth, s.vth, t.name)
    _in(name, "bias_mant", n.bias_mant, s.bias_mant, t.name)
    _in(name, "bias_exp", n.bias_exp, s.bias_exp, t.name)


def check_poly(name: str, n: FxPoly, t: Target) -> None:
    s: PolySpec = t.spec("poly")
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
    if n.c_bias is not None and np.any(n.c_bias != 0) and tuple(s.c_bias) == (0, 0):
        raise UnsupportedError(f"target '{t.name}' has no current-bias register (its c_bias range is [0, 0]); "
                               "fold the bias into coef[0] at its steady state (calibrate does)", node=name)
    if n.c_bias is not None:
        _in(name, "c_bias", n.c_bias, s.c_bias, t.name)
    if n.max_payload > s.max_spike_payload:
        raise GraphError(f"max_payload {n.max_payload} exceeds target '{t.name}' max_spike_payload "
                         f"{s.max_spike_payload}: recalibrate for this target (calibrate caps graded spikes at "
                         "its max_spike_payload) or choose a target with a larger payload", node=name)


# ------------------------------------------------------------------------------- the registry

INPUT = register(Primitive("input", FxInput, None, check_input, implicit=True))
OUTPUT = register(Primitive("output", FxOutput, None, check_output, implicit=True))
FLATTEN = register(Primitive("flatten", FxFlatten, None, check_flatten))
DENSE = register(Primitive("dense", FxDense, DenseSpec, check_dense, bounds=contract.dense_bounds))
CONV2D = register(Primitive("conv2d", FxConv2d, ConvSpec, check_conv, bounds=contract.conv_bounds))
LIF = register(Primitive("lif", FxLIF, LIFSpec, check_lif, bounds=contract.lif_bounds,
                         params=contract.LIFParams.of, step=contract.lif_step))
POLY = register(Primitive("poly", FxPoly, PolySpec, check_poly, bounds=contract.poly_bounds,
                          params=contract.PolyParams.of, step=contract.poly_step,
                          missing_hint="fit the polynomial to its LIF (calibrate for this target does)"))


def synapse_bounds(node: FxNode, name: str | None = None, payload: int = 1) -> contract.SynapseBounds:
    """The registered ``SynapseBounds`` of a synapse node (``UnsupportedError`` for other roles)
    on input spikes ``0 <= s <= payload`` (1: binary; a graded source: ``input_payloads``)."""
    p = primitive_of(node, name)
    if p.role != "synapse" or p.bounds is None:
        raise UnsupportedError(f"a {p.kind} node is not a synapse", node=name)
    out: contract.SynapseBounds = p.bounds(node) if payload == 1 else p.bounds(node, payload)
    return out


def input_payloads(graph: FxGraph, sched: Schedule | None = None) -> dict[str, int]:
    """For every synapse of ``graph`` (an ``FxGraph``), the largest value its input spikes carry
    (``docs/fixed-point.md`` 5.2): 1 where it reads the input or a binary layer, the source's
    ``spike_payload()`` (a graded ``FxPoly``'s ``max_payload``) where it reads a graded layer,
    through any reshape. What every bound on the synapse's accumulator multiplies by.
    ``sched``: ``graph.schedule()`` when the caller has it already (it validates every node)."""
    if sched is None:
        sched = graph.schedule()
    carried: dict[str, int] = {}
    out: dict[str, int] = {}
    for name in sched.order:
        node = graph.nodes[name]
        ins = sched.inputs[name]
        if isinstance(node, FxNeuron):  # role "neuron"
            carried[name] = int(node.spike_payload())
        elif node.role == "reshape":
            carried[name] = carried[ins[0][0]]
        elif node.role == "synapse":
            out[name] = carried.get(ins[0][0], 1)
        else:
            carried[name] = 1
    return out


def output_state(node: FxNode, name: str | None = None) -> str | None:
    """The state a non-spiking neuron layer outputs in place of spikes (``Primitive.output_state``),
    None for a spiking neuron or any other role (``UnsupportedError`` for an unknown kind)."""
    return primitive_of(node, name).output_state
