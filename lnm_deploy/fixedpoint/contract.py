"""The integer contract of every primitive, written once: neuron steps and static bound analysis.

``docs/fixed-point.md`` is the specification; this module is its executable form, on numpy int64
arrays of any shape (one neuron per element; batches and rows broadcast). Every backend that does
the arithmetic itself calls it: fxsim's numpy engine, and the Lava process model of the polynomial
neuron (``lnm_deploy.lava_backend.procs.models``). Faster forms (fxsim's numba kernels and its
float64 LIF path) are accelerations, tested against these functions. The big-integer oracle in
``tests/test_fxsim_oracle.py`` stays an independent reading of the document.

Static bounds (``*_bounds``) are what fxsim (its float32/float64/int64 choice and the steps it may
skip), the ONNX builder (the wraps, corrections and saturations it may leave out) and the
quantizer's records share: each is a proven bound on an absolute value, in integer units (LSBs).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lnm_deploy.fixedpoint.arith import (
    correct,
    overflow,
    rshift,
    saturate,
    shift_exp_bound,
    trunc_mul_shift,
    wrap,
)

if TYPE_CHECKING:
    from lnm_deploy.fixedpoint.nodes import FxConv2d, FxDense, FxLIF, FxPoly

Array = np.ndarray
State = dict[str, Array]
INPUT_BITS = 32  # a neuron's input is wrap_32 of the sum of its synapses (section 4.1)
INPUT_BOUND = 1 << (INPUT_BITS - 1)


# ------------------------------------------------------------------------------------- synapses


@dataclass(frozen=True)
class SynapseBounds:
    """Static bounds of a synapse (``docs/fixed-point.md`` section 3) on input spikes ``0 <= s <=
    payload`` (1: binary; a graded source's ``max_payload``, section 5.2).

    ``acc``: ``payload * max_o sum_i |w[o, i]|``, a bound on the exact accumulator ``|acc[o]|``;
    ``out``: a bound on ``|y| = |wrap_out(shexp(acc, weight_exp))|``; ``wraps``: whether the wrap
    to ``out_bits`` can change a value (otherwise it is the identity and may be left out).
    """

    acc: int
    out: int
    wraps: bool


def synapse_bounds(acc: int, weight_exp: int, out_bits: int) -> SynapseBounds:
    """``SynapseBounds`` from the accumulator bound ``acc`` (integers), the exponent and width."""
    b = shift_exp_bound(acc, weight_exp)
    half = 1 << (out_bits - 1)
    return SynapseBounds(acc=acc, out=min(b, half), wraps=b >= half)


def dense_bounds(node: FxDense, payload: int = 1) -> SynapseBounds:
    """Bounds of an ``FxDense`` (section 3.1), on its effective weights, for inputs ``<= payload``."""
    w = node.effective_weight()
    acc = int(np.abs(w).sum(axis=1).max()) if w.size else 0
    return synapse_bounds(acc * int(payload), node.weight_exp, node.out_bits)


def conv_bounds(node: FxConv2d, payload: int = 1) -> SynapseBounds:
    """Bounds of an ``FxConv2d`` (section 3.2): the largest ``sum |w|`` of one output channel,
    times the input ``payload``."""
    w = node.weight
    acc = int(np.abs(w).reshape(w.shape[0], -1).sum(axis=1).max()) if w.size else 0
    return synapse_bounds(acc * int(payload), node.weight_exp, node.out_bits)


def neuron_input_bound(synapse_outs: list[int]) -> int:
    """A bound on ``|a| = |wrap_32(sum of the synapse outputs)|`` (section 4.1) given each
    synapse's ``SynapseBounds.out``."""
    return min(sum(synapse_outs), INPUT_BOUND)


# ---------------------------------------------------------------------------- stock LIF (4.2)


@dataclass(frozen=True)
class LIFParams:
    """The constants of one ``FxLIF`` step: ``ku = 2**D - du - 1``, ``kv = 2**D - dv``,
    ``bias = shexp(bias_mant, bias_exp)`` (per neuron), ``vth_eff = vth << vth_shift``."""

    ku: int
    kv: int
    decay_bits: int
    act_shift: int
    state_bits: int
    bias: Array
    vth_eff: int

    @classmethod
    def of(cls, node: FxLIF) -> LIFParams:
        unity = 1 << node.decay_bits
        return cls(ku=unity - node.du - 1, kv=unity - node.dv, decay_bits=node.decay_bits,
                   act_shift=node.act_shift, state_bits=node.state_bits,
                   bias=np.asarray(node.bias, dtype=np.int64), vth_eff=node.vth << node.vth_shift)


def lif_input(p: LIFParams, a: Array) -> Array:
    """Step 2 of section 4.2: ``x = wrap_32(a * 2**act_shift)`` for int64 ``a``."""
    return wrap(a << p.act_shift, 32)


def lif_update(p: LIFParams, state: State, x: Array) -> tuple[State, Array]:
    """Steps 1 and 3-7 of section 4.2 on the states ``{"u", "v"}`` (int64, not modified) and
    ``x = lif_input(p, a)``. Returns the new states (``u`` after step 3, ``v`` after the reset)
    and the spikes (bool)."""
    u = correct(wrap(trunc_mul_shift(state["u"], p.ku, p.decay_bits) + x, 32), p.state_bits)
    vd = trunc_mul_shift(state["v"], p.kv, p.decay_bits)
    v = saturate(wrap(vd + u + p.bias, 32), p.state_bits)
    s = v > p.vth_eff
    return {"u": u, "v": np.where(s, 0, v)}, s


def lif_step(p: LIFParams, state: State, a: Array) -> tuple[State, Array]:
    """One step of the stock LIF (section 4.2) on the input ``a`` (int64, already ``wrap_32``)."""
    return lif_update(p, state, lif_input(p, a))


@dataclass(frozen=True)
class LIFBounds:
    """Static bounds of an ``FxLIF`` on inputs ``|a| <= input_bound`` (section 4.3).

    ``x``: bound on ``|x|`` after step 2. ``small``: ``|x| <= 2**(N-1)`` and ``|u_init| <=
    2**(N-1)``: no int32 wrap of steps 2-3 can trigger and ``|u| <= 2**(N-1)`` always. ``u``: bound
    on ``|u|``. ``wrap_u``: ``corr`` of step 3 can change a value. ``wrap_v``: the int32 wrap of
    step 5 can change a value. ``sat_low``: saturation from below can change ``v``. ``sat_high``:
    saturation from above can change a result (it cannot when ``vth_eff < 2**(N-1) - 1``: such a
    neuron spikes and resets to 0 either way).

    The geometric bounds: ``|u| <= max(|u_init|, |x| 2**D / (du + 1))`` and
    ``|v| <= max(|v_init|, (|u| + |bias|) 2**D / dv)``, rounded down (the states are integers).
    """

    x: int
    small: bool
    u: int
    wrap_u: bool
    wrap_v: bool
    sat_low: bool
    sat_high: bool


def lif_bounds(node: FxLIF, input_bound: int) -> LIFBounds:
    """``LIFBounds`` of ``node`` for neuron inputs ``|a| <= input_bound``."""
    p = LIFParams.of(node)
    half = 1 << (p.state_bits - 1)
    vmax = half - 1
    unity = 1 << p.decay_bits
    ku, kv = p.ku, p.kv
    x = min(input_bound << node.act_shift, INPUT_BOUND)
    u0 = int(np.abs(np.asarray(node.u_init)).max(initial=0))
    v0 = int(np.abs(np.asarray(node.v_init)).max(initial=0))
    b_max = int(np.abs(np.asarray(node.bias)).max(initial=0))
    small = x <= half and u0 <= half
    u_sup = max(u0, x * unity // (unity - ku))  # ku < unity: du >= 0
    u = min(u_sup, half) if small else INPUT_BOUND
    no_sat = small and kv < unity and v0 <= vmax and (u + b_max) * unity <= vmax * (unity - kv)
    sat_low = not no_sat
    return LIFBounds(x=x, small=small, u=u, wrap_u=not u_sup < half, wrap_v=u + half + b_max >= INPUT_BOUND,
                     sat_low=sat_low, sat_high=sat_low and p.vth_eff >= vmax)


# ---------------------------------------------------------------------- polynomial neuron (5)


@dataclass(frozen=True)
class PolyParams:
    """The parameters of one ``FxPoly`` step (section 5): ``coef`` (d+1, ...) ascending,
    ``shifts`` (d,), ``vth``/``v_reset`` per neuron, ``kc = 2**D - syn_decay`` per neuron or
    ``None`` without a current state; widths S (state), R (Horner register), D (decay).
    ``c_bias``: the current-bias register per neuron (added to ``x`` in step 1), None for none.
    The spike rules of section 5.2: ``threshold`` (">" or ">="), ``max_payload`` (1: binary) and
    ``v_floor`` (per neuron, or None)."""

    coef: Array
    shifts: tuple[int, ...]
    vth: Array
    v_reset: Array
    reset: str
    in_shift: int
    kc: Array | None
    rounding: str
    overflow: str
    state_bits: int
    acc_bits: int
    decay_bits: int
    c_bias: Array | None = None
    threshold: str = ">"
    max_payload: int = 1
    v_floor: Array | None = None

    @classmethod
    def of(cls, node: FxPoly) -> PolyParams:
        kc = None if node.syn_decay is None else (1 << node.decay_bits) - np.asarray(node.syn_decay, np.int64)
        params = cls(coef=node.coef.astype(np.int64), shifts=tuple(node.shifts),
                   vth=np.asarray(node.vth, dtype=np.int64), v_reset=np.asarray(node.v_reset, dtype=np.int64),
                   reset=node.reset, in_shift=node.in_shift, kc=kc, rounding=node.rounding,
                   overflow=node.overflow, state_bits=node.state_bits, acc_bits=node.acc_bits,
                   decay_bits=node.decay_bits, threshold=node.threshold, max_payload=node.max_payload,
                     v_floor=None if node.v_floor is None else np.asarray(node.v_floor, dtype=np.int64))
        if node.c_bias is None:
            return params
        return dataclasses.replace(params, c_bias=np.asarray(node.c_bias, dtype=np.int64))


def poly_input(p: PolyParams, a: Array) -> Array:
    """Step 1 of section 5: ``x = a * 2**in_shift + c_bias`` for int64 ``a`` (``x = a *
    2**in_shift`` without a current-bias register)."""
    if p.c_bias is not None:
        return (a << p.in_shift) + p.c_bias
    return a << p.in_shift


def poly_update(p: PolyParams, state: State, x: Array) -> tuple[State, Array]:
    """Steps 2-7 of section 5 on the states ``{"v", "c"}`` (int64, not modified; without a
    current state ``c`` is ``ovf_S(x)``) and ``x = poly_input(p, a)``. Returns the new states and
    the spikes: bool, or for a graded neuron (``max_payload > 1``) the counts, int64 in
    ``0..max_payload`` (section 5.2)."""
    S, R, rnd, ovf = p.state_bits, p.acc_bits, p.rounding, p.overflow
    if p.kc is not None:
        c = overflow(rshift(state["c"] * p.kc, p.decay_bits, rnd) + x, S, ovf)
    else:
        c = overflow(x, S, ovf)
    v = state["v"]
    d = p.coef.shape[0] - 1
    h = np.broadcast_to(p.coef[d], v.shape)
    for k in range(d - 1, -1, -1):
        h = overflow(rshift(h * v, p.shifts[k], rnd) + p.coef[k], R, ovf)
    vp = overflow(h + c, S, ovf)
    if p.threshold == ">=" or p.max_payload > 1 or p.v_floor is not None:
        return _poly_spike_rules(p, vp, c)
    s = vp > p.vth
    if p.reset == "value":
        v_new = np.where(s, p.v_reset, vp)
    else:
        v_new = np.where(s, overflow(vp - p.vth, S, ovf), vp)
    return {"v": v_new, "c": c}, s


def _poly_spike_rules(p: PolyParams, vp: Array, c: Array) -> tuple[State, Array]:
    """Steps 5-7 of section 5 with the rules of section 5.2 (``>=``, graded counts, the floor)."""
    fired = vp >= p.vth if p.threshold == ">=" else vp > p.vth
    if p.max_payload > 1:  # vth >= 1 (FxPoly.validate): the count is at least 1 where fired
        s: Array = np.where(fired, np.clip(vp // np.maximum(p.vth, 1), 1, p.max_payload), 0).astype(np.int64)
        sub = s * p.vth
    else:
        s, sub = fired, p.vth
    if p.reset == "value":
        v_new = np.where(fired, p.v_reset, vp)
    else:
        v_new = np.where(fired, overflow(vp - sub, p.state_bits, p.overflow), vp)
    if p.v_floor is not None:
        v_new = np.maximum(v_new, p.v_floor)
    return {"v": v_new, "c": c}, s


def poly_step(p: PolyParams, state: State, a: Array) -> tuple[State, Array]:
    """One step of the polynomial neuron (section 5) on the input ``a`` (int64)."""
    return poly_update(p, state, poly_input(p, a))


@dataclass(frozen=True)
class PolyBounds:
    """Static bounds of an ``FxPoly`` (section 5): ``x`` on ``|x|`` after step 1;
    ``decay_product`` on ``|c * (2**D - syn_decay)|`` (``|c| <= 2**(S-1)``); ``horner_product`` on
    ``|H * v|`` (``|H| <= 2**(R-1)``, ``|v| <= 2**(S-1)``)."""

    x: int
    decay_product: int
    horner_product: int


def poly_bounds(node: FxPoly, input_bound: int) -> PolyBounds:
    """``PolyBounds`` of ``node`` for neuron inputs ``|a| <= input_bound`` (``|x|`` includes the
    current-bias register: ``(input_bound << in_shift) + max |c_bias|``)."""
    S, R = node.state_bits, node.acc_bits
    c_bias = 0 if node.c_bias is None else int(np.abs(np.asarray(node.c_bias)).max(initial=0))
    return PolyBounds(x=(input_bound << node.in_shift) + c_bias, decay_product=1 << (S - 1 + node.decay_bits),
                      horner_product=1 << (R + S - 2))
