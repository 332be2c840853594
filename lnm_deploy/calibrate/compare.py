"""Per-layer error metrics between a reference run (the float model) and a test run (the quantized
network): SQNR, spike agreement, spike-rate drift and the first divergence in time.

Spike inputs are dicts ``layer -> (samples, timesteps, *shape)`` (``RunResult.spikes``) or
anything with a ``.spikes`` dict (a ``RunResult``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from lnm_deploy.errors import UserInputError

Spikes = Mapping[str, np.ndarray]


def _spikes(run: Any) -> Spikes:
    return run.spikes if hasattr(run, "spikes") else run


def _pair(a: Any, b: Any, what: str = "arrays") -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise UserInputError(f"{what} have different shapes: {a.shape} vs {b.shape}")
    return a, b


def sqnr_db(reference: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio ``10 log10(sum ref^2 / sum (ref - test)^2)`` in dB.

    ``inf`` when the two are equal, ``-inf`` when the reference is all zero and the test is not."""
    r, t = _pair(reference, test)
    r, t = r.astype(np.float64), t.astype(np.float64)
    noise = float(np.sum(np.square(r - t)))
    signal = float(np.sum(np.square(r)))
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def spike_agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of equal entries (1.0 = identical spike trains; 1.0 for empty arrays)."""
    a, b = _pair(a, b, "spike arrays")
    return float(np.mean(a == b)) if a.size else 1.0


def rate_drift(reference: np.ndarray, test: np.ndarray) -> float:
    """Mean spike rate of ``test`` minus that of ``reference`` (spikes per step per neuron)."""
    r, t = _pair(reference, test, "spike arrays")
    if not r.size:
        return 0.0
    return float(np.mean(t, dtype=np.float64) - np.mean(r, dtype=np.float64))


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


def _order(a: Spikes, b: Spikes, order: Sequence[str] | None) -> list[str]:
    names = list(a) if order is None else list(order)
    for n in names:
        if n not in a or n not in b:
            raise UserInputError(f"layer {n!r} is missing from {'the reference' if n not in a else 'the test'} run")
    return names


def compare_spikes(reference: Any, test: Any, order: Sequence[str] | None = None) -> dict[str, LayerComparison]:
    """Per-layer spike agreement and rate drift, for the layers in ``order`` (default: the
    reference's layers)."""
    a, b = _spikes(reference), _spikes(test)
    out = {}
    for n in _order(a, b, order):
        ra, rb = _pair(a[n], b[n], f"spikes of layer {n!r}")
        rate_a = float(np.mean(ra, dtype=np.float64)) if ra.size else 0.0
        rate_b = float(np.mean(rb, dtype=np.float64)) if rb.size else 0.0
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


class Divergence(NamedTuple):
    """The first entry where two runs differ: layer, sample, timestep and flat neuron index
    (index into the layer's flattened shape)."""

    layer: str
    sample: int
    timestep: int
    neuron: int


def first_divergence(spikes_a: Any, spikes_b: Any, order: Sequence[str] | None = None) -> Divergence | None:
    """Where two runs first differ: the earliest timestep at which any layer differs; among layers
    differing then, the first in ``order`` (default: ``spikes_a``'s order, normally execution
    order); then the lowest sample; then the lowest flat neuron index. None if they agree."""
    a, b = _spikes(spikes_a), _spikes(spikes_b)
    best: tuple[int, int, str, np.ndarray] | None = None  # (t, layer position, layer, diff)
    for pos, n in enumerate(_order(a, b, order)):
        xa, xb = _pair(a[n], b[n], f"spikes of layer {n!r}")
        if xa.ndim < 2:
            raise UserInputError(f"spikes of layer {n!r} must be (samples, timesteps, ...), got {xa.shape}")
        diff = (xa != xb).reshape(xa.shape[0], xa.shape[1], -1)
        steps = np.flatnonzero(diff.any(axis=(0, 2)))
        if steps.size and (best is None or steps[0] < best[0]):
            best = (int(steps[0]), pos, n, diff)
    if best is None:
        return None
    t, _, n, diff = best
    at_t = diff[:, t, :]
    sample = int(np.flatnonzero(at_t.any(axis=1))[0])
    neuron = int(np.flatnonzero(at_t[sample])[0])
    return Divergence(n, sample, t, neuron)
