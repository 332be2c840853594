"""The verification page: one self-contained HTML file (inline CSS and PNG images; works offline)."""

from __future__ import annotations

import base64
import html
from typing import Any

import numpy as np

from lnm_deploy.ir import Graph, Neuron
from lnm_deploy.report import plots
from lnm_deploy.report.calibration import learned_theta

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
h1{font-size:1.5rem} h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #ddd;padding:.3rem .6rem;text-align:right}
th{background:#f5f5f5} td:first-child,th:first-child{text-align:left}
.pass{background:#1a7f37;color:#fff;padding:.2rem .6rem;border-radius:4px}
.fail{background:#cf222e;color:#fff;padding:.2rem .6rem;border-radius:4px}
.muted{color:#666} img{max-width:100%} .grid{display:flex;flex-wrap:wrap;gap:1rem}
code{background:#f5f5f5;padding:0 .2rem}
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def _float_model_text(f: dict[str, Any]) -> str:
    how = ("read as calibrated" if f.get("as_calibrated") else
           "opt-out: the artifact's dequantized graph" if f.get("opt_out") else "NOT read as calibrated")
    resolved = (f.get("read_options") or {}).get("resolved") or {}
    opts = ", ".join(f"{k} {v}" for k, v in resolved.items() if v is not None)
    return how + (f"; {opts}" if opts else "")


def render_verify_page(result: Any, graph: Graph, artifact: Any) -> str:
    """The page for a ``VerifyResult`` (its ``runs`` hold the spike trains to plot)."""
    d = result.to_dict()
    badge = '<span class="pass">PASSED</span>' if result.passed else '<span class="fail">FAILED</span>'
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>lnm-deploy verify: {_fmt(result.target)}"
             f"</title><style>{CSS}</style></head><body>",
             f"<h1>Verification on <code>{_fmt(result.target)}</code> {badge}</h1>",
             f"<p class='muted'>float and fixed point on {result.samples} samples x {result.timesteps} "
             f"timesteps; " + "; ".join(f"{_fmt(n)} against fxsim on {b.samples} samples"
                                         for n, b in result.backends.items())
             + f"</p><p class='muted'>float model: {_fmt(result.float_source)} ("
             + _fmt(_float_model_text(d["float"])) + ")</p>"]
    if result.reasons:
        parts.append("<ul>" + "".join(f"<li>{_fmt(r)}</li>" for r in result.reasons) + "</ul>")
    parts.append("<h2>Accuracy</h2><table><tr><th>model</th><th>accuracy</th></tr>"
                 f"<tr><td>float</td><td>{_fmt(result.float_accuracy)}</td></tr>"
                 f"<tr><td>fixed point (fxsim)</td><td>{_fmt(result.fixed_accuracy)}</td></tr></table>")
    parts.append("<h2>Backends against fxsim (bit for bit)</h2><table><tr><th>backend</th><th>bit exact</th>"
                 "<th>samples</th><th>mismatched spikes</th><th>compared spikes</th><th>seconds</th>"
                 "<th>first mismatch</th></tr>")
    for name, b in d["backends"].items():
        fm = b["first_mismatch"]["text"] if b["first_mismatch"] else "-"
        parts.append(f"<tr><td>{_fmt(name)}</td><td>{'yes' if b['bit_exact'] else 'NO'}</td>"
                     f"<td>{b['samples']}</td><td>{b['mismatched_spikes']}</td><td>{b['compared_spikes']}</td>"
                     f"<td>{b['seconds']:.2f}</td><td>{_fmt(fm)}</td></tr>")
    parts.append("</table>")

    parts.append("<h2>Float against fixed point, per layer</h2><table><tr><th>layer</th><th>spike agreement"
                 "</th><th>rate float</th><th>rate fixed</th></tr>")
    for layer in d["layers"]:
        parts.append(f"<tr><td>{_fmt(layer['name'])}</td><td>{layer['spike_agreement']:.4f}</td>"
                     f"<td>{layer['rate_float']:.4f}</td><td>{layer['rate_fixed']:.4f}</td></tr>")
    parts.append("</table>")
    div = result.first_divergence
    if div:
        parts.append(f"<p>First divergence: layer <code>{_fmt(div['layer'])}</code>, sample {div['sample']}, "
                     f"timestep {div['timestep']}, neuron {div['neuron']}. Cause: {_fmt(div.get('cause'))}.</p>")
    else:
        parts.append("<p>Float and fixed point agree on every spike.</p>")

    if plots.available():
        parts.append(_figures(result, graph, artifact))
    else:
        parts.append("<p class='muted'>matplotlib is not installed: no figures.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _figures(result: Any, graph: Graph, artifact: Any) -> str:
    runs = result.runs
    names = [layer.name for layer in result.layers]
    out = ["<h2>Agreement</h2>", _img(plots.agreement_bars(
        names, {"float vs fxsim": [layer.spike_agreement for layer in result.layers]}
        | {f"{b} vs fxsim": [1.0 - float(np.mean(runs[b].spikes[n] != runs["fxsim"].spikes[n][: len(runs[b].spikes[n])]))
                             for n in names]
           for b in result.backends if b in runs},
        "fraction of equal spikes", "per-layer spike agreement"), "agreement")]
    div = result.first_divergence
    sample = int(div["sample"]) if div else 0
    out.append(f"<h2>Spike rasters (sample {sample})</h2><div class='grid'>")
    for n in names:
        panels = {label: r.spikes[n][sample] for label, r in runs.items()
                  if n in r.spikes and sample < len(r.spikes[n])}
        out.append(_img(plots.rasters(panels, f"layer {n}"), f"raster {n}"))
    out.append("</div>")
    # Membrane traces: the first diverging neuron (else neuron 0 of the first layer).
    layer = div["layer"] if div else names[0]
    flat = int(div["neuron"]) if div else 0
    node = graph.nodes.get(layer)
    q = artifact_q(artifact, layer)
    series = {}
    if layer in runs["float"].states:
        series["float"] = runs["float"].states[layer]["v"][sample].reshape(result.timesteps, -1)[:, flat]
    if q is not None and layer in runs["fxsim"].states:
        series["fxsim (dequantized)"] = runs["fxsim"].states[layer]["v"][sample].reshape(
            result.timesteps, -1)[:, flat] * q
    if series:
        v_th = float(node.v_th.reshape(-1)[flat]) if isinstance(node, Neuron) and node.v_th is not None else None
        out.append(f"<h2>Membrane of {html.escape(layer)}[{flat}] (sample {sample})</h2>")
        out.append(_img(plots.traces(series, v_th, f"{layer}[{flat}] membrane after reset"), "membrane"))
    # The learned polynomial against the deployed one, over this data's membrane distribution.
    out.append("<h2>Leak polynomials: learned and deployed</h2><div class='grid'>")
    for n in names:
        fnode, qnode = graph.nodes.get(n), artifact.graph.nodes.get(n)
        if not isinstance(fnode, Neuron) or not isinstance(qnode, Neuron) or n not in runs["float"].states:
            continue
        v = runs["float"].states[n]["v"].reshape(-1)
        counts, edges = np.histogram(v, bins=80)
        theta, _ = learned_theta(graph, n)
        theta_q = qnode.poly.reshape(qnode.poly.shape[0], -1).mean(axis=1)
        v_th = float(np.mean(fnode.v_th)) if fnode.v_th is not None else 1.0
        out.append(_img(plots.polynomial_fit(n, (edges[:-1] + edges[1:]) / 2, counts.astype(float), theta,
                                             theta_q, None, v_th), f"polynomial {n}"))
    out.append("</div><p class='muted'>Biases of the synapses are folded into the neuron's constant term "
               "on the chip; both curves include them.</p>")
    return "\n".join(out)


def artifact_q(artifact: Any, layer: str) -> float | None:
    """Real membrane per integer LSB of ``layer`` from the artifact's calibration record."""
    rec = (artifact.record.get("calibration") or {}).get("layers", {}).get(layer)
    return float(rec["q"]) if rec and "q" in rec else None
