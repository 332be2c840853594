"""Quantization as passes: float graph -> mapped graph -> per-layer choices -> scales -> integers.

The quantizer (``lnm_deploy.calibrate.quantize.quantize``) is four passes with typed records
between them; each later pass reads only the records of the earlier ones:

1. ``fold(graph) -> MappedGraph`` (target- and data-independent, still float): per neuron layer
   its synapses (``Synapse``: kind dense / conv, spike source, delayed or not, the composed float
   weight per unit spike, flatten, conv parameters) and its constant input (the chains' biases).
   A chain of stateless linear nodes (Affine, Conv2d, pooling, Flatten, Scale) from a spike source
   ending in an Affine becomes one Dense (its matrix composed exactly from the chain); a lone
   Conv2d a Conv; a lone pooling a unit-weight depthwise Conv. Computed once per calibration: the
   agreement search re-runs only passes 3 and 4.
2. ``select(layer, range, target, margin=, rounding=) -> Selection``: the primitive for the layer
   among those the target offers (``target.lif`` / ``target.poly``, None when not offered): the
   stock LIF where the layer is exactly one (or the target has nothing else, then with the
   weighted least-squares LIF fit of the polynomial), else the polynomial neuron; the layer's
   coefficients in real units, the calibrated bounds times the margin, the smallest admissible
   state scale and the approximations made.
3. ``plan(selection, target, weight_clip) -> ScalePlan``: the state scale ``q`` (real membrane
   per LSB), each synapse's integer weights and exponent (``SynapsePlan``), the neuron's left
   shift and (polynomial) the Horner shifts with their register bounds (docs/calibration.md 3).
4. ``encode(selection, plan, target) -> EncodedLayer``: the integer primitive (``FxPoly`` /
   ``FxLIF``), its dequantized float ``Neuron`` and the ``LayerRecord`` (scales, proof, fit);
   ``assemble(mapped, layers, target) -> Quantized`` wires the integer and the dequantized graphs.

Scales (one state scale ``q`` per layer, real value per LSB of v). For synapse j with integer
weights ``w_j`` and exponent ``E_j`` (``weight_exp + in_shift`` for the polynomial neuron,
``weight_exp + 6`` for the stock LIF), the real current per input spike is ``w_j 2^E_j q``. The
first synapse's weight scale comes from the recipe's weight calibrator (clip / largest integer);
``E`` is the largest exponent whose ``q`` still keeps the calibrated membrane range times the
margin, the threshold and the bias inside their registers; the other synapses then get the finest
exponent that holds their weights.

Errors: ``UnsupportedError`` for a structure or choice the target cannot hold (the node named),
``NumericError`` for ranges, weights or coefficients that do not fit its registers.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np

from lnm_deploy.errors import LNMDeployWarning, NumericError, UnsupportedError
from lnm_deploy.execute.float_exec import horner, stateless_step
from lnm_deploy.fixedpoint import (
    FxConv2d,
    FxDense,
    FxFlatten,
    FxGraph,
    FxInput,
    FxLIF,
    FxNode,
    FxOutput,
    FxPoly,
    Rounding,
    dense_weight_grid,
    sign_mode_of,
)
from lnm_deploy.fixedpoint.contract import neuron_input_bound
from lnm_deploy.fixedpoint.primitives import primitive_of, synapse_bounds
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
    SumPool2d,
)
from lnm_deploy.targets import Target

Array = np.ndarray
#: A weight calibrator: ``weight_clip(synapse_name, weights, bits) -> clip``: the largest |weight|
#: to represent (>= 0, real units), chosen for ``bits``, the number of bits of the integer grid the
#: quantizer rounds that synapse to (the target's ``dense.num_weight_bits`` for Dense, its
#: ``conv.weight`` range for Conv2d).
WeightClip = Callable[[str, Array, int], float]


@dataclass
class NeuronRange:
    """Calibrated ranges of one neuron layer (real units, float executor, calibration set).

    ``v``: membrane after reset (the polynomial's argument); ``v_pre``: before the spike test;
    ``c``: synaptic current (0 without a synapse); ``input``: the layer's summed input (the
    current register holds it every step on the chip, synapse or not); ``v_values``/``v_weights``:
    the distribution of ``v`` (histogram bin centres and counts) that a LIF fit is weighted by.
    """

    v_min: float
    v_max: float
    v_pre_min: float
    v_pre_max: float
    c_absmax: float
    input_absmax: float = 0.0
    v_values: Array = field(repr=False, default_factory=lambda: np.zeros(0))
    v_weights: Array = field(repr=False, default_factory=lambda: np.zeros(0))


@dataclass
class Synapse:
    """One synapse of a neuron layer, mapped: kind, source layer, composed float parameters."""

    name: str  # the chain's last float node (the fx synapse takes its name)
    source: str  # spike source node (input or a neuron layer)
    delayed: bool
    kind: str  # "dense" | "conv"
    weight: Array  # real, per unit spike: dense (out, in_flat); conv (C_out, C_in/g, kH, kW)
    flatten: bool = False  # dense on a multi-dim source: an FxFlatten first
    conv: dict[str, Any] = field(default_factory=dict)  # stride, padding, dilation, groups


@dataclass
class LayerRecord:
    """What the quantizer chose for one neuron layer, and the proof that nothing overflows."""

    name: str
    primitive: str  # "poly" | "lif"
    q: float  # real membrane per LSB
    exponents: dict[str, int]  # per synapse: weight_exp
    in_shift: int
    weight_scale: dict[str, float]  # per synapse: real weight per integer LSB
    weight_clipped: dict[str, float]  # per synapse: fraction of weights clipped
    shifts: list[int] = field(default_factory=list)
    proof: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)  # LIF fit of a polynomial (LIF-only targets)
    approximations: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Quantized:
    """The quantizer's result."""

    fx: FxGraph
    graph: Graph  # dequantized float IR graph
    layers: dict[str, LayerRecord]




@dataclass(frozen=True)
class MappedLayer:
    """One neuron layer of the mapped graph (pass 1), float.

    ``synapses``: as read from the graph (weight = real synapse output per unit input spike;
    dense (out, in_flat), conv (C_out, C_in/g, kH, kW)); ``bias``: their summed constant output,
    neuron-shaped. ``gain``: the real current into v per unit synapse output (``in_gain`` times
    ``syn_gain`` with a synapse), neuron-shaped; ``scaled_synapses`` / ``scaled_bias``: the same
    times ``gain`` (real current into v per input spike / per step), what the later passes map."""

    name: str
    node: Neuron
    synapses: tuple[Synapse, ...]
    bias: Array
    gain: Array
    scaled_synapses: tuple[Synapse, ...]
    scaled_bias: Array


@dataclass(frozen=True)
class MappedGraph:
    """A float graph folded onto synapses and neuron layers (pass 1 of the quantizer).

    ``graph``: the float graph it was folded from; ``input`` / ``input_shape``: its Input node;
    ``output`` / ``readout``: its Output node and the spiking layer that Output reads; ``layers``:
    every neuron layer in execution order."""

    graph: Graph
    input: str
    input_shape: tuple[int, ...]
    output: str
    readout: str
    layers: dict[str, MappedLayer]


@dataclass(frozen=True)
class Selection:
    """The primitive chosen for one layer (pass 2) and what the scale planning needs.

    ``primitive``: "poly" (programmable polynomial neuron) or "lif" (stock LIF). ``coef``: the
    layer's coefficients in real units, per neuron: for "poly" the polynomial (d+1, N) with the
    constant input folded into ``coef[0]``; for "lif" the line ``coef[0] + coef[1] v`` (2, N).
    ``v_th`` (N,): thresholds (real). ``v_abs`` / ``c_abs``: the calibrated membrane / current
    bounds times the margin (real). ``q_min``: the smallest state scale (real per LSB) that keeps
    them, the threshold and the constant term inside the target's registers. ``poly_max``: (poly)
    max |P(v)| over |v| <= v_abs (with 1 % headroom); ``distinct``: (poly) the distinct
    polynomial columns of ``coef``. ``fit``: the LIF fit of a polynomial (a, b, rms_residual,
    degree, samples) where one was made; ``approximations``: what the mapping changes."""

    name: str
    node: Neuron
    primitive: Literal["poly", "lif"]
    synapses: tuple[Synapse, ...]
    coef: Array
    v_th: Array
    v_abs: float
    c_abs: float
    q_min: float
    rounding: Rounding = "nearest"
    poly_max: float = 0.0
    distinct: Array | None = None
    fit: dict[str, Any] = field(default_factory=dict)
    approximations: tuple[str, ...] = ()


@dataclass(frozen=True)
class SynapsePlan:
    """One synapse's integers (pass 3): ``weight_int`` on the target's grid, ``weight_exp``,
    ``real_per_lsb`` (real current into v per integer weight unit, ``q`` and shifts included) and
    the fraction of weights clipped."""

    synapse: Synapse
    weight_int: Array
    weight_exp: int
    real_per_lsb: float
    clipped: float

    def dequantized(self) -> Array:
        """Real weights the integer synapse applies (after the chip's weight rule)."""
        return self.weight_int.astype(np.float64) * self.real_per_lsb


@dataclass(frozen=True)
class ScalePlan:
    """The scales of one layer (pass 3): ``q`` (real membrane per LSB), the neuron's left shift
    ``in_shift`` (0 for the LIF), the synapses' plans and, for the polynomial neuron, the Horner
    ``shifts`` (``f_(k+1) - f_k``) and the register bounds of k = 0..d (integer units)."""

    name: str
    q: float
    in_shift: int
    synapses: tuple[SynapsePlan, ...]
    shifts: tuple[int, ...] = ()
    register_bounds: tuple[float, ...] = ()


@dataclass(frozen=True)
class EncodedLayer:
    """One layer's integers (pass 4): the integer neuron, its dequantized float ``Neuron`` (the
    integers times their scales) and the record of every choice."""

    fx: FxNode
    ir: Neuron
    record: LayerRecord
    plan: ScalePlan


# ------------------------------------------------------------------------------------------------
# Pass 1: fold synapse chains


_LINEAR = (Affine, Conv2d, SumPool2d, AvgPool2d, Flatten, Scale)


def _is_source(node: Node) -> bool:
    return isinstance(node, Input) or (isinstance(node, Neuron) and node.spiking)


def _chain(graph: Graph, start: str, sched_inputs: dict[str, tuple[tuple[str, bool], ...]],
           consumer: str) -> tuple[str, list[str]]:
    """Walk back from ``start`` through single-input linear nodes to a spike source."""
    chain: list[str] = []
    n = start
    while not _is_source(graph.nodes[n]):
        node = graph.nodes[n]
        if not isinstance(node, _LINEAR):
            raise UnsupportedError(
                f"'{type(node).__name__}' feeds neuron layer '{consumer}'; only Affine, Conv2d, pooling, "
                "Flatten and Scale can sit between spiking layers on a fixed-point target", node=n)
        ins = sched_inputs[n]
        if len(ins) != 1:
            raise UnsupportedError(f"a linear node between spiking layers must have one input, has {len(ins)}",
                                   node=n)
        chain.append(n)
        n = ins[0][0]
    return n, chain[::-1]


def _compose_dense(graph: Graph, chain: list[str], in_shape: tuple[int, ...]) -> tuple[Array, Array]:
    """Exact matrix and constant of a linear chain on flattened spikes of ``in_shape``."""
    n_in = int(np.prod(in_shape))
    basis = np.concatenate([np.zeros((1, n_in)), np.eye(n_in)]).reshape(n_in + 1, *in_shape)
    y = basis
    for name in chain:
        y = stateless_step(name, graph.nodes[name], np.float64)(y)
    y = y.reshape(n_in + 1, -1)
    bias = y[0].copy()
    return (y[1:] - bias).T.copy(), bias


def _layer_synapses(graph: Graph, neuron: str, sched: Any) -> tuple[list[Synapse], Array]:
    """The synapses of ``neuron`` and their summed constant input (biases), neuron-shaped."""
    node = graph.nodes[neuron]
    assert isinstance(node, Neuron)
    bias = np.zeros(node.shape)
    syns: list[Synapse] = []
    for src, delayed in sched.inputs[neuron]:
        source, chain = _chain(graph, src, sched.inputs, neuron)
        if not chain:
            raise UnsupportedError(f"spikes of '{source}' feed the layer with no weights between; add a "
                                   "Linear/Conv layer", node=neuron)
        in_shape = sched.shapes[source]
        last = graph.nodes[chain[-1]]
        if len(chain) == 1 and isinstance(last, Conv2d):
            syns.append(Synapse(chain[-1], source, delayed, "conv", last.weight.copy(), conv={
                "stride": last.stride, "padding": last.padding, "dilation": last.dilation, "groups": last.groups}))
            if last.bias is not None:
                bias = bias + last.bias[:, None, None]
        elif len(chain) == 1 and isinstance(last, (SumPool2d, AvgPool2d)):
            c = in_shape[0]
            k = last.kernel_size
            scale = 1.0 / (k[0] * k[1]) if isinstance(last, AvgPool2d) else 1.0
            syns.append(Synapse(chain[-1], source, delayed, "conv", np.full((c, 1, *k), scale), conv={
                "stride": last.stride, "padding": last.padding, "dilation": (1, 1), "groups": c}))
        elif len(node.shape) == 1:
            w, b = _compose_dense(graph, chain, in_shape)
            if w.shape[0] != node.shape[0]:
                raise UnsupportedError(f"synapse chain {chain} yields {w.shape[0]} values, layer has "
                                       f"{node.shape[0]}", node=neuron)
            syns.append(Synapse(chain[-1], source, delayed, "dense", w, flatten=len(in_shape) > 1))
            bias = bias + b
        else:
            raise UnsupportedError(
                f"synapse chain {chain} into a {len(node.shape)}-d layer: only a single Conv2d or pooling "
                "can feed a spatial layer (move pooling after a neuron layer)", node=neuron)
    return syns, bias



def _map_layer(graph: Graph, name: str, sched: Any) -> MappedLayer:
    node = graph.nodes[name]
    assert isinstance(node, Neuron)
    syns, bias = _layer_synapses(graph, name, sched)
    # The real current into v per unit of the synapse output: in_gain (x syn_gain for a synapse).
    gain = node.in_gain * (node.syn_gain if node.syn_gain is not None else 1.0)
    scaled = tuple(Synapse(s.name, s.source, s.delayed, s.kind,
                           s.weight * (gain.reshape(-1)[:, None] if s.kind == "dense"
                                       else gain.reshape(gain.shape[0], -1)[:, 0][:, None, None, None]),
                           s.flatten, s.conv) for s in syns)
    return MappedLayer(name, node, tuple(syns), bias, gain, scaled, gain * bias)


def fold(graph: Graph) -> MappedGraph:
    """Pass 1: fold ``graph``'s synapse chains onto its neuron layers (see the module docstring).

    ``UnsupportedError`` (node named) for a non-spiking layer, an Output that does not read one
    spiking layer, a non-linear node or a fan-in between spiking layers, spikes feeding a layer
    with no weights between, or a chain into a spatial layer other than one Conv2d or pooling."""
    sched = graph.schedule()
    neurons = [n for n in sched.order if isinstance(graph.nodes[n], Neuron)]
    for n in neurons:
        node = graph.nodes[n]
        assert isinstance(node, Neuron)
        if not node.spiking:
            raise UnsupportedError("non-spiking (integrator) layers have no fixed-point primitive; read out "
                                   "spikes instead", node=n)
    out_src = sched.inputs[sched.output_node]
    if len(out_src) != 1 or not isinstance(graph.nodes[out_src[0][0]], Neuron):
        raise UnsupportedError("the Output must read one spiking neuron layer on a fixed-point target",
                               node=sched.output_node)
    layers = {n: _map_layer(graph, n, sched) for n in neurons}
    return MappedGraph(graph, sched.input_node, tuple(sched.shapes[sched.input_node]), sched.output_node,
                       out_src[0][0], layers)


def find_synapses(graph: Graph, neuron: str) -> tuple[list[Synapse], Array]:
    """The synapses of ``neuron`` and their summed constant input (biases), neuron-shaped: pass 1
    for one layer (``fold(graph).layers[neuron]`` holds the same)."""
    return _layer_synapses(graph, neuron, graph.schedule())


# ------------------------------------------------------------------------------------------------
# Integer helpers


def _grid_round(x: Array, step: int, lo: int, hi: int) -> tuple[Array, float]:
    """Round ``x`` (integer units) onto the grid ``lo..hi`` by ``step``; fraction clipped."""
    q = np.rint(x / step).astype(np.int64) * step
    clipped = float(np.mean((q < lo) | (q > hi))) if q.size else 0.0
    return np.clip(q, lo, hi), clipped


def _int_limit(lo: int, hi: int) -> int:
    """Largest integer magnitude usable for both signs of a symmetric weight distribution."""
    return min(-lo, hi) if lo < 0 < hi else max(-lo, hi)


def _floor_log2(x: float) -> int:
    return math.floor(math.log2(x))


def _check_finite(name: str, **vals: float) -> None:
    for k, v in vals.items():
        if not math.isfinite(v):
            raise NumericError(f"calibrated {k} is not finite ({v}); the float model diverges on the "
                               "calibration data", node=name)


def _plan_synapses(name: str, syns: list[Synapse], target: Target, q_min: float, e_fixed: int,
                   weight_clip: WeightClip, e_range_extra: tuple[int, int]) -> tuple[float, int, list[SynapsePlan]]:
    """Choose q (state LSB, real) and per-synapse integer weights and exponents.

    ``e_fixed``: fixed part of the exponent (6 = LIF act_shift; 0 for poly); ``e_range_extra``: the
    neuron's free exponent range besides the synapse's weight_exp (poly in_shift; (0, 0) for LIF).
    Returns ``(q, in_shift, plans)``.
    """
    def weight_grid(s: Synapse) -> tuple[int, int, int, tuple[int, int]]:
        if s.kind == "dense":
            mode = sign_mode_of(s.weight)
            step, lo, hi = dense_weight_grid(target.dense.num_weight_bits[1], mode)
            return step, lo, hi, target.dense.weight_exp
        if target.conv is None:
            raise UnsupportedError(f"target '{target.name}' has no convolution", node=s.name)
        lo, hi = target.conv.weight
        return 1, lo, hi, target.conv.weight_exp

    def grid_bits(step: int, lo: int, hi: int) -> int:
        return max(1, round(math.log2((hi - lo) // step + 1)))

    first = syns[0]
    step, lo, hi, (we_lo, we_hi) = weight_grid(first)
    clip = float(weight_clip(first.name, first.weight, grid_bits(step, lo, hi)))
    if clip <= 0:
        clip = float(np.max(np.abs(first.weight))) or 1.0
    lsb_min = clip / _int_limit(lo, hi)  # real weight per integer unit at full resolution
    # Exponent of the first synapse: E = weight_exp + extra + e_fixed, real = w * 2^E * q.
    e_lo = we_lo + e_range_extra[0] + e_fixed
    e_hi = we_hi + e_range_extra[1] + e_fixed
    e_best = _floor_log2(lsb_min / q_min) if q_min > 0 else e_hi
    e = min(max(e_best, e_lo), e_hi)
    q = max(lsb_min * 2.0**-e, q_min)  # below e_lo: weights lose resolution to keep the state in range
    # Split E - e_fixed into the synapse's weight_exp and the neuron's left shift. Left shifts are
    # exact; a negative weight_exp floors the sum, so it is used only when E itself is negative.
    e_rest = e - e_fixed
    extra = min(max(e_rest, e_range_extra[0]), e_range_extra[1]) if e_rest >= 0 else e_range_extra[0]
    plans: list[SynapsePlan] = []
    for i, s in enumerate(syns):
        step, lo, hi, (we_lo, we_hi) = weight_grid(s)
        amax = float(np.max(np.abs(s.weight))) if s.weight.size else 0.0
        if i == 0:
            we = e - e_fixed - extra
        else:
            clip_s = float(weight_clip(s.name, s.weight, grid_bits(step, lo, hi))) or amax or 1.0
            # smallest exponent whose grid holds the clip: clip / (2^E q) <= max integer
            need = math.log2(clip_s / (_int_limit(lo, hi) * q)) if clip_s > 0 else we_lo
            we = math.ceil(need) - extra - e_fixed
            we = min(max(we, we_lo), we_hi)
        if not we_lo <= we <= we_hi:
            raise NumericError(f"synapse needs weight exponent {we}, target allows {we_lo}..{we_hi}", node=s.name)
        real_per_lsb = q * 2.0 ** (we + extra + e_fixed)
        w_int, clipped = _grid_round(s.weight / real_per_lsb, step, lo, hi)
        if clipped > 0 and i > 0 and we == we_hi:
            raise NumericError(
                f"weights need more range than the target's 8-bit mantissa and exponent {we_hi} give "
                f"(largest |w| {amax:.4g}, largest representable {hi * real_per_lsb:.4g})", node=s.name)
        nonzero = s.weight != 0
        lost = float(np.mean(w_int[nonzero] == 0)) if np.any(nonzero) else 0.0
        if np.any(nonzero) and lost == 1.0:
            raise NumericError(
                f"every weight rounds to zero: the layer's state scale ({q:.3g} per LSB, set by its membrane "
                f"and input range) is too coarse for weights of at most {amax:.3g} with the target's exponents "
                f"{we_lo}..{we_hi}", node=s.name)
        if lost > 0.5:
            warnings.warn(f"synapse '{s.name}': {lost:.0%} of its non-zero weights round to zero at the layer's "
                          "state scale", LNMDeployWarning, stacklevel=4)
        plans.append(SynapsePlan(s, w_int, int(we), real_per_lsb, clipped))
    return q, int(extra), plans


def _distinct_columns(theta: Array) -> Array:
    """The distinct columns (polynomials) of ``theta`` (d+1, n): a layer-wise or channel-wise
    polynomial repeated over n neurons has 1 or C. Maxima over neurons are unchanged."""
    flat = theta.reshape(theta.shape[0], -1)
    if flat.shape[1] <= 1:
        return flat
    return np.unique(flat, axis=1)


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
        cap_reg = _floor_log2(reg_lim / (tail * scale)) if tail * scale > 0 and math.isfinite(
            reg_lim / (tail * scale)) else unbounded
        cap_coef = _floor_log2(coef_lim / (tk * scale)) if tk * scale > 0 and math.isfinite(
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




# ------------------------------------------------------------------------------------------------
# Pass 2: select a primitive per layer


def _uniform(a: Array | None) -> bool:
    return a is None or bool(np.all(a == a.reshape(-1)[0]))


def select(layer: MappedLayer, rng: NeuronRange, target: Target, *, margin: float = 1.25,
           rounding: Rounding = "nearest") -> Selection:
    """Pass 2: the primitive for ``layer`` among those ``target`` offers (see the module docstring).

    ``rng``: the layer's calibrated ranges (real units); ``margin``: the overflow proofs hold over
    the calibrated abs-max times this. ``NumericError`` for non-finite ranges or weights;
    ``UnsupportedError`` for negative thresholds, a target with no neuron for the layer or a
    rounding it does not offer."""
    n, node, syns = layer.name, layer.node, layer.scaled_synapses
    _check_finite(n, v_min=rng.v_min, v_max=rng.v_max, v_pre_min=rng.v_pre_min, c_absmax=rng.c_absmax)
    if s_bad := [s.name for s in syns if not np.all(np.isfinite(s.weight))]:
        raise NumericError("weights are not finite", node=s_bad[0])
    bias_v = layer.scaled_bias  # constant current into v (no synapse) or into c
    approx: list[str] = []
    has_syn = node.syn_decay is not None
    if has_syn and np.any(bias_v != 0):
        # c = a c + W s + b: a constant input into the current reaches b / (1 - a) after a
        # transient; the chip's bias adds to v. Folded at its steady state.
        approx.append("bias entering the synaptic current folded into the membrane at its steady state "
                      "b/(1-alpha) (the first steps' transient is lost)")
        assert node.syn_decay is not None
        bias_v = bias_v / np.maximum(1.0 - node.syn_decay, 1e-12)
    theta = node.poly.reshape(node.poly.shape[0], -1)  # (d+1, N)
    theta0 = theta[0] + bias_v.reshape(-1)
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

    lif_exact = (node.degree <= 1 and node.reset == "value" and np.all(node.v_reset == 0)
                 and _uniform(node.poly[min(1, node.degree)]) and _uniform(node.v_th)
                 and (node.degree == 0 or np.all(theta[1] <= 1.0))
                 and (not has_syn or _uniform(node.syn_decay)))
    lif = target.lif
    if lif is not None and (lif_exact or target.poly is None):
        fit: dict[str, Any] = {}
        if not lif_exact:
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
    spec = target.poly
    if spec is None:
        raise UnsupportedError(f"target '{target.name}' offers no neuron for this layer", node=n)
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
    return Selection(n, node, "poly", syns, theta_full, v_th, v_abs, c_abs, q_min, rounding,
                     poly_max=p_max, distinct=distinct, approximations=tuple(approx))


# ------------------------------------------------------------------------------------------------
# Pass 3: plan scales


def plan(sel: Selection, target: Target, weight_clip: WeightClip) -> ScalePlan:
    """Pass 3: the layer's state scale, synapse integers and exponents and (polynomial) Horner
    shifts (see the module docstring). ``NumericError`` (node named) where the target's exponents,
    mantissas or registers cannot hold them."""
    if sel.primitive == "lif":
        spec = target.lif
        assert spec is not None
        q, in_shift, plans = _plan_synapses(sel.name, list(sel.synapses), target, sel.q_min, spec.act_shift,
                                            weight_clip, (0, 0))
        return ScalePlan(sel.name, q, in_shift, tuple(plans))
    pspec = target.poly
    assert pspec is not None and sel.distinct is not None
    q, in_shift, plans = _plan_synapses(sel.name, list(sel.synapses), target, sel.q_min, 0, weight_clip,
                                        pspec.in_shift)
    shifts, bounds = _poly_shifts(sel.name, sel.distinct, q, sel.v_abs, pspec.acc_bits, pspec.coef_bits,
                                  pspec.shift)
    return ScalePlan(sel.name, q, in_shift, tuple(plans), tuple(int(s) for s in shifts),
                     tuple(float(b) for b in bounds))


# ------------------------------------------------------------------------------------------------
# Pass 4: encode integers


def encode(sel: Selection, scales: ScalePlan, target: Target) -> EncodedLayer:
    """Pass 4: the integer neuron, its dequantized float neuron and the layer's record. The LIF's
    approximations are warned (``LNMDeployWarning``); ``NumericError`` for coefficients or a bias
    the target's registers cannot hold."""
    if sel.primitive == "lif":
        return _encode_lif(sel, scales, target)
    return _encode_poly(sel, scales, target)


def _encode_poly(sel: Selection, scales: ScalePlan, target: Target) -> EncodedLayer:
    spec = target.poly
    assert spec is not None
    n, node, theta, q = sel.name, sel.node, sel.coef, scales.q
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
    fx = FxPoly(shape=shape, coef=coef.reshape(d + 1, *shape), shifts=tuple(int(s) for s in shifts),
                vth=vth_int.reshape(shape), v_reset=v_reset_int.reshape(shape), reset=node.reset,
                in_shift=scales.in_shift, syn_decay=None if syn_decay is None else syn_decay.reshape(shape),
                rounding=sel.rounding, overflow="saturate", state_bits=spec.state_bits, acc_bits=spec.acc_bits,
                coef_bits=spec.coef_bits, decay_bits=spec.decay_bits)
    # Dequantized float neuron: the integers times their scales.
    theta_q = np.stack([coef[k] / (q ** (k - 1) * 2.0 ** f[k]) for k in range(d + 1)])
    ir = Neuron(shape=shape, poly=theta_q.reshape(d + 1, *shape), v_th=(vth_int * q).reshape(shape),
                v_reset=(v_reset_int * q).reshape(shape), reset=node.reset,
                syn_decay=None if syn_decay is None else (1.0 - syn_decay / 2**spec.decay_bits).reshape(shape),
                dt=node.dt)
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
    return EncodedLayer(fx, ir, rec, scales)


def _encode_lif(sel: Selection, scales: ScalePlan, target: Target) -> EncodedLayer:
    spec = target.lif
    assert spec is not None
    n, node, lin, q = sel.name, sel.node, sel.coef, scales.q
    approx = list(sel.approximations)
    s_max = 2.0 ** (spec.state_bits - 1) - 1
    unity = 2**spec.decay_bits
    b_mean = float(np.mean(lin[1]))
    if b_mean > 1.0:
        approx.append(f"decay factor {b_mean:.4g} > 1 (a growing membrane) clipped to 1 (dv = 0)")
    dv = int(np.clip(np.rint((1.0 - b_mean) * unity), spec.dv[0], spec.dv[1]))
    if node.syn_decay is not None:
        alpha = float(np.mean(node.syn_decay))
        du = int(np.clip(unity - 1 - np.rint(alpha * unity), spec.du[0], spec.du[1]))
    else:
        du = unity - 1  # u = x: no current state
    vth = int(np.rint(float(np.mean(sel.v_th)) / (q * 2.0**spec.vth_shift)))
    bias_int = np.rint(lin[0] / q).astype(np.int64)
    bias_exp = 0
    mant_lo, mant_hi = spec.bias_mant
    while np.any((bias_int >> bias_exp) > mant_hi) or np.any((bias_int >> bias_exp) < mant_lo):
        bias_exp += 1
    if bias_exp > spec.bias_exp[1]:
        raise NumericError("the bias does not fit the LIF's bias mantissa and exponent", node=n)
    bias_mant = np.clip(np.rint(bias_int / 2.0**bias_exp), mant_lo, mant_hi).astype(np.int64)
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


# ------------------------------------------------------------------------------------------------
# Assembly and the whole quantizer


def assemble(mapped: MappedGraph, layers: dict[str, EncodedLayer], target: Target) -> Quantized:
    """The integer network and the dequantized float graph from every layer's encoding (in
    ``mapped``'s layer order), the static bounds in each record, checked against ``target``'s
    design rules (``lnm_deploy.targets.check_graph``)."""
    fx_nodes: dict[str, FxNode] = {mapped.input: FxInput(shape=mapped.input_shape)}
    fx_edges: list[tuple[str, str]] = []
    ir_nodes: dict[str, Node] = {mapped.input: Input(shape=mapped.input_shape)}
    ir_edges: list[tuple[str, str]] = []
    records: dict[str, LayerRecord] = {}
    delays: set[tuple[str, str]] = set()
    for n in mapped.layers:
        enc = layers[n]
        rec = enc.record
        records[n] = rec
        plans = enc.plan.synapses
        for p in plans:
            s = p.synapse
            src_fx = s.source
            if s.flatten:
                fl = f"{s.name}_flatten"
                fx_nodes[fl] = FxFlatten()
                fx_edges.append((s.source, fl))
                ir_nodes[fl] = Flatten(start_dim=0, end_dim=-1)
                ir_edges.append((s.source, fl))
                src_fx = fl
            if s.kind == "dense":
                fx_nodes[s.name] = FxDense(weight=p.weight_int, weight_exp=p.weight_exp,
                                           num_weight_bits=target.dense.num_weight_bits[1],
                                           sign_mode=sign_mode_of(p.weight_int),
                                           out_bits=target.dense.out_bits)
                ir_nodes[s.name] = Affine(weight=p.dequantized())
            else:
                assert target.conv is not None
                fx_nodes[s.name] = FxConv2d(weight=p.weight_int, weight_exp=p.weight_exp,
                                            out_bits=target.conv.out_bits, **s.conv)
                ir_nodes[s.name] = Conv2d(weight=p.dequantized(), **s.conv)
            fx_edges += [(src_fx, s.name), (s.name, n)]
            ir_edges += [(src_fx, s.name), (s.name, n)]
            if s.delayed:  # a recurrent synapse delivers the previous step's spikes
                delays.add((s.name, n))
        fx_nodes[n] = enc.fx
        ir_nodes[n] = enc.ir
        # The static bounds fxsim and the ONNX builder use (fixedpoint.contract), for any binary
        # input: which wraps, corrections and saturations can act at all (docs/fixed-point.md 4.3).
        in_bound = neuron_input_bound([synapse_bounds(fx_nodes[p.synapse.name], p.synapse.name).out
                                       for p in plans])
        neuron_bounds = primitive_of(enc.fx, n).bounds
        assert neuron_bounds is not None
        rec.proof["input_bound_int"] = in_bound
        rec.proof["static_bounds"] = asdict(neuron_bounds(enc.fx, in_bound))

    fx_nodes[mapped.output] = FxOutput()
    fx_edges.append((mapped.readout, mapped.output))
    ir_nodes[mapped.output] = Output()
    ir_edges.append((mapped.readout, mapped.output))
    fx = FxGraph(nodes=fx_nodes, edges=fx_edges, target=target.name, delays=frozenset(delays))
    from lnm_deploy.targets import check_graph

    check_graph(fx, target)
    deq = Graph(nodes=ir_nodes, edges=ir_edges, metadata={"quantized_for": target.name},
                delays=frozenset(delays))
    deq.schedule()
    return Quantized(fx=fx, graph=deq, layers=records)


def quantize_mapped(mapped: MappedGraph, ranges: dict[str, NeuronRange], target: Target, *,
                    weight_clip: WeightClip, margin: float = 1.25, rounding: Rounding = "nearest",
                    selections: dict[str, Selection] | None = None) -> Quantized:
    """Passes 2-4 on a mapped graph, layer by layer in execution order, then ``assemble``.

    ``selections``: a cache of pass 2's results (filled here; pass the same dict to later calls
    with the same ranges, target, margin and rounding, as the agreement search does, and only
    passes 3 and 4 re-run)."""
    cache = {} if selections is None else selections
    encoded: dict[str, EncodedLayer] = {}
    for n, layer in mapped.layers.items():
        sel = cache.get(n)
        if sel is None:
            sel = cache[n] = select(layer, ranges[n], target, margin=margin, rounding=rounding)
        encoded[n] = encode(sel, plan(sel, target, weight_clip), target)
    return assemble(mapped, encoded, target)
