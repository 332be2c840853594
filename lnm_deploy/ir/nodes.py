"""Node types of lnm-deploy's intermediate representation.

The IR is *discrete time*: one call of a node is one timestep, and every parameter is already in
per-step units (NIR's continuous-time nodes are discretised by the importer, ``lnm_deploy.nir_io``,
which records how). Shapes never include the batch dimension. Arrays are float64 numpy arrays.

Neuron semantics (one step, elementwise over ``shape``; see ``docs/ir.md``)::

    c[t]  = syn_decay * c[t-1] + syn_gain * x[t]     if the node has a synapse, else c[t] = x[t]
    v'[t] = P(v[t-1]) + in_gain * c[t]              P(v) = sum_k poly[k] * v**k (Horner)
    f[t]  = v'[t] > v_th   (threshold ">", the default)   or   v'[t] >= v_th   (threshold ">=")
    s[t]  = f[t]                                    max_spikes == 1 (binary spikes, the default)
            f[t] * clip(floor(v'[t] / v_th), 1, max_spikes)
                                                    max_spikes > 1 or None (unbounded): graded,
                                                    several spikes per step (Sinabs MultiSpike,
                                                    Rockpool); needs v_th > 0
    v[t]  = v_reset          where f[t]   (reset "value")
            v'[t] - s[t] v_th where f[t]  (reset "subtract": one v_th per spike)
            v'[t]            elsewhere
    v[t]  = max(v[t], v_floor)                      only with a v_floor (Sinabs min_v_mem), after reset
    out   = s[t] if v_th is not None else v'[t]     (a non-spiking integrator outputs its membrane)

Horner order is part of the contract: ``P(v) = (...(poly[d] * v + poly[d-1]) * v + ...) + poly[0]``,
so that the PyTorch model and the numpy executor agree bit for bit in float64.

Each node kind owns its float behaviour here: ``float_step`` (what the float executor, calibration
statistics and ``verify``'s divergence replay call; the arithmetic is in ``lnm_deploy.ir.ops``),
``state_names``, ``emits_spikes`` / ``spike_source``, ``linear`` / ``synaptic`` (what the quantizer
folds into synapses, what the statistics record as a current) and ``describe`` (``lnm-deploy inspect``).
``node_types()`` collects the kinds from the class tree; ``node_type(kind)`` looks one up.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from numpy.typing import DTypeLike

from lnm_deploy.errors import GraphError, NumericError, UnsupportedError
from lnm_deploy.ir import ops
from lnm_deploy.ir.ops import FloatStep, NeuronStep, StatelessStep
from lnm_deploy.limits import POLY_DEGREES, RESET_MODES, THRESHOLD_TESTS, ResetMode, ThresholdTest

Shape = tuple[int, ...]


def _arr(x: Any) -> np.ndarray:
    return np.asarray(x, dtype=np.float64)


def _check_finite(node: str, **arrays: np.ndarray | None) -> None:
    for pname, a in arrays.items():
        if a is not None and not np.all(np.isfinite(a)):
            raise NumericError(
                f"parameter '{pname}' has NaN or infinite values; retrain or fix the export",
                node=node,
            )


def _broadcasts_to(name: str, what: str, a: np.ndarray, input_shape: Shape | None) -> Shape:
    """``input_shape``, checked: the elementwise parameter ``a`` must broadcast to it."""
    if input_shape is None:
        raise GraphError("node has no input", node=name)
    try:
        ok = np.broadcast_shapes(a.shape, tuple(input_shape)) == tuple(input_shape)
    except ValueError:
        ok = False
    if not ok:
        raise GraphError(f"'{what}' of shape {a.shape} does not broadcast to the input shape "
                         f"{tuple(input_shape)}", node=name)
    return tuple(input_shape)


def conv_output_shape(name: str, weight_shape: tuple[int, ...], groups: int, stride: tuple[int, int],
                      padding: tuple[int, int], dilation: tuple[int, int], input_shape: Shape | None) -> Shape:
    """(C_out, H_out, W_out) of a 2-d convolution (torch's rule) on input (C_in, H, W)."""
    cin = weight_shape[1] * groups
    if input_shape is None or len(input_shape) != 3 or input_shape[0] != cin:
        raise GraphError(f"expects input (C={cin}, H, W), gets {input_shape}", node=name)
    hw = []
    for i in range(2):
        k = dilation[i] * (weight_shape[2 + i] - 1) + 1
        n = (input_shape[1 + i] + 2 * padding[i] - k) // stride[i] + 1
        if n < 1:
            raise GraphError(f"input {input_shape} too small for the kernel {tuple(weight_shape[2:])} (dilation "
                             f"{dilation}, padding {padding}, stride {stride}): no output position; pad the input "
                             "or use a smaller kernel", node=name)
        hw.append(n)
    return (weight_shape[0], hw[0], hw[1])


def pool_output_shape(name: str, kernel_size: tuple[int, int], stride: tuple[int, int],
                      padding: tuple[int, int], input_shape: Shape | None) -> Shape:
    """(C, H_out, W_out) of a 2-d pooling window on input (C, H, W)."""
    if input_shape is None or len(input_shape) != 3:
        raise GraphError(f"expects input (C, H, W), gets {input_shape}", node=name)
    hw = [(input_shape[1 + i] + 2 * padding[i] - kernel_size[i]) // stride[i] + 1 for i in range(2)]
    if min(hw) < 1:
        raise GraphError(f"input {input_shape} too small for the pooling window {kernel_size} (padding "
                         f"{padding}, stride {stride}): no output position; pool a larger map or use a smaller "
                         "window", node=name)
    return (input_shape[0], hw[0], hw[1])


def stats(a: np.ndarray) -> dict[str, Any]:
    """shape / min / max / mean / std of an array, as plain values (JSON-ready)."""
    a = np.asarray(a, dtype=np.float64)
    return {
        "shape": list(a.shape),
        "min": float(a.min()),
        "max": float(a.max()),
        "mean": float(a.mean()),
        "std": float(a.std()),
    }


def is_integer(x: Any) -> bool:
    """Whether ``x`` is an integer or an integral finite float (not a bool, never truncated:
    2.7 is not 2): the test of every integer parameter of a node."""
    return (not isinstance(x, (bool, np.bool_)) and isinstance(x, (int, np.integer, float, np.floating))
            and bool(np.isfinite(x)) and x == np.floor(x))


def pair(node: str, name: str, v: Any) -> tuple[int, int]:
    """``v`` (an integer or a pair: stride, padding, dilation, kernel size) as a pair of ints;
    ``GraphError`` naming ``node`` and ``name`` for anything else, a non-integral number included
    (never truncated: a stride of 1.5 is not 1)."""
    a = np.asarray(v).reshape(-1)
    integral = all(is_integer(x) for x in a)
    if integral and a.size == 1:
        return (int(a[0]), int(a[0]))
    if integral and a.size == 2:
        return (int(a[0]), int(a[1]))
    raise GraphError(f"'{name}' must be an int or a pair of ints, got {v!r}", node=node)


@dataclass(eq=False)
class Node:
    """Base of all IR nodes. ``metadata`` is free-form provenance (never semantics)."""

    kind: ClassVar[str] = "node"
    #: Stateless and linear in its input (``y = A x + b``, any reshaping included): it may sit on a
    #: synapse chain between spiking layers, which the quantizer composes into one synapse.
    linear: ClassVar[bool] = False
    #: Its output is a synaptic input current (a linear map of spikes or states), whose range the
    #: calibration statistics record; a pure reshaping (Flatten) is linear but not synaptic.
    synaptic: ClassVar[bool] = False
    metadata: dict[str, Any] = field(default_factory=dict, kw_only=True)

    def validate(self, name: str) -> None:
        """Check the parameters are internally consistent and finite; raise ``GraphError``."""

    def output_shape(self, name: str, input_shape: Shape | None) -> Shape:
        """The node's output shape (no batch dim) given its input shape."""
        if input_shape is None:
            raise GraphError("node has no input", node=name)
        return input_shape

    @property
    def state_names(self) -> tuple[str, ...]:
        """The state variables its float step keeps across steps (recorded by ``run_float(record=True)``
        as ``RunResult.states[name][state]``); empty for a stateless node."""
        return ()

    @property
    def stateful(self) -> bool:
        """True when the node keeps state across steps; at the virtual step t = -1 (what a delayed
        edge delivers at t = 0) a stateful node shows its initial output, 0."""
        return bool(self.state_names)

    @property
    def emits_spikes(self) -> bool:
        """True when its output is spikes (recorded in ``RunResult.spikes``): 0/1, or counts up to
        ``max_spike_count`` per step."""
        return False

    @property
    def max_spike_count(self) -> int | None:
        """The most spikes per step and neuron its output holds: 1 (binary spikes), a larger count
        (graded spikes) or None (unbounded). Read only where ``emits_spikes``."""
        return 1

    @property
    def spike_source(self) -> bool:
        """True when it feeds spikes into synapses on a neuromorphic chip (the input, spiking neurons)."""
        return False

    def float_step(self, name: str, batch: int, dtype: DTypeLike) -> FloatStep:
        """The node's float step for one run on ``batch`` samples in ``dtype``: ``step(x) -> y`` with
        x and y ``(batch, *shape)``; a stateful step starts at rest and exposes ``state_names``.

        Raises:
            UnsupportedError: a node kind without float semantics.
        """
        raise UnsupportedError(f"node kind {self.kind!r} has no float step", node=name)

    @property
    def time_step(self) -> float | None:
        """Seconds per step the node records (a neuron's ``dt``, kept for export); None for nodes
        whose behaviour has no time scale."""
        return None

    def describe(self) -> dict[str, Any]:
        """Parameter statistics for ``lnm-deploy inspect`` (plain, JSON-ready values)."""
        return {}


@dataclass(eq=False)
class Input(Node):
    """Graph input; ``shape`` excludes batch and time."""

    kind: ClassVar[str] = "input"
    shape: Shape

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)

    def output_shape(self, name: str, input_shape: Shape | None) -> Shape:
        return self.shape

    @property
    def spike_source(self) -> bool:
        return True

    def float_step(self, name: str, batch: int, dtype: DTypeLike) -> FloatStep:
        return StatelessStep(_identity)


def _identity(x: np.ndarray) -> np.ndarray:
    return x


@dataclass(eq=False)
class Output(Node):
    """Graph output; passes its (single) input through."""

    kind: ClassVar[str] = "output"

    def float_step(self, name: str, batch: int, dtype: DTypeLike) -> FloatStep:
        return StatelessStep(_identity)


@dataclass(eq=False)
class Affine(Node):
    """``y = weight @ x + bias``; weight (out, in), bias (out,) or None. x must be 1-d."""

    kind: ClassVar[str] = "affine"
    linear: ClassVar[bool] = True
    synaptic: ClassVar[bool] = True
    weight: np.ndarray
    bias: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.weight = _arr(self.weight)
        self.bias = None if self.bias is None else _arr(self.bias)

    def validate(self, name: str) -> None:
        if self.weight.ndim != 2:
            raise GraphError(f"weight must be 2-d (out, in), got {self.weight.shape}", node=name)
        if self.bias is not None and self.bias.shape != (self.weight.shape[0],):
            raise GraphError(
                f"bias shape {self.bias.shape} does not match weight rows {self.weight.shape[0]}",
                node=name,
            )
        _check_finite(name, weight=self.weight, bias=self.bias)

    def output_shape(self, name: str, input_shape: Shape | None) -> Shape:
        fan_in = self.weight.shape[1]
        if input_shape != (fan_in,):
            if input_shape is not None and len(input_shape) > 1 and int(np.prod(input_shape)) == fan_in:
                fix = "insert a Flatten before it"
            else:  # not the same number of values: a Flatten would not help
                fix = (f"its weight (out, in) = {tuple(self.weight.shape)} takes {fan_in} values per step; "
                       "check the layer before it or the weight's orientation")
            raise GraphError(f"expects input shape ({fan_in},), gets {input_shape}; {fix}", node=name)
        return (self.weight.shape[0],)

    def float_step(self, name: str, batch: int, dtype: DTypeLike) -> FloatStep:
        w = self.weight.astype(dtype)
        if self.bias is None:
            return StatelessStep(lambda x: x @ w.T)
        b = self.bias.astype(dtype)
        return StatelessStep(lambda x: x @ w.T + b)

    def describe(self) -> dict[str, Any]:
        p = {"weight": stats(self.weight)}
        if self.bias is not None:
            p["bias"] = stats(self.bias)
        return p


@dataclass(eq=False)
class Scale(Node):
    """``y = scale * x`` elementwise (scale broadcast to the input shape)."""

    kind: ClassVar[str] = "scale"
    linear: ClassVar[bool] = True
    synaptic: ClassVar[bool] = True
    scale: np.ndarray

    def __post_init__(self) -> None:
        self.scale = _arr(self.scale)

    def validate(self, name: str) -> None:
        _check_finite(name, scale=self.scale)

    def output_shape(self, name: str, input_shape: Shape | None) -> Shape:
        return _broadcasts_to(name, "scale", self.scale, input_shape)

    def float_step(self, name: str, batch: int, dtype: DTypeLike) -> FloatStep:
        sc = self.scale.astype(dtype)
        return StatelessStep(lambda x: x * sc)

    def describe(self) -> dict[str, Any]:
        return {"scale": stats(self.scale)}


@dataclass(eq=False)
class Conv2d(Node):
    """2-d cross-correlation as ``torch.nn.functional.conv2d``; input (C_in, H, W).

    weight (C_out, C_in/groups, kH, kW); bias (C_out,) or None; zero padding (pH, pW) on both sides.
    """

    kind: ClassVar[str] = "conv2d"
    linear: ClassVar[bool] = True
    synaptic: ClassVar[bool] = True
    weight: np.ndarray
    bias: np.ndarray | None = None
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1

    def __post_init__(self) -> None:
        self.weight = _arr(self.weight)
        self.bias = None if self.bias is None else _arr(self.bias)
        self.stride = pair("conv2d", "stride", self.stride)
        self.padding = pair("conv2d", "padding", self.padding)
        self.dilation = pair("conv2d", "dilation", self.dilation)
        self.groups = int(self.groups)

    def validate(self, name: str) -> None:
        if self.weight.ndim != 4:
            raise GraphError(f"weight must be 4-d (C_out, C_in, kH, kW), got {self.weight.shape}", node=name)
        if self.weight.shape[0] % self.groups:
            raise GraphError(f"C_out={self.weight.shape[0]} not divisible by groups={self.groups}", node=name)
        if self.bias is not None and self.bias.shape != (self.weight.shape[0],):
            raise GraphError(f"bias shape {self.bias.shape} != ({self.weight.shape[0]},)", node=name)
        if min(self.stride) < 1 or min(self.dilation) < 1 or min(self.padding) < 0:
            raise GraphError("stride and dilation must be >= 1 and padding >= 0", node=name)
        _check_finite(name, weight=self.weight, bias=self.bias)

    def output_shape(self, name: str, input_shape: Shape | None) -> Shape:
        return conv_output_shape(name, self.weight.shape, self.groups, self.stride, self.padding, self.dilation,
                                 input_shape)

    def float_step(self, name: str, batch: int, dtype: DTypeLike) -> FloatStep:
        w = self.weight.astype(dtype)
        b = None if self.bias is None else self.bias.astype(dtype)
        return StatelessStep(lambda x: ops.conv2d(x, w, b, self.stride, self.padding, self.dilation, self.groups))

    def describe(self) -> dict[str, Any]:
        p: dict[str, Any] = {"weight": stats(self.weight)}
        if self.bias is not None:
            p["bias"] = stats(self.bias)
        p["conv"] = {"stride": self.stride, "padding": self.padding, "dilation": self.dilation,
                     "groups": self.groups}
        return p


@dataclass(eq=False)
class _Pool2d(Node):
    linear: ClassVar[bool] = True
    synaptic: ClassVar[bool] = True
    kernel_size: tuple[int, int]
    stride: tuple[int, int] | None = None
    padding: tuple[int, int] = (0, 0)

    def __post_init__(self) -> None:
        self.kernel_size = pair(self.kind, "kernel_size", self.kernel_size)
        self.stride = self.kernel_size if self.stride is None else pair(self.kind, "stride", self.stride)
        self.padding = pair(self.kind, "padding", self.padding)

    def output_shape(self, name: str, input_shape: Shape | None) -> Shape:
        assert self.stride is not None
        return pool_output_shape(name, self.kernel_size, self.stride, self.padding, input_shape)

    #: Mean instead of sum over each window (zero padding counted).
    average: ClassVar[bool] = False

    def float_step(self, name: str, batch: int, dtype: DTypeLike) -> FloatStep:
        stride = self.stride
        assert stride is not None
        return StatelessStep(lambda x: ops.pool2d(x, self.kernel_size, stride, self.padding, self.average))


@dataclass(eq=False)
class SumPool2d(_Pool2d):
    """Sum over each window (zero padding); input (C, H, W)."""

    kind: ClassVar[str] = "sumpool2d"


@dataclass(eq=False)
class AvgPool2d(_Pool2d):
    """Mean over each window, zero padding counted (torch ``count_include_pad=True``)."""

    kind: ClassVar[str] = "avgpool2d"
    average: ClassVar[bool] = True


@dataclass(eq=False)
class Flatten(Node):
    """Flatten dims ``start_dim..end_dim`` (inclusive) of the *unbatched* input into one."""

    kind: ClassVar[str] = "flatten"
    linear: ClassVar[bool] = True
    start_dim: int = 0
    end_dim: int = -1

    def output_shape(self, name: str, input_shape: Shape | None) -> Shape:
        if input_shape is None:
            raise GraphError("node has no input", node=name)
        n = len(input_shape)
        s = self.start_dim % n if n else 0
        e = self.end_dim % n if n else 0
        if s > e:
            raise GraphError(f"start_dim {self.start_dim} after end_dim {self.end_dim} for {input_shape}", node=name)
        return (*input_shape[:s], int(np.prod(input_shape[s : e + 1])), *input_shape[e + 1 :])

    def float_step(self, name: str, batch: int, dtype: DTypeLike) -> FloatStep:
        return StatelessStep(lambda x: ops.flatten(x, self.start_dim, self.end_dim))


@dataclass(eq=False)
class Threshold(Node):
    """Stateless spike test ``s = x > v_th``."""

    kind: ClassVar[str] = "threshold"
    v_th: np.ndarray

    def __post_init__(self) -> None:
        self.v_th = _arr(self.v_th)

    def validate(self, name: str) -> None:
        _check_finite(name, v_th=self.v_th)

    def output_shape(self, name: str, input_shape: Shape | None) -> Shape:
        return _broadcasts_to(name, "v_th", self.v_th, input_shape)

    @property
    def emits_spikes(self) -> bool:
        return True

    def float_step(self, name: str, batch: int, dtype: DTypeLike) -> FloatStep:
        th = self.v_th.astype(dtype)
        return StatelessStep(lambda x: (x > th).astype(dtype))

    def describe(self) -> dict[str, Any]:
        return {"v_th": stats(self.v_th)}


@dataclass(eq=False)
class Neuron(Node):
    """Discrete-time LNM neuron population (see the module docstring for the equations).

    All arrays are full-shape: ``poly`` is (degree+1, *shape) with ascending coefficients
    theta_0..theta_d, every other array has ``shape``. ``dt`` (seconds per step) is recorded for
    export only; the dynamics are already per step.
    """

    kind: ClassVar[str] = "neuron"
    shape: Shape
    poly: np.ndarray
    v_th: np.ndarray | None
    # None (the default) is filled in by __post_init__: 0 and 1, full-shape; never None after it.
    v_reset: np.ndarray = None  # type: ignore[assignment]
    reset: ResetMode = "value"
    in_gain: np.ndarray = None  # type: ignore[assignment]
    syn_decay: np.ndarray | None = None
    syn_gain: np.ndarray | None = None
    dt: float = 1.0
    #: the spike test, ``">"`` (strict, the default) or ``">="`` (Sinabs, Rockpool).
    threshold: ThresholdTest = ">"
    #: spikes per step at most: 1 (binary, the default), an integer > 1 or None (unbounded) for
    #: graded (multi-)spikes ``floor(v'/v_th)``.
    max_spikes: int | None = 1
    #: lower bound of the membrane after reset (full-shape), or None (no floor).
    v_floor: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)

        def full(x: Any, default: float | None) -> np.ndarray | None:
            if x is None:
                if default is None:
                    return None
                x = default
            return np.broadcast_to(_arr(x), self.shape).copy()

        poly = _arr(self.poly)
        if poly.ndim == 0:
            poly = poly.reshape(1)
        if poly.ndim == 1:  # one polynomial shared by the whole population
            poly = poly.reshape(-1, *([1] * len(self.shape)))
        self.poly = np.broadcast_to(poly, (poly.shape[0], *self.shape)).copy()
        self.v_th = full(self.v_th, None)
        self.v_reset = full(self.v_reset, 0.0)  # type: ignore[assignment]
        self.in_gain = full(self.in_gain, 1.0)  # type: ignore[assignment]
        if self.syn_decay is not None:
            self.syn_decay = full(self.syn_decay, None)
            self.syn_gain = full(self.syn_gain, 1.0)
        elif self.syn_gain is not None:
            raise GraphError("syn_gain given without syn_decay")
        self.dt = float(self.dt)
        self.v_floor = full(self.v_floor, None)
        ms = self.max_spikes
        if isinstance(ms, (int, np.integer, float, np.floating)) and not isinstance(ms, bool) and np.isfinite(ms) \
                and ms == np.floor(ms):
            self.max_spikes = int(ms)  # an integral value; anything else is refused by validate, never truncated

    @property
    def degree(self) -> int:
        return int(self.poly.shape[0]) - 1

    @property
    def spiking(self) -> bool:
        return self.v_th is not None

    def validate(self, name: str) -> None:
        if self.reset not in RESET_MODES:
            raise GraphError(f"reset must be one of {RESET_MODES}, got {self.reset!r}", node=name)
        if self.threshold not in THRESHOLD_TESTS:
            raise GraphError(f"threshold must be one of {THRESHOLD_TESTS}, got {self.threshold!r}", node=name)
        if self.max_spikes is not None and (isinstance(self.max_spikes, bool) or not isinstance(self.max_spikes, int)
                                            or self.max_spikes < 1):
            raise GraphError(f"max_spikes must be a positive integer or None (unbounded), got {self.max_spikes!r}",
                             node=name)
        if self.graded and self.v_th is not None and not np.all(self.v_th > 0):
            raise GraphError("graded spikes (max_spikes != 1) count floor(v / v_th) and need v_th > 0 everywhere; "
                             f"the smallest v_th is {float(np.min(self.v_th))}", node=name)
        if not POLY_DEGREES[0] <= self.degree <= POLY_DEGREES[1]:
            raise GraphError(f"polynomial degree must be {POLY_DEGREES[0]}..{POLY_DEGREES[1]}, got {self.degree}",
                             node=name)
        if not (self.dt > 0 and np.isfinite(self.dt)):
            raise GraphError(f"dt must be positive, got {self.dt}", node=name)
        _check_finite(
            name,
            poly=self.poly,
            v_th=self.v_th,
            v_reset=self.v_reset,
            in_gain=self.in_gain,
            syn_decay=self.syn_decay,
            syn_gain=self.syn_gain,
            v_floor=self.v_floor,
        )

    @property
    def graded(self) -> bool:
        """Whether a step can emit more than one spike per neuron (``max_spikes`` != 1)."""
        return self.max_spikes != 1

    def output_shape(self, name: str, input_shape: Shape | None) -> Shape:
        if input_shape != self.shape:
            raise GraphError(f"expects input shape {self.shape}, gets {input_shape}", node=name)
        return self.shape

    @property
    def state_names(self) -> tuple[str, ...]:
        """``v`` (membrane after reset), ``v_pre`` (before the spike test), ``c`` (synaptic current,
        only with a synapse)."""
        return ("v", "v_pre", "c") if self.syn_decay is not None else ("v", "v_pre")

    @property
    def emits_spikes(self) -> bool:
        return self.spiking

    @property
    def max_spike_count(self) -> int | None:
        return self.max_spikes

    @property
    def time_step(self) -> float | None:
        return self.dt

    @property
    def spike_source(self) -> bool:
        return self.spiking

    def float_step(self, name: str, batch: int, dtype: DTypeLike) -> NeuronStep:
        return NeuronStep(self.shape, self.poly, self.v_th, self.v_reset, self.reset, self.in_gain,
                          self.syn_decay, self.syn_gain, batch, dtype, threshold=self.threshold,
                          max_spikes=self.max_spikes, v_floor=self.v_floor)

    def describe(self) -> dict[str, Any]:
        poly = self.poly.reshape(self.poly.shape[0], -1)
        uniform = bool(np.all(self.poly == poly[:, :1].reshape(self.poly.shape[0], *([1] * len(self.shape)))))
        p: dict[str, Any] = {"dynamics": {
            "degree": self.degree,
            "poly": poly[:, 0].tolist() if uniform else "per neuron",
            "reset": self.reset if self.spiking else "none (integrator)",
            "synapse": self.syn_decay is not None,
            "dt": self.dt,
        }}
        if self.spiking and (self.threshold != ">" or self.graded or self.v_floor is not None):
            p["dynamics"]["spike_test"] = f"v {self.threshold} v_th"
            p["dynamics"]["max_spikes"] = "unbounded" if self.max_spikes is None else self.max_spikes
            if self.v_floor is not None:
                p["v_floor"] = stats(self.v_floor)
        if self.v_th is not None:
            p["v_th"] = stats(self.v_th)
        if self.syn_decay is not None:
            p["syn_decay"] = stats(self.syn_decay)
        if "nir_type" in self.metadata:
            p["nir_type"] = str(self.metadata["nir_type"])
        return p


def node_types() -> dict[str, type[Node]]:
    """Every concrete node class by its ``kind``, collected from the class tree (not retyped)."""
    out: dict[str, type[Node]] = {}
    stack = list(Node.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if not cls.__name__.startswith("_"):
            out[cls.kind] = cls
    return out


def node_type(kind: str) -> type[Node]:
    """The node class of ``kind``.

    Raises:
        UnsupportedError: no node class has that kind (the message lists the known ones).
    """
    known = node_types()
    if kind not in known:
        raise UnsupportedError(f"unknown IR node kind {kind!r}; known kinds: {', '.join(sorted(known))}")
    return known[kind]
