"""``FxGraph`` -> one ONNX model that computes ``docs/fixed-point.md`` bit for bit.

Layout of the model (documented for users in ``docs/onnx.md``):

* input: the FxInput's name, ``uint8`` binary spikes shaped (batch, time, *input_shape);
* outputs: one ``uint8`` spike tensor per neuron layer, named after the layer, shaped
  (batch, time, *shape); the FxOutput's name repeats the spikes of the layer it reads (of a
  non-spiking readout, ``Primitive.output_state``: its state, ``int64``, and the layer's entry in
  ``layers`` names it as ``output_state``; its spike tensor is all 0); with
  ``states=True`` also ``"<layer>.<state>"`` (``int64``: ``u``, ``v`` for LIF, ``v`` and ``c`` for
  the polynomial neuron), the states after the reset of every step.
* time: output step t answers input step t (the fixed-point contract's time base).

Structure. The graph is cut into strongly connected components. Every neuron layer runs in a
``Scan`` over time (scan axis 1); a component with a back edge (recurrence) runs all its nodes in
one ``Scan``, the delayed values travelling as Scan state (zero at t = 0). Synapses and Flatten
nodes outside cycles run once on the whole (batch, time, ...) tensor, like fxsim's layer engine.
``engine="step"`` puts every node in a single Scan instead (same integers, slower).

Arithmetic (all exact):

* Synapse accumulators: binary spikes times integer weights with a float32 ``MatMul`` where
  ``max_o sum_i |w[i, o]| < 2**24`` (every partial sum is then an integer float32 holds exactly,
  in any order), float64 below ``2**53``, else ``int64``; cast to ``int64`` (``_int_matmul``).
  Convolutions and sum-pooling gather their windows with ``Gather`` (im2col) first.
* Everything after the accumulator is ``int64``: ``x * 2**e`` is ``Mul``; ``trunc0(x / 2**s)`` is
  ``Div`` (integer Div truncates toward zero); ``floor(x / 2**s)`` is
  ``Div(x + 2**62, 2**s) - 2**(62-s)`` where a static bound keeps the dividend non-negative, else
  ``Div(x - Mod(x, 2**s), 2**s)`` (``Mod`` with ``fmod=0`` takes the divisor's sign); ``nearest``
  folds ``2**(s-1)`` into that; ``wrap_n`` is ``BitwiseAnd(x + 2**(n-1), 2**n - 1) - 2**(n-1)``;
  ``sat_n`` and ``corr24`` are compares and ``Where`` (onnxruntime 1.23's int64 ``Clip``, ``Max``
  and ``Min`` are wrong for some inputs below -2**31). A wrap, correction or saturation is left
  out only where a static bound proves it the identity.
"""

from __future__ import annotations

import importlib
import itertools
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from lnm_deploy.errors import DependencyError, GraphError, UnsupportedError, UserInputError
from lnm_deploy.fixedpoint import nodes as fxn
from lnm_deploy.fixedpoint.arith import F32_EXACT, F64_EXACT, exact_float
from lnm_deploy.fixedpoint.contract import (
    INPUT_BOUND,
    LIFParams,
    PolyParams,
    SynapseBounds,
    lif_bounds,
    neuron_input_bound,
    poly_bounds,
)
from lnm_deploy.fixedpoint.graph import FxGraph
from lnm_deploy.fixedpoint.primitives import (
    input_payloads,
    lookup,
    output_state,
    primitive,
    primitive_of,
    synapse_bounds,
)

if TYPE_CHECKING:
    import onnx

OPSET = 18  # the oldest opset with BitwiseAnd (onnxruntime 1.23 accepts <= 23)
IR_VERSION = 8  # the IR version of opset 18 (onnxruntime 1.23 accepts <= 11)
META_FORMAT = "lnm-deploy.onnx/1"
ENGINES = ("auto", "step")


def require(module: str = "onnx") -> Any:
    """Import ``module`` (``onnx`` or ``onnxruntime``) or raise ``DependencyError`` with the
    install hint."""
    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - exercised only without the extra
        raise DependencyError(
            f"the ONNX backend needs onnx and onnxruntime ({e}): pip install 'lnm-deploy[onnx]'"
        ) from e


def require_onnx() -> Any:
    """Import ``onnx`` or raise ``DependencyError`` with the install hint."""
    return require("onnx")


# ------------------------------------------------------------------------------- graph builder


@dataclass
class _Consts:
    """Initializers shared by the main graph and every Scan body (outer-scope names)."""

    tensors: list[Any] = field(default_factory=list)
    by_key: dict[tuple[str, tuple[int, ...], bytes], str] = field(default_factory=dict)


class Builder:
    """Collects the ONNX nodes of one graph (the main graph or a Scan body); tensor names are
    unique across the model. The API a lowering uses (``register_lowering``,
    ``register_neuron_lowering``); every value is a tensor name (``str``):

    * ``op(op_type, inputs, hint="", **attrs) -> str``: one ONNX operator (opset 18) with one
      output, named after ``hint``; ``attrs`` are its attributes (``op("Mod", [x, p], fmod=0)``).
    * ``const(value, dtype=np.int64) -> str``: an initializer (deduplicated; shared with Scan
      bodies, so a lowering may use it inside a step).
    * ``fresh(hint) -> str``: a new unique tensor name.
    * the contract's integer operations on ``int64`` tensors (``docs/fixed-point.md`` section 1),
      exact for every int64 input unless a bound is stated: ``wrap(x, bits)``, ``sat(x, bits)``
      (symmetric, ``+-(2**(bits-1) - 1)``), ``ovf(x, bits, mode)`` (``"wrap"`` or ``"saturate"``),
      ``rshift(x, s, rounding, bound=None)`` (``"floor"``, ``"trunc"``, ``"nearest"``; ``bound`` on
      ``|x|`` allows the one-``Div`` form), ``shexp(x, e, bound=None)`` (``x * 2**e`` or
      ``floor(x / 2**-e)``). Use ``Where`` and compares, never int64 ``Clip``/``Max``/``Min``
      (wrong in onnxruntime 1.23 below ``-2**31``).
    """

    def __init__(self, consts: _Consts, counter: itertools.count[int], reserved: set[str]) -> None:
        self.consts = consts
        self.counter = counter
        self.reserved = reserved
        self.nodes: list[Any] = []

    def sub(self) -> Builder:
        return Builder(self.consts, self.counter, self.reserved)

    def fresh(self, hint: str) -> str:
        while True:
            name = f"_{next(self.counter)}_{hint}"
            if name not in self.reserved:
                return name

    def const(self, value: Any, dtype: Any = np.int64) -> str:
        """An initializer holding ``value`` (deduplicated by dtype, shape and bytes)."""
        from onnx import numpy_helper

        a = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        key = (a.dtype.str, a.shape, a.tobytes())
        name = self.consts.by_key.get(key)
        if name is None:
            name = self.fresh("c")
            self.consts.by_key[key] = name
            self.consts.tensors.append(numpy_helper.from_array(a, name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str = "", *, out: str | None = None,
           **attrs: Any) -> str:
        from onnx import helper

        name = out or self.fresh(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [name], name=f"{name}/{op_type}", **attrs))
        return name

    def op_n(self, op_type: str, inputs: list[str], outputs: list[str], **attrs: Any) -> None:
        from onnx import helper

        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=self.fresh(op_type), **attrs))

    # The contract's operations (module functions below), for lowerings written elsewhere.

    def wrap(self, x: str, bits: int) -> str:
        """``wrap_bits(x)``: the two's-complement value of the low ``bits`` bits."""
        return _wrap(self, x, bits)

    def sat(self, x: str, bits: int) -> str:
        """``sat_bits(x)``: clamp to ``+-(2**(bits-1) - 1)``."""
        return _sat(self, x, bits)

    def ovf(self, x: str, bits: int, mode: str) -> str:
        """``ovf_bits(x)``: ``sat`` for ``"saturate"``, else ``wrap``."""
        return _ovf(self, x, bits, mode)

    def rshift(self, x: str, s: int, mode: str, bound: int | None = None) -> str:
        """``rnd(x, s)``: ``x / 2**s`` rounded by ``mode`` (floor, trunc, nearest half up)."""
        return _rshift(self, x, s, mode, bound)

    def shexp(self, x: str, e: int, bound: int | None = None) -> str:
        """``x * 2**e`` for ``e >= 0``, ``floor(x / 2**-e)`` otherwise."""
        return _shexp(self, x, e, bound)


# ------------------------------------------------------------------------- integer primitives


def _wrap(b: Builder, x: str, bits: int) -> str:
    """``wrap_bits(x)`` on int64: ``((x + 2**(bits-1)) & (2**bits - 1)) - 2**(bits-1)``."""
    half = 1 << (bits - 1)
    t = b.op("Add", [x, b.const(half)], "wrap")
    t = b.op("BitwiseAnd", [t, b.const((1 << bits) - 1)], "wrap")
    return b.op("Sub", [t, b.const(half)], f"wrap{bits}")


def _sat(b: Builder, x: str, bits: int) -> str:
    """``sat_bits(x)`` with Greater/Less + Where: onnxruntime 1.23's int64 Clip, Max and Min
    return wrong results for some inputs below -2**31 (measured; e.g. Max(-2**31 - 1, -8388607))."""
    m = (1 << (bits - 1)) - 1
    hi, lo = b.const(m), b.const(-m)
    t = b.op("Where", [b.op("Greater", [x, hi], "above"), hi, x], "sat")
    return b.op("Where", [b.op("Less", [t, lo], "below"), lo, t], f"sat{bits}")


def _ovf(b: Builder, x: str, bits: int, mode: str) -> str:
    return _sat(b, x, bits) if mode == "saturate" else _wrap(b, x, bits)


_OFFSET = 1 << 62


def _floor_shift(b: Builder, x: str, s: int, bound: int | None = None, add: int = 0) -> str:
    """``floor((x + add) / 2**s)`` for int64 ``x``.

    With a static ``bound`` on ``|x|`` that keeps ``x + add + 2**62`` in ``[0, 2**63)``, one
    truncating ``Div`` of that non-negative number does it (``2**62`` is a multiple of ``2**s``):
    ``Div(x + add + 2**62, 2**s) - 2**(62-s)``. Otherwise subtract the non-negative remainder
    (``Mod`` with fmod=0 takes the divisor's sign) and divide exactly.
    """
    if s == 0:
        return b.op("Add", [x, b.const(add)], "add") if add else x
    p = b.const(1 << s)
    if bound is not None and bound + abs(add) < _OFFSET:
        y = b.op("Add", [x, b.const(_OFFSET + add)], "biased")
        return b.op("Sub", [b.op("Div", [y, p], "q"), b.const(_OFFSET >> s)], f"floor{s}")
    if add:
        x = b.op("Add", [x, b.const(add)], "add")
    r = b.op("Mod", [x, p], "rem", fmod=0)
    return b.op("Div", [b.op("Sub", [x, r], "floored"), p], f"floor{s}")


def _rshift(b: Builder, x: str, s: int, mode: str, bound: int | None = None) -> str:
    """``rnd(x, s)`` of the contract: floor, trunc (toward zero) or nearest (half up)."""
    if s == 0:
        return x
    if mode == "trunc":
        return b.op("Div", [x, b.const(1 << s)], f"trunc{s}")
    if mode == "floor":
        return _floor_shift(b, x, s, bound)
    if mode == "nearest":
        return _floor_shift(b, x, s, bound, add=1 << (s - 1))
    raise UnsupportedError(f"unknown rounding {mode!r}")


def _shexp(b: Builder, x: str, e: int, bound: int | None = None) -> str:
    """``x * 2**e`` (``e >= 0``) or ``floor(x / 2**-e)``."""
    if e > 0:
        return b.op("Mul", [x, b.const(1 << e)], f"shl{e}")
    return _floor_shift(b, x, -e, bound) if e < 0 else x


def _uniform(a: np.ndarray | int) -> np.ndarray:
    """A scalar when every element is equal (smaller model, cheaper broadcasts)."""
    a = np.asarray(a, dtype=np.int64)
    return a.reshape(-1)[:1].reshape(()) if a.size and np.all(a == a.reshape(-1)[0]) else a


# ----------------------------------------------------------------------------------- synapses


def _int_matmul(b: Builder, a: str, w: np.ndarray, payload: int = 1) -> str:
    """Exact ``a @ w`` for ``uint8`` spikes ``a`` (..., K) in ``0..payload`` (0/1, or a graded
    layer's counts, ``docs/fixed-point.md`` 5.2) and integer ``w`` (..., K, M).

    Returns ``acc`` (int64) ``== a @ w``. The product
    is a float32 ``MatMul`` where ``payload * max_o sum_i |w[i, o]| < 2**24`` (every partial sum of spikes
    times integer weights is an integer float32 holds exactly, whatever the summation order), a
    float64 one below ``2**53``, else ``int64`` ``MatMul``; the result is cast to ``int64``.
    Not ``MatMulInteger``: onnxruntime 1.23.2's ``uint8`` GEMM returns wrong sums for 17 to 31
    output columns on this project's CPU (measured, ``tests/test_onnx_backend.py``).
    """
    w = np.asarray(w, dtype=np.int64)
    bound = int(np.abs(w).sum(axis=-2).max()) * int(payload) if w.size else 0
    ftype = exact_float(bound, F32_EXACT, F64_EXACT)
    if ftype is not None:
        af = b.op("Cast", [a], "spk_f", to=_dtype(np.dtype(ftype).name))
        acc = b.op("MatMul", [af, b.const(w, ftype)], "acc_f")
        return b.op("Cast", [acc], "acc", to=_dtype("int64"))
    a64 = b.op("Cast", [a], "spk64", to=_dtype("int64"))
    return b.op("MatMul", [a64, b.const(w)], "acc64")


def _finish(b: Builder, acc: str, sb: SynapseBounds, weight_exp: int, out_bits: int) -> tuple[str, int]:
    """``wrap_out(shexp(acc, weight_exp))`` with the synapse's registered bounds ``sb`` (``sb.acc``
    bounds ``|acc|``; the wrap is left out where ``sb`` proves it the identity)."""
    y = _shexp(b, acc, weight_exp, sb.acc)
    if sb.wraps:
        y = _wrap(b, y, out_bits)
    return y, sb.out


def _windows(in_shape: tuple[int, ...], out_shape: tuple[int, ...], kernel: tuple[int, int],
             stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
             groups: int) -> tuple[np.ndarray, bool]:
    """im2col indices (groups, Ho*Wo, C_in/groups*kH*kW) into the flattened (C, H, W) input;
    out-of-range positions point at index C*H*W (a zero appended by Pad). Also: any padding?"""
    c, h, w = in_shape
    _, ho, wo = out_shape
    cg = c // groups
    g_, oy, ox, ci, i, j = np.meshgrid(np.arange(groups), np.arange(ho), np.arange(wo), np.arange(cg),
                                       np.arange(kernel[0]), np.arange(kernel[1]), indexing="ij")
    y = oy * stride[0] - padding[0] + i * dilation[0]
    x = ox * stride[1] - padding[1] + j * dilation[1]
    inside = (y >= 0) & (y < h) & (x >= 0) & (x < w)
    idx = np.where(inside, ((g_ * cg + ci) * h + y) * w + x, c * h * w)
    return idx.reshape(groups, ho * wo, cg * kernel[0] * kernel[1]), bool((~inside).any())


def _gather_windows(b: Builder, s: str, lead: int, idx: np.ndarray, padded: bool) -> str:
    """(lead..., C, H, W) uint8 -> (lead..., *idx.shape) uint8 windows."""
    flat = b.op("Reshape", [s, b.const([0] * lead + [-1])], "flat")
    if padded:
        pads = [0] * (lead + 1) + [0] * lead + [1]
        flat = b.op("Pad", [flat, b.const(pads)], "padded")
    return b.op("Gather", [flat, b.const(idx)], "win", axis=lead)


def _dense(b: Builder, name: str, node: fxn.FxDense, s: str, lead: int, in_shape: tuple[int, ...],
           out_shape: tuple[int, ...], payload: int = 1) -> tuple[str, int]:
    """Section 3.1 on ``uint8`` spikes (lead..., fan_in) in ``0..payload``: an exact product with
    the effective weights."""
    acc = _int_matmul(b, s, node.effective_weight().T, payload)
    return _finish(b, acc, synapse_bounds(node, name, payload), node.weight_exp, node.out_bits)


def _conv(b: Builder, name: str, node: fxn.FxConv2d, s: str, lead: int, in_shape: tuple[int, ...],
          out_shape: tuple[int, ...], payload: int = 1) -> tuple[str, int]:
    """Section 3.2: im2col windows (``Gather``), then one exact product per group (``_int_matmul``)."""
    w = node.weight
    cout, cg, kh, kw = w.shape
    idx, padded = _windows(in_shape, out_shape, (kh, kw), node.stride, node.padding,
                           node.dilation, node.groups)
    win = _gather_windows(b, s, lead, idx, padded)  # (lead..., G, P, Cg*kh*kw)
    wg = w.reshape(node.groups, cout // node.groups, cg * kh * kw).transpose(0, 2, 1)
    acc = _int_matmul(b, win, wg, payload)  # (lead..., G, P, Cout/G)
    perm = [*range(lead), lead, lead + 2, lead + 1]
    acc = b.op("Transpose", [acc], "acc", perm=perm)
    acc = b.op("Reshape", [acc, b.const([0] * lead + list(out_shape))], "conv")
    return _finish(b, acc, synapse_bounds(node, name, payload), node.weight_exp, node.out_bits)


def _flatten(b: Builder, name: str, node: fxn.FxFlatten, s: str, lead: int, in_shape: tuple[int, ...],
             out_shape: tuple[int, ...]) -> tuple[str, int]:
    """Section 3.4: a C-order ``Reshape`` of the spikes."""
    return b.op("Reshape", [s, b.const([0] * lead + [-1])], "flatten"), 1


#: The ONNX lowering of every non-neuron compute kind: ``(builder, name, node, input, lead,
#: in_shape, out_shape) -> (output, bound)``, on (lead..., *shape) tensors; a synapse returns int64
#: values, a reshape ``uint8`` spikes. A synapse fed by a graded layer (section 5.2) is called
#: with the keyword ``payload`` (its input's largest count) as well.
LOWERINGS: dict[str, Any] = {"dense": _dense, "conv2d": _conv, "flatten": _flatten}


def _lower(b: Builder, name: str, node: fxn.FxNode, s: str, lead: int, in_shape: tuple[int, ...],
           out_shape: tuple[int, ...], payload: int = 1) -> tuple[str, int]:
    fn = lookup(LOWERINGS, primitive_of(node, name).kind, "the ONNX backend", name)
    if payload == 1 or node.role != "synapse":
        out: tuple[str, int] = fn(b, name, node, s, lead, in_shape, out_shape)
        return out
    import inspect

    if "payload" not in inspect.signature(fn).parameters:
        raise UnsupportedError(f"the ONNX lowering of {node.kind!r} reads binary spikes only, and this synapse "
                               f"is fed graded spikes (counts up to {payload}); give the lowering a 'payload' "
                               "keyword (register_lowering) or feed it a binary layer", node=name)
    out = fn(b, name, node, s, lead, in_shape, out_shape, payload=payload)
    return out


# ------------------------------------------------------------------------------------ neurons


class NeuronLowering:
    """Emits one neuron layer: the per-sequence ``prepare`` and the per-step ``step``; the base
    of every neuron lowering (``register_neuron_lowering``).

    Built as ``cls(node, in_bound)``: the ``FxNeuron`` and a static bound on its input ``|a|``
    (``a = wrap_32(sum of its synapses)``, so ``in_bound <= 2**31``). Tensors are ``int64``
    shaped (batch, *layer_shape) inside the step (one timestep of the Scan), (batch, time,
    *layer_shape) in ``prepare`` when it runs outside the Scan.

    * ``state_inits() -> {state: int64 array}``: the state before the first step, broadcastable
      to the layer shape; default ``node.<state>_init`` for each of ``node.state_names()``.
    * ``recorded() -> tuple[str, ...]``: the states output as ``"<layer>.<state>"`` (default all).
    * ``prepare(b, a, bound) -> (x, x_bound)``: an elementwise transform of the input done once per
      sequence (default: none, ``(a, bound)``); ``x`` is what ``step`` receives.
    * ``step(b, x, states) -> (spikes, new_states)``: one timestep; ``states`` maps each state name
      to its tensor of the previous step; returns the spikes as a ``bool`` tensor (a graded
      layer, ``node.spike_payload() > 1``: its counts as ``int64``, ``0..payload``) and every new
      state (after the reset) as ``int64``.
    """

    node: fxn.FxNeuron

    def __init__(self, node: fxn.FxNeuron, in_bound: int) -> None:
        self.node = node
        self.in_bound = in_bound

    def state_inits(self) -> dict[str, np.ndarray]:
        return {k: _uniform(getattr(self.node, f"{k}_init")) for k in self.node.state_names()}

    def recorded(self) -> tuple[str, ...]:
        return self.node.state_names()

    def prepare(self, b: Builder, a: str, bound: int) -> tuple[str, int]:
        return a, bound

    def step(self, b: Builder, x: str, st: dict[str, str]) -> tuple[str, dict[str, str]]:
        """One timestep: ``(spikes as bool, new states)``."""
        raise NotImplementedError


class _LIF(NeuronLowering):
    node: fxn.FxLIF

    def __init__(self, node: fxn.FxLIF, in_bound: int) -> None:
        self.node = node
        self.in_bound = in_bound

    def state_inits(self) -> dict[str, np.ndarray]:
        return {"u": _uniform(self.node.u_init), "v": _uniform(self.node.v_init)}

    def prepare(self, b: Builder, a: str, bound: int) -> tuple[str, int]:
        """``x = wrap_32(a * 2**act_shift)`` (step 2; the wrap only where ``lif_bounds`` needs it)."""
        sh = self.node.act_shift
        x = b.op("Mul", [a, b.const(1 << sh)], "act") if sh else a
        xb = lif_bounds(self.node, bound).x
        if xb >= INPUT_BOUND:
            return _wrap(b, x, 32), INPUT_BOUND
        return x, xb

    def step(self, b: Builder, x: str, st: dict[str, str]) -> tuple[str, dict[str, str]]:
        n = self.node
        c = LIFParams.of(n)  # the contract's constants: ku, kv, bias, vth_eff
        half = 1 << (c.state_bits - 1)
        unity = 1 << c.decay_bits
        ku, kv, bias = c.ku, c.kv, c.bias
        b_max = int(np.abs(bias).max(initial=0))
        # The registered bounds (docs/fixed-point.md 4.3) say which wraps, corrections and
        # saturations can change a value; the others are left out.
        lb = lif_bounds(n, self.in_bound)
        # 1-3: u = corr24(wrap32(trunc0(u * ku / 2**D) + x))
        if ku:
            ud = b.op("Div", [b.op("Mul", [st["u"], b.const(ku)], "u_ku"), b.const(unity)], "ud")
            p = b.op("Add", [ud, x], "u_in")
        else:
            p = x
        if ku and not lb.small:  # with ku == 0, p = x is already wrapped by prepare
            p = _wrap(b, p, 32)
        if lb.wrap_u:
            c2 = b.const(2 * half)
            hi = b.op("Where", [b.op("Greater", [p, b.const(half)], "u_hi"), b.op("Sub", [p, c2]), p],
                      "corr")
            p = b.op("Where", [b.op("LessOrEqual", [p, b.const(-half)], "u_lo"), b.op("Add", [p, c2]), hi],
                     "corr24")
        u = p
        # 4-5: v' = sat24(wrap32(trunc0(v * kv / 2**D) + u + bias))
        v = st["v"]
        if kv != unity:
            v = b.op("Div", [b.op("Mul", [v, b.const(kv)], "v_kv"), b.const(unity)], "vd")
        q = b.op("Add", [v, u], "v_in")
        if b_max:
            q = b.op("Add", [q, b.const(_uniform(bias))], "v_bias")
        if lb.wrap_v:
            q = _wrap(b, q, 32)
        vmax, vth_eff = half - 1, c.vth_eff
        if lb.sat_low:
            lo = b.const(-vmax)
            q = b.op("Where", [b.op("Less", [q, lo], "below"), lo, q], "sat_lo")
            if lb.sat_high:
                hi_c = b.const(vmax)
                q = b.op("Where", [b.op("Greater", [q, hi_c], "above"), hi_c, q], "sat_hi")
        vp = q
        # 6-7: spike and reset to 0
        s = b.op("Greater", [vp, b.const(vth_eff)], "spike")
        v_new = b.op("Where", [s, b.const(0), vp], "v")
        return s, {"u": u, "v": v_new}


class _Poly(NeuronLowering):
    node: fxn.FxPoly

    def __init__(self, node: fxn.FxPoly, in_bound: int) -> None:
        self.node = node
        self.params = PolyParams.of(node)  # the contract's constants (kc = 2**D - syn_decay)
        self.bounds = poly_bounds(node, in_bound)

    def state_inits(self) -> dict[str, np.ndarray]:
        out = {"v": _uniform(self.node.v_init)}
        if self.node.has_synapse:
            out["c"] = _uniform(self.node.c_init)
        return out

    def prepare(self, b: Builder, a: str, bound: int) -> tuple[str, int]:
        """``x = a * 2**in_shift (+ c_bias)`` (step 1; ``|a| <= 2**31`` and ``|c_bias| < 2**31`` keep
        it below 2**63)."""
        sh = self.node.in_shift
        x = b.op("Mul", [a, b.const(1 << sh)], "in_shift") if sh else a
        if self.node.c_bias is not None:  # the current-bias register
            x = b.op("Add", [x, b.const(_uniform(self.node.c_bias))], "c_bias")
        return x, poly_bounds(self.node, bound).x

    def step(self, b: Builder, x: str, st: dict[str, str]) -> tuple[str, dict[str, str]]:
        n = self.node
        S, R, rnd, ovf = n.state_bits, n.acc_bits, n.rounding, n.overflow
        new: dict[str, str] = {}
        if n.has_synapse:  # 2: c = ovf_S(rnd(c * (2**D - syn_decay), D) + x)
            assert self.params.kc is not None
            kc = _uniform(self.params.kc)
            c_kc = b.op("Mul", [st["c"], b.const(kc)], "c_kc")  # |c| <= 2**(S-1), kc <= 2**D
            cd = _rshift(b, c_kc, n.decay_bits, rnd, self.bounds.decay_product)
            c = _ovf(b, b.op("Add", [cd, x], "c_in"), S, ovf)
            new["c"] = c
        else:
            c = _ovf(b, x, S, ovf)
        # 3: Horner on the previous v
        d = n.degree
        h = b.const(_uniform(n.coef[d]))
        for k in range(d - 1, -1, -1):
            hv = b.op("Mul", [h, st["v"]], f"h{k}v")  # |H| <= 2**(R-1), |v| <= 2**(S-1)
            hv = _rshift(b, hv, n.shifts[k], rnd, self.bounds.horner_product)
            h = _ovf(b, b.op("Add", [hv, b.const(_uniform(n.coef[k]))], f"h{k}"), R, ovf)
        # 4-6
        vp = _ovf(b, b.op("Add", [c, h], "v_in"), S, ovf)
        vth = b.const(_uniform(n.vth))
        if n.threshold != ">" or n.graded or n.v_floor is not None:
            return self._spike_rules(b, vp, vth, new)
        s = b.op("Greater", [vp, vth], "spike")
        if n.reset == "value":
            after = b.const(_uniform(n.v_reset))
        else:
            after = _ovf(b, b.op("Sub", [vp, vth], "v_sub"), S, ovf)
        new["v"] = b.op("Where", [s, after, vp], "v")
        return s, new

    def _spike_rules(self, b: Builder, vp: str, vth: str, new: dict[str, str]) -> tuple[str, dict[str, str]]:
        """Steps 5-7 with section 5.2: the spike test, graded counts ``min(v' // vth, P)`` (int64;
        ``v' >= vth >= 1`` where it fires, so ``Div``, which truncates, is the floor there), the
        reset by ``count * vth`` and the floor."""
        n = self.node
        fired = b.op("GreaterOrEqual" if n.threshold == ">=" else "Greater", [vp, vth], "fired")
        if n.graded:
            safe = b.op("Where", [fired, vp, vth], "v_fired")  # >= vth >= 1 everywhere: Div floors
            # int64 Min/Max here see only state-range values (|x| < 2**30), where onnxruntime 1.23's
            # are right (its wrong results need inputs below -2**31)
            count = b.op("Min", [b.op("Div", [safe, vth], "count"), b.const(n.max_payload)], "count_cap")
            s = b.op("Where", [fired, count, b.const(0)], "spikes")
            sub = b.op("Mul", [s, vth], "sub")  # <= v' < 2**(S-1)
        else:
            s, sub = fired, vth
        if n.reset == "value":
            after = b.const(_uniform(n.v_reset))
        else:
            after = _ovf(b, b.op("Sub", [vp, sub], "v_sub"), n.state_bits, n.overflow)
        v = b.op("Where", [fired, after, vp], "v")
        if n.v_floor is not None:
            v = b.op("Max", [v, b.const(_uniform(n.v_floor))], "v_floor")
        new["v"] = v
        return s, new


#: The ONNX lowering of every neuron kind: ``(node, in_bound) -> NeuronLowering``.
NEURONS: dict[str, Callable[[Any, int], NeuronLowering]] = {"lif": _LIF, "poly": _Poly}


def register_lowering(kind: str, fn: Callable[..., tuple[str, int]]) -> None:
    """Register the ONNX lowering of a synapse or reshape primitive ``kind``.

    ``fn(b, name, node, s, lead, in_shape, out_shape) -> (y, bound)``: ``b`` is the ``Builder``;
    ``name`` and ``node`` the graph node; ``s`` the input tensor, ``uint8`` binary spikes shaped
    (lead..., *in_shape) with ``lead`` leading axes (2: batch and time, when the node runs once on
    the whole sequence; 1: batch, inside a Scan step); it returns the output tensor shaped
    (lead..., *out_shape), ``int64`` values for a synapse (with ``bound``, a static bound on
    their absolute value) or ``uint8`` spikes for a reshape (``bound`` 1). ``ValueError`` if the
    kind already has a lowering; ``UnsupportedError`` if no such primitive is registered or it is
    a neuron (use ``register_neuron_lowering``).
    """
    _register(LOWERINGS, kind, fn, ("synapse", "reshape"))


def register_neuron_lowering(kind: str, factory: Callable[[Any, int], NeuronLowering]) -> None:
    """Register the ONNX lowering of a neuron primitive ``kind``: ``factory(node, in_bound)``
    returns a ``NeuronLowering`` (usually a subclass of it, passed as the factory). Errors as
    ``register_lowering``."""
    _register(NEURONS, kind, factory, ("neuron",))


def unregister_lowering(kind: str) -> None:
    """Remove the lowering of ``kind`` (either table); nothing if it has none. The lowerings of
    the package's own primitives cannot be removed (``ValueError``)."""
    if kind in _BUILTIN:
        raise ValueError(f"the ONNX lowering of {kind!r} belongs to the package")
    LOWERINGS.pop(kind, None)
    NEURONS.pop(kind, None)


def _register(table: dict[str, Any], kind: str, fn: Any, roles: tuple[str, ...]) -> None:
    role = primitive(kind).role  # UnsupportedError listing the known kinds
    if role not in roles:
        raise UnsupportedError(f"primitive {kind!r} is a {role}; this registers {' or '.join(roles)} lowerings")
    if kind in LOWERINGS or kind in NEURONS:
        raise ValueError(f"primitive {kind!r} already has an ONNX lowering")
    table[kind] = fn


_BUILTIN = frozenset({*LOWERINGS, *NEURONS})


def supported_kinds() -> frozenset[str]:
    """The primitive kinds this backend lowers (its ``LOWERINGS`` and ``NEURONS`` tables), plus
    the graph's input and output."""
    return frozenset({"input", "output", *LOWERINGS, *NEURONS})


def _make_neuron(name: str, node: fxn.FxNode, in_bound: int) -> NeuronLowering:
    cls = lookup(NEURONS, primitive_of(node, name).kind, "the ONNX backend's neurons", name)
    out: NeuronLowering = cls(node, in_bound)
    return out


# ------------------------------------------------------------------------------------- driver


def _dtype(name: str) -> int:
    from onnx import TensorProto

    return int({"uint8": TensorProto.UINT8, "int32": TensorProto.INT32, "int64": TensorProto.INT64,
                "bool": TensorProto.BOOL, "float32": TensorProto.FLOAT, "float64": TensorProto.DOUBLE}[name])


@dataclass
class _Val:
    """A tensor of the main graph, (batch, time, *shape), with a static bound on ``|value|``
    (spikes: 1)."""

    name: str
    bound: int
    spikes: bool


def _components(nodes: list[str], edges: list[tuple[str, str]]) -> dict[str, int]:
    """Strongly connected components (Kosaraju); returns node -> component id."""
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    pred: dict[str, list[str]] = {n: [] for n in nodes}
    for s, d in edges:
        if s in succ and d in succ:
            succ[s].append(d)
            pred[d].append(s)
    seen: set[str] = set()
    post: list[str] = []
    for root in nodes:
        if root in seen:
            continue
        seen.add(root)
        stack = [(root, iter(succ[root]))]
        while stack:
            v, it = stack[-1]
            nxt = next((w for w in it if w not in seen), None)
            if nxt is None:
                post.append(v)
                stack.pop()
            else:
                seen.add(nxt)
                stack.append((nxt, iter(succ[nxt])))
    comp: dict[str, int] = {}
    for cid, root in enumerate(reversed(post)):  # ids need not be contiguous
        if root in comp:
            continue
        todo = [root]
        comp[root] = cid
        while todo:
            v = todo.pop()
            for w in pred[v]:
                if w not in comp:
                    comp[w] = cid
                    todo.append(w)
    return comp


@dataclass
class _Plan:
    """What the driver needs from the schedule."""

    fx: FxGraph
    order: tuple[str, ...]
    inputs: dict[str, tuple[tuple[str, bool], ...]]
    shapes: dict[str, tuple[int, ...]]
    input_node: str
    output_node: str
    neurons: dict[str, NeuronLowering]
    syn_bounds: dict[str, int]
    #: synapse -> the largest value its input spikes carry (1: binary; graded source: section 5.2)
    payloads: dict[str, int] = field(default_factory=dict)


def _sum(b: Builder, terms: list[str]) -> str:
    total = terms[0]
    for t in terms[1:]:
        total = b.op("Add", [total, t], "sum")
    return total


def _neuron_input(b: Builder, terms: list[str], bound: int) -> str:
    """``a = wrap_32(sum of the synapse outputs)`` (``bound`` bounds the sum)."""
    a = _sum(b, terms)
    return _wrap(b, a, 32) if bound >= 2**31 else a


def build_onnx(fx: FxGraph, *, metadata: dict[str, str] | None = None, states: bool = True,
               engine: str = "auto") -> onnx.ModelProto:
    """One ONNX model (opset 18, IR 8) computing ``fx`` exactly per ``docs/fixed-point.md``.

    ``states``: also output every layer's states (``"<layer>.<state>"``, int64). ``metadata`` is
    added to the model's ``metadata_props`` (it may replace ``target``, ``lnm_deploy_version``,
    but not the layout keys ``format``, ``input``, ``output``, ``layers``). ``engine``: ``"auto"`` (one Scan per neuron layer or
    recurrent component) or ``"step"`` (one Scan over the whole network).
    """
    from lnm_deploy import validate

    validate.fx_graph(fx, "build_onnx")
    onnx = require_onnx()
    from onnx import helper

    from lnm_deploy._version import __version__

    if engine not in ENGINES:
        raise UserInputError(f"engine must be one of {ENGINES}, got {engine!r}")
    sched = fx.schedule()
    order = list(sched.order)
    payloads = input_payloads(fx)
    syn_bounds = {n: synapse_bounds(fx.nodes[n], n, payloads[n]).out for n in order if fx.nodes[n].role == "synapse"}
    neurons: dict[str, NeuronLowering] = {}
    for n in order:
        if fx.nodes[n].role == "neuron":
            ib = neuron_input_bound([syn_bounds[s] for s, _ in sched.inputs[n]])
            neurons[n] = _make_neuron(n, fx.nodes[n], ib)
    plan = _Plan(fx, sched.order, dict(sched.inputs), dict(sched.shapes), sched.input_node,
                 sched.output_node, neurons, syn_bounds, payloads)

    # Public tensor names: the input, one spike output per layer, its states, the output node.
    in_name, out_name = sched.input_node, sched.output_node
    state_out = {n: {k: f"{n}.{k}" for k in neurons[n].recorded()} for n in neurons} if states else {}
    out_src = sched.inputs[out_name][0][0]
    # A non-spiking readout (Primitive.output_state): the output repeats that state (int64).
    graded = output_state(fx.nodes[out_src], out_src) if out_src in neurons else None
    if graded is not None:
        state_out.setdefault(out_src, {})[graded] = f"{out_src}.{graded}"
    public = [in_name, out_name, *neurons, *(v for d in state_out.values() for v in d.values())]
    if len(set(public)) != len(public):
        dup = sorted({p for p in public if public.count(p) > 1})
        raise GraphError(f"tensor names {dup} collide (state outputs are named '<layer>.<state>')",
                         node=dup[0])
    reserved = set(public) | set(fx.nodes)
    consts = _Consts()
    main = Builder(consts, itertools.count(), reserved)

    batch = main.op("Shape", [in_name], "batch", start=0, end=1)
    vals: dict[str, _Val] = {in_name: _Val(in_name, 1, True)}

    compute = [n for n in order if n not in (in_name, out_name)]
    if engine == "step":
        comp = dict.fromkeys(compute, 0)
    else:
        inner = [(s, d) for s, d in fx.edges if s in compute and d in compute]
        comp = _components(compute, inner)
    groups: dict[int, list[str]] = {}
    for n in compute:
        groups.setdefault(comp[n], []).append(n)
    done: set[str] = {in_name}
    pending = list(groups.values())
    while pending:  # the condensation in topological order
        for members in pending:
            ext = {s for m in members for s, _ in sched.inputs[m] if s not in members}
            if ext <= done:
                break
        else:  # pragma: no cover - the schedule guarantees a topological order
            raise GraphError("cannot order the network's components", node=pending[0][0])
        pending.remove(members)
        if len(members) == 1 and fx.nodes[members[0]].role != "neuron":
            _outside(main, plan, members[0], vals)
        else:
            _scan(main, plan, members, vals, batch, state_out)
        done.update(members)

    main.op("Identity", [vals[out_src].name if graded is None else state_out[out_src][graded]], out=out_name)

    def vi(name: str, elem: str, shape: tuple[int, ...]) -> Any:
        return helper.make_tensor_value_info(name, _dtype(elem), ["batch", "time", *shape])

    graph_outputs = []
    for n in neurons:
        graph_outputs.append(vi(n, "uint8", plan.shapes[n]))
        for path in state_out.get(n, {}).values():
            graph_outputs.append(vi(path, "int64", plan.shapes[n]))
    graph_outputs.append(vi(out_name, "uint8" if graded is None else "int64", plan.shapes[out_src]))
    graph = helper.make_graph(main.nodes, "lnm_deploy_fx", [vi(in_name, "uint8", plan.shapes[in_name])],
                              graph_outputs, initializer=consts.tensors)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="lnm-deploy", producer_version=__version__,
                              doc_string="lnm-deploy fixed-point network (docs/fixed-point.md); "
                                         "layout: docs/onnx.md")
    model.ir_version = IR_VERSION
    layers = [{"name": n, "kind": fx.nodes[n].kind, "shape": list(plan.shapes[n]),
               "states": list(state_out.get(n, {})),
               **({"output_state": g} if (g := output_state(fx.nodes[n], n)) is not None else {})} for n in neurons]
    meta = {
        "target": fx.target,
        "lnm_deploy_version": __version__,
        "contract": "docs/fixed-point.md",
        "time_layout": "(batch, time, *shape); output step t answers input step t",
    }
    meta.update({str(k): str(v) for k, v in (metadata or {}).items()})
    meta.update({  # the layout run_onnx_model reads: never overridden
        "format": META_FORMAT,
        "input": json.dumps({"name": in_name, "dtype": "uint8",
                             "shape": ["batch", "time", *plan.shapes[in_name]]}),
        "output": out_name,
        "layers": json.dumps(layers),
    })
    helper.set_model_props(model, meta)
    onnx.checker.check_model(model)
    return model


def _outside(b: Builder, plan: _Plan, name: str, vals: dict[str, _Val]) -> None:
    """A synapse or Flatten outside any cycle, on the whole (batch, time, ...) tensor."""
    node = plan.fx.nodes[name]
    src = plan.inputs[name][0][0]
    v = vals[src]
    y, bound = _lower(b, name, node, v.name, 2, plan.shapes[src], plan.shapes[name], plan.payloads.get(name, 1))
    vals[name] = _Val(y, bound, node.role != "synapse")


def _scan(main: Builder, plan: _Plan, members: list[str], vals: dict[str, _Val], batch: str,
          state_out: dict[str, dict[str, str]]) -> None:
    """One Scan over time running ``members`` (schedule order) once per step."""
    from onnx import helper

    fx = plan.fx
    body = main.sub()
    mset = set(members)
    state_in: list[tuple[str, str, tuple[int, ...], np.ndarray]] = []  # (body name, key, shape, init)
    state_new: dict[str, str] = {}  # key -> new value in the body
    scan_in: list[tuple[str, str, str, tuple[int, ...]]] = []  # (outer, body name, elem, shape)

    def add_scan_input(outer: _Val, shape: tuple[int, ...], hint: str) -> str:
        inner = body.fresh(hint)
        scan_in.append((outer.name, inner, "uint8" if outer.spikes else "int64", shape))
        return inner

    # Delayed edges inside the component: their sources' previous values are Scan state.
    delayed_src = sorted({s for m in members for s, d in plan.inputs[m] if d}, key=members.index)
    prev: dict[str, str] = {}
    for s in delayed_src:
        prev[s] = body.fresh(f"{s}_prev")
        state_in.append((prev[s], f"delay:{s}", plan.shapes[s], np.zeros((), np.int64)))
    neuron_states: dict[str, dict[str, str]] = {}
    for m in members:
        if m in plan.neurons:
            neuron_states[m] = {}
            for k, init in plan.neurons[m].state_inits().items():
                neuron_states[m][k] = body.fresh(f"{m}_{k}")
                state_in.append((neuron_states[m][k], f"{m}:{k}", plan.shapes[m], init))

    cur: dict[str, tuple[str, int]] = {}  # body values of this step
    spikes_out: dict[str, str] = {}
    for m in members:
        node = fx.nodes[m]
        ins = plan.inputs[m]
        if node.role == "neuron":
            neuron = plan.neurons[m]
            ext = [s for s, _ in ins if s not in mset]
            bound = neuron_input_bound([plan.syn_bounds[s] for s, _ in ins])
            if len(ext) == len(ins):  # all inputs computed outside: prepare outside, on (B, T, ...)
                a = _neuron_input(main, [vals[s].name for s in ext], bound)
                xo, xb = neuron.prepare(main, a, bound)
                x = add_scan_input(_Val(xo, xb, False), plan.shapes[m], f"{m}_x")
            else:
                terms = []
                if ext:
                    outer = _sum(main, [vals[s].name for s in ext])
                    terms.append(add_scan_input(_Val(outer, 0, False), plan.shapes[m], f"{m}_ext"))
                for s, d in ins:
                    if s in mset:
                        terms.append(prev[s] if d else cur[s][0])
                x, _ = neuron.prepare(body, _neuron_input(body, terms, bound), bound)
            s_bool, new = neuron.step(body, x, neuron_states[m])
            for k, v in new.items():
                state_new[f"{m}:{k}"] = v
            spk = body.op("Cast", [s_bool], f"{m}_spk", to=_dtype("uint8"))
            cur[m] = (spk, 1)
            spikes_out[m] = spk
        else:
            src = ins[0][0]
            if src in mset:
                s_in = cur[src][0]
            else:
                s_in = add_scan_input(vals[src], plan.shapes[src], f"{src}_t")
            cur[m] = _lower(body, m, node, s_in, 1, plan.shapes[src], plan.shapes[m], plan.payloads.get(m, 1))
    for s in delayed_src:
        state_new[f"delay:{s}"] = cur[s][0]

    # Which values leave the Scan: spikes of every neuron, states on request, any other member
    # value read outside the component.
    out_vals: list[tuple[str, str, str, tuple[int, ...], str]] = []  # (member, body, elem, shape, outer)
    for m in members:
        if m in plan.neurons:
            out_vals.append((m, spikes_out[m], "uint8", plan.shapes[m], m))
            for k, path in state_out.get(m, {}).items():
                out_vals.append((m, state_new[f"{m}:{k}"], "int64", plan.shapes[m], path))
    read_outside = {s for n in plan.order if n not in mset for s, _ in plan.inputs.get(n, ()) if s in mset}
    exported: dict[str, str] = {}
    for m in members:
        if m in read_outside and m not in plan.neurons:
            exported[m] = main.fresh(f"{m}_seq")
            elem = "int64" if fx.nodes[m].role == "synapse" else "uint8"
            out_vals.append((m, cur[m][0], elem, plan.shapes[m], exported[m]))

    def vi(name: str, elem: str, shape: tuple[int, ...]) -> Any:
        return helper.make_tensor_value_info(name, _dtype(elem), ["batch", *shape])

    # Body graph: states in, scan slices in; new states out, per-step values out. A body output
    # must be a distinct tensor name: route everything through Identity.
    b_inputs = [vi(n, "int64", shape) for n, _, shape, _ in state_in]
    b_inputs += [vi(inner, elem, shape) for _, inner, elem, shape in scan_in]
    b_outputs = []
    for _, key, shape, _ in state_in:
        o = body.op("Identity", [state_new[key]], "state_out")
        b_outputs.append(vi(o, "int64", shape))
    for _, val, elem, shape, _ in out_vals:
        o = body.op("Identity", [val], "scan_out")
        b_outputs.append(vi(o, elem, shape))
    g = helper.make_graph(body.nodes, f"step_{members[0]}", b_inputs, b_outputs)

    if not scan_in:  # pragma: no cover - every component is reachable from the input
        raise UnsupportedError("a recurrent component receives no input; its length in time is "
                               "undefined", node=members[0])
    inits = []
    for _, key, shape, init in state_in:
        full = main.op("Concat", [batch, main.const(list(shape))], "state_shape", axis=0)
        inits.append(main.op("Expand", [main.const(init), full], f"init_{key.replace(':', '_')}"))
    final = [main.fresh("final") for _ in state_in]
    outs = [o for *_, o in out_vals]
    main.op_n("Scan", inits + [o for o, *_ in scan_in], final + outs, body=g,
              num_scan_inputs=len(scan_in), scan_input_axes=[1] * len(scan_in),
              scan_output_axes=[1] * len(out_vals))
    for m, _, elem, _, outer in out_vals:
        if outer == m or outer in exported.values():
            vals[m] = _Val(outer, 1 if elem == "uint8" else plan.syn_bounds.get(m, 1), elem == "uint8")
