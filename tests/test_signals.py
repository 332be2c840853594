"""SIGTERM and SIGHUP (``timeout``, CI cancellations, job schedulers, a closed terminal) are
handled like Ctrl-C: cleanup runs, Lava's worker processes are stopped, no shared memory and no
output of the run is left behind, and the exit status is 128 + the signal's number."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from lnm_deploy.cli import main
from lnm_deploy.ir import Affine, Neuron, sequential
from lnm_deploy.nir_io import write_nir

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    rng = np.random.default_rng(0)
    g = sequential([("fc1", Affine(weight=rng.normal(0, 1.0, (8, 4)))),
                    ("n1", Neuron(shape=(8,), poly=[0.0, 0.9, 0.05], v_th=1.0, dt=1e-3))], (4,))
    graph = tmp_path / "g.nir"
    write_nir(g, graph)
    data = tmp_path / "x.npz"
    np.savez(data, x=(rng.random((8, 20, 4)) < 0.4).astype(np.uint8))
    return {"graph": graph, "data": data, "dir": tmp_path}


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_cli_exits_128_plus_signal_and_leaves_no_output(signum: int, files: dict[str, Path],
                                                        monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from lnm_deploy import backends

    def killed(*a, **kw):  # type: ignore[no-untyped-def]
        os.kill(os.getpid(), signum)
        time.sleep(5)  # the handler raises long before this ends
        raise AssertionError("the signal did not interrupt the run")

    monkeypatch.setitem(backends.BACKENDS, "float", dataclasses.replace(backends.BACKENDS["float"],
                                                                        run=killed))
    before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    out = files["dir"] / "o.npz"
    assert main(["run", str(files["graph"]), "--data", str(files["data"]), "--out", str(out),
                 "--quiet"]) == 128 + signum
    err = capsys.readouterr().err
    assert err == f"lnm-deploy: terminated ({signal.Signals(signum).name})\n"
    assert not out.exists() and not [p for p in files["dir"].iterdir() if p.name.startswith(".")]
    assert {s: signal.getsignal(s) for s in before} == before  # handlers restored


def test_library_code_still_dies_of_sigterm_after_cleanup(tmp_path: Path) -> None:
    """Without the CLI (SIGTERM's default action), ``deferred_termination`` lets the cleanup run and
    then the process dies of the signal, as it would have."""
    script = tmp_path / "s.py"
    script.write_text(
        "import os, signal, time\n"
        "from lnm_deploy.signals import deferred_termination\n"
        "with deferred_termination():\n"
        "    try:\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        time.sleep(10)\n"
        "    finally:\n"
        "        print('cleaned up', flush=True)\n"
        "print('not reached', flush=True)\n")
    p = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=_env(),
                       timeout=60)
    assert p.stdout == "cleaned up\n" and p.returncode == -signal.SIGTERM, (p.stdout, p.stderr)


# ------------------------------------------------------------------------------------------------
# Lava: no orphaned worker processes, no shared memory left


def _session(sid: int) -> list[int]:
    import psutil

    found = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) == sid:
                found.append(proc.pid)
        except (ProcessLookupError, PermissionError):
            continue
    return found


def _lava_dirs(pids: list[int]) -> set[str]:
    """The /dev/shm/lnm-lava-* directories these processes have files of mapped."""
    import psutil

    dirs = set()
    for pid in pids:
        try:
            for m in psutil.Process(pid).memory_maps():
                if "/lnm-lava-" in m.path:
                    dirs.add(os.path.dirname(m.path))
        except (psutil.Error, OSError):
            continue
    return dirs


@pytest.mark.lava
@pytest.mark.slow
@pytest.mark.parametrize(("signum", "group"), [(signal.SIGTERM, True), (signal.SIGHUP, True),
                                               (signal.SIGTERM, False)])
def test_signal_during_lava_run_leaves_no_orphans(signum: int, group: bool, files: dict[str, Path]) -> None:
    """``lnm-deploy run ART --backend lava``, terminated while Lava runs (the whole process group,
    as ``timeout`` and CI runners do, or the CLI process alone): it exits 128 + signum, no process
    of its session survives, its shared-memory directory is gone, no output is written."""
    pytest.importorskip("psutil")
    if sys.version_info[:2] != (3, 10):
        pytest.skip("lava-nc 0.10 installs on Python 3.10 only")
    art = files["dir"] / "a.nir"
    assert main(["calibrate", str(files["graph"]), "--data", str(files["data"]), "--target", "loihi2",
                 "--out", str(art), "--quiet"]) == 0
    long = files["dir"] / "long.npz"
    np.savez(long, x=(np.random.default_rng(1).random((4000, 20, 4)) < 0.4).astype(np.uint8))
    out = files["dir"] / "o.npz"
    log = files["dir"] / "log.txt"  # not a pipe: orphans holding it open would block the read
    with open(log, "w") as fh:
        p = subprocess.Popen([sys.executable, "-m", "lnm_deploy.cli", "run", str(art), "--backend",
                              "lava", "--data", str(long), "--out", str(out), "--quiet"],
                             start_new_session=True, stdout=fh, stderr=subprocess.STDOUT, env=_env())
    ours: set[str] = set()
    survivors: list[int] = []
    try:
        deadline = time.monotonic() + 60
        while not ours and time.monotonic() < deadline and p.poll() is None:
            time.sleep(0.2)
            ours = _lava_dirs(_session(p.pid))  # Lava's recorder processes are running
        assert ours, "Lava did not start"
        time.sleep(1.0)
        assert p.poll() is None, "the run ended before the signal"
        if group:
            os.killpg(p.pid, signum)
        else:
            os.kill(p.pid, signum)
        p.wait(timeout=60)
        deadline = time.monotonic() + 10
        while _session(p.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        survivors = _session(p.pid)
    finally:
        if p.poll() is None:
            p.kill()
        for pid in _session(p.pid):  # whatever is left of the run, and only of it
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        p.wait(timeout=10)
    output = log.read_text()
    assert p.returncode == 128 + signum, output[-2000:]
    assert f"terminated ({signal.Signals(signum).name})" in output and "Traceback" not in output, output
    assert survivors == [], "processes of the run survived it"
    assert not [d for d in ours if os.path.exists(d)], "shared memory left behind"
    assert not out.exists()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGHUP])
def test_a_terminated_that_a_library_turned_into_an_interrupt_still_exits_128_plus_n(
        signum: int, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """Ray's ``ray.wait`` raises a plain ``KeyboardInterrupt`` for whatever a signal handler raised
    in it (Ray 2.60: SIGTERM while Ray tasks ran ended as "interrupted", 130)."""
    import lnm_deploy.cli as cli
    from lnm_deploy.signals import Terminated

    def library_call(args: object) -> int:
        try:
            os.kill(os.getpid(), signum)
            time.sleep(5)  # the handler raises here
        except Terminated:
            raise KeyboardInterrupt from None
        return 0

    monkeypatch.setattr(cli, "cmd_targets", library_call)
    assert main(["targets"]) == 128 + signum
    assert capsys.readouterr().err.strip() == f"lnm-deploy: terminated ({signal.Signals(signum).name})"
    # the next command starts afresh: a real Ctrl-C is an interrupt
    monkeypatch.setattr(cli, "cmd_targets", lambda args: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert main(["targets"]) == 130
    assert capsys.readouterr().err.strip() == "lnm-deploy: interrupted"
