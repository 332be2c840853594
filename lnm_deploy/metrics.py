"""Scores computed from run results (numpy only).

- ``predictions(output)`` / ``accuracy(output, labels)``: the spike-count readout.
- ``lempel_ziv_complexity(spikes, axis, normalize)``: LZ76 complexity of binary sequences,
  vectorised over every other axis (see docs/readouts.md).
- ``lzc_drift(float_spikes, fixed_spikes, axis)``: per-output-neuron mean absolute LZC difference
  between two runs (``LZCDrift``).

The classifier fitted on LZC features lives in ``lnm_deploy.readout``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from lnm_deploy import validate
from lnm_deploy.errors import UserInputError


def predictions(output: np.ndarray) -> np.ndarray:
    """Class per sample: argmax of the output summed over time; ties go to the lowest index.

    ``output`` is (samples, timesteps, n_out) spikes (or membrane values of a non-spiking readout).
    """
    counts = output.reshape(output.shape[0], output.shape[1], -1).sum(axis=1)
    return np.argmax(counts, axis=1)


def accuracy(output: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of samples whose ``predictions`` equal ``labels`` (checked by ``validate.labels``:
    integer class indices in [0, n_outputs))."""
    output = np.asarray(output)
    if output.ndim < 2:
        raise UserInputError(f"output must be shaped (samples, timesteps, ...), got {output.shape}")
    n_classes = int(np.prod(output.shape[2:])) if output.ndim > 2 else 1
    labels = validate.labels(labels, output.shape[0], n_classes)
    return float(np.mean(predictions(output) == labels))


# ------------------------------------------------------------------------------------------------
# Lempel-Ziv complexity (LZ76)


def _time_axis(axis: Any, ndim: int, name: str = "axis") -> int:
    """``axis`` as a non-negative index into an array of ``ndim`` dimensions, or ``UserInputError``."""
    if isinstance(axis, bool) or not isinstance(axis, numbers.Integral):
        raise UserInputError(f"{name} must be an integer axis index, got {axis!r}")
    if not -ndim <= int(axis) < ndim:
        raise UserInputError(f"{name}={axis} is out of range for an array with {ndim} dimension(s); "
                             f"use an index in [{-ndim}, {ndim - 1}]")
    return int(axis) % ndim


def _binary(spikes: Any, what: str) -> np.ndarray:
    """``spikes`` as uint8 of the same shape: bool, integer or float arrays whose every value is
    exactly 0 or 1 (the rule of ``validate.spikes``); anything else is a ``UserInputError``."""
    try:
        shape = np.shape(spikes)
    except Exception as e:  # ragged nested lists
        raise UserInputError(f"{what} is not an array ({type(e).__name__}: {e})") from e
    if len(shape) == 0:
        raise UserInputError(f"{what} must have at least one axis (a sequence over time), got a scalar")
    if len(shape) == 1:  # validate.spikes wants (samples, timesteps, ...): view one sequence as (1, n)
        return validate.spikes(np.asarray(spikes)[None], (), f"{what}, viewed as (1, {shape[0]}),",
                               allow_empty=True)[0]
    return validate.spikes(spikes, tuple(shape[2:]), what, allow_empty=True)


def _lz76_counts(seqs: np.ndarray) -> np.ndarray:
    """LZ76 phrase counts c(n) of the rows of ``seqs`` (batch, n) uint8, as int64 (batch,).

    Kaspar & Schuster's (1987) algorithm, in their 1-based notation, run on all rows at once:
    ``l`` is the length of the prefix already parsed (the current phrase starts at s_{l+1}), ``i``
    the start (minus 1) of the candidate copy in the history, ``k`` the length of the current
    match, ``k_max`` the longest match found for this phrase, ``c`` the count. These are arrays;
    every pass performs one comparison step of every unfinished row with masked updates, and
    finished rows leave the working set. Passes: at most about n^2 / 2 (the row that takes longest).
    """
    batch, n = seqs.shape
    out = np.zeros(batch, dtype=np.int64)
    if n == 0 or batch == 0:
        return out
    if n == 1:
        out[:] = 1
        return out
    flat = seqs.reshape(-1)
    rows = np.arange(batch)
    base = rows * n - 1  # flat index of row r's symbol s_j (1-based j): base[r] + j
    i = np.zeros(batch, dtype=np.int64)
    k = np.ones(batch, dtype=np.int64)
    l = np.ones(batch, dtype=np.int64)  # noqa: E741  (the paper's name)
    k_max = np.ones(batch, dtype=np.int64)
    c = np.ones(batch, dtype=np.int64)
    while rows.size:
        same = flat[base + i + k] == flat[base + l + k]  # s_{i+k} == s_{l+k}
        diff = ~same
        # Equal symbols: the copy goes on; at the end of the sequence the last phrase is counted.
        k += same
        end_in_copy = same & (l + k > n)
        # Different symbols: try the next start i in the history; when every start up to l has
        # been tried, the phrase (longest copy + one new symbol) is complete: l moves past it.
        np.maximum(k_max, k, out=k_max, where=diff)
        i += diff
        phrase = diff & (i == l)
        c += end_in_copy | phrase
        np.add(l, k_max, out=l, where=phrase)
        end_at_phrase = phrase & (l + 1 > n)
        np.copyto(i, 0, where=phrase)
        np.copyto(k, 1, where=diff)
        np.copyto(k_max, 1, where=phrase)
        done = end_in_copy | end_at_phrase
        if done.any():
            out[rows[done]] = c[done]
            keep = ~done
            rows, base, i, k, l, k_max, c = (  # noqa: E741
                rows[keep], base[keep], i[keep], k[keep], l[keep], k_max[keep], c[keep])
    return out


def lempel_ziv_complexity(spikes: Any, axis: int = -1, normalize: bool = True) -> np.ndarray:
    """Lempel-Ziv complexity (LZ76) of every binary sequence along ``axis``.

    Definition (Lempel & Ziv 1976, "On the complexity of finite sequences", IEEE Trans. Inf.
    Theory 22(1):75-81): the sequence s_1..s_n is split by the exhaustive parsing into phrases,
    each the longest prefix of the rest that is a substring of what precedes its last symbol
    (a copy from the history, overlaps allowed) plus one new symbol; the last phrase may end the
    sequence without a new symbol. c(n) is the number of phrases, counted with the algorithm of
    Kaspar & Schuster (1987, "Easily calculable measure for the complexity of spatiotemporal
    patterns", Phys. Rev. A 36:842). Example: 0001101001000101 parses as 0.001.10.100.1000.101,
    c = 6. With ``normalize`` the result is c(n) / (n / log2 n), the count relative to its
    asymptotic value for a random binary sequence (about 1 for a long random sequence, towards 0
    for a regular one; short sequences can exceed 1: 010 gives 3 log2(3) / 3 = 1.58).

    ``spikes``: any shape, e.g. (samples, timesteps, neurons); bool, integer or float values that
    are exactly 0 or 1. ``axis``: the time axis (negative counts from the end). Returns the shape
    of ``spikes`` without ``axis`` (for (samples, timesteps, neurons) and ``axis=1``:
    (samples, neurons)): int64 phrase counts when ``normalize`` is False, else float64 in units of
    n / log2 n (dimensionless). Every sequence of the call has the same length n (the size of
    ``axis``):

    - n = 0: c = 0; n = 1: c = 1 (one phrase). Normalising needs n >= 2, so ``normalize=True``
      with n <= 1 raises ``UserInputError`` (pass ``normalize=False``).
    - a constant sequence (all 0 or all 1) with n >= 2 has c = 2 (the first symbol, then one copy
      of the rest), normalised 2 log2(n) / n.
    - no sequences (a leading axis of size 0): an empty result of the shape above.

    Raises ``UserInputError`` for a scalar, an out-of-range or non-integer ``axis``, a
    non-boolean ``normalize``, and any value other than 0 or 1 (NaN, 2, 0.5, complex, strings).
    """
    a = _binary(spikes, "spikes (lempel_ziv_complexity)")
    ax = _time_axis(axis, a.ndim)
    if not isinstance(normalize, (bool, np.bool_)):
        raise UserInputError(f"normalize must be True or False, got {normalize!r}")
    n = a.shape[ax]
    if normalize and n < 2:
        raise UserInputError(f"normalize=True needs sequences of length >= 2 (n / log2 n is undefined "
                             f"for n = {n}); the time axis {axis} has size {n}: pass normalize=False "
                             "for the raw phrase count")
    seqs = np.moveaxis(a, ax, -1)
    lead = seqs.shape[:-1]
    counts = _lz76_counts(np.ascontiguousarray(seqs.reshape(math.prod(lead), n))).reshape(lead)
    if not normalize:
        return counts
    return counts * math.log2(n) / n  # c * log2(n) / n in float64, in this order


@dataclass(frozen=True)
class LZCDrift:
    """Per-output-neuron LZC of two runs of the same inputs and how far they differ.

    Each array has the output shape (the spikes' shape without the sample and time axes; for
    (samples, timesteps, neurons): (neurons,)), float64, in the units of
    ``lempel_ziv_complexity`` (normalised: dimensionless, in units of n / log2 n; else phrases).

    - ``mean_abs_diff``: mean over samples of |LZC(reference) - LZC(test)|;
    - ``reference_mean`` / ``test_mean``: the mean LZC over samples of each run.
    """

    mean_abs_diff: np.ndarray
    reference_mean: np.ndarray
    test_mean: np.ndarray
    normalize: bool

    @property
    def max(self) -> float:
        """The largest per-neuron drift (0.0 when there are no neurons)."""
        return float(self.mean_abs_diff.max()) if self.mean_abs_diff.size else 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: nested lists of floats in the output shape."""
        return {"mean_abs_diff": self.mean_abs_diff.tolist(),
                "reference_mean": self.reference_mean.tolist(),
                "test_mean": self.test_mean.tolist(),
                "max": self.max, "normalize": bool(self.normalize)}


def lzc_drift(float_spikes: Any, fixed_spikes: Any, axis: int = 1, normalize: bool = True) -> LZCDrift:
    """LZC drift per output neuron between a reference run (float) and a test run (fixed point).

    Both spike arrays are shaped (samples, timesteps, *output_shape) alike (time on ``axis``,
    default 1; the sample axis is 0 and is averaged over), binary as ``lempel_ziv_complexity``
    requires. Returns an ``LZCDrift`` whose arrays are shaped like the spikes without the sample
    and time axes (e.g. (neurons,)). Raises ``UserInputError`` for differing shapes, fewer than
    two axes, ``axis`` naming the sample axis, no samples, and what ``lempel_ziv_complexity``
    refuses.
    """
    ref = _binary(float_spikes, "float spikes (lzc_drift)")
    test = _binary(fixed_spikes, "fixed-point spikes (lzc_drift)")
    if ref.shape != test.shape:
        raise UserInputError(f"lzc_drift: the two runs must have the same shape, got {ref.shape} "
                             f"(float) and {test.shape} (fixed point); run both on the same inputs")
    if ref.ndim < 2:
        raise UserInputError(f"lzc_drift: spikes must be shaped (samples, timesteps, ...), got {ref.shape}")
    ax = _time_axis(axis, ref.ndim)
    if ax == 0:
        raise UserInputError("lzc_drift: axis 0 is the sample axis; pass the time axis (default 1)")
    if ref.shape[0] == 0:
        raise UserInputError(f"lzc_drift: no samples (shape {ref.shape})")
    lz_ref = lempel_ziv_complexity(ref, ax, normalize).astype(np.float64)
    lz_test = lempel_ziv_complexity(test, ax, normalize).astype(np.float64)
    return LZCDrift(mean_abs_diff=np.abs(lz_ref - lz_test).mean(axis=0),
                    reference_mean=lz_ref.mean(axis=0), test_mean=lz_test.mean(axis=0),
                    normalize=bool(normalize))
