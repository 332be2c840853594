"""A toy neuron kind defined outside the package, for the tests of the extension points only.

``FloorIF``: integrate-and-fire with a hard floor on its membrane, one step elementwise::

    v'[t] = max(v[t-1] + x[t], floor)      s[t] = v'[t] > v_th      v[t] = 0 where s[t], else v'[t]

Its float op (an IR ``Node`` with ``float_step``, states named ``v`` / ``v_pre`` as the calibration
statistics read them) and its ``Lowering`` (``FLOOR_IF_TO_LIF``: onto the stock LIF with no leak,
the floor dropped and recorded as the approximation; an integer FloorIF primitive replaces only
``encode``). ``lnm_deploy`` never names any of it: it is registered with
``lnm_deploy.calibrate.register_lowering`` by the tests that use it (``registered()``).
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import DTypeLike

from lnm_deploy.calibrate import Lowering, register_lowering, unregister_lowering
from lnm_deploy.calibrate.passes import (
    EncodedLayer,
    LayerRecord,
    MappedLayer,
    NeuronRange,
    ScalePlan,
    Selection,
    WeightClip,
    plan_synapses,
)
from lnm_deploy.errors import GraphError, LNMDeployWarning, NumericError
from lnm_deploy.fixedpoint import FxLIF, Rounding
from lnm_deploy.ir import Neuron, Node
from lnm_deploy.ir.ops import FloatStep
from lnm_deploy.targets import Target

Array = np.ndarray


class FloorIFStep(FloatStep):
    """The batched float step: states ``v`` (after reset) and ``v_pre`` (before the spike test)."""

    state_names = ("v", "v_pre")

    def __init__(self, shape: tuple[int, ...], v_th: Array, floor: Array, batch: int, dtype: DTypeLike) -> None:
        self.v_th, self.floor = v_th.astype(dtype), floor.astype(dtype)
        self.v = np.zeros((batch, *shape), dtype=dtype)
        self.v_pre = np.zeros_like(self.v)

    def __call__(self, x: Array) -> Array:
        self.v_pre = np.maximum(self.v + x, self.floor)
        s = self.v_pre > self.v_th
        self.v = np.where(s, np.zeros_like(self.v_pre), self.v_pre)
        return s.astype(self.v.dtype)

    def state(self, name: str) -> Array:
        if name == "v":
            return self.v
        if name == "v_pre":
            return self.v_pre
        return super().state(name)


@dataclass(eq=False)
class FloorIF(Node):
    """Integrate-and-fire with a membrane floor (``floor`` <= 0) and threshold ``v_th`` >= 0, both
    broadcast to ``shape``; reset to 0."""

    kind: ClassVar[str] = "floor_if"
    shape: tuple[int, ...]
    v_th: Array
    floor: Array

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        self.v_th = np.broadcast_to(np.asarray(self.v_th, dtype=np.float64), self.shape).copy()
        self.floor = np.broadcast_to(np.asarray(self.floor, dtype=np.float64), self.shape).copy()

    def validate(self, name: str) -> None:
        if not (np.all(np.isfinite(self.v_th)) and np.all(np.isfinite(self.floor))):
            raise GraphError("v_th and floor must be finite", node=name)
        if np.any(self.floor > 0) or np.any(self.v_th < 0):
            raise GraphError("floor must be <= 0 and v_th >= 0", node=name)

    def output_shape(self, name: str, input_shape: tuple[int, ...] | None) -> tuple[int, ...]:
        if input_shape != self.shape:
            raise GraphError(f"expects input shape {self.shape}, gets {input_shape}", node=name)
        return self.shape

    @property
    def state_names(self) -> tuple[str, ...]:
        return ("v", "v_pre")

    @property
    def emits_spikes(self) -> bool:
        return True

    @property
    def spike_source(self) -> bool:
        return True

    def float_step(self, name: str, batch: int, dtype: DTypeLike) -> FloorIFStep:
        return FloorIFStep(self.shape, self.v_th, self.floor, batch, dtype)


def _node(node: Node) -> FloorIF:
    assert isinstance(node, FloorIF)
    return node


FLOOR_APPROXIMATION = "membrane floor dropped (the stock LIF has none)"


def _input_gain(node: Node) -> Array:
    return np.ones(_node(node).shape)  # the input adds to v as it is


def _applies(layer: MappedLayer, target: Target) -> bool:
    return target.offers("lif")


def _select(layer: MappedLayer, rng: NeuronRange, target: Target, margin: float, rounding: Rounding) -> Selection:
    node, spec = _node(layer.node), target.lif
    assert spec is not None
    v_th = node.v_th.reshape(-1)
    v_abs = max(abs(rng.v_min), abs(rng.v_max), abs(rng.v_pre_min), abs(rng.v_pre_max),
                float(np.max(np.abs(node.floor))), float(np.max(v_th))) * margin
    c_abs = rng.input_absmax * margin
    bias = layer.scaled_bias.reshape(-1)
    lin = np.stack([bias, np.ones_like(bias)])  # v' = bias + 1 * v + input: no leak
    s_max = 2.0 ** (spec.state_bits - 1) - 1
    bias_lim = max(abs(spec.bias_mant[0]), spec.bias_mant[1]) * 2.0 ** spec.bias_exp[1]
    q_min = max(v_abs / s_max, c_abs / s_max, float(np.mean(v_th)) / (spec.vth[1] * 2.0**spec.vth_shift),
                float(np.max(np.abs(bias))) / bias_lim, 1e-300)
    return Selection(layer.name, node, "lif", layer.scaled_synapses, lin, v_th, v_abs, c_abs, q_min, rounding,
                     approximations=(FLOOR_APPROXIMATION,))


def _plan(sel: Selection, target: Target, weight_clip: WeightClip) -> ScalePlan:
    spec = target.lif
    assert spec is not None
    q, in_shift, plans = plan_synapses(sel.name, list(sel.synapses), target, sel.q_min, spec.act_shift,
                                       weight_clip, (0, 0))
    return ScalePlan(sel.name, q, in_shift, tuple(plans))


def _encode(sel: Selection, scales: ScalePlan, target: Target) -> EncodedLayer:
    spec = target.lif
    assert spec is not None
    node, q = _node(sel.node), scales.q
    unity = 2**spec.decay_bits
    vth = int(np.rint(float(np.mean(sel.v_th)) / (q * 2.0**spec.vth_shift)))
    bias_int = np.rint(sel.coef[0] / q).astype(np.int64)
    if np.any(bias_int < spec.bias_mant[0]) or np.any(bias_int > spec.bias_mant[1]):
        raise NumericError("the bias does not fit the LIF's bias mantissa", node=sel.name)
    fx = FxLIF(shape=node.shape, du=unity - 1, dv=0, vth=vth, bias_mant=bias_int.reshape(node.shape), bias_exp=0,
               state_bits=spec.state_bits, decay_bits=spec.decay_bits, vth_shift=spec.vth_shift,
               act_shift=spec.act_shift)
    bias_real = (bias_int * q).reshape(node.shape)
    ir = Neuron(shape=node.shape, poly=np.stack([bias_real, np.ones(node.shape)]),
                v_th=np.full(node.shape, vth * 2.0**spec.vth_shift * q), reset="value")
    plans = scales.synapses
    rec = LayerRecord(
        name=sel.name, primitive="lif", q=q, exponents={p.synapse.name: p.weight_exp for p in plans}, in_shift=0,
        weight_scale={p.synapse.name: p.real_per_lsb for p in plans},
        weight_clipped={p.synapse.name: p.clipped for p in plans},
        proof={"membrane_bound_int": sel.v_abs / q, "state_limit": 2.0 ** (spec.state_bits - 1) - 1,
               "holds": bool(sel.v_abs / q <= 2.0 ** (spec.state_bits - 1) - 1)},
        approximations=list(sel.approximations))
    warnings.warn(f"layer '{sel.name}': {FLOOR_APPROXIMATION}", LNMDeployWarning, stacklevel=3)
    return EncodedLayer(fx, ir, rec, scales)


#: The toy's lowering onto the stock LIF (registered by ``registered()``).
FLOOR_IF_TO_LIF = Lowering("floor_if", "lif", applies=_applies, select=_select, plan=_plan, encode=_encode,
                           input_gain=_input_gain, description="toy: integrate-and-fire, floor dropped")


@contextmanager
def registered(*lws: Lowering) -> Iterator[tuple[Lowering, ...]]:
    """Register ``lws`` (default: ``FLOOR_IF_TO_LIF``) for the ``with`` block, then remove them."""
    lws = lws or (FLOOR_IF_TO_LIF,)
    for lw in lws:
        register_lowering(lw)
    try:
        yield lws
    finally:
        for lw in lws:
            unregister_lowering(lw.float_kind, lw.primitive)


def toy_graph(seed: int = 0, n_in: int = 12, n_hidden: int = 8) -> Any:
    """Input (n_in) -> Affine -> FloorIF -> Affine -> FloorIF -> Output: two toy layers."""
    from lnm_deploy.ir import Affine, sequential

    rng = np.random.default_rng(seed)
    return sequential([
        ("fc1", Affine(weight=rng.normal(0.3, 0.5, (n_hidden, n_in)))),
        ("if1", FloorIF(shape=(n_hidden,), v_th=1.0, floor=-0.5)),
        ("fc2", Affine(weight=rng.normal(0.3, 0.5, (4, n_hidden)))),
        ("if2", FloorIF(shape=(4,), v_th=1.0, floor=-0.5)),
    ], (n_in,))
