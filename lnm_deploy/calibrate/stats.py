"""Calibration statistics: run a calibration set through the float executor and summarise, per
layer, every tensor the quantizer has to fit onto an integer grid.

What is collected (all values in the float model's own units; rates in spikes per step):

- per synaptic node (``Node.synaptic``: Affine, Conv2d, Scale, pooling): its ``output`` (the
  synaptic input current it delivers) and, where it has them (Affine, Conv2d), its ``weight`` and
  ``bias``;
- per neuron layer (a node whose ``state_names`` include ``v`` and ``v_pre``; ``is_neuron_layer``):
  ``input`` (the sum of its incoming edges, what ``syn_gain`` multiplies),
  ``c`` (the synaptic current, when the node has a synapse), ``v`` (membrane after reset, the
  Horner input of the next step) and ``v_pre`` (membrane before the spike test and reset,
  ``v'[t] = P(v[t-1]) + in_gain * c[t]``: what the threshold compares and what must not overflow;
  taken from the executor's ``states[name]["v_pre"]``);
- per spiking node (``Node.emits_spikes``: a Neuron with a threshold, Threshold): spike counts per
  neuron.

**Histogram scheme** (``Histogram``): 2 N linear bins over ``[-R, R)`` where ``R`` is the smallest
power of two strictly above the running abs-max and ``N`` (``bins_per_side``, a power of two) is
fixed, so the bin width ``w = R / N`` is a power of two too. When a batch exceeds ``R`` the range
doubles by summing adjacent bin pairs. Because every edge is a multiple of a power-of-two width and
a bin index is ``floor(x / w)`` (exact in binary floating point), doubling loses nothing: the final
histogram depends only on the data, not on the batch order or batch size, and merging two
histograms is exact. One pass suffices (no first pass for the range). Resolution: the abs-max lies
in ``[R/2, R)``, so ``w`` is between ``absmax / (2 N)`` and ``absmax / N``; the default N = 4096
(8192 bins, 64 KiB per tensor) resolves 1/4096 to 1/8192 of the abs-max. Percentiles computed from
it are within one bin width of ``np.percentile`` on the raw data (tested). Exact min, max, count,
sum and sum of squares are kept beside the counts.

**Range stability** (``RangeTrace``): after each batch the abs-max and the ``trace_percentile``
(default 99.99) of ``|x|`` are appended, with the number of samples seen so far; the stability of
a range is the largest relative change of that statistic over the last half of the samples.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lnm_deploy.errors import NumericError, UnsupportedError, UserInputError
from lnm_deploy.execute import RunResult, run_float
from lnm_deploy.ir import Graph, Node, Schedule

DEFAULT_BINS_PER_SIDE = 4096
REPORTED_PERCENTILES = (99.0, 99.9, 99.99, 99.999)  # of |x|, in each tensor's ``to_dict``
DEFAULT_TRACE_PERCENTILE = 99.99
# Range of an all-zero histogram: any power of two works, a small one keeps full resolution if
# small non-zero values arrive later (growing costs one pair-sum per doubling).
_MIN_RANGE = 2.0**-40
_MAX_EXPONENT = 1000  # values >= 2**1000 cannot get a power-of-two range above them

#: The states of a neuron layer the quantizer's ranges come from (``Node.state_names``): the
#: state after reset and before the spike test; ``c`` (the synaptic current) where the op has one.
NEURON_STATES: tuple[str, ...] = ("v", "v_pre")


def is_neuron_layer(node: Node) -> bool:
    """A node whose states are calibrated as a neuron layer's: its float op names ``v`` and ``v_pre``
    among its ``state_names`` (the Neuron, a registered extension naming its states the same way)."""
    return set(NEURON_STATES) <= set(node.state_names)

# The three classes of tensors a recipe calibrates, and which recorded tensors belong to each.
TENSOR_CLASSES: tuple[str, ...] = ("weights", "currents", "membrane")


def _opt(x: float) -> float | None:
    """A float for JSON: None for NaN / inf (empty statistics)."""
    return float(x) if math.isfinite(x) else None


def _unopt(x: float | None, default: float) -> float:
    return default if x is None else float(x)


def _unsigned_zero(a: np.ndarray) -> np.ndarray:
    """``a`` with every -0.0 written as +0.0 (``-0.0 + 0.0`` is +0.0 in IEEE arithmetic): the
    sign of a zero min / max depends on the reduction order, the statistics must not."""
    a += 0.0
    return a


def _pow2_above(a: float) -> float:
    """The smallest power of two strictly above ``a`` (>= 0)."""
    if a == 0.0:
        return _MIN_RANGE
    _, e = math.frexp(a)  # a = m 2^e with m in [0.5, 1): 2^e > a and 2^(e-1) <= a
    if e > _MAX_EXPONENT:
        raise NumericError(f"value {a:.3g} is too large to calibrate")
    return max(math.ldexp(1.0, e), _MIN_RANGE)


# ----------------------------------------------------------------------------------------------
# Histogram

_BLOCK_VALUES = 1 << 16  # values per block of TensorStats.update's compiled path (512 KiB of float64)
_KERNELS: list[Any] = []  # [the compiled kernels, or None without numba], built on first use


def _kernels() -> Any:
    """The compiled statistics kernels (numba, an optional dependency: the ``fast`` extra), or None
    without numba (then numpy computes the same values, in more passes and with temporaries):

    - ``bin_values(x, inv_width, n, counts)``: ``counts[floor(x[i] * inv_width) + n] += 1`` for
      every value of the 1-d float64 ``x``: the IEEE product and floor numpy's path computes (no
      fastmath), so the same bins;
    - ``channel_range(x3, lo, hi)``: per channel ``c`` the min / max over ``x3[:, c, :]`` (float64,
      (outer, C, inner)) into ``lo`` / ``hi`` (which start at +inf / -inf), for values the caller
      has screened for NaN and inf (their sum is finite). A min or max is one of the values and,
      apart from the sign of a zero, no two distinct values compare equal: every reduction order
      gives the same one, so the loop may be vectorised in any order (numba's ``nnan``/``nsz``
      flags) and the caller writes a zero as +0.0 (``_unsigned_zero``), as numpy's path does.
    """
    if not _KERNELS:
        try:
            from numba import njit
        except ImportError:
            _KERNELS.append(None)
        else:
            @njit(cache=True, nogil=True)
            def bin_values(x, inv_width, n, counts):  # pragma: no cover (compiled)
                for i in range(x.shape[0]):
                    counts[math.floor(x[i] * inv_width) + n] += 1  # numba: an int64

            @njit(cache=True, nogil=True, fastmath={"nnan", "nsz"})
            def channel_range(x3, lo, hi):  # pragma: no cover (compiled)
                for o in range(x3.shape[0]):
                    for c in range(x3.shape[1]):
                        lc, hc = lo[c], hi[c]
                        row = x3[o, c]
                        for i in range(row.shape[0]):
                            v = row[i]
                            lc = min(lc, v)
                            hc = max(hc, v)
                        lo[c], hi[c] = lc, hc

            class _K:
                pass

            k = _K()
            k.bin_values, k.channel_range = bin_values, channel_range  # type: ignore[attr-defined]
            _KERNELS.append(k)
    return _KERNELS[0]


@dataclass(eq=False)
class Histogram:
    """Mergeable fixed-bin histogram over ``[-range, range)``; see the module docstring.

    ``counts`` has ``2 * bins_per_side`` bins; bin ``i`` covers ``[(i - N) w, (i - N + 1) w)`` with
    ``w = range / N``. ``n``, ``minimum`` and ``maximum`` are exact.
    """

    bins_per_side: int = DEFAULT_BINS_PER_SIDE
    range: float = 0.0  # R, a power of two; 0 while empty
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    n: int = 0
    minimum: float = math.inf
    maximum: float = -math.inf

    def __post_init__(self) -> None:
        nb = int(self.bins_per_side)
        if nb < 2 or nb & (nb - 1):
            raise UserInputError(f"bins_per_side must be a power of two >= 2, got {self.bins_per_side}")
        self.bins_per_side = nb
        if self.counts.size == 0:
            self.counts = np.zeros(2 * nb, dtype=np.int64)
        elif self.counts.shape != (2 * nb,):
            raise UserInputError(f"histogram counts must have {2 * nb} bins, got {self.counts.shape}")

    @classmethod
    def from_array(cls, x: np.ndarray, bins_per_side: int = DEFAULT_BINS_PER_SIDE) -> Histogram:
        """A histogram of all values of ``x``."""
        h = cls(bins_per_side=bins_per_side)
        h.add(x)
        return h

    @property
    def width(self) -> float:
        """Bin width (same unit as the data); 0 while empty."""
        return self.range / self.bins_per_side

    @property
    def abs_max(self) -> float:
        """Exact max |x| (0 while empty)."""
        return max(abs(self.minimum), abs(self.maximum)) if self.n else 0.0

    @property
    def edges(self) -> np.ndarray:
        """The ``2 N + 1`` bin edges."""
        n = self.bins_per_side
        return (np.arange(2 * n + 1) - n) * self.width

    def _grow(self, new_range: float) -> None:
        if new_range <= self.range:
            return
        if self.n == 0:
            self.range = new_range
            return
        n = self.bins_per_side
        while self.range < new_range:
            # Old bins (2j, 2j+1) over [-R, R) become new bin N/2 + j over [-2R, 2R): exact.
            pairs = self.counts.reshape(n, 2).sum(axis=1)
            grown = np.zeros(2 * n, dtype=np.int64)
            grown[n // 2 : n // 2 + n] = pairs
            self.counts = grown
            self.range *= 2.0

    def add(self, x: np.ndarray) -> None:
        """Add every value of ``x`` (any shape)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        if x.size == 0:
            return
        self._add(x, float(x.min()), float(x.max()))

    def _add(self, x: np.ndarray, lo: float, hi: float) -> None:
        """``add`` for a non-empty 1-d float64 ``x`` whose exact min / max are ``lo`` / ``hi``."""
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise NumericError("calibration values contain NaN or inf")
        self._grow(_pow2_above(max(abs(lo), abs(hi), self.abs_max)))
        n = self.bins_per_side
        # |x| < R strictly, so floor(x / w) is in [-N, N); x * (1 / w) is exact (w is a power of
        # two), and so is adding N to the integer-valued floats.
        kern = _kernels()
        if kern is not None:
            kern.bin_values(x, 1.0 / self.width, n, self.counts)  # the same floor(x / w) + N, one pass
        else:
            idx = np.multiply(x, 1.0 / self.width)
            np.floor(idx, out=idx)
            idx += n
            self.counts += np.bincount(idx.astype(np.int64), minlength=2 * n)
        self.n += int(x.size)
        self.minimum = min(self.minimum, lo + 0.0)  # +0.0 for a zero of either sign (see ``_unsigned_zero``)
        self.maximum = max(self.maximum, hi + 0.0)

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s values to this histogram (exact: equals one histogram of both)."""
        if other.bins_per_side != self.bins_per_side:
            raise UserInputError(
                f"cannot merge histograms of {self.bins_per_side} and {other.bins_per_side} bins per side"
            )
        if other.n == 0:
            return
        o = other.copy()
        r = max(self.range, o.range) if self.n else o.range
        self._grow(r)
        o._grow(r)
        self.counts += o.counts
        self.n += o.n
        self.minimum = min(self.minimum, o.minimum)
        self.maximum = max(self.maximum, o.maximum)

    def copy(self) -> Histogram:
        return Histogram(self.bins_per_side, self.range, self.counts.copy(), self.n, self.minimum,
                         self.maximum)

    def nonzero_bins(self) -> tuple[np.ndarray, np.ndarray]:
        """Centres and counts of the non-empty bins: a weighted sample of the distribution (for
        weighted least-squares fits over the calibrated range; each centre is within half a bin
        width of its values). Centres are clamped to the exact [min, max]."""
        idx = np.flatnonzero(self.counts)
        centres = (idx - self.bins_per_side + 0.5) * self.width
        return np.clip(centres, self.minimum, self.maximum), self.counts[idx].copy()

    def abs_counts(self) -> np.ndarray:
        """Counts of ``|x|`` over ``[0, range)`` in ``bins_per_side`` bins of width ``width``."""
        n = self.bins_per_side
        return self.counts[n:] + self.counts[:n][::-1]

    def _quantile(self, counts: np.ndarray, lo_edge: float, exact_lo: float | None,
                  exact_hi: float, q: float, cdf: np.ndarray | None = None) -> float:
        """``cdf``: ``np.cumsum(counts)``, when the caller has it."""
        if self.n == 0:
            raise UserInputError("percentile of an empty histogram")
        if not 0.0 <= q <= 100.0:
            raise UserInputError(f"percentile must be in [0, 100], got {q}")
        w = self.width
        if cdf is None:
            cdf = np.cumsum(counts)

        def order_stat(j: int) -> float:
            # The j-th smallest value (0-based), assumed spread evenly inside its bin; the
            # extremes are known exactly (the smallest |x| is not tracked: estimated like the rest).
            if j <= 0 and exact_lo is not None:
                return exact_lo
            if j >= self.n - 1:
                return exact_hi
            b = int(np.searchsorted(cdf, j, side="right"))
            before = cdf[b] - counts[b]
            return lo_edge + w * (b + (j - before + 0.5) / counts[b])

        # np.percentile's default ("linear"): interpolate between the order statistics around
        # rank q/100 (n-1). Each estimate is within one bin of the true order statistic, so the
        # result is within one bin width of np.percentile.
        r = q / 100.0 * (self.n - 1)
        k = math.floor(r)
        f = r - k
        v = order_stat(k) if f == 0.0 else (1.0 - f) * order_stat(k) + f * order_stat(k + 1)
        return float(min(max(v, lo_edge if exact_lo is None else exact_lo), exact_hi))

    def percentile(self, q: float) -> float:
        """The q-th percentile (0..100) of x; within one bin width of ``np.percentile``."""
        return self._quantile(self.counts, -self.range, self.minimum, self.maximum, q)

    def abs_percentile(self, q: float) -> float:
        """The q-th percentile of ``|x|``; within one bin width of ``np.percentile(abs(x), q)``."""
        return self._quantile(self.abs_counts(), 0.0, None, self.abs_max, q)

    def abs_percentiles(self, qs: Sequence[float]) -> list[float]:
        """``abs_percentile`` of each of ``qs`` (the same values; the counts summed once)."""
        counts = self.abs_counts()
        cdf = np.cumsum(counts)
        return [self._quantile(counts, 0.0, None, self.abs_max, q, cdf) for q in qs]

    def fraction_above(self, clip: float) -> float:
        """Fraction of values with ``|x| > clip`` (linear inside the bin holding ``clip``)."""
        if self.n == 0 or clip >= self.abs_max:
            return 0.0
        if clip < 0:
            return 1.0
        a = self.abs_counts()
        k = int(clip // self.width)
        if k >= a.size:
            return 0.0
        above = float(a[k + 1 :].sum()) + float(a[k]) * ((k + 1) * self.width - clip) / self.width
        return above / self.n

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; only the non-empty span of counts is stored (``offset`` = its first bin)."""
        nz = np.flatnonzero(self.counts)
        first, last = (int(nz[0]), int(nz[-1])) if nz.size else (0, -1)
        return {
            "bins_per_side": self.bins_per_side,
            "range": self.range,
            "width": self.width,
            "n": self.n,
            "min": _opt(self.minimum),
            "max": _opt(self.maximum),
            "offset": first,
            "counts": self.counts[first : last + 1].tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Histogram:
        h = cls(bins_per_side=int(d["bins_per_side"]), range=float(d["range"]), n=int(d["n"]),
                minimum=_unopt(d["min"], math.inf), maximum=_unopt(d["max"], -math.inf))
        c = np.asarray(d["counts"], dtype=np.int64)
        h.counts[int(d["offset"]) : int(d["offset"]) + c.size] = c
        return h


# ----------------------------------------------------------------------------------------------
# Per-tensor statistics


@dataclass
class Stability:
    """How much a range statistic still moved over the last part of the calibration set.

    ``absmax_change`` / ``percentile_change``: max over the trace points taken after
    ``(1 - last_fraction)`` of the samples of ``|value - final| / |final|`` (0 = settled). None when
    fewer than two points fall in that window (one batch only: lower ``batch_size``).
    """

    absmax_change: float | None
    percentile_change: float | None
    points: int

    def to_dict(self) -> dict[str, Any]:
        return {"absmax_change": self.absmax_change, "percentile_change": self.percentile_change,
                "points": self.points}


@dataclass
class RangeTrace:
    """Running range statistics after each batch: samples seen, abs-max, ``q``-th percentile of |x|."""

    q: float = DEFAULT_TRACE_PERCENTILE
    samples: list[int] = field(default_factory=list)
    absmax: list[float] = field(default_factory=list)
    percentile: list[float] = field(default_factory=list)

    def record(self, samples: int, hist: Histogram) -> None:
        self.samples.append(int(samples))
        self.absmax.append(hist.abs_max)
        self.percentile.append(hist.abs_percentile(self.q) if hist.n else 0.0)

    def stability(self, last_fraction: float = 0.5) -> Stability:
        if not self.samples:
            return Stability(None, None, 0)
        total = self.samples[-1]
        idx = [i for i, s in enumerate(self.samples) if s >= (1.0 - last_fraction) * total]

        def change(vals: list[float]) -> float | None:
            if len(idx) < 2:
                return None
            final = vals[-1]
            if final == 0.0:
                return 0.0 if all(vals[i] == 0.0 for i in idx) else None
            return float(max(abs(vals[i] - final) for i in idx) / abs(final))

        return Stability(change(self.absmax), change(self.percentile), len(idx))

    def to_dict(self) -> dict[str, Any]:
        return {"q": self.q, "samples": list(self.samples), "absmax": list(self.absmax),
                "percentile": list(self.percentile)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> RangeTrace:
        return cls(float(d["q"]), [int(s) for s in d["samples"]], [float(v) for v in d["absmax"]],
                   [float(v) for v in d["percentile"]])


@dataclass(eq=False)
class TensorStats:
    """Distribution of one tensor: histogram (exact min / max / count), sum and sum of squares,
    exact per-channel min / max (channel = axis 0 of the unbatched shape: output channel of a
    weight, neuron of a 1-d layer, channel of a (C, H, W) layer) and, for recorded activations, a
    ``RangeTrace``."""

    hist: Histogram
    total: float = 0.0
    total_sq: float = 0.0
    channel_min: np.ndarray | None = None
    channel_max: np.ndarray | None = None
    trace: RangeTrace | None = None

    @classmethod
    def empty(cls, bins_per_side: int = DEFAULT_BINS_PER_SIDE, *, traced: bool = False,
              trace_q: float = DEFAULT_TRACE_PERCENTILE) -> TensorStats:
        return cls(Histogram(bins_per_side), trace=RangeTrace(trace_q) if traced else None)

    @classmethod
    def from_array(cls, x: np.ndarray, *, channel_axis: int | None = 0,
                   bins_per_side: int = DEFAULT_BINS_PER_SIDE) -> TensorStats:
        """Statistics of a fixed tensor (a weight): ``channel_axis`` None for no per-channel stats."""
        s = cls.empty(bins_per_side)
        s.update(x, channel_axis)
        return s

    def update(self, x: np.ndarray, channel_axis: int | None) -> None:
        """Add the values of ``x``; ``channel_axis`` is the axis of ``x`` that holds channels."""
        x = np.asarray(x, dtype=np.float64)
        per_channel = channel_axis is not None and x.ndim > channel_axis and x.size > 0
        total = float(x.sum())  # a finite sum also screens out NaN and inf for the compiled path
        kern = (_kernels() if x.size and math.isfinite(total) and (channel_axis is None or channel_axis >= 0)
                else None)
        if kern is not None:
            # The per-channel and global min / max and the bins, compiled, a block of rows at a
            # time (each block binned while it is in cache): the same values as numpy's
            # reductions (see ``_kernels``) and the same histogram (bins do not depend on how the
            # values are split).
            c = x.shape[channel_axis] if per_channel else 1  # type: ignore[index]
            x3 = x.reshape(int(np.prod(x.shape[:channel_axis])) if per_channel else 1, c, -1)
            lo_c, hi_c = np.full(c, np.inf), np.full(c, -np.inf)
            rows = max(1, _BLOCK_VALUES // max(1, c * x3.shape[2]))
            for r0 in range(0, x3.shape[0], rows):
                blk = x3[r0 : r0 + rows]
                kern.channel_range(blk, lo_c, hi_c)
                self.hist._add(blk.reshape(-1), float(lo_c.min()), float(hi_c.max()))
        else:
            self.hist.add(x)  # NumericError for NaN / inf
        self.total += total
        flat = x.reshape(-1)
        self.total_sq += float(np.einsum("i,i->", flat, flat))  # one pass, no squared copy; single-threaded
        if per_channel:
            if kern is not None:
                lo, hi = lo_c, hi_c
            else:
                others = tuple(a for a in range(x.ndim) if a != channel_axis)
                lo, hi = x.min(axis=others), x.max(axis=others)
            lo, hi = _unsigned_zero(lo), _unsigned_zero(hi)
            self.channel_min = lo if self.channel_min is None else np.minimum(self.channel_min, lo)
            self.channel_max = hi if self.channel_max is None else np.maximum(self.channel_max, hi)

    def assign(self, other: TensorStats) -> None:
        """Take ``other``'s values (histogram, sums, per-channel ranges; not the trace): for a
        tensor that holds the same values as ``other`` (a neuron whose input is one synapse's
        output), without adding them twice."""
        self.hist = other.hist.copy()
        self.total, self.total_sq = other.total, other.total_sq
        self.channel_min = None if other.channel_min is None else other.channel_min.copy()
        self.channel_max = None if other.channel_max is None else other.channel_max.copy()

    def merge(self, other: TensorStats, *, trace_at: int | None = None) -> None:
        """Add ``other``'s values (exact for the histogram, min and max). Traces are per run and
        are not merged: the merged trace is dropped, unless ``other`` is the next batch of the
        same run (``trace_at``: the samples seen after it), whose trace point is then recorded as
        the sequential pass records it."""
        self.hist.merge(other.hist)
        self.total += other.total
        self.total_sq += other.total_sq
        for attr, fn in (("channel_min", np.minimum), ("channel_max", np.maximum)):
            a, b = getattr(self, attr), getattr(other, attr)
            setattr(self, attr, b if a is None else a if b is None else fn(a, b))
        if trace_at is None:
            self.trace = None
        elif self.trace is not None:
            self.trace.record(trace_at, self.hist)

    @property
    def n(self) -> int:
        return self.hist.n

    @property
    def minimum(self) -> float:
        return self.hist.minimum

    @property
    def maximum(self) -> float:
        return self.hist.maximum

    @property
    def abs_max(self) -> float:
        return self.hist.abs_max

    @property
    def channel_abs_max(self) -> np.ndarray | None:
        if self.channel_min is None or self.channel_max is None:
            return None
        return np.maximum(np.abs(self.channel_min), np.abs(self.channel_max))

    @property
    def mean(self) -> float:
        return self.total / self.n if self.n else math.nan

    @property
    def std(self) -> float:
        if not self.n:
            return math.nan
        return math.sqrt(max(self.total_sq / self.n - self.mean**2, 0.0))

    def to_dict(self, *, histogram: bool = True) -> dict[str, Any]:
        d: dict[str, Any] = {
            "n": self.n,
            "min": _opt(self.minimum),
            "max": _opt(self.maximum),
            "abs_max": self.abs_max,
            "mean": _opt(self.mean),
            "std": _opt(self.std),
            "total": self.total,
            "total_sq": self.total_sq,
            "abs_percentiles": (dict(zip(map(str, REPORTED_PERCENTILES),
                                         self.hist.abs_percentiles(REPORTED_PERCENTILES), strict=True))
                                if self.n else {}),
        }
        if self.channel_min is not None and self.channel_max is not None:
            d["channel_min"] = self.channel_min.tolist()
            d["channel_max"] = self.channel_max.tolist()
        if self.trace is not None:
            d["trace"] = self.trace.to_dict()
        if histogram:
            d["histogram"] = self.hist.to_dict()
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TensorStats:
        s = cls(Histogram.from_dict(d["histogram"]), float(d["total"]), float(d["total_sq"]))
        if "channel_min" in d:
            s.channel_min = np.asarray(d["channel_min"], dtype=np.float64)
            s.channel_max = np.asarray(d["channel_max"], dtype=np.float64)
        if "trace" in d:
            s.trace = RangeTrace.from_dict(d["trace"])
        return s


def _opt_tensor(d: dict[str, Any], key: str) -> TensorStats | None:
    return TensorStats.from_dict(d[key]) if d.get(key) is not None else None


@dataclass(eq=False)
class SynapseStats:
    """A synapse-like node (Affine, Conv2d, Scale, SumPool2d, AvgPool2d): its weight and bias (Affine
    and Conv2d only; per-channel = per output channel) and its output current."""

    name: str
    kind: str
    output: TensorStats
    weight: TensorStats | None = None
    bias: TensorStats | None = None

    def to_dict(self, *, histograms: bool = True) -> dict[str, Any]:
        h = histograms
        return {"name": self.name, "kind": self.kind, "output": self.output.to_dict(histogram=h),
                "weight": None if self.weight is None else self.weight.to_dict(histogram=h),
                "bias": None if self.bias is None else self.bias.to_dict(histogram=h)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SynapseStats:
        return cls(d["name"], d["kind"], TensorStats.from_dict(d["output"]), _opt_tensor(d, "weight"),
                   _opt_tensor(d, "bias"))


@dataclass(eq=False)
class NeuronStats:
    """A Neuron node's input, synaptic current ``c`` (None without a synapse), membrane ``v`` (after
    reset) and ``v_pre`` (before the spike test; equal to ``v`` for a non-spiking integrator)."""

    name: str
    shape: tuple[int, ...]
    input: TensorStats
    v: TensorStats
    v_pre: TensorStats
    c: TensorStats | None = None

    def to_dict(self, *, histograms: bool = True) -> dict[str, Any]:
        h = histograms
        return {"name": self.name, "shape": list(self.shape), "input": self.input.to_dict(histogram=h),
                "c": None if self.c is None else self.c.to_dict(histogram=h),
                "v": self.v.to_dict(histogram=h), "v_pre": self.v_pre.to_dict(histogram=h)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NeuronStats:
        return cls(d["name"], tuple(d["shape"]), TensorStats.from_dict(d["input"]),
                   TensorStats.from_dict(d["v"]), TensorStats.from_dict(d["v_pre"]), _opt_tensor(d, "c"))


@dataclass(eq=False)
class SpikeStats:
    """Spike counts per neuron of a spiking node over ``steps`` = samples x timesteps.
    ``max_spikes``: the layer's spikes per step at most (``Neuron.max_spikes``: 1 binary, N graded,
    None unbounded graded)."""

    name: str
    counts: np.ndarray  # int64, the node's shape
    steps: int = 0
    max_spikes: int | None = 1

    def update(self, spikes: np.ndarray) -> None:
        self.counts = self.counts + spikes.sum(axis=(0, 1), dtype=np.int64)
        self.steps += int(spikes.shape[0] * spikes.shape[1])

    @property
    def rate(self) -> np.ndarray:
        """Per-neuron rate (spikes per step)."""
        return self.counts / max(self.steps, 1)

    @property
    def mean_rate(self) -> float:
        """Mean over neurons, samples and steps (spikes per step)."""
        return float(self.counts.sum() / max(self.steps * self.counts.size, 1))

    @property
    def silent_fraction(self) -> float:
        """Fraction of neurons that never spiked on the calibration set."""
        return float(np.mean(self.counts == 0)) if self.counts.size else 0.0

    @property
    def saturated_fraction(self) -> float:
        """Fraction of neurons at the layer's cap at every step: ``max_spikes`` spikes per step (a
        binary layer: a spike at every step); 0.0 for an unbounded graded layer (no cap to reach)."""
        if not self.counts.size or not self.steps or self.max_spikes is None:
            return 0.0
        return float(np.mean(self.counts == self.max_spikes * self.steps))

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.counts.shape), "steps": self.steps,
                "mean_rate": self.mean_rate, "silent_fraction": self.silent_fraction,
                "saturated_fraction": self.saturated_fraction,
                "counts": self.counts.reshape(-1).tolist(),
                **({} if self.max_spikes == 1 else {"max_spikes": self.max_spikes})}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SpikeStats:
        counts = np.asarray(d["counts"], dtype=np.int64).reshape(tuple(d["shape"]))
        cap = d.get("max_spikes", 1)
        return cls(d["name"], counts, int(d["steps"]), None if cap is None else int(cap))


@dataclass(frozen=True)
class TensorRef:
    """One calibrated tensor: ``layer`` (node name), ``tensor`` (weight, bias, output, input, c, v,
    v_pre), its recipe class (weights, currents, membrane) and its statistics."""

    layer: str
    tensor: str
    tensor_class: str
    stats: TensorStats


@dataclass(eq=False)
class CalibrationStats:
    """Everything ``collect_stats`` measured. ``order`` is the graph's execution order."""

    samples: int
    timesteps: int
    batch_size: int
    seed: int | None
    bins_per_side: int
    trace_percentile: float
    order: list[str]
    input: TensorStats
    synapses: dict[str, SynapseStats] = field(default_factory=dict)
    neurons: dict[str, NeuronStats] = field(default_factory=dict)
    spikes: dict[str, SpikeStats] = field(default_factory=dict)

    def tensors(self) -> Iterator[TensorRef]:
        """Every calibrated tensor, in execution order, with its recipe class."""
        for name in self.order:
            if name in self.synapses:
                s = self.synapses[name]
                if s.weight is not None:
                    yield TensorRef(name, "weight", "weights", s.weight)
                if s.bias is not None:
                    # A bias is added to the state: it lives on the state (current) grid.
                    yield TensorRef(name, "bias", "currents", s.bias)
                yield TensorRef(name, "output", "currents", s.output)
            if name in self.neurons:
                nrn = self.neurons[name]
                yield TensorRef(name, "input", "currents", nrn.input)
                if nrn.c is not None:
                    yield TensorRef(name, "c", "currents", nrn.c)
                yield TensorRef(name, "v", "membrane", nrn.v)
                yield TensorRef(name, "v_pre", "membrane", nrn.v_pre)

    def stability(self, last_fraction: float = 0.5) -> dict[str, Stability]:
        """Per traced tensor (``"layer.tensor"``): how much its range moved over the last
        ``last_fraction`` of the samples."""
        return {f"{t.layer}.{t.tensor}": t.stats.trace.stability(last_fraction)
                for t in self.tensors() if t.stats.trace is not None}

    def summary(self) -> str:
        """A short text table: per tensor the abs-max, p99.99 and stability; per spiking layer
        its mean rate and silent fraction."""
        lines = [f"calibration: {self.samples} samples x {self.timesteps} steps"]
        for t in self.tensors():
            st = t.stats
            p = st.hist.abs_percentile(self.trace_percentile) if st.n else 0.0
            stab = st.trace.stability().absmax_change if st.trace else None
            s = "-" if stab is None else f"{100 * stab:.2f}%"
            lines.append(f"  {t.layer + '.' + t.tensor:<28} {t.tensor_class:<9} abs-max {st.abs_max:<11.5g}"
                         f" p{self.trace_percentile:g} {p:<11.5g} abs-max drift (last half) {s}")
        for name, sp in self.spikes.items():
            lines.append(f"  {name:<28} rate {sp.mean_rate:.4f} spikes/step, "
                         f"{100 * sp.silent_fraction:.1f}% silent")
        return "\n".join(lines)

    def to_dict(self, *, histograms: bool = True) -> dict[str, Any]:
        """JSON-ready. ``histograms=False`` drops the bin counts (a compact record that
        ``from_dict`` cannot read back)."""
        h = histograms
        return {
            "samples": self.samples,
            "timesteps": self.timesteps,
            "batch_size": self.batch_size,
            "seed": self.seed,
            "bins_per_side": self.bins_per_side,
            "trace_percentile": self.trace_percentile,
            "order": list(self.order),
            "input": self.input.to_dict(histogram=h),
            "synapses": {k: v.to_dict(histograms=h) for k, v in self.synapses.items()},
            "neurons": {k: v.to_dict(histograms=h) for k, v in self.neurons.items()},
            "spikes": {k: v.to_dict() for k, v in self.spikes.items()},
            "stability": {k: v.to_dict() for k, v in self.stability().items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CalibrationStats:
        return cls(
            samples=int(d["samples"]), timesteps=int(d["timesteps"]), batch_size=int(d["batch_size"]),
            seed=None if d["seed"] is None else int(d["seed"]), bins_per_side=int(d["bins_per_side"]),
            trace_percentile=float(d["trace_percentile"]), order=list(d["order"]),
            input=TensorStats.from_dict(d["input"]),
            synapses={k: SynapseStats.from_dict(v) for k, v in d["synapses"].items()},
            neurons={k: NeuronStats.from_dict(v) for k, v in d["neurons"].items()},
            spikes={k: SpikeStats.from_dict(v) for k, v in d["spikes"].items()},
        )


# ----------------------------------------------------------------------------------------------
# Collection


def _check_cycles(graph: Graph, sched: Schedule) -> None:
    """Refuse a recurrent loop of stateless nodes only (no neuron or threshold on it): its values
    have no defined statistics (``UnsupportedError`` naming a node on the loop)."""
    stateless = {n for n in sched.order if n != sched.input_node
                 and not (graph.nodes[n].stateful or graph.nodes[n].emits_spikes)}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    def visit(name: str) -> None:
        state[name] = 1
        for src, _ in sched.inputs[name]:
            if src not in stateless:
                continue
            if state.get(src) == 1:
                raise UnsupportedError("a recurrent loop without a neuron in it: calibration statistics "
                                       "need a stateful node on every cycle", node=src)
            if src not in state:
                visit(src)
        state[name] = 2

    for n in sched.order:
        if n in stateless and n not in state:
            visit(n)


def sample_order(x: np.ndarray, *, batch_size: int, max_samples: int | None, seed: int | None,
                 trace_percentile: float) -> np.ndarray:
    """The indices of ``x``'s samples in the order ``collect_stats`` takes them (its batches are
    consecutive ``batch_size`` slices of this); ``UserInputError`` for the arguments it refuses."""
    if x.ndim < 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise UserInputError(f"calibration data must be shaped (samples, timesteps, ...) and non-empty, "
                             f"got {x.shape}")
    if batch_size < 1:
        raise UserInputError(f"batch_size must be >= 1, got {batch_size}")
    if max_samples is not None and max_samples < 1:
        raise UserInputError(f"max_samples must be >= 1, got {max_samples}")
    if not 0.0 < trace_percentile <= 100.0:
        raise UserInputError(f"trace_percentile must be in (0, 100], got {trace_percentile}")
    n_total = x.shape[0]
    n = n_total if max_samples is None else min(max_samples, n_total)
    if seed is None:
        index = np.arange(n)
    else:
        index = np.random.default_rng(seed).permutation(n_total)[:n]
    return index


def collect_stats(graph: Graph, x: np.ndarray, *, batch_size: int = 32, progress: bool = True,
                  max_samples: int | None = None, seed: int | None = 0,
                  bins_per_side: int = DEFAULT_BINS_PER_SIDE,
                  trace_percentile: float = DEFAULT_TRACE_PERCENTILE,
                  on_batch: Callable[[np.ndarray, RunResult], None] | None = None) -> CalibrationStats:
    """Run ``x`` (samples, timesteps, *input_shape) through the float executor in batches of
    ``batch_size`` samples and collect per-layer statistics (see the module docstring).

    ``max_samples``: use at most this many samples (None = all). ``seed``: the samples are taken in
    a random order drawn from this seed (a random subset when ``max_samples`` is smaller); None
    keeps the file's order. The order only affects the range traces, never the histograms.
    ``batch_size`` bounds memory: every node's output for one batch is held at once.
    ``on_batch(sample_indices, run)``: called with each batch's recorded float run (indices into
    ``x``), e.g. to keep the runs as the float reference (``calibrate_network`` does).
    """
    sched = graph.schedule()
    x = np.asarray(x)
    index = sample_order(x, batch_size=batch_size, max_samples=max_samples, seed=seed,
                         trace_percentile=trace_percentile)
    n = index.shape[0]

    def traced() -> TensorStats:
        return TensorStats.empty(bins_per_side, traced=True, trace_q=trace_percentile)

    stats = CalibrationStats(samples=0, timesteps=int(x.shape[1]), batch_size=batch_size, seed=seed,
                             bins_per_side=bins_per_side, trace_percentile=trace_percentile,
                             order=list(sched.order), input=traced())
    for name in sched.order:
        node = graph.nodes[name]
        if node.synaptic:
            st = SynapseStats(name, node.kind, traced())
            weight, bias = getattr(node, "weight", None), getattr(node, "bias", None)
            if weight is not None:
                st.weight = TensorStats.from_array(weight, channel_axis=0, bins_per_side=bins_per_side)
                if bias is not None:
                    st.bias = TensorStats.from_array(bias, channel_axis=0, bins_per_side=bins_per_side)
            stats.synapses[name] = st
        if is_neuron_layer(node):
            stats.neurons[name] = NeuronStats(name, tuple(sched.shapes[name]), traced(), traced(), traced(),
                                              traced() if "c" in node.state_names else None)
        if node.emits_spikes:
            stats.spikes[name] = SpikeStats(name, np.zeros(sched.shapes[name], dtype=np.int64),
                                            max_spikes=getattr(node, "max_spikes", 1))

    _check_cycles(graph, sched)
    keep_outputs = list(stats.synapses)
    # A neuron whose input is one synapse's undelayed output holds that output's values: its
    # statistics are copied, not added a second time.
    same_as = {n: sched.inputs[n][0][0] for n in stats.neurons
               if len(sched.inputs[n]) == 1 and not sched.inputs[n][0][1] and sched.inputs[n][0][0] in stats.synapses}
    keep_inputs = [n for n in stats.neurons if n not in same_as]

    from lnm_deploy.progress import progress as progress_bar

    bar = progress_bar(total=n, desc="calibrate", unit="sample", enabled=progress)
    pool = _UpdatePool()
    try:
        for start in range(0, n, batch_size):
            xb = x[index[start : start + batch_size]]
            # One recorded float run: the statistics read the values the run itself computed
            # (synapse outputs, neuron inputs, v, v_pre, c), no second copy of any step.
            res = run_float(graph, xb, record=True, keep_outputs=keep_outputs, keep_inputs=keep_inputs)
            if on_batch is not None:
                on_batch(index[start : start + batch_size], res)
            ch = 2  # channel axis of (B, T, C, ...)
            jobs: list[tuple[TensorStats, np.ndarray, int | None]] = [(stats.input, xb, ch if xb.ndim > 2 else None)]
            jobs += [(st.output, res.values[name], ch) for name, st in stats.synapses.items()]
            for name, nst in stats.neurons.items():
                rec = res.states[name]
                if name not in same_as:
                    jobs.append((nst.input, res.inputs[name], ch))
                if nst.c is not None:
                    jobs.append((nst.c, rec["c"], ch))
                jobs += [(nst.v, rec["v"], ch), (nst.v_pre, rec["v_pre"], ch)]
            pool.update(jobs)
            for name, nst in stats.neurons.items():
                if name in same_as:
                    nst.input.assign(stats.synapses[same_as[name]].output)
            for name, sp in stats.spikes.items():
                sp.update(res.spikes[name])
            stats.samples += xb.shape[0]
            assert stats.input.trace is not None
            stats.input.trace.record(stats.samples, stats.input.hist)
            for t in stats.tensors():
                if t.stats.trace is not None:
                    t.stats.trace.record(stats.samples, t.stats.hist)
            bar.update(xb.shape[0])
    finally:
        pool.close()
        bar.close()
    return stats


#: Threads that update the statistics of one batch's tensors at once (each tensor by one thread,
#: in the same order as alone: the results do not depend on it). numpy's reductions and the
#: compiled kernels release the GIL.
STATS_THREADS = min(2, os.cpu_count() or 1)


class _UpdatePool:
    """``TensorStats.update`` for a batch's tensors on ``STATS_THREADS`` threads (largest first)."""

    def __init__(self) -> None:
        self._ex: ThreadPoolExecutor | None = None

    def update(self, jobs: list[tuple[TensorStats, np.ndarray, int | None]]) -> None:
        if STATS_THREADS < 2 or len(jobs) < 2:
            for st, a, axis in jobs:
                st.update(a, axis)
            return
        if self._ex is None:
            self._ex = ThreadPoolExecutor(max_workers=STATS_THREADS, thread_name_prefix="lnm-stats")
        jobs = sorted(jobs, key=lambda j: -j[1].size)
        for f in [self._ex.submit(st.update, a, axis) for st, a, axis in jobs]:
            f.result()  # re-raises a job's error (NumericError for NaN / inf)

    def close(self) -> None:
        if self._ex is not None:
            self._ex.shutdown(wait=True, cancel_futures=True)
            self._ex = None
