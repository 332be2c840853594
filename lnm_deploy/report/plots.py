"""Figures for calibration and verification reports (matplotlib, Agg; PNG bytes).

matplotlib is an optional dependency (the ``plots`` extra): ``available()`` says whether figures
can be drawn; callers skip them (and say so) otherwise.

Conventions, so that figures stay readable on a page 600 px wide: legends sit outside the axes
(above them, between the title and the data), never on the data; figures are saved with a tight
bounding box so nothing outside the axes is cut; axes are zoomed to the data they show.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

Array = np.ndarray

#: Colours of the spike marks: a spike in this run the reference lacks, and one it lacks.
ONLY_HERE, ONLY_THERE = "#d62728", "#1f77b4"


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
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.08)
    plt.close(fig)
    return buf.getvalue()


def _legend_above(ax: Any, ncol: int, title: str, fontsize: float = 8,
                  handles: Sequence[Any] | None = None, labels: Sequence[str] | None = None) -> None:
    """The figure's title and, under it, the legend in rows above the axes: the legend covers no
    data, and being one box with its title the two cannot overlap however many rows it takes."""
    if handles is None or labels is None:
        handles, labels = ax.get_legend_handles_labels()
    if not handles:
        ax.set_title(title, fontsize=10)
        return
    ax.legend(handles, labels, loc="lower left", bbox_to_anchor=(0.0, 1.01), ncol=max(1, ncol),
              fontsize=fontsize, frameon=False, borderaxespad=0.0, handlelength=1.6, columnspacing=1.0,
              title=title, title_fontsize=10, alignment="left")


def mass_window(values: Array, weights: Array, lo_q: float = 0.005, hi_q: float = 0.995) -> tuple[float, float]:
    """The interval holding the central ``hi_q - lo_q`` of a weighted histogram's mass: the weighted
    ``lo_q`` and ``hi_q`` quantiles of ``values`` (bin centres) under ``weights`` (counts).

    Raises ``ValueError`` for an empty histogram or one with no positive weight."""
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    keep = w > 0
    if not keep.any():
        raise ValueError("the histogram is empty")
    v, w = v[keep], w[keep]
    order = np.argsort(v, kind="stable")
    v, w = v[order], w[order]
    cum = np.cumsum(w) / w.sum()
    lo = float(v[min(int(np.searchsorted(cum, lo_q, side="left")), v.size - 1)])
    hi = float(v[min(int(np.searchsorted(cum, hi_q, side="left")), v.size - 1)])
    return lo, hi


def polynomial_fit(layer: str, v_values: Array, v_weights: Array, theta: Array, theta_q: Array | None,
                   lif: tuple[float, float] | None, v_th: float, *,
                   deployed_label: str = "deployed polynomial (quantized)",
                   mass_label: str = "calibration membrane histogram") -> bytes:
    """The learned leak P(v), its deployed version and the LIF fit, over the membrane histogram.

    ``theta``: ascending coefficients (per-layer mean); ``theta_q``: the deployed ones (None: not
    drawn); ``lif``: ``(a, b)`` of the LIF fit ``a + b v`` (None: not drawn); ``v_th``: the
    threshold (real units). The v axis is zoomed to where the histogram's mass lies (its 1 % to
    99.5 % quantiles, widened to show 0 and the threshold); what lies outside is said in the plot."""
    fig = _fig()
    ax = fig.add_subplot(111)
    vv = np.asarray(v_values, dtype=np.float64).reshape(-1)
    ww = np.asarray(v_weights, dtype=np.float64).reshape(-1)
    has_mass = bool(vv.size) and bool(np.any(ww > 0))
    if has_mass:
        lo, hi = mass_window(vv, ww, 0.01, 0.995)
        lo, hi = min(lo, v_th, 0.0), max(hi, v_th, 0.0)
    else:
        lo, hi = -abs(v_th), abs(v_th)
    pad = 0.06 * (hi - lo if hi > lo else 1.0)
    lo, hi = lo - pad, hi + pad
    v = np.linspace(lo, hi, 400)
    ax2 = ax.twinx()
    note = ""
    if has_mass:
        inside = (vv >= lo) & (vv <= hi)
        ax2.hist(vv[inside], bins=min(80, max(10, int(inside.sum()))), weights=ww[inside], color="0.85",
                 zorder=0, label=mass_label)
        out_mass = float(ww[~inside].sum() / ww.sum())
        if out_mass > 0:
            note = (f"{out_mass:.2%} of the mass outside this window (data spans "
                    f"{float(vv[ww > 0].min()):.3g} .. {float(vv[ww > 0].max()):.3g})")
    ax2.set_ylabel("membrane samples", color="0.5")
    ax2.set_yticks([])
    ax.set_zorder(ax2.get_zorder() + 1)
    ax.patch.set_visible(False)
    ax.plot(v, np.polyval(np.asarray(theta)[::-1], v) - v, label="learned P(v) + bias - v (LNM)", lw=2)
    if theta_q is not None:
        ax.plot(v, np.polyval(np.asarray(theta_q)[::-1], v) - v, "--", label=deployed_label, lw=1.5)
    if lif is not None:
        ax.plot(v, lif[0] + lif[1] * v - v, ":", color="#d62728", lw=2,
                label=f"LIF fit, deployed ({lif[1]:.4f} v + {lif[0]:.3g} - v)")
    ax.axvline(v_th, color="k", lw=0.8, ls="--", label="v_th")
    ax.set_xlim(lo, hi)
    ax.set_xlabel("membrane v (before the step)" + (f"\n{note}" if note else ""))
    ax.set_ylabel("change per step without input")
    # The histogram's handle joins the curves' legend (it lives on the twin axes).
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    _legend_above(ax, 2, f"{layer}: leak polynomial", 7.5, h1 + h2, l1 + l2)
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
    _legend_above(ax, 3, "range stability", fontsize=7)
    return _png(fig)


def agreement_limits(values: Sequence[float], top: float = 1.0) -> tuple[float, float]:
    """The y-range of agreement bars zoomed to the data: from a little below the smallest value
    (never below 0) to a little above ``top`` (room for the value labels)."""
    vmin = min((float(v) for v in values), default=top)
    span = max(top - vmin, 0.002)
    return max(0.0, vmin - 0.5 * span), top + 0.45 * span


def agreement_bars(layers: Sequence[str], values: Mapping[str, Sequence[float]], ylabel: str, title: str) -> bytes:
    """Grouped bars per layer, one bar per series, each with its value written on it; the y-axis
    is zoomed to the data (it says so when it does not start at 0)."""
    n_series = max(len(values), 1)
    fig = _fig(max(6.4, 1.6 + 0.42 * len(layers) * n_series), 3.8)
    ax = fig.add_subplot(111)
    x = np.arange(len(layers))
    width = 0.8 / n_series
    lo, hi = agreement_limits([v for vals in values.values() for v in vals])
    rotate = len(layers) * n_series > 8
    for i, (label, vals) in enumerate(values.items()):
        bars = ax.bar(x + i * width, vals, width, label=label)
        ax.bar_label(bars, labels=[f"{float(v):.4f}" for v in vals], fontsize=8, padding=2,
                     rotation=90 if rotate else 0)
    ax.set_ylim(lo, hi)
    ax.set_yticks([t for t in ax.get_yticks() if lo <= t <= 1.0])
    ax.set_xticks(x + width * (n_series - 1) / 2, layers, rotation=30 if len(layers) > 3 else 0,
                  ha="right" if len(layers) > 3 else "center")
    ax.set_ylabel(ylabel + (f"\n(axis from {lo:.4g}, not 0)" if lo > 0 else ""))
    _legend_above(ax, n_series, title)
    return _png(fig)


@dataclass(frozen=True)
class RasterMarks:
    """The spikes of one raster against a reference run, as ``(timestep, neuron)`` index arrays:
    ``same`` in both, ``only_here`` in this run alone, ``only_there`` in the reference alone."""

    same: tuple[Array, Array]
    only_here: tuple[Array, Array]
    only_there: tuple[Array, Array]

    @property
    def differing(self) -> int:
        return int(self.only_here[0].size + self.only_there[0].size)


def raster_marks(spikes: Array, reference: Array | None) -> RasterMarks:
    """Split the spikes of one sample, ``(timesteps, ...)``, against ``reference`` of the same shape
    (None: every spike counts as ``same``). Raises ``ValueError`` when the shapes differ."""
    a = np.asarray(spikes).reshape(np.shape(spikes)[0], -1) != 0
    if reference is None:
        b = a
    else:
        b = np.asarray(reference).reshape(np.shape(reference)[0], -1) != 0
        if a.shape != b.shape:
            raise ValueError(f"raster shapes differ: {a.shape} against {b.shape}")
    def idx(m: Array) -> tuple[Array, Array]:
        t, k = np.nonzero(m)
        return t, k

    return RasterMarks(idx(a & b), idx(a & ~b), idx(~a & b))


def raster(spikes: Array, label: str, reference: Array | None = None, reference_label: str = "") -> bytes:
    """The spike raster of one sample, ``(timesteps, ...)`` (neurons flattened), with the spikes
    that differ from ``reference`` marked: a red cross where only this run spikes, a blue circle
    where only the reference does. The title counts them."""
    marks = raster_marks(spikes, reference)
    flat = np.asarray(spikes).reshape(np.shape(spikes)[0], -1)
    fig = _fig(3.5, 3.1)
    ax = fig.add_subplot(111)
    ax.scatter(marks.same[0], marks.same[1], s=14, marker="|", color="k", linewidths=1.0,
               label="in both" if reference is not None else "spike")
    if reference is not None:
        ax.scatter(marks.only_here[0], marks.only_here[1], s=30, marker="x", color=ONLY_HERE, linewidths=1.4,
                   label=f"only {label} ({marks.only_here[0].size})", zorder=3)
        ax.scatter(marks.only_there[0], marks.only_there[1], s=34, marker="o", facecolors="none",
                   edgecolors=ONLY_THERE, linewidths=1.2, label=f"only {reference_label} "
                   f"({marks.only_there[0].size})", zorder=3)
    ax.set_xlim(-0.5, flat.shape[0] - 0.5)
    ax.set_ylim(-0.5, flat.shape[1] - 0.5)  # every neuron, spiking or not: panels line up
    ax.set_xlabel("timestep")
    ax.set_ylabel("neuron")
    if reference is None:
        sub = _count(int(flat.astype(bool).sum()), "spike")
    elif marks.differing:
        sub = f"{_count(marks.differing, 'spike')} differ{'s' if marks.differing == 1 else ''} from {reference_label}"
    else:
        sub = f"identical to {reference_label}"
    _legend_above(ax, 3 if reference is not None else 1, f"{label}: {sub}", fontsize=7)
    return _png(fig)


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def rasters(panels: dict[str, Array], title: str, references: Mapping[str, str] | None = None) -> bytes:
    """Spike rasters of one sample side by side: ``panels`` maps a label to (timesteps, neurons);
    ``references`` maps a label to the label of the panel it is compared with (differing spikes
    marked as in ``raster``)."""
    references = references or {}
    n = len(panels)
    fig = _fig(3.2 * n, 3.4)
    for i, (label, s) in enumerate(panels.items()):
        ax = fig.add_subplot(1, n, i + 1)
        ref = references.get(label)
        marks = raster_marks(s, panels[ref] if ref in panels else None)
        flat = np.asarray(s).reshape(s.shape[0], -1)
        ax.scatter(marks.same[0], marks.same[1], s=4, marker="|", color="k")
        ax.scatter(marks.only_here[0], marks.only_here[1], s=22, marker="x", color=ONLY_HERE, zorder=3)
        ax.scatter(marks.only_there[0], marks.only_there[1], s=26, marker="o", facecolors="none",
                   edgecolors=ONLY_THERE, zorder=3)
        ax.set_xlim(-0.5, flat.shape[0] - 0.5)
        ax.set_ylim(-0.5, flat.shape[1] - 0.5)
        ax.set_title(label + (f" ({marks.differing} differ from {ref})" if ref in panels else ""), fontsize=8)
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
    _legend_above(ax, len(series) + (v_th is not None), title)
    return _png(fig)
