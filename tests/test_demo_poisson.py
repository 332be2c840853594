"""``lnm-deploy demo --task poisson`` (``lnm_deploy.demo``): the generated Poisson spike-train
classes, and the whole pipeline on a small configuration (train adaptive-threshold LNM neurons,
export, calibrate for loihi2 with labels, Lava bit-exact with fxsim, verify with the spike-count
and the LZC readouts). The full-size demo (under two minutes, float and fixed point within one
point) is the slow test at the end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import lnm_deploy.demo as demo
from lnm_deploy.cli import main
from lnm_deploy.demo import (
    MANIFEST,
    POISSON_CLASSES,
    REPORT_HTML,
    REPORT_JSON,
    PoissonConfig,
    poisson_dataset,
    read_manifest_task,
    run_demo,
)
from lnm_deploy.errors import UserInputError
from lnm_deploy.outputs import Outputs

SMALL = PoissonConfig(hidden=12, steps=24, train_per_class=24, test_per_class=6, calib_per_class=6, epochs=3,
                      max_accuracy_drop=1.0, lava_samples=2)


def test_poisson_classes_differ_in_rate_and_temporal_structure() -> None:
    x, y = poisson_dataset(200, steps=60, n_in=16, rate=0.25, low_rate=0.08, seed=3)
    assert x.shape == (800, 60, 16) and x.dtype == np.uint8 and set(np.unique(x)) <= {0, 1}
    assert np.bincount(y).tolist() == [200] * 4 and len(POISSON_CLASSES) == 4
    rate = [float(x[y == c].mean()) for c in range(4)]
    assert abs(rate[0] - 0.08) < 0.01 and all(abs(r - 0.25) < 0.02 for r in rate[1:]), rate
    # bursty: the population count per step varies far more than Poisson's (shared on/off state)
    pop = [x[y == c].sum(axis=2) for c in range(4)]
    assert pop[2].var(axis=1).mean() > 3 * pop[1].var(axis=1).mean()
    # regular: each channel spikes at most once in any 4 consecutive steps, at a fixed phase
    reg = x[y == 3].astype(int)
    assert (reg[:, :-3] + reg[:, 1:-2] + reg[:, 2:-1] + reg[:, 3:]).max() == 1
    # the same seed, the same data; another seed, other data
    a, b = poisson_dataset(5, seed=1), poisson_dataset(5, seed=1)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[0], poisson_dataset(5, seed=2)[0])
    with pytest.raises(UserInputError, match="poisson_dataset"):
        poisson_dataset(0)


def test_small_poisson_demo_runs_every_stage(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("lava")
    lines: list[str] = []
    out = tmp_path / "poisson"
    res = run_demo(out, task="poisson", poisson=SMALL, progress=False, log=lines.append)
    assert res.task == "poisson" and res.trained and res.torch_accuracy is not None
    assert res.samples == 4 * SMALL.test_per_class and res.timesteps == SMALL.steps
    assert read_manifest_task(out) == "poisson"
    assert json.loads((out / MANIFEST).read_text())["task"] == "poisson"
    # the network is adaptive-threshold neurons, calibrated onto the adaptive primitive
    art = json.loads((out / REPORT_JSON).read_text())
    ver = res.verification
    assert ver is not None and ver == art
    assert ver["backends"]["lava"]["bit_exact"] and ver["backends"]["lava"]["samples"] == SMALL.lava_samples
    # the spike-count readout's verdict, with the LZC readout's accuracies and drift reported
    assert ver["lzc"]["readout"] and ver["lzc"]["float_accuracy"] is not None
    assert len(ver["lzc"]["drift"]["mean_abs_diff"]) == len(POISSON_CLASSES)
    # and the LZC readout's own verdict
    lz = res.lzc_verification
    assert lz is not None and lz["criteria"]["readout"] == "lzc" and ver["lzc_readout_verification"] == lz
    assert res.passed == (ver["passed"] and lz["passed"])
    # both verifies name the committed float model, not the temporary it was read from before the commit
    assert ver["float"]["source"] == lz["float"]["source"] == str(out / "model.nir")
    # the LZC accuracy on Lava covers only Lava's samples: the count is carried and shown beside it
    n, lava_acc = SMALL.lava_samples, ver["lzc"]["backend_accuracy"]["lava"]
    assert ver["lzc"]["backend_samples"] == {"lava": n} and ver["lzc"]["samples"] == res.samples
    assert f"<tr><td>lava</td><td>{lava_acc:.4f} ({n} of {res.samples} samples)</td></tr>" \
        in (out / REPORT_HTML).read_text()
    # ... and in the command line's summaries: verify's LZC line, the demo's last line
    js = tmp_path / "v.json"
    code = main(["verify", str(out / "model.loihi2.nir"), "--data", str(out / "test.npz"), "--backend", "onnx",
                 "--backend-samples", "3", "--max-accuracy-drop", "1", "--json", str(js), "--quiet"])
    doc = json.loads(js.read_text())  # (the tiny network may not pass: its verdict is not the point here)
    assert code == (0 if doc["passed"] else 1)
    onnx_acc = doc["lzc"]["backend_accuracy"]["onnx"]
    line = next(x for x in capsys.readouterr().out.splitlines() if "LZC readout accuracy" in x)
    assert line.endswith(f", onnx {onnx_acc:.4f} (3 of {res.samples} samples)"), line
    monkeypatch.setattr(demo, "run_demo", lambda *_, **__: res)
    assert main(["demo", "--task", "poisson", "--out", str(out), "--quiet"]) == (0 if res.passed else 1)
    assert f"lava {lava_acc:.4f} ({n} of {res.samples} samples)" in capsys.readouterr().out
    monkeypatch.undo()
    text = "\n".join(lines)
    assert "adaptive-threshold LNM neurons" in text and "LZC drift" in text and "lava: bit-exact" in text
    from lnm_deploy.artifact import read_artifact

    fx = read_artifact(out / "model.loihi2.nir").fx
    assert {fx.nodes[n].kind for n in fx.neuron_names()} == {"adaptive_poly"}
    # a rerun of the same task reuses its model; the digits task would not
    again = run_demo(out, task="poisson", poisson=SMALL, progress=False, log=lines.append,
                     calibrate_targets=(), verify_backends=())
    assert not again.trained


def _tree(d: Path) -> dict[str, bytes]:
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_poisson_demo_replaces_the_digits_demo_only_with_force(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A directory holding the digits demo: the Poisson demo refuses it without --force; with it,
    the digits demo's own unchanged files that the Poisson run does not rewrite are removed (with
    the commit, all or nothing), a changed one and the user's files are kept, and the manifest
    lists exactly what the run wrote."""
    pytest.importorskip("torch")
    out = tmp_path / "copy"
    digits = {"model.nir": b"digits float model", "test.npz": b"digits test", "calib.npz": b"digits calib",
              "model.safetensors": b"digits weights", "model.loihi2-lif.nir": b"a 64-input LIF network",
              "model.loihi2-lif.report/summary.json": b"{}", "model.loihi2-lif.report/plots/a.png": b"png",
              "report.html": b"<html>digits</html>"}
    for rel, data in digits.items():
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)
    (out / MANIFEST).write_text(json.dumps({"format": demo.MANIFEST_FORMAT, "version": 1, "task": "digits",
                                            "files": {r: demo._sha256(out / r) for r in digits}}))
    (out / "report.html").write_bytes(b"<html>annotated by the user</html>")  # changed since: not the demo's
    (out / "notes.txt").write_text("mine")
    before = _tree(out)
    quiet = {"task": "poisson", "poisson": SMALL, "progress": False, "log": lambda *_: None,
             "calibrate_targets": (), "verify_backends": ()}

    with pytest.raises(UserInputError, match=r"copy holds the digits demo .*another --out.*--force"):
        run_demo(out, **quiet)
    assert main(["demo", "--task", "poisson", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err and "digits demo" in err and "--force" in err, err
    assert _tree(out) == before

    def full_disk(self: Outputs) -> list[Path]:  # the commit fails: its rollback, then the error
        self._rollback()
        raise UserInputError("cannot write (No space left on device); nothing of this run was kept")

    with monkeypatch.context() as m:
        m.setattr(Outputs, "_commit", full_disk)
        with pytest.raises(UserInputError, match="No space left"):
            run_demo(out, force=True, **quiet)
    assert _tree(out) == before and sorted(p.name for p in out.iterdir() if p.name.startswith("."))  == []

    res = run_demo(out, force=True, **quiet)
    assert res.trained and res.task == "poisson"
    after = _tree(out)
    doc = json.loads((out / MANIFEST).read_text())
    wrote = {"model.nir", "test.npz", "calib.npz", "model.safetensors"}
    assert doc["task"] == "poisson" and set(doc["files"]) == wrote
    assert all(doc["files"][r] == demo._sha256(out / r) for r in wrote)
    assert all(after[r] != before[r] for r in wrote)  # rewritten by this run
    # the digits demo's own files gone (with the report directory they leave empty); the rest kept
    assert set(after) == wrote | {MANIFEST, "report.html", "notes.txt"}
    assert not (out / "model.loihi2-lif.report").exists()
    assert after["report.html"] == before["report.html"] and after["notes.txt"] == b"mine"
    assert read_manifest_task(out) == "poisson"


def test_demo_task_is_checked() -> None:
    with pytest.raises(UserInputError, match="unknown demo task 'mnist'"):
        run_demo("unused", task="mnist")


@pytest.mark.slow
def test_full_poisson_demo_keeps_fixed_point_within_one_point(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("lava")
    res = run_demo(tmp_path / "full", task="poisson", progress=False, log=print)
    fixed = res.fixed_accuracy["loihi2"]
    print(f"float {res.float_accuracy:.4f}, fixed {fixed:.4f}, LZC {res.lzc_verification['lzc']}")  # type: ignore[index]
    assert res.float_accuracy >= 0.9 and abs(res.float_accuracy - fixed) <= 0.01
    assert res.passed


def test_a_manifest_never_names_a_file_outside_the_demo_directory(tmp_path) -> None:
    """The manifest is a file anyone can edit: absolute paths, ``..`` and paths through a link
    out of the directory are dropped, so ``--force`` can never remove a file outside ``--out``."""
    import hashlib
    import json
    import os

    from lnm_deploy.demo import MANIFEST, MANIFEST_FORMAT, read_manifest

    out, outside = tmp_path / "out", tmp_path / "victim.txt"
    out.mkdir()
    outside.write_text("keep me")
    (out / "sub").mkdir()
    (out / "sub" / "ok.txt").write_text("x")
    os.symlink(tmp_path, out / "link")
    digest = hashlib.sha256(b"keep me").hexdigest()
    files = {str(outside): digest, "../victim.txt": digest, "link/victim.txt": digest, "sub/ok.txt": "0" * 64}
    (out / MANIFEST).write_text(json.dumps({"format": MANIFEST_FORMAT, "task": "digits", "files": files}))
    assert read_manifest(out) == {"sub/ok.txt": "0" * 64}
