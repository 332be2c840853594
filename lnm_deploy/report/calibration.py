"""The calibration report: ``report.json`` plus PNG figures in one directory."""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lnm_deploy.errors import LNMDeployWarning
from lnm_deploy.fileio import dumps_json
from lnm_deploy.ir import Graph, Neuron
from lnm_deploy.outputs import Outputs
from lnm_deploy.report import plots

if TYPE_CHECKING:
    from lnm_deploy.calibrate.passes import MappedLayer


#: The files of a calibration report whatever the graph (``range_stability.png`` where ranges were
#: traced); beside them one ``poly_<layer>.png`` per neuron layer (``figure_names``).
REPORT_FILES = ("report.json", "range_stability.png")


def figure_names(graph: Graph) -> list[str]:
    """The per-layer figures a report of ``graph`` may hold: ``poly_<name>.png`` per Neuron."""
    return [f"poly_{name}.png" for name, node in graph.nodes.items() if isinstance(node, Neuron)]


def declare_report(outs: Outputs, directory: str | os.PathLike[str], graph: Graph | None = None) -> None:
    """Declare in ``outs`` the files ``write_calibration_report`` writes in ``directory`` (already
    declared with ``outs.directory``), each checked now, before any work: one that is an input of
    the command, a directory in its way or, without ``force``, an existing file is refused
    (``UserInputError``). Without ``graph``: ``REPORT_FILES``; with it: ``figure_names(graph)``
    (call once each: a file declared twice is refused)."""
    for name in (REPORT_FILES if graph is None else figure_names(graph)):
        outs.file(Path(directory) / name, option="--report-dir")


def learned_theta(graph: Graph, name: str, layer: MappedLayer | None = None) -> tuple[np.ndarray, float]:
    """Layer-mean leak coefficients of the Neuron ``name`` with the synapses' mean bias added to the
    constant term (as the quantizer folds it), and that bias: comparable with a deployed polynomial.
    ``layer``: the layer of the graph's mapped graph (``CalibrationResult.mapped``); mapped here
    when None."""
    from lnm_deploy.calibrate.passes import fold_layer

    node = graph.nodes[name]
    assert isinstance(node, Neuron)  # the leak polynomial is the Neuron's own parameter
    theta = node.poly.reshape(node.poly.shape[0], -1).mean(axis=1).copy()
    ml = fold_layer(graph, name) if layer is None else layer
    steady = 1.0 / (1.0 - node.syn_decay) if node.syn_decay is not None else 1.0
    mean_bias = float(np.mean(ml.scaled_bias * steady))  # scaled_bias: gain x bias, real current per step
    theta[0] += mean_bias
    return theta, mean_bias


def calibration_figures(result: Any, graph: Graph) -> dict[str, bytes]:
    """PNG figures by file name: one polynomial/LIF-fit plot per neuron layer, range stability."""
    from lnm_deploy.calibrate.passes import fold
    from lnm_deploy.calibrate.pipeline import neuron_ranges

    figs: dict[str, bytes] = {}
    ranges = neuron_ranges(result.stats)
    mapped = result.mapped if getattr(result, "mapped", None) is not None else fold(graph)
    for name, rec in result.quantized.layers.items():
        node = graph.nodes[name]
        qnode = result.quantized.graph.nodes[name]
        if not isinstance(node, Neuron) or not isinstance(qnode, Neuron):
            continue  # the figure compares leak polynomials: the Neuron's lowerings only
        # The quantized constant term includes the synapses' biases: add them to the learned one.
        theta, mean_bias = learned_theta(graph, name, mapped.layers[name])
        theta_q = qnode.poly.reshape(qnode.poly.shape[0], -1).mean(axis=1)
        lif = (rec.fit["a"] + mean_bias, rec.fit["b"]) if rec.fit else None
        r = ranges[name]
        v_th = float(np.mean(node.v_th)) if node.v_th is not None else 1.0
        figs[f"poly_{name}.png"] = plots.polynomial_fit(name, r.v_values, r.v_weights, theta,
                                                        None if lif else theta_q, lif, v_th)
    traces = {}
    for t in result.stats.tensors():
        if t.stats.trace is not None and t.stats.trace.samples:
            traces[f"{t.layer}.{t.tensor}"] = (t.stats.trace.samples, t.stats.trace.absmax)
    if traces:
        figs["range_stability.png"] = plots.range_traces(traces)
    return figs


def write_calibration_report(result: Any, graph: Graph, directory: str | os.PathLike[str], *,
                             force: bool = False, outputs: Outputs | None = None) -> Path:
    """Write ``report.json`` and the figures into ``directory``; returns it.

    Alone (``outputs`` None): the directory is checked first (an existing one is refused unless
    ``force``; with ``force`` only the report's own files in it are replaced, nothing else in it
    is touched) and the files are committed together. With ``outputs`` the files are staged in
    that command's ``Outputs``, where ``directory`` must have been declared, and committed with
    the command's other outputs.
    """
    target = Path(directory)
    own = outputs is None
    outs = Outputs(force=force) if outputs is None else outputs
    if own:
        outs.directory(target, option="the report directory")
    with outs if own else contextlib.nullcontext(outs):
        report = dict(result.report)
        figures: list[str] = []
        if plots.available():
            for fname, png in calibration_figures(result, graph).items():
                outs.write_bytes(target / fname, png)
                figures.append(fname)
        else:
            warnings.warn("matplotlib is not installed: the report has no figures (pip install "
                          "'lnm-deploy[plots]')", LNMDeployWarning, stacklevel=2)
        report["figures"] = figures
        report["stats"] = result.stats.to_dict(histograms=False)
        # Strict JSON: a non-finite float (an infinite SQNR) is null, never Infinity (docs/report.md)
        outs.write_text(target / "report.json", dumps_json(report, indent=2, sort_keys=True))
    return target
