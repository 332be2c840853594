"""What the commands write, and when: outputs are declared and checked before any work, written
all together at the end or not at all, and nothing a command did not create is ever deleted or
(without --force) replaced. ``lnm_deploy.outputs.Outputs`` is the one mechanism behind it."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from artifact_files import two_layer_files

from lnm_deploy.cli import main
from lnm_deploy.errors import UserInputError
from lnm_deploy.outputs import Outputs


def _files(root: Path) -> list[str]:
    """Everything under ``root`` (temporaries included), relative, sorted."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Read-only inputs shared by the tests of this module."""
    return tmp_path_factory.mktemp("in")


@pytest.fixture(scope="module")
def graph_file(inputs: Path) -> Path:
    return two_layer_files(inputs)[0]


@pytest.fixture(scope="module")
def data_file(graph_file: Path) -> Path:
    return graph_file.parent / "x.npz"


@pytest.fixture(scope="module")
def artifact(graph_file: Path, data_file: Path) -> Path:
    art = graph_file.parent / "g.loihi2.nir"
    assert main(["calibrate", str(graph_file), "--data", str(data_file), "--target", "loihi2",
                 "--out", str(art), "--quiet"]) == 0
    return art


@pytest.fixture
def read_only(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path], None]:
    """Make a directory unwritable: chmod, or (as root, who ignores modes) a mkstemp that fails."""

    def make(d: Path) -> None:
        if os.geteuid() != 0:
            d.chmod(0o555)
            return
        real = tempfile.mkstemp

        def mkstemp(*a, **kw):  # type: ignore[no-untyped-def]
            if Path(kw.get("dir") or ".").resolve() == d.resolve():
                raise PermissionError(13, "Permission denied")
            return real(*a, **kw)

        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)

    return make


def _no_work(monkeypatch: pytest.MonkeyPatch, *targets: tuple[str, str]) -> None:
    """Fail the test if any of these functions (module, name) runs: checks come first."""
    import importlib

    for mod, name in targets:
        def boom(*a, **kw):  # type: ignore[no-untyped-def]
            raise AssertionError("the computation ran before the outputs were checked")

        monkeypatch.setattr(importlib.import_module(mod), name, boom)


def _one_line(err: str, *needles: str) -> None:
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err


# ------------------------------------------------------------------------------------------------
# 1. Nothing is deleted that the command did not create


def test_calibrate_never_empties_an_existing_report_dir(graph_file: Path, data_file: Path, work: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    rep = work / "rep"
    rep.mkdir()
    (rep / "notes.txt").write_text("mine")
    art = work / "a.nir"
    args = ["calibrate", str(graph_file), "--data", str(data_file), "--target", "loihi2",
            "--out", str(art), "--report-dir", str(rep), "--quiet"]
    assert main(args) == 2
    _one_line(capsys.readouterr().err, str(rep), "--force")
    assert _files(work) == ["rep", "rep/notes.txt"]  # no artifact either
    assert main([*args, "--force"]) == 0
    capsys.readouterr()
    assert (rep / "notes.txt").read_text() == "mine"
    assert (rep / "report.json").is_file() and art.is_file()
    assert main([*args, "--force"]) == 0  # again: our own files replaced, the user's kept
    assert (rep / "notes.txt").read_text() == "mine"
    assert not [f for f in _files(work) if f.split("/")[-1].startswith(".")]


def test_calibrate_report_dir_dot_is_refused(graph_file: Path, data_file: Path, work: Path,
                                             monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    assert main(["calibrate", str(graph_file), "--data", str(data_file), "--target", "loihi2",
                 "--out", "a.nir", "--report-dir", ".", "--quiet"]) == 2
    _one_line(capsys.readouterr().err, "--force")
    assert _files(work) == ["notes.txt"]
    # With --force it writes its report files into '.', and deletes nothing.
    assert main(["calibrate", str(graph_file), "--data", str(data_file), "--target", "loihi2",
                 "--out", "a.nir", "--report-dir", ".", "--quiet", "--force"]) == 0
    assert (work / "notes.txt").read_text() == "mine" and (work / "report.json").is_file()


def test_calibrate_default_report_dir_is_checked_first(graph_file: Path, data_file: Path, work: Path,
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    (work / "a.report").mkdir()
    (work / "a.report" / "notes.txt").write_text("mine")
    _no_work(monkeypatch, ("lnm_deploy.calibrate", "calibrate_network"))
    assert main(["calibrate", str(graph_file), "--data", str(data_file), "--target", "loihi2",
                 "--out", str(work / "a.nir"), "--quiet"]) == 2
    _one_line(capsys.readouterr().err, "a.report", "--force")
    assert _files(work) == ["a.report", "a.report/notes.txt"]


# ------------------------------------------------------------------------------------------------
# 2. Checked before any work; written all together, or nothing


@pytest.mark.parametrize("command", ["run", "verify-json", "verify-html", "compile", "calibrate-out",
                                     "calibrate-report", "export", "demo"])
def test_unwritable_output_is_one_line_before_any_work(command: str, graph_file: Path, data_file: Path,
                                                       artifact: Path, work: Path, tmp_path: Path,
                                                       read_only: Callable[[Path], None],
                                                       monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    ro = work / "ro"
    ro.mkdir()
    (tmp_path / "m.pt").write_bytes(b"never read")
    argv = {
        "run": ["run", str(graph_file), "--data", str(data_file), "--out", str(ro / "o.npz")],
        "verify-json": ["verify", str(artifact), "--data", str(data_file), "--backend", "fxsim",
                        "--json", str(ro / "v.json")],
        "verify-html": ["verify", str(artifact), "--data", str(data_file), "--backend", "fxsim",
                        "--json", str(work / "v.json"), "--html", str(ro / "v.html")],
        "compile": ["compile", str(artifact), "--out", str(ro / "m.onnx")],
        "calibrate-out": ["calibrate", str(graph_file), "--data", str(data_file), "--target", "loihi2",
                          "--out", str(ro / "a.nir"), "--report-dir", str(work / "rep")],
        "calibrate-report": ["calibrate", str(graph_file), "--data", str(data_file), "--target",
                             "loihi2", "--out", str(work / "a.nir"), "--report-dir", str(ro / "rep")],
        "export": ["export", str(tmp_path / "m.pt"), "--input-shape", "6", "--out", str(ro / "g.nir")],
        "demo": ["demo", "--out", str(ro / "demo_out"), "--quiet"],
    }[command]
    if command == "demo":
        pytest.importorskip("torch")
        _no_work(monkeypatch, ("lnm_deploy.model", "train_digits"))
    _no_work(monkeypatch, ("lnm_deploy.verify", "verify"), ("lnm_deploy.calibrate", "calibrate_network"),
             ("lnm_deploy.onnx_backend.run", "build_onnx"), ("lnm_deploy.model", "load_model"),
             ("lnm_deploy.cli", "_load"), ("lnm_deploy.artifact", "read_artifact"))
    read_only(ro)
    assert main(argv) == 2
    _one_line(capsys.readouterr().err, str(ro), "cannot write in", "writable")
    assert _files(work) == ["ro"]


@pytest.mark.parametrize("force", [False, True])
def test_out_that_is_a_directory_is_one_line(force: bool, graph_file: Path, data_file: Path, work: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    (work / "o.npz").mkdir()
    assert main(["run", str(graph_file), "--data", str(data_file), "--out", str(work / "o.npz"),
                 "--quiet", *(["--force"] if force else [])]) == 2
    _one_line(capsys.readouterr().err, "o.npz is a directory", "must name a file")
    assert _files(work) == ["o.npz"]


def test_missing_parent_is_one_line(graph_file: Path, data_file: Path, work: Path,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", str(graph_file), "--data", str(data_file), "--out", str(work / "no" / "o.npz"),
                 "--quiet"]) == 2
    _one_line(capsys.readouterr().err, "does not exist")


@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError])
def test_calibrate_interrupted_or_failing_leaves_nothing(failure: type[BaseException], graph_file: Path,
                                                         data_file: Path, work: Path,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The artifact is staged, then the report fails (or Ctrl-C): neither is left behind."""
    from lnm_deploy.report import calibration

    def fail(*a, **kw):  # type: ignore[no-untyped-def]
        raise failure("boom")

    monkeypatch.setattr(calibration, "calibration_figures", fail)
    monkeypatch.setattr(calibration.plots, "available", lambda: True)
    args = ["calibrate", str(graph_file), "--data", str(data_file), "--target", "loihi2",
            "--out", str(work / "a.nir"), "--quiet"]
    if failure is KeyboardInterrupt:
        assert main(args) == 130
    else:
        with pytest.raises(RuntimeError):
            main(args)
    capsys.readouterr()
    assert _files(work) == []


def test_calibrate_report_dir_parent_missing_writes_no_artifact(graph_file: Path, data_file: Path,
                                                                work: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["calibrate", str(graph_file), "--data", str(data_file), "--target", "loihi2",
                 "--out", str(work / "a.nir"), "--report-dir", str(work / "no" / "rep"), "--quiet"]) == 2
    _one_line(capsys.readouterr().err, "no")
    assert _files(work) == []


def test_verify_html_failure_leaves_no_json(artifact: Path, data_file: Path, work: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from lnm_deploy.report import html

    def fail(*a, **kw):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    (work / "v.json").write_text("old")
    monkeypatch.setattr(html, "render_verify_page", fail)
    args = ["verify", str(artifact), "--data", str(data_file), "--backend", "fxsim", "--quiet",
            "--json", str(work / "v.json"), "--html", str(work / "v.html"), "--force"]
    with pytest.raises(OSError):
        main(args)
    capsys.readouterr()
    assert _files(work) == ["v.json"] and (work / "v.json").read_text() == "old"
    monkeypatch.undo()
    assert main(args) in (0, 1)
    assert json.loads((work / "v.json").read_text())["samples"] == 6
    assert _files(work) == ["v.html", "v.json"]


def test_compile_force_replaces_and_refuses_without(artifact: Path, work: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("onnx")
    out = work / "m.onnx"
    out.write_text("old")
    assert main(["compile", str(artifact), "--out", str(out)]) == 2
    _one_line(capsys.readouterr().err, "exists; pass --force")
    assert out.read_text() == "old"
    assert main(["compile", str(artifact), "--out", str(out), "--force"]) == 0
    assert out.stat().st_size > 100 and _files(work) == ["m.onnx"]


def test_an_output_that_is_an_input_is_refused_even_with_force(graph_file: Path, data_file: Path, artifact: Path,
                                                                tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """--force replaces outputs, never the command's own inputs (each of these once succeeded and
    destroyed its input: the artifact became a JSON report, the data a run's output, the float
    graph an artifact naming itself as its source)."""
    d = tmp_path / "own"
    d.mkdir()
    g, x, a = (Path(d / p.name) for p in (graph_file, data_file, artifact))
    for src, dst in ((graph_file, g), (data_file, x), (artifact, a)):
        dst.write_bytes(src.read_bytes())
    link = d / "link.npz"
    link.symlink_to(x)
    before = {p: p.read_bytes() for p in (g, x, a)}
    cases = [
        (["verify", str(a), "--data", str(x), "--backend", "onnx", "--json", str(a)], "--json"),
        (["calibrate", str(g), "--data", str(x), "--target", "loihi2", "--out", str(g), "--quiet"], "--out"),
        (["calibrate", str(g), "--data", str(x), "--target", "loihi2", "--out", str(link), "--quiet"], "--out"),
        (["run", str(a), "--data", str(x), "--backend", "fxsim", "--out", str(x)], "--out"),
        (["run", str(g), "--data", str(x), "--backend", "float", "--out", str(g)], "--out"),
    ]
    # verify reads the float graph the artifact records (the fixture's own graph file)
    kept = graph_file.read_bytes()
    assert main(["verify", str(a), "--data", str(x), "--backend", "onnx", "--html", str(graph_file), "--force"]) == 2
    _one_line(capsys.readouterr().err, "(the float graph it was calibrated from) and its output (--html)")
    assert graph_file.read_bytes() == kept
    # ... also where --float says not to read it (it was replaced then)
    for how in (["--float", "dequantized"], ["--float", str(g)]):
        assert main(["verify", str(a), "--data", str(x), "--backend", "onnx", *how, "--json", str(graph_file),
                     "--force"]) == 2
        _one_line(capsys.readouterr().err, "(the float graph it was calibrated from) and its output (--json)")
        assert graph_file.read_bytes() == kept
    for args, option in cases:
        assert main([*args, "--force"]) == 2, args
        _one_line(capsys.readouterr().err, "is this command's input (", f"and its output ({option})")
    assert {p: p.read_bytes() for p in (g, x, a)} == before
    assert sorted(p.name for p in d.iterdir()) == sorted([g.name, x.name, a.name, link.name])


# ------------------------------------------------------------------------------------------------
# The mechanism itself


def test_outputs_commit_all_or_nothing_and_restores_replaced_files(work: Path) -> None:
    (work / "a").write_text("old a")
    outs = Outputs(force=True)
    outs.file(work / "a")
    outs.file(work / "b")
    outs.directory(work / "d")
    outs.write_text(work / "a", "new a")
    outs.write_text(work / "b", "new b")
    outs.write_text(work / "d" / "r.json", "{}")
    assert [p.name for p in work.iterdir() if not p.name.startswith(".")] == ["a"]  # staged only
    assert (work / "a").read_text() == "old a" and not (work / "b").exists() and not (work / "d").exists()
    (work / "b").mkdir()  # the second rename will fail: the first must be rolled back
    with pytest.raises(UserInputError, match=r"cannot write .*b.*nothing of this run was kept"):
        outs.commit()
    assert (work / "a").read_text() == "old a"
    assert _files(work) == ["a", "b"]


def test_outputs_abort_on_interrupt_removes_everything(work: Path) -> None:
    (work / "keep").mkdir()
    (work / "keep" / "notes.txt").write_text("mine")
    with pytest.raises(KeyboardInterrupt), Outputs(force=True) as outs:
        outs.directory(work / "keep")
        outs.directory(work / "new")
        outs.directory(work / "new" / "sub")
        outs.file(work / "f")
        outs.write_text(work / "keep" / "r.json", "x")
        outs.write_text(work / "new" / "sub" / "x", "x")
        outs.write_text(work / "f", "x")
        raise KeyboardInterrupt
    assert _files(work) == ["keep", "keep/notes.txt"]


def test_outputs_commit_nested_new_directories(work: Path) -> None:
    with Outputs() as outs:
        outs.directory(work / "new")
        outs.directory(work / "new" / "sub")
        outs.write_text(work / "new" / "top", "1")
        outs.write_text(work / "new" / "sub" / "x", "2")
        assert not (work / "new").exists()
    assert _files(work) == ["new", "new/sub", "new/sub/x", "new/top"]
    assert (work / "new" / "sub" / "x").read_text() == "2"
    mask = os.umask(0)
    os.umask(mask)
    assert (work / "new" / "top").stat().st_mode & 0o777 == 0o666 & ~mask


def test_outputs_declare_checks(work: Path) -> None:
    (work / "f").write_text("x")
    with pytest.raises(UserInputError, match="exists; pass --force"):
        Outputs().file(work / "f", option="--out")
    with pytest.raises(UserInputError, match="is a directory"):
        Outputs(force=True).file(work, option="--out")
    with pytest.raises(UserInputError, match="not a directory"):
        Outputs(force=True).directory(work / "f")
    outs = Outputs()
    outs.file(work / "g")
    with pytest.raises(UserInputError, match="named twice"):
        outs.file(work / "g")
    assert _files(work) == ["f"]


# ------------------------------------------------------------------------------------------------
# The demo: reuses and replaces only what it wrote itself


@pytest.mark.slow
def test_demo_replaces_only_its_own_files(work: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("torch")
    from lnm_deploy.demo import MANIFEST, MODEL_FILE, run_demo

    quiet = {"progress": False, "log": lambda *_: None, "calibrate_targets": (), "verify_backends": ()}
    out = work / "demo_out"
    res = run_demo(out, **quiet)
    assert res.trained
    manifest = json.loads((out / MANIFEST).read_text())["files"]
    assert sorted(manifest) == ["calib.npz", "model.nir", "model.safetensors", "test.npz"]
    (out / "notes.txt").write_text("mine")
    assert not run_demo(out, **quiet).trained  # a rerun reuses its own model
    (out / MODEL_FILE).write_bytes((out / MODEL_FILE).read_bytes() + b"\0")  # changed by the user
    before = _files(out)
    with pytest.raises(UserInputError, match=r"model\.nir is changed since the demo wrote it; pass --force"):
        run_demo(out, **quiet)
    assert _files(out) == before
    assert run_demo(out, force=True, **quiet).trained  # --force: trains again, replaces it
    assert (out / "notes.txt").read_text() == "mine"

    # A non-empty directory without a manifest: refused, on the command line too.
    other = work / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert main(["demo", "--out", str(other), "--quiet"]) == 2
    _one_line(capsys.readouterr().err, "not written by the demo", "--force")
    assert _files(other) == ["notes.txt"]


def test_after_commit_runs_once_committed_with_signals_held_and_never_on_abort(tmp_path: Path) -> None:
    import signal

    seen: list[tuple[bool, bool]] = []

    def check() -> None:
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, set())  # the current mask, unchanged
        seen.append(((tmp_path / "a.txt").exists(), signal.SIGINT in blocked))

    with Outputs() as outs:
        outs.write_text(outs.file(tmp_path / "a.txt"), "x")
        outs.after_commit(check)
        assert not seen
    assert seen == [(True, True)]  # after the file appeared, with Ctrl-C held
    with pytest.raises(RuntimeError), Outputs() as outs:
        outs.write_text(outs.file(tmp_path / "b.txt"), "y")
        outs.after_commit(check)
        raise RuntimeError("the work failed")
    assert seen == [(True, True)] and not (tmp_path / "b.txt").exists()
