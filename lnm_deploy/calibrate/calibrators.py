"""Calibrators: choose a symmetric clip ``[-clip, clip]`` for a tensor from its histogram.

Every calibrator is a function ``fn(hist, bits, *, param=default, ...) -> ClipRange`` registered with
``@calibrator``; the registry (``CALIBRATORS``) and the parameters a recipe may set for each method
are read from the functions themselves (signature, type hints, defaults), never retyped.

The quantizer model used for errors: a signed symmetric grid of ``2 qmax + 1`` levels,
``qmax = 2**(bits-1) - 1``, step ``clip / qmax``, round to nearest, values beyond ``clip`` saturate.
(The extra negative level of two's complement is left unused, so the grid is symmetric.)
"""

from __future__ import annotations

import inspect
import math
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lnm_deploy.calibrate.stats import DEFAULT_BINS_PER_SIDE, Histogram
from lnm_deploy.errors import NumericError, UserInputError


def qmax(bits: int) -> int:
    """Largest magnitude of a signed symmetric ``bits``-bit grid: ``2**(bits-1) - 1``."""
    return 2 ** (int(bits) - 1) - 1


def _check_bits(bits: int) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or not 2 <= bits <= 62:
        raise UserInputError(f"bits must be an integer in [2, 62], got {bits!r}")
    return int(bits)


@dataclass(frozen=True)
class ClipRange:
    """A calibrated symmetric range.

    ``clip``: values are represented in ``[-clip, clip]`` (tensor units). ``clipped_fraction``:
    fraction of the calibration values with ``|x| > clip``. ``expected_mse``: modelled mean squared
    error (rounding + clipping, tensor units squared) of a ``bits``-bit grid with step
    ``clip / qmax(bits)``, from the histogram.
    """

    clip: float
    clipped_fraction: float
    expected_mse: float
    method: str
    bits: int
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> float:
        """Grid step ``clip / qmax(bits)`` (tensor units per integer)."""
        return self.clip / qmax(self.bits)

    def exponent(self, min_exp: int | None = None) -> int:
        """``power_of_two_scale(clip, bits)``."""
        return power_of_two_scale(self.clip, self.bits, min_exp=min_exp)

    def to_dict(self) -> dict[str, Any]:
        return {"clip": self.clip, "clipped_fraction": self.clipped_fraction,
                "expected_mse": self.expected_mse, "method": self.method, "bits": self.bits,
                "params": dict(self.params)}


@dataclass(frozen=True)
class ParamSpec:
    """One tunable parameter of a calibrator (read from its signature)."""

    name: str
    type: type
    default: Any
    rule: str = ""  # human-readable constraint, for error messages
    check: Callable[[Any], bool] | None = None


@dataclass(frozen=True)
class CalibratorInfo:
    """A registered calibrator: its function, parameters and one-line description."""

    name: str
    fn: Callable[..., ClipRange]
    params: dict[str, ParamSpec]
    doc: str

    def validate(self, params: dict[str, Any], where: str = "") -> dict[str, Any]:
        """Parameters checked and completed with defaults; ``UserInputError`` naming ``where``."""
        pre = f"{where}: " if where else ""
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise UserInputError(f"{pre}method '{self.name}' has no parameter(s) {unknown}; "
                                 f"it takes {sorted(self.params) or 'none'}")
        out: dict[str, Any] = {}
        for p in self.params.values():
            v = params.get(p.name, p.default)
            if p.type is float and isinstance(v, int) and not isinstance(v, bool):
                v = float(v)
            if isinstance(v, bool) or not isinstance(v, p.type):
                raise UserInputError(f"{pre}parameter '{p.name}' must be {p.type.__name__}, got {v!r}")
            if p.check is not None and not p.check(v):
                raise UserInputError(f"{pre}parameter '{p.name}' = {v!r} must be {p.rule}")
            out[p.name] = v
        return out

    def __call__(self, hist: Histogram, bits: int, **params: Any) -> ClipRange:
        bits = _check_bits(bits)
        if hist.n == 0:
            raise UserInputError(f"calibrator '{self.name}': the histogram is empty (no calibration values)")
        return self.fn(hist, bits, **self.validate(params))


CALIBRATORS: dict[str, CalibratorInfo] = {}


def calibrator(name: str, **rules: tuple[str, Callable[[Any], bool]]) -> Callable[[Callable[..., ClipRange]], Callable[..., ClipRange]]:
    """Register ``fn(hist, bits, *, p=default, ...)`` under ``name``. Keyword-only parameters become
    recipe parameters (type from the hint, default from the signature); ``rules`` maps a parameter
    to ``(description, predicate)``."""

    def deco(fn: Callable[..., ClipRange]) -> Callable[..., ClipRange]:
        hints = typing.get_type_hints(fn)
        params = {}
        for p in inspect.signature(fn).parameters.values():
            if p.kind is not inspect.Parameter.KEYWORD_ONLY:
                continue
            rule, check = rules.get(p.name, ("", None))
            params[p.name] = ParamSpec(p.name, hints[p.name], p.default, rule, check)
        doc = (fn.__doc__ or "").strip().splitlines()[0] if fn.__doc__ else ""
        CALIBRATORS[name] = CalibratorInfo(name, fn, params, doc)
        return fn

    return deco


def get_calibrator(name: str) -> CalibratorInfo:
    """The registered calibrator ``name``; ``UserInputError`` listing the valid ones."""
    if name not in CALIBRATORS:
        raise UserInputError(f"unknown calibration method {name!r}; valid methods: {sorted(CALIBRATORS)}")
    return CALIBRATORS[name]


def calibrate(hist: Histogram, bits: int, method: str, **params: Any) -> ClipRange:
    """Run calibrator ``method`` on ``hist`` for a ``bits``-bit signed grid."""
    return get_calibrator(method)(hist, bits, **params)


# ----------------------------------------------------------------------------------------------
# Error model


def _rounding_sq_integral(x: np.ndarray, step: np.ndarray) -> np.ndarray:
    """``integral from -step/2 to x of e(t)^2 dt`` with ``e(t) = t - step * round(t / step)``."""
    k = np.floor(x / step + 0.5)
    r = x - k * step
    h = 0.5 * step
    return k * (step * step * step) / 12.0 + (r * r * r + h * h * h) / 3.0


_MODEL_BINS = 2048  # the error model merges |x| bins pairwise down to at most this many


def _abs_bins(hist: Histogram, max_bins: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Non-empty span of the |x| histogram (merged pairwise down to ``max_bins`` bins): counts and
    the ``K + 1`` bin edges, the last edge being the exact abs-max (which no value exceeds)."""
    a = hist.abs_counts().astype(np.float64)
    w = hist.width
    nz = np.flatnonzero(a)
    k = int(nz[-1]) + 1 if nz.size else 1
    a = a[:k]
    while max_bins is not None and a.size > max_bins:
        if a.size % 2:
            a = np.append(a, 0.0)
        a = a.reshape(-1, 2).sum(axis=1)
        w *= 2.0
    edges = np.arange(a.size + 1) * w
    edges[-1] = max(min(edges[-1], hist.abs_max), edges[-2])
    return a, edges


def _mse_curve(hist: Histogram, clips: np.ndarray, bits: int) -> np.ndarray:
    """Modelled MSE for each clip: values uniform inside each |x| bin, rounding to nearest inside
    the clip, saturation beyond it (tensor units squared). Exact for that model; it matched the
    measured MSE of Laplace, Student-t, normal and uniform samples to 4 digits."""
    a, e = _abs_bins(hist, _MODEL_BINS)
    lo, hi = e[:-1], e[1:]
    w = hi - lo
    point = w <= 0.0  # a zero-width last bin (abs-max on an edge): a point mass at lo
    inv_w = np.where(point, 0.0, 1.0 / np.where(point, 1.0, w))
    # Moments of a uniform bin, for the saturated part: sum a (E[x^2] - 2 c E[x] + c^2).
    m1 = np.where(point, lo, 0.5 * (lo + hi))
    m2 = np.where(point, lo * lo, (lo * lo + lo * hi + hi * hi) / 3.0)
    suffix = [np.append(np.cumsum((a * m)[::-1])[::-1], 0.0) for m in (np.ones_like(a), m1, m2)]
    clips = np.asarray(clips, dtype=np.float64).reshape(-1)
    out = np.empty(clips.size)
    for start in range(0, clips.size, 64):  # chunks keep the (clips x bins) temporaries small
        c = clips[start : start + 64]
        step = np.maximum(c / qmax(bits), np.finfo(np.float64).tiny)[:, None]
        g = _rounding_sq_integral(e[None, :], step)
        inside = np.cumsum(a * (g[:, 1:] - g[:, :-1]) * inv_w, axis=1)
        full = np.searchsorted(hi, c, side="right")  # bins entirely inside the clip
        total = np.where(full > 0, inside[np.arange(c.size), np.maximum(full - 1, 0)], 0.0)
        # The bin holding c (if c is not on an edge): rounding below c, saturation above.
        j = np.minimum(full, a.size - 1)
        straddle = (full < a.size) & (lo[j] < c)
        gc = _rounding_sq_integral(c, step[:, 0])
        part = a[j] * ((gc - _rounding_sq_integral(lo[j], step[:, 0])) + (hi[j] - c) ** 3 / 3.0) * inv_w[j]
        total = total + np.where(straddle, part, 0.0)
        first_clipped = np.where(straddle, full + 1, full)
        s0, s1, s2 = (sfx[first_clipped] for sfx in suffix)
        total = total + s2 - 2.0 * c * s1 + c * c * s0
        out[start : start + c.size] = total / hist.n
    # Point-mass bins (width 0) add their rounding error where they are not clipped.
    if point.any():
        p = lo[point][0]
        step_all = np.maximum(clips / qmax(bits), np.finfo(np.float64).tiny)
        e_pt = p - step_all * np.round(p / step_all)
        out += np.where(p <= clips, a[point][0] * e_pt * e_pt / hist.n, 0.0)
    return out


def expected_mse(hist: Histogram, clip: float, bits: int) -> float:
    """Modelled mean squared error of quantizing the histogram's values to a ``bits``-bit symmetric
    grid clipped at ``clip`` (tensor units squared); see ``_mse_curve``."""
    if hist.n == 0:
        return 0.0
    return float(_mse_curve(hist, np.array([float(clip)]), _check_bits(bits))[0])


def _result(hist: Histogram, clip: float, bits: int, method: str, **params: Any) -> ClipRange:
    clip = float(min(max(clip, 0.0), hist.abs_max))
    if clip > 0.0:
        mse_ = expected_mse(hist, clip, bits)
    else:  # everything maps to 0: the error is the data's mean square (a vanishing clip)
        mse_ = 0.0 if hist.abs_max == 0.0 else expected_mse(hist, float(np.finfo(np.float64).tiny), bits)
    return ClipRange(clip, hist.fraction_above(clip), mse_, method, bits, params)


# ----------------------------------------------------------------------------------------------
# The calibrators


@calibrator("minmax")
def minmax(hist: Histogram, bits: int) -> ClipRange:
    """Clip at the exact abs-max: nothing is clipped, resolution is set by the largest value."""
    return _result(hist, hist.abs_max, bits, "minmax")


@calibrator("percentile", percentile=("in (0, 100]", lambda p: 0.0 < p <= 100.0))
def percentile(hist: Histogram, bits: int, *, percentile: float = 99.99) -> ClipRange:
    """Clip at the given percentile of |x| (within one histogram bin of the exact value)."""
    return _result(hist, hist.abs_percentile(percentile), bits, "percentile", percentile=percentile)


@calibrator("mse", candidates=("an integer in [2, 100000]", lambda c: 2 <= c <= 100_000))
def mse(hist: Histogram, bits: int, *, candidates: int = 400) -> ClipRange:
    """Clip minimising the modelled rounding + clipping MSE over ``candidates`` clips (bin edges
    evenly spaced up to the abs-max, plus the abs-max itself)."""
    if hist.abs_max == 0.0:
        return _result(hist, 0.0, bits, "mse", candidates=candidates)
    edges = _abs_bins(hist, _MODEL_BINS)[1]
    k = np.unique(np.round(np.linspace(1, edges.size - 1, candidates)).astype(np.int64))
    clips = np.append(edges[k], hist.abs_max)
    clips = np.unique(np.minimum(clips, hist.abs_max))
    curve = _mse_curve(hist, clips, bits)
    best = int(np.argmin(curve))  # ties: the smallest clip (finest step)
    return _result(hist, float(clips[best]), bits, "mse", candidates=candidates)


@calibrator("entropy", bins=("a power of two in [16, 65536]", lambda b: 16 <= b <= 65536 and not b & (b - 1)))
def entropy(hist: Histogram, bits: int, *, bins: int = 2048) -> ClipRange:
    """TensorRT-style: the clip whose ``2**(bits-1)``-level quantized |x| distribution has the least
    KL divergence from the clipped one (outliers folded into the last bin), over a ``bins``-bin
    |x| histogram."""
    a = hist.abs_counts().astype(np.float64)
    nz = np.flatnonzero(a)
    if hist.abs_max == 0.0 or not nz.size:
        return _result(hist, 0.0, bits, "entropy", bins=bins)
    width = hist.width
    span = int(nz[-1]) + 1
    while span > bins:  # merge pairs (exact) until the data span fits in ``bins`` bins
        if a.size % 2:
            a = np.append(a, 0.0)
        a = a.reshape(-1, 2).sum(axis=1)
        width *= 2.0
        span = (span + 1) // 2
    a = a[:span]
    levels = 2 ** (bits - 1)
    if span <= levels:
        return _result(hist, hist.abs_max, bits, "entropy", bins=bins)
    best_i, best_kl = span, math.inf
    for i in range(levels, span + 1):
        ref = a[:i].copy()
        ref[-1] += a[i:].sum()
        chunk = (np.arange(i) * levels) // i
        present = a[:i] > 0
        sums = np.bincount(chunk, weights=a[:i], minlength=levels)
        used = np.bincount(chunk, weights=present.astype(np.float64), minlength=levels)
        q = np.where(present, sums[chunk] / np.maximum(used[chunk], 1.0), 0.0)
        p = ref / ref.sum()
        qs = q.sum()
        if qs == 0.0:
            continue
        q = q / qs
        m = p > 0
        # A bin that only the reference has (outliers folded into an empty last bin): smoothed
        # as TensorRT does, so the divergence stays finite but large.
        qm = np.where(q[m] > 0, q[m], 1e-10)
        kl = float(np.sum(p[m] * np.log(p[m] / qm)))
        if kl < best_kl:
            best_i, best_kl = i, kl
    return _result(hist, min(best_i * width, hist.abs_max), bits, "entropy", bins=bins)


# ----------------------------------------------------------------------------------------------
# Power-of-two scales and per-channel helpers


def power_of_two_scale(clip: float, bits: int, *, min_exp: int | None = None) -> int:
    """The smallest exponent ``e`` with ``clip <= qmax(bits) * 2**e``: the finest power-of-two step
    that represents ``clip`` without clipping (so ``e - 1`` would clip). ``min_exp`` (the target's
    smallest exponent) is a lower bound and the answer for ``clip == 0``."""
    bits = _check_bits(bits)
    clip = float(clip)
    if not math.isfinite(clip) or clip < 0.0:
        raise NumericError(f"clip must be finite and >= 0, got {clip}")
    if clip == 0.0:
        if min_exp is None:
            raise NumericError("clip is 0 (an all-zero tensor): any exponent represents it; pass min_exp")
        return int(min_exp)
    q = qmax(bits)
    _, e = math.frexp(clip / q)
    # frexp of a rounded quotient can be one off: settle with exact comparisons (q * 2**e is
    # exact in float64 for q < 2**53).
    while math.ldexp(q, e - 1) >= clip:
        e -= 1
    while math.ldexp(q, e) < clip:
        e += 1
    return e if min_exp is None else max(e, int(min_exp))


def power_of_two_scales(clips: np.ndarray, bits: int, *, min_exp: int | None = None) -> np.ndarray:
    """``power_of_two_scale`` per entry (for per-channel clips); int64 array of ``clips``' shape."""
    c = np.asarray(clips, dtype=np.float64)
    return np.array([power_of_two_scale(v, bits, min_exp=min_exp) for v in c.reshape(-1)],
                    dtype=np.int64).reshape(c.shape)


@dataclass(frozen=True)
class ChannelClips:
    """Per-channel clips (channel = ``axis`` of the tensor, axis 0 = output channel of a weight)."""

    clips: np.ndarray
    clipped_fraction: np.ndarray
    expected_mse: np.ndarray | None  # None where only min / max were known
    method: str
    bits: int
    params: dict[str, Any] = field(default_factory=dict)

    def exponents(self, min_exp: int | None = None) -> np.ndarray:
        return power_of_two_scales(self.clips, self.bits, min_exp=min_exp)

    def to_dict(self) -> dict[str, Any]:
        return {"clips": self.clips.tolist(), "clipped_fraction": self.clipped_fraction.tolist(),
                "expected_mse": None if self.expected_mse is None else self.expected_mse.tolist(),
                "method": self.method, "bits": self.bits,
                "params": dict(self.params)}


def calibrate_per_channel(x: np.ndarray, bits: int, method: str, *, axis: int = 0,
                          bins_per_side: int = DEFAULT_BINS_PER_SIDE, **params: Any) -> ChannelClips:
    """Calibrate each slice of ``x`` along ``axis`` on its own (for weights: axis 0)."""
    info = get_calibrator(method)
    full = info.validate(params)
    x = np.moveaxis(np.asarray(x, dtype=np.float64), axis, 0)
    res = [info(Histogram.from_array(ch, bins_per_side), bits, **full) for ch in x]
    return ChannelClips(np.array([r.clip for r in res]), np.array([r.clipped_fraction for r in res]),
                        np.array([r.expected_mse for r in res]), method, _check_bits(bits), full)
