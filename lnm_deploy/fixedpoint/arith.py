"""Integer primitives of the fixed-point contract (``docs/fixed-point.md`` section 1).

Every function here works on Python ints *and* on numpy int64 arrays with the same results, so the
simulator and the documentation share one definition. Values are mathematical integers; widths
are in bits and include the sign bit.
"""

from __future__ import annotations

from typing import Literal, TypeVar

import numpy as np

Rounding = Literal["nearest", "floor", "trunc"]
Overflow = Literal["saturate", "wrap"]
ROUNDINGS: tuple[str, ...] = ("nearest", "floor", "trunc")
OVERFLOWS: tuple[str, ...] = ("saturate", "wrap")

IntLike = TypeVar("IntLike", int, np.ndarray)


#: Integer sums stay exact in float32 / float64 while every partial sum is below these (any order).
F32_EXACT, F64_EXACT = 2**24, 2**53


def exact_float(bound: int, f32: int = F32_EXACT, f64: int = F64_EXACT) -> type | None:
    """The smallest float type in which sums of integers with every partial sum below ``bound``
    in magnitude are exact whatever the summation order (float32 below ``f32``, float64 below
    ``f64``), or None (only an integer type is)."""
    if bound < f32:
        return np.float32
    if bound < f64:
        return np.float64
    return None


def wrap(x: IntLike, bits: int) -> IntLike:
    """Two's-complement wrap into ``[-2**(bits-1), 2**(bits-1) - 1]``."""
    half = 1 << (bits - 1)
    if isinstance(x, np.ndarray):
        return ((x + half) & ((1 << bits) - 1)) - half
    return ((x + half) % (1 << bits)) - half


def saturate(x: IntLike, bits: int) -> IntLike:
    """Symmetric saturation into ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]`` (Loihi's v rule)."""
    m = (1 << (bits - 1)) - 1
    if isinstance(x, np.ndarray):
        return np.clip(x, -m, m)
    return max(-m, min(m, x))


def overflow(x: IntLike, bits: int, mode: str) -> IntLike:
    """``saturate`` or ``wrap`` per ``mode``."""
    return saturate(x, bits) if mode == "saturate" else wrap(x, bits)


def rshift(x: IntLike, s: int, mode: str) -> IntLike:
    """Divide by ``2**s`` with the given rounding (``s >= 0``; ``s == 0`` is the identity).

    * ``floor``: ``x >> s`` (arithmetic shift, toward minus infinity);
    * ``trunc``: toward zero, ``sign(x) * (|x| >> s)``;
    * ``nearest``: half up (toward plus infinity), ``(x + 2**(s-1)) >> s``.
    """
    if s == 0:
        return x
    if mode == "floor":
        return x >> s
    if mode == "trunc":
        if isinstance(x, np.ndarray):
            return np.sign(x) * (np.abs(x) >> s)
        return -((-x) >> s) if x < 0 else x >> s
    if mode == "nearest":
        return (x + (1 << (s - 1))) >> s
    raise ValueError(f"unknown rounding {mode!r}")


def shift_exp(x: IntLike, e: int) -> IntLike:
    """``x * 2**e`` for ``e >= 0``, ``floor(x / 2**-e)`` for ``e < 0`` (Lava's weight exponent)."""
    return x << e if e >= 0 else x >> (-e)


def trunc_mul_shift(x: IntLike, k: int, s: int) -> IntLike:
    """``trunc0(x * k / 2**s)``: product, then shift toward zero (Loihi's decay)."""
    return rshift(x * k, s, "trunc")


def correct(x: IntLike, bits: int) -> IntLike:
    """``corr_bits(x)`` (``docs/fixed-point.md`` section 1, ``corr24`` for ``bits = 24``): one
    correction by ``2**bits`` into ``(-2**(bits-1), 2**(bits-1)]``, not a modulo: ``x - 2**bits``
    if ``x > 2**(bits-1)``, ``x + 2**bits`` if ``x <= -2**(bits-1)``, else ``x``."""
    half = 1 << (bits - 1)
    if isinstance(x, np.ndarray):
        return np.where(x > half, x - 2 * half, np.where(x <= -half, x + 2 * half, x))
    return x - 2 * half if x > half else x + 2 * half if x <= -half else x


def shift_bound(bound: int, s: int) -> int:
    """A bound on ``|rnd(x, s)|`` (any rounding) given ``|x| <= bound``: ``ceil(bound / 2**s)``.

    (``floor(-bound / 2**s)`` reaches ``-ceil(bound / 2**s)``; ``nearest`` never exceeds it.)"""
    return -((-bound) >> s) if s > 0 else bound


def shift_exp_bound(bound: int, e: int) -> int:
    """A bound on ``|shift_exp(x, e)|`` given ``|x| <= bound``."""
    return bound << e if e >= 0 else shift_bound(bound, -e)
