"""The float arithmetic of the IR's node kinds, and the step objects the float executor runs.

Each node class (``lnm_deploy.ir.nodes``) owns its float semantics through ``Node.float_step``,
which returns one of the steps below; this module holds the shared numerics (Horner's rule, 2-d
convolution and pooling as ``torch.nn.functional`` computes them, flattening) so that every caller
(the float executor, calibration statistics, the quantizer, ``verify``'s divergence replay) runs the
same arithmetic. Arrays are batched: ``(batch, *shape)``.

This module imports numpy and ``lnm_deploy.errors`` only: the IR stays at the bottom of the import
graph.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import DTypeLike

from lnm_deploy.errors import NumericError

Array = np.ndarray


def horner(poly: Array, v: Array) -> Array:
    """``P(v) = (...(poly[d] v + poly[d-1]) v + ...) v + poly[0]``; poly (d+1, *shape), v (..., *shape).

    The evaluation order is part of the IR's contract (``docs/ir.md``): it decides the last bit."""
    p = np.broadcast_to(poly[-1], v.shape).astype(v.dtype, copy=True)
    for k in range(poly.shape[0] - 2, -1, -1):
        p = p * v + poly[k]
    return p


def conv2d(x: Array, w: Array, bias: Array | None, stride: tuple[int, int], padding: tuple[int, int],
           dilation: tuple[int, int], groups: int) -> Array:
    """``torch.nn.functional.conv2d`` semantics in numpy; x (B, C_in, H, W) -> (B, C_out, H_out, W_out)."""
    if any(padding):
        x = np.pad(x, ((0, 0), (0, 0), (padding[0], padding[0]), (padding[1], padding[1])))
    cout, cin_g, kh, kw = w.shape
    win = sliding_window_view(x, (dilation[0] * (kh - 1) + 1, dilation[1] * (kw - 1) + 1), axis=(2, 3))  # type: ignore[call-overload]
    win = win[:, :, :: stride[0], :: stride[1], :: dilation[0], :: dilation[1]]  # B,C,Ho,Wo,kh,kw
    outs = []
    cout_g = cout // groups
    for g in range(groups):
        xs = win[:, g * cin_g : (g + 1) * cin_g]
        ws = w[g * cout_g : (g + 1) * cout_g]
        outs.append(np.einsum("bchwij,ocij->bohw", xs, ws, optimize=True))
    y = outs[0] if groups == 1 else np.concatenate(outs, axis=1)
    if bias is not None:
        y = y + bias[None, :, None, None]
    return y


def pool2d(x: Array, kernel_size: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
           average: bool) -> Array:
    """Sum (or mean, zero padding counted) over windows; x (B, C, H, W) -> (B, C, H_out, W_out)."""
    ph, pw = padding
    if ph or pw:
        x = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    win = sliding_window_view(x, kernel_size, axis=(2, 3))[:, :, :: stride[0], :: stride[1]]  # type: ignore[call-overload]
    y = win.sum(axis=(-2, -1))
    if average:
        y = y / float(kernel_size[0] * kernel_size[1])
    return y


def flatten(x: Array, start_dim: int, end_dim: int) -> Array:
    """Merge dims ``start_dim..end_dim`` (inclusive, counted without the batch dim) of x (B, *shape)."""
    n = x.ndim - 1
    s, e = start_dim % n, end_dim % n
    return x.reshape(*x.shape[: 1 + s], -1, *x.shape[2 + e :])


class FloatStep:
    """One node's float step for one run: ``step(x) -> y`` with x, y batched ``(batch, *shape)``.

    ``state_names`` are the state variables a stateful step exposes (``state(name)`` is the
    current value, ``(batch, *shape)``); a stateless step has none. ``check(node, t)`` raises
    ``NumericError`` when the state has diverged (the executor calls it after each step of a
    stateful node)."""

    state_names: tuple[str, ...] = ()

    def __call__(self, x: Array) -> Array:
        raise NotImplementedError

    def state(self, name: str) -> Array:
        raise KeyError(f"{type(self).__name__} has no state {name!r} (it has {self.state_names})")

    def check(self, node: str, t: int) -> None:
        """Raise ``NumericError`` if the state has diverged; stateless steps never do."""


class StatelessStep(FloatStep):
    """A step that is a pure function of its input."""

    def __init__(self, fn: Callable[[Array], Array]) -> None:
        self.fn = fn

    def __call__(self, x: Array) -> Array:
        return self.fn(x)


class NeuronStep(FloatStep):
    """The LNM neuron's step (``docs/ir.md``), batched: states ``v`` (membrane after reset),
    ``v_pre`` (before the spike test) and, with a synapse, ``c`` (synaptic current), each
    ``(batch, *shape)`` and starting at 0.

    Parameters are full-shape arrays (``poly`` (d+1, *shape)), cast to ``dtype``; ``v_th`` None
    makes a non-spiking integrator (its output is ``v_pre``), ``syn_decay`` None no synapse.
    ``threshold`` ``">"`` or ``">="``; ``max_spikes`` 1 (binary), > 1 or None (graded: the output
    is the spike count ``clip(floor(v_pre / v_th), 1, max_spikes)`` where the test passes);
    ``v_floor`` (full-shape) or None: the membrane after reset is clipped from below."""

    def __init__(self, shape: tuple[int, ...], poly: Array, v_th: Array | None, v_reset: Array, reset: str,
                 in_gain: Array, syn_decay: Array | None, syn_gain: Array | None, batch: int,
                 dtype: DTypeLike, *, threshold: str = ">", max_spikes: int | None = 1,
                 v_floor: Array | None = None) -> None:
        def cast(a: Array | None) -> Array | None:
            return None if a is None else a.astype(dtype)

        self.v = np.zeros((batch, *shape), dtype=dtype)
        self.c = np.zeros((batch, *shape), dtype=dtype) if syn_decay is not None else None
        self.v_pre = self.v
        self.poly = poly.astype(dtype)
        self.v_th, self.v_reset = cast(v_th), v_reset.astype(dtype)
        self.in_gain = in_gain.astype(dtype)
        self.syn_decay, self.syn_gain = cast(syn_decay), cast(syn_gain)
        self.subtract = reset == "subtract"
        self.ge = threshold == ">="
        self.max_spikes = max_spikes
        self.v_floor = cast(v_floor)
        self.state_names = ("v", "v_pre", "c") if syn_decay is not None else ("v", "v_pre")

    def __call__(self, x: Array) -> Array:
        if self.c is not None:
            self.c = self.syn_decay * self.c + self.syn_gain * x
            cur = self.c
        else:
            cur = x
        v_pre = horner(self.poly, self.v) + self.in_gain * cur
        self.v_pre = v_pre
        if self.v_th is None:
            self.v = v_pre
            return v_pre
        fired = v_pre >= self.v_th if self.ge else v_pre > self.v_th
        if self.max_spikes == 1:
            s = fired.astype(v_pre.dtype)
        else:  # graded: floor(v'/v_th) spikes (v_th > 0, checked by Neuron.validate), at least 1 where fired
            hi = np.inf if self.max_spikes is None else self.max_spikes
            s = np.where(fired, np.clip(np.floor(v_pre / self.v_th), 1, hi), 0).astype(v_pre.dtype)
        if self.subtract:
            self.v = v_pre - s * self.v_th if self.max_spikes != 1 else np.where(fired, v_pre - self.v_th, v_pre)
        else:
            self.v = np.where(fired, self.v_reset, v_pre)
        if self.v_floor is not None:
            self.v = np.maximum(self.v, self.v_floor)
        return s

    def state(self, name: str) -> Array:
        if name == "v":
            return self.v
        if name == "v_pre":
            return self.v_pre
        if name == "c" and self.c is not None:
            return self.c
        return super().state(name)

    def check(self, node: str, t: int) -> None:
        if not np.all(np.isfinite(self.v)):
            raise NumericError(
                f"membrane potential diverged (inf/NaN) at step {t}: the dynamics are unstable "
                "over the range this input reaches",
                node=node,
            )
