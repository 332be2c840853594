"""Scores computed from run results (numpy only)."""

from __future__ import annotations

import numpy as np

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
    from lnm_deploy import validate

    output = np.asarray(output)
    if output.ndim < 2:
        raise UserInputError(f"output must be shaped (samples, timesteps, ...), got {output.shape}")
    n_classes = int(np.prod(output.shape[2:])) if output.ndim > 2 else 1
    labels = validate.labels(labels, output.shape[0], n_classes)
    return float(np.mean(predictions(output) == labels))
