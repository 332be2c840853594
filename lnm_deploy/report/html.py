"""The verification page: one self-contained HTML file (inline CSS and PNG images; works offline)."""

from __future__ import annotations

import base64
import html
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from lnm_deploy._version import __version__
from lnm_deploy.ir import Graph, Neuron
from lnm_deploy.report import plots
from lnm_deploy.report.calibration import learned_theta

CSS = """
*{box-sizing:border-box}
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0 auto;padding:1.5rem 2rem;
max-width:1180px;color:#222;line-height:1.4}
h1{font-size:1.5rem;margin:.2rem 0 .8rem} h2{font-size:1.15rem;margin-top:2rem;border-bottom:1px solid #ddd}
h3{font-size:1rem;margin:1.2rem 0 .4rem}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.5rem 0} td,th{border:1px solid #ddd;padding:.3rem .6rem;text-align:right}
th{background:#f5f5f5} td:first-child,th:first-child{text-align:left}
table.meta th{text-align:left;white-space:nowrap;vertical-align:top} table.meta td{text-align:left;overflow-wrap:anywhere}
.pass{background:#1a7f37;color:#fff;padding:.1rem .6rem;border-radius:4px;white-space:nowrap}
.fail{background:#cf222e;color:#fff;padding:.1rem .6rem;border-radius:4px;white-space:nowrap}
.muted{color:#666} img{max-width:100%;height:auto;display:block}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:1rem;align-items:start}
.grid.wide{grid-template-columns:repeat(auto-fill,minmax(460px,1fr))}
@media (max-width:520px){.grid.wide{grid-template-columns:1fr}}
code{background:#f5f5f5;padding:0 .2rem;overflow-wrap:anywhere}
@media (max-width:700px){body{padding:.75rem}h1{font-size:1.25rem}td,th{padding:.25rem .4rem}}
"""


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}"
    return html.escape(str(v))


def _table(head: str, rows: list[str], cls: str = "") -> str:
    """A table in a horizontally scrolling box: a wide table never widens the page."""
    c = f' class="{cls}"' if cls else ""
    return f"<div class='scroll'><table{c}>{head}{''.join(rows)}</table></div>"


def _float_model_text(f: dict[str, Any]) -> str:
    how = ("read as calibrated" if f.get("as_calibrated") else
           "opt-out: the artifact's dequantized graph" if f.get("opt_out") else "NOT read as calibrated")
    resolved = (f.get("read_options") or {}).get("resolved") or {}
    opts = ", ".join(f"{k} {v}" for k, v in resolved.items() if v is not None)
    return how + (f"; {opts}" if opts else "")


def header_fields(result: Any, artifact: Any, artifact_path: str | None = None,
                  generated: datetime | None = None) -> dict[str, str]:
    """The facts the page's header shows, as plain text by label: artifact, target, tool version,
    date (UTC, ``generated`` or now), float model, the pass thresholds (which applies: with labels
    the largest accepted accuracy drop, without them the smallest accepted agreement; of the LZC
    readout with ``--readout lzc``) and how many samples each comparison covered (float against
    fxsim, each backend against fxsim)."""
    d = result.to_dict()
    when = (generated or datetime.now(timezone.utc)).astimezone(timezone.utc)
    prov = (artifact.record.get("provenance") or {}) if artifact is not None else {}
    made_with = prov.get("lnm_deploy")
    tool = f"lnm-deploy {__version__}" + (f" (artifact calibrated with lnm-deploy {made_with})"
                                          if made_with and made_with != __version__ else "")
    labels = bool(d.get("criteria", {}).get("labels", result.labels))
    lzc = getattr(result, "readout", "count") == "lzc"
    drop = (f"max accuracy drop {result.max_accuracy_drop:.4g} (float - fixed accuracy"
            + (" of the LZC readout)" if lzc else ")"))
    agree = (f"min agreement {result.min_agreement:.4g} (fixed predicts the float class"
             + (" of the LZC readout)" if lzc else ")"))
    thresholds = (f"{drop}, applied (labels given); {agree}, not applied" if labels else
                  f"{agree}, applied (no labels); {drop}, not applied")
    compared = [f"float against fxsim on {result.samples} samples x {result.timesteps} timesteps"]
    compared += [f"{name} against fxsim on {b.samples} samples (of {result.samples}, bit for bit)"
                 for name, b in result.backends.items()]
    return {
        "artifact": artifact_path or "(not given)",
        "target": str(result.target),
        "tool": tool,
        "date": when.strftime("%Y-%m-%d %H:%M UTC"),
        "float model": f"{result.float_source} ({_float_model_text(d['float'])})",
        "pass thresholds": thresholds + "; every backend bit-exact with fxsim",
        "samples compared": "; ".join(compared),
    }


def render_verify_page(result: Any, graph: Graph, artifact: Any, *, artifact_path: str | None = None,
                       generated: datetime | None = None) -> str:
    """The page for a ``VerifyResult`` (its ``runs`` hold the spike trains to plot).

    ``graph``: the float graph compared with; ``artifact``: the calibrated ``Artifact``;
    ``artifact_path``: where it was read from (shown in the header); ``generated``: the date the
    header shows (default: now)."""
    d = result.to_dict()
    badge = '<span class="pass">PASSED</span>' if result.passed else '<span class="fail">FAILED</span>'
    name = Path(artifact_path).name if artifact_path else "artifact"
    fields = header_fields(result, artifact, artifact_path, generated)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>lnm-deploy verify: {_fmt(name)} on {_fmt(result.target)}</title><style>{CSS}</style>"
             f"</head><body><header>",
             f"<h1>Verification of <code>{_fmt(name)}</code> on <code>{_fmt(result.target)}</code> {badge}</h1>",
             _table("", [f"<tr><th>{_fmt(k)}</th><td>{_fmt(v)}</td></tr>" for k, v in fields.items()], "meta"),
             "</header>"]
    if result.reasons:
        parts.append("<ul>" + "".join(f"<li>{_fmt(r)}</li>" for r in result.reasons) + "</ul>")
    parts.append("<h2>Accuracy</h2>")
    parts.append(_table("<tr><th>model</th><th>accuracy</th></tr>",
                        [f"<tr><td>float</td><td>{_fmt(result.float_accuracy)}</td></tr>",
                         f"<tr><td>fixed point (fxsim)</td><td>{_fmt(result.fixed_accuracy)}</td></tr>",
                         f"<tr><td>same class as float</td><td>{_fmt(result.prediction_agreement)}</td></tr>"]))
    parts.append(_lzc_section(result))
    parts.append("<h2>Backends against fxsim (bit for bit)</h2>")
    rows, firsts = [], []
    for bname, b in d["backends"].items():
        rows.append(f"<tr><td>{_fmt(bname)}</td><td>{'yes' if b['bit_exact'] else 'NO'}</td>"
                    f"<td>{b['samples']} of {result.samples}</td><td>{b['mismatched_spikes']}</td>"
                    f"<td>{b['compared_spikes']}</td><td>{b['seconds']:.2f}</td></tr>")
        if b["first_mismatch"]:
            firsts.append(f"<li><code>{_fmt(bname)}</code>: first mismatch {_fmt(b['first_mismatch']['text'])}</li>")
    parts.append(_table("<tr><th>backend</th><th>bit exact</th><th>samples</th><th>spikes differing</th>"
                        "<th>spikes compared</th><th>seconds</th></tr>", rows))
    if firsts:
        parts.append("<ul>" + "".join(firsts) + "</ul>")

    parts.append("<h2>Float against fixed point, per layer</h2>")
    parts.append(_table("<tr><th>layer</th><th>spike agreement</th><th>rate float</th><th>rate fixed</th></tr>",
                        [f"<tr><td>{_fmt(layer['name'])}</td><td>{layer['spike_agreement']:.4f}</td>"
                         f"<td>{layer['rate_float']:.4f}</td><td>{layer['rate_fixed']:.4f}</td></tr>"
                         for layer in d["layers"]]))
    div = result.first_divergence
    if div:
        parts.append(f"<p>First divergence: layer <code>{_fmt(div['layer'])}</code>, sample {div['sample']}, "
                     f"timestep {div['timestep']}, neuron {div['neuron']}. Cause: {_fmt(div.get('cause'))}.</p>")
    else:
        parts.append("<p>Float and fixed point agree on every spike.</p>")

    parts.append(_resources_section(d.get("resources")))
    if plots.available():
        parts.append(_figures(result, graph, artifact))
    else:
        parts.append("<p class='muted'>matplotlib is not installed: no figures.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _num(v: Any, digits: int = 0, scale: float = 1.0) -> str:
    return "-" if v is None else f"{v / scale:,.{digits}f}"


def _resources_section(r: dict[str, Any] | None) -> str:
    """Resources and cost (``lnm_deploy.cost.resources_report``), with the comparison when given."""
    if not r:
        return ""
    parts = ["<h2>Resources and cost</h2>"]
    m = r.get("mapping")
    if m:
        s, pc = m["system"], m["per_core"]
        parts.append(f"<p>{'Fits' if m['fits'] else '<b>Does not fit</b>'}: {m['cores_used']} cores on "
                     f"{m['chips_used']} chip(s) of {s['chips']} x {s['cores_per_chip']} cores; limiting resource: "
                     f"{_fmt(m['limiting_resource'])}. Per core at most {pc['neurons_max']} of {s['neurons_per_core']} "
                     f"neurons and {_num(pc['synaptic_bits_max'])} of {_num(s['synaptic_memory_bits'])} bits of "
                     f"synaptic memory ({pc['synaptic_memory_use_max']:.1%}).</p>")
    cost = r.get("cost") or {}
    fx, fl = cost.get("fxsim"), cost.get("float")
    if fx:
        layers_float = {c["layer"]: c for c in (fl or {}).get("layers", [])}
        maps = {x["layer"]: x for x in (m or {}).get("layers", [])}
        per = fx["per_inference"]
        if maps:
            parts.append(_table("<tr><th>layer</th><th>kind</th><th>neurons</th><th>cores</th><th>synapses</th>"
                                "<th>kbit</th><th>split by</th></tr>",
                                [f"<tr><td>{_fmt(x['layer'])}</td><td>{_fmt(x['kind'])}</td><td>{x['neurons']}</td>"
                                 f"<td>{x['cores']}</td><td>{_num(x['synapses'])}</td>"
                                 f"<td>{_num(x['synaptic_bits'], 1, 1e3)}</td><td>{_fmt(x['limit'])}</td></tr>"
                                 for x in maps.values()]))
        rows = []
        for c in fx["layers"]:
            e = c.get("energy_pj") or {}
            rows.append(f"<tr><td>{_fmt(c['layer'])}</td><td>{_num(c['synops'], 1)}</td>"
                        f"<td>{_num(layers_float.get(c['layer'], {}).get('synops'), 1)}</td>"
                        f"<td>{_num(c['updates'])} x {c['ops_per_update'] if c['ops_per_update'] is not None else '-'}</td>"
                        f"<td>{_num(c['messages'], 1)}</td><td>{_num(e.get('total'), 2, 1e3)}</td></tr>")
        e = per.get("energy_pj") or {}
        rows.append(f"<tr><th>total</th><th>{_num(per['synops'], 1)}</th>"
                    f"<th>{_num(((fl or {}).get('per_inference') or {}).get('synops'), 1)}</th>"
                    f"<th>{_num(per['neuron_update_ops'])} ops</th><th>{_num(per['messages'], 1)}</th>"
                    f"<th>{_num(e.get('total'), 2, 1e3)}</th></tr>")
        parts.append(f"<p class='muted'>Cost per inference (mean of {fx['samples']} samples x {fx['timesteps']} "
                     "steps), counted from the spikes of the runs; energy is an estimate.</p>")
        parts.append(_table("<tr><th>layer</th><th>synops fxsim</th><th>synops float</th><th>updates x ops</th>"
                            "<th>messages</th><th>nJ (est.)</th></tr>", rows))
        if per.get("latency_us") is not None:
            parts.append(f"<p>Latency estimate: {per['latency_us']:.2f} &micro;s per inference (the busiest core's "
                         "work).</p>")
    comp = r.get("comparison")
    if comp:
        parts.append("<h3>Accuracy against cost</h3>")
        parts.append(_table(
            "<tr><th>artifact (target)</th><th>accuracy</th><th>synops</th><th>neuron-update ops</th>"
            "<th>neuron nJ (est.)</th><th>total nJ (est.)</th></tr>",
            [f"<tr><td>{_fmt(row['label'] + ' (' + row['target'] + ')')}</td><td>{_fmt(row['accuracy'])}</td>"
             f"<td>{_num(row['synops'], 1)}</td><td>{_num(row['neuron_update_ops'])}</td>"
             f"<td>{_num(row['neuron_energy_pj'], 2, 1e3)}</td><td>{_num(row['energy_pj'], 2, 1e3)}</td></tr>"
             for row in comp["rows"]]))
        parts.append(f"<p class='muted'>{_fmt(comp.get('note'))}</p>")
    srcs = []
    if m:
        srcs.append(f"resources: {_fmt(m['system']['source'])}")
    est = (fx or {}).get("estimates")
    if est:
        srcs.append(f"per-operation figures: {_fmt(est['source'])}. {_fmt(est['note'])}")
    if m:
        srcs.append("the mapping ignores: " + _fmt("; ".join(m.get("ignored", []))))
    srcs += [_fmt(n) for n in r.get("notes", [])]
    if srcs:
        parts.append("<ul class='muted'>" + "".join(f"<li>{x}</li>" for x in srcs) + "</ul>")
    return "\n".join(parts)


#: The drift table lists at most this many output neurons (those with the largest drift).
MAX_DRIFT_ROWS = 64


def _lzc_section(result: Any) -> str:
    """The LZC readout's accuracies (float, fxsim, each backend) and the per-output-neuron LZC
    drift between float and fxsim (``VerifyResult.lzc``), as tables; a drift column shows a bar."""
    lzc = getattr(result, "lzc", None)
    if lzc is None:
        return ""
    crit = " (the pass criterion: <code>--readout lzc</code>)" if getattr(result, "readout", "count") == "lzc" else ""
    parts = [f"<h2>Lempel-Ziv complexity readout{crit}</h2>"]
    if lzc.readout:
        fit = lzc.fitted_on or {}
        parts.append(f"<p class='muted'>Nearest-centroid classifier on the per-neuron LZC of the output "
                     f"spike trains, fitted at calibration on the {_fmt(fit.get('run', 'float'))} model's "
                     f"outputs ({_fmt(fit.get('samples'))} samples x {_fmt(fit.get('timesteps'))} timesteps).</p>")
        rows = [f"<tr><td>float</td><td>{_fmt(lzc.float_accuracy)}</td></tr>",
                f"<tr><td>fixed point (fxsim)</td><td>{_fmt(lzc.fixed_accuracy)}</td></tr>"]
        rows += [f"<tr><td>{_fmt(b)}</td><td>{_fmt(a)}{_fmt(lzc.samples_note(b))}</td></tr>"
                 for b, a in lzc.backend_accuracy.items()]
        rows.append(f"<tr><td>same class as float</td><td>{_fmt(lzc.prediction_agreement)}</td></tr>")
        parts.append(_table("<tr><th>model</th><th>LZC readout accuracy</th></tr>", rows))
    if lzc.notes:
        parts.append("<ul>" + "".join(f"<li class='muted'>{_fmt(n)}</li>" for n in lzc.notes) + "</ul>")
    if lzc.drift is not None:
        d = lzc.drift
        diff, fm, qm = (np.asarray(a, dtype=np.float64).reshape(-1)
                        for a in (d.mean_abs_diff, d.reference_mean, d.test_mean))
        shown = np.arange(diff.size)
        if diff.size > MAX_DRIFT_ROWS:
            shown = np.sort(np.argsort(-diff, kind="stable")[:MAX_DRIFT_ROWS])
        top = float(diff.max()) if diff.size else 0.0
        rows = []
        for i in shown:
            width = 0 if top <= 0 else round(100 * float(diff[i]) / top)
            bar = (f"<span style='display:inline-block;height:.7em;width:{width}px;background:#0969da'></span>"
                   if width else "")
            rows.append(f"<tr><td>{int(i)}</td><td>{fm[i]:.4f}</td><td>{qm[i]:.4f}</td><td>{diff[i]:.4f}</td>"
                        f"<td style='text-align:left;min-width:110px'>{bar}</td></tr>")
        note = (f" The {MAX_DRIFT_ROWS} neurons with the largest drift of {diff.size} are listed."
                if diff.size > MAX_DRIFT_ROWS else "")
        parts.append(f"<h3>LZC drift per output neuron (largest {top:.4f})</h3><p class='muted'>Normalised "
                     "LZC (c(n) / (n / log2 n)) of each output neuron's spike train, mean over samples; the "
                     f"drift is the mean over samples of |float - fixed|.{note}</p>")
        parts.append(_table("<tr><th>neuron</th><th>LZC float</th><th>LZC fixed</th><th>drift</th><th></th></tr>",
                            rows))
    return "\n".join(parts)


#: Which run each raster is compared with: float and fxsim with each other, a backend with fxsim.
def raster_reference(label: str) -> str:
    """The run the raster of run ``label`` is held against (its differing spikes are marked)."""
    return "fxsim" if label != "fxsim" else "float"


def _figures(result: Any, graph: Graph, artifact: Any) -> str:
    runs = result.runs
    names = [layer.name for layer in result.layers]
    out = ["<h2>Agreement</h2>", _img(plots.agreement_bars(
        names, {"float vs fxsim": [layer.spike_agreement for layer in result.layers]}
        | {f"{b} vs fxsim": [1.0 - float(np.mean(runs[b].spikes[n] != runs["fxsim"].spikes[n][: len(runs[b].spikes[n])]))
                             for n in names]
           for b in result.backends if b in runs and b != "fxsim"},
        "fraction of equal spikes", "per-layer spike agreement"), "agreement")]
    div = result.first_divergence
    sample = int(div["sample"]) if div else 0
    out.append(f"<h2>Spike rasters (sample {sample})</h2><p class='muted'>Float and fxsim are held "
               "against each other, every other backend against fxsim: a red cross marks a spike only "
               "that run has, a blue circle one only the run it is held against has.</p>")
    for n in names:
        panels = {label: r.spikes[n][sample] for label, r in runs.items()
                  if n in r.spikes and sample < len(r.spikes[n])}
        out.append(f"<h3>Layer <code>{html.escape(n)}</code></h3><div class='grid'>")
        for label, s in panels.items():
            ref = raster_reference(label)
            png = plots.raster(s, label, panels.get(ref), ref) if ref in panels else plots.raster(s, label)
            out.append(_img(png, f"raster {n} {label}"))
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
    out.append("<h2>Leak polynomials: learned and deployed</h2><div class='grid wide'>")
    layers_rec = (artifact.record.get("calibration") or {}).get("layers", {})
    mapped = None  # the float graph folded once for every layer below (as the quantizer folds it)
    for n in names:
        fnode, qnode = graph.nodes.get(n), artifact.graph.nodes.get(n)
        if not isinstance(fnode, Neuron) or not isinstance(qnode, Neuron) or n not in runs["float"].states:
            continue
        v = runs["float"].states[n]["v"].reshape(-1)
        counts, edges = np.histogram(v, bins=400)
        if mapped is None:
            from lnm_deploy.calibrate.passes import fold

            mapped = fold(graph)
        theta, _ = learned_theta(graph, n, mapped.layers[n])
        theta_q = qnode.poly.reshape(qnode.poly.shape[0], -1).mean(axis=1)
        v_th = float(np.mean(fnode.v_th)) if fnode.v_th is not None else 1.0
        lif = (layers_rec.get(n) or {}).get("primitive") == "lif"
        out.append(_img(plots.polynomial_fit(
            n, (edges[:-1] + edges[1:]) / 2, counts.astype(float), theta, theta_q, None, v_th,
            deployed_label="deployed LIF fit (quantized)" if lif else "deployed polynomial (quantized)",
            mass_label="float membrane on these samples"), f"polynomial {n}"))
    out.append("</div><p class='muted'>Biases of the synapses are folded into the neuron's constant term "
               "on the chip; both curves include them. Where the target has no polynomial neuron the "
               "deployed curve is the layer's LIF fit. The v axis shows where the membrane values "
               "of these samples lie.</p>")
    return "\n".join(out)


def artifact_q(artifact: Any, layer: str) -> float | None:
    """Real membrane per integer LSB of ``layer`` from the artifact's calibration record."""
    rec = (artifact.record.get("calibration") or {}).get("layers", {}).get(layer)
    return float(rec["q"]) if rec and "q" in rec else None
