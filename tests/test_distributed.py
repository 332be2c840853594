"""``lnm_deploy.distributed``: results split over workers equal the single-process results (run,
verify, calibrate), on forked processes and on a Ray cluster started here; lost workers are retried
once, then named; bad arguments and a missing Ray are refused with the right exit codes."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from artifact_files import calibrated_files
from test_verify import _net  # input(12) -> fc1 -> lnm1 (recurrent) -> fc2 -> lnm2

from lnm_deploy import distributed as dist
from lnm_deploy.artifact import read_artifact
from lnm_deploy.calibrate import collect_stats
from lnm_deploy.cli import main
from lnm_deploy.errors import DependencyError, LNMDeployError, UserInputError
from lnm_deploy.execute import RunResult
from lnm_deploy.fixedpoint import encode_fxgraph

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return calibrated_files(tmp_path_factory.mktemp("dist"), _net(), samples=45, test=7)


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the local process pool (as without Ray installed)."""
    monkeypatch.setattr(dist, "_ray_module", lambda: None)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ray_cluster() -> Any:
    """A 2-CPU Ray head on 127.0.0.1 for this module, run by ``ray start --block`` so that ending
    that one process stops this cluster alone (``ray stop`` would stop every cluster here)."""
    pytest.importorskip("ray")
    import psutil

    port = _free_port()
    tmp = tempfile.mkdtemp(prefix="lnmray", dir="/tmp")  # short: Ray's socket paths have a limit
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    # Loopback only, no token file shared with other clusters on this machine: no token auth.
    old_auth = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = env["RAY_AUTH_MODE"] = "disabled"
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}",
           "--num-cpus=2", "--include-dashboard=false", "--node-ip-address=127.0.0.1",
           f"--temp-dir={tmp}", "--disable-usage-stats"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:  # the GCS port answers, then the node registers
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.skip("could not start a local Ray head")
            time.sleep(0.2)
        yield address
    finally:
        family = psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []
        proc.send_signal(signal.SIGTERM)  # ray start --block stops its processes on SIGTERM
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        _, alive = psutil.wait_procs(family, timeout=20)
        for p in alive:
            p.kill()
        subprocess.run(["rm", "-rf", tmp], check=False)
        if old_auth is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = old_auth


def assert_same(a: RunResult, b: RunResult) -> None:
    assert np.array_equal(a.output, b.output) and a.output.dtype == b.output.dtype
    assert a.spikes.keys() == b.spikes.keys() and a.states.keys() == b.states.keys()
    for k in a.spikes:
        assert np.array_equal(a.spikes[k], b.spikes[k]) and a.spikes[k].dtype == b.spikes[k].dtype, k
    for n in a.states:
        assert a.states[n].keys() == b.states[n].keys()
        for v in a.states[n]:
            assert np.array_equal(a.states[n][v], b.states[n][v]), (n, v)


def _fx_bytes(fx: Any) -> bytes:
    """The integer network as bytes: every array's dtype, shape and raw bytes, every scalar."""
    out: list[bytes] = []

    def walk(v: Any) -> None:
        if isinstance(v, dict):
            for k in sorted(v):
                out.append(str(k).encode())
                walk(v[k])
        elif isinstance(v, (list, tuple)):
            for w in v:
                walk(w)
        elif isinstance(v, np.ndarray):
            out.append(f"{v.dtype}{v.shape}".encode() + np.ascontiguousarray(v).tobytes())
        else:
            out.append(repr(v).encode())

    walk(encode_fxgraph(fx))
    return b"|".join(out)


def _without_timings(doc: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc, default=str))
    for b in doc["backends"].values():
        b.pop("seconds")
    return doc


# ------------------------------------------------------------------------------------------------
# Shards, arguments


def test_split_is_contiguous_balanced_and_deterministic() -> None:
    assert dist.split(10, 3) == [(0, 4), (4, 7), (7, 10)]
    assert dist.split(2, 5) == [(0, 1), (1, 2)]
    assert dist.split(0, 4) == []
    assert dist.split(5, 1) == [(0, 5)]
    assert dist.format_indices([7, 0, 1, 2, 5, 8]) == "0-2, 5, 7-8"


@pytest.mark.parametrize("bad", [0, -2, 1.5, True, "2"])
def test_bad_worker_counts_are_user_errors(files: dict[str, Any], bad: Any) -> None:
    with pytest.raises(UserInputError, match="--workers"):
        dist.run_sharded("fxsim", files["fx"], files["x"], workers=bad)


def test_cli_refuses_zero_workers_and_ray_address_without_ray(files: dict[str, Any], tmp_path: Path,
                                                               no_ray: None,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "o.npz"
    assert main(["run", str(files["art"]), "--data", str(files["test"]), "--backend", "fxsim",
                 "--out", str(out), "--workers", "0", "--quiet"]) == 2
    assert "--workers must be an integer >= 1" in capsys.readouterr().err
    assert main(["run", str(files["art"]), "--data", str(files["test"]), "--backend", "fxsim",
                 "--out", str(out), "--ray-address", "127.0.0.1:1", "--quiet"]) == 6
    assert "pip install 'lnm-deploy[distributed]'" in capsys.readouterr().err
    with pytest.raises(DependencyError):
        dist.run_sharded("fxsim", files["fx"], files["x"], workers=2, ray_address="127.0.0.1:1")


# ------------------------------------------------------------------------------------------------
# Ray addresses: malformed ones are usage errors, silent or foreign ones a clear error, not a hang

_CLI = "import sys\nfrom lnm_deploy.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def _cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    env.update(extra)
    return env


def _run_args(files: dict[str, Any], tmp_path: Path) -> list[str]:
    return ["run", str(files["art"]), "--data", str(files["test"]), "--backend", "fxsim", "--quiet",
            "--out", str(tmp_path / "o.npz")]


def _cli_with_address(files: dict[str, Any], tmp_path: Path, address: str,
                      **env: str) -> subprocess.CompletedProcess[str]:
    """The command in a process of its own: Ray's connect to a silent address would hang for
    minutes; the generous timeout turns such a hang into a failure instead."""
    return subprocess.run([sys.executable, "-c", _CLI, *_run_args(files, tmp_path), "--ray-address", address],
                          env=_cli_env(**env), capture_output=True, text=True, timeout=180)


@contextlib.contextmanager
def _server(mode: str) -> Any:
    """A TCP server on 127.0.0.1 that is no Ray cluster: ``close`` accepts and closes at once,
    ``silent`` accepts and never answers. Yields ``(port, accepted)``: ``accepted`` is set at the
    first connection."""
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)
    accepted, stop = threading.Event(), threading.Event()
    held: list[socket.socket] = []

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            accepted.set()
            if mode == "close":
                conn.close()
            else:
                held.append(conn)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield int(srv.getsockname()[1]), accepted
    finally:
        stop.set()
        t.join(5)
        for c in held:
            c.close()
        srv.close()


@pytest.mark.parametrize("bad", ["127.0.0.1", "10.0.0.5:abc", "10.0.0.5:70000", "10.0.0.5:0", ":6379",
                                 "ftp://10.0.0.5:6379", "ray://10.0.0.5", "::1:6379", "10.0.0.5:6379/x"])
def test_malformed_ray_address_is_a_usage_error(files: dict[str, Any], tmp_path: Path, bad: str,
                                                monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UserInputError, match="--ray-address"):
        dist.check_ray_address(bad)
    with pytest.raises(UserInputError, match="--ray-address"):  # before any work or any Ray
        dist.run_sharded("fxsim", files["fx"], files["x"], workers=2, ray_address=bad)
    with pytest.raises(SystemExit) as e:
        main([*_run_args(files, tmp_path), "--ray-address", bad])
    assert e.value.code == 2
    assert "--ray-address" in capsys.readouterr().err
    monkeypatch.setenv("RAY_ADDRESS", bad)  # the default, parsed as if given
    with pytest.raises(SystemExit) as e:
        main(_run_args(files, tmp_path))
    assert e.value.code == 2
    assert "$RAY_ADDRESS" in capsys.readouterr().err
    assert not (tmp_path / "o.npz").exists()


def test_ray_address_forms() -> None:
    assert dist.check_ray_address("10.0.0.5:6379") == ("10.0.0.5", 6379)
    assert dist.check_ray_address(" head.example:6380 ") == ("head.example", 6380)
    assert dist.check_ray_address("ray://10.0.0.5:10001") == ("10.0.0.5", 10001)
    assert dist.check_ray_address("[::1]:6379") == ("::1", 6379)
    assert dist.check_ray_address("auto") is None
    with pytest.raises(UserInputError, match="--engine ray"):  # Ray's "local": an instance here
        dist.check_ray_address("local")


def test_unreachable_ray_address_is_a_clear_error(files: dict[str, Any], tmp_path: Path) -> None:
    """A port where nothing listens (a typo): exit 6 at once, naming the address and the fix."""
    pytest.importorskip("ray")
    for address in (f"127.0.0.1:{_free_port()}", f"ray://127.0.0.1:{_free_port()}"):
        r = _cli_with_address(files, tmp_path, address)
        assert r.returncode == 6, r.stderr
        assert address in r.stderr and "the connection was refused (nothing listens on port" in r.stderr, r.stderr
        assert "ray start --head" in r.stderr and "drop --ray-address" in r.stderr, r.stderr
        assert not (tmp_path / "o.npz").exists()


@pytest.mark.parametrize("mode", ["close", "silent"])
def test_a_server_that_is_not_ray_is_a_clear_error(files: dict[str, Any], tmp_path: Path, mode: str) -> None:
    """A port that answers but is no Ray cluster: one that drops the connection, one that never
    answers (Ray's own connect would wait about 40 s per try, 20 tries, uninterruptibly)."""
    pytest.importorskip("ray")
    with _server(mode) as (port, accepted):
        r = _cli_with_address(files, tmp_path, f"127.0.0.1:{port}", **{dist.CONNECT_TIMEOUT_ENV: "1"})
        assert accepted.is_set()
    assert r.returncode == 6, r.stderr
    assert f"127.0.0.1:{port}" in r.stderr and "Ray cluster" in r.stderr, r.stderr
    if mode == "silent":
        assert "nothing answered as a Ray cluster (gRPC) within 1 s" in r.stderr, r.stderr
    assert "ray start --head" in r.stderr


@pytest.mark.parametrize(("sig", "group"), [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_a_signal_stops_a_waiting_connect(files: dict[str, Any], tmp_path: Path, sig: int,
                                          group: bool) -> None:
    """Ctrl-C (SIGINT to the group) or SIGTERM while the command waits for an address to answer
    (here for up to 600 s): the usual interrupt exit, long before the wait would end, and no
    process left behind."""
    pytest.importorskip("ray")
    import psutil

    with _server("silent") as (port, accepted):
        proc = subprocess.Popen([sys.executable, "-c", _CLI, *_run_args(files, tmp_path), "--ray-address",
                                 f"127.0.0.1:{port}"], env=_cli_env(**{dist.CONNECT_TIMEOUT_ENV: "600"}),
                                start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        try:
            assert accepted.wait(120), "the command never connected"
            family = psutil.Process(proc.pid).children(recursive=True)
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
            _, err = proc.communicate(timeout=120)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "interrupted" in err, err
    else:
        assert proc.returncode == 128 + signal.SIGTERM and "terminated (SIGTERM)" in err, err
    _, alive = psutil.wait_procs(family, timeout=10)
    assert not alive
    assert not (tmp_path / "o.npz").exists()


class _FakeRay:
    """``ray.init`` that fails as told, recording the GCS connect tries it was given."""

    def __init__(self, exc: BaseException) -> None:
        self.exc, self.tries, self.shut = exc, None, False

    def init(self, **_: Any) -> None:
        self.tries = os.environ.get("RAY_gcs_server_port_wait_time_s")
        signal.signal(signal.SIGTERM, lambda s, f: sys.exit(s))  # what ray.init installs
        raise self.exc

    def shutdown(self) -> None:
        self.shut = True


def test_join_translates_ray_failures_and_restores_the_sigterm_handler(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from lnm_deploy.signals import Terminated, raise_terminated

    monkeypatch.delenv("RAY_gcs_server_port_wait_time_s", raising=False)
    old = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        ray = _FakeRay(ConnectionError("Failed to connect to Ray cluster at 10.0.0.5:6379"))
        with pytest.raises(DependencyError, match=r"10\.0\.0\.5:6379.*Failed to connect.*ray start --head"):
            dist._join(ray, "10.0.0.5:6379", {})
        assert ray.tries == str(dist.GCS_CONNECT_TRIES) and ray.shut
        assert "RAY_gcs_server_port_wait_time_s" not in os.environ
        assert signal.getsignal(signal.SIGTERM) is raise_terminated
        with pytest.raises(DependencyError, match="same Ray version"):
            dist._join(_FakeRay(RuntimeError("Version mismatch")), "10.0.0.5:6379", {})
        with pytest.raises(Terminated):  # Ray's sys.exit(15) on SIGTERM: an interrupt
            dist._join(_FakeRay(SystemExit(signal.SIGTERM)), "10.0.0.5:6379", {})
        assert signal.getsignal(signal.SIGTERM) is raise_terminated
        monkeypatch.setenv("RAY_gcs_server_port_wait_time_s", "7")  # the user's own is kept
        ray = _FakeRay(ConnectionError("x"))
        with pytest.raises(DependencyError):
            dist._join(ray, "10.0.0.5:6379", {})
        assert ray.tries == "7" and os.environ["RAY_gcs_server_port_wait_time_s"] == "7"
    finally:
        signal.signal(signal.SIGTERM, old)


def test_an_interrupted_local_ray_start_is_shut_down(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C or SIGTERM during the seconds ``ray.init`` takes to start an instance here: what it
    started is shut down, SIGTERM (Ray's own ``sys.exit(15)`` by then) is ``Terminated`` (exit 143,
    not 15), and the SIGTERM handler from before is back."""
    from lnm_deploy.signals import Terminated, raise_terminated

    old = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        for exc, expected in ((KeyboardInterrupt(), KeyboardInterrupt), (SystemExit(signal.SIGTERM), Terminated),
                              (RuntimeError("raylet failed to start"), RuntimeError)):
            ray = _FakeRay(exc)
            with pytest.raises(expected):
                dist._start_local(ray, 2, {})
            assert ray.shut, exc
            assert signal.getsignal(signal.SIGTERM) is raise_terminated
        with pytest.raises(SystemExit):  # another exit code is not Ray's SIGTERM: left as it is
            dist._start_local(_FakeRay(SystemExit(3)), 2, {})
    finally:
        signal.signal(signal.SIGTERM, old)


class _SignalledRay:
    """``ray.init`` that receives signals while it starts, as Ray 2.60's does: it installs its
    SIGTERM handlers through ``ray._private.utils.set_sigterm_handler`` (which ``_init_guard``
    keeps out), starts ``procs`` (``sleep`` processes; ``orphan``: one whose parent has ended,
    as the raylet's agents are when a signal ended the raylet first), sends this process
    ``signals`` (after ``delays`` seconds each) and then returns or raises ``exc``."""

    def __init__(self, signals: list[int], exc: BaseException | None = None, procs: int = 0,
                 orphan: bool = False) -> None:
        self.signals, self.exc, self.procs, self.orphan = signals, exc, procs, orphan
        self.shut, self.started, self.cpp_handler_off = False, [], None
        self.after_signals = False
        handlers = types.SimpleNamespace(set_sigterm_handler=lambda h: signal.signal(signal.SIGTERM, h))
        constants = types.SimpleNamespace(RAY_DISABLE_FAILURE_SIGNAL_HANDLER=False)
        self._private = types.SimpleNamespace(utils=handlers, ray_constants=constants)

    def init(self, **_: Any) -> None:
        self._private.utils.set_sigterm_handler(lambda s, f: sys.exit(s))  # kept out by the guard
        self.cpp_handler_off = self._private.ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER
        for _ in range(self.procs):
            self.started.append(subprocess.Popen(["sleep", "60"]).pid)
        if self.orphan:  # a grandchild whose parent (a shell) exits at once
            out = subprocess.run(["sh", "-c", "sleep 60 </dev/null >/dev/null 2>&1 & echo $!"], capture_output=True, text=True, check=True)
            self.started.append(int(out.stdout))
        for s in self.signals:
            os.kill(os.getpid(), s)
            time.sleep(0.2)  # a Python handler runs at the next bytecode: here, a held one did nothing
        self.after_signals = True
        if self.exc is not None:
            raise self.exc

    def shutdown(self) -> None:
        self.shut = True


def _gone(pids: list[int]) -> bool:
    import psutil

    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = []
        for pid in pids:
            with contextlib.suppress(psutil.Error):
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    alive.append(pid)
        if not alive:
            return True
        time.sleep(0.05)
    return False


def test_a_signal_during_a_local_ray_start_waits_for_it_then_stops_it() -> None:
    """Ray 2.60 itself, SIGTERM to the command alone in the first 2-3 s of a local instance:
    exit 0 after a full run, 30 s waits, SIGABRT, or the raylet's agents left under PID 1.
    ``_init_guard`` holds the first SIGTERM, SIGHUP or SIGINT until ``ray.init`` returns (Ray's
    own handlers kept out), then acts on it as its handler says with the instance shut down."""
    from lnm_deploy.signals import Terminated, raise_terminated

    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGHUP)}
    signal.signal(signal.SIGTERM, raise_terminated)
    signal.signal(signal.SIGHUP, raise_terminated)
    try:
        for sig, expected in ((signal.SIGTERM, Terminated), (signal.SIGHUP, Terminated),
                              (signal.SIGINT, KeyboardInterrupt)):
            ray = _SignalledRay([sig])
            with pytest.raises(expected) as info:
                dist._start_local(ray, 2, {})
            assert ray.after_signals and ray.shut, sig  # held until the init returned, then shut down
            assert ray.cpp_handler_off is True and ray._private.ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER is False
            if expected is Terminated:
                assert info.value.signum == sig
            assert signal.getsignal(signal.SIGTERM) is raise_terminated  # Ray's sys.exit never installed
        # the init failed because of the signal (one to the process group ends Ray's processes):
        # the signal, not Ray's error
        ray = _SignalledRay([signal.SIGTERM], exc=RuntimeError("Failed to connect to GCS"))
        with pytest.raises(Terminated):
            dist._start_local(ray, 2, {})
        assert ray.shut
        # a second signal acts at once, inside the init
        ray = _SignalledRay([signal.SIGTERM, signal.SIGTERM])
        with pytest.raises(Terminated):
            dist._start_local(ray, 2, {})
        assert ray.shut and not ray.after_signals
        # no signal: nothing changes, the init's error is raised as it is
        ray = _SignalledRay([], exc=RuntimeError("raylet failed to start"))
        with pytest.raises(RuntimeError, match="raylet"):
            dist._start_local(ray, 2, {})
        assert signal.getsignal(signal.SIGTERM) is raise_terminated
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def test_what_an_interrupted_ray_start_started_is_ended(monkeypatch: pytest.MonkeyPatch) -> None:
    """``ray.shutdown`` does not know a node whose start was interrupted: the processes the init
    started, orphans included (the raylet's agents once the raylet has ended), are ended."""
    from lnm_deploy.signals import raise_terminated

    pytest.importorskip("psutil")
    monkeypatch.setattr(dist, "INIT_SWEEP_GRACE_S", 0.5)
    old = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        for sigs in ([signal.SIGTERM, signal.SIGTERM], []):
            ray = _SignalledRay(sigs, exc=None if sigs else KeyboardInterrupt(), procs=2,
                                orphan=sys.platform.startswith("linux"))
            with pytest.raises(KeyboardInterrupt):
                dist._start_local(ray, 2, {})
            assert ray.shut and len(ray.started) >= 2
            assert _gone(ray.started), ray.started
    finally:
        signal.signal(signal.SIGTERM, old)


# ------------------------------------------------------------------------------------------------
# Forked processes (no Ray)


@pytest.mark.parametrize("backend", ["fxsim", "float"])
def test_local_pool_run_equals_one_process(files: dict[str, Any], no_ray: None, backend: str) -> None:
    net = files["fx"] if backend == "fxsim" else files["graph"]
    one = dist.run_sharded(backend, net, files["x"], workers=1, record=True)
    for k in (2, 3):
        assert_same(one, dist.run_sharded(backend, net, files["x"], workers=k, record=True))


def test_local_pool_statistics_equal_the_single_pass(files: dict[str, Any], no_ray: None) -> None:
    ref = collect_stats(files["graph"], files["x"], batch_size=8, progress=False, seed=3)
    got = dist.collect_stats_sharded(files["graph"], files["x"], workers=3, batch_size=8, progress=False,
                                     seed=3)
    assert json.dumps(ref.to_dict(), default=str) == json.dumps(got.to_dict(), default=str)


def test_local_pool_retries_a_killed_worker_then_names_lost_samples(
        files: dict[str, Any], no_ray: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ref = dist.run_sharded("fxsim", files["fx"], files["x"], workers=1)
    marker = tmp_path / "killed-once"
    monkeypatch.setenv(dist.CRASH_ENV, f"1:{marker}")
    assert_same(ref, dist.run_sharded("fxsim", files["fx"], files["x"], workers=2))
    assert marker.exists()  # shard 1's first worker was killed, its retry ran
    monkeypatch.setenv(dist.CRASH_ENV, "1:always")
    with pytest.raises(LNMDeployError, match=r"lost twice running shard 1 \(samples 23-44\)"):
        dist.run_sharded("fxsim", files["fx"], files["x"], workers=2)


def _workers_left() -> list[Any]:
    """Our descendants other than multiprocessing's forkserver and resource tracker (they live as
    long as this process)."""
    import psutil

    keep = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")
    return [p for p in psutil.Process().children(recursive=True)
            if not any(k in " ".join(p.cmdline()) for k in keep)]


def test_local_pool_raises_the_work_error_and_leaves_no_workers(files: dict[str, Any], no_ray: None) -> None:
    with pytest.raises(UserInputError, match="binary spikes"):
        dist.run_sharded("fxsim", files["fx"], files["x"] * 2, workers=2)
    assert not _workers_left()


# ------------------------------------------------------------------------------------------------
# Ray


@pytest.mark.slow
def test_a_running_ray_cluster_passes_the_probe(ray_cluster: str) -> None:
    dist.probe_ray_address(ray_cluster)  # answers TCP and the HTTP/2 (gRPC) handshake


def test_ray_cluster_run_and_calibrate_equal_one_process(files: dict[str, Any], ray_cluster: str,
                                                        tmp_path: Path) -> None:
    one, two = tmp_path / "one.npz", tmp_path / "two.npz"
    common = ["run", str(files["art"]), "--data", str(files["calib"]), "--backend", "fxsim", "--states",
              "--quiet"]
    assert main([*common, "--out", str(one)]) == 0
    assert main([*common, "--out", str(two), "--workers", "2", "--ray-address", ray_cluster]) == 0
    a, b = np.load(one), np.load(two)
    assert sorted(a.files) == sorted(b.files)
    for k in a.files:
        assert np.array_equal(a[k], b[k]), k
    # calibrate: the integer network is byte-identical (and so are the recorded statistics)
    arts = []
    for name, extra in (("c1", []), ("c2", ["--workers", "2", "--ray-address", ray_cluster])):
        out = tmp_path / f"{name}.nir"
        assert main(["calibrate", str(files["float"]), "--data", str(files["calib"]), "--target", "loihi2",
                     "--out", str(out), "--quiet", *extra]) == 0
        arts.append(read_artifact(out))
    assert _fx_bytes(arts[0].fx) == _fx_bytes(arts[1].fx)
    assert arts[0].record["calibration"] == arts[1].record["calibration"]


@pytest.mark.slow
def test_ray_retries_a_killed_worker(files: dict[str, Any], ray_cluster: str, tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    ref = dist.run_sharded("fxsim", files["fx"], files["x"], workers=1, record=True)
    marker = tmp_path / "killed-once"
    monkeypatch.setenv(dist.CRASH_ENV, f"0:{marker}")
    got = dist.run_sharded("fxsim", files["fx"], files["x"], workers=2, ray_address=ray_cluster,
                           record=True)
    assert marker.exists()
    assert_same(ref, got)
    monkeypatch.setenv(dist.CRASH_ENV, "0:always")
    with pytest.raises(LNMDeployError, match=r"lost twice running shard 0 \(samples 0-22\)"):
        dist.run_sharded("fxsim", files["fx"], files["x"], workers=2, ray_address=ray_cluster)


@pytest.mark.slow
@pytest.mark.lava
def test_verify_lava_report_identical_with_two_workers(files: dict[str, Any], ray_cluster: str,
                                                       tmp_path: Path) -> None:
    pytest.importorskip("lava")
    docs = []
    for name, extra in (("w1", ["--workers", "1"]), ("w2", ["--workers", "2", "--ray-address", ray_cluster])):
        js = tmp_path / f"{name}.json"
        code = main(["verify", str(files["art"]), "--data", str(files["test"]), "--backend", "lava",
                     "--backend", "fxsim", "--json", str(js), "--quiet", *extra])
        assert code in (0, 1)
        docs.append(json.loads(js.read_text()))
    assert docs[0]["backends"]["lava"]["bit_exact"]
    assert _without_timings(docs[0]) == _without_timings(docs[1])


# ------------------------------------------------------------------------------------------------
# Interrupts: every worker (and every Lava process under it) stops, nothing is left in /dev/shm

_DRIVER = """
import sys
from lnm_deploy.cli import main
sys.exit(main([*sys.argv[2:], "--engine", sys.argv[1]]))
"""


@pytest.mark.slow
@pytest.mark.lava
@pytest.mark.parametrize(("engine", "sig", "group"), [
    ("local", signal.SIGINT, True), ("local", signal.SIGTERM, False), ("local", signal.SIGTERM, True),
    ("ray", signal.SIGTERM, False)])
def test_interrupt_stops_every_worker_and_leaves_nothing(files: dict[str, Any], tmp_path: Path,
                                                         engine: str, sig: int, group: bool) -> None:
    """SIGINT to the whole process group (Ctrl-C at a terminal); SIGTERM to the command alone
    (`kill`) or to its group (`timeout` in the foreground, job schedulers: it also ends the
    forkserver, whose sentinels then say nothing); local processes and a local Ray instance, with
    Lava running in both workers. The command must not exit before its workers have."""
    pytest.importorskip("lava")
    import psutil

    if engine == "ray":
        pytest.importorskip("ray")
    rng = np.random.default_rng(5)
    np.savez(tmp_path / "big.npz", x=(rng.random((1500, 24, 12)) < 0.35).astype(np.uint8))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["RAY_AUTH_MODE"] = "disabled"
    # Workers pinned to one CPU each (the default, kept for Ctrl-C): with the module's Ray head
    # running, this test's own process then stalled 15-45 s (a sleep or a syscall) in every
    # local case of a whole-file run; unpinned, none did (three runs). The signal path does not
    # depend on the pinning.
    if engine == "local" and sig != signal.SIGINT:
        env["LNM_DEPLOY_PIN_WORKERS"] = "0"
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER, engine, "run", str(files["art"]), "--data",
                             str(tmp_path / "big.npz"), "--backend", "lava", "--workers", "2", "--quiet",
                             "--out", str(tmp_path / "out.npz")],
                            env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # What the run leaves in /dev/shm is what appeared there while it ran (Lava's lnm-lava-*
    # recorder directories, multiprocessing's psm_* segments). Reading the workers' memory maps
    # instead took up to 30 s per scan while pinned Lava processes kept both CPUs busy.
    shm_before = set(os.listdir("/dev/shm"))
    seen: dict[int, Any] = {}
    shm: set[str] = set()

    # The command leads its own session, which its workers and their Lava processes inherit: they
    # are found by os.getsid, which reads no /proc/<pid> file (psutil's scans while the pinned Lava
    # processes started were followed by a stall of this process more often: 5 runs of 8 against 1
    # of 8, in runs of these four tests alone). Ray's processes leave the session, so the Ray
    # engine's are also found as children.
    session: set[int] = set()

    def scan() -> None:
        for d in os.listdir("/proc"):
            with contextlib.suppress(OSError, ValueError):
                if os.getsid(int(d)) == proc.pid:
                    session.add(int(d))
        if engine == "ray":
            with contextlib.suppress(psutil.NoSuchProcess):
                seen.update({p.pid: p for p in psutil.Process(proc.pid).children(recursive=True)})

    t_start = time.monotonic()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None:
            scan()
            shm = set(os.listdir("/dev/shm")) - shm_before
            if sum(s.startswith("lnm-lava-") for s in shm) >= 2:  # both shards' Lava networks run
                break
            time.sleep(0.3)
        assert proc.poll() is None, proc.communicate()
        print(f"Lava running in both workers after {time.monotonic() - t_start:.1f} s")
        time.sleep(1.0)
        scan()
        shm |= set(os.listdir("/dev/shm")) - shm_before
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        t_sig = time.monotonic()
        _, err = proc.communicate(timeout=90)
        print(f"stopped {time.monotonic() - t_sig:.1f} s after the signal")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    if sig == signal.SIGINT:
        assert proc.returncode == 130, err.decode()
        assert "interrupted" in err.decode()
    elif engine == "local":
        assert proc.returncode == 128 + signal.SIGTERM, err.decode()
        assert "terminated (SIGTERM)" in err.decode()
    else:  # Ray's wait turns the Terminated raised in it into a KeyboardInterrupt: still 143
        assert proc.returncode == 128 + signal.SIGTERM, err.decode()
        assert "terminated (SIGTERM)" in err.decode()

    session.discard(proc.pid)
    assert session or seen, "no worker or Lava process was seen while the command ran"
    scan()  # anything of the session still there (started after the last scan included)
    session.discard(proc.pid)
    for pid in session - set(seen):
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(pid) == proc.pid:  # the same process, not a new one with a reused id
                seen[pid] = psutil.Process(pid)

    def alive() -> list[tuple[int, str]]:
        out = []
        for p in seen.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    out.append((p.pid, p.name()))
        return out

    def helper(pid: int) -> bool:  # multiprocessing's forkserver and resource tracker
        with contextlib.suppress(psutil.Error):
            cmd = " ".join(psutil.Process(pid).cmdline())
            return ("forkserver" in cmd and "main(" in cmd) or "resource_tracker" in cmd
        return True

    # A worker or a Lava process may still be tearing down (empty command line) for a moment.
    t_end = time.monotonic() + 2.0
    while [p for p in alive() if not helper(p[0])] and time.monotonic() < t_end:
        time.sleep(0.05)
    assert not [p for p in alive() if not helper(p[0])], "a worker or a Lava process outlived the command"
    deadline = time.monotonic() + 10  # the forkserver and resource tracker leave on their own
    while alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not alive()
    assert shm
    # What is new in /dev/shm and is this run's: Lava directories named by one of its processes'
    # ids, and shared-memory segments no live process maps any more (other programs sharing the
    # machine, other test runs' Lava included, keep theirs mapped).
    ours = {proc.pid, *seen}
    new = set(os.listdir("/dev/shm")) - shm_before
    left = {e for e in new if e.startswith("lnm-lava-") and _pid_of(e) in ours}
    left |= {e for e in new if not e.startswith("lnm-lava-")} - _mapped_shm()
    assert not left, left
    assert not (tmp_path / "out.npz").exists()


def _pid_of(entry: str) -> int | None:
    """The creating process's id in a ``lnm-lava-<pid>-XXXX`` directory name."""
    parts = entry.split("-")
    return int(parts[2]) if len(parts) > 3 and parts[2].isdigit() else None


def _mapped_shm() -> set[str]:
    """Names of /dev/shm entries some live process maps (read from /proc/*/maps)."""
    out: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        with contextlib.suppress(OSError):
            for line in maps.read_text().splitlines():
                i = line.find("/dev/shm/")
                if i >= 0:
                    out.add(line[i + len("/dev/shm/"):].split("/")[0].split(" ")[0])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("when", ["first process", "agents"])
def test_sigterm_while_a_local_ray_instance_starts_leaves_nothing(files: dict[str, Any], tmp_path: Path,
                                                                  when: str) -> None:
    """``kill PID`` while ``--engine ray`` starts its local instance: as soon as Ray's first
    process is there, or once the raylet has started its agents (which Ray 2.60 alone left
    running under PID 1). Exit 143 (the command was interrupted), and none of the processes the
    command started is left."""
    pytest.importorskip("ray")
    import psutil

    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["RAY_AUTH_MODE"] = "disabled"
    proc = subprocess.Popen([sys.executable, "-c", _DRIVER, "ray", "run", str(files["art"]), "--data",
                             str(files["test"]), "--backend", "fxsim", "--workers", "2", "--quiet",
                             "--out", str(tmp_path / "out.npz")],
                            env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    me = psutil.Process(proc.pid)
    seen: dict[int, Any] = {}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            with contextlib.suppress(psutil.Error):
                kids = me.children(recursive=True)
                seen.update({p.pid: p for p in kids})
                direct = {p.pid for p in me.children()}
                if kids and (when == "first process" or any(p.pid not in direct for p in kids)):
                    break
            time.sleep(0.02)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:  # what it starts meanwhile too
            with contextlib.suppress(psutil.Error):
                seen.update({p.pid: p for p in me.children(recursive=True)})
            time.sleep(0.05)
        _, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, err.decode()
    assert "terminated (SIGTERM)" in err.decode()
    assert seen
    _, alive = psutil.wait_procs(list(seen.values()), timeout=10)
    assert not alive, [(p.pid, p.name()) for p in alive]
    assert not (tmp_path / "out.npz").exists()


def test_engine_choice_is_validated(tmp_path: Path) -> None:
    from lnm_deploy.distributed import check_engine

    assert check_engine("local", None) == "local" and check_engine("auto", "127.0.0.1:1") == "auto"
    with pytest.raises(UserInputError, match="engine must be one of"):
        check_engine("threads", None)
    with pytest.raises(UserInputError, match="--engine local runs on this machine"):
        check_engine("local", "127.0.0.1:6379")


def test_float_runs_do_not_depend_on_the_number_of_workers(files: dict[str, Any], no_ray: None) -> None:
    """Float results depend in their last bits on the batch one BLAS product holds: a float run is
    made of the same blocks whatever N (bit-identical states, not only spikes)."""
    x = np.concatenate([files["x"]] * 3)  # 135 samples: three blocks, the last one short
    one = dist.run_sharded("float", files["graph"], x, workers=1, record=True)
    for n in (2, 3):
        other = dist.run_sharded("float", files["graph"], x, workers=n, record=True)
        assert np.array_equal(one.output, other.output)
        for layer, st in one.states.items():
            for var, a in st.items():
                assert np.array_equal(a, other.states[layer][var]), (n, layer, var)


def test_more_workers_than_cpus_are_capped_with_a_warning(files: dict[str, Any], no_ray: None) -> None:
    from lnm_deploy.errors import LNMDeployWarning

    cpus = len(os.sched_getaffinity(0))
    with pytest.warns(LNMDeployWarning, match=f"more than the {cpus} CPUs"):
        res = dist.run_sharded("fxsim", files["fx"], files["x"][:8], workers=cpus + 3)
    assert np.array_equal(res.output, dist.run_sharded("fxsim", files["fx"], files["x"][:8]).output)
