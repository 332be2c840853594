"""Exact comparison of two runs: where they first differ (layer, timestep, sample, neuron).

One rule everywhere: the earliest timestep at which any layer differs; among the layers differing
then, the first in ``order`` (default: the expected run's key order, normally execution order);
then the lowest sample; then the lowest neuron in C order. Arrays are per layer
``(samples, timesteps, *shape)`` and compared with ``np.array_equal`` / ``!=``, never a tolerance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from lnm_deploy.core.results import RunResult
from lnm_deploy.errors import UserInputError

Spikes = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Mismatch:
    """Where two runs first differ. ``neuron`` is the index into the layer's shape (no batch)."""

    layer: str
    timestep: int
    sample: int
    neuron: tuple[int, ...]
    expected: int
    actual: int
    quantity: str = "spikes"
    count: int = 1  # differing entries of this layer and quantity in total

    def __str__(self) -> str:
        return (
            f"first mismatch: layer '{self.layer}' {self.quantity}, timestep {self.timestep}, "
            f"sample {self.sample}, neuron {self.neuron}: expected {self.expected}, got "
            f"{self.actual} ({self.count} differing entries in this layer)"
        )


def _first(name: str, quantity: str, a: np.ndarray, b: np.ndarray) -> Mismatch | None:
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        return Mismatch(name, -1, -1, (), -1, -1, quantity=f"{quantity} shape {a.shape} vs {b.shape}")
    if np.array_equal(a, b):
        return None
    diff = a != b
    # Earliest timestep first (axis 1), then sample, then neuron in C order.
    moved = np.moveaxis(diff, 1, 0).reshape(diff.shape[1], diff.shape[0], -1)
    t, s, flat = np.unravel_index(int(np.argmax(moved.reshape(-1))), moved.shape)
    neuron = tuple(int(i) for i in np.unravel_index(int(flat), a.shape[2:])) if a.ndim > 2 else ()
    idx = (int(s), int(t), *neuron)
    return Mismatch(name, int(t), int(s), neuron, int(a[idx]), int(b[idx]), quantity=quantity,
                    count=int(diff.sum()))


def first_mismatch(expected: Mapping[str, np.ndarray], actual: Mapping[str, np.ndarray], *,
                   order: Sequence[str] | None = None, quantity: str = "spikes") -> Mismatch | None:
    """Compare per-layer arrays shaped (batch, timesteps, *shape) with ``np.array_equal``.

    Returns None when every layer is equal, else the mismatch at the earliest timestep (ties go
    to the layer earliest in ``order``, default the key order of ``expected``). A layer missing
    on one side is a mismatch at timestep -1, as is a layer whose shapes differ.
    """
    names = list(order) if order is not None else list(expected)
    names += [n for n in list(expected) + list(actual) if n not in names]
    found: list[tuple[int, int, Mismatch]] = []
    for rank, name in enumerate(names):
        if name not in expected or name not in actual:
            return Mismatch(name, -1, -1, (), -1, -1, quantity=f"{quantity} (missing on one side)")
        m = _first(name, quantity, expected[name], actual[name])
        if m is not None:
            found.append((m.timestep, rank, m))
    return min(found, key=lambda x: (x[0], x[1]))[2] if found else None


def compare_runs(expected: RunResult, actual: RunResult, *, order: Sequence[str] | None = None,
                 states: bool = True) -> Mismatch | None:
    """First difference in spikes, then (with ``states``) in every recorded state variable."""
    m = first_mismatch(expected.spikes, actual.spikes, order=order)
    if m is not None or not states:
        return m
    for layer in order or list(expected.states):
        if layer not in expected.states:
            continue
        got = actual.states.get(layer, {})
        m = first_mismatch(expected.states[layer], got, quantity=f"state of '{layer}'")
        if m is not None:
            return Mismatch(layer, m.timestep, m.sample, m.neuron, m.expected, m.actual,
                            quantity=f"state {m.layer}", count=m.count)
    return None


def spikes_of(run: Any) -> Spikes:
    """The per-layer spikes of ``run``: its ``.spikes`` (a ``RunResult``), else ``run`` itself (a dict)."""
    return run.spikes if hasattr(run, "spikes") else run


def same_shape(a: Any, b: Any, what: str = "arrays") -> tuple[np.ndarray, np.ndarray]:
    """``a`` and ``b`` as arrays; ``UserInputError`` naming ``what`` if their shapes differ."""
    a, b = np.asarray(a), np.asarray(b)
    if a.shape != b.shape:
        raise UserInputError(f"{what} have different shapes: {a.shape} vs {b.shape}")
    return a, b


def layer_order(a: Spikes, b: Spikes, order: Sequence[str] | None) -> list[str]:
    """``order`` (default ``a``'s keys), checked: ``UserInputError`` for a layer missing on one side."""
    names = list(a) if order is None else list(order)
    for n in names:
        if n not in a or n not in b:
            raise UserInputError(f"layer {n!r} is missing from {'the reference' if n not in a else 'the test'} run")
    return names


class Divergence(NamedTuple):
    """The first entry where two runs differ: layer, sample, timestep and flat neuron index
    (index into the layer's flattened shape)."""

    layer: str
    sample: int
    timestep: int
    neuron: int


def first_divergence(spikes_a: Any, spikes_b: Any, order: Sequence[str] | None = None) -> Divergence | None:
    """Where two runs first differ (the module's rule, via ``first_mismatch``), with the neuron as a
    flat index. None if they agree on every layer of ``order`` (default: ``spikes_a``'s order).

    Raises:
        UserInputError: a layer missing on one side, shapes that differ, arrays with fewer than two
            dims (samples, timesteps).
    """
    a, b = spikes_of(spikes_a), spikes_of(spikes_b)
    names = layer_order(a, b, order)
    xa: dict[str, np.ndarray] = {}
    xb: dict[str, np.ndarray] = {}
    for n in names:
        xa[n], xb[n] = same_shape(a[n], b[n], f"spikes of layer {n!r}")
        if xa[n].ndim < 2:
            raise UserInputError(f"spikes of layer {n!r} must be (samples, timesteps, ...), got {xa[n].shape}")
    m = first_mismatch(xa, xb, order=names)
    if m is None:
        return None
    shape = xa[m.layer].shape[2:]
    flat = int(np.ravel_multi_index(m.neuron, shape)) if shape else 0
    return Divergence(m.layer, m.sample, m.timestep, flat)
