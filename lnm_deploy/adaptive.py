"""The adaptive-threshold LNM, defined once: float op, NIR mapping, integer primitive, lowering.

Float semantics (one step, elementwise; ``docs/adaptive.md``). The membrane is the LNM neuron's
(``lnm_deploy.ir.Neuron``: polynomial leak ``P``, input gain, optional synapse, reset); the
threshold is a state ``theta`` that relaxes toward ``theta_0`` and jumps after each spike::

    c[t]     = syn_decay * c[t-1] + syn_gain * x[t]          (with a synapse, else c[t] = x[t])
    v'[t]    = P(v[t-1]) + in_gain * c[t]
    s[t]     = v'[t] > theta[t]
    v[t]     = v_reset (reset "value") or v'[t] - theta[t] (reset "subtract") where s[t], else v'[t]
    theta[t+1] = theta_0 + theta_decay * (theta[t] - theta_0) + theta_step * s[t]
    theta[0] = theta_0

that is ``theta[t] = theta_0 + d_theta (theta[t-1] - theta_0) + theta_step s[t-1]`` with
``d_theta = theta_decay``. ``theta_0`` is the node's ``v_th``; ``theta_decay`` (per step, in
[0, 1]) and ``theta_step`` are per neuron (a layer or channel value broadcast). The state
``theta`` a step leaves (and records) is the threshold of the *next* step. With ``theta_step = 0``
the node is the ``Neuron`` exactly. States: ``v``, ``v_pre``, ``theta`` (and ``c`` with a synapse).

Integer semantics (primitive ``adaptive_poly``, ``docs/adaptive.md``, after ``docs/fixed-point.md`` section 5): the
polynomial neuron's membrane (``contract.poly_step``: steps 1-4 of section 5, its spike test
replaced) plus a threshold register ``theta`` (S bits, on the state grid)::

    v', c  = steps 1-4 of section 5 (the polynomial neuron)
    s      = v' > theta
    v      = v_reset where s (reset "value") or ovf_S(v' - theta) (reset "subtract"), else v'
    theta  = ovf_S(vth + rnd((theta - vth) * (2**D - theta_decay), D) + theta_step * s)

``vth`` is theta_0 (integer), ``theta_decay`` in [0, 2**D] (``d_theta = 1 - theta_decay / 2**D``),
``theta_step`` in [-(2**(S-1) - 1), 2**(S-1) - 1], ``rnd``/``ovf`` the node's rounding and overflow,
D = ``decay_bits``; ``theta_init`` (default ``vth``) is the register before the first step.

What this module registers on import (``lnm_deploy`` imports it): the IR kind
``adaptive_neuron`` (``AdaptiveNeuron``), its NIR writer and exact reader (the NIR node of the
``Neuron`` with the same membrane, plus ``lnm_theta_decay`` / ``lnm_theta_step`` metadata), the
integer primitive ``adaptive_poly`` (``FxAdaptivePoly``, ``AdaptiveParams``/``adaptive_step``,
``adaptive_bounds``, ``AdaptivePolySpec`` = the target section ``[adaptive_poly]``, the design
rule ``check_adaptive``), its ONNX lowering, and the calibration lowering ``ADAPTIVE_LOWERING``
(the polynomial neuron's passes with the threshold register added). fxsim and Lava
(``ContractNeuron``) run ``adaptive_step`` as registered. The torch layer is
``lnm_deploy.model.adaptive.AdaptiveLNM``.

Refractoriness (``refractory_decay`` set): the membrane is not reset; ``r = d_r r`` is tested
against (``s = v' - r > theta``) and jumps by ``2 theta`` at a spike (state ``r``).

On the stock-neuron target (``loihi2-lif``) the same float op lowers onto Lava's own ATRLIF: the
primitive ``atrlif`` (``FxATRLIF``, ``ATRLIFParams``/``atrlif_step``, ``atrlif_bounds``,
``ATRLIFSpec`` = ``[atrlif]``, ``check_atrlif``; ``docs/fixed-point.md`` section 9), its ONNX
lowering ``ATRLIFOnnx`` and ``ATRLIF_LOWERING`` (exact for a degree-1 refractory layer,
``atrlif_exact``; else the LIF fit with its cost reported). The Lava backend runs it as
``lava.proc.atrlif``'s process itself.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numpy.typing import DTypeLike

from lnm_deploy.calibrate.lowering import Lowering, register_lowering
from lnm_deploy.calibrate.neuron_lowerings import (
    encode_bias,
    encode_poly,
    lif_fit,
    membrane_constant,
    neuron_input_gain,
    plan_poly,
    select_poly,
)
from lnm_deploy.errors import GraphError, LNMDeployWarning, NumericError, UnsupportedError
from lnm_deploy.fixedpoint import contract
from lnm_deploy.fixedpoint.arith import correct, overflow, rshift, saturate, trunc_mul_shift, wrap
from lnm_deploy.fixedpoint.nodes import FxNeuron, FxPoly, integral
from lnm_deploy.fixedpoint.primitives import PolySpec, Primitive, SpecCheck, check_poly, register
from lnm_deploy.ir.nodes import Neuron, stats
from lnm_deploy.ir.ops import NeuronStep
from lnm_deploy.nir_io.conventions import as_array
from lnm_deploy.nir_io.read import exact_neuron_fields, warn_if_edited
from lnm_deploy.nir_io.registry import NodeRead, reads_exactly, writes
from lnm_deploy.nir_io.write import neuron_to_nir
from lnm_deploy.onnx_backend import build as onnx_build
from lnm_deploy.targets import Target

if TYPE_CHECKING:
    import nir

    from lnm_deploy.calibrate.passes import (
        EncodedLayer,
        MappedLayer,
        NeuronRange,
        ScalePlan,
        Selection,
        WeightClip,
    )
    from lnm_deploy.fixedpoint import Rounding

Array = np.ndarray
FLOAT_KIND = "adaptive_neuron"
KIND = "adaptive_poly"

# ------------------------------------------------------------------------------ the float op


class AdaptiveStep(NeuronStep):
    """The batched float step (module docstring): the ``NeuronStep`` membrane tested against the
    state ``theta`` (``(batch, *shape)``, starting at ``theta_0``), which it then updates."""

    def __init__(self, node: AdaptiveNeuron, batch: int, dtype: DTypeLike) -> None:
        super().__init__(node.shape, node.poly, node.v_th, node.v_reset, node.reset, node.in_gain,
                         node.syn_decay, node.syn_gain, batch, dtype)
        assert self.v_th is not None
        self.theta0 = self.v_th
        self.theta_decay = node.theta_decay.astype(dtype)
        self.theta_step = node.theta_step.astype(dtype)
        self.theta = np.broadcast_to(self.theta0, (batch, *node.shape)).copy()
        self.state_names = (*self.state_names, "theta")
        self.r_decay = None if node.refractory_decay is None else node.refractory_decay.astype(dtype)
        self.r = None if self.r_decay is None else np.zeros((batch, *node.shape), dtype=dtype)
        if self.r is not None:
            self.state_names = (*self.state_names, "r")

    def __call__(self, x: Array) -> Array:
        if self.r is None:
            self.v_th = self.theta  # the membrane step tests (and subtracts) this step's threshold
            s = super().__call__(x)
        else:  # refractoriness: the membrane is not reset; r decays, is tested against and jumps
            self.v_th = None
            vp = super().__call__(x)  # v = v' (a non-spiking step)
            self.r = self.r_decay * self.r
            s = (vp - self.r > self.theta).astype(vp.dtype)
            self.r = self.r + 2.0 * self.theta * s
        self.theta = self.theta0 + self.theta_decay * (self.theta - self.theta0) + self.theta_step * s
        return s

    def state(self, name: str) -> Array:
        if name == "r" and self.r is not None:
            return self.r
        return self.theta if name == "theta" else super().state(name)


@dataclass(eq=False)
class AdaptiveNeuron(Neuron):
    """The adaptive-threshold LNM population (module docstring). ``v_th`` is ``theta_0`` (required);
    ``theta_decay`` (``d_theta``, per step, in [0, 1]) and ``theta_step`` (membrane units) are
    broadcast to ``shape``; their defaults (0) make a fixed threshold."""

    kind: ClassVar[str] = FLOAT_KIND
    theta_decay: Array = None  # type: ignore[assignment]
    theta_step: Array = None  # type: ignore[assignment]
    refractory_decay: Array | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.refractory_decay is not None:
            self.refractory_decay = np.broadcast_to(np.asarray(self.refractory_decay, dtype=np.float64),
                                                    self.shape).copy()
        self.theta_decay = np.broadcast_to(np.asarray(0.0 if self.theta_decay is None else self.theta_decay,
                                                      dtype=np.float64), self.shape).copy()
        self.theta_step = np.broadcast_to(np.asarray(0.0 if self.theta_step is None else self.theta_step,
                                                     dtype=np.float64), self.shape).copy()

    def validate(self, name: str) -> None:
        super().validate(name)
        if self.v_th is None:
            raise GraphError("an adaptive-threshold neuron needs v_th (theta_0)", node=name)
        if self.threshold != ">" or self.graded or self.v_floor is not None:
            raise UnsupportedError("an adaptive-threshold neuron tests v' > theta and emits one spike per step, "
                                   "with no membrane floor: threshold='>=', max_spikes != 1 and v_floor are not "
                                   "defined for it", node=name)
        if not (np.all(np.isfinite(self.theta_decay)) and np.all(np.isfinite(self.theta_step))):
            raise NumericError("theta_decay and theta_step must be finite", node=name)
        if np.any(self.theta_decay < 0) or np.any(self.theta_decay > 1):
            raise GraphError(f"theta_decay must lie in [0, 1], got [{self.theta_decay.min()}, "
                             f"{self.theta_decay.max()}]", node=name)
        rd = self.refractory_decay
        if rd is not None and not (np.all(np.isfinite(rd)) and np.all(rd >= 0) and np.all(rd <= 1)):
            raise GraphError(f"refractory_decay must lie in [0, 1], got [{rd.min()}, {rd.max()}]", node=name)

    @property
    def refractory(self) -> bool:
        """Whether the node resets through a refractory state ``r`` (``refractory_decay`` set)."""
        return self.refractory_decay is not None

    @property
    def state_names(self) -> tuple[str, ...]:
        """``v``, ``v_pre``, (``c``), ``theta`` (the next step's threshold), (``r`` with
        refractoriness)."""
        return (*super().state_names, "theta", *(("r",) if self.refractory else ()))

    def float_step(self, name: str, batch: int, dtype: DTypeLike) -> AdaptiveStep:
        return AdaptiveStep(self, batch, dtype)

    def describe(self) -> dict[str, Any]:
        p = super().describe()
        p["theta_decay"] = stats(self.theta_decay)
        p["theta_step"] = stats(self.theta_step)
        if self.refractory_decay is not None:
            p["refractory_decay"] = stats(self.refractory_decay)
        return p


# ------------------------------------------------------------------------------- NIR mapping


@writes(AdaptiveNeuron)
def _write(name: str, node: AdaptiveNeuron, in_shape: Any, out_shape: Any, meta: dict[str, Any]) -> nir.NIRNode:
    """The NIR node of the ``Neuron`` with the same membrane (a LIF approximation for other tools),
    ``lnm_kind`` = ``adaptive_neuron`` and the threshold parameters in ``lnm_theta_*``."""
    out = neuron_to_nir(name, node)
    out.metadata["lnm_kind"] = FLOAT_KIND
    out.metadata["lnm_theta_decay"] = node.theta_decay.copy()
    out.metadata["lnm_theta_step"] = node.theta_step.copy()
    if node.refractory_decay is not None:
        out.metadata["lnm_refractory_decay"] = node.refractory_decay.copy()
    return out


def _meta(r: NodeRead, key: str) -> Array:
    if key not in r.meta:
        raise GraphError(f"lnm-deploy metadata is incomplete: '{key}' is missing", node=r.name)
    return np.asarray(as_array(r.meta[key], f"lnm-deploy metadata '{key}'", r.name), dtype=np.float64)


@reads_exactly(AdaptiveNeuron)
def _read(r: NodeRead) -> AdaptiveNeuron:
    """Restores the node bit-exactly from its ``lnm_*`` metadata (``_write``)."""
    node = AdaptiveNeuron(**exact_neuron_fields(r.name, r.meta), theta_decay=_meta(r, "lnm_theta_decay"),
                          theta_step=_meta(r, "lnm_theta_step"),
                          refractory_decay=_meta(r, "lnm_refractory_decay") if "lnm_refractory_decay" in r.meta
                          else None, metadata=r.ir_meta)
    node.validate(r.name)
    warn_if_edited(r.name, r.node, node)  # the NIR parameters are the LNM neuron's, derived from the metadata
    return node


# ------------------------------------------------------------------------ integer primitive


@dataclass(eq=False)
class FxAdaptivePoly(FxPoly):
    """The polynomial neuron (``FxPoly``) with a threshold register (module docstring): ``vth`` is
    theta_0; ``theta_decay`` in [0, 2**D], ``theta_step`` and ``theta_init`` (default ``vth``) per
    neuron, S-bit signed."""

    kind: ClassVar[str] = KIND
    theta_decay: Array | int = 0
    theta_step: Array | int = 0
    theta_init: Array | int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.theta_init is None:
            self.theta_init = np.asarray(self.vth).copy()
        for key in ("theta_decay", "theta_step", "theta_init"):
            a = np.asarray(getattr(self, key))
            if a.dtype.kind == "f" and not np.all(a == np.round(a)):
                raise GraphError(f"{type(self).__name__}: '{key}' must hold integers")
            try:
                setattr(self, key, np.broadcast_to(a.astype(np.int64), self.shape).copy())
            except ValueError as e:
                raise GraphError(f"{type(self).__name__}: '{key}' of shape {a.shape} does not fit {self.shape}") from e

    def state_names(self) -> tuple[str, ...]:
        return (*super().state_names(), "theta")

    def validate(self, name: str) -> None:
        super().validate(name)
        if self.threshold != ">" or self.max_payload != 1 or self.v_floor is not None:
            raise GraphError("the adaptive neuron's step tests v' > theta, sends binary spikes and has no "
                             "membrane floor: threshold, max_payload and v_floor (docs/fixed-point.md 5.2) "
                             "must keep their defaults", node=name)
        sm = (1 << (self.state_bits - 1)) - 1
        for key, lo, hi in (("theta_decay", 0, 1 << self.decay_bits), ("theta_step", -sm, sm),
                            ("theta_init", -sm, sm)):
            a = np.asarray(getattr(self, key))
            if a.size and (a.min() < lo or a.max() > hi):
                raise GraphError(f"'{key}' must lie in [{lo}, {hi}], got values in [{a.min()}, {a.max()}]",
                                 node=name)

    def membrane(self) -> FxPoly:
        """The polynomial neuron of the membrane (steps 1-4), its threshold at the state maximum so
        that it never spikes and leaves ``v = v'``."""
        keep = {f.name: getattr(self, f.name) for f in dataclasses.fields(FxPoly)}
        keep.update(vth=(1 << (self.state_bits - 1)) - 1, reset="value", metadata={})
        return FxPoly(**keep)


@dataclass(frozen=True)
class AdaptiveParams:
    """The constants of one step: the membrane's ``PolyParams`` (never spiking), theta_0 ``vth``,
    ``k = 2**D - theta_decay``, ``theta_step``, the reset and the widths."""

    membrane: contract.PolyParams
    vth: Array
    k: Array
    theta_step: Array
    v_reset: Array
    reset: str
    rounding: str
    overflow: str
    state_bits: int
    decay_bits: int

    @classmethod
    def of(cls, node: FxAdaptivePoly) -> AdaptiveParams:
        return cls(membrane=contract.PolyParams.of(node.membrane()), vth=np.asarray(node.vth, np.int64),
                   k=(1 << node.decay_bits) - np.asarray(node.theta_decay, np.int64),
                   theta_step=np.asarray(node.theta_step, np.int64), v_reset=np.asarray(node.v_reset, np.int64),
                   reset=node.reset, rounding=node.rounding, overflow=node.overflow, state_bits=node.state_bits,
                   decay_bits=node.decay_bits)


def adaptive_step(p: AdaptiveParams, state: contract.State, a: Array) -> tuple[contract.State, Array]:
    """One step (module docstring) on int64 arrays; ``state`` (``v``, ``theta``, with a synapse
    ``c``) is not modified. Returns the new states and the spikes (bool)."""
    S, ovf = p.state_bits, p.overflow
    mem, _ = contract.poly_step(p.membrane, state, a)  # v' (never spikes) and c
    vp, theta = mem["v"], state["theta"]
    s = vp > theta
    if p.reset == "value":
        v = np.where(s, p.v_reset, vp)
    else:
        v = np.where(s, overflow(vp - theta, S, ovf), vp)
    relaxed = rshift((theta - p.vth) * p.k, p.decay_bits, p.rounding)
    out = {"v": v, "theta": overflow(p.vth + relaxed + np.where(s, p.theta_step, 0), S, ovf)}
    if "c" in mem and p.membrane.kc is not None:
        out["c"] = mem["c"]
    return out, s


@dataclass(frozen=True)
class AdaptiveBounds:
    """The membrane's ``PolyBounds`` and ``theta_product``, a bound on ``|(theta - vth) * k|``
    (``|theta - vth| <= 2**S``, ``k <= 2**D``)."""

    membrane: contract.PolyBounds
    theta_product: int


def adaptive_bounds(node: FxAdaptivePoly, input_bound: int) -> AdaptiveBounds:
    """``AdaptiveBounds`` of ``node`` for neuron inputs ``|a| <= input_bound``."""
    return AdaptiveBounds(contract.poly_bounds(node.membrane(), input_bound),
                          1 << (node.state_bits + node.decay_bits))


@dataclass(frozen=True)
class AdaptivePolySpec(PolySpec):
    """``[adaptive_poly]``: the programmable polynomial neuron with a threshold register; the
    keys of ``[poly]`` (the membrane) plus ``theta_step``, the range of the threshold's jump."""

    theta_step: tuple[int, int]

    def check(self, c: SpecCheck) -> None:
        super().check(c)
        sm = (1 << (self.state_bits - 1)) - 1
        c.within("theta_step", self.theta_step, (-sm, sm))

    def summary(self) -> str:
        return f"adaptive-threshold {super().summary()}"


def as_poly_target(target: Target) -> Target:
    """``target`` with its ``[adaptive_poly]`` section in the place of ``[poly]``: the polynomial
    neuron's rules and passes then read the adaptive neuron's membrane widths."""
    return Target(target.info, target.sections, target.path, poly=target.spec(KIND))


def check_adaptive(name: str, n: FxAdaptivePoly, t: Target) -> None:
    """The design rule: the membrane's (``check_poly`` against ``[adaptive_poly]``) and the range
    of ``theta_step``."""
    spec: AdaptivePolySpec = t.spec(KIND, node=name)
    check_poly(name, n, as_poly_target(t))
    step = np.asarray(n.theta_step)
    if step.size and (step.min() < spec.theta_step[0] or step.max() > spec.theta_step[1]):
        raise GraphError(f"theta_step in [{step.min()}, {step.max()}] exceeds target '{t.name}' range "
                         f"{list(spec.theta_step)}", node=name)


ADAPTIVE_POLY = register(Primitive(KIND, FxAdaptivePoly, AdaptivePolySpec, check_adaptive,
                                   bounds=adaptive_bounds, params=AdaptiveParams.of, step=adaptive_step,
                                   missing_hint="calibrate for a target with an [adaptive_poly] section "
                                                "(loihi2)"))


# ------------------------------------------------------------------------------- ONNX


class AdaptiveOnnx(onnx_build.NeuronLowering):
    """The ONNX step: the polynomial neuron's lowering for the membrane (of ``node.membrane()``),
    then the spike test, the reset and the threshold register (module docstring)."""

    node: FxAdaptivePoly

    def __init__(self, node: FxAdaptivePoly, in_bound: int) -> None:
        super().__init__(node, in_bound)
        self.poly = onnx_build.NEURONS["poly"](node.membrane(), in_bound)

    def prepare(self, b: onnx_build.Builder, a: str, bound: int) -> tuple[str, int]:
        return self.poly.prepare(b, a, bound)

    def step(self, b: onnx_build.Builder, x: str, st: dict[str, str]) -> tuple[str, dict[str, str]]:
        n = self.node
        S, ovf, D = n.state_bits, n.overflow, n.decay_bits
        _, mem = self.poly.step(b, x, st)
        vp, theta = mem["v"], st["theta"]
        s = b.op("Greater", [vp, theta], "spike")
        if n.reset == "value":
            after = b.const(n.v_reset)
        else:
            after = b.ovf(b.op("Sub", [vp, theta], "v_sub"), S, ovf)
        new = dict(mem)
        new["v"] = b.op("Where", [s, after, vp], "v")
        vth = b.const(n.vth)
        k = b.const((1 << D) - np.asarray(n.theta_decay, np.int64))
        dev = b.op("Mul", [b.op("Sub", [theta, vth], "theta_dev"), k], "theta_k")
        relaxed = b.rshift(dev, D, n.rounding, 1 << (S + D))
        jump = b.op("Where", [s, b.const(n.theta_step), b.const(0)], "theta_jump")
        t = b.op("Add", [b.op("Add", [vth, relaxed], "theta_relaxed"), jump], "theta_in")
        new["theta"] = b.ovf(t, S, ovf)
        return s, new


onnx_build.register_neuron_lowering(KIND, AdaptiveOnnx)


# ---------------------------------------------------------------------- calibration lowering


def _node(node: Any) -> AdaptiveNeuron:
    assert isinstance(node, AdaptiveNeuron), node  # registered for kind "adaptive_neuron" only
    return node


def theta_range(node: AdaptiveNeuron) -> tuple[float, float, bool]:
    """``(lo, hi, bounded)``: the range of ``theta`` from ``theta_0``, ``d_theta`` and
    ``theta_step`` (``theta_0 + theta_step / (1 - d_theta)`` at the most); ``bounded`` is False
    where some ``d_theta = 1`` with ``theta_step != 0`` (then the range is theta_0's)."""
    th0 = np.asarray(node.v_th, dtype=np.float64).reshape(-1)
    d, step = node.theta_decay.reshape(-1), node.theta_step.reshape(-1)
    grows = (d >= 1.0) & (step != 0)
    span = np.where(grows, 0.0, step / np.maximum(1.0 - d, 1e-300))
    return float(np.min(th0 + np.minimum(span, 0.0))), float(np.max(th0 + np.maximum(span, 0.0))), \
        not bool(np.any(grows))


def select_adaptive(layer: MappedLayer, rng: NeuronRange, target: Target, margin: float,
                    rounding: Rounding) -> Selection:
    """Pass 2: the polynomial neuron's (``select_poly`` on the ``[adaptive_poly]`` widths), with
    the threshold's range inside the state register."""
    sel = select_poly(layer, rng, as_poly_target(target), margin, rounding)
    lo, hi, bounded = theta_range(_node(layer.node))
    spec: AdaptivePolySpec = target.spec(KIND, node=layer.name)
    s_max = 2.0 ** (spec.state_bits - 1) - 1
    approx = sel.approximations
    if not bounded:
        approx = (*approx, "theta_decay 1 with a nonzero theta_step: the threshold register saturates "
                           f"at the {spec.state_bits}-bit state limit")
    q_min = max(sel.q_min, max(abs(lo), abs(hi)) * margin / s_max)
    return dataclasses.replace(sel, primitive=KIND, q_min=q_min, approximations=approx)


def plan_adaptive(sel: Selection, target: Target, weight_clip: WeightClip) -> ScalePlan:
    """Pass 3: the polynomial neuron's (``plan_poly``) on the ``[adaptive_poly]`` widths."""
    return plan_poly(sel, as_poly_target(target), weight_clip)


def encode_adaptive(sel: Selection, scales: ScalePlan, target: Target) -> EncodedLayer:
    """Pass 4: the polynomial neuron's integers (``encode_poly``) plus ``theta_decay =
    rint((1 - d_theta) 2**D)`` and ``theta_step = rint(theta_step / q)``; the dequantized node
    is an ``AdaptiveNeuron`` with those values."""
    enc = encode_poly(sel, scales, as_poly_target(target))
    spec: AdaptivePolySpec = target.spec(KIND, node=sel.name)
    node, q, D = _node(sel.node), scales.q, spec.decay_bits
    assert isinstance(enc.fx, FxPoly) and isinstance(enc.ir, Neuron)
    decay_int = np.clip(np.rint((1.0 - node.theta_decay) * 2**D), 0, 2**D).astype(np.int64)
    step_int = np.rint(node.theta_step / q).astype(np.int64)
    if np.any(step_int < spec.theta_step[0]) or np.any(step_int > spec.theta_step[1]):
        raise NumericError(f"theta_step needs [{step_int.min()}, {step_int.max()}] LSBs; target "
                           f"'{target.name}' holds {list(spec.theta_step)}", node=sel.name)
    fields = {f.name: getattr(enc.fx, f.name) for f in dataclasses.fields(FxPoly)}
    fx = FxAdaptivePoly(**fields, theta_decay=decay_int, theta_step=step_int)
    ir_fields = {f.name: getattr(enc.ir, f.name) for f in dataclasses.fields(Neuron)}
    ir = AdaptiveNeuron(**ir_fields, theta_decay=1.0 - decay_int / 2**D, theta_step=step_int * q)
    lo, hi, _ = theta_range(ir)
    s_max = 2.0 ** (spec.state_bits - 1) - 1
    theta_int = max(abs(lo), abs(hi)) / q
    proof = dict(enc.record.proof, theta_bound_int=theta_int,
                 holds=bool(enc.record.proof.get("holds", False) and theta_int <= s_max))
    rec = dataclasses.replace(enc.record, primitive=KIND, proof=proof)
    return dataclasses.replace(enc, fx=fx, ir=ir, record=rec)


def _applies(layer: MappedLayer, target: Target) -> bool:
    return target.offers(KIND) and not _node(layer.node).refractory


def _why_not(layer: MappedLayer, target: Target) -> str:
    return ("the layer is refractory (refractory_decay set) and the programmable neuron has no refractory "
            f"state; deploy it on a target offering '{ATR_KIND}' (loihi2-lif) or train without refractory_decay")


ADAPTIVE_LOWERING = register_lowering(Lowering(
    FLOAT_KIND, KIND, applies=_applies, select=select_adaptive, plan=plan_adaptive, encode=encode_adaptive,
    input_gain=neuron_input_gain, preference=10,
    description="programmable polynomial neuron with a threshold register", why_not=_why_not))


# ==================================================================================================
# The stock-neuron target: Lava's ATRLIF (lava.proc.atrlif, PyATRLIFModelFixed)
# ==================================================================================================
#
# The primitive ``atrlif`` is Lava 0.10's adaptive-threshold-and-refractoriness LIF, its
# ``fixed_pt`` model read from its source (``docs/fixed-point.md`` section "ATRLIF"). The Lava
# backend runs Lava's own process for it (``lava.proc.atrlif.process.ATRLIF``), so the differential
# test is against Lava's model, not ours.

ATR_KIND = "atrlif"


@dataclass(eq=False)
class FxATRLIF(FxNeuron):
    """Lava's ATRLIF (``PyATRLIFModelFixed``); one step (``docs/fixed-point.md``, ATRLIF)::

        i     = corr24(wrap32(trunc0(i * (4096 - di - 1) / 4096) + wrap32(a << 6)))
        v     = sat24(wrap32(trunc0(v * (4096 - dv) / 4096) + i + (bias_mant << bias_exp)))
        theta = wrap32(trunc0(wrap32(theta - th0) * (4096 - dtheta) / 4096) + th0)
        r     = trunc0(r * (4096 - dr) / 4096)
        s     = wrap32(v - r) >= theta
        r     = wrap32(r + wrap32(2 * theta)) where s;   theta = wrap32(theta + tstep) where s

    with ``th0 = theta_0 << 6`` and ``tstep = theta_step << 6``. ``di``, ``dv``, ``dtheta``,
    ``dr``, ``theta_0`` and ``theta_step`` are per layer (Lava's Vars of shape (1,));
    ``bias_mant``/``bias_exp`` per neuron. States ``i``, ``v``, ``theta``, ``r`` (Lava's Var
    names; ``theta`` and ``r`` on the membrane's grid); their ``*_init`` are the states before the
    first step (``theta_init`` defaults to ``th0``, which is what Lava's model starts from). The
    widths are the chip's constants (24-bit state, 12-bit decays, shifts 6), carried so the node
    is self-describing; targets pin them."""

    kind: ClassVar[str] = ATR_KIND
    di: int = 4095
    dv: int = 0
    dtheta: int = 0
    dr: int = 0
    theta_0: int = 10
    theta_step: int = 0
    bias_mant: Array | int = 0
    bias_exp: Array | int = 0
    i_init: Array | int = 0
    v_init: Array | int = 0
    theta_init: Array | int | None = None
    r_init: Array | int = 0
    state_bits: int = 24
    decay_bits: int = 12
    theta_shift: int = 6
    act_shift: int = 6

    def __post_init__(self) -> None:
        self.shape = tuple(integral(ATR_KIND, "shape", s) for s in self.shape)
        for key in ("di", "dv", "dtheta", "dr", "theta_0", "theta_step", "state_bits", "decay_bits",
                    "theta_shift", "act_shift"):
            setattr(self, key, integral(ATR_KIND, key, getattr(self, key)))
        if self.theta_init is None:
            self.theta_init = self.theta_0 << self.theta_shift
        for key in ("bias_mant", "bias_exp", "i_init", "v_init", "theta_init", "r_init"):
            a = np.asarray(getattr(self, key))
            if a.dtype.kind == "f" and not np.all(a == np.round(a)):
                raise GraphError(f"FxATRLIF: '{key}' must hold integers")
            try:
                setattr(self, key, np.broadcast_to(a.astype(np.int64), self.shape).copy())
            except ValueError as e:
                raise GraphError(f"FxATRLIF: '{key}' of shape {a.shape} does not fit {self.shape}") from e

    def state_names(self) -> tuple[str, ...]:
        return ("i", "v", "theta", "r")

    @property
    def bias(self) -> Array:
        """``bias_mant << bias_exp`` (floor right shift for a negative exponent), per neuron."""
        m, e = np.asarray(self.bias_mant), np.asarray(self.bias_exp)
        return np.where(e >= 0, m << np.maximum(e, 0), m >> np.maximum(-e, 0))

    @staticmethod
    def limits(decay_bits: int) -> dict[str, tuple[int, int]]:
        """The range (inclusive) of every width and parameter; a target's ``[atrlif]`` section
        lies inside them (checked on load)."""
        unity = 1 << min(max(int(decay_bits), 1), 16)  # an out-of-range decay_bits is refused by its own range
        return {"state_bits": (2, 30), "decay_bits": (1, 16), "theta_shift": (0, 16), "act_shift": (0, 16),
                "di": (0, unity - 1), "dv": (0, unity - 1), "dtheta": (0, unity - 1), "dr": (0, unity - 1),
                "theta_0": (0, 2**16 - 1), "theta_step": (0, 2**16 - 1),
                "bias_mant": (-(2**15), 2**15 - 1), "bias_exp": (-15, 15)}

    def validate(self, name: str) -> None:
        for key, (lo, hi) in self.limits(self.decay_bits).items():
            a = np.asarray(getattr(self, key))
            if a.size and (a.min() < lo or a.max() > hi):
                raise GraphError(f"'{key}' must lie in [{lo}, {hi}], got values in [{a.min()}, {a.max()}]",
                                 node=name)
        half = 1 << (self.state_bits - 1)
        for key, lo, hi in (("i_init", -half + 1, half), ("v_init", -half + 1, half - 1),
                            ("theta_init", -(2**31), 2**31 - 1), ("r_init", -(2**31), 2**31 - 1)):
            a = np.asarray(getattr(self, key))
            if a.size and (a.min() < lo or a.max() > hi):
                raise GraphError(f"'{key}' must lie in [{lo}, {hi}], got values in [{a.min()}, {a.max()}]",
                                 node=name)


@dataclass(frozen=True)
class ATRLIFParams:
    """The constants of one ``FxATRLIF`` step: ``ki = 2**D - di - 1``, ``kv = 2**D - dv``,
    ``kth = 2**D - dtheta``, ``kr = 2**D - dr``, ``bias`` (per neuron), ``th0 = theta_0 <<
    theta_shift``, ``tstep = theta_step << theta_shift``."""

    ki: int
    kv: int
    kth: int
    kr: int
    bias: Array
    th0: int
    tstep: int
    decay_bits: int
    act_shift: int
    state_bits: int

    @classmethod
    def of(cls, node: FxATRLIF) -> ATRLIFParams:
        unity = 1 << node.decay_bits
        return cls(ki=unity - node.di - 1, kv=unity - node.dv, kth=unity - node.dtheta, kr=unity - node.dr,
                   bias=np.asarray(node.bias, np.int64), th0=node.theta_0 << node.theta_shift,
                   tstep=node.theta_step << node.theta_shift, decay_bits=node.decay_bits,
                   act_shift=node.act_shift, state_bits=node.state_bits)


def atrlif_step(p: ATRLIFParams, state: contract.State, a: Array) -> tuple[contract.State, Array]:
    """One ATRLIF step (``FxATRLIF``) on int64 arrays; ``state`` (``i``, ``v``, ``theta``, ``r``)
    is not modified. Returns the new states (after the spike's jumps) and the spikes (bool)."""
    D, S = p.decay_bits, p.state_bits
    x = wrap(a << p.act_shift, 32)
    i = correct(wrap(trunc_mul_shift(state["i"], p.ki, D) + x, 32), S)
    v = saturate(wrap(trunc_mul_shift(state["v"], p.kv, D) + i + p.bias, 32), S)
    theta = wrap(trunc_mul_shift(wrap(state["theta"] - p.th0, 32), p.kth, D) + p.th0, 32)
    r = wrap(trunc_mul_shift(state["r"], p.kr, D), 32)
    s = wrap(v - r, 32) >= theta
    r = np.where(s, wrap(r + wrap(2 * theta, 32), 32), r)
    theta = np.where(s, wrap(theta + p.tstep, 32), theta)
    return {"i": i, "v": v, "theta": theta, "r": r}, s


@dataclass(frozen=True)
class ATRLIFBounds:
    """Static bounds of an ``FxATRLIF``: ``x`` on ``|x| = |wrap32(a << act_shift)|``; every
    product of a decay is below ``2**(31 + D)`` (the operands are int32): int64 is exact."""

    x: int
    decay_product: int


def atrlif_bounds(node: FxATRLIF, input_bound: int) -> ATRLIFBounds:
    """``ATRLIFBounds`` of ``node`` for neuron inputs ``|a| <= input_bound``."""
    return ATRLIFBounds(min(input_bound << node.act_shift, contract.INPUT_BOUND), 1 << (31 + node.decay_bits))


@dataclass(frozen=True)
class ATRLIFSpec:
    """``[atrlif]``: Lava's ATRLIF (``FxATRLIF``). The widths are Lava's constants; the ranges
    are the precisions its fixed_pt model declares (12-bit decays, ``theta_0`` and
    ``theta_step``; 13-bit ``bias_mant``, 3-bit ``bias_exp``)."""

    state_bits: int
    decay_bits: int
    theta_shift: int
    act_shift: int
    di: tuple[int, int]
    dv: tuple[int, int]
    dtheta: tuple[int, int]
    dr: tuple[int, int]
    theta_0: tuple[int, int]
    theta_step: tuple[int, int]
    bias_mant: tuple[int, int]
    bias_exp: tuple[int, int]

    def check(self, c: SpecCheck) -> None:
        lim = FxATRLIF.limits(self.decay_bits)
        for key in ("state_bits", "decay_bits", "theta_shift", "act_shift"):
            c.width(key, getattr(self, key), lim[key])
        for key in ("di", "dv", "dtheta", "dr", "theta_0", "theta_step", "bias_mant", "bias_exp"):
            c.within(key, getattr(self, key), lim[key])

    def summary(self) -> str:
        return f"ATRLIF ({self.state_bits}-bit state, adaptive threshold and refractory state)"


def check_atrlif(name: str, n: FxATRLIF, t: Target) -> None:
    """The design rule: the widths equal the target's, every parameter inside its range."""
    s: ATRLIFSpec = t.spec(ATR_KIND, node=name)
    for key in ("state_bits", "decay_bits", "theta_shift", "act_shift"):
        if getattr(n, key) != getattr(s, key):
            raise GraphError(f"{key} is {getattr(n, key)}; target '{t.name}' has {getattr(s, key)}", node=name)
    for key in ("di", "dv", "dtheta", "dr", "theta_0", "theta_step", "bias_mant", "bias_exp"):
        a, (lo, hi) = np.asarray(getattr(n, key)), getattr(s, key)
        if a.size and (a.min() < lo or a.max() > hi):
            raise GraphError(f"{key} in [{a.min()}, {a.max()}] exceeds target '{t.name}' range [{lo}, {hi}]",
                             node=name)


ATRLIF = register(Primitive(ATR_KIND, FxATRLIF, ATRLIFSpec, check_atrlif, bounds=atrlif_bounds,
                            params=ATRLIFParams.of, step=atrlif_step,
                            missing_hint="calibrate for a target with an [atrlif] section (loihi2-lif)"))


class ATRLIFOnnx(onnx_build.NeuronLowering):
    """The ONNX step of ``FxATRLIF``: the contract (``atrlif_step``) operator by operator, every
    wrap, correction and saturation written out (int64 tensors; Div truncates toward zero)."""

    node: FxATRLIF

    def prepare(self, b: onnx_build.Builder, a: str, bound: int) -> tuple[str, int]:
        """``x = wrap32(a << act_shift)``."""
        x = b.op("Mul", [a, b.const(1 << self.node.act_shift)], "act")
        return b.wrap(x, 32), contract.INPUT_BOUND

    def step(self, b: onnx_build.Builder, x: str, st: dict[str, str]) -> tuple[str, dict[str, str]]:
        n = self.node
        p = ATRLIFParams.of(n)
        D, half = p.decay_bits, 1 << (p.state_bits - 1)

        def decay(s: str, k: int, hint: str) -> str:  # trunc0(s * k / 2**D)
            return b.rshift(b.op("Mul", [s, b.const(k)], f"{hint}_k"), D, "trunc")

        i = b.wrap(b.op("Add", [decay(st["i"], p.ki, "i"), x], "i_in"), 32)
        two = b.const(2 * half)
        hi = b.op("Where", [b.op("Greater", [i, b.const(half)], "i_hi"), b.op("Sub", [i, two]), i], "corr")
        i = b.op("Where", [b.op("LessOrEqual", [i, b.const(-half)], "i_lo"), b.op("Add", [i, two]), hi], "i")
        v = b.op("Add", [decay(st["v"], p.kv, "v"), i], "v_in")
        v = b.sat(b.wrap(b.op("Add", [v, b.const(p.bias)], "v_bias"), 32), p.state_bits)
        th0 = b.const(p.th0)
        dev = b.wrap(b.op("Sub", [st["theta"], th0], "theta_dev"), 32)
        theta = b.wrap(b.op("Add", [decay(dev, p.kth, "theta"), th0], "theta_relaxed"), 32)
        r = b.wrap(decay(st["r"], p.kr, "r"), 32)
        s = b.op("GreaterOrEqual", [b.wrap(b.op("Sub", [v, r], "v_r"), 32), theta], "spike")
        r_up = b.wrap(b.op("Add", [r, b.wrap(b.op("Mul", [theta, b.const(2)], "theta2"), 32)], "r_up"), 32)
        th_up = b.wrap(b.op("Add", [theta, b.const(p.tstep)], "theta_up"), 32)
        return s, {"i": i, "v": v, "theta": b.op("Where", [s, th_up, theta], "theta"),
                   "r": b.op("Where", [s, r_up, r], "r")}


onnx_build.register_neuron_lowering(ATR_KIND, ATRLIFOnnx)


# ------------------------------------------------------------ calibration lowering onto ATRLIF


def _layer_value(what: str, a: Array, approx: list[str]) -> float:
    """The one value per layer Lava's ATRLIF holds: ``a``'s, or its mean (listed) when it varies."""
    flat = np.asarray(a, dtype=np.float64).reshape(-1)
    if flat.size and not np.all(flat == flat[0]):
        approx.append(f"per-neuron {what} replaced by their mean (Lava's ATRLIF has one per layer)")
    return float(flat.mean()) if flat.size else 0.0


def atrlif_exact(node: Any) -> bool:
    """Whether Lava's ATRLIF is exactly this layer (no fit, no approximation but rounding):
    degree <= 1 with a non-growing uniform leak, refractoriness, and one ``theta_0``, ``d_theta``,
    ``theta_step >= 0`` (nonzero only with ``d_theta > 0``), refractory and synaptic decay per
    layer."""
    n = _node(node)

    def uniform(a: Array | None) -> bool:
        return a is None or bool(np.all(a == np.asarray(a).reshape(-1)[0]))

    slope = n.poly[1] if n.degree >= 1 else None  # degree 0: no leak term (poly[0] is the bias)
    return bool(n.refractory and n.degree <= 1 and uniform(slope) and (slope is None or np.all(slope <= 1.0))
                and uniform(n.v_th) and uniform(n.theta_decay) and uniform(n.theta_step)
                and np.all(n.theta_step >= 0) and (np.all(n.theta_step == 0) or np.all(n.theta_decay > 0))
                and uniform(n.refractory_decay) and uniform(n.syn_decay))


def _atr_layer(node: AdaptiveNeuron, slope: float, approx: list[str]) -> dict[str, float]:
    """The per-layer real threshold parameters of the ATRLIF a layer maps to, its approximations
    appended to ``approx``: ``d_theta``, ``step``, the jump *before* Lava's decay ``step_atr =
    theta_step / d_theta`` and the refractory decay ``d_r`` (the membrane's ``slope`` where the
    node has no refractoriness)."""
    d_theta = _layer_value("theta_decay", node.theta_decay, approx)
    step = _layer_value("theta_step", node.theta_step, approx)
    step_atr = step / d_theta if d_theta > 0 else 0.0
    if d_theta <= 0 and step != 0:
        approx.append("theta_step with theta_decay 0: ATRLIF decays the jump before its first use, so the "
                      "threshold stays at theta_0")
    if node.refractory_decay is not None:
        d_r = _layer_value("refractory_decay", node.refractory_decay, approx)
    else:
        d_r = min(1.0, slope)
        approx.append(f"reset '{node.reset}' replaced by ATRLIF's refractory state (r += 2 theta at a spike, "
                      f"decaying as the membrane, by {d_r:.4g} per step)")
    return {"d_theta": d_theta, "step": step, "step_atr": step_atr, "d_r": d_r}


def select_atrlif(layer: MappedLayer, rng: NeuronRange, target: Target, margin: float,
                  rounding: Rounding) -> Selection:
    """Pass 2 onto Lava's ATRLIF: the line ``coef[0] + coef[1] v`` (the polynomial itself at
    degree <= 1, else the weighted least-squares LIF fit, its rms residual in ``fit``), the
    per-layer threshold parameters, and the smallest state scale that keeps the membrane, the
    current, the threshold's range, the refractory state and the 12-bit ``theta_0``/``theta_step``
    inside Lava's registers. ``UnsupportedError`` for a negative ``theta_0`` or ``theta_step``."""
    from lnm_deploy.calibrate.passes import Selection

    n, node = layer.name, _node(layer.node)
    spec: ATRLIFSpec = target.spec(ATR_KIND, node=n)
    approx: list[str] = []
    has_syn = node.syn_decay is not None
    theta, theta0 = membrane_constant(layer, node, approx)
    fit: dict[str, Any] = {}
    if node.degree >= 2:
        a, b, resid = lif_fit(theta, rng.v_values, rng.v_weights)
        approx.append(f"degree-{node.degree} polynomial fitted by a LIF (rms residual {resid:.3g} per step "
                      "over the calibrated membrane distribution)")
        fit = {"a": a, "b": b, "rms_residual": resid, "degree": node.degree,
               "samples": int(np.asarray(rng.v_weights).sum())}
        lin = np.stack([theta0 - theta[0] + a, np.full_like(theta0, b)])
    else:
        slope = theta[1] if node.degree >= 1 else np.zeros_like(theta0)
        b = _layer_value("leak slopes", slope, approx)
        lin = np.stack([theta0, np.full_like(theta0, b)])
    v_th = np.asarray(node.v_th, dtype=np.float64).reshape(-1)
    if np.any(v_th < 0) or np.any(node.theta_step < 0):
        raise UnsupportedError("Lava's ATRLIF holds theta_0 >= 0 and theta_step >= 0 (12-bit unsigned); this "
                               f"layer has theta_0 down to {v_th.min():.4g} and theta_step down to "
                               f"{node.theta_step.min():.4g}: retrain with a non-negative step or use the "
                               "loihi2 target (adaptive_poly)", node=n)
    th0 = _layer_value("thresholds theta_0", v_th, approx)
    if has_syn:
        _layer_value("synaptic decays", np.asarray(node.syn_decay), approx)
    p = _atr_layer(node, float(np.mean(lin[1])), approx)
    if b > 1.0:
        approx.append(f"decay factor {b:.4g} > 1 (a growing membrane) clipped to 1 (dv = 0)")
    # ranges (real): membrane (never reset with refractoriness), threshold, refractory state
    th_max = th0 + (p["step"] / (1.0 - p["d_theta"]) if p["d_theta"] < 1.0 else p["step"])
    r_max = 2.0 * th_max / (1.0 - p["d_r"]) if p["d_r"] < 1.0 else 0.0
    v_abs = max(abs(rng.v_min), abs(rng.v_max), abs(rng.v_pre_min), abs(rng.v_pre_max), th_max) * margin
    g_in = float(np.max(np.abs(node.in_gain)))
    g_syn = float(np.max(np.abs(node.syn_gain))) if node.syn_gain is not None else 1.0
    c_abs = g_in * max(rng.c_absmax, g_syn * rng.input_absmax if has_syn else rng.input_absmax) * margin
    s_max = 2.0 ** (spec.state_bits - 1) - 1
    grid = 2.0 ** spec.theta_shift
    bias_lim = max(abs(spec.bias_mant[0]), spec.bias_mant[1]) * 2.0 ** spec.bias_exp[1]
    q_min = max(v_abs / s_max, c_abs / s_max, th_max * margin / s_max, r_max * margin / 2.0**31,
                th0 / (spec.theta_0[1] * grid), p["step_atr"] / (spec.theta_step[1] * grid),
                float(np.max(np.abs(lin[0]))) / bias_lim, 1e-300)
    return Selection(n, node, ATR_KIND, layer.scaled_synapses, lin, v_th, v_abs, c_abs, q_min, rounding,
                     fit=fit, approximations=tuple(approx))


def plan_atrlif(sel: Selection, target: Target, weight_clip: WeightClip) -> ScalePlan:
    """Pass 3: ``q`` and the synapses' integers (exponent ``weight_exp + act_shift``), as the LIF's."""
    from lnm_deploy.calibrate.passes import ScalePlan, plan_synapses

    spec: ATRLIFSpec = target.spec(ATR_KIND, node=sel.name)
    q, in_shift, plans = plan_synapses(sel.name, list(sel.synapses), target, sel.q_min, spec.act_shift,
                                       weight_clip, (0, 0))
    return ScalePlan(sel.name, q, in_shift, tuple(plans))


def encode_atrlif(sel: Selection, scales: ScalePlan, target: Target) -> EncodedLayer:
    """Pass 4: the ``FxATRLIF`` integers (``dv = rint((1 - b) 2**D)``, ``di`` from the synaptic
    decay as the LIF's ``du``, ``dtheta``/``dr`` from ``1 - d``, ``theta_0``/``theta_step`` on the
    ``2**theta_shift`` grid, the bias as mantissa and one exponent per layer) and the dequantized
    ``AdaptiveNeuron`` with refractoriness (the integers times their scales). ``NumericError``
    where ``theta_0``, ``theta_step`` or the bias do not fit."""
    from lnm_deploy.calibrate.passes import EncodedLayer, LayerRecord

    spec: ATRLIFSpec = target.spec(ATR_KIND, node=sel.name)
    n, node, lin, q = sel.name, _node(sel.node), sel.coef, scales.q
    p = _atr_layer(node, float(np.mean(lin[1])), [])  # select_atrlif listed the approximations
    unity, grid = 2**spec.decay_bits, 2.0**spec.theta_shift

    def frac(d: float, r: tuple[int, int]) -> int:  # the integer of a decay factor d per step
        return int(np.clip(np.rint((1.0 - d) * unity), r[0], r[1]))

    dv = frac(min(float(np.mean(lin[1])), 1.0), spec.dv)
    if node.syn_decay is not None:
        di = int(np.clip(unity - 1 - np.rint(float(np.mean(node.syn_decay)) * unity), spec.di[0], spec.di[1]))
    else:
        di = unity - 1  # i = x: no current state
    dtheta, dr = frac(p["d_theta"], spec.dtheta), frac(p["d_r"], spec.dr)
    th0 = int(np.rint(float(np.mean(sel.v_th)) / (q * grid)))
    tstep = int(np.rint(p["step_atr"] / (q * grid)))
    for what, val, r in (("theta_0", th0, spec.theta_0), ("theta_step", tstep, spec.theta_step)):
        if not r[0] <= val <= r[1]:
            raise NumericError(f"{what} needs {val} (units of 2^{spec.theta_shift} LSBs); target "
                               f"'{target.name}' holds {list(r)}", node=n)
    bias_mant, bias_exp = encode_bias(n, lin[0], q, spec.bias_mant, spec.bias_exp, "ATRLIF")
    shape = node.shape
    fx = FxATRLIF(shape=shape, di=di, dv=dv, dtheta=dtheta, dr=dr, theta_0=th0, theta_step=tstep,
                  bias_mant=bias_mant.reshape(shape), bias_exp=bias_exp, state_bits=spec.state_bits,
                  decay_bits=spec.decay_bits, theta_shift=spec.theta_shift, act_shift=spec.act_shift)
    bias_real = bias_mant * 2.0**bias_exp * q
    k_theta = 1.0 - dtheta / unity
    ir = AdaptiveNeuron(shape=shape, poly=np.stack([bias_real, np.full_like(bias_real, 1.0 - dv / unity)]).reshape(2, *shape),
                        v_th=np.full(shape, th0 * grid * q), v_reset=np.zeros(shape), reset="subtract",
                        syn_decay=None if node.syn_decay is None else np.full(shape, (unity - di - 1) / unity),
                        dt=node.dt, theta_decay=np.full(shape, k_theta),
                        theta_step=np.full(shape, tstep * grid * q * k_theta),
                        refractory_decay=np.full(shape, 1.0 - dr / unity))
    s_max = 2.0 ** (spec.state_bits - 1) - 1
    _, _, bounded = theta_range(ir)
    approx = list(sel.approximations)
    # theta and r are int32 registers in Lava's model. A spike needs v - r >= theta with v <= s_max
    # (saturated) and r >= 0 (it starts at 0 and only jumps up by 2 theta >= 0), so every spike
    # happens below s_max and theta ends at most one jump above it; without spikes it decays
    # toward theta_0. That holds whether or not the geometric bound exists (dtheta = 0).
    # Starting at theta_0 (the encoded layer's theta_init), theta only exceeds theta_0 through a jump
    # right after a spike, which needs theta <= s_max: so theta <= max(theta_0, s_max + one jump)
    # in state LSBs, with or without a geometric bound.
    theta_int = max(th0 * grid, s_max + tstep * grid)
    if not bounded:
        approx.append("theta_decay rounds to 1 (dtheta = 0) with a nonzero theta_step: the threshold does not "
                      "relax and grows by one jump per spike until the neuron can no longer reach it")
    r_int = s_max + 2 * max(theta_int, s_max)  # r < v - theta + 2 theta at a spike; it decays otherwise
    reg_max = 2.0**31 - 1
    plans = scales.synapses
    rec = LayerRecord(
        name=n, primitive=ATR_KIND, q=q, exponents={pl.synapse.name: pl.weight_exp for pl in plans}, in_shift=0,
        weight_scale={pl.synapse.name: pl.real_per_lsb for pl in plans},
        weight_clipped={pl.synapse.name: pl.clipped for pl in plans},
        proof={"membrane_bound_real": sel.v_abs, "membrane_bound_int": sel.v_abs / q, "state_limit": s_max,
               "current_bound_int": sel.c_abs / q, "theta_bound_int": theta_int, "refractory_bound_int": r_int,
               "register_limit": reg_max, "theta_bounded_geometrically": bounded,
               "theta_0": th0, "theta_step": tstep, "di": di, "dv": dv, "dtheta": dtheta, "dr": dr,
               "bias_exp": bias_exp,
               "holds": bool(sel.v_abs / q <= s_max and sel.c_abs / q <= s_max
                             and theta_int <= reg_max and r_int <= reg_max)},
        fit=dict(sel.fit), approximations=approx)
    for a in approx:
        warnings.warn(f"layer '{n}': {a}", LNMDeployWarning, stacklevel=3)
    return EncodedLayer(fx, ir, rec, scales)


def _applies_atrlif(layer: MappedLayer, target: Target) -> bool:
    return target.offers(ATR_KIND)


# Tried after ADAPTIVE_LOWERING (same preference, registered later), which takes every layer but
# the refractory ones on a target with [adaptive_poly]: so ATRLIF gets the refractory layers (the
# exact ones, ``atrlif_exact``, are refractory) and, on a target without [adaptive_poly], all.
ATRLIF_LOWERING = register_lowering(Lowering(
    FLOAT_KIND, ATR_KIND, applies=_applies_atrlif, select=select_atrlif, plan=plan_atrlif,
    encode=encode_atrlif, input_gain=neuron_input_gain, preference=10,
    description="Lava's ATRLIF: exact for a degree-1 refractory layer, else the LIF fit (where the target has "
                "no adaptive_poly)"))
