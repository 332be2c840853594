"""Failures to write an output (a full disk) are one typed error naming the output and the system's
reason, with nothing left behind; JSON outputs are strict JSON; the calibration report's files are
checked before any work. (The output mechanism itself: tests/test_outputs.py.)"""

from __future__ import annotations

import builtins
import contextlib
import errno
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from artifact_files import two_layer_files

import lnm_deploy
from lnm_deploy import fileio
from lnm_deploy.cli import main
from lnm_deploy.errors import OutputWriteError
from lnm_deploy.fileio import dumps_json, write_npz
from lnm_deploy.nir_io import write as nir_write

NO_SPACE = os.strerror(errno.ENOSPC)  # "No space left on device"


def _files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


def _strict(text: str) -> Any:
    """``json.loads`` refusing the non-standard constants Python's json writes by default."""

    def refuse(name: str) -> Any:
        raise ValueError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("in")
    graph, data = two_layer_files(d)
    assert main(["calibrate", str(graph), "--data", str(data), "--target", "loihi2",
                 "--out", str(d / "g.loihi2.nir"), "--quiet"]) == 0
    return d


@pytest.fixture
def unraisable(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """What Python reports as "Exception ignored in ..." (an object's __del__ failing), recorded."""
    seen: list[str] = []
    monkeypatch.setattr(sys, "unraisablehook", lambda u: seen.append(f"{u.object!r}: {u.exc_value!r}"))
    return seen


def _full_disk(monkeypatch: pytest.MonkeyPatch, *modules: Any) -> list[str]:
    """Every file ``modules`` open for writing is /dev/full (each write fails with the kernel's
    ENOSPC, as on a full disk); returns the paths they opened."""
    opened: list[str] = []

    def full(path: Any, mode: str = "r", *a: Any, **kw: Any) -> Any:
        if "w" not in mode:
            return builtins.open(path, mode, *a, **kw)
        opened.append(os.fspath(path))
        return builtins.open("/dev/full", mode, *a, **kw)

    for m in modules:
        monkeypatch.setattr(m, "open", full, raising=False)
    return opened


def _one_line(err: str, *parts: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    for p in parts:
        assert p in lines[0], err


# ------------------------------------------------------------------------------------- full disk


def test_write_npz_round_trip(tmp_path: Path) -> None:
    arrays = {"output": np.arange(24, dtype=np.int32).reshape(2, 3, 4), "spikes/a": np.eye(3, dtype=bool),
              "accuracy": np.asarray(0.75)}
    write_npz(tmp_path / "o.npz", arrays)
    with np.load(tmp_path / "o.npz") as d:
        assert sorted(d.files) == sorted(arrays)
        for k, v in arrays.items():
            assert d[k].dtype == v.dtype and np.array_equal(d[k], v)
    assert _files(tmp_path) == ["o.npz"]


def test_write_npz_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, unraisable: list[str]) -> None:
    target = tmp_path / "o.npz"
    target.write_bytes(b"old")
    opened = _full_disk(monkeypatch, fileio)
    with pytest.raises(OutputWriteError) as e:
        write_npz(target, {"x": np.random.default_rng(0).random(50_000)})
    assert str(e.value) == f"cannot write {target} ({NO_SPACE})"
    assert (e.value.path, e.value.reason, e.value.exit_code) == (str(target), NO_SPACE, 2)
    assert opened and opened[0] != str(target)  # a temporary beside it was being written
    import gc

    gc.collect()
    assert unraisable == []  # no "Exception ignored in ZipFile.__del__"
    assert _files(tmp_path) == ["o.npz"] and target.read_bytes() == b"old"


def test_programming_errors_are_not_write_failures(tmp_path: Path) -> None:
    """Only the system's failure to write the file becomes OutputWriteError; a bug propagates."""
    with pytest.raises(ValueError, match="pickle"):
        write_npz(tmp_path / "o.npz", {"x": np.array([object()])})
    assert _files(tmp_path) == []
    assert fileio.write_failure(RuntimeError("errno = 28"), tmp_path / "a") is None
    assert fileio.write_failure(OSError(errno.ENOSPC, NO_SPACE, str(tmp_path / "b")), tmp_path / "a") is None
    assert fileio.write_failure(OSError(errno.ENOSPC, NO_SPACE), tmp_path / "a") == NO_SPACE


def _cli_cases(d: Path, work: Path) -> list[tuple[str, list[str], Path]]:
    return [
        ("run", ["run", str(d / "g.loihi2.nir"), "--data", str(d / "x.npz"), "--backend", "fxsim",
                 "--states", "--quiet", "--out", str(work / "o.npz")], work / "o.npz"),
        ("calibrate", ["calibrate", str(d / "g.nir"), "--data", str(d / "x.npz"), "--target", "loihi2",
                       "--quiet", "--out", str(work / "a.nir")], work / "a.nir"),
    ]


@pytest.mark.parametrize("case", ["run", "calibrate"])
def test_cli_full_disk(case: str, inputs: Path, work: Path, monkeypatch: pytest.MonkeyPatch,
                       capsys: pytest.CaptureFixture[str], unraisable: list[str]) -> None:
    """run and calibrate on a full disk: exit 2, one line naming --out (not a temporary) and the
    reason, nothing written, a file --force would have replaced kept."""
    [(_, argv, out)] = [c for c in _cli_cases(inputs, work) if c[0] == case]
    out.write_bytes(b"old")
    _full_disk(monkeypatch, fileio, nir_write)
    assert main([*argv, "--force"]) == 2
    _one_line(capsys.readouterr().err, f"lnm-deploy {case}: error: cannot write {out} ({NO_SPACE})")
    assert _files(work) == [out.name] and out.read_bytes() == b"old"
    import gc

    gc.collect()
    assert unraisable == []


def test_cli_export_full_disk(work: Path, monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    from torch import nn

    from lnm_deploy.model import LNM, LNMSequential, save_model

    model = save_model(LNMSequential(nn.Linear(6, 5), LNM(5, 2)), work.parent / "m.safetensors")
    _full_disk(monkeypatch, fileio, nir_write)
    assert main(["export", str(model), "--input-shape", "6", "--out", str(work / "e.nir")]) == 2
    _one_line(capsys.readouterr().err, f"lnm-deploy export: error: cannot write {work / 'e.nir'} ({NO_SPACE})")
    assert _files(work) == []


@contextlib.contextmanager
def _full_tmpfs(where: Path) -> Iterator[Path]:
    """A real file system with no space left (a tmpfs filled up): root only."""
    where.mkdir()
    if os.geteuid() != 0 or subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(where)],
                                           capture_output=True).returncode != 0:
        pytest.skip("needs root and mount (a real full file system)")
    try:
        with open(where / "filler", "wb", buffering=0) as f:
            with contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * 4096)
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=False)


def test_cli_real_full_disk(inputs: Path, tmp_path: Path) -> None:
    """On a real full file system, in a process of its own: exit 2 and one line on stderr (no
    traceback, no "Exception ignored", no crash of HDF5 closing its file), nothing left behind."""
    root = Path(lnm_deploy.__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    with _full_tmpfs(tmp_path / "full") as full:
        for name, argv, out in _cli_cases(inputs, full):
            p = subprocess.run([sys.executable, "-m", "lnm_deploy.cli", *argv], capture_output=True,
                               text=True, env=env, timeout=600)
            assert p.returncode == 2, (name, p.stderr)
            _one_line(p.stderr, f"lnm-deploy {name}: error: cannot write {out} ({NO_SPACE})")
            assert _files(full) == ["filler"]


def test_save_model_real_full_disk(tmp_path: Path) -> None:
    """save_model (the demo's .safetensors) on a real full file system: OutputWriteError, nothing left
    (safetensors' own file writer raised its SafetensorError)."""
    pytest.importorskip("torch")
    from lnm_deploy.model import save_model, vgg

    with _full_tmpfs(tmp_path / "full") as full:
        with pytest.raises(OutputWriteError, match=f"cannot write {full / 'm.safetensors'} \\({NO_SPACE}\\)"):
            save_model(vgg((3, 32, 32), (16, 32), 10), full / "m.safetensors")
        assert _files(full) == ["filler"]


# ------------------------------------------------------------------------------------- strict JSON


class _WithDict:
    def to_dict(self) -> dict[str, Any]:
        return {"sqnr": math.inf}


def test_dumps_json_is_strict() -> None:
    doc = {"a": math.inf, "b": [math.nan, np.float32(-np.inf), 1.5], "c": np.array([1.0, np.inf]),
           "d": (np.int64(3), np.bool_(True)), "e": _WithDict(), "f": Path("p"), "g": None}
    text = dumps_json(doc, indent=2, sort_keys=True)
    assert _strict(text) == {"a": None, "b": [None, None, 1.5], "c": [1.0, None], "d": [3, True],
                             "e": {"sqnr": None}, "f": "p", "g": None}
    with pytest.raises(TypeError, match="not JSON serialisable"):
        dumps_json({"x": object()})


def test_report_and_verify_json_with_infinite_sqnr(inputs: Path, work: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """An infinite membrane SQNR (identical membranes) is null in report.json and verify --json."""
    from lnm_deploy.calibrate import pipeline

    monkeypatch.setattr(pipeline, "sqnr_db", lambda *a, **kw: math.inf)
    art = work / "a.nir"
    assert main(["calibrate", str(inputs / "g.nir"), "--data", str(inputs / "x.npz"), "--target", "loihi2",
                 "--out", str(art), "--quiet"]) == 0
    text = (work / "a.report" / "report.json").read_text()
    assert "Infinity" not in text
    layers = _strict(text)["comparison"]["layers"]
    assert layers and all(rec["membrane_sqnr_db"] is None for rec in layers.values())
    assert main(["verify", str(art), "--data", str(inputs / "x.npz"), "--backend", "fxsim", "--quiet",
                 "--json", str(work / "v.json")]) in (0, 1)
    _strict((work / "v.json").read_text())


# ------------------------------------------------------------------------------------- report files


@pytest.mark.parametrize("name", ["report.json", "poly_lnm1.png"])
def test_report_file_that_is_an_input_is_refused_before_calibrating(
        name: str, inputs: Path, work: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    import lnm_deploy.calibrate

    def never(*a: Any, **kw: Any) -> Any:
        raise AssertionError("calibration ran before the outputs were checked")

    monkeypatch.setattr(lnm_deploy.calibrate, "calibrate_network", never)
    rdir = work / "rdir"
    rdir.mkdir()
    data = rdir / name
    data.write_bytes((inputs / "x.npz").read_bytes())
    assert main(["calibrate", str(inputs / "g.nir"), "--data", str(data), "--target", "loihi2",
                 "--out", str(work / "h.nir"), "--report-dir", str(rdir), "--force"]) == 2
    _one_line(capsys.readouterr().err, f"{data} is this command's input (--data) and its output (--report-dir)")
    assert _files(work) == ["rdir", f"rdir/{name}"] and data.read_bytes() == (inputs / "x.npz").read_bytes()


def test_directory_in_the_way_of_the_report_is_refused_before_calibrating(
        inputs: Path, work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import lnm_deploy.calibrate

    monkeypatch.setattr(lnm_deploy.calibrate, "calibrate_network", lambda *a, **kw: pytest.fail("calibrated"))
    (work / "rdir" / "report.json").mkdir(parents=True)
    assert main(["calibrate", str(inputs / "g.nir"), "--data", str(inputs / "x.npz"), "--target", "loihi2",
                 "--out", str(work / "h.nir"), "--report-dir", str(work / "rdir"), "--force"]) == 2
    _one_line(capsys.readouterr().err, "report.json is a directory")
    assert _files(work) == ["rdir", "rdir/report.json"]
