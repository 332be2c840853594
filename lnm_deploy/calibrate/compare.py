"""Per-layer error metrics between a reference run (the float model) and a test run (the quantized
network): SQNR, spike agreement, spike-rate drift and the first divergence in time.

Spike inputs are dicts ``layer -> (samples, timesteps, *shape)`` (``RunResult.spikes``) or
anything with a ``.spikes`` dict (a ``RunResult``). The first divergence (``first_divergence``,
``Divergence``) is the shared core's (``lnm_deploy.core.compare``), re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lnm_deploy.core.compare import Divergence, first_divergence, layer_order, same_shape, spikes_of

__all__ = [
    "OBJECTIVES",
    "Divergence",
    "LayerComparison",
    "compare_spikes",
    "first_divergence",
    "mean_spike_agreement",
    "rate_drift",
    "spike_agreement",
    "sqnr_db",
]

Spikes = Mapping[str, np.ndarray]


def sqnr_db(reference: np.ndarray, test: np.ndarray, *, test_scale: float | None = None) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum ref^2 / sum (ref - test)^2)`` in dB.

    ``test_scale``: compare against ``test * test_scale`` (float64; e.g. integer states times their
    quantum), computed in one buffer. ``inf`` when the two are equal, ``-inf`` when the reference
    is all zero and the test is not."""
    r, t = same_shape(reference, test)
    if test_scale is not None:
        d = np.multiply(t, test_scale, dtype=np.float64)
        np.subtract(r, d, out=d, dtype=np.float64)
    else:
        d = np.subtract(r, t, dtype=np.float64)
    d = d.reshape(-1)
    r = np.asarray(r, dtype=np.float64).reshape(-1)
    noise = float(d @ d)  # sums of squares as dot products (BLAS; no squared copies)
    signal = float(r @ r)
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def _mean(a: np.ndarray) -> float:
    """``np.mean(a, dtype=float64)``: for booleans and integers the exact count over the size (the
    same one rounding as numpy's float64 sum of integers below 2**53), without a float copy."""
    if a.dtype.kind == "b":
        return np.count_nonzero(a) / a.size
    if a.dtype.kind in "iu" and a.size < 2**53 // (int(np.iinfo(a.dtype).max) + 1):
        return int(a.sum(dtype=np.int64)) / a.size
    return float(np.mean(a, dtype=np.float64))


def spike_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of equal entries (1.0 = identical spike trains; 1.0 for empty arrays)."""
    a, b = same_shape(a, b, "spike arrays")
    return np.count_nonzero(a == b) / a.size if a.size else 1.0


def rate_drift(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean spike rate of ``test`` minus that of ``reference`` (spikes per step per neuron)."""
    r, t = same_shape(reference, test, "spike arrays")
    if not r.size:
        return 0.0
    return _mean(t) - _mean(r)


@dataclass(frozen=True)
class LayerComparison:
    """Spike metrics of one layer: agreement (fraction of equal entries), mean rates (spikes per
    step per neuron) and their difference ``rate_test - rate_reference``."""

    layer: str
    agreement: float
    rate_reference: float
    rate_test: float
    rate_drift: float

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "agreement": self.agreement, "rate_reference": self.rate_reference,
                "rate_test": self.rate_test, "rate_drift": self.rate_drift}


def compare_spikes(reference: Any, test: Any, order: Sequence[str] | None = None) -> dict[str, LayerComparison]:
    """Per-layer spike agreement and rate drift, for the layers in ``order`` (default: the
    reference's layers)."""
    a, b = spikes_of(reference), spikes_of(test)
    out = {}
    for n in layer_order(a, b, order):
        ra, rb = same_shape(a[n], b[n], f"spikes of layer {n!r}")
        rate_a = _mean(ra) if ra.size else 0.0
        rate_b = _mean(rb) if rb.size else 0.0
        out[n] = LayerComparison(n, spike_agreement(ra, rb), rate_a, rate_b, rate_b - rate_a)
    return out


def mean_spike_agreement(reference: Any, test: Any, order: Sequence[str] | None = None) -> float:
    """The mean over layers of the per-layer spike agreement (higher is better)."""
    comps = compare_spikes(reference, test, order)
    return float(np.mean([c.agreement for c in comps.values()])) if comps else 1.0


# Objectives the agreement search may maximise (recipes name them): higher is better.
OBJECTIVES: dict[str, Callable[..., float]] = {
    "spike_agreement": mean_spike_agreement,
}
