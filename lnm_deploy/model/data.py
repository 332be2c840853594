"""Demo data: scikit-learn's bundled 8x8 digits (no download), encoded to spike trains.

Pixels are integers 0..16. Encodings give ``(N, T, 64)`` float32 arrays, one row per step:

- ``rate_encode``: Bernoulli spikes with ``p = pixel / 16 * max_rate`` per step (a discrete-time
  Poisson process), from a seeded ``numpy.random.Generator``;
- ``current_encode``: the deterministic "direct current" ``pixel / 16 * gain`` at every step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from lnm_deploy.errors import DependencyError, UserInputError

Encoding = Literal["rate", "current"]
PIXEL_MAX = 16.0


@dataclass(frozen=True)
class DigitsSplit:
    """Pixel arrays ``(N, 64)`` float64 in [0, 16] and labels ``(N,)`` int64."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split(test_fraction: float = 0.2, seed: int = 0) -> DigitsSplit:
    """Stratified, deterministic train/test split of the 1797 bundled digits."""
    if not 0.0 < test_fraction < 1.0:
        raise UserInputError(f"test_fraction must be in (0, 1), got {test_fraction}")
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise DependencyError("the digits demo needs scikit-learn: pip install 'lnm-deploy[torch]'") from e
    digits = load_digits()
    x = np.asarray(digits.data, dtype=np.float64)
    y = np.asarray(digits.target, dtype=np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_fraction, random_state=seed, shuffle=True, stratify=y
    )
    return DigitsSplit(x_tr, y_tr, x_te, y_te)


def _check_pixels(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise UserInputError(f"pixels must be (N, features), got shape {x.shape}")
    if x.size and (x.min() < 0 or x.max() > PIXEL_MAX):
        raise UserInputError(f"pixels must lie in [0, {PIXEL_MAX:g}]")
    return x


def rate_encode(x: np.ndarray, steps: int, max_rate: float = 1.0, seed: int = 0) -> np.ndarray:
    """Bernoulli spike trains ``(N, steps, F)`` float32; ``P(spike) = x / 16 * max_rate`` per step."""
    if steps < 1:
        raise UserInputError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= max_rate <= 1.0:
        raise UserInputError(f"max_rate is a per-step probability in [0, 1], got {max_rate}")
    p = _check_pixels(x) / PIXEL_MAX * max_rate
    rng = np.random.default_rng(seed)
    u = rng.random((p.shape[0], steps, p.shape[1]))
    return (u < p[:, None, :]).astype(np.float32)


def current_encode(x: np.ndarray, steps: int, gain: float = 1.0) -> np.ndarray:
    """Constant input ``x / 16 * gain`` repeated over ``steps``: ``(N, steps, F)`` float32."""
    if steps < 1:
        raise UserInputError(f"steps must be >= 1, got {steps}")
    v = (_check_pixels(x) / PIXEL_MAX * gain).astype(np.float32)
    return np.repeat(v[:, None, :], steps, axis=1)


def encode(
    x: np.ndarray, steps: int, encoding: Encoding = "rate", max_rate: float = 1.0, seed: int = 0
) -> np.ndarray:
    """``rate_encode`` or ``current_encode`` (``max_rate`` is the gain of the current encoding)."""
    if encoding == "rate":
        return rate_encode(x, steps, max_rate=max_rate, seed=seed)
    if encoding == "current":
        return current_encode(x, steps, gain=max_rate)
    raise UserInputError(f"encoding must be 'rate' or 'current', got {encoding!r}")
