"""The LZC readout through ``calibrate`` and ``verify``: fitted on the float model's calibration
outputs, stored in the artifact as plain JSON, its accuracies and the per-neuron LZC drift reported
by ``verify`` (JSON, CLI, HTML), ``--readout lzc`` as the pass criterion, and artifacts without it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_verify import _net

from lnm_deploy.artifact import read_artifact, write_artifact
from lnm_deploy.calibrate import calibrate_network, load_recipe
from lnm_deploy.cli import main
from lnm_deploy.errors import GraphError, UserInputError
from lnm_deploy.execute import run_float
from lnm_deploy.fxsim import run_fx
from lnm_deploy.ir import Affine, Graph
from lnm_deploy.metrics import accuracy, lzc_drift
from lnm_deploy.nir_io import write_nir
from lnm_deploy.readout import LZCReadout
from lnm_deploy.report.html import render_verify_page
from lnm_deploy.targets import load_target
from lnm_deploy.verify import verify


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("readout")
    g = _net()
    write_nir(g, d / "float.nir")
    rng = np.random.default_rng(7)
    x = (rng.random((40, 24, 12)) < 0.35).astype(np.uint8)
    y = rng.integers(0, 4, 40)
    res = calibrate_network(g, x, load_target("loihi2"), load_recipe("default"), y=y, source=d / "float.nir",
                            progress=False)
    write_artifact(res.artifact, d / "art.nir")
    xt = (rng.random((12, 24, 12)) < 0.35).astype(np.uint8)
    yt = rng.integers(0, 4, 12)
    np.savez(d / "test.npz", x=xt, y=yt)
    np.savez(d / "test_nolabels.npz", x=xt)
    return {"dir": d, "graph": g, "x": x, "y": y, "res": res, "art": d / "art.nir", "xt": xt, "yt": yt}


def _without_readouts(files: dict[str, object], path: Path) -> Path:
    """The artifact as written before readouts existed: the same record without its 'readouts' key."""
    art = read_artifact(files["art"])  # type: ignore[arg-type]
    art.record.pop("readouts")
    write_artifact(art, path)
    return path


def test_calibrate_fits_lzc_readout_on_float_outputs(files: dict[str, object]) -> None:
    g, x, y = files["graph"], files["x"], files["y"]
    art = read_artifact(files["art"])  # type: ignore[arg-type]
    entry = art.record["readouts"]["lzc"]
    assert entry["fitted_on"] == {"run": "float", "samples": 40, "timesteps": 24}
    json.dumps(entry)  # plain JSON, no pickle
    by_hand = LZCReadout.fit(run_float(g, x).output, y)  # type: ignore[arg-type]
    assert entry["readout"] == by_hand.to_dict()  # float64 centroids survive the JSON exactly
    rep = files["res"].report["lzc_readout"]  # type: ignore[attr-defined]
    fx_out = run_fx(art.fx, x).output  # type: ignore[arg-type]
    assert rep["fitted"] is True
    assert rep["float_accuracy"] == by_hand.accuracy(run_float(g, x).output, y)  # type: ignore[arg-type]
    assert rep["fixed_accuracy"] == by_hand.accuracy(fx_out, y)


def test_calibrate_without_labels_writes_no_readouts(files: dict[str, object]) -> None:
    res = calibrate_network(files["graph"], files["x"], load_target("loihi2"),  # type: ignore[arg-type]
                            load_recipe("default"), progress=False)
    assert "readouts" not in res.artifact.record and "lzc_readout" not in res.report


def test_verify_reports_lzc_accuracies_and_drift_by_hand(files: dict[str, object], tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    js, page = tmp_path / "r.json", tmp_path / "r.html"
    test = files["dir"] / "test.npz"  # type: ignore[operator]
    code = main(["verify", str(files["art"]), "--data", str(test), "--backend", "onnx", "--json", str(js),
                 "--html", str(page), "--max-accuracy-drop", "1", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    doc = json.loads(js.read_text())
    art = read_artifact(files["art"])  # type: ignore[arg-type]
    xt, yt = files["xt"], files["yt"]
    f_out = run_float(files["graph"], xt).output  # type: ignore[arg-type]
    q_out = run_fx(art.fx, xt).output  # type: ignore[arg-type]
    readout = LZCReadout.from_dict(art.record["readouts"]["lzc"]["readout"])
    lz = doc["lzc"]
    assert lz["readout"] is True and lz["fitted_on"]["samples"] == 40
    assert lz["float_accuracy"] == readout.accuracy(f_out, yt)
    assert lz["fixed_accuracy"] == readout.accuracy(q_out, yt)
    assert lz["backend_accuracy"] == {"onnx": readout.accuracy(q_out, yt)}  # onnx is bit-exact with fxsim
    assert lz["prediction_agreement"] == float(np.mean(readout.predict(f_out) == readout.predict(q_out)))
    drift = lzc_drift(f_out, q_out)
    assert lz["drift"] == json.loads(json.dumps(drift.to_dict()))
    assert len(lz["drift"]["mean_abs_diff"]) == 4
    assert doc["criteria"]["readout"] == "count"
    assert doc["float"]["accuracy"] == accuracy(f_out, yt)  # the count readout, as before
    assert "LZC readout accuracy: float" in out and "onnx" in out and "LZC drift per output neuron" in out
    text = page.read_text()
    assert "Lempel-Ziv complexity readout" in text and "LZC drift per output neuron" in text
    for i, v in enumerate(drift.mean_abs_diff):  # one drift row per output neuron
        assert f"<tr><td>{i}</td><td>{drift.reference_mean[i]:.4f}</td><td>{drift.test_mean[i]:.4f}</td>" \
               f"<td>{v:.4f}</td>" in text


def test_readout_lzc_is_the_criterion(files: dict[str, object]) -> None:
    """A float model that differs from the artifact (its weights scaled), labels the float LZC
    readout gets all right: the LZC accuracy drop is then 1 - agreement, the count drop another."""
    g: Graph = files["graph"]  # type: ignore[assignment]
    nodes = {k: (Affine(weight=v.weight * 1.35, bias=v.bias) if isinstance(v, Affine) else v)
             for k, v in g.nodes.items()}
    other = Graph(nodes=nodes, edges=list(g.edges))
    art = read_artifact(files["art"])  # type: ignore[arg-type]
    xt = files["xt"]
    readout = LZCReadout.from_dict(art.record["readouts"]["lzc"]["readout"])
    f_out, q_out = run_float(other, xt).output, run_fx(art.fx, xt).output  # type: ignore[arg-type]
    y = readout.predict(f_out)
    d_lzc = readout.accuracy(f_out, y) - readout.accuracy(q_out, y)
    d_count = accuracy(f_out, y) - accuracy(q_out, y)
    assert max(d_count, 0.0) < d_lzc  # the data make the two criteria differ
    drop = (max(d_count, 0.0) + d_lzc) / 2
    kw = {"backends": (), "float_graph": other, "max_accuracy_drop": drop, "progress": False}
    count = verify(art, xt, y, **kw)  # type: ignore[arg-type]
    lzc = verify(art, xt, y, readout="lzc", **kw)  # type: ignore[arg-type]
    assert count.passed and not lzc.passed
    assert lzc.readout == "lzc" and lzc.to_dict()["criteria"]["readout"] == "lzc"
    assert any("LZC readout accuracy" in r for r in lzc.reasons)
    assert lzc.lzc.float_accuracy == 1.0
    # Without labels the class agreement is the LZC readout's.
    agree = lzc.lzc.prediction_agreement
    assert agree is not None and agree < 1
    nolab = verify(art, xt, readout="lzc", backends=(), float_graph=other, progress=False,
                   min_agreement=agree)
    assert not any("class on" in r for r in nolab.reasons)
    nolab = verify(art, xt, readout="lzc", backends=(), float_graph=other, progress=False,
                   min_agreement=min(1.0, agree + 1e-9))
    assert any("LZC readout class on" in r for r in nolab.reasons)


def test_readout_lzc_needs_a_readout(files: dict[str, object], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    old = _without_readouts(files, tmp_path / "old.nir")
    with pytest.raises(UserInputError, match="recalibrate it with labels"):
        verify(old, files["xt"], files["yt"], backends=(), readout="lzc", progress=False)  # type: ignore[arg-type]
    code = main(["verify", str(old), "--data", str(files["dir"] / "test.npz"),  # type: ignore[operator]
                 "--backend", "onnx", "--readout", "lzc", "--quiet"])
    assert code == 2
    assert "recalibrate it with labels" in capsys.readouterr().err
    with pytest.raises(UserInputError, match="readout"):
        verify(files["art"], files["xt"], backends=(), readout="spikes", progress=False)  # type: ignore[arg-type]


def test_artifact_without_readouts_still_verifies(files: dict[str, object], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    old = _without_readouts(files, tmp_path / "old.nir")
    js = tmp_path / "r.json"
    code = main(["verify", str(old), "--data", str(files["dir"] / "test_nolabels.npz"),  # type: ignore[operator]
                 "--backend", "onnx", "--json", str(js), "--min-agreement", "0", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    lz = json.loads(js.read_text())["lzc"]
    assert lz["readout"] is False and lz["float_accuracy"] is None and lz["backend_accuracy"] == {}
    assert any("no LZC readout" in n for n in lz["notes"])
    art = read_artifact(old)
    drift = lzc_drift(run_float(files["graph"], files["xt"]).output,  # type: ignore[arg-type]
                      run_fx(art.fx, files["xt"]).output)  # type: ignore[arg-type]
    assert lz["drift"]["mean_abs_diff"] == drift.mean_abs_diff.tolist()
    assert "LZC readout accuracy" not in out and "LZC drift per output neuron" in out
    result = verify(old, files["xt"], backends=(), progress=False)  # type: ignore[arg-type]
    page = render_verify_page(result, result.float_graph, art)  # type: ignore[arg-type]
    assert "LZC drift per output neuron" in page and "LZC readout accuracy" not in page


def test_malformed_readout_record_is_a_graph_error(files: dict[str, object], tmp_path: Path) -> None:
    art = read_artifact(files["art"])  # type: ignore[arg-type]
    art.record["readouts"]["lzc"]["readout"]["classifier"]["centroids"] = "nope"
    write_artifact(art, tmp_path / "bad.nir")
    with pytest.raises(GraphError, match="recalibrate"):
        verify(tmp_path / "bad.nir", files["xt"], backends=(), progress=False)  # type: ignore[arg-type]


def test_readout_other_timesteps(files: dict[str, object]) -> None:
    """Data of another length: the readout is noted as not applicable (count), refused (lzc)."""
    xt = files["xt"][:, :20]  # type: ignore[index]
    r = verify(files["art"], xt, backends=(), progress=False, min_agreement=0)  # type: ignore[arg-type]
    assert r.lzc.readout is False and r.lzc.drift is not None
    assert any("fitted on 24 timesteps" in n for n in r.lzc.notes)
    with pytest.raises(UserInputError, match="fitted on 24 timesteps"):
        verify(files["art"], xt, backends=(), readout="lzc", progress=False)  # type: ignore[arg-type]
