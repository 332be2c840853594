"""Quantization as passes: float graph -> mapped graph -> per-layer choices -> scales -> integers.

The quantizer (``lnm_deploy.calibrate.quantize.quantize``) is four passes with typed records
between them; each later pass reads only the records of the earlier ones:

1. ``fold(graph) -> MappedGraph`` (target- and data-independent, still float): per neuron layer
   its synapses (``Synapse``: kind dense / conv, spike source, delayed or not, the composed float
   weight per unit spike, flatten, conv parameters) and its constant input (the chains' biases).
   A chain of stateless linear nodes (Affine, Conv2d, pooling, Flatten, Scale) from a spike source
   ending in an Affine becomes one Dense (its matrix composed exactly from the chain); a lone
   Conv2d a Conv; a lone pooling a unit-weight depthwise Conv; a chain of Conv2d and pooling into
   a spatial layer one exact Conv (``compose_conv_chain``). Computed once per calibration: the
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

import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lnm_deploy.calibrate.lowering import choose_lowering, input_gain, lowering_of
from lnm_deploy.errors import LNMDeployWarning, NumericError, UnsupportedError
from lnm_deploy.execute.float_exec import stateless_step
from lnm_deploy.fixedpoint import (
    FxConv2d,
    FxDense,
    FxFlatten,
    FxGraph,
    FxInput,
    FxNeuron,
    FxNode,
    FxOutput,
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
    Node,
    Output,
    Scale,
    SumPool2d,
    node_types,
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
    node: Node
    synapses: tuple[Synapse, ...]
    bias: Array
    gain: Array
    scaled_synapses: tuple[Synapse, ...]
    scaled_bias: Array


@dataclass(frozen=True)
class MappedGraph:
    """A float graph folded onto synapses and neuron layers (pass 1 of the quantizer).

    ``graph``: the float graph it was folded from; ``input`` / ``input_shape``: its Input node;
    ``output`` / ``readout``: its Output node and the neuron layer that Output reads (spiking, or a
    non-spiking readout whose membrane is the output); ``layers``:
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
    node: Node
    primitive: str
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
    #: (poly with a synapse, on a target with a current-bias register) the layer's constant input
    #: per step into the synaptic current (real current into v, flat (N,)): kept out of ``coef[0]``
    #: and encoded in the register (``FxPoly.c_bias``); None where it is folded into ``coef[0]``.
    current_bias: Array | None = None


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
    ir: Node
    record: LayerRecord
    plan: ScalePlan
    #: The constant the layer's synapses add per step in the dequantized graph (real, neuron-shaped:
    #: the current-bias register times its scale), on the bias of its first same-step synapse; None.
    synapse_bias: Array | None = None


# ------------------------------------------------------------------------------------------------
# Pass 1: fold synapse chains


def _chain(graph: Graph, start: str, sched_inputs: dict[str, tuple[tuple[str, bool], ...]],
           consumer: str) -> tuple[str, list[str]]:
    """Walk back from ``start`` through single-input linear nodes (``Node.linear``) to a spike source."""
    chain: list[str] = []
    n = start
    while not graph.nodes[n].spike_source:
        node = graph.nodes[n]
        if not node.linear:
            linear = sorted(cls.__name__ for cls in node_types().values() if cls.linear)
            raise UnsupportedError(
                f"'{type(node).__name__}' feeds neuron layer '{consumer}'; only linear nodes ({', '.join(linear)}) "
                "can sit between spiking layers on a fixed-point target", node=n)
        ins = sched_inputs[n]
        if len(ins) != 1:
            raise UnsupportedError(f"a linear node between spiking layers must have one input, has {len(ins)}",
                                   node=n)
        chain.append(n)
        n = ins[0][0]
    return n, chain[::-1]


#: A lone node between two spiking layers as a convolution synapse: ``(node, input shape) ->
#: (weight (C_out, C_in/g, kH, kW) per unit spike, conv parameters, bias (C_out,) or None)``, by
#: IR kind. A chain of any other linear nodes is composed into a Dense.
ConvSynapse = Callable[[Node, tuple[int, ...]], tuple[Array, dict[str, Any], "Array | None"]]


def _conv2d_synapse(node: Node, in_shape: tuple[int, ...]) -> tuple[Array, dict[str, Any], Array | None]:
    assert isinstance(node, Conv2d)
    return node.weight.copy(), {"stride": node.stride, "padding": node.padding, "dilation": node.dilation,
                                "groups": node.groups}, node.bias


def _pool_synapse(node: Node, in_shape: tuple[int, ...]) -> tuple[Array, dict[str, Any], Array | None]:
    assert isinstance(node, (SumPool2d, AvgPool2d))
    c = in_shape[0]
    k = node.kernel_size
    scale = 1.0 / (k[0] * k[1]) if node.average else 1.0
    return np.full((c, 1, *k), scale), {"stride": node.stride, "padding": node.padding, "dilation": (1, 1),
                                        "groups": c}, None


LONE_CONV_SYNAPSES: dict[str, ConvSynapse] = {
    Conv2d.kind: _conv2d_synapse, SumPool2d.kind: _pool_synapse, AvgPool2d.kind: _pool_synapse}


#: Kinds a chain into a spatial layer may hold: composed into one convolution (``compose_conv_chain``).
#: A Scale must be one factor per channel (a BatchNorm read from NIR as Scale after a Conv2d).
COMPOSABLE_CONV_KINDS = (Conv2d.kind, SumPool2d.kind, AvgPool2d.kind, Scale.kind)


def _per_channel_scale(name: str, node: Scale, shape: tuple[int, ...], chain: list[str], consumer: str) -> Scale:
    """``node`` as one factor per channel, shape (C, 1, 1), on inputs of ``shape`` (C, H, W);
    ``UnsupportedError`` naming the chain's last node where it varies across positions."""
    full = np.broadcast_to(node.scale, shape)
    per = full.reshape(shape[0], -1)
    if not np.all(per == per[:, :1]):
        raise UnsupportedError(
            f"Scale '{name}' in synapse chain {chain} into layer '{consumer}' varies across positions; only a "
            "per-channel scale (a BatchNorm's gamma / sqrt(var + eps)) composes into a convolution",
            node=chain[-1])
    return Scale(scale=per[:, :1].reshape(shape[0], 1, 1).copy())


def compose_conv_chain(graph: Graph, chain: list[str], in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                       consumer: str) -> tuple[Array, dict[str, Any], Array]:
    """One convolution equal to a chain of Conv2d / SumPool2d / AvgPool2d nodes (in order) on
    inputs of ``in_shape`` (C_in, H, W), e.g. SumPool2d -> Conv2d (Sinabs, snnTorch's CNN order) or
    Conv2d -> AvgPool2d.

    Composition (per spatial axis, nodes i = 1..n with kernel k_i, stride s_i, padding p_i and
    J_i = s_1 ... s_(i-1)): kernel ``K = 1 + sum (k_i - 1) J_i``, stride ``S = s_1 ... s_n``,
    padding ``P = sum p_i J_i``. The kernel is the chain's response (paddings removed) to each unit
    input of a ``C_in x K`` window; a chain of poolings alone stays depthwise (groups = C_in). The
    result is then checked against the chain itself, paddings included, on the zero input (the
    bias must be one constant per output channel) and on two random probes (float64, tolerance
    1e-9 of the output scale): a linear map that agrees on random probes is the same map.

    Returns ``(weight (C_out, C_in/g, K_h, K_w) per unit input, conv parameters, bias (C_out,))``.
    ``UnsupportedError`` naming the chain's last node where a node is not composable (naming the
    kinds that are), a dilation is not 1, or the composed convolution differs from the chain (a
    pooled size that does not divide by the window at a padded border, padding after a biased or
    overlapping stage): the message gives the reason and the fix."""
    import dataclasses

    nodes: list[Any] = [graph.nodes[n] for n in chain]  # Conv2d | SumPool2d | AvgPool2d, checked below
    where = chain[-1]
    for n, node in zip(chain, nodes, strict=True):
        if node.kind not in COMPOSABLE_CONV_KINDS:
            raise UnsupportedError(
                f"synapse chain {chain} into the {len(out_shape)}-d layer '{consumer}' holds '{n}' "
                f"({type(node).__name__}); a chain into a spatial layer is composed into one convolution "
                f"and may hold only {', '.join(COMPOSABLE_CONV_KINDS)} nodes", node=where)
        if isinstance(node, Conv2d) and node.dilation != (1, 1):
            raise UnsupportedError(f"dilated Conv2d '{n}' in synapse chain {chain} cannot be composed into "
                                   "one convolution; put a neuron layer between it and the pooling", node=where)
    c_in = int(in_shape[0])
    jump, ksz, pad = [1, 1], [1, 1], [0, 0]
    bare_nodes: list[Any] = []  # for the kernel, on a window: paddings removed, Scales per channel
    shape = tuple(in_shape)
    for n, node in zip(chain, nodes, strict=True):
        if isinstance(node, Scale):
            bare_nodes.append(_per_channel_scale(n, node, shape, chain, consumer))
        else:
            bare_nodes.append(dataclasses.replace(node, padding=(0, 0)))
        shape = tuple(node.output_shape(n, shape))
        if isinstance(node, Scale):
            continue
        k = node.weight.shape[2:] if isinstance(node, Conv2d) else node.kernel_size
        stride = node.stride
        assert stride is not None
        for a in range(2):
            ksz[a] += (int(k[a]) - 1) * jump[a]
            pad[a] += int(node.padding[a]) * jump[a]
            jump[a] *= int(stride[a])

    def run(x: Array, bare: bool) -> Array:
        for n, node in zip(chain, bare_nodes if bare else nodes, strict=True):
            x = stateless_step(n, node, np.float64)(x)
        return x

    n_win = c_in * ksz[0] * ksz[1]
    basis = np.concatenate([np.zeros((1, n_win)), np.eye(n_win)]).reshape(n_win + 1, c_in, ksz[0], ksz[1])
    y = run(basis, bare=True)  # (n_win + 1, C_out, 1, 1)
    assert y.shape[2:] == (1, 1), y.shape
    c_out = y.shape[1]
    weight = (y[1:, :, 0, 0] - y[0, :, 0, 0]).T.reshape(c_out, c_in, ksz[0], ksz[1])
    groups = 1
    if not any(isinstance(node, Conv2d) for node in nodes) and c_out == c_in:
        weight = weight[np.arange(c_in), np.arange(c_in)][:, None].copy()  # depthwise (pooling, Scale)
        groups = c_in
    conv: dict[str, Any] = {"stride": (jump[0], jump[1]), "padding": (pad[0], pad[1]), "dilation": (1, 1), "groups": groups}

    def refuse(reason: str) -> UnsupportedError:
        return UnsupportedError(
            f"synapse chain {chain} ({' -> '.join(type(n).__name__ for n in nodes)}) into layer '{consumer}' "
            f"cannot be one exact convolution: {reason}; make the pooled sizes divide by the pooling "
            "window and keep padding on the first node of the chain, or put a neuron layer between the "
            "pooling and the convolution", node=where)

    zero = run(np.zeros((1, *in_shape)), bare=False)[0]
    if zero.shape != tuple(out_shape):
        raise refuse(f"the chain yields {zero.shape}, the layer has {tuple(out_shape)}")
    b = zero.reshape(zero.shape[0], -1)
    if not np.all(np.abs(b - b[:, :1]) <= 1e-9 * (1.0 + np.abs(b[:, :1]))):
        raise refuse("its constant output (the biases) differs across positions (padding after a bias)")
    bias = b[:, 0].copy()
    probes = np.random.default_rng(0).random((2, *in_shape))
    want = run(probes, bare=False) - zero
    got = stateless_step(where, Conv2d(weight=weight, **conv), np.float64)(probes)
    scale = float(np.max(np.abs(want))) if want.size else 0.0
    if got.shape != want.shape:
        raise refuse(f"the composed convolution yields {got.shape[1:]}, the chain {want.shape[1:]}")
    if not np.all(np.abs(got - want) <= 1e-9 * (1.0 + scale)):
        raise refuse("the composed convolution differs from the chain at the border (padding or a pooled "
                     "size that does not divide by the window)")
    return weight, conv, bias


def _compose_dense(graph: Graph, chain: list[str], in_shape: tuple[int, ...]) -> tuple[Array, Array]:
    """Exact matrix and constant of a linear chain on flattened spikes of ``in_shape``: the chain
    run on the zero input (the constant) and on every basis vector (column ``i`` = output on
    ``e_i`` minus the constant). A chain of Flattens ending in one Affine (a classifier head on a
    feature map) is read from the Affine's own weight with the same arithmetic (``(w[:, i] + b) -
    b``, what the basis run computes: ``e_i @ w.T`` is ``w[:, i]`` exactly), without a basis of
    ``n_in`` x ``n_in`` values."""
    nodes = [graph.nodes[n] for n in chain]
    if isinstance(nodes[-1], Affine) and all(isinstance(n, Flatten) for n in nodes[:-1]):
        w = np.asarray(nodes[-1].weight, dtype=np.float64)
        if w.shape[1] == int(np.prod(in_shape)):
            if nodes[-1].bias is None:
                return w.copy(), np.zeros(w.shape[0])
            b = np.asarray(nodes[-1].bias, dtype=np.float64)
            return (w + b[:, None]) - b[:, None], b.copy()
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
    shape = tuple(sched.shapes[neuron])
    bias = np.zeros(shape)
    syns: list[Synapse] = []
    for src, delayed in sched.inputs[neuron]:
        source, chain = _chain(graph, src, sched.inputs, neuron)
        in_shape = sched.shapes[source]
        if not chain:  # an identity skip: the source's spikes added to the layer's input
            syn = identity_synapse(source, neuron, delayed, tuple(in_shape), shape)
            while syn.name in graph.nodes or any(s.name == syn.name for s in syns):
                syn = dataclasses.replace(syn, name=f"{syn.name}_")
            syns.append(syn)
            continue
        last = graph.nodes[chain[-1]]
        if len(chain) == 1 and last.kind in LONE_CONV_SYNAPSES:
            weight, conv, b_conv = LONE_CONV_SYNAPSES[last.kind](last, tuple(in_shape))
            syns.append(Synapse(chain[-1], source, delayed, "conv", weight, conv=conv))
            if b_conv is not None:
                bias = bias + b_conv[:, None, None]
        elif len(shape) == 1:
            w, b = _compose_dense(graph, chain, in_shape)
            if w.shape[0] != shape[0]:
                raise UnsupportedError(f"synapse chain {chain} yields {w.shape[0]} values, layer has "
                                       f"{shape[0]}", node=neuron)
            syns.append(Synapse(chain[-1], source, delayed, "dense", w, flatten=len(in_shape) > 1))
            bias = bias + b
        else:
            weight, conv, b_conv = compose_conv_chain(graph, chain, tuple(in_shape), tuple(shape), neuron)
            syns.append(Synapse(chain[-1], source, delayed, "conv", weight, conv=conv))
            bias = bias + b_conv[:, None, None]
    depth = source_depths(sched)
    syns.sort(key=lambda s: (s.delayed, -depth.get(s.source, 0), s.name))
    return syns, bias


def identity_synapse(source: str, neuron: str, delayed: bool, in_shape: tuple[int, ...],
                     shape: tuple[int, ...]) -> Synapse:
    """The synapse of an identity skip (spikes of ``source`` added unweighted to ``neuron``'s
    input, an edge with no linear node between): weight 1 per spike, lowered exactly as one
    integer weight shared by every connection: a depthwise 1x1 convolution (C, 1, 1, 1) for a
    spatial layer (C, H, W) (no C x C matrix: the fan-in is 1), an identity matrix (N, N) for a
    1-d layer. Named ``<source>_to_<neuron>`` (the integer synapse node takes that name).
    ``UnsupportedError`` naming the layer where the shapes differ (add a 1x1 convolution or a
    Linear layer that maps one onto the other)."""
    if tuple(in_shape) != tuple(shape):
        raise UnsupportedError(
            f"identity skip from '{source}' {tuple(in_shape)} into a layer of shape {tuple(shape)}: the "
            "shapes differ; project the skip with a 1x1 Conv2d (stride for a smaller map) or a Linear layer",
            node=neuron)
    name = f"{source}_to_{neuron}"
    if len(shape) == 3:
        c = int(shape[0])
        return Synapse(name, source, delayed, "conv", np.ones((c, 1, 1, 1)),
                       conv={"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": c})
    n = int(np.prod(shape))
    return Synapse(name, source, delayed, "dense", np.eye(n), flatten=len(in_shape) > 1)


def source_depths(sched: Any) -> dict[str, int]:
    """Longest feed-forward path (in edges) from the input to every node of a schedule: the order
    in which a layer's synapses are planned (deepest source first, then fresh before delayed, then
    by name) depends on the graph, never on the order its edges are listed."""
    depth: dict[str, int] = {}
    for n in sched.order:
        fresh = [depth[s] + 1 for s, delayed in sched.inputs[n] if not delayed and s in depth]
        depth[n] = max(fresh, default=0)
    return depth


def _map_layer(graph: Graph, name: str, sched: Any) -> MappedLayer:
    node = graph.nodes[name]
    syns, bias = _layer_synapses(graph, name, sched)
    # The real current into the state per unit of the synapse output, as the lowering defines it
    # (the Neuron's: in_gain, x syn_gain with a synapse).
    gain = input_gain(node, name)
    if any(s.kind == "conv" for s in syns):
        per_channel = gain.reshape(gain.shape[0], -1)
        if not np.all(per_channel == per_channel[:, :1]):
            raise UnsupportedError("the input gain (in_gain, x syn_gain with a synapse) varies within a channel; "
                                   "a convolution shares its weights over positions: make it per channel",
                                   node=name)
    scaled = tuple(Synapse(s.name, s.source, s.delayed, s.kind,
                           s.weight * (gain.reshape(-1)[:, None] if s.kind == "dense"
                                       else gain.reshape(gain.shape[0], -1)[:, 0][:, None, None, None]),
                           s.flatten, s.conv) for s in syns)
    return MappedLayer(name, node, tuple(syns), bias, gain, scaled, gain * bias)


def fold(graph: Graph) -> MappedGraph:
    """Pass 1: fold ``graph``'s synapse chains onto its neuron layers (see the module docstring).

    The neuron layers are the stateful nodes (``Node.stateful``); each must emit spikes (but the
    readout: the layer the Output reads may be non-spiking, its membrane the output) and have a
    registered lowering of its kind (``lnm_deploy.calibrate.lowering``), which gives its input gain.

    ``UnsupportedError`` (node named) for a non-spiking layer other than the readout (the layer
    the Output reads, feeding nothing else), a layer kind with no lowering, an Output that does
    not read one neuron layer, a non-linear node or a fan-in between spiking
    layers, spikes feeding a layer with no weights between, or a chain into a spatial layer that is
    not one exact convolution (``compose_conv_chain``)."""
    sched = graph.schedule()
    neurons = [n for n in sched.order if graph.nodes[n].stateful]
    out_src = sched.inputs[sched.output_node]
    readout = out_src[0][0] if len(out_src) == 1 else None
    for n in neurons:
        # A non-spiking (integrator) layer is the network's readout only (its membrane is the
        # output; lnm_deploy.li_readout): read by the Output and by nothing else.
        if not graph.nodes[n].emits_spikes and (n != readout or any(s == n and d != sched.output_node
                                                                    for s, d in graph.edges)):
            raise UnsupportedError("a non-spiking (integrator) layer has a fixed-point primitive only as the "
                                   "network's readout (the layer the Output reads, feeding nothing else); "
                                   "read out spikes here instead", node=n)
    if readout is None or readout not in neurons:
        raise UnsupportedError("the Output must read one neuron layer (spiking, or a non-spiking readout) on a "
                               "fixed-point target", node=sched.output_node)
    layers = {n: _map_layer(graph, n, sched) for n in neurons}
    return MappedGraph(graph, sched.input_node, tuple(sched.shapes[sched.input_node]), sched.output_node,
                       readout, layers)


def fold_layer(graph: Graph, name: str) -> MappedLayer:
    """Pass 1 for the one neuron layer ``name`` (``fold(graph).layers[name]`` holds the same),
    for a caller that needs one layer of a graph it has not folded."""
    return _map_layer(graph, name, graph.schedule())


def find_synapses(graph: Graph, neuron: str) -> tuple[list[Synapse], Array]:
    """The synapses of ``neuron`` and their summed constant input (biases), neuron-shaped: pass 1
    for one layer (``fold(graph).layers[neuron]`` holds the same; the package itself reads the
    mapped graph, this stays for callers of the old name)."""
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


def floor_log2(x: float) -> int:
    return math.floor(math.log2(x))


def _check_finite(name: str, **vals: float) -> None:
    for k, v in vals.items():
        if not math.isfinite(v):
            raise NumericError(f"calibrated {k} is not finite ({v}); the float model diverges on the "
                               "calibration data", node=name)


def plan_synapses(name: str, syns: list[Synapse], target: Target, q_min: float, e_fixed: int,
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

    # The first synapse (fold orders them by the graph, not by edge order) sets the weight scale;
    # where another synapse's weights need more range than the largest exponent gives at that
    # scale, the state scale is coarsened until they fit (one scale plan for every synapse into
    # the layer, whatever synapse comes first).
    for _ in range(64):
        lossy: list[str] = []  # warnings of the plan that is kept only: a discarded scale's are not the user's
        try:
            planned = _plan_at(name, syns, target, q_min, e_fixed, weight_clip, e_range_extra, weight_grid, grid_bits,
                               lossy)
        except _NeedsCoarserScale as e:
            q_min = e.q_min
            continue
        for msg in lossy:
            warnings.warn(msg, LNMDeployWarning, stacklevel=4)
        return planned
    raise NumericError("no state scale holds every synapse's weights with the target's exponents", node=name)


class _NeedsCoarserScale(Exception):
    def __init__(self, q_min: float) -> None:
        self.q_min = q_min


def _plan_at(name: str, syns: list[Synapse], target: Target, q_min: float, e_fixed: int, weight_clip: WeightClip,
             e_range_extra: tuple[int, int], weight_grid: Callable[[Synapse], tuple[int, int, int, tuple[int, int]]],
             grid_bits: Callable[[int, int, int], int], lossy: list[str]) -> tuple[float, int, list[SynapsePlan]]:
    """One plan at state scale ``q_min`` or coarser; ``_NeedsCoarserScale`` when a later synapse
    does not fit; warnings for the user are appended to ``lossy``."""
    first = syns[0]
    step, lo, hi, (we_lo, we_hi) = weight_grid(first)
    clip = float(weight_clip(first.name, first.weight, grid_bits(step, lo, hi)))
    if clip <= 0:
        clip = float(np.max(np.abs(first.weight))) or 1.0
    lsb_min = clip / _int_limit(lo, hi)  # real weight per integer unit at full resolution
    # Exponent of the first synapse: E = weight_exp + extra + e_fixed, real = w * 2^E * q.
    e_lo = we_lo + e_range_extra[0] + e_fixed
    e_hi = we_hi + e_range_extra[1] + e_fixed
    e_best = floor_log2(lsb_min / q_min) if q_min > 0 else e_hi
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
            q_fit = amax / (hi * 2.0 ** (we_hi + extra + e_fixed))  # the coarser scale that holds them
            if q_fit > q and math.isfinite(q_fit) and q_fit / q > 1 + 1e-12:
                raise _NeedsCoarserScale(max(q_fit * (1 + 1e-9), q * 1.0000001))
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
            lossy.append(f"synapse '{s.name}': {lost:.0%} of its non-zero weights round to zero at the layer's "
                         "state scale")
        plans.append(SynapsePlan(s, w_int, int(we), real_per_lsb, clipped))
    return q, int(extra), plans


# ------------------------------------------------------------------------------------------------
# Passes 2-4: dispatched to the layer's lowering (lnm_deploy.calibrate.lowering)


def select(layer: MappedLayer, rng: NeuronRange, target: Target, *, margin: float = 1.25,
           rounding: Rounding = "nearest") -> Selection:
    """Pass 2: the primitive for ``layer`` among those ``target`` offers: the preferred registered
    lowering of its float kind that applies (``choose_lowering``), then that lowering's ``select``.

    ``rng``: the layer's calibrated ranges (real units); ``margin``: the overflow proofs hold over
    the calibrated abs-max times this. ``NumericError`` for non-finite ranges or weights;
    ``UnsupportedError`` for a target with no primitive for the layer (naming what it offers and
    the known lowerings), and what the lowering refuses (the Neuron's: negative thresholds, a
    rounding the target does not offer)."""
    n, syns = layer.name, layer.scaled_synapses
    _check_finite(n, v_min=rng.v_min, v_max=rng.v_max, v_pre_min=rng.v_pre_min, c_absmax=rng.c_absmax)
    if s_bad := [s.name for s in syns if not np.all(np.isfinite(s.weight))]:
        raise NumericError("weights are not finite", node=s_bad[0])
    return choose_lowering(layer, target).select(layer, rng, target, margin, rounding)


def plan(sel: Selection, target: Target, weight_clip: WeightClip) -> ScalePlan:
    """Pass 3: the layer's state scale, synapse integers and exponents and (polynomial) Horner
    shifts (see the module docstring), by the lowering of (``sel.node.kind``, ``sel.primitive``).
    ``NumericError`` (node named) where the target's exponents, mantissas or registers cannot
    hold them."""
    return lowering_of(sel.node.kind, sel.primitive).plan(sel, target, weight_clip)


def encode(sel: Selection, scales: ScalePlan, target: Target) -> EncodedLayer:
    """Pass 4: the integer neuron, its dequantized float node and the layer's record, by the
    lowering of (``sel.node.kind``, ``sel.primitive``). The LIF's approximations are warned
    (``LNMDeployWarning``); ``NumericError`` for coefficients or a bias the target's registers
    cannot hold."""
    return lowering_of(sel.node.kind, sel.primitive).encode(sel, scales, target)


# ------------------------------------------------------------------------------------------------
# Assembly and the whole quantizer


def _source_payload(source: str, fx_nodes: dict[str, FxNode], layers: dict[str, EncodedLayer]) -> int:
    """The largest value a synapse reading ``source`` receives: 1 (the input, a binary layer), or a
    graded layer's ``spike_payload()`` (a recurrent source may not be assembled yet: its encoding)."""
    node = layers[source].fx if source in layers else fx_nodes[source]
    return int(node.spike_payload()) if isinstance(node, FxNeuron) else 1


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
        if enc.synapse_bias is not None:  # the current-bias register, in the dequantized graph
            _put_synapse_bias(n, ir_nodes, plans, enc.synapse_bias)
        fx_nodes[n] = enc.fx
        ir_nodes[n] = enc.ir
        # The static bounds fxsim and the ONNX builder use (fixedpoint.contract), for any input
        # (binary, or a graded source's counts up to its payload: docs/fixed-point.md 5.2): which
        # wraps, corrections and saturations can act at all (docs/fixed-point.md 4.3).
        in_bound = neuron_input_bound([synapse_bounds(fx_nodes[p.synapse.name], p.synapse.name,
                                                      _source_payload(p.synapse.source, fx_nodes, layers)).out
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


def _put_synapse_bias(name: str, ir_nodes: dict[str, Node], plans: tuple[SynapsePlan, ...], bias: Array) -> None:
    """Give the dequantized Affine / Conv2d of the layer's first same-step synapse (a delayed one
    delivers nothing at step 0) the bias ``bias`` (real, neuron-shaped; per channel for a conv)."""
    s = next((p.synapse for p in plans if not p.synapse.delayed), plans[0].synapse)
    node = ir_nodes[s.name]
    if isinstance(node, Affine):
        ir_nodes[s.name] = dataclasses.replace(node, bias=np.asarray(bias, np.float64).reshape(-1))
        return
    assert isinstance(node, Conv2d)
    per_channel = np.asarray(bias, np.float64).reshape(node.weight.shape[0], -1)
    if not np.all(per_channel == per_channel[:, :1]):
        raise UnsupportedError("the current bias differs within a channel and a convolution carries one bias per "
                               "channel", node=name)
    ir_nodes[s.name] = dataclasses.replace(node, bias=per_channel[:, 0].copy())


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
