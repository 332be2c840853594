"""Figures for calibration and verification reports (matplotlib, Agg; PNG bytes).

matplotlib is an optional dependency (the ``plots`` extra): ``available()`` says whether figures
can be drawn; callers skip them (and say so) otherwise.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Array = np.ndarray


def available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _fig(w: float = 6.4, h: float = 3.6) -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.figure(figsize=(w, h), dpi=110)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def polynomial_fit(layer: str, v_values: Array, v_weights: Array, theta: Array, theta_q: Array | None,
                   lif: tuple[float, float] | None, v_th: float) -> bytes:
    """The learned leak P(v), its quantized version and the LIF fit, over the calibrated
    histogram of the membrane. ``theta``: ascending coefficients (per-layer mean)."""
    fig = _fig()
    ax = fig.add_subplot(111)
    lo = float(min(v_values.min(), -abs(v_th))) if v_values.size else -abs(v_th)
    hi = float(max(v_values.max(), v_th)) if v_values.size else v_th
    v = np.linspace(lo, hi, 400)
    ax2 = ax.twinx()
    if v_values.size:
        ax2.hist(v_values, bins=80, weights=v_weights, color="0.85", zorder=0)
    ax2.set_ylabel("calibration samples", color="0.5")
    ax2.set_yticks([])
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.plot(v, np.polyval(theta[::-1], v) - v, label="learned P(v) + bias - v", lw=2)
    if theta_q is not None:
        ax.plot(v, np.polyval(theta_q[::-1], v) - v, "--", label="quantized", lw=1.5)
    if lif is not None:
        ax.plot(v, lif[0] + lif[1] * v - v, ":", label=f"LIF fit ({lif[1]:.4f} v + {lif[0]:.3g})", lw=2)
    ax.axvline(v_th, color="k", lw=0.8, ls="--")
    ax.text(v_th, ax.get_ylim()[1], " v_th", va="top", fontsize=8)
    ax.set_xlabel("membrane v (before the step)")
    ax.set_ylabel("change per step without input")
    ax.set_title(f"{layer}: leak polynomial")
    ax.legend(fontsize=8, loc="best")
    return _png(fig)


def range_traces(traces: dict[str, tuple[Sequence[int], Sequence[float]]]) -> bytes:
    """Calibrated range (relative to its final value) against samples seen, one line per tensor."""
    fig = _fig()
    ax = fig.add_subplot(111)
    for name, (samples, values) in traces.items():
        vals = np.asarray(values, dtype=np.float64)
        if vals.size and vals[-1]:
            ax.plot(samples, vals / vals[-1], marker=".", label=name)
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xlabel("calibration samples seen")
    ax.set_ylabel("range / final range")
    ax.set_title("range stability")
    ax.legend(fontsize=7, ncol=2)
    return _png(fig)


def agreement_bars(layers: Sequence[str], values: Mapping[str, Sequence[float]], ylabel: str, title: str) -> bytes:
    """Grouped bars per layer: one bar per series (e.g. fxsim and Lava agreement with float)."""
    fig = _fig()
    ax = fig.add_subplot(111)
    x = np.arange(len(layers))
    width = 0.8 / max(len(values), 1)
    for i, (label, vals) in enumerate(values.items()):
        ax.bar(x + i * width, vals, width, label=label)
    ax.set_xticks(x + width * (len(values) - 1) / 2, layers, rotation=30, ha="right")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _png(fig)


def rasters(panels: dict[str, Array], title: str) -> bytes:
    """Spike rasters of one sample side by side: ``panels`` maps a label to (timesteps, neurons)."""
    n = len(panels)
    fig = _fig(3.2 * n, 3.2)
    for i, (label, s) in enumerate(panels.items()):
        ax = fig.add_subplot(1, n, i + 1)
        flat = np.asarray(s).reshape(s.shape[0], -1)
        t, k = np.nonzero(flat)
        ax.scatter(t, k, s=4, marker="|", color="k")
        ax.set_xlim(-0.5, flat.shape[0] - 0.5)
        ax.set_ylim(-0.5, flat.shape[1] - 0.5)  # every neuron, spiking or not: panels line up
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("timestep")
        if i == 0:
            ax.set_ylabel("neuron")
    fig.suptitle(title, fontsize=10)
    return _png(fig)


def traces(series: dict[str, Array], v_th: float | None, title: str) -> bytes:
    """Membrane traces of one neuron over time, one line per model."""
    fig = _fig()
    ax = fig.add_subplot(111)
    for label, s in series.items():
        ax.plot(np.asarray(s), label=label, lw=1.2, drawstyle="steps-post")
    if v_th is not None:
        ax.axhline(v_th, color="k", lw=0.8, ls="--", label="v_th")
    ax.set_xlabel("timestep")
    ax.set_ylabel("membrane v")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _png(fig)
