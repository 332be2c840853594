"""The Neuron's two lowerings: onto the stock LIF ("lif") and the polynomial neuron ("poly").

Registered on import (``lnm_deploy.calibrate`` imports this module) as ``Lowering("neuron",
"lif", preference=0)`` and ``Lowering("neuron", "poly", preference=10)``: the stock LIF is chosen
where the layer is exactly one (degree <= 1, reset to zero, one threshold, decay and, with a
synapse, synaptic decay per layer, no growing membrane) or where the target offers no
polynomial neuron (then with the weighted least-squares LIF fit of the polynomial); else the
polynomial neuron. The arithmetic of each pass is documented in ``lnm_deploy.calibrate.passes``
and docs/calibration.md.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any

import numpy as np

from lnm_deploy.calibrate.lowering import Lowering, register_lowering
from lnm_deploy.calibrate.passes import (
    EncodedLayer,
    LayerRecord,
    MappedLayer,
    NeuronRange,
    ScalePlan,
    Selection,
    WeightClip,
    floor_log2,
    plan_synapses,
)
from lnm_deploy.errors import LNMDeployWarning, NumericError, UnsupportedError
from lnm_deploy.execute.float_exec import horner
from lnm_deploy.fixedpoint import FxLIF, FxPoly, Rounding
from lnm_deploy.ir import Neuron, Node
from lnm_deploy.targets import Target

Array = np.ndarray


def _distinct_columns(theta: Array) -> Array:
    """The distinct columns (polynomials) of ``theta`` (d+1, n): a layer-wise or channel-wise
    polynomial repeated over n neurons has 1 or C. Maxima over neurons are unchanged."""
    flat = theta.reshape(theta.shape[0], -1)
    if flat.shape[1] <= 1:
        return flat
    if bool(np.all(flat == flat[:, :1])):  # one polynomial for the whole layer: no sort needed
        return flat[:, :1]
    # columns sorted by their coefficients (np.lexsort: last key first), then each one that differs
    # from the one before it (np.unique(axis=1) sorts byte strings, several times slower)
    srt = flat[:, np.lexsort(flat[::-1])]
    keep = np.ones(srt.shape[1], dtype=bool)
    keep[1:] = np.any(srt[:, 1:] != srt[:, :-1], axis=0)
    return srt[:, keep]


def _poly_shifts(name: str, theta: Array, q: float, u_max: float, acc_bits: int, coef_bits: int,
                 shift_range: tuple[int, int]) -> tuple[list[int], list[float]]:
    """Per-term binary points ``f_k`` for Horner (docs/fixed-point.md section 5), as shifts.

    Register k holds ``h_k 2^f_k`` with ``|h_k| <= 2^f_k q^(k-1) max_{|u| <= u_max} |Q_k(u)|``,
    ``Q_k(u) = sum_{j >= k} theta_j u^(j-k)``; coefficient ``k`` is ``theta_k q^(k-1) 2^f_k``.
    Largest ``f_k`` such that both stay below ``2^(acc_bits-1)`` and ``2^(coef_bits-1)``,
    nondecreasing in k (shifts >= 0). Returns (shifts, register bounds for k = 0..d).
    """
    d = theta.shape[0] - 1
    grid = np.linspace(-u_max, u_max, 257)
    reg_lim = 2.0 ** (acc_bits - 1) - 1
    coef_lim = 2.0 ** (coef_bits - 1) - 1
    caps: list[int] = []
    tails: list[float] = []
    for k in range(1, d + 1):
        qk = np.broadcast_to(theta[d], (grid.size, theta.shape[1])).copy()  # Q_k by Horner, (G, n)
        for j in range(d - 1, k - 1, -1):
            qk = qk * grid[:, None] + theta[j]
        tail = float(np.abs(qk).max()) if qk.size else 0.0
        # Q_k's max over the grid, with headroom for the grid missing the true max between points
        tail = tail * 1.01
        tails.append(tail)
        tk = float(np.max(np.abs(theta[k]))) if theta[k].size else 0.0
        scale = q ** (k - 1)
        unbounded = 10**6  # a zero tail or coefficient puts no limit here; the shift range will
        cap_reg = floor_log2(reg_lim / (tail * scale)) if tail * scale > 0 and math.isfinite(
            reg_lim / (tail * scale)) else unbounded
        cap_coef = floor_log2(coef_lim / (tk * scale)) if tk * scale > 0 and math.isfinite(
            coef_lim / (tk * scale)) else unbounded
        caps.append(min(cap_reg, cap_coef))
    # nondecreasing, >= 0, per-step shift within range
    f = [0] * (d + 1)
    for k in range(d, 0, -1):
        f[k] = caps[k - 1] if k == d else min(caps[k - 1], f[k + 1])
    lo_s, hi_s = shift_range
    for k in range(1, d + 1):
        f[k] = max(f[k], f[k - 1] + lo_s)
        f[k] = min(f[k], f[k - 1] + hi_s)
        if f[k] > caps[k - 1]:
            raise NumericError(
                f"the {acc_bits}-bit Horner register {k} cannot hold the polynomial over the calibrated "
                f"membrane range |v| <= {u_max:.4g} (needs {f[k] - caps[k - 1]} more bits): the membrane "
                "runs far outside the threshold; retrain with the stability regulariser or a smaller range",
                node=name)
    p_max = float(np.abs(horner(theta[:, None, :], np.broadcast_to(grid[:, None], (grid.size, theta.shape[1])))).max())
    bounds = [p_max / q] + [2.0 ** f[k] * q ** (k - 1) * tails[k - 1] for k in range(1, d + 1)]
    return [f[k + 1] - f[k] for k in range(d)], bounds


def lif_fit(theta: Array, values: Array, weights: Array) -> tuple[float, float, float]:
    """Weighted least-squares line ``a + b v`` to the polynomial over the calibrated membrane.

    ``values``/``weights``: the membrane distribution (histogram bin centres and counts).
    ``theta`` is (d+1, n_neurons), averaged over neurons (one decay per layer on the stock LIF).
    Returns ``(a, b, weighted rms residual)`` in membrane units per step.
    """
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if v.size < 2 or np.ptp(v) == 0 or w.sum() <= 0:
        v, w = np.linspace(-1.0, 1.0, 65), np.ones(65)
    th_mean = theta.reshape(theta.shape[0], -1).mean(axis=1)
    p = horner(th_mean.reshape(-1, 1), v)
    sw = np.sqrt(w / w.sum())
    design = np.stack([np.ones_like(v), v], axis=1)
    (a, b), *_ = np.linalg.lstsq(design * sw[:, None], p * sw, rcond=None)
    resid = float(np.sqrt(np.sum(w / w.sum() * (a + b * v - p) ** 2)))
    return float(a), float(b), resid





def _uniform(a: Array | None) -> bool:
    return a is None or bool(np.all(a == a.reshape(-1)[0]))


def _neuron(node: Node) -> Neuron:
    assert isinstance(node, Neuron), node  # the Neuron's lowerings, and those reusing them on a subclass
    return node


def neuron_input_gain(node: Node) -> Array:
    """The real current into v per unit synapse output: ``in_gain`` (times ``syn_gain`` with a
    synapse), node-shaped."""
    node = _neuron(node)
    return node.in_gain * (node.syn_gain if node.syn_gain is not None else 1.0)


def lif_exact(node: Node) -> bool:
    """Whether the stock LIF is exactly this layer (no fit, no approximation but rounding)."""
    node = _neuron(node)
    theta = node.poly.reshape(node.poly.shape[0], -1)  # (d+1, N)
    has_syn = node.syn_decay is not None
    return bool(node.degree <= 1 and node.reset == "value" and np.all(node.v_reset == 0)
                 and _uniform(node.poly[min(1, node.degree)]) and _uniform(node.v_th)
                 and (node.degree == 0 or np.all(theta[1] <= 1.0))
                 and (not has_syn or _uniform(node.syn_decay)))


def membrane_constant(layer: MappedLayer, node: Neuron, approx: list[str],
                      current_register: bool = False) -> tuple[Array, Array]:
    """``(theta, theta0)``: the layer's polynomial coefficients (d+1, N) and its constant term with
    the layer's constant input (``layer.scaled_bias``) added. A constant input into a synaptic
    current (``c = a c + W s + b``) reaches ``b / (1 - a)`` after a transient, while a stock
    neuron's bias adds to ``v``: it is folded at that steady state, and ``approx`` says so with a
    bound on the transient's error (``transient_bound``). ``current_register``: the neuron has a
    current-bias register that takes such a bias (``FxPoly.c_bias``): not folded, ``theta0`` is
    ``theta[0]``."""
    bias_v = layer.scaled_bias  # constant current into v (no synapse) or into c
    theta = node.poly.reshape(node.poly.shape[0], -1)  # (d+1, N)
    if node.syn_decay is not None and np.any(bias_v != 0):
        if current_register:
            return theta, theta[0].copy()
        approx.append("bias entering the synaptic current folded into the membrane at its steady state "
                      f"b/(1-alpha) (the first steps' transient is lost: {transient_bound(node, bias_v)})")
        bias_v = bias_v / np.maximum(1.0 - node.syn_decay, 1e-12)
    return theta, theta[0] + np.asarray(bias_v).reshape(-1)


def transient_bound(node: Neuron, bias: Array) -> str:
    """The cost of folding a constant input ``bias`` (real current into v per step, node-shaped)
    into the synaptic current of ``node`` at its steady state, in words: below threshold, the
    folded membrane receives ``b / (1 - alpha)`` from step 0 where the true one receives
    ``b (1 - alpha^(t+1)) / (1 - alpha)``, a difference ``e_t = |b| alpha^(t+1) / (1 - alpha)``;
    leaked by ``beta`` (the polynomial's slope at 0, clipped into [0, 1)) the membranes differ by
    ``E_t = |b| alpha / (1 - alpha) * sum_k beta^(t-k) alpha^k`` (``transient_peak``: its largest
    value over t). Reported for the neuron where it is largest against its threshold, with the
    steps until ``e_t`` falls below 1 % of ``e_0`` (the slowest synapse)."""
    assert node.syn_decay is not None
    b = np.abs(np.asarray(bias, np.float64).reshape(-1))
    alpha = np.clip(node.syn_decay.reshape(-1), 0.0, 1.0 - 1e-9)
    beta = np.clip(node.poly[1].reshape(-1), 0.0, 1.0 - 1e-9) if node.degree >= 1 else np.full_like(alpha, 1 - 1e-9)
    bound = b * alpha / (1.0 - alpha) * transient_peak(alpha, beta)
    vth = np.abs(node.v_th.reshape(-1)) if node.v_th is not None else np.ones_like(b)
    rel = bound / np.maximum(vth, 1e-300)
    i = int(np.argmax(rel))
    a_max = float(np.max(alpha[b > 0])) if np.any(b > 0) else 0.0
    steps = math.ceil(math.log(0.01) / math.log(a_max)) if 0.0 < a_max < 1.0 else 0
    return (f"below threshold the membrane differs by at most {float(bound[i]):.3g} ({float(rel[i]):.0%} of the "
            f"threshold, neuron {i}) in the first steps, the difference in its input decaying as alpha^t "
            f"(below 1 % after {steps} steps)")


def transient_peak(alpha: Array, beta: Array) -> Array:
    """``max_t sum_{k=0..t} beta^(t-k) alpha^k`` elementwise, for ``alpha``, ``beta`` in [0, 1):
    ``(alpha^u - beta^u) / (alpha - beta)`` at ``u = t + 1`` (``u alpha^(u-1)`` where they are
    equal), whose maximum over real ``u`` is where ``alpha^u ln alpha = beta^u ln beta``; evaluated
    at the integers around it (and at t = 0)."""
    a, bt = np.maximum(alpha, 1e-12), np.maximum(beta, 1e-12)
    la, lb = np.log(a), np.log(bt)
    same = np.abs(a - bt) < 1e-9
    with np.errstate(divide="ignore", invalid="ignore"):
        u_star = np.where(same, -1.0 / la, np.log(lb / la) / (la - lb))
    u_star = np.clip(np.nan_to_num(u_star, nan=1.0), 1.0, 1e7)

    def s(u: Array) -> Array:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(same, u * a ** (u - 1), (a**u - bt**u) / np.where(same, 1.0, a - bt))

    cands = [s(np.ones_like(a)), s(np.floor(u_star)), s(np.ceil(u_star))]
    return np.asarray(np.max(np.stack(cands), axis=0))


def lif_decays(lin: Array, node: Neuron, dv_range: tuple[int, int], du_range: tuple[int, int], unity: int,
               approx: list[str]) -> tuple[int, int]:
    """A stock LIF's ``(dv, du)`` (``unity = 2**decay_bits``) for a linear leak with coefficients
    ``lin`` (2, N) and the node's synaptic decay: ``dv = rint((1 - mean coef[1]) unity)`` (a
    growing membrane, ``coef[1] > 1``, clipped to ``dv = 0`` and noted in ``approx``), ``du = unity
    - 1 - rint(mean syn_decay unity)`` (no synapse: ``unity - 1``, ``u`` is the input), each
    clipped into its range."""
    b_mean = float(np.mean(lin[1]))
    if b_mean > 1.0:
        approx.append(f"decay factor {b_mean:.4g} > 1 (a growing membrane) clipped to 1 (dv = 0)")
    dv = int(np.clip(np.rint((1.0 - b_mean) * unity), dv_range[0], dv_range[1]))
    if node.syn_decay is None:
        return dv, unity - 1  # u = x: no current state
    alpha = float(np.mean(node.syn_decay))
    return dv, int(np.clip(unity - 1 - np.rint(alpha * unity), du_range[0], du_range[1]))


def _prelude(layer: MappedLayer, rng: NeuronRange, margin: float, current_register: bool = False) -> tuple[
        str, Neuron, tuple[Any, ...], list[str], bool, Array, Array, Array, float, float]:
    """What both neuron lowerings' pass 2 start from: the constant input folded into theta0 (not
    a bias into the current where ``current_register``), the thresholds, the membrane and current
    bounds times the margin, the approximations so far."""
    n, node, syns = layer.name, _neuron(layer.node), layer.scaled_synapses
    approx: list[str] = []
    has_syn = node.syn_decay is not None
    theta, theta0 = membrane_constant(layer, node, approx, current_register)
    v_th = node.v_th.reshape(-1)  # type: ignore[union-attr]
    if np.any(v_th < 0):
        raise UnsupportedError("negative thresholds cannot be mapped (the chip's threshold is >= 0)", node=n)
    v_abs = max(abs(rng.v_min), abs(rng.v_max), abs(rng.v_pre_min), float(np.max(np.abs(node.v_reset))),
                float(np.max(v_th))) * margin
    # The chip's current register (LIF u, poly c) holds in_gain * c with a synapse and the
    # in_gain-scaled input itself without one: it must not wrap (LIF) or saturate (poly).
    g_in = float(np.max(np.abs(node.in_gain)))
    g_syn = float(np.max(np.abs(node.syn_gain))) if node.syn_gain is not None else 1.0
    c_abs = g_in * max(rng.c_absmax, g_syn * rng.input_absmax if has_syn else rng.input_absmax) * margin
    return n, node, syns, approx, has_syn, theta, theta0, v_th, v_abs, c_abs


def select_lif(layer: MappedLayer, rng: NeuronRange, target: Target, margin: float,
               rounding: Rounding) -> Selection:
    """Pass 2 onto the stock LIF: the line ``coef[0] + coef[1] v`` (exact, or the weighted
    least-squares fit of the polynomial, whose approximations are listed)."""
    n, node, syns, approx, has_syn, theta, theta0, v_th, v_abs, c_abs = _prelude(layer, rng, margin)
    lif = target.lif
    assert lif is not None
    exact = lif_exact(node)
    fit: dict[str, Any] = {}
    if not exact:
        a, b, resid = lif_fit(theta, rng.v_values, rng.v_weights)
        if node.degree >= 2:
            approx.append(f"degree-{node.degree} polynomial fitted by a LIF (rms residual {resid:.3g} "
                          "per step over the calibrated membrane distribution)")
        fit = {"a": a, "b": b, "rms_residual": resid, "degree": node.degree,
               "samples": int(np.asarray(rng.v_weights).sum())}
        if node.reset != "value" or np.any(node.v_reset != 0):
            approx.append(f"reset '{node.reset}' (v_reset {float(np.mean(node.v_reset)):.3g}) replaced "
                          "by the stock LIF's reset to zero")
        if not _uniform(node.v_th):
            approx.append("per-neuron thresholds replaced by their mean (the stock LIF has one)")
        if has_syn and not _uniform(node.syn_decay):
            approx.append("per-neuron synaptic decays replaced by their mean")
        lin = np.stack([theta0 - theta[0] + a, np.full_like(theta0, b)])
    else:
        lin = np.stack([theta0, theta[1] if node.degree >= 1 else np.zeros_like(theta0)])
    s_max = 2.0 ** (lif.state_bits - 1) - 1
    bias_lim = max(abs(lif.bias_mant[0]), lif.bias_mant[1]) * 2.0 ** lif.bias_exp[1]
    q_min = max(v_abs / s_max, c_abs / s_max, float(np.mean(v_th)) / (lif.vth[1] * 2.0**lif.vth_shift),
                float(np.max(np.abs(lin[0]))) / bias_lim, 1e-300)
    return Selection(n, node, "lif", syns, lin, v_th, v_abs, c_abs, q_min, rounding, fit=fit,
                     approximations=tuple(approx))


def select_poly(layer: MappedLayer, rng: NeuronRange, target: Target, margin: float,
                rounding: Rounding) -> Selection:
    """Pass 2 onto the polynomial neuron: its coefficients with the constant input folded in, and
    the largest |P(v) + c| over the membrane bound (``UnsupportedError`` for a rounding the target
    does not offer)."""
    spec = target.poly
    assert spec is not None
    register = uses_current_bias(layer, spec.c_bias)
    n, node, syns, approx, _, theta, theta0, v_th, v_abs, c_abs = _prelude(layer, rng, margin, register)
    if rounding not in spec.rounding:
        raise UnsupportedError(f"rounding '{rounding}' not offered by target '{target.name}' "
                               f"({spec.rounding})", node=n)
    theta_full = theta.copy()
    theta_full[0] = theta0
    s_max = 2.0 ** (spec.state_bits - 1) - 1
    coef_lim = 2.0 ** (spec.coef_bits - 1) - 1
    # v' = P(v) + c must fit the state for every v of the range, not only v itself: an expanding
    # polynomial maps the range outside itself.
    grid = np.linspace(-v_abs, v_abs, 513)
    distinct = _distinct_columns(theta_full)  # the same maxima, evaluated once per distinct polynomial
    p_max = float(np.abs(horner(distinct[:, None, :],
                                np.broadcast_to(grid[:, None], (grid.size, distinct.shape[1])))).max())
    p_max *= 1.01  # the grid may miss the true maximum between points
    q_min = max(v_abs / s_max, (p_max + c_abs) / s_max, c_abs / s_max,
                float(np.max(np.abs(theta_full[0]))) / coef_lim, 1e-300)
    if node.graded:
        cap_note = payload_cap_note(n, node, rng, spec.max_spike_payload)
        if cap_note:
            approx.append(cap_note)
            warnings.warn(f"layer '{n}': {cap_note}", LNMDeployWarning, stacklevel=3)
    current_bias = None
    if register:  # the register holds rint(b / q) (state LSBs)
        current_bias = np.asarray(layer.scaled_bias, np.float64).reshape(-1)
        q_min = max(q_min, float(np.max(np.abs(current_bias))) / min(-spec.c_bias[0], spec.c_bias[1]))
    return Selection(n, node, "poly", syns, theta_full, v_th, v_abs, c_abs, q_min, rounding,
                     poly_max=p_max, distinct=distinct, approximations=tuple(approx), current_bias=current_bias)


def uses_current_bias(layer: MappedLayer, c_bias: tuple[int, int]) -> bool:
    """Whether the polynomial lowering puts ``layer``'s constant input into the current-bias
    register (``FxPoly.c_bias``, range ``c_bias``): a non-zero bias into a synaptic current, on a
    target whose register exists and holds both signs (``c_bias[0] < 0 < c_bias[1]``; absent:
    (0, 0)). Without a synapse the bias adds to ``v`` exactly through ``coef[0]``, as before."""
    node = _neuron(layer.node)
    return bool(node.syn_decay is not None and np.any(layer.scaled_bias != 0) and c_bias[0] < 0 < c_bias[1])


def payload_cap(node: Neuron, cap: int) -> int:
    """The integer neuron's ``max_payload`` for a float layer's ``max_spikes`` on a target whose
    ``[poly] max_spike_payload`` is ``cap``: 1 for binary spikes, else ``max_spikes`` capped at
    ``cap`` (None, unbounded: ``cap``)."""
    if not node.graded:
        return 1
    return cap if node.max_spikes is None else min(int(node.max_spikes), cap)


def payload_cap_note(name: str, node: Neuron, rng: NeuronRange, cap: int) -> str:
    """The approximation of lowering a graded layer's ``max_spikes`` (None or above ``cap``) with the
    target's cap, when the calibration data may reach it: ``floor(v_pre_max / min v_th)`` (capped
    by ``max_spikes``) is the float model's largest count there with one threshold per layer, and
    a bound on it with per-neuron thresholds (the note then says "may reach"); "" when it stays
    within ``cap`` (then the cap changes nothing on that data)."""
    v_th = float(np.min(node.v_th)) if node.v_th is not None else 0.0
    if v_th <= 0 or rng.v_pre_max < v_th:
        return ""
    reached = math.floor(rng.v_pre_max / v_th)
    if node.max_spikes is not None:
        reached = min(reached, int(node.max_spikes))
    if reached <= cap:
        return ""
    limit = "unbounded" if node.max_spikes is None else str(node.max_spikes)
    uniform = node.v_th is not None and bool(np.all(node.v_th == v_th))
    # one threshold: the neuron with the largest v_pre has the largest count, exactly; per-neuron
    # thresholds: the layer's largest v_pre over its smallest v_th only bounds it
    reach = (f"reaches {reached} (v_pre up to {rng.v_pre_max:.4g}, v_th {v_th:.4g})" if uniform else
             f"may reach up to {reached} (an upper bound: the layer's largest v_pre {rng.v_pre_max:.4g} over its "
             f"smallest v_th {v_th:.4g})")
    return (f"graded spikes capped at {cap} per step (the target's [poly] max_spike_payload; max_spikes "
            f"{limit}): the calibration data {reach}, so larger counts are sent as {cap} and the subtractive "
            f"reset removes only {cap} v_th")


def plan_lif(sel: Selection, target: Target, weight_clip: WeightClip) -> ScalePlan:
    """Pass 3 for the stock LIF: ``q`` and the synapses' integers (exponent ``weight_exp + act_shift``)."""
    spec = target.lif
    assert spec is not None
    q, in_shift, plans = plan_synapses(sel.name, list(sel.synapses), target, sel.q_min, spec.act_shift,
                                       weight_clip, (0, 0))
    return ScalePlan(sel.name, q, in_shift, tuple(plans))


def plan_poly(sel: Selection, target: Target, weight_clip: WeightClip) -> ScalePlan:
    """Pass 3 for the polynomial neuron: ``q``, the synapses' integers, the left shift and the
    Horner shifts with their register bounds."""
    pspec = target.poly
    assert pspec is not None and sel.distinct is not None
    q, in_shift, plans = plan_synapses(sel.name, list(sel.synapses), target, sel.q_min, 0, weight_clip,
                                       pspec.in_shift)
    shifts, bounds = _poly_shifts(sel.name, sel.distinct, q, sel.v_abs, pspec.acc_bits, pspec.coef_bits,
                                  pspec.shift)
    return ScalePlan(sel.name, q, in_shift, tuple(plans), tuple(int(s) for s in shifts),
                     tuple(float(b) for b in bounds))


def encode_poly(sel: Selection, scales: ScalePlan, target: Target) -> EncodedLayer:
    spec = target.poly
    assert spec is not None
    n, node, theta, q = sel.name, _neuron(sel.node), sel.coef, scales.q
    v_abs, c_abs, p_max = sel.v_abs, sel.c_abs, sel.poly_max
    s_max = 2.0 ** (spec.state_bits - 1) - 1
    coef_lim = 2.0 ** (spec.coef_bits - 1) - 1
    shifts, bounds = list(scales.shifts), list(scales.register_bounds)
    d = theta.shape[0] - 1
    f = np.concatenate([[0], np.cumsum(shifts)]) if d else np.array([0])
    coef = np.stack([np.rint(theta[k] * q ** (k - 1) * 2.0 ** f[k]) for k in range(d + 1)]).astype(np.int64)
    if np.any(np.abs(coef) > coef_lim):
        raise NumericError(f"polynomial coefficients need more than {spec.coef_bits} bits", node=n)
    shape = node.shape
    vth_int = np.rint(sel.v_th / q).astype(np.int64)
    v_reset_int = np.rint(node.v_reset.reshape(-1) / q).astype(np.int64)
    syn_decay = None
    if node.syn_decay is not None:
        syn_decay = np.rint((1.0 - node.syn_decay.reshape(-1)) * 2**spec.decay_bits).astype(np.int64)
        syn_decay = np.clip(syn_decay, 0, 2**spec.decay_bits)
    # Section 5.2: the spike test as is; the payload cap (payload_cap); the floor rounded to the
    # nearest state LSB like v_reset and vth (it is a value the membrane is set to, error <= q/2),
    # clipped into the state range (exact: a saturated membrane never goes below -s_max anyway).
    cap = payload_cap(node, spec.max_spike_payload)
    if cap > 1 and np.any(vth_int < 1):
        raise NumericError(f"graded spikes count v // vth and need vth >= 1 LSB, but v_th {float(np.min(sel.v_th)):.4g} "
                           f"rounds to {int(np.min(vth_int))} at the state scale {q:.4g}; raise v_th or lower the "
                           "membrane range (a smaller margin)", node=n)
    v_floor_int = None
    if node.v_floor is not None:
        v_floor_int = np.clip(np.rint(node.v_floor.reshape(-1) / q), -s_max, s_max).astype(np.int64)
    rules: dict[str, Any] = {}
    if node.threshold != ">" or cap != 1 or v_floor_int is not None:
        rules = {"threshold": node.threshold, "max_payload": cap,
                 "v_floor": None if v_floor_int is None else v_floor_int.reshape(shape)}
    deq_rules: dict[str, Any] = {} if not rules else {
        "threshold": node.threshold, "max_spikes": cap,
        "v_floor": None if v_floor_int is None else (v_floor_int * q).reshape(shape)}
    fx = FxPoly(shape=shape, coef=coef.reshape(d + 1, *shape), shifts=tuple(int(s) for s in shifts),
                vth=vth_int.reshape(shape), v_reset=v_reset_int.reshape(shape), reset=node.reset,
                in_shift=scales.in_shift, syn_decay=None if syn_decay is None else syn_decay.reshape(shape),
                rounding=sel.rounding, overflow="saturate", state_bits=spec.state_bits, acc_bits=spec.acc_bits,
                coef_bits=spec.coef_bits, decay_bits=spec.decay_bits, **rules)
    current_bias = synapse_bias = None
    if sel.current_bias is not None:  # the current-bias register
        c_bias, current_bias = encode_current_bias(n, sel.current_bias, q, spec.c_bias, node.syn_decay)
        fx = dataclasses.replace(fx, c_bias=c_bias.reshape(shape))
        synapse_bias = (c_bias * q).reshape(shape)
    # Dequantized float neuron: the integers times their scales.
    theta_q = np.stack([coef[k] / (q ** (k - 1) * 2.0 ** f[k]) for k in range(d + 1)])
    ir = Neuron(shape=shape, poly=theta_q.reshape(d + 1, *shape), v_th=(vth_int * q).reshape(shape),
                v_reset=(v_reset_int * q).reshape(shape), reset=node.reset,
                syn_decay=None if syn_decay is None else (1.0 - syn_decay / 2**spec.decay_bits).reshape(shape),
                dt=node.dt, **deq_rules)
    plans = scales.synapses
    rec = LayerRecord(
        name=n, primitive="poly", q=q, exponents={p.synapse.name: p.weight_exp for p in plans},
        in_shift=scales.in_shift, weight_scale={p.synapse.name: p.real_per_lsb for p in plans},
        weight_clipped={p.synapse.name: p.clipped for p in plans}, shifts=list(shifts),
        proof={
            "membrane_bound_real": v_abs, "membrane_bound_int": v_abs / q, "state_limit": s_max,
            "current_bound_int": c_abs / q,
            "horner_register_bounds": bounds, "register_limit": 2.0 ** (spec.acc_bits - 1) - 1,
            "max_abs_coef": int(np.max(np.abs(coef))), "coef_limit": int(coef_lim),
            "polynomial_plus_current_bound_int": (p_max + c_abs) / q,
            "holds": bool(v_abs / q <= s_max and c_abs / q <= s_max and (p_max + c_abs) / q <= s_max
                          and all(b <= 2.0 ** (spec.acc_bits - 1) - 1 for b in bounds)),
        },
        approximations=list(sel.approximations),
    )
    if current_bias is not None:
        rec.proof["current_bias"] = current_bias
    return EncodedLayer(fx, ir, rec, scales, synapse_bias=synapse_bias)


def encode_current_bias(name: str, bias: Array, q: float, c_range: tuple[int, int],
                        syn_decay: Array | None) -> tuple[Array, dict[str, Any]]:
    """The current-bias register of a layer: ``c_bias = rint(b / q)`` (int64, flat), ``b`` the
    constant input per step (real current into v, flat), rounded to nearest (half to even) on the
    current's grid, the state scale ``q`` (real per LSB); and what the layer record says of it:
    the scale, the rounding, the largest integer, the largest error per step and at the steady
    state (``/ (1 - alpha)``), the neurons whose non-zero bias rounds to 0 (also warned,
    ``LNMDeployWarning``). ``NumericError`` when it exceeds the register's range ``c_range``."""
    scale = q
    b = np.asarray(bias, np.float64).reshape(-1)
    c_bias = np.rint(b / scale).astype(np.int64)
    if c_bias.size and (c_bias.min() < c_range[0] or c_bias.max() > c_range[1]):
        raise NumericError(f"the current bias needs [{c_bias.min()}, {c_bias.max()}] state LSBs "
                           f"({scale:.3g} per LSB); the register holds {list(c_range)}", node=name)
    err = np.abs(c_bias * scale - b)
    alpha = np.zeros_like(b) if syn_decay is None else np.asarray(syn_decay, np.float64).reshape(-1)
    lost = np.flatnonzero((b != 0) & (c_bias == 0))
    if lost.size:
        warnings.warn(f"layer '{name}': the current bias of {lost.size} neuron(s) rounds to 0 at the state "
                      f"scale {scale:.3g} (largest lost |bias| {float(np.max(np.abs(b[lost]))):.3g} per step)",
                      LNMDeployWarning, stacklevel=4)
    return c_bias, {
        "register": "c_bias", "scale_real_per_lsb": scale,
        "rounding": "nearest (half to even) on the current's grid, the state scale q",
        "max_abs_int": int(np.max(np.abs(c_bias))) if c_bias.size else 0,
        "max_abs_error_real_per_step": float(err.max()) if err.size else 0.0,
        "max_abs_error_real_steady_state": float(np.max(err / np.maximum(1.0 - alpha, 1e-12))) if err.size else 0.0,
        "rounded_to_zero": [int(i) for i in lost],
    }


def encode_bias(name: str, bias: Array, q: float, mant: tuple[int, int], exp: tuple[int, int],
                what: str) -> tuple[Array, int]:
    """A stock neuron's constant input ``bias`` (real, per neuron) as ``bias_mant << bias_exp``
    state LSBs of ``q``: the smallest layer exponent (``exp`` range) that holds every mantissa in
    ``mant``, the mantissas rounded to nearest there; ``NumericError`` naming the layer when no
    exponent in range does, and a warning naming the neurons whose bias rounds to 0
    (``warn_lost_bias``). ``what``: the neuron's name for the message."""
    bias_int = np.rint(bias / q).astype(np.int64)
    bias_exp = 0
    lo, hi = mant
    while np.any((bias_int >> bias_exp) > hi) or np.any((bias_int >> bias_exp) < lo):
        bias_exp += 1
    if bias_exp > exp[1]:
        raise NumericError(f"the bias does not fit the {what}'s bias mantissa and exponent", node=name)
    bias_mant = np.clip(np.rint(bias_int / 2.0**bias_exp), lo, hi).astype(np.int64)
    warn_lost_bias(name, bias, bias_mant, bias_exp, q)
    return bias_mant, bias_exp


#: Constant inputs below this many state LSBs per step are not warned about as lost (``warn_lost_bias``).
BIAS_NOISE = 1e-9


def warn_lost_bias(name: str, bias: Array, bias_mant: Array, bias_exp: int, q: float) -> list[int]:
    """Warn (``LNMDeployWarning``) naming the neurons whose constant input (``bias``, real, flat)
    is non-zero but whose integer mantissa is 0: the stock LIF has one ``bias_exp`` per layer, set
    by the layer's largest bias, so a bias below ``2^bias_exp q / 2`` is lost. A bias below
    ``BIAS_NOISE`` state LSBs counts as zero (rounding residue of a fit, not a bias: it would take
    a billion steps to move the membrane by one LSB). Returns their flat indices."""
    b = np.asarray(bias, dtype=np.float64).reshape(-1)
    lost = np.flatnonzero((np.abs(b) > BIAS_NOISE * q) & (np.asarray(bias_mant).reshape(-1) == 0))
    if lost.size:
        shown = ", ".join(str(int(i)) for i in lost[:10]) + (", ..." if lost.size > 10 else "")
        warnings.warn(
            f"layer '{name}': the bias of {lost.size} neuron(s) rounds to 0 on the stock LIF and is lost "
            f"(flat indices {shown}; largest lost |bias| {float(np.max(np.abs(b[lost]))):.3g}, resolution "
            f"{2.0 ** bias_exp * q:.3g} = 2^{bias_exp} (one bias_exp per layer, set by its largest bias) "
            f"times the state scale {q:.3g}); give the layer biases of similar size or use a target with "
            "the polynomial neuron", LNMDeployWarning, stacklevel=4)
    return [int(i) for i in lost]


def encode_lif(sel: Selection, scales: ScalePlan, target: Target) -> EncodedLayer:
    spec = target.lif
    assert spec is not None
    n, node, lin, q = sel.name, _neuron(sel.node), sel.coef, scales.q
    approx = list(sel.approximations)
    s_max = 2.0 ** (spec.state_bits - 1) - 1
    unity = 2**spec.decay_bits
    dv, du = lif_decays(lin, node, spec.dv, spec.du, unity, approx)
    vth = int(np.rint(float(np.mean(sel.v_th)) / (q * 2.0**spec.vth_shift)))
    bias_mant, bias_exp = encode_bias(n, lin[0], q, spec.bias_mant, spec.bias_exp, "LIF")
    shape = node.shape
    fx = FxLIF(shape=shape, du=du, dv=dv, vth=vth, bias_mant=bias_mant.reshape(shape), bias_exp=bias_exp,
               state_bits=spec.state_bits, decay_bits=spec.decay_bits, vth_shift=spec.vth_shift,
               act_shift=spec.act_shift)
    bias_real = bias_mant * 2.0**bias_exp * q
    ir = Neuron(shape=shape, poly=np.stack([bias_real, np.full_like(bias_real, 1.0 - dv / unity)]).reshape(2, *shape),
                v_th=np.full(shape, vth * 2.0**spec.vth_shift * q), v_reset=np.zeros(shape), reset="value",
                syn_decay=None if node.syn_decay is None else np.full(shape, (unity - du - 1) / unity),
                dt=node.dt)
    plans = scales.synapses
    v_abs, c_abs = sel.v_abs, sel.c_abs
    rec = LayerRecord(
        name=n, primitive="lif", q=q, exponents={p.synapse.name: p.weight_exp for p in plans}, in_shift=0,
        weight_scale={p.synapse.name: p.real_per_lsb for p in plans},
        weight_clipped={p.synapse.name: p.clipped for p in plans},
        proof={"membrane_bound_real": v_abs, "membrane_bound_int": v_abs / q, "state_limit": s_max,
               "current_bound_int": c_abs / q, "vth": vth, "vth_limit": spec.vth[1], "du": du, "dv": dv,
               "bias_exp": bias_exp,
               "holds": bool(v_abs / q <= s_max and c_abs / q <= s_max)},
        fit=dict(sel.fit), approximations=approx,
    )
    for a in approx:
        warnings.warn(f"layer '{n}': {a}", LNMDeployWarning, stacklevel=3)
    return EncodedLayer(fx, ir, rec, scales)


def spike_rule_unsupported(node: Node) -> str:
    """Why the stock LIF cannot run ``node``'s spike rule exactly ("" when it can): it tests
    ``v > vth * 2^6``, emits one spike per step and has no membrane floor. ``>=`` is refused, not
    approximated: ``v >= vth * 2^6`` is ``v > vth * 2^6 - 1``, which is not a multiple of 2^6, and
    the integer membrane lands exactly on the threshold whenever the float one does (weights and
    threshold share the state grid), so every such tie would spike one step late or not at all."""
    why = []
    test = getattr(node, "threshold", ">")
    if test != ">":
        why.append(f"the spike test v {test} v_th (the integer neuron tests v > v_th)")
    if getattr(node, "graded", False):
        why.append("graded spikes (max_spikes != 1; the integer neuron emits one spike per step)")
    if getattr(node, "v_floor", None) is not None:
        why.append("a membrane floor (v_floor)")
    return "; ".join(why)


def poly_rule_unsupported(node: Node, target: Target) -> str:
    """Why the target's polynomial neuron cannot run ``node``'s spike rule ("" when it can): it
    runs ``>=``, the floor and graded spikes (``docs/fixed-point.md`` 5.2), the last only where the
    target's ``[poly] max_spike_payload`` exceeds 1."""
    spec = target.poly
    if getattr(node, "graded", False) and (spec is None or spec.max_spike_payload <= 1):
        return (f"graded spikes (max_spikes != 1), and target '{target.name}' declares no graded spike payload "
                "([poly] max_spike_payload = 1)")
    return ""


def _applies_lif(layer: MappedLayer, target: Target) -> bool:
    # A bias into a synaptic current is folded at its steady state on the stock LIF: not exact,
    # so a target whose polynomial neuron has the current-bias register takes such a layer there.
    poly = target.poly if target.offers("poly") else None
    register = poly is not None and uses_current_bias(layer, poly.c_bias)
    return (target.offers("lif") and not spike_rule_unsupported(layer.node)
            and ((lif_exact(layer.node) and not register) or not target.offers("poly")))


def _applies_poly(layer: MappedLayer, target: Target) -> bool:
    return target.offers("poly") and not poly_rule_unsupported(layer.node, target)


def _why_not(layer: MappedLayer, target: Target) -> str:
    why = spike_rule_unsupported(layer.node)
    if why:
        return (f"{why}: the stock LIF tests v > vth * 2^6 (v >= would be v > vth * 2^6 - 1, not expressible), "
                "sends one spike per step and has no floor; deploy on a target with the programmable "
                "neuron (--target loihi2), which runs them exactly, or, knowingly approximating the "
                "framework, read the graph with --threshold '>' --spikes single and no --v-floor")
    return "does not apply to this layer"


def _why_not_poly(layer: MappedLayer, target: Target) -> str:
    why = poly_rule_unsupported(layer.node, target)
    return f"{why}; deploy on --target loihi2" if why else "does not apply to this layer"


LIF_LOWERING = register_lowering(Lowering(
    "neuron", "lif", applies=_applies_lif, select=select_lif, plan=plan_lif, encode=encode_lif,
    input_gain=neuron_input_gain, preference=0, why_not=_why_not,
    description="stock LIF: where exact, or fitted where the target has no polynomial neuron"))
POLY_LOWERING = register_lowering(Lowering(
    "neuron", "poly", applies=_applies_poly, select=select_poly, plan=plan_poly, encode=encode_poly,
    input_gain=neuron_input_gain, preference=10, why_not=_why_not_poly, description="programmable polynomial neuron"))
