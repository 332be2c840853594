"""The verification page and its helpers: header facts, marked differing spikes, zoomed axes,
progress bars that stay out of logs, report folders named after the artifact, and the page laid
out by a real browser (headless Chromium, skipped without one)."""

from __future__ import annotations

import importlib.util
import io
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from lnm_deploy import __version__
from lnm_deploy.core.results import RunResult
from lnm_deploy.execute import run_float
from lnm_deploy.ir import Affine, Neuron, sequential
from lnm_deploy.progress import SilentBar, progress
from lnm_deploy.report import report_dir_for
from lnm_deploy.verify import BackendCheck, LayerCheck, VerifyResult

ROOT = Path(__file__).resolve().parents[1]
N, T, K = 4, 12, 5


def _graph() -> Any:
    rng = np.random.default_rng(0)
    return sequential([("fc1", Affine(weight=rng.normal(0, 1.0, (K, 6)), bias=rng.normal(0, 0.1, K))),
                       ("lnm1", Neuron(shape=(K,), poly=[0.0, 0.9, 0.05], v_th=1.0, dt=1e-3))], (6,))


def _result(*, labels: bool = True, primitive: str = "poly", long_text: bool = False) -> tuple[Any, Any, Any]:
    """A small verify result built by hand: float and fxsim differ in two spikes of sample 1."""
    rng = np.random.default_rng(3)
    fx = (rng.random((N, T, K)) < 0.3).astype(np.uint8)
    fl = fx.copy()
    fl[1, 2, 3] ^= 1
    fl[1, 7, 0] ^= 1
    v = rng.normal(0, 0.4, (N, T, K))
    runs = {"float": RunResult(output=fl, spikes={"lnm1": fl}, states={"lnm1": {"v": v}}),
            "fxsim": RunResult(output=fx, spikes={"lnm1": fx}, states={"lnm1": {"v": np.round(v / 0.01)}}),
            "lava": RunResult(output=fx[:2], spikes={"lnm1": fx[:2]})}
    graph = _graph()
    artifact = SimpleNamespace(graph=graph, record={
        "calibration": {"layers": {"lnm1": {"q": 0.01, "primitive": primitive}}},
        "provenance": {"lnm_deploy": __version__}})
    where = "/a/very/long/directory/name/that/does/not/wrap/easily/" * (3 if long_text else 0)
    res = VerifyResult(
        target="loihi2", samples=N, timesteps=T, float_accuracy=0.75 if labels else None,
        fixed_accuracy=0.5 if labels else None, layers=[LayerCheck("lnm1", 1 - 2 / fx.size, 0.3, 0.3)],
        backends={"lava": BackendCheck(True, 0, int(fx[:2].size), None, 0.5, samples=2)},
        first_divergence={"layer": "lnm1", "sample": 1, "timestep": 2, "neuron": 3, "cause": "rounding"},
        passed=False, reasons=["fixed-point accuracy 0.5000 is 0.2500 below float"], float_source=where + "g.nir",
        runs=runs, float_graph=graph, labels=labels, max_accuracy_drop=0.005, min_agreement=0.95)
    return res, graph, artifact


# ------------------------------------------------------------------------------------------------
# The header


def test_header_names_artifact_target_version_date_thresholds_and_samples() -> None:
    from lnm_deploy.report.html import header_fields, render_verify_page

    res, graph, art = _result()
    when = datetime(2024, 1, 2, 3, 4, tzinfo=timezone.utc)
    h = header_fields(res, art, "out/model.loihi2.nir", when)
    assert h["artifact"] == "out/model.loihi2.nir"
    assert h["target"] == "loihi2"
    assert h["tool"] == f"lnm-deploy {__version__}"
    assert h["date"] == "2024-01-02 03:04 UTC"
    assert "max accuracy drop 0.005 (float - fixed accuracy), applied (labels given)" in h["pass thresholds"]
    assert "min agreement 0.95" in h["pass thresholds"] and "not applied" in h["pass thresholds"]
    assert h["samples compared"] == ("float against fxsim on 4 samples x 12 timesteps; "
                                     "lava against fxsim on 2 samples (of 4, bit for bit)")
    page = render_verify_page(res, graph, art, artifact_path="out/model.loihi2.nir", generated=when)
    for text in ("out/model.loihi2.nir", "2024-01-02 03:04 UTC", f"lnm-deploy {__version__}",
                 "lava against fxsim on 2 samples (of 4", "<td>2 of 4</td>"):
        assert text in page


def test_header_without_labels_applies_the_agreement_floor() -> None:
    from lnm_deploy.report.html import header_fields

    res, _, art = _result(labels=False)
    h = header_fields(res, art)
    assert h["pass thresholds"].startswith("min agreement 0.95 (fixed predicts the float class), applied")
    assert "max accuracy drop 0.005 (float - fixed accuracy), not applied" in h["pass thresholds"]
    assert h["artifact"] == "(not given)"


# ------------------------------------------------------------------------------------------------
# Differing spikes on the rasters


def test_raster_marks_split_spikes_against_the_reference() -> None:
    from lnm_deploy.report.plots import raster_marks

    ref = np.zeros((4, 3), dtype=np.uint8)
    ref[0, 0] = ref[1, 2] = ref[3, 1] = 1
    here = ref.copy()
    here[1, 2] = 0  # the reference alone spikes at t=1, neuron 2
    here[2, 0] = 1  # this run alone spikes at t=2, neuron 0
    m = raster_marks(here, ref)
    assert [(int(t), int(k)) for t, k in zip(*m.same, strict=True)] == [(0, 0), (3, 1)]
    assert [(int(t), int(k)) for t, k in zip(*m.only_here, strict=True)] == [(2, 0)]
    assert [(int(t), int(k)) for t, k in zip(*m.only_there, strict=True)] == [(1, 2)]
    assert m.differing == 2
    assert raster_marks(ref, ref).differing == 0
    with pytest.raises(ValueError, match="shapes differ"):
        raster_marks(here, ref[:, :2])


def _pixels(png: bytes, rgb: tuple[int, int, int], tol: int = 40) -> int:
    import matplotlib.image as mpimg

    img = (mpimg.imread(io.BytesIO(png), format="png")[..., :3] * 255).astype(int)
    return int(np.sum(np.all(np.abs(img - np.array(rgb)) < tol, axis=-1)))


def test_raster_draws_the_differing_spikes_in_colour() -> None:
    pytest.importorskip("matplotlib")
    from lnm_deploy.report.plots import ONLY_HERE, ONLY_THERE, raster

    red = tuple(int(ONLY_HERE[i:i + 2], 16) for i in (1, 3, 5))
    blue = tuple(int(ONLY_THERE[i:i + 2], 16) for i in (1, 3, 5))
    ref = np.zeros((10, 8), dtype=np.uint8)
    ref[::2, ::3] = 1
    same = raster(ref, "a", ref.copy(), "b")
    here = ref.copy()
    here[3, 5] = 1
    here[0, 0] = 0
    diff = raster(here, "a", ref, "b")
    # The legend shows one red cross and one blue circle in both; the differing spikes add more.
    assert _pixels(diff, red) > _pixels(same, red) + 10
    assert _pixels(diff, blue) > _pixels(same, blue) + 10


# ------------------------------------------------------------------------------------------------
# Zoomed axes


def test_agreement_axis_is_zoomed_to_the_data() -> None:
    from lnm_deploy.report.plots import agreement_limits

    lo, hi = agreement_limits([0.99, 0.98, 1.0])
    assert lo == pytest.approx(0.97) and hi == pytest.approx(1.009)
    assert agreement_limits([0.2, 1.0])[0] == 0.0  # never below 0
    lo, hi = agreement_limits([1.0, 1.0])
    assert 0.99 < lo < 1.0 < hi


def test_mass_window_holds_the_central_mass() -> None:
    from lnm_deploy.report.plots import mass_window

    values = np.arange(-100.0, 1.0)  # a long, thin tail to -100 and most of the mass near 0
    weights = np.where(values > -3, 1000.0, 1.0)
    lo, hi = mass_window(values, weights, 0.01, 0.995)
    assert -100 < lo < -3 and hi == 0.0
    assert mass_window(np.array([1.0, 2.0]), np.array([0.0, 5.0])) == (2.0, 2.0)
    with pytest.raises(ValueError):
        mass_window(np.array([1.0]), np.array([0.0]))


def test_polynomial_of_a_lif_target_is_labelled_as_the_lif_fit(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("matplotlib")
    from lnm_deploy.report import html, plots

    labels: list[str] = []
    real = plots.polynomial_fit

    def spy(*args: Any, **kw: Any) -> bytes:
        labels.append(kw["deployed_label"])
        return real(*args, **kw)

    monkeypatch.setattr(plots, "polynomial_fit", spy)
    for primitive in ("poly", "lif"):
        res, graph, art = _result(primitive=primitive)
        html.render_verify_page(res, graph, art)
    assert labels == ["deployed polynomial (quantized)", "deployed LIF fit (quantized)"]


# ------------------------------------------------------------------------------------------------
# Progress bars


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_off_a_terminal_writes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    err = io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    bar = progress(range(5), desc="x", enabled=True)
    assert isinstance(bar, SilentBar) and list(bar) == [0, 1, 2, 3, 4] and bar.n == 5
    with progress(total=3, desc="y") as b:
        b.update(2)
        b.set_postfix(loss="1")
    assert b.n == 2 and err.getvalue() == ""


def test_progress_at_a_terminal_is_a_tqdm_bar_unless_disabled(monkeypatch: pytest.MonkeyPatch) -> None:
    err = _Tty()
    monkeypatch.setattr(sys, "stderr", err)
    assert list(progress(range(3), desc="tty")) == [0, 1, 2]
    assert "tty" in err.getvalue() and "\r" in err.getvalue()
    err.seek(0)
    err.truncate()
    assert list(progress(range(3), desc="off", enabled=False)) == [0, 1, 2]
    assert err.getvalue() == ""


def test_float_run_with_progress_leaves_no_carriage_return_in_a_log(capfd: pytest.CaptureFixture[str]) -> None:
    x = (np.random.default_rng(0).random((2, 6, 6)) < 0.5).astype(np.float64)
    run_float(_graph(), x, progress=True)
    assert "\r" not in capfd.readouterr().err


# ------------------------------------------------------------------------------------------------
# Report folders


@pytest.mark.parametrize(("artifact", "folder"), [
    ("model.loihi2.nir", "model.loihi2.report"), ("out/a.NIR", "out/a.report"),
    ("out/model.h5", "out/model.h5.report"), ("noext", "noext.report"), (".nir", ".nir.report")])
def test_report_dir_is_named_after_the_artifact(artifact: str, folder: str) -> None:
    assert report_dir_for(artifact) == Path(folder)


def test_cli_and_demo_name_the_report_folder_alike(tmp_path: Path) -> None:
    from lnm_deploy.cli import main
    from lnm_deploy.nir_io import write_nir

    g = tmp_path / "g.nir"
    write_nir(_graph(), g)
    data = tmp_path / "x.npz"
    rng = np.random.default_rng(1)
    np.savez(data, x=(rng.random((6, 10, 6)) < 0.4).astype(np.uint8))
    out = tmp_path / "model.loihi2.nir"
    assert main(["calibrate", str(g), "--data", str(data), "--target", "loihi2", "--out", str(out),
                 "--quiet"]) == 0
    assert (tmp_path / "model.loihi2.report" / "report.json").is_file()
    assert not (tmp_path / "model.loihi2.nir.report").exists()
    demo_src = (ROOT / "lnm_deploy" / "demo.py").read_text(encoding="utf-8")
    assert "report_dir_for(" in demo_src and '.report"' not in demo_src


# ------------------------------------------------------------------------------------------------
# The page in a real browser


def _screenshot_tool() -> Any:
    spec = importlib.util.spec_from_file_location("screenshot_report", ROOT / "tools" / "screenshot_report.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_page_in_chromium_has_no_clipped_table_at_600_px(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    tool = _screenshot_tool()
    if tool.find_chromium() is None:
        pytest.skip("no Chromium binary (install chromium or set LNM_CHROMIUM): the browser layout "
                    "check of the verification page is skipped")
    from lnm_deploy.report.html import render_verify_page

    res, graph, art = _result(long_text=True)
    page = tmp_path / "report.html"
    page.write_text(render_verify_page(res, graph, art, artifact_path="/x" * 60 + "/model.loihi2.nir"),
                    encoding="utf-8")
    out = tool.check_report(page, tmp_path, (1400, 600))
    for width, r in out.items():
        lay = r["layout"]
        assert lay["viewport_width"] == width
        assert lay["scroll_width"] <= width, f"page wider than the {width} px viewport"
        assert len(lay["tables"]) == 4 and all(not t["scrolls"] for t in lay["tables"])
        assert lay["images"] and all(im["loaded"] and im["right"] <= width for im in lay["images"])
        assert r["problems"] == []
        assert Path(r["png"]).stat().st_size > 10_000
    # The problems check itself: a table sticking out without a scrolling box is reported.
    bad = {"viewport_width": 600, "scroll_width": 700, "scroll_height": 10, "images": [],
           "tables": [{"index": 0, "right": 700, "width": 690, "in_scroll_box": False, "box_right": None,
                       "scrolls": False}]}
    assert len(tool.problems(bad)) == 2
