"""Node types of the integer network ("FxGraph"): what a target executes, bit for bit.

Every parameter is an integer (numpy int64 arrays, Python ints); the exact step semantics of each
node are written in ``docs/fixed-point.md`` and implemented by ``lnm_deploy.fxsim``. Shapes exclude
batch and time; image layouts are (C, H, W) as in the float IR.

Node classes validate their own *structure* (shapes, representable ranges that the semantics need
to be well defined). Whether a node fits a given chip (weight bits, decay widths, which neurons
exist) is checked separately against a target by ``lnm_deploy.targets.check_graph``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, NamedTuple

import numpy as np

from lnm_deploy.errors import GraphError
from lnm_deploy.fixedpoint.arith import OVERFLOWS, ROUNDINGS, Overflow, Rounding
from lnm_deploy.ir.nodes import conv_output_shape, is_integer, pair
from lnm_deploy.limits import POLY_DEGREES, RESET_MODES, THRESHOLD_TESTS, ResetMode

Shape = tuple[int, ...]
SignMode = Literal["mixed", "excitatory", "inhibitory"]
SIGN_MODES: tuple[str, ...] = ("mixed", "excitatory", "inhibitory")
FxReset = ResetMode

INT32_MAX = 2**31 - 1
Range = tuple[int, int]
#: Ranges shared by the synapses: a weight exponent, an output width, a fan-in (a target's max_fan_in).
WEIGHT_EXP: Range = (-24, 24)
OUT_BITS: Range = (2, 48)
FAN_IN: Range = (1, 2**24)
#: The width Lava's Dense clips its weights to (plus the sign): ``num_weight_bits`` is at most this.
DENSE_WEIGHT_BITS = 8
#: The largest spike payload (graded spike count) of any integer node: spike arrays are uint8 on
#: every backend (fxsim, ONNX, Lava's recorder). A target declares its own cap inside it
#: (``[poly] max_spike_payload``).
MAX_PAYLOAD = 255
#: Dataclass field metadata of a field added after version 1 of the encoding: written to an
#: artifact only where it differs from its default (``fixedpoint.encode``), so networks that do
#: not use it encode byte for byte as before.
OMIT_DEFAULT: dict[str, Any] = {"omit_default": True}


def _iarr(node: str, name: str, x: Any) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise GraphError(f"'{name}' must hold integers, got non-integer values", node=node)
    elif a.dtype.kind not in "iub":
        raise GraphError(f"'{name}' must be an integer array, got dtype {a.dtype}", node=node)
    return a.astype(np.int64)


def integral(node: str, name: str, x: Any) -> int:
    """``x`` as a Python int when it is an integer (or an integral float); ``GraphError`` naming
    ``node`` and ``name`` otherwise (never truncated: 2.7 is not 2)."""
    if not is_integer(x):
        raise GraphError(f"{name} must be an integer, got {x!r}", node=node)
    return int(x)


def _check_range(node: str, name: str, a: np.ndarray | int, lo: int, hi: int) -> None:
    arr = np.asarray(a)
    if arr.size and (arr.min() < lo or arr.max() > hi):
        raise GraphError(
            f"'{name}' must lie in [{lo}, {hi}], got values in [{arr.min()}, {arr.max()}]", node=node
        )


class SpikeRule(NamedTuple):
    """How a neuron layer spikes (``FxNeuron.spike_rule``), in the float ``Neuron``'s terms: the
    spike test (``">"`` or ``">="``), the most spikes per step (``max_spikes``: 1 binary), whether
    the membrane has a floor, and the reset (``"value"`` or ``"subtract"``)."""

    test: str
    max_spikes: int
    floor: bool
    reset: str


@dataclass(eq=False)
class FxNode:
    """Base of all integer nodes. ``metadata`` is provenance only (never semantics)."""

    kind: ClassVar[str] = "fx"
    role: ClassVar[str] = "other"  # "input" | "output" | "synapse" | "neuron" | "reshape"
    metadata: dict[str, Any] = field(default_factory=dict, kw_only=True)

    def validate(self, name: str) -> None:
        """Raise ``GraphError`` if the parameters are inconsistent."""

    def output_shape(self, name: str, input_shape: Shape | None) -> Shape:
        if input_shape is None:
            raise GraphError("node has no input", node=name)
        return input_shape


@dataclass(eq=False)
class FxInput(FxNode):
    """Binary spike input, ``shape`` excludes batch and time. Values must be 0 or 1."""

    kind: ClassVar[str] = "input"
    role: ClassVar[str] = "input"
    shape: Shape

    def __post_init__(self) -> None:
        self.shape = tuple(integral("input", "shape", s) for s in self.shape)

    def output_shape(self, name: str, input_shape: Shape | None) -> Shape:
        return self.shape


@dataclass(eq=False)
class FxOutput(FxNode):
    """Graph output: the spikes of the single neuron layer feeding it."""

    kind: ClassVar[str] = "output"
    role: ClassVar[str] = "output"


@dataclass(eq=False)
class FxFlatten(FxNode):
    """Flatten a (C, H, W) spike map to C*H*W in C order (index ``(c*H + h)*W + w``)."""

    kind: ClassVar[str] = "flatten"
    role: ClassVar[str] = "reshape"

    def output_shape(self, name: str, input_shape: Shape | None) -> Shape:
        if input_shape is None:
            raise GraphError("node has no input", node=name)
        return (int(np.prod(input_shape)),)


@dataclass(eq=False)
class FxDense(FxNode):
    """Dense synapse (Lava ``Dense``, ``PyDenseModelBitAcc``).

    ``weight`` (out, in) holds the integers given to the chip; the chip uses
    ``effective_weight()`` (clipped to ``DENSE_WEIGHT_BITS`` = 8 bits and LSB-truncated per
    ``num_weight_bits`` and ``sign_mode``). Output per step: ``wrap_{out_bits}(shift_exp(W_eff @ s, weight_exp))``.
    """

    kind: ClassVar[str] = "dense"
    role: ClassVar[str] = "synapse"
    weight: np.ndarray
    weight_exp: int = 0
    num_weight_bits: int = 8
    sign_mode: SignMode = "mixed"
    out_bits: int = 32

    def __post_init__(self) -> None:
        self.weight = _iarr("dense", "weight", self.weight)
        for name in ("weight_exp", "num_weight_bits", "out_bits"):
            setattr(self, name, integral("dense", name, getattr(self, name)))

    def validate(self, name: str) -> None:
        if self.weight.ndim != 2:
            raise GraphError(f"weight must be 2-d (out, in), got shape {self.weight.shape}", node=name)
        if self.sign_mode not in SIGN_MODES:
            raise GraphError(f"sign_mode must be one of {SIGN_MODES}, got {self.sign_mode!r}", node=name)
        _check_range(name, "weight", self.weight, -(2**31), INT32_MAX)
        for key, (lo, hi) in self.limits().items():
            _check_range(name, key, getattr(self, key), lo, hi)

    @staticmethod
    def limits() -> dict[str, Range]:
        """The ranges of the widths (inclusive); a target's ``[dense]`` section lies inside them
        (its ``weight_bits`` and ``num_weight_bits`` inside ``num_weight_bits`` here)."""
        return {"num_weight_bits": (1, DENSE_WEIGHT_BITS), "weight_exp": WEIGHT_EXP, "out_bits": OUT_BITS}

    def output_shape(self, name: str, input_shape: Shape | None) -> Shape:
        if input_shape != (self.weight.shape[1],):
            raise GraphError(
                f"expects input shape ({self.weight.shape[1]},), gets {input_shape}; "
                "insert an FxFlatten before it",
                node=name,
            )
        return (self.weight.shape[0],)

    def effective_weight(self) -> np.ndarray:
        """The weights the chip multiplies with (Lava ``clip_weights`` then ``truncate_weights``)."""
        return dense_effective_weight(self.weight, self.num_weight_bits, self.sign_mode)


def dense_effective_weight(weight: np.ndarray, num_weight_bits: int, sign_mode: str) -> np.ndarray:
    """Clip to the 8-bit (``DENSE_WEIGHT_BITS``) range of ``sign_mode``, then clear
    ``8 - num_weight_bits (+1 if mixed)`` LSBs: floor for mixed/excitatory, toward zero for
    inhibitory (Lava negates around the shift)."""
    w = np.asarray(weight, dtype=np.int64)
    k = DENSE_WEIGHT_BITS - int(num_weight_bits) + (1 if sign_mode == "mixed" else 0)
    top = (1 << DENSE_WEIGHT_BITS) - 1
    if sign_mode == "mixed":
        return (np.clip(w, -top - 1, top) >> k) << k
    if sign_mode == "excitatory":
        return (np.clip(w, 0, top) >> k) << k
    return -((np.clip(-w, 0, top) >> k) << k)


def dense_weight_grid(num_weight_bits: int, sign_mode: str) -> tuple[int, int, int]:
    """``(step, lo, hi)``: the effective weights representable exactly, ``lo..hi`` by ``step``."""
    k = DENSE_WEIGHT_BITS - int(num_weight_bits) + (1 if sign_mode == "mixed" else 0)
    step = 1 << k
    top = (1 << DENSE_WEIGHT_BITS) - 1
    if sign_mode == "mixed":
        return step, -top - 1, (top >> k) << k
    if sign_mode == "excitatory":
        return step, 0, (top >> k) << k
    return step, -((top >> k) << k), 0


def sign_mode_of(weight: np.ndarray) -> SignMode:
    """Lava's ``determine_sign_mode``: excitatory if all >= 0, inhibitory if all <= 0, else mixed."""
    w = np.asarray(weight)
    if w.size == 0 or w.min() >= 0:
        return "excitatory"
    if w.max() <= 0:
        return "inhibitory"
    return "mixed"


@dataclass(eq=False)
class FxConv2d(FxNode):
    """2-d convolution synapse as ``torch.nn.functional.conv2d`` (cross-correlation), input (C, H, W).

    ``weight`` (C_out, C_in/groups, kH, kW) is used as given (Lava's Conv does not clip or truncate).
    Output per step: ``wrap_{out_bits}(shift_exp(conv(W, s), weight_exp))``.
    """

    kind: ClassVar[str] = "conv2d"
    role: ClassVar[str] = "synapse"
    weight: np.ndarray
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    weight_exp: int = 0
    out_bits: int = 24

    def __post_init__(self) -> None:
        self.weight = _iarr("conv2d", "weight", self.weight)
        self.stride = pair("conv2d", "stride", self.stride)
        self.padding = pair("conv2d", "padding", self.padding)
        self.dilation = pair("conv2d", "dilation", self.dilation)
        for name in ("groups", "weight_exp", "out_bits"):
            setattr(self, name, integral("conv2d", name, getattr(self, name)))

    def validate(self, name: str) -> None:
        if self.weight.ndim != 4:
            raise GraphError(f"weight must be 4-d (C_out, C_in, kH, kW), got {self.weight.shape}", node=name)
        if self.groups < 1 or self.weight.shape[0] % self.groups:
            raise GraphError(f"C_out={self.weight.shape[0]} not divisible by groups={self.groups}", node=name)
        if min(self.stride) < 1 or min(self.dilation) < 1 or min(self.padding) < 0:
            raise GraphError("stride and dilation must be >= 1 and padding >= 0", node=name)
        _check_range(name, "weight", self.weight, -(2**31), INT32_MAX)
        lim = self.limits()
        _check_range(name, "weight_exp", self.weight_exp, *lim["weight_exp"])
        _check_range(name, "out_bits", self.out_bits, *lim["out_bits"])

    @staticmethod
    def limits() -> dict[str, Range]:
        """The ranges (inclusive) a target's ``[conv2d]`` section may declare: its weight range
        (16 bits: the node itself accepts any int32 weight), weight exponent and output width."""
        return {"weight": (-(2**15), 2**15 - 1), "weight_exp": WEIGHT_EXP, "out_bits": OUT_BITS}

    def output_shape(self, name: str, input_shape: Shape | None) -> Shape:
        return conv_output_shape(name, self.weight.shape, self.groups, self.stride, self.padding, self.dilation,
                                 input_shape)


@dataclass(eq=False)
class FxNeuron(FxNode):
    """Base of the neuron populations; ``shape`` excludes batch."""

    role: ClassVar[str] = "neuron"
    shape: Shape

    def output_shape(self, name: str, input_shape: Shape | None) -> Shape:
        if input_shape != self.shape:
            raise GraphError(f"expects input shape {self.shape}, gets {input_shape}", node=name)
        return self.shape

    def state_names(self) -> tuple[str, ...]:
        raise NotImplementedError

    def spike_payload(self) -> int:
        """The largest value one element of this layer's spike output carries per step: 1 for
        binary spikes (every neuron kind but a graded ``FxPoly``)."""
        return 1

    def spike_rule(self) -> SpikeRule | None:
        """How the layer spikes, in a float ``Neuron``'s terms (``SpikeRule``); None for a kind
        whose rule is not one of those (a non-spiking readout, Lava's ATRLIF)."""
        return None


@dataclass(eq=False)
class FxLIF(FxNeuron):
    """Stock Loihi LIF (Lava ``LIF``, ``PyLifModelBitAcc``); one step (``docs/fixed-point.md`` 4)::

        u  = corr24(wrap32(trunc0(u * (4096 - du - 1) / 4096) + wrap32(a << 6)))
        v' = sat24(wrap32(trunc0(v * (4096 - dv) / 4096) + u + (bias_mant << bias_exp)))
        s  = v' > (vth << 6);   v = 0 where s else v'

    ``du``, ``dv`` and ``vth`` are per layer (as in Lava); ``bias_mant``/``bias_exp`` per neuron.
    ``u_init``/``v_init`` are the states before the first step (zeros unless testing edges). The
    widths (``state_bits``, ``decay_bits``, ``vth_shift``, ``act_shift``) are the chip's constants,
    carried so the node is self-describing; targets pin them.
    """

    kind: ClassVar[str] = "lif"
    #: The stock LIF's fixed rules (``docs/fixed-point.md`` 4.2), implemented by the contract step:
    #: ``u`` wraps, ``v`` saturates, decays truncate toward zero.
    U_OVERFLOW: ClassVar[str] = "wrap"
    V_OVERFLOW: ClassVar[str] = "saturate"
    DECAY_ROUNDING: ClassVar[str] = "trunc"
    du: int = 4095
    dv: int = 0
    vth: int = 10
    bias_mant: np.ndarray | int = 0
    bias_exp: np.ndarray | int = 0
    u_init: np.ndarray | int = 0
    v_init: np.ndarray | int = 0
    state_bits: int = 24
    decay_bits: int = 12
    vth_shift: int = 6
    act_shift: int = 6

    def spike_rule(self) -> SpikeRule | None:
        return SpikeRule(">", 1, False, "value")  # s = v' > vth_eff, one spike, no floor, v = 0 (4.2)

    def __post_init__(self) -> None:
        self.shape = tuple(integral("lif", "shape", s) for s in self.shape)
        for name in ("du", "dv", "vth", "state_bits", "decay_bits", "vth_shift", "act_shift"):
            setattr(self, name, integral("lif", name, getattr(self, name)))
        for name in ("bias_mant", "bias_exp", "u_init", "v_init"):
            a = _iarr("lif", name, getattr(self, name))
            try:
                setattr(self, name, np.broadcast_to(a, self.shape).copy())
            except ValueError as e:
                raise GraphError(f"'{name}' of shape {a.shape} does not fit {self.shape}", node="lif") from e

    def state_names(self) -> tuple[str, ...]:
        return ("u", "v")

    @property
    def bias(self) -> np.ndarray:
        """``bias_mant << bias_exp`` (floor right shift for a negative exponent)."""
        m, e = np.asarray(self.bias_mant), np.asarray(self.bias_exp)
        return np.where(e >= 0, m << np.maximum(e, 0), m >> np.maximum(-e, 0))

    @staticmethod
    def limits(decay_bits: int, vth_shift: int) -> dict[str, Range]:
        """The range (inclusive) of every width and parameter, for the given ``decay_bits`` and
        ``vth_shift``; a target's ``[neurons.lif]`` section lies inside them (checked on load)."""
        unity = 1 << min(max(int(decay_bits), 1), 16)  # an out-of-range decay_bits is refused by its own range
        return {"state_bits": (2, 30), "decay_bits": (1, 16), "vth_shift": (0, 16), "act_shift": (0, 16),
                "du": (0, unity - 1), "dv": (0, unity - 1), "vth": (0, INT32_MAX >> min(max(int(vth_shift), 0), 16)),
                "bias_mant": (-(2**15), 2**15 - 1), "bias_exp": (-15, 15)}

    def validate(self, name: str) -> None:
        for key, (lo, hi) in self.limits(self.decay_bits, self.vth_shift).items():
            _check_range(name, key, getattr(self, key), lo, hi)
        _check_range(name, "bias (bias_mant << bias_exp)", self.bias, -(2**30), 2**30)
        half = 1 << (self.state_bits - 1)
        _check_range(name, "u_init", self.u_init, -half + 1, half)
        _check_range(name, "v_init", self.v_init, -half + 1, half - 1)


@dataclass(eq=False)
class FxPoly(FxNeuron):
    """lnm-deploy's programmable polynomial neuron (``docs/fixed-point.md`` section 5); one step::

        x  = a << in_shift
        c  = ovf_S(rnd(c * (2**D - syn_decay), D) + x)      if has_synapse, else c = ovf_S(x)
        H  = coef[d];  for k = d-1 .. 0:  H = ovf_R(rnd(H * v, shifts[k]) + coef[k])
        v' = ovf_S(H + c)
        f  = v' > vth  (threshold ">")  or  v' >= vth  (threshold ">=")
        s  = f                                                 max_payload == 1 (binary)
             f * min(max(v' // vth, 1), max_payload)          max_payload > 1 (graded count)
        v  = v_reset where f (reset "value") or ovf_S(v' - s * vth) (reset "subtract"), else v'
        v  = max(v, v_floor)                                   with a v_floor only

    ``coef`` is (degree+1, *shape), ascending: ``coef[k]`` is theta_k on the grid of Horner
    register k, whose fraction bits are ``f_k = shifts[0] + ... + shifts[k-1]`` (``f_0 = 0``: the
    state grid), so a calibrator picks one scale per term. ``shifts`` has ``degree`` entries. S =
    ``state_bits``, R = ``acc_bits`` (Horner register), D = ``decay_bits``; ``rnd`` is
    ``rounding``, ``ovf`` is ``overflow``. ``syn_decay`` is None for no current state.

    ``c_bias`` (per neuron, or None: none) is the current-bias register (section 5, step 1): a
    constant added to the shifted input every step, on the current's (state) grid, ``x = (a <<
    in_shift) + c_bias``, before the current update; ``|c_bias| <= 2**(S-1) - 1``.

    ``threshold``, ``max_payload`` (1..``MAX_PAYLOAD``; graded needs ``vth >= 1``) and ``v_floor``
    (per neuron, None: no floor) were added after the first version (section 5.2); at their
    defaults the neuron is the binary one above and encodes as before.
    """

    kind: ClassVar[str] = "poly"
    RESETS: ClassVar[tuple[str, ...]] = RESET_MODES
    coef: np.ndarray
    shifts: tuple[int, ...] = (0,)
    vth: np.ndarray | int = 0
    v_reset: np.ndarray | int = 0
    reset: FxReset = "value"
    in_shift: int = 0
    syn_decay: np.ndarray | int | None = None
    rounding: Rounding = "nearest"
    overflow: Overflow = "saturate"
    state_bits: int = 24
    acc_bits: int = 32
    coef_bits: int = 16
    decay_bits: int = 12
    v_init: np.ndarray | int = 0
    c_init: np.ndarray | int = 0
    threshold: str = field(default=">", metadata=OMIT_DEFAULT)
    max_payload: int = field(default=1, metadata=OMIT_DEFAULT)
    v_floor: np.ndarray | int | None = None
    c_bias: np.ndarray | int | None = None

    def __post_init__(self) -> None:
        self.shape = tuple(integral("poly", "shape", s) for s in self.shape)
        self.max_payload = integral("poly", "max_payload", self.max_payload)
        coef = _iarr("poly", "coef", self.coef)
        if coef.ndim == 0:
            coef = coef.reshape(1)
        if coef.ndim == 1:
            coef = coef.reshape(-1, *([1] * len(self.shape)))
        try:
            self.coef = np.broadcast_to(coef, (coef.shape[0], *self.shape)).copy()
        except ValueError as e:
            raise GraphError(f"'coef' of shape {coef.shape} does not fit {self.shape}", node="poly") from e
        self.shifts = tuple(integral("poly", "shifts", s) for s in np.asarray(self.shifts).reshape(-1))
        for name in ("in_shift", "state_bits", "acc_bits", "coef_bits", "decay_bits"):
            setattr(self, name, integral("poly", name, getattr(self, name)))
        names = ["vth", "v_reset", "v_init", "c_init"] + ([] if self.syn_decay is None else ["syn_decay"])
        names += [] if self.v_floor is None else ["v_floor"]
        for name in names:
            a = _iarr("poly", name, getattr(self, name))
            try:
                setattr(self, name, np.broadcast_to(a, self.shape).copy())
            except ValueError as e:
                raise GraphError(f"'{name}' of shape {a.shape} does not fit {self.shape}", node="poly") from e
        if self.c_bias is not None:  # the current-bias register: per neuron
            cb = _iarr("poly", "c_bias", self.c_bias)
            try:
                self.c_bias = np.broadcast_to(cb, self.shape).copy()
            except ValueError as e:
                raise GraphError(f"'c_bias' of shape {cb.shape} does not fit {self.shape}", node="poly") from e

    @property
    def degree(self) -> int:
        return int(self.coef.shape[0]) - 1

    @property
    def has_synapse(self) -> bool:
        return self.syn_decay is not None

    def state_names(self) -> tuple[str, ...]:
        return ("v", "c") if self.has_synapse else ("v",)

    @property
    def graded(self) -> bool:
        """Whether a step sends spike counts (``max_payload > 1``) rather than binary spikes."""
        return self.max_payload > 1

    def spike_payload(self) -> int:
        return self.max_payload

    def spike_rule(self) -> SpikeRule | None:
        return SpikeRule(self.threshold, self.max_payload, self.v_floor is not None, self.reset)

    @staticmethod
    def limits(state_bits: int, acc_bits: int) -> dict[str, Range]:
        """The range (inclusive) of every width and shift, for the given state and register widths;
        a target's ``[neurons.poly]`` section lies inside them (checked on load)."""
        return {"degree": POLY_DEGREES, "state_bits": (2, 32), "acc_bits": (2, 64 - state_bits),
                "coef_bits": (2, acc_bits), "decay_bits": (1, 16), "in_shift": (0, 31), "shifts": (0, 62),
                "c_bias": (-(2 ** (state_bits - 1) - 1), 2 ** (state_bits - 1) - 1)}

    def validate(self, name: str) -> None:
        if self.reset not in self.RESETS:
            raise GraphError(f"reset must be one of {self.RESETS}, got {self.reset!r}", node=name)
        if self.rounding not in ROUNDINGS:
            raise GraphError(f"rounding must be one of {ROUNDINGS}, got {self.rounding!r}", node=name)
        if self.overflow not in OVERFLOWS:
            raise GraphError(f"overflow must be one of {OVERFLOWS}, got {self.overflow!r}", node=name)
        lim = self.limits(self.state_bits, self.acc_bits)
        if not lim["degree"][0] <= self.degree <= lim["degree"][1]:
            raise GraphError(f"polynomial degree must be {lim['degree'][0]}..{lim['degree'][1]}, "
                             f"got {self.degree}", node=name)
        if len(self.shifts) != self.degree:
            raise GraphError(
                f"needs one shift per Horner step ({self.degree}), got {len(self.shifts)}", node=name
            )
        for key in ("state_bits", "acc_bits", "coef_bits", "decay_bits", "in_shift"):
            _check_range(name, key, getattr(self, key), *lim[key])
        _check_range(name, "shifts", np.asarray(self.shifts), *lim["shifts"])
        cm = (1 << (self.coef_bits - 1)) - 1
        _check_range(name, "coef", self.coef, -cm, cm)
        sm = (1 << (self.state_bits - 1)) - 1
        _check_range(name, "vth", self.vth, 0, sm)
        _check_range(name, "v_reset", self.v_reset, -sm, sm)
        _check_range(name, "v_init", self.v_init, -sm, sm)
        _check_range(name, "c_init", self.c_init, -sm, sm)
        if self.syn_decay is not None:
            _check_range(name, "syn_decay", self.syn_decay, 0, 1 << self.decay_bits)
        if self.threshold not in THRESHOLD_TESTS:
            raise GraphError(f"threshold must be one of {THRESHOLD_TESTS}, got {self.threshold!r}", node=name)
        _check_range(name, "max_payload", self.max_payload, 1, MAX_PAYLOAD)
        if self.graded and np.asarray(self.vth).size and np.asarray(self.vth).min() < 1:
            raise GraphError(f"graded spikes (max_payload {self.max_payload}) count v' // vth and need "
                             f"vth >= 1 everywhere, got min {np.asarray(self.vth).min()}", node=name)
        if self.v_floor is not None:
            _check_range(name, "v_floor", self.v_floor, -sm, sm)
        if self.c_bias is not None:
            _check_range(name, "c_bias", self.c_bias, *lim["c_bias"])


def fx_node_types() -> dict[str, type[FxNode]]:
    """Every integer node class by ``kind``, from the primitive registry
    (``lnm_deploy.fixedpoint.primitives``)."""
    from lnm_deploy.fixedpoint.primitives import primitives

    return {k: p.node_type for k, p in primitives().items()}
