"""The non-spiking readout (NIR ``LI`` / ``CubaLI``) as an integer primitive, defined once.

Float semantics: the IR's ``Neuron`` without a threshold (``v_th=None``, a non-spiking
integrator; ``lnm_deploy.ir.ops.NeuronStep``), what the NIR reader makes of ``LI`` (membrane
only) and ``CubaLI`` (a synaptic current too)::

    c[t] = syn_decay * c[t-1] + syn_gain * x[t]          (CubaLI; LI: c[t] = x[t])
    v[t] = theta_0 + theta_1 * v[t-1] + in_gain * c[t]    (no threshold, no reset)

Its output is the membrane ``v`` (the float executor's ``v_pre`` = ``v``), in real units.

Integer semantics (primitive ``li_readout``, ``docs/fixed-point.md`` section 5a): the stock LIF's
arithmetic (section 4.2, ``contract.lif_step``) with steps 6-7 (spike test, reset) left out::

    u  = corr_N(wrap_32(trunc0(u * (2**D - du - 1) / 2**D) + wrap_32(a * 2**act_shift)))
    v  = sat_N(wrap_32(trunc0(v * (2**D - dv) / 2**D) + u + shexp(bias_mant, bias_exp)))

(``du = 2**D - 1``: no current state, ``u = x``.) The layer outputs ``v`` (int64, LSBs of the
layer's scale ``q``: real membrane = ``q * v``) in place of spikes; its spikes are all 0. It is
computed as ``contract.lif_step`` on a LIF whose threshold is the state maximum
``2**(N-1) - 1`` (``FxLIReadout.as_lif``): ``v`` saturates to at most that, so the strict test
``v > vth`` never fires and the reset never acts. fxsim and Lava (``ContractNeuron``, the
membrane read by the recorder's state probe) run that step; the ONNX lowering is the LIF's.

What this module registers on import (``lnm_deploy`` imports it): the integer primitive
``li_readout`` (``FxLIReadout``, ``LIReadoutSpec`` = the target section ``[li_readout]``, the design
rule ``check_li_readout``, bounds ``readout_bounds``, ``output_state="v"``), its ONNX lowering, the
calibration lowering ``LI_READOUT_LOWERING`` (float kind ``neuron``, applies to a non-spiking one,
preferred over the spiking lowerings). The classification rules of a membrane output and the
float-vs-fixed comparison ``verify`` reports live in ``lnm_deploy.readout`` (``MEMBRANE_READOUTS``,
``membrane_check``).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from lnm_deploy.calibrate import passes
from lnm_deploy.calibrate.lowering import Lowering, register_lowering
from lnm_deploy.calibrate.neuron_lowerings import (
    encode_bias,
    lif_decays,
    lif_fit,
    membrane_constant,
    neuron_input_gain,
)
from lnm_deploy.errors import GraphError, LNMDeployWarning, UnsupportedError
from lnm_deploy.fixedpoint import contract
from lnm_deploy.fixedpoint.nodes import FxLIF, FxNeuron, Range, integral
from lnm_deploy.fixedpoint.primitives import Primitive, SpecCheck, check_lif_rules, register
from lnm_deploy.ir import Neuron, Node
from lnm_deploy.onnx_backend import build as onnx_build
from lnm_deploy.targets import Target

if TYPE_CHECKING:
    from lnm_deploy.fixedpoint import Rounding

Array = np.ndarray
FLOAT_KIND = "neuron"
KIND = "li_readout"
#: The state a readout layer outputs (``Primitive.output_state``).
OUTPUT_STATE = "v"

# ------------------------------------------------------------------------ integer primitive


def _ints(name: str, x: Any) -> Array:
    a = np.asarray(x)
    if a.dtype.kind not in "iub" and not (a.dtype.kind == "f" and np.all(np.isfinite(a)) and np.all(a == np.round(a))):
        raise GraphError(f"{KIND}: '{name}' must hold integers, got {a.dtype}")
    return a.astype(np.int64)


def _within(node: str, name: str, values: Array | int, lo: int, hi: int) -> None:
    a = np.asarray(values)
    if a.size and (a.min() < lo or a.max() > hi):
        raise GraphError(f"'{name}' must lie in [{lo}, {hi}], got values in [{a.min()}, {a.max()}]", node=node)


@dataclass(eq=False)
class FxLIReadout(FxNeuron):
    """The non-spiking readout (module docstring): the stock LIF's current and membrane without
    threshold or reset. ``du``, ``dv`` per layer in [0, 2**D - 1] (``du = 2**D - 1``: no current
    state); ``bias_mant``/``bias_exp`` per neuron; ``u_init``/``v_init`` the states before the
    first step; widths ``state_bits`` N, ``decay_bits`` D, ``act_shift`` pinned by the target."""

    kind: ClassVar[str] = KIND
    du: int = 4095
    dv: int = 0
    bias_mant: Array | int = 0
    bias_exp: Array | int = 0
    u_init: Array | int = 0
    v_init: Array | int = 0
    state_bits: int = 24
    decay_bits: int = 12
    act_shift: int = 6

    def __post_init__(self) -> None:
        self.shape = tuple(integral(KIND, "shape", s) for s in self.shape)
        for name in ("du", "dv", "state_bits", "decay_bits", "act_shift"):
            setattr(self, name, integral(KIND, name, getattr(self, name)))
        for name in ("bias_mant", "bias_exp", "u_init", "v_init"):
            a = _ints(name, getattr(self, name))
            try:
                setattr(self, name, np.broadcast_to(a, self.shape).copy())
            except ValueError as e:
                raise GraphError(f"'{name}' of shape {a.shape} does not fit {self.shape}", node=KIND) from e

    def state_names(self) -> tuple[str, ...]:
        return ("u", "v")

    @property
    def bias(self) -> Array:
        """``shexp(bias_mant, bias_exp)`` per neuron."""
        m, e = np.asarray(self.bias_mant), np.asarray(self.bias_exp)
        return np.where(e >= 0, m << np.maximum(e, 0), m >> np.maximum(-e, 0))

    @staticmethod
    def limits(decay_bits: int) -> dict[str, Range]:
        """The ranges (inclusive) of the widths and parameters: the stock LIF's
        (``FxLIF.limits``) less its threshold."""
        lim = FxLIF.limits(decay_bits, 0)
        return {k: v for k, v in lim.items() if k not in ("vth", "vth_shift")}

    def validate(self, name: str) -> None:
        for key, (lo, hi) in self.limits(self.decay_bits).items():
            _within(name, key, getattr(self, key), lo, hi)
        _within(name, "bias (bias_mant << bias_exp)", self.bias, -(2**30), 2**30)
        half = 1 << (self.state_bits - 1)
        _within(name, "u_init", self.u_init, -half + 1, half)
        _within(name, "v_init", self.v_init, -half + 1, half - 1)

    def as_lif(self) -> FxLIF:
        """The stock LIF this readout computes: the same parameters, ``vth_shift = 0`` and the
        threshold at the state maximum ``2**(N-1) - 1``, which the saturated ``v`` never exceeds:
        it never spikes and never resets."""
        return FxLIF(shape=self.shape, du=self.du, dv=self.dv, vth=(1 << (self.state_bits - 1)) - 1,
                     bias_mant=self.bias_mant, bias_exp=self.bias_exp, u_init=self.u_init, v_init=self.v_init,
                     state_bits=self.state_bits, decay_bits=self.decay_bits, vth_shift=0,
                     act_shift=self.act_shift)


def readout_params(node: FxLIReadout) -> contract.LIFParams:
    """The constants of one step: the stock LIF's (``contract.LIFParams``) of ``node.as_lif()``."""
    return contract.LIFParams.of(node.as_lif())


def readout_step(p: contract.LIFParams, state: contract.State, a: Array) -> tuple[contract.State, Array]:
    """One step (module docstring) on int64 arrays: ``contract.lif_step`` (its spikes are all
    False: ``p.vth_eff`` is the state maximum). Returns ``({"u", "v"}, spikes)``."""
    return contract.lif_step(p, state, a)


def readout_bounds(node: FxLIReadout, input_bound: int) -> contract.LIFBounds:
    """The static bounds (``contract.LIFBounds``, ``docs/fixed-point.md`` 4.3) of ``node.as_lif()``
    for neuron inputs ``|a| <= input_bound``: the membrane is ``|v| <= 2**(N-1) - 1`` always (it
    saturates); ``sat_low`` says whether the saturation can act."""
    return contract.lif_bounds(node.as_lif(), input_bound)


@dataclass(frozen=True)
class LIReadoutSpec:
    """``[li_readout]``: the non-spiking readout (``FxLIReadout``); the keys of ``[lif]`` without
    the threshold (``vth``, ``vth_shift``), with the same fixed rules."""

    state_bits: int
    decay_bits: int
    act_shift: int
    du: Range
    dv: Range
    bias_mant: Range
    bias_exp: Range
    u_overflow: str
    v_overflow: str
    decay_rounding: str

    def check(self, c: SpecCheck) -> None:
        lim = FxLIReadout.limits(self.decay_bits)
        for key in ("state_bits", "decay_bits", "act_shift"):
            c.width(key, getattr(self, key), lim[key])
        for key in ("du", "dv", "bias_mant", "bias_exp"):
            c.within(key, getattr(self, key), lim[key])
        check_lif_rules(c, self)

    def summary(self) -> str:
        return f"non-spiking LI readout ({self.state_bits}-bit membrane output)"


def _in(node: str, what: str, values: Array | int, r: Range, target: str) -> None:
    a = np.asarray(values)
    if a.size and (a.min() < r[0] or a.max() > r[1]):
        raise GraphError(f"{what} in [{a.min()}, {a.max()}] exceeds target '{target}' range [{r[0]}, {r[1]}]",
                         node=node)


def check_li_readout(name: str, n: FxLIReadout, t: Target) -> None:
    """The design rule: the widths equal the target's, the decays and bias inside its ranges."""
    s: LIReadoutSpec = t.spec(KIND, node=name)
    for what in ("state_bits", "decay_bits", "act_shift"):
        if getattr(n, what) != getattr(s, what):
            raise GraphError(f"{what} is {getattr(n, what)!r}; target '{t.name}' has {getattr(s, what)!r}", node=name)
    for what in ("du", "dv", "bias_mant", "bias_exp"):
        _in(name, what, getattr(n, what), getattr(s, what), t.name)


LI_READOUT = register(Primitive(KIND, FxLIReadout, LIReadoutSpec, check_li_readout, bounds=readout_bounds,
                                params=readout_params, step=readout_step, output_state=OUTPUT_STATE,
                                missing_hint="calibrate for a target with an [li_readout] section (loihi2, "
                                             "loihi2-lif), or read out spikes"))


# ------------------------------------------------------------------------------------- ONNX


class ReadoutOnnx(onnx_build.NeuronLowering):
    """The ONNX step: the stock LIF's lowering of ``node.as_lif()`` (its spike test never fires)."""

    node: FxLIReadout

    def __init__(self, node: FxLIReadout, in_bound: int) -> None:
        super().__init__(node, in_bound)
        self.lif = onnx_build.NEURONS["lif"](node.as_lif(), in_bound)

    def state_inits(self) -> dict[str, Array]:
        return self.lif.state_inits()

    def prepare(self, b: onnx_build.Builder, a: str, bound: int) -> tuple[str, int]:
        return self.lif.prepare(b, a, bound)

    def step(self, b: onnx_build.Builder, x: str, st: dict[str, str]) -> tuple[str, dict[str, str]]:
        return self.lif.step(b, x, st)


onnx_build.register_neuron_lowering(KIND, ReadoutOnnx)


# ---------------------------------------------------------------------- calibration lowering


def _node(node: Node) -> Neuron:
    assert isinstance(node, Neuron), node  # registered for float kind "neuron"
    return node


def _uniform(a: Array | None) -> bool:
    return a is None or bool(np.all(a == a.reshape(-1)[0]))


def _applies(layer: passes.MappedLayer, target: Target) -> bool:
    """Every non-spiking ``Neuron`` (``select`` refuses a target without ``[li_readout]``, so that
    the refusal names the section instead of a spiking lowering failing on a missing threshold)."""
    return isinstance(layer.node, Neuron) and not layer.node.spiking and layer.node.v_floor is None


def select_readout(layer: passes.MappedLayer, rng: passes.NeuronRange, target: Target, margin: float,
                   rounding: Rounding) -> passes.Selection:
    """Pass 2: the line ``coef[0] + coef[1] v`` (exact for an LI / CubaLI: degree <= 1, one decay
    and, with a synapse, one synaptic decay per layer, not growing; else the weighted least-squares
    fit of the polynomial, listed in the approximations), the membrane and current bounds times
    the margin, and the smallest scale that holds them and the bias.

    Raises:
        UnsupportedError: the target has no ``[li_readout]`` section.
    """
    n, node = layer.name, _node(layer.node)
    if not target.offers(KIND):
        raise UnsupportedError(f"the non-spiking (integrator) layer needs the primitive '{KIND}', which target "
                               f"'{target.name}' does not offer (it offers {', '.join(target.offered())}): "
                               f"{LI_READOUT.missing_hint}", node=n)
    spec: LIReadoutSpec = target.spec(KIND, node=n)
    approx: list[str] = []
    has_syn = node.syn_decay is not None
    theta, theta0 = membrane_constant(layer, node, approx)
    fit: dict[str, Any] = {}
    exact = (node.degree <= 1 and (node.degree == 0 or (_uniform(theta[1]) and np.all(theta[1] <= 1.0)))
             and (not has_syn or _uniform(node.syn_decay)))
    if exact:
        lin = np.stack([theta0, theta[1] if node.degree >= 1 else np.zeros_like(theta0)])
    else:
        a, b, resid = lif_fit(theta, rng.v_values, rng.v_weights)
        fit = {"a": a, "b": b, "rms_residual": resid, "degree": node.degree,
               "samples": int(np.asarray(rng.v_weights).sum())}
        approx.append(f"degree-{node.degree} leak (or per-neuron decays) fitted by one line (rms residual "
                      f"{resid:.3g} per step over the calibrated membrane distribution)")
        if has_syn and not _uniform(node.syn_decay):
            approx.append("per-neuron synaptic decays replaced by their mean")
        lin = np.stack([theta0 - theta[0] + a, np.full_like(theta0, b)])
    v_abs = max(abs(rng.v_min), abs(rng.v_max), abs(rng.v_pre_min), abs(rng.v_pre_max)) * margin
    g_in = float(np.max(np.abs(node.in_gain)))
    g_syn = float(np.max(np.abs(node.syn_gain))) if node.syn_gain is not None else 1.0
    c_abs = g_in * max(rng.c_absmax, g_syn * rng.input_absmax if has_syn else rng.input_absmax) * margin
    s_max = 2.0 ** (spec.state_bits - 1) - 1
    bias_lim = max(abs(spec.bias_mant[0]), spec.bias_mant[1]) * 2.0 ** spec.bias_exp[1]
    q_min = max(v_abs / s_max, c_abs / s_max, float(np.max(np.abs(lin[0]))) / bias_lim, 1e-300)
    return passes.Selection(n, node, KIND, layer.scaled_synapses, lin, np.zeros(0), v_abs, c_abs, q_min, rounding,
                     fit=fit, approximations=tuple(approx))


def plan_readout(sel: passes.Selection, target: Target, weight_clip: passes.WeightClip) -> passes.ScalePlan:
    """Pass 3: ``q`` and the synapses' integers (exponent ``weight_exp + act_shift``), as the
    stock LIF's."""
    spec: LIReadoutSpec = target.spec(KIND, node=sel.name)
    q, in_shift, plans = passes.plan_synapses(sel.name, list(sel.synapses), target, sel.q_min, spec.act_shift,
                                       weight_clip, (0, 0))
    return passes.ScalePlan(sel.name, q, in_shift, tuple(plans))


def encode_readout(sel: passes.Selection, scales: passes.ScalePlan, target: Target) -> passes.EncodedLayer:
    """Pass 4: ``dv = rint((1 - coef[1]) 2**D)``, ``du = 2**D - 1 - rint(syn_decay 2**D)`` (no
    synapse: ``2**D - 1``), the bias on the LIF's mantissa and exponent; the dequantized node is
    the non-spiking ``Neuron`` of those integers."""
    spec: LIReadoutSpec = target.spec(KIND, node=sel.name)
    n, node, lin, q = sel.name, _node(sel.node), sel.coef, scales.q
    approx = list(sel.approximations)
    unity = 2**spec.decay_bits
    s_max = 2.0 ** (spec.state_bits - 1) - 1
    dv, du = lif_decays(lin, node, spec.dv, spec.du, unity, approx)
    bias_mant, bias_exp = encode_bias(n, lin[0], q, spec.bias_mant, spec.bias_exp, "readout")
    shape = node.shape
    fx = FxLIReadout(shape=shape, du=du, dv=dv, bias_mant=bias_mant.reshape(shape), bias_exp=bias_exp,
                     state_bits=spec.state_bits, decay_bits=spec.decay_bits, act_shift=spec.act_shift)
    bias_real = bias_mant * 2.0**bias_exp * q
    ir = Neuron(shape=shape, poly=np.stack([bias_real, np.full_like(bias_real, 1.0 - dv / unity)]).reshape(2, *shape),
                v_th=None, syn_decay=None if node.syn_decay is None else np.full(shape, (unity - du - 1) / unity),
                dt=node.dt, metadata={k: v for k, v in node.metadata.items() if k == "nir_type"})
    plans = scales.synapses
    v_abs, c_abs = sel.v_abs, sel.c_abs
    rec = passes.LayerRecord(
        name=n, primitive=KIND, q=q, exponents={p.synapse.name: p.weight_exp for p in plans}, in_shift=0,
        weight_scale={p.synapse.name: p.real_per_lsb for p in plans},
        weight_clipped={p.synapse.name: p.clipped for p in plans},
        proof={"membrane_bound_real": v_abs, "membrane_bound_int": v_abs / q, "state_limit": s_max,
               "current_bound_int": c_abs / q, "du": du, "dv": dv, "bias_exp": bias_exp,
               "output": f"membrane '{OUTPUT_STATE}' (real = q * integer)",
               "holds": bool(v_abs / q <= s_max and c_abs / q <= s_max)},
        fit=dict(sel.fit), approximations=approx)
    for a in approx:
        warnings.warn(f"layer '{n}': {a}", LNMDeployWarning, stacklevel=3)
    return passes.EncodedLayer(fx, ir, rec, scales)


LI_READOUT_LOWERING = register_lowering(Lowering(
    FLOAT_KIND, KIND, applies=_applies, select=select_readout, plan=plan_readout, encode=encode_readout,
    input_gain=neuron_input_gain, preference=-10,
    description="non-spiking readout (NIR LI / CubaLI): the stock LIF's membrane without threshold"))
