"""PyTorch layers of the Learnable Neuron Model (LNM): neurons, sum pooling, and a sequential net.

The discrete-time dynamics are exactly those of :class:`lnm_deploy.ir.nodes.Neuron` (with
``in_gain = syn_gain = 1``), one call of the step being one timestep of ``dt`` seconds::

    c[t]  = alpha * c[t-1] + x[t]             (synapse=True; else c[t] = x[t])
    v'[t] = P(v[t-1]) + c[t]                  P by Horner: (...(theta_d*v + theta_{d-1})*v ...) + theta_0
    s[t]  = v'[t] > v_th                      strict; the backward pass uses a surrogate derivative
    v[t]  = v_reset     where s[t]            reset="value"
            v'[t] - v_th where s[t]           reset="subtract"
            v'[t]        elsewhere

State starts at ``v[-1] = 0`` and ``c[-1] = 0`` (not ``v_reset``) at every call. The forward pass
uses ``torch.where`` and a plain comparison, never ``v * (1 - s)``, so that a float64 model and the
numpy executor of the IR agree spike for spike.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lnm_deploy.errors import UserInputError

Granularity = Literal["layer", "channel", "neuron"]
Surrogate = Literal["fast_sigmoid", "atan"]
GRANULARITIES: tuple[str, ...] = ("layer", "channel", "neuron")
SURROGATES: tuple[str, ...] = ("fast_sigmoid", "atan")
# alpha is clamped into this open-interval stand-in for (0, 1); inside it the clamp is the identity,
# so the exported value is bit-identical to the stored one.
ALPHA_RANGE: tuple[float, float] = (1e-3, 1.0 - 1e-3)


def horner(poly: Tensor, v: Tensor) -> Tensor:
    """Evaluate ``P(v) = sum_k poly[k] v**k`` in the contract order of the IR.

    ``poly`` holds ascending coefficients along dim 0 (each ``poly[k]`` broadcasts against ``v``);
    the result is ``((poly[d] * v + poly[d-1]) * v + ...) * v + poly[0]`` evaluated left to right,
    one rounding per multiply and per add (no fused multiply-add).
    """
    d = poly.shape[0] - 1
    p = poly[d] * v if d > 0 else poly[0] + torch.zeros_like(v)
    for k in range(d - 1, -1, -1):
        p = p + poly[k]
        if k > 0:
            p = p * v
    return p


def horner_derivative(poly: Tensor, v: Tensor) -> Tensor:
    """``P'(v)`` (any order of evaluation; used for the regulariser only)."""
    d = poly.shape[0] - 1
    out = torch.zeros_like(v + poly[0])
    for k in range(d, 0, -1):
        out = out * v + k * poly[k]
    return out


class _SpikeFn(torch.autograd.Function):
    """Heaviside ``v > v_th`` forward; surrogate derivative of ``x = v - v_th`` backward."""

    @staticmethod
    def forward(ctx: Any, v: Tensor, v_th: Tensor, slope: float, kind: str) -> Tensor:
        ctx.save_for_backward(v, v_th)
        ctx.slope = slope
        ctx.kind = kind
        return (v > v_th).to(v.dtype)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        v, v_th = ctx.saved_tensors
        x = v - v_th
        if ctx.kind == "atan":
            # d/dx of atan(pi/2 * slope * x) / pi + 1/2
            d = (ctx.slope / 2) / (1 + (math.pi / 2 * ctx.slope * x) ** 2)
        else:  # fast sigmoid (SuperSpike)
            d = 1.0 / (ctx.slope * x.abs() + 1.0) ** 2
        gv = grad * d
        g_th = (-gv).sum_to_size(v_th.shape) if ctx.needs_input_grad[1] else None
        return gv, g_th, None, None


def spike(v: Tensor, v_th: Tensor, slope: float = 5.0, kind: str = "fast_sigmoid") -> Tensor:
    """Spikes ``(v > v_th)`` in ``v``'s dtype, differentiable through a surrogate."""
    return _SpikeFn.apply(v, v_th, slope, kind)


def _as_shape(shape: int | Iterable[int]) -> tuple[int, ...]:
    if isinstance(shape, int):
        return (int(shape),)
    return tuple(int(s) for s in shape)


def _param_shape(shape: tuple[int, ...], granularity: str, what: str) -> tuple[int, ...]:
    """Parameter shape (no batch) that broadcasts against ``(N, *shape)``."""
    if granularity == "layer":
        return ()
    if granularity == "channel":
        return (shape[0], *([1] * (len(shape) - 1)))
    if granularity == "neuron":
        return shape
    raise UserInputError(f"{what} granularity must be one of {GRANULARITIES}, got {granularity!r}")


# -- layer configurations (the architecture part of a model file, lnm_deploy.model.io) ----------
DTYPES: dict[str, torch.dtype] = {
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
}


def dtype_name(dtype: torch.dtype) -> str:
    """``"float32"`` for ``torch.float32``; ``UserInputError`` for a dtype a model file cannot hold."""
    for name, d in DTYPES.items():
        if d == dtype:
            return name
    raise UserInputError(f"dtype {dtype} cannot be saved (supported: {', '.join(DTYPES)})")


class ConfigReader:
    """Strict, typed reads of one layer's configuration (a JSON object from an untrusted file).

    Every getter raises ``UserInputError`` naming the layer type and key for a missing key or a
    value of the wrong type; :meth:`done` rejects keys that were never read.
    """

    def __init__(self, cfg: Any, what: str) -> None:
        if not isinstance(cfg, Mapping):
            raise UserInputError(f"{what} config must be a JSON object, got {type(cfg).__name__}")
        self._cfg = cfg
        self._what = what
        self._read: set[str] = set()

    def _get(self, key: str) -> Any:
        if key not in self._cfg:
            raise UserInputError(f"{self._what} config lacks {key!r}")
        self._read.add(key)
        return self._cfg[key]

    def _bad(self, key: str, want: str, got: Any) -> UserInputError:
        return UserInputError(f"{self._what} config {key!r} must be {want}, got {got!r}")

    def get_int(self, key: str) -> int:
        v = self._get(key)
        if isinstance(v, bool) or not isinstance(v, int):
            raise self._bad(key, "an integer", v)
        return v

    def get_opt_int(self, key: str) -> int | None:
        return None if self._get(key) is None else self.get_int(key)

    def get_float(self, key: str) -> float:
        v = self._get(key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self._bad(key, "a finite number", v)
        return float(v)

    def get_opt_float(self, key: str) -> float | None:
        return None if self._get(key) is None else self.get_float(key)

    def get_bool(self, key: str) -> bool:
        v = self._get(key)
        if not isinstance(v, bool):
            raise self._bad(key, "true or false", v)
        return v

    def get_str(self, key: str, choices: Iterable[str]) -> str:
        v = self._get(key)
        options = tuple(choices)
        if not isinstance(v, str) or v not in options:
            raise self._bad(key, f"one of {options}", v)
        return v

    def get_ints(self, key: str, length: int | None = None) -> tuple[int, ...]:
        v = self._get(key)
        if (not isinstance(v, list) or any(isinstance(i, bool) or not isinstance(i, int) for i in v)
                or (length is not None and len(v) != length)):
            raise self._bad(key, "a list of integers" if length is None else f"a list of {length} integers", v)
        return tuple(v)

    def get_pair(self, key: str) -> tuple[int, int]:
        a, b = self.get_ints(key, 2)
        return (a, b)

    def get_dtype(self, key: str = "dtype") -> torch.dtype:
        return DTYPES[self.get_str(key, DTYPES)]

    def done(self) -> None:
        """``UserInputError`` if the config has keys no getter read."""
        extra = sorted(set(self._cfg) - self._read)
        if extra:
            raise UserInputError(f"{self._what} config has unknown keys {extra}")


_L = TypeVar("_L", bound="LNM")


class LNM(nn.Module):
    """A population of Learnable Neuron Model neurons (see the module docstring for the equations).

    Args:
        shape: population shape without batch/time, e.g. ``128`` or ``(C, H, W)``.
        degree: polynomial degree 1..3; initialised at LIF (``theta_1 = beta``, others 0).
        beta: LIF leak per step used for the initialisation.
        threshold: initial ``v_th`` (membrane units).
        reset: ``"value"`` (v = v_reset) or ``"subtract"`` (v = v' - v_th).
        v_reset: initial reset value (used by reset="value").
        synapse: add the current synapse ``c = alpha c + x`` (alpha per step, kept in ALPHA_RANGE).
        alpha: initial synaptic decay per step.
        granularity: ``"layer"``, ``"channel"`` (dim 0 of ``shape``) or ``"neuron"`` for theta and alpha.
        threshold_granularity: same choices for ``v_th`` and ``v_reset``.
        learn_poly / learn_threshold / learn_reset / learn_alpha: which are ``nn.Parameter``s.
        poly_scale: power of two ``S``; the trained parameter is ``theta_raw`` with
            ``theta_k = theta_raw_k * S**-(k-1)`` for k >= 2 (theta_0, theta_1 unscaled). This
            preconditions Adam, whose first steps move every parameter by about ``lr``: at
            membranes of 10-20, an unscaled cubic coefficient step of 5e-3 already diverges. Powers
            of two keep :meth:`set_poly` / :meth:`poly_value` exact.
        surrogate, surrogate_slope: backward-pass derivative of the spike (per unit of membrane).
        v_lo: lower end of the operating range for :meth:`regularization` (default ``-v_th``).
        reg_points: grid points of the regulariser.
        dtype: dtype of parameters and buffers (default: torch's default dtype). Pass
            ``torch.float64`` for exact float64 constants: ``.double()`` after construction keeps
            the float32-rounded initial values (0.9 becomes 0.899999976...).
    """

    # Registered as Parameters or buffers in __init__; declared here for type checkers.
    theta_raw: Tensor
    poly_gain: Tensor
    v_th: Tensor
    v_reset: Tensor
    alpha: Tensor | None
    v_seen: Tensor

    def __init__(
        self,
        shape: int | Iterable[int],
        degree: int = 2,
        *,
        beta: float = 0.9,
        threshold: float = 1.0,
        reset: Literal["value", "subtract"] = "value",
        v_reset: float = 0.0,
        synapse: bool = False,
        alpha: float = 0.8,
        granularity: Granularity = "layer",
        threshold_granularity: Granularity = "layer",
        learn_poly: bool = True,
        learn_threshold: bool = True,
        learn_reset: bool = False,
        learn_alpha: bool = True,
        poly_scale: float = 8.0,
        surrogate: Surrogate = "fast_sigmoid",
        surrogate_slope: float = 5.0,
        v_lo: float | None = None,
        reg_points: int = 33,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        self.shape = _as_shape(shape)
        if not self.shape or min(self.shape) < 1:
            raise UserInputError(f"LNM shape must be non-empty and positive, got {self.shape}")
        if degree not in (1, 2, 3):
            raise UserInputError(f"LNM degree must be 1, 2 or 3, got {degree}")
        if reset not in ("value", "subtract"):
            raise UserInputError(f"reset must be 'value' or 'subtract', got {reset!r}")
        if surrogate not in SURROGATES:
            raise UserInputError(f"surrogate must be one of {SURROGATES}, got {surrogate!r}")
        if synapse and not ALPHA_RANGE[0] <= alpha <= ALPHA_RANGE[1]:
            raise UserInputError(f"alpha must lie in {ALPHA_RANGE}, got {alpha}")
        self.degree = int(degree)
        self.reset = reset
        self.synapse = bool(synapse)
        self.granularity = granularity
        self.threshold_granularity = threshold_granularity
        self.surrogate = surrogate
        self.surrogate_slope = float(surrogate_slope)
        self.v_lo = v_lo
        self.reg_points = int(reg_points)

        pshape = _param_shape(self.shape, granularity, "poly")
        tshape = _param_shape(self.shape, threshold_granularity, "threshold")
        if not (poly_scale > 0 and math.frexp(poly_scale)[0] == 0.5):
            raise UserInputError(f"poly_scale must be a power of two, got {poly_scale}")
        self.poly_scale = float(poly_scale)
        gain = torch.tensor([1.0] + [poly_scale ** -(k - 1) for k in range(1, self.degree + 1)], dtype=dtype)
        self.register_buffer("poly_gain", gain.reshape(-1, *([1] * len(pshape))))
        theta = torch.zeros(self.degree + 1, *pshape, dtype=dtype)
        theta[1] = beta
        self._register("theta_raw", theta, learn_poly)
        self._register("v_th", torch.full(tshape, float(threshold), dtype=dtype), learn_threshold)
        self._register("v_reset", torch.full(tshape, float(v_reset), dtype=dtype), learn_reset)
        if self.synapse:
            self._register("alpha", torch.full(pshape, float(alpha), dtype=dtype), learn_alpha)
        else:
            self.alpha = None
        # Membrane range (min, max of v over all neurons and steps) seen in training forward passes;
        # widens the regulariser's grid to where the state actually goes (a quadratic leak diverges
        # below its unstable fixed point, and inhibition drives v far below -v_th).
        self.register_buffer("v_seen", torch.zeros(2, dtype=dtype))

    # -- configuration (model files: lnm_deploy.model.io) -----------------------------------------
    def config(self) -> dict[str, Any]:
        """Constructor arguments that rebuild this layer's structure (JSON-serialisable).

        The initial values (``beta``, ``threshold``, ``v_reset``, ``alpha``) are left out: a model
        file holds the trained tensors, which :func:`lnm_deploy.model.load_model` loads after
        :meth:`from_config`. The ``learn_*`` flags record which tensors are ``nn.Parameter``s.
        """
        return {
            "shape": list(self.shape),
            "degree": self.degree,
            "reset": self.reset,
            "synapse": self.synapse,
            "granularity": self.granularity,
            "threshold_granularity": self.threshold_granularity,
            "learn_poly": "theta_raw" in self._parameters,
            "learn_threshold": "v_th" in self._parameters,
            "learn_reset": "v_reset" in self._parameters,
            "learn_alpha": "alpha" in self._parameters,
            "poly_scale": self.poly_scale,
            "surrogate": self.surrogate,
            "surrogate_slope": self.surrogate_slope,
            "v_lo": None if self.v_lo is None else float(self.v_lo),
            "reg_points": self.reg_points,
            "dtype": dtype_name(self.theta_raw.dtype),
        }

    @classmethod
    def _config_kwargs(cls, r: ConfigReader) -> dict[str, Any]:
        return {
            "shape": r.get_ints("shape"),
            "degree": r.get_int("degree"),
            "reset": r.get_str("reset", ("value", "subtract")),
            "synapse": r.get_bool("synapse"),
            "granularity": r.get_str("granularity", GRANULARITIES),
            "threshold_granularity": r.get_str("threshold_granularity", GRANULARITIES),
            "learn_poly": r.get_bool("learn_poly"),
            "learn_threshold": r.get_bool("learn_threshold"),
            "learn_reset": r.get_bool("learn_reset"),
            "learn_alpha": r.get_bool("learn_alpha"),
            "poly_scale": r.get_float("poly_scale"),
            "surrogate": r.get_str("surrogate", SURROGATES),
            "surrogate_slope": r.get_float("surrogate_slope"),
            "v_lo": r.get_opt_float("v_lo"),
            "reg_points": r.get_int("reg_points"),
            "dtype": r.get_dtype(),
        }

    @classmethod
    def from_config(cls: type[_L], cfg: Mapping[str, Any]) -> _L:
        """A new layer from :meth:`config`'s dict (tensors at their initial values).

        Raises:
            UserInputError: a missing or unknown key, or a value of the wrong type or range.
        """
        r = ConfigReader(cfg, cls.__name__)
        kwargs = cls._config_kwargs(r)
        r.done()
        return cls(**kwargs)

    def _register(self, name: str, value: Tensor, learn: bool) -> None:
        if learn:
            self.register_parameter(name, nn.Parameter(value))
        else:
            self.register_buffer(name, value)

    # -- values actually used by the forward pass (export reads these) ---------------------------
    def poly_value(self) -> Tensor:
        """Coefficients ``theta_0..theta_d`` used in the forward pass, ``(d+1, *param_shape)``."""
        return self.theta_raw * self.poly_gain

    @torch.no_grad()
    def set_poly(self, poly: Tensor | Iterable[float]) -> None:
        """Set the coefficients (ascending, broadcastable to ``(d+1, *param_shape)``) exactly."""
        p = torch.as_tensor(poly, dtype=self.theta_raw.dtype)
        if p.shape[0] != self.degree + 1:
            raise UserInputError(f"need {self.degree + 1} coefficients, got {tuple(p.shape)}")
        if p.dim() == 1:  # one polynomial for every neuron
            p = p.reshape(-1, *([1] * (self.theta_raw.dim() - 1)))
        self.theta_raw.copy_(p.expand_as(self.theta_raw) / self.poly_gain)

    def alpha_value(self) -> Tensor | None:
        """Synaptic decay used in the forward pass (clamped into ALPHA_RANGE), or None."""
        if self.alpha is None:
            return None
        return self.alpha.clamp(*ALPHA_RANGE)

    def extra_repr(self) -> str:
        return (
            f"shape={self.shape}, degree={self.degree}, reset={self.reset!r}, synapse={self.synapse}, "
            f"granularity={self.granularity!r}"
        )

    def _recurrent_input(self, s: Tensor) -> Tensor | None:
        """Input delivered to the next step from this step's spikes (none for a plain LNM)."""
        return None

    def forward(
        self, x: Tensor, record: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, Tensor]]:
        """Run the population over time.

        Args:
            x: input current, ``(B, T, *shape)``.
            record: also return ``{"s", "v", "c"}`` (``c`` only with a synapse), each ``(B, T, *shape)``;
                ``v`` is the membrane after reset, and a recurrent layer adds ``"rec"``, the output
                ``W_rec s[t] + b`` of its ``_rec`` node at each step.

        Returns:
            spikes ``(B, T, *shape)`` in the layer's dtype (``x`` is cast to it), or ``(spikes, record)``.
        """
        if tuple(x.shape[2:]) != self.shape or x.dim() != 2 + len(self.shape):
            raise UserInputError(
                f"LNM expects input (B, T, *{self.shape}), got {tuple(x.shape)}"
            )
        x = x.to(self.theta_raw.dtype)
        poly = self.poly_value()
        steps = x.shape[1]
        alpha = self.alpha_value()
        v = torch.zeros_like(x[:, 0])
        c = torch.zeros_like(x[:, 0]) if alpha is not None else None
        # What the recurrent path delivers at t = 0: its output for "no spikes yet" (the bias), as
        # the IR's back edges do (docs/ir.md).
        rec_in = self._recurrent_input(torch.zeros_like(x[:, 0]))
        ss: list[Tensor] = []
        vs: list[Tensor] = []
        cs: list[Tensor] = []
        recs: list[Tensor] = []
        for t in range(steps):
            i_t = x[:, t] if rec_in is None else x[:, t] + rec_in
            if c is not None and alpha is not None:
                c = alpha * c + i_t
                i_t = c
                cs.append(c)
            v_new = horner(poly, v) + i_t
            fired = v_new > self.v_th
            s = spike(v_new, self.v_th, self.surrogate_slope, self.surrogate)
            if self.reset == "value":
                v = torch.where(fired, self.v_reset, v_new)
            else:
                v = torch.where(fired, v_new - self.v_th, v_new)
            ss.append(s)
            vs.append(v)
            if t + 1 < steps or record:
                rec_in = self._recurrent_input(s)
                if rec_in is not None and record:
                    recs.append(rec_in)
        out = torch.stack(ss, dim=1)
        if self.training and torch.is_grad_enabled():
            self._observe(vs)
        if not record:
            return out
        rec: dict[str, Tensor] = {"s": out, "v": torch.stack(vs, dim=1)}
        if cs:
            rec["c"] = torch.stack(cs, dim=1)
        if recs:
            rec["rec"] = torch.stack(recs, dim=1)
        return out, rec

    @torch.no_grad()
    def _observe(self, vs: list[Tensor]) -> None:
        lo = min(float(v.min()) for v in vs)
        hi = max(float(v.max()) for v in vs)
        if math.isfinite(lo) and math.isfinite(hi):
            self.v_seen[0] = min(float(self.v_seen[0]), lo)
            self.v_seen[1] = max(float(self.v_seen[1]), hi)

    def operating_range(self) -> tuple[Tensor, Tensor]:
        """``(lo, hi)`` membrane range of :meth:`regularization` (broadcastable to ``shape``).

        ``lo = min(v_lo, min v seen in training)``, ``hi = max(v_th, max v seen in training)``;
        ``v_lo`` defaults to ``-v_th``. Detached: the regulariser never pushes on the threshold.
        """
        v_th = self.v_th.detach()
        v_lo = -v_th if self.v_lo is None else torch.full_like(v_th, float(self.v_lo))
        seen = self.v_seen.to(v_th.dtype)
        return torch.minimum(v_lo, seen[0]), torch.maximum(v_th, seen[1])

    def regularization(self) -> Tensor:
        """Stability penalty of the learned leak ``P`` over the operating range (0 at LIF init).

        Rule: on ``reg_points`` evenly spaced membrane values ``v`` in ``[lo, hi]`` (see
        :meth:`operating_range`: ``[-v_th, v_th]`` widened to the membrane values seen in training),

            R = mean(relu(|P'(v)| - 1)**2) + mean(relu(|P(v)| - B)**2),   B = max(|lo|, |hi|)

        i.e. without input the map ``v -> P(v)`` must be non-expanding and must keep the membrane
        inside the range it operates in (so it cannot run away below an unstable fixed point).
        A LIF leak ``|theta_1| <= 1`` (other coefficients 0) costs exactly 0.
        """
        lo, hi = self.operating_range()
        u = torch.linspace(0.0, 1.0, self.reg_points, dtype=lo.dtype, device=lo.device)
        u = u.reshape(-1, *([1] * len(self.shape)))
        grid = lo + (hi - lo) * u  # (G, *broadcastable)
        bound = torch.maximum(lo.abs(), hi.abs())
        poly = self.poly_value().unsqueeze(1)  # (d+1, 1, *pshape) so every coefficient broadcasts over G
        dp = horner_derivative(poly, grid)
        p = horner(poly, grid)
        return F.relu(dp.abs() - 1).pow(2).mean() + F.relu(p.abs() - bound).pow(2).mean()


class RecurrentLNM(LNM):
    """An LNM whose input adds its own previous spikes through a Linear map.

    ``x_eff[t] = x[t] + rec(s[t-1])`` (summed in that order) with ``s[-1] = 0``: at ``t = 0`` the
    recurrent input is ``rec(0)``, the bias (as in snnTorch, and as the IR's back edges). Exported
    as a Neuron node plus an Affine node ``<name>_rec`` on a back edge. Only 1-d populations.
    """

    def __init__(
        self, shape: int | Iterable[int], degree: int = 2, *, rec_bias: bool = False, **kwargs: Any
    ) -> None:
        super().__init__(shape, degree, **kwargs)
        if len(self.shape) != 1:
            raise UserInputError(f"RecurrentLNM needs a 1-d population, got shape {self.shape}")
        self.rec = nn.Linear(self.shape[0], self.shape[0], bias=rec_bias, dtype=self.theta_raw.dtype)

    def _recurrent_input(self, s: Tensor) -> Tensor | None:
        return self.rec(s)

    def config(self) -> dict[str, Any]:
        """:meth:`LNM.config` plus ``rec_bias``."""
        return {**super().config(), "rec_bias": self.rec.bias is not None}

    @classmethod
    def _config_kwargs(cls, r: ConfigReader) -> dict[str, Any]:
        return {**super()._config_kwargs(r), "rec_bias": r.get_bool("rec_bias")}


class SumPool2d(nn.Module):
    """Sum over each (zero-padded) window; input ``(N, C, H, W)``.

    ``F.avg_pool2d(..., divisor_override=1)`` sums and divides by 1, which is exact (unlike
    ``avg_pool2d * k*k``).
    """

    def __init__(
        self,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] | None = None,
        padding: int | tuple[int, int] = 0,
    ) -> None:
        super().__init__()
        self.kernel_size = nn.modules.utils._pair(kernel_size)
        self.stride = self.kernel_size if stride is None else nn.modules.utils._pair(stride)
        self.padding = nn.modules.utils._pair(padding)

    def forward(self, x: Tensor) -> Tensor:
        return F.avg_pool2d(
            x, self.kernel_size, self.stride, self.padding, count_include_pad=True, divisor_override=1
        )

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"

    def config(self) -> dict[str, Any]:
        """Constructor arguments as JSON: ``kernel_size``, ``stride``, ``padding`` (pairs)."""
        return {
            "kernel_size": list(self.kernel_size),
            "stride": list(self.stride),
            "padding": list(self.padding),
        }

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> SumPool2d:
        """A new layer from :meth:`config`'s dict; ``UserInputError`` for a bad config."""
        r = ConfigReader(cfg, cls.__name__)
        layer = cls(r.get_pair("kernel_size"), r.get_pair("stride"), r.get_pair("padding"))
        r.done()
        return layer


# -- the registry of layer types a model file may contain -----------------------------------------
@dataclass(frozen=True)
class LayerType:
    """One layer kind a model file may hold: its name in the file and how to (re)build it.

    ``config(layer)`` gives the layer's constructor arguments as a JSON-serialisable dict;
    ``from_config(cfg)`` builds a new layer from that dict (raising ``UserInputError`` for a bad
    one). Matching is by exact class: a subclass needs its own entry.
    """

    name: str
    cls: type[nn.Module]
    config: Callable[[Any], dict[str, Any]]
    from_config: Callable[[Mapping[str, Any]], nn.Module]


LAYER_TYPES: dict[str, LayerType] = {}


def register_layer_type(
    name: str,
    cls: type[nn.Module],
    config: Callable[[Any], dict[str, Any]],
    from_config: Callable[[Mapping[str, Any]], nn.Module],
) -> None:
    """Allow layers of exactly ``cls`` in model files, under the type name ``name``."""
    LAYER_TYPES[name] = LayerType(name, cls, config, from_config)


def layer_type(name: Any) -> LayerType:
    """The registered :class:`LayerType` called ``name``; ``UserInputError`` listing the known ones."""
    if not isinstance(name, str) or name not in LAYER_TYPES:
        raise UserInputError(
            f"unknown layer type {name!r} (known: {', '.join(sorted(LAYER_TYPES))})"
        )
    return LAYER_TYPES[name]


def layer_type_of(layer: nn.Module) -> LayerType:
    """The :class:`LayerType` of ``layer`` (exact class); ``UserInputError`` if it has none."""
    for entry in LAYER_TYPES.values():
        if type(layer) is entry.cls:
            return entry
    raise UserInputError(
        f"layer type {type(layer).__name__} cannot be saved in a model file "
        f"(known: {', '.join(sorted(LAYER_TYPES))})"
    )


def _linear_config(layer: nn.Linear) -> dict[str, Any]:
    return {
        "in_features": layer.in_features,
        "out_features": layer.out_features,
        "bias": layer.bias is not None,
        "dtype": dtype_name(layer.weight.dtype),
    }


def _linear_from_config(cfg: Mapping[str, Any]) -> nn.Linear:
    r = ConfigReader(cfg, "Linear")
    layer = nn.Linear(r.get_int("in_features"), r.get_int("out_features"), bias=r.get_bool("bias"),
                      dtype=r.get_dtype())
    r.done()
    return layer


def _conv2d_config(layer: nn.Conv2d) -> dict[str, Any]:
    pad = layer.padding
    return {
        "in_channels": layer.in_channels,
        "out_channels": layer.out_channels,
        "kernel_size": list(layer.kernel_size),
        "stride": list(layer.stride),
        "padding": pad if isinstance(pad, str) else list(pad),
        "dilation": list(layer.dilation),
        "groups": layer.groups,
        "bias": layer.bias is not None,
        "padding_mode": layer.padding_mode,
        "dtype": dtype_name(layer.weight.dtype),
    }


def _conv2d_from_config(cfg: Mapping[str, Any]) -> nn.Conv2d:
    r = ConfigReader(cfg, "Conv2d")
    padding: str | tuple[int, int]
    if isinstance(cfg.get("padding"), str):
        padding = r.get_str("padding", ("same", "valid"))
    else:
        padding = r.get_pair("padding")
    padding_mode: Any = r.get_str("padding_mode", ("zeros", "reflect", "replicate", "circular"))
    layer = nn.Conv2d(
        r.get_int("in_channels"),
        r.get_int("out_channels"),
        r.get_pair("kernel_size"),
        stride=r.get_pair("stride"),
        padding=padding,
        dilation=r.get_pair("dilation"),
        groups=r.get_int("groups"),
        bias=r.get_bool("bias"),
        padding_mode=padding_mode,
        dtype=r.get_dtype(),
    )
    r.done()
    return layer


def _flatten_config(layer: nn.Flatten) -> dict[str, Any]:
    return {"start_dim": layer.start_dim, "end_dim": layer.end_dim}


def _flatten_from_config(cfg: Mapping[str, Any]) -> nn.Flatten:
    r = ConfigReader(cfg, "Flatten")
    layer = nn.Flatten(r.get_int("start_dim"), r.get_int("end_dim"))
    r.done()
    return layer


def _pool_window(layer: nn.AvgPool2d | nn.MaxPool2d) -> dict[str, Any]:
    """kernel_size, stride, padding and ceil_mode of a torch 2-d pooling layer, as pairs."""
    return {
        "kernel_size": list(nn.modules.utils._pair(layer.kernel_size)),
        "stride": list(nn.modules.utils._pair(layer.stride)),
        "padding": list(nn.modules.utils._pair(layer.padding)),
        "ceil_mode": bool(layer.ceil_mode),
    }


def _avgpool2d_config(layer: nn.AvgPool2d) -> dict[str, Any]:
    return {
        **_pool_window(layer),
        "count_include_pad": bool(layer.count_include_pad),
        "divisor_override": layer.divisor_override,
    }


def _avgpool2d_from_config(cfg: Mapping[str, Any]) -> nn.AvgPool2d:
    r = ConfigReader(cfg, "AvgPool2d")
    layer = nn.AvgPool2d(
        r.get_pair("kernel_size"),
        stride=r.get_pair("stride"),
        padding=r.get_pair("padding"),
        ceil_mode=r.get_bool("ceil_mode"),
        count_include_pad=r.get_bool("count_include_pad"),
        divisor_override=r.get_opt_int("divisor_override"),
    )
    r.done()
    return layer


def _maxpool2d_config(layer: nn.MaxPool2d) -> dict[str, Any]:
    return {**_pool_window(layer), "dilation": list(nn.modules.utils._pair(layer.dilation))}


def _maxpool2d_from_config(cfg: Mapping[str, Any]) -> nn.MaxPool2d:
    r = ConfigReader(cfg, "MaxPool2d")
    layer = nn.MaxPool2d(r.get_pair("kernel_size"), stride=r.get_pair("stride"), padding=r.get_pair("padding"),
                         dilation=r.get_pair("dilation"), ceil_mode=r.get_bool("ceil_mode"))
    r.done()
    return layer


def _batchnorm_config(layer: nn.modules.batchnorm._BatchNorm) -> dict[str, Any]:
    dtype = layer.weight.dtype if layer.weight is not None else (
        layer.running_mean.dtype if layer.running_mean is not None else torch.get_default_dtype())
    return {
        "num_features": layer.num_features,
        "eps": float(layer.eps),
        "momentum": layer.momentum,
        "affine": bool(layer.affine),
        "track_running_stats": bool(layer.track_running_stats),
        "dtype": dtype_name(dtype),
    }


def _batchnorm_from_config(cls: type[nn.modules.batchnorm._BatchNorm]) -> Callable[[Mapping[str, Any]], nn.Module]:
    def build(cfg: Mapping[str, Any]) -> nn.Module:
        r = ConfigReader(cfg, cls.__name__)
        layer = cls(r.get_int("num_features"), eps=r.get_float("eps"), momentum=r.get_opt_float("momentum"),
                    affine=r.get_bool("affine"), track_running_stats=r.get_bool("track_running_stats"),
                    dtype=r.get_dtype())
        r.done()
        return layer
    return build


register_layer_type("LNM", LNM, LNM.config, LNM.from_config)
register_layer_type("RecurrentLNM", RecurrentLNM, RecurrentLNM.config, RecurrentLNM.from_config)
register_layer_type("SumPool2d", SumPool2d, SumPool2d.config, SumPool2d.from_config)
register_layer_type("Linear", nn.Linear, _linear_config, _linear_from_config)
register_layer_type("Conv2d", nn.Conv2d, _conv2d_config, _conv2d_from_config)
register_layer_type("Flatten", nn.Flatten, _flatten_config, _flatten_from_config)
register_layer_type("AvgPool2d", nn.AvgPool2d, _avgpool2d_config, _avgpool2d_from_config)
register_layer_type("MaxPool2d", nn.MaxPool2d, _maxpool2d_config, _maxpool2d_from_config)
register_layer_type("BatchNorm1d", nn.BatchNorm1d, _batchnorm_config, _batchnorm_from_config(nn.BatchNorm1d))
register_layer_type("BatchNorm2d", nn.BatchNorm2d, _batchnorm_config, _batchnorm_from_config(nn.BatchNorm2d))


_PREFIXES: tuple[tuple[type[nn.Module], str], ...] = (
    (RecurrentLNM, "rlnm"),
    (LNM, "lnm"),
    (nn.Linear, "fc"),
    (nn.Conv2d, "conv"),
    (nn.Flatten, "flatten"),
    (SumPool2d, "sumpool"),
    (nn.AvgPool2d, "avgpool"),
    (nn.MaxPool2d, "maxpool"),
    (nn.modules.batchnorm._BatchNorm, "bn"),
)
RESERVED_NAMES: frozenset[str] = frozenset({"input", "output"})


def default_prefix(layer: nn.Module) -> str:
    """Name prefix of an auto-named layer: fc, conv, flatten, sumpool, avgpool, maxpool, bn, lnm, rlnm."""
    for cls, prefix in _PREFIXES:
        if isinstance(layer, cls):
            return prefix
    return type(layer).__name__.lower()


class LNMSequential(nn.Module):
    """A chain of layers run over time; stateless layers act per step, LNM layers carry state.

    Build it from modules (auto-named ``<prefix><k>``, k counting from 1 per prefix: ``fc1, lnm1,
    fc2, lnm2``, ``conv1``, ``flatten1``, ``sumpool1``, ``avgpool1``, ``maxpool1``, ``bn1``,
    ``rlnm1``) or from a mapping of explicit names. These names are the IR node names of :func:`lnm_deploy.model.model_to_ir`
    (plus ``input``, ``output`` and ``<rlnm>_rec``).

    ``forward`` runs layer by layer: a stateless layer is applied to all ``B*T`` steps at once
    (identical to per-step application, and much faster), an LNM loops over time. States are reset
    at every call. Any ``nn.Module`` is accepted here (e.g. for experiments); the exporter rejects
    what the IR cannot express.
    """

    def __init__(self, *layers: nn.Module | Mapping[str, nn.Module]) -> None:
        super().__init__()
        if len(layers) == 1 and isinstance(layers[0], Mapping):
            named = list(layers[0].items())
        else:
            counts: dict[str, int] = {}
            named = []
            for layer in layers:
                if not isinstance(layer, nn.Module):
                    raise UserInputError(f"LNMSequential takes nn.Modules, got {type(layer).__name__}")
                prefix = default_prefix(layer)
                counts[prefix] = counts.get(prefix, 0) + 1
                named.append((f"{prefix}{counts[prefix]}", layer))
        names = [n for n, _ in named]
        for name, layer in named:
            if name in RESERVED_NAMES or "." in name or not name:
                raise UserInputError(f"layer name {name!r} is reserved or invalid")
            if isinstance(layer, nn.Flatten) and layer.start_dim == 0:
                raise UserInputError(f"layer {name!r}: nn.Flatten(start_dim=0) would flatten the batch")
            if isinstance(layer, RecurrentLNM) and f"{name}_rec" in names:
                raise UserInputError(f"layer name {name}_rec clashes with the recurrent node of {name!r}")
        self.layers = nn.ModuleDict(OrderedDict(named))

    @property
    def dtype(self) -> torch.dtype:
        """Floating dtype of the parameters (float32 for training, float64 for exact checks)."""
        for p in list(self.parameters()) + list(self.buffers()):
            if p.is_floating_point():
                return p.dtype
        return torch.get_default_dtype()

    def named_layers(self) -> list[tuple[str, nn.Module]]:
        """``(name, layer)`` in execution order."""
        return list(self.layers.items())

    def __getitem__(self, name: str) -> nn.Module:
        """The layer called ``name`` (e.g. ``model["lnm1"]``)."""
        return self.layers[name]

    def forward(
        self, x: Tensor, record: bool = False
    ) -> Tensor | tuple[Tensor, dict[str, dict[str, Tensor]]]:
        """Run the net on ``x`` ``(B, T, *input_shape)`` (cast to the model's dtype).

        Returns output ``(B, T, *out_shape)`` (spikes if the last layer is an LNM), and with
        ``record=True`` also ``{layer name: {key: (B, T, *shape)}}``: LNM layers give ``"s"``,
        ``"v"`` (after reset), ``"c"`` (with a synapse); stateless layers give ``"out"``; a
        RecurrentLNM ``name`` also gives ``record[name + "_rec"]["out"] = W_rec s[t] + b``.
        """
        if x.dim() < 3:
            raise UserInputError(f"input must be (B, T, *input_shape), got {tuple(x.shape)}")
        x = x.to(self.dtype)
        b, t = x.shape[:2]
        h = x
        rec: dict[str, dict[str, Tensor]] = {}
        outs: dict[str, Tensor] = {"input": x}  # every layer's output, for layers that read others
        for name, layer in self.layers.items():
            h = self._input_of(name, h, outs)
            if isinstance(layer, LNM):
                if record:
                    h, r = layer(h, record=True)
                    r_rec = r.pop("rec", None)
                    rec[name] = r
                    if r_rec is not None:
                        rec[f"{name}_rec"] = {"out": r_rec}
                else:
                    h = layer(h)
            else:
                y = layer(h.reshape(b * t, *h.shape[2:]))
                h = y.reshape(b, t, *y.shape[1:])
                if record:
                    rec[name] = {"out": h}
            outs[name] = h
        return (h, rec) if record else h

    def _input_of(self, name: str, previous: Tensor, outs: dict[str, Tensor]) -> Tensor:
        """The input of layer ``name``: the output of the layer before it (``previous``);
        ``outs`` holds every earlier layer's output and ``"input"`` (``LNMGraph`` sums several)."""
        return previous

    def regularization(self) -> Tensor:
        """Sum of every LNM layer's :meth:`LNM.regularization`."""
        terms = [m.regularization() for m in self.layers.values() if isinstance(m, LNM)]
        if not terms:
            return torch.zeros((), dtype=self.dtype)
        return torch.stack(terms).sum()
