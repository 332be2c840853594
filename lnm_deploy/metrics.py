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
    """Fraction of samples whose ``predictions`` equal ``labels``."""
    labels = np.asarray(labels)
    if labels.shape != (output.shape[0],):
        raise UserInputError(f"labels shaped {labels.shape}, expected ({output.shape[0]},)")
    return float(np.mean(predictions(output) == labels))
