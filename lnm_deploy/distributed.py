"""Sample-parallel work on several processes or a Ray cluster (``docs/scale.md``).

Three kinds of work split by samples: a backend run (``run_sharded``: ``run``, ``verify``), and the
statistics pass of calibration (``collect_stats_sharded``). The samples are cut into ``workers``
contiguous shards (``split``, deterministic), each shard is one call on one worker (for Lava: one
compiled network for the whole shard) and the results are merged in shard order, so the merged
result does not depend on the number of workers.

Engines, chosen by ``workers``, ``ray_address`` and ``engine`` ("auto", "ray", "local"):

- ``workers=1`` and no address: in this process, exactly as without this module.
- ``workers=N > 1``, no address, ``engine`` "auto" or "local": N local processes, forked from a
  ``forkserver`` (the network and the samples are pickled to each once), each pinned to one CPU
  (``_pin``). The fastest on one machine: measured 0.65-0.69x the 1-worker wall time for the demo's
  Lava verify on 2 cores, against 1.4-1.6x for a local Ray instance (seconds to start and stop).
- ``workers=N > 1`` with ``engine="ray"``: ``ray.init(num_cpus=N, include_dashboard=False)`` on this
  machine, one task per shard; the network and the samples are put into the object store once.
- ``ray_address``: join that cluster (``ray.init(address=...)``); ``workers=None`` then means one
  shard per CPU of the cluster. Needs Ray (``DependencyError`` otherwise). The address is checked
  before Ray is asked (``check_ray_address``: ``host:port``, ``ray://host:port`` or ``auto``, else
  ``UserInputError``; ``probe_ray_address``: something must answer there, as an HTTP/2 (gRPC)
  server, within ``CONNECT_TIMEOUT_S``, else ``DependencyError``): Ray itself retries a silent
  address for minutes and cannot be interrupted while it does.

A worker that dies (killed, out of memory, a lost node) has its shard run once more; a second loss
raises ``LNMDeployError`` naming the shard's samples. An exception raised by the work itself (bad
input, an unsupported node) is raised as is, without retry. Ctrl-C or SIGTERM stop every worker
(Ray tasks are cancelled, local workers get SIGTERM, which they turn into ``KeyboardInterrupt``
so that a Lava run stops its runtime and removes its ``/dev/shm`` files) before the interrupt
propagates; a Ray instance started here is shut down in every case. A signal while a local Ray
instance starts is held until it has started, and what an interrupted start left is killed
(``_init_guard``).
"""

from __future__ import annotations

import contextlib
import multiprocessing.connection
import multiprocessing.util
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from lnm_deploy.errors import DependencyError, LNMDeployError, LNMDeployWarning, UserInputError
from lnm_deploy.execute import RunResult
from lnm_deploy.signals import Terminated, raise_terminated

#: What to install for Ray (the ``distributed`` extra).
RAY_INSTALL = "pip install 'lnm-deploy[distributed]'"
#: Test hook, read by the worker: ``"<shard>:<marker file>"`` kills the worker that runs that shard
#: (SIGKILL, mid-shard) unless the marker file exists, and creates the marker first: the first
#: attempt dies, the retry succeeds. ``"<shard>:always"`` kills every attempt.
CRASH_ENV = "LNM_DEPLOY_TEST_CRASH"
#: Seconds a stopped worker gets to stop its own runtime (Lava) before it is killed.
STOP_GRACE_S = 10.0  # seconds a worker gets to stop its Lava runtime after SIGTERM, then SIGKILL


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` covers items ``lo .. hi - 1`` (samples, or batches for the statistics);
    ``samples``: the sample indices (of the caller's array) it holds, for messages and progress."""

    index: int
    lo: int
    hi: int
    samples: tuple[int, ...]

    def describe(self) -> str:
        return f"shard {self.index} (samples {format_indices(self.samples)})"


def format_indices(idx: Any) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2, 5, 7-8"`` (sorted, runs collapsed)."""
    vals = sorted(int(i) for i in idx)
    parts: list[str] = []
    i = 0
    while i < len(vals):
        j = i
        while j + 1 < len(vals) and vals[j + 1] == vals[j] + 1:
            j += 1
        parts.append(str(vals[i]) if i == j else f"{vals[i]}-{vals[j]}")
        i = j + 1
    return ", ".join(parts)


def check_workers(workers: Any) -> int | None:
    """``workers`` as an int >= 1 (None stays None: 1 locally, the cluster's CPUs with an address);
    ``UserInputError`` otherwise."""
    if workers is None:
        return None
    if isinstance(workers, bool) or not isinstance(workers, (int, np.integer)) or workers < 1:
        raise UserInputError(f"--workers must be an integer >= 1, got {workers!r}")
    return int(workers)


ENGINES: tuple[str, ...] = ("auto", "ray", "local")
#: Environment variable: "0" stops local workers from being pinned to one CPU each (``_pin``).
PIN_ENV = "LNM_DEPLOY_PIN_WORKERS"


def check_engine(engine: Any, ray_address: str | None) -> str:
    """``engine`` for ``workers > 1`` on this machine: "ray" (a local Ray instance), "local" (forked
    processes), "auto" (Ray if installed, else local). ``UserInputError`` for anything else, for
    "local" together with a Ray address, and for a malformed address (``check_ray_address``)."""
    if engine not in ENGINES:
        raise UserInputError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if ray_address:
        check_ray_address(ray_address)
    if engine == "local" and ray_address:
        raise UserInputError("--engine local runs on this machine; drop --ray-address (or $RAY_ADDRESS)")
    return str(engine)


#: Seconds the address of a Ray cluster gets to accept a TCP connection and to answer as an HTTP/2
#: (gRPC) server, before Ray is asked to join it (``probe_ray_address``). Ray's own connect
#: (``ray.init(address=...)``, Ray 2.x) retries a silent address 20 times for about 40 s each (a
#: 5 s channel connect, a 5 s pubsub connect, a 30 s wait for the cluster id, all in C++, where
#: Ctrl-C and SIGTERM are only seen when a wait ends): a typo would hang for minutes. A cluster that
#: runs answers in milliseconds on a LAN; 3 s leave room for a slow link without a long wait.
CONNECT_TIMEOUT_S = 3.0
#: Test hook: seconds to use instead of ``CONNECT_TIMEOUT_S`` (a long wait to send a signal into).
CONNECT_TIMEOUT_ENV = "LNM_DEPLOY_RAY_CONNECT_TIMEOUT_S"
#: How many times ``ray.init`` tries to reach the cluster's GCS once the address answered
#: (``RAY_gcs_server_port_wait_time_s``, read at each ``ray.init`` by Ray 2.60, the pinned version;
#: older versions that ``ray>=2.9`` admits ignore it and retry as before; its default is 20
#: tries of about 40 s when the GCS does not answer). The probe already saw a gRPC server there: a
#: failure now (another service, another cluster id, TLS) does not heal by retrying. A value the
#: user set in the environment is kept.
GCS_CONNECT_TRIES = 1
_GCS_WAIT_ENV = "RAY_gcs_server_port_wait_time_s"
#: Ray's word for "find the cluster running on this machine" (``ray start`` records its address).
RAY_AUTO = "auto"
_RAY_CLIENT = "ray://"
#: What to do when nothing answers at a Ray address (the end of the messages).
_RAY_FIX = ("start the cluster there (`ray start --head`), check the address, or drop --ray-address "
            "(and $RAY_ADDRESS) to run on this machine")


def check_ray_address(address: str) -> tuple[str, int] | None:
    """``address`` parsed: ``(host, port)`` for ``host:port`` or ``ray://host:port`` (Ray Client;
    IPv6 hosts in brackets, ``[::1]:6379``), None for ``auto`` (Ray's own lookup of a cluster
    started on this machine). ``UserInputError`` for anything else: no port, a port that is not a
    number in 1..65535, an empty host, another ``scheme://``."""
    text = address.strip()
    if text == RAY_AUTO:
        return None
    forms = "expected host:port, ray://host:port or auto"
    if text == "local":  # ray.init(address="local") starts an instance here: that is --engine ray
        raise UserInputError(f"--ray-address {address!r} (or $RAY_ADDRESS): to start Ray on this machine, "
                             "drop --ray-address and give --workers N --engine ray; for a cluster, "
                             f"{forms}")
    rest = text[len(_RAY_CLIENT):] if text.startswith(_RAY_CLIENT) else text
    if "://" in rest or "/" in rest:
        raise UserInputError(f"--ray-address {address!r} (or $RAY_ADDRESS): {forms}")
    host, sep, port = rest.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not sep:
        raise UserInputError(f"--ray-address {address!r} (or $RAY_ADDRESS) has no port: {forms} "
                             "(a Ray head listens on 6379 unless told otherwise)")
    if not host or (":" in host and not rest.startswith("[")):
        raise UserInputError(f"--ray-address {address!r} (or $RAY_ADDRESS) has no host: {forms} "
                             "(an IPv6 host in brackets: [::1]:6379)")
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise UserInputError(f"--ray-address {address!r} (or $RAY_ADDRESS): the port must be a number "
                             f"in 1..65535, got {port!r}")
    return host, int(port)


def _connect_timeout() -> float:
    with contextlib.suppress(ValueError):
        return max(0.1, float(os.environ.get(CONNECT_TIMEOUT_ENV, CONNECT_TIMEOUT_S)))
    return CONNECT_TIMEOUT_S


#: The client's HTTP/2 connection preface and an empty SETTINGS frame (RFC 9113 3.4): a gRPC server
#: (a Ray GCS, a Ray Client server) answers with its own SETTINGS frame (type 0x4).
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def probe_ray_address(address: str) -> None:
    """Check that a Ray cluster can answer at ``address`` before Ray is asked to join it: a TCP
    connection, then (unless Ray uses TLS, ``RAY_USE_TLS``) an HTTP/2 handshake, each within
    ``CONNECT_TIMEOUT_S``. ``auto`` is resolved as Ray resolves it (the cluster ``ray start``
    recorded on this machine, else any running GCS); nothing there is Ray's ``ConnectionError``.

    Raises ``UserInputError`` (a malformed address) or ``DependencyError`` naming the address, what
    did not answer and the fix. Ctrl-C and SIGTERM (with ``raise_terminated`` installed) interrupt
    the waits at once."""
    parsed = check_ray_address(address)
    timeout = _connect_timeout()
    if parsed is None:  # auto
        try:
            from ray._private import services  # Ray's lookup; private, hence guarded

            found = services.canonicalize_bootstrap_address_or_die(RAY_AUTO)
        except (ImportError, AttributeError):
            return  # another Ray: ray.init does the lookup, its ConnectionError is translated
        except ValueError as e:  # $RAY_ADDRESS, which Ray prefers to auto
            raise UserInputError(f"--ray-address auto: $RAY_ADDRESS: {e}") from None
        except ConnectionError as e:
            raise DependencyError(f"--ray-address auto found no Ray cluster running on this machine "
                                  f"({e}); {_RAY_FIX}") from None
        parsed = check_ray_address(found)
        assert parsed is not None
        address = f"auto ({found})"
    host, port = parsed
    where = f"the Ray address {address}"
    try:
        sock = socket.create_connection((host, port), timeout=timeout)
    except socket.gaierror as e:
        raise DependencyError(f"{where}: unknown host {host!r} ({e.strerror}); {_RAY_FIX}") from None
    except ConnectionRefusedError:
        raise DependencyError(f"{where}: the connection was refused (nothing listens on port {port} of "
                              f"{host}); {_RAY_FIX}") from None
    except OSError as e:
        why = "" if isinstance(e, TimeoutError) else f" ({e.strerror or e})"
        raise DependencyError(f"{where}: nothing answered within {timeout:g} s{why}; {_RAY_FIX}") from None
    with sock:
        if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
            return  # a TLS handshake would be needed first: Ray's own connect checks the rest
        try:
            sock.sendall(_H2_PREFACE)
            head = b""
            while len(head) < 9:
                chunk = sock.recv(9 - len(head))
                if not chunk:
                    break
                head += chunk
        except TimeoutError:
            raise DependencyError(f"{where} accepted a connection but nothing answered as a Ray cluster "
                                  f"(gRPC) within {timeout:g} s; {_RAY_FIX}") from None
        except OSError as e:
            raise DependencyError(f"{where} accepted a connection, then dropped it ({e.strerror or e}): "
                                  f"it is not a Ray cluster; {_RAY_FIX}") from None
        if len(head) < 9 or head[3] != 0x04:
            raise DependencyError(f"{where} answered, but not as a Ray cluster (no gRPC handshake: "
                                  f"{'the connection was closed' if len(head) < 9 else 'another protocol'}"
                                  f"); {_RAY_FIX}")


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """``n`` items in at most ``parts`` contiguous ``(lo, hi)`` ranges, sizes differing by at most
    one, larger ones first; no empty range (``[]`` for ``n = 0``)."""
    parts = max(1, min(parts, n))
    base, extra = divmod(n, parts)
    out, lo = [], 0
    for k in range(parts if n else 0):
        hi = lo + base + (1 if k < extra else 0)
        out.append((lo, hi))
        lo = hi
    return out


def scaled(workers: int | None, ray_address: str | None) -> bool:
    """Whether work leaves this process (``workers > 1`` or a Ray address)."""
    return bool(ray_address) or (workers is not None and workers > 1)


def _ray_module() -> Any:
    """``ray`` or None when it is not installed (tests replace this to force the local pool)."""
    try:
        import ray
    except ImportError:
        return None
    return ray


# ------------------------------------------------------------------------------------------------
# The worker side


def _maybe_crash(shard: int, spec: str | None) -> None:
    if not spec:
        return
    which, _, marker = spec.partition(":")
    if int(which) != shard:
        return
    if marker != "always":
        try:
            fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def _work(fn: Callable[..., Any], payload: Any, part: tuple[int, int, int], crash: str | None) -> Any:
    """Run shard ``part = (index, lo, hi)`` on a worker (the sample list stays with the driver)."""
    index, lo, hi = part
    _maybe_crash(index, crash)
    return fn(payload, lo, hi)


def _pin(index: int) -> None:
    """Pin local worker ``index`` (and the processes it forks: Lava's) to one CPU of those this
    process may use, round-robin. One Lava network keeps about 1.6 cores busy; two unpinned ones
    on 2 cores slow each other down so much that 2 workers are no faster than 1 (measured 0.97x),
    pinned they take 0.6-0.7x. ``LNM_DEPLOY_PIN_WORKERS=0`` turns it off."""
    if os.environ.get(PIN_ENV, "1") == "0" or not hasattr(os, "sched_setaffinity"):
        return
    with contextlib.suppress(OSError):
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) > 1:
            os.sched_setaffinity(0, {cpus[index % len(cpus)]})


def _kill_rest_of_group() -> None:
    """SIGKILL every other process of this worker's process group: what a Lava network interrupted
    while it started leaves behind (its processes wait on each other forever, holding shared memory
    and the command's output pipes open). Linux's /proc; elsewhere nothing."""
    me, group = os.getpid(), os.getpgrp()
    if group != me:
        return  # not our own group (setpgid failed): never signal the command's
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == me:
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                with open(f"/proc/{entry}/stat", "rb") as f:
                    stat = f.read()
                if int(stat[stat.rindex(b")") + 2:].split()[2]) == group:  # field 5: pgrp
                    os.kill(int(entry), signal.SIGKILL)


def _child(fn: Callable[..., Any], payload: Any, part: tuple[int, int, int], crash: str | None,
           conn: Any) -> None:
    """A local worker: run the shard, send ``(status, value)`` and leave without atexit handlers.

    It leads a process group of its own: Ctrl-C at a terminal reaches only the driver, which stops
    the workers with SIGTERM (a KeyboardInterrupt here, so a Lava run stops its runtime), and what
    is left in the group when the worker ends is killed (``_kill_rest_of_group``)."""
    with contextlib.suppress(OSError):
        os.setpgid(0, 0)
    signal.signal(signal.SIGTERM, raise_terminated)  # a KeyboardInterrupt: Lava stops its runtime
    _pin(part[0])
    # tqdm would create a multiprocessing lock (a named semaphore) for nothing: a thread lock will do.
    with contextlib.suppress(ImportError):
        from tqdm import tqdm

        tqdm.set_lock(threading.RLock())
    code = 0
    try:
        try:
            msg: tuple[str, Any] = ("ok", _work(fn, payload, part, crash))
        except KeyboardInterrupt:
            msg, code = ("interrupted", None), 130
        except BaseException as e:  # the work's own error, raised again in the parent
            msg = ("error", e)
        try:
            conn.send(msg)
        except Exception as e:  # an unpicklable result or error
            conn.send(("error", LNMDeployError(f"shard {part[0]}: {type(e).__name__}: {e}")))
        conn.close()
    finally:
        _kill_rest_of_group()
        # os._exit skips the finalizers that unlink named semaphores (numba creates two when it is
        # imported); run them, or the resource tracker warns of "leaked semaphore objects".
        with contextlib.suppress(Exception):
            multiprocessing.util._run_finalizers()  # type: ignore[attr-defined]
        os._exit(code)


# ------------------------------------------------------------------------------------------------
# The driver side


@contextlib.contextmanager
def _sigterm_as_interrupt(force: bool = False) -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt here while workers run, so the same clean-up runs as for
    Ctrl-C. Only where nobody else handles SIGTERM (the default action), or with ``force``: inside
    a Ray session started here (``ray.init`` installs ``sys.exit(15)`` as the handler;
    ``_init_guard`` puts the one before back after it)."""
    old = signal.getsignal(signal.SIGTERM)
    if threading.current_thread() is not threading.main_thread() or \
            (old not in (signal.SIG_DFL, None) and not force):
        yield
        return
    signal.signal(signal.SIGTERM, raise_terminated)  # Terminated: a KeyboardInterrupt, exit 143
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if old is None else old)


def _lost(shard: Shard, why: str) -> LNMDeployError:
    return LNMDeployError(f"a worker was lost twice running {shard.describe()} ({why}); those samples "
                          "have no result: rerun, with fewer --workers or more memory per worker")


def _run_local(fn: Callable[..., Any], payload: Any, shards: list[Shard], on_done: Callable[[Shard], None]
               ) -> list[Any]:
    """One process per shard, all at once; a dead one is restarted once.

    The processes come from a ``forkserver`` (a clean process started once, with numpy and this
    module loaded): forking this process itself is unsafe once OpenMP threads ran in it (the
    numerical kernels), and a fresh interpreter per worker (``spawn``) costs seconds of imports.
    Asking for the named context leaves the default start method unset (Lava sets it)."""
    ctx = multiprocessing.get_context("forkserver")
    # Not Lava: imported in the forkserver it leaves two servers and the run hangs (tried).
    ctx.set_forkserver_preload(["numpy", "lnm_deploy.distributed"])
    crash = os.environ.get(CRASH_ENV)
    results: dict[int, Any] = {}
    running: dict[int, tuple[Any, Any, int]] = {}  # shard -> (process, parent end, attempt)

    def start(shard: Shard, attempt: int) -> None:
        parent, child = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_child, args=(fn, payload, (shard.index, shard.lo, shard.hi), crash, child),
                        name=f"lnm-shard-{shard.index}")
        p.start()
        child.close()
        running[shard.index] = (p, parent, attempt)

    try:
        for s in shards:
            start(s, 0)
        while running:
            waitables = [w for p, conn, _ in running.values() for w in (conn, p.sentinel)]
            multiprocessing.connection.wait(waitables, timeout=1.0)
            for idx in list(running):
                p, conn, attempt = running[idx]
                msg = None
                if conn.poll():
                    try:
                        msg = conn.recv()
                    except EOFError:
                        msg = None
                elif p.is_alive():
                    continue
                p.join()
                conn.close()
                del running[idx]
                shard = shards[idx]
                if msg is None or msg[0] == "interrupted":
                    why = f"exit code {p.exitcode}"
                    if attempt:
                        raise _lost(shard, why)
                    start(shard, attempt + 1)
                elif msg[0] == "error":
                    raise msg[1]
                else:
                    results[idx] = msg[1]
                    on_done(shard)
    finally:
        _stop_local(running)
    return [results[s.index] for s in shards]


def _pid_running(pid: int) -> bool:
    """``pid`` exists and is not a zombie (workers are the forkserver's children, not ours, and a
    group SIGTERM may have ended the forkserver: neither its sentinels nor ``waitpid`` tell)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2 : stat.rindex(b")") + 3] != b"Z"
    except (OSError, ValueError):
        return True


def _stop_local(running: dict[int, tuple[Any, Any, int]]) -> None:
    """Stop the running workers: SIGTERM (a KeyboardInterrupt in the worker: Lava stops its
    runtime), wait up to ``STOP_GRACE_S`` for each to end, then SIGKILL the worker's whole process
    group (it leads one: whatever it left, Lava's processes included). Waits on pids, so it works
    even when the forkserver is gone."""
    procs = [p for p, _, _ in running.values()]
    for p in procs:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for p in procs:
        while _pid_running(p.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
    for p in procs:
        with contextlib.suppress(OSError):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            p.join(0.5)
    for _, conn, _ in running.values():
        conn.close()
    running.clear()


def _ray_crash_errors(ray: Any) -> tuple[type[BaseException], ...]:
    names = ("WorkerCrashedError", "NodeDiedError", "ObjectLostError", "OwnerDiedError",
             "LocalRayletDiedError", "ActorDiedError", "OutOfMemoryError")
    return tuple(getattr(ray.exceptions, n) for n in names if hasattr(ray.exceptions, n))


def _ray_task(fn: Callable[..., Any], payload: Any, part: tuple[int, int, int], crash: str | None) -> Any:
    return _work(fn, payload, part, crash)


@contextlib.contextmanager
def ray_session(workers: int | None, ray_address: str | None) -> Iterator[tuple[Any, int]]:
    """Ray, initialised for this block: joined at ``ray_address``, else a local instance with
    ``workers`` CPUs; yields ``(ray, shards)`` (``workers``, or the cluster's CPUs when None).
    A session that was already initialised is used and left running; one started here is shut
    down on the way out."""
    ray = _ray_module()
    if ray is None:
        raise DependencyError(f"--ray-address needs Ray ({RAY_INSTALL})")
    owned = not ray.is_initialized()
    if owned:
        common: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR"}
        if ray_address:
            probe_ray_address(ray_address)
            _join(ray, ray_address, common)
        else:
            _start_local(ray, workers, common)
    try:
        n = workers if workers is not None else max(1, int(ray.cluster_resources().get("CPU", 1)))
        yield ray, n
    finally:
        if owned:
            ray.shutdown()


#: Seconds a SIGTERM, SIGHUP or SIGINT that arrives during ``ray.init`` waits for the init to
#: complete before it acts anyway (a second signal acts at once).
INIT_DEFER_S = 10.0
#: Seconds the main thread gets to leave ``ray.init`` once the processes it started have ended
#: during a held signal; after that the process exits with 128 + the signal (``_watch_init``).
INIT_STUCK_S = 5.0
#: Seconds the processes a failed ``ray.init`` started get to end after ``ray.shutdown`` before they
#: are killed (SIGKILL).
INIT_SWEEP_GRACE_S = 2.0


def _descendants() -> dict[tuple[int, float], Any]:
    """This process's descendants (psutil processes, keyed by pid and start time, which together
    name one process: a pid can be reused)."""
    import psutil

    found = {}
    with contextlib.suppress(psutil.Error):
        for p in psutil.Process().children(recursive=True):
            with contextlib.suppress(psutil.Error):
                found[(p.pid, p.create_time())] = p
    return found


def _descendants_since(before: set[tuple[int, float]]) -> list[Any]:
    """This process's descendants that are not in ``before`` (``_descendants()`` when a
    ``ray.init`` began): the processes Ray started (the GCS, the raylet, the raylet's agents and
    workers). Compared by identity, not by start time: psutil's ``create_time`` is off by up to
    a second (the boot time it adds is whole seconds)."""
    return [p for key, p in _descendants().items() if key not in before]


def _sweep(procs: list[Any]) -> None:
    """Wait up to ``INIT_SWEEP_GRACE_S`` for ``procs`` to end, then SIGKILL those still there."""
    import psutil

    with contextlib.suppress(psutil.Error):
        _, alive = psutil.wait_procs(procs, timeout=INIT_SWEEP_GRACE_S)
        for p in alive:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(alive, timeout=INIT_SWEEP_GRACE_S)


def _child_subreaper(on: bool | None) -> bool | None:
    """Linux: make this process a child subreaper (``prctl(PR_SET_CHILD_SUBREAPER)``), so that the
    processes a ``ray.init`` starts stay its descendants when their parent dies (the raylet's
    agents and workers, if a signal to the process group ended the raylet first) and the sweep
    finds them. Returns the setting before (None where it cannot be read or set: then nothing
    changes); ``on`` None does nothing."""
    if on is None or not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        before = ctypes.c_int(0)
        if libc.prctl(37, ctypes.byref(before), 0, 0, 0) != 0:  # PR_GET_CHILD_SUBREAPER
            return None
        if libc.prctl(36, int(on), 0, 0, 0) != 0:  # PR_SET_CHILD_SUBREAPER
            return None
        return bool(before.value)
    except (OSError, AttributeError):
        return None


def _watch_init(rfd: int, pid: int, signums: frozenset[int], before: set[tuple[int, float]],
                stop: threading.Event) -> None:
    """A thread while ``ray.init`` runs: ``rfd`` is the read end of the signal wakeup fd
    (``signal.set_wakeup_fd``), to which Python's C-level handler writes each signal's number
    at once, even while the main thread is inside Ray's C++ and no Python handler can run. From
    the first of ``signums`` on, it sends that signal again (which then acts at once: see
    ``_init_guard``) after ``INIT_DEFER_S``, or as soon as one of the processes the init had
    started has ended. The init cannot complete then: a signal to the whole process group ends
    Ray's processes too, and Ray's C++ then waits for them (30-60 s, measured) or ends this
    process itself ("Failed to register worker to Raylet", "Failed to connect to GCS within 60
    seconds": exit 1), where no ``finally`` runs. So every process the init started is killed
    first, here, and if the main thread has not left Ray's C++ ``INIT_STUCK_S`` later, the process
    exits with ``128 + signum`` (``os._exit``: nothing of this process's own needs cleaning while
    Ray starts, and Ray's C++ would end it anyway)."""
    import select

    import psutil

    signum = 0
    while not signum:
        if stop.is_set():
            return
        with contextlib.suppress(OSError, ValueError):
            if select.select([rfd], [], [], 0.1)[0]:
                signum = next((b for b in os.read(rfd, 256) if b in signums), 0)
    procs = _descendants_since(before)
    deadline = time.monotonic() + INIT_DEFER_S
    while not stop.wait(0.1):
        try:
            gone = any(not p.is_running() or p.status() == psutil.STATUS_ZOMBIE for p in procs)
        except psutil.Error:
            gone = True
        if gone:
            for p in _descendants_since(before):
                with contextlib.suppress(psutil.Error):
                    p.kill()
        if gone or time.monotonic() >= deadline:
            with contextlib.suppress(OSError):
                os.kill(pid, signum)
            if gone and not stop.wait(INIT_STUCK_S):
                # Ray's C++ still holds the main thread, waiting for a GCS that is gone: it would end
                # the process itself with exit 1 after 60 s (measured). Exit as the signal asked,
                # with nothing of Ray's left (killed above); no cleanup of this process's own is
                # pending while Ray starts.
                os._exit(128 + signum)
            return


def _act_on(signum: int, handler: Any) -> None:
    """What ``signum`` would have done under ``handler`` (a callable runs; SIGTERM's default
    action is ``Terminated``, as everywhere in this module)."""
    if callable(handler):
        handler(signum, None)
    elif signum == signal.SIGTERM:
        raise Terminated(signum)


@contextlib.contextmanager
def _init_guard(ray: Any) -> Iterator[None]:
    """Around a ``ray.init``: an interrupt during it stops the command cleanly, and nothing the
    init started is left behind.

    Measured on Ray 2.60 without this guard, SIGTERM to the command in the first seconds of a
    local instance exited 0 after running to the end (Ray's handler raised in an at-fork hook,
    where Python ignores exceptions), exited after 30 s (a head node's handler waits
    ``RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S`` for the node to drain), ended in SIGABRT (the C++
    core worker's failure-signal handler) or in SIGSEGV at exit (an init interrupted half way),
    or left the raylet's ``ray::DashboardAgent`` and ``ray::RuntimeEnvAgent`` running under PID 1
    (``ray.shutdown`` does not know a node whose start was interrupted). So:

    * In the main thread, the first SIGTERM, SIGHUP or SIGINT is held until the init returns
      (a local instance starts in 2-3 s), then acts as its handler says (``Terminated``,
      ``KeyboardInterrupt``) and the complete instance is shut down by the caller's ``finally``.
      A second signal, or the first after ``INIT_DEFER_S``, acts at once. Signals that were
      ignored, or SIGHUP/SIGINT with their default action, are left alone.
    * Ray's own SIGTERM handlers are not installed meanwhile (``ray._private.utils.
      set_sigterm_handler`` is replaced for the call), nor the core worker's C++ failure-signal
      handler (``ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER`` for the call). Both are
      private, hence looked up and left alone where missing; a ``SystemExit(15)`` from Ray's
      handler is then turned into ``Terminated``.
    * An init that does not complete (an error, an interrupt that acted at once) is shut down,
      and the processes it started are ended: this process's descendants created since the init
      began, listed before anything is stopped; those still there ``INIT_SWEEP_GRACE_S`` after
      ``ray.shutdown`` are killed (SIGKILL).

    The handlers there were before are put back afterwards, whatever happens (``ray_session``'s
    caller installs the one for the session). Outside the main thread, only the shutdown and the
    sweep apply."""
    main_thread = threading.current_thread() is threading.main_thread()
    before = set(_descendants())
    held: list[int] = []
    old: dict[int, Any] = {}
    stop = threading.Event()
    private = getattr(ray, "_private", None)
    utils: Any = getattr(private, "utils", None)
    constants: Any = getattr(private, "ray_constants", None)
    ray_setter = getattr(utils, "set_sigterm_handler", None) if main_thread else None
    cpp_handler_off = getattr(constants, "RAY_DISABLE_FAILURE_SIGNAL_HANDLER", None) if main_thread else None
    wake_r = wake_w = None
    watcher: threading.Thread | None = None
    old_wakeup = -1
    if main_thread:
        for signum in (signal.SIGTERM, getattr(signal, "SIGHUP", None), signal.SIGINT):
            if signum is None:
                continue
            prev = signal.getsignal(signum)
            if prev is signal.SIG_IGN or (prev in (signal.SIG_DFL, None) and signum != signal.SIGTERM):
                continue

            def hold(s: int, frame: Any, prev: Any = prev) -> None:
                held.append(s)
                if len(held) > 1 and not stop.is_set():  # the first acts when the init returns
                    _act_on(s, prev)

            old[signum] = signal.signal(signum, hold)
        if ray_setter is not None:
            utils.set_sigterm_handler = lambda handler: None
        if cpp_handler_off is False:
            constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True
        if old:
            wake_r, wake_w = socket.socketpair()
            wake_r.setblocking(False)
            wake_w.setblocking(False)
            try:
                old_wakeup = signal.set_wakeup_fd(wake_w.fileno(), warn_on_full_buffer=False)
            except (ValueError, OSError):
                wake_r.close()
                wake_w.close()
            else:
                watcher = threading.Thread(target=_watch_init,
                                           args=(wake_r.fileno(), os.getpid(), frozenset(old), before, stop),
                                           name="lnm-deploy-ray-init-signals", daemon=True)
                watcher.start()
    subreaper_before = _child_subreaper(True)
    ok = False
    failed: Exception | None = None
    try:
        try:
            yield
        except SystemExit as e:  # Ray's SIGTERM handler, where it could not be kept out
            if e.code != signal.SIGTERM:
                raise
            raise Terminated(signal.SIGTERM) from None
        except Exception as e:
            if not held:
                raise
            failed = e  # a held signal made the init fail (one to the process group ends Ray's processes)
        finally:
            stop.set()
            if watcher is not None:
                signal.set_wakeup_fd(old_wakeup)
                watcher.join(timeout=1.0)
            for end in (wake_r, wake_w):
                if end is not None:
                    end.close()
            _child_subreaper(subreaper_before)
            if ray_setter is not None:
                utils.set_sigterm_handler = ray_setter
            if cpp_handler_off is False:
                constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = False
            for signum, handler in old.items():
                signal.signal(signum, handler)
        if held:  # the held signal acts now (Ray is shut down here if it raises, else by the caller)
            _act_on(held[0], old.get(held[0]))
        if failed is not None:
            raise failed
        ok = True
    finally:
        if not ok:
            started = _descendants_since(before)
            with contextlib.suppress(Exception):
                ray.shutdown()
            _sweep(started)


def _start_local(ray: Any, workers: int | None, common: dict[str, Any]) -> None:
    """``ray.init(address="local")``: a Ray instance on this machine with ``workers`` CPUs, started
    under ``_init_guard`` (an interrupt during its few seconds of start-up stops it cleanly)."""
    with _init_guard(ray):
        ray.init(address="local", num_cpus=workers or 1, include_dashboard=False, **common)


def _join(ray: Any, address: str, common: dict[str, Any]) -> None:
    """``ray.init(address=address)`` under ``_init_guard``, with its GCS connect tried
    ``GCS_CONNECT_TRIES`` times and its connection failures as ``DependencyError``. A SIGINT or
    SIGTERM that arrives while Ray waits inside its C++ connect is seen when that wait ends (Ray
    2.60: up to about 40 s for a gRPC server that is not a Ray GCS; the probe before has ruled out
    a silent address, which is the usual case)."""
    env_set = _GCS_WAIT_ENV not in os.environ
    if env_set:
        os.environ[_GCS_WAIT_ENV] = str(GCS_CONNECT_TRIES)
    try:
        with _init_guard(ray):
            try:
                ray.init(address=address, **common)
            except (ConnectionError, RuntimeError, TimeoutError) as e:
                first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
                raise DependencyError(f"could not join the Ray cluster at {address} (the port answers, but "
                                      f"Ray said: {first}); check that it is a Ray head's GCS port and that "
                                      f"both sides run the same Ray version, or {_RAY_FIX}") from None
    finally:
        if env_set:
            os.environ.pop(_GCS_WAIT_ENV, None)


def _run_ray(ray: Any, fn: Callable[..., Any], payload: Any, shards: list[Shard],
             on_done: Callable[[Shard], None]) -> list[Any]:
    """One Ray task per shard (1 CPU each); ``payload`` goes to the object store once."""
    task = ray.remote(num_cpus=1, max_retries=0)(_ray_task)
    fn_ref, payload_ref = ray.put(fn), ray.put(payload)
    crash = _ray_crash_errors(ray)
    crash_spec = os.environ.get(CRASH_ENV)
    pending: dict[Any, tuple[Shard, int]] = {}
    results: dict[int, Any] = {}

    def submit(shard: Shard, attempt: int) -> None:
        pending[task.remote(fn_ref, payload_ref, (shard.index, shard.lo, shard.hi), crash_spec)] = (shard, attempt)

    try:
        for s in shards:
            submit(s, 0)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
            for ref in ready:
                shard, attempt = pending.pop(ref)
                try:
                    results[shard.index] = ray.get(ref)
                except crash as e:
                    if attempt:
                        raise _lost(shard, type(e).__name__) from None
                    submit(shard, attempt + 1)
                    continue
                except ray.exceptions.RayTaskError as e:
                    cause = getattr(e, "cause", None)
                    if isinstance(cause, Exception):
                        raise cause from None
                    raise LNMDeployError(f"{shard.describe()} failed on a Ray worker: {e}") from None
                on_done(shard)
    finally:
        if pending:  # an error or an interrupt: stop the other shards (KeyboardInterrupt in them)
            refs = list(pending)
            for ref in refs:
                with contextlib.suppress(Exception):
                    ray.cancel(ref)
            with contextlib.suppress(Exception):
                ray.wait(refs, num_returns=len(refs), timeout=STOP_GRACE_S)
    return [results[s.index] for s in shards]


def map_shards(fn: Callable[[Any, int, int], Any], payload: Any, n: int, *, workers: int | None,
               ray_address: str | None = None, engine: str = "auto", progress: bool = False, desc: str = "",
               samples_of: Callable[[int, int], Any] | None = None) -> list[Any]:
    """``[fn(payload, lo, hi) for each shard]`` of ``n`` items on ``workers`` workers, in shard
    order (see the module docstring for the engines).

    ``fn`` must be a module-level function (Ray ships it by reference). ``samples_of(lo, hi)``: the
    sample indices of items ``lo .. hi - 1`` (default: the same numbers), for error messages and
    the progress bar (one bar, samples done out of total, updated as shards finish).
    Raises ``UserInputError`` (bad ``workers``), ``DependencyError`` (an address without Ray),
    ``LNMDeployError`` (a shard lost twice) or what ``fn`` raised.
    """
    workers = check_workers(workers)
    engine = check_engine(engine, ray_address)
    samples_of = samples_of or (lambda lo, hi: range(lo, hi))
    if not scaled(workers, ray_address):
        return [fn(payload, lo, hi) for lo, hi in split(n, 1)]

    def shards_for(k: int) -> list[Shard]:
        return [Shard(i, lo, hi, tuple(int(s) for s in samples_of(lo, hi)))
                for i, (lo, hi) in enumerate(split(n, k))]

    from lnm_deploy.progress import progress as progress_bar

    # Ray for a cluster (an address) or when asked for; on this machine, forked processes: they
    # start in a fraction of a second where a local Ray instance takes seconds (docs/scale.md).
    ray = _ray_module() if (engine == "ray" or ray_address) else None
    with _sigterm_as_interrupt():
        if ray is None and engine == "ray":
            raise DependencyError(f"--engine ray needs Ray ({RAY_INSTALL}), or use --engine local")
        if ray is None and ray_address:
            raise DependencyError(f"--ray-address needs Ray ({RAY_INSTALL}), or drop it to use "
                                  "local processes")
        if ray is None:
            k = workers or 1
            cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
            if k > cpus:  # more would only share the CPUs (each worker holds a Lava network, memory)
                warnings.warn(f"--workers {k} is more than the {cpus} CPUs this process may use: running "
                              f"{cpus} local workers (the results do not depend on the number)",
                              LNMDeployWarning, stacklevel=3)
                k = cpus
            shards = shards_for(k)
            total = sum(len(s.samples) for s in shards)
            with progress_bar(total=total, desc=desc, unit="sample", enabled=progress) as bar:
                return _run_local(fn, payload, shards, lambda s: bar.update(len(s.samples)))
        owned = not ray.is_initialized()
        with ray_session(workers, ray_address) as (ray_mod, k), _sigterm_as_interrupt(force=owned):
            shards = shards_for(k)
            total = sum(len(s.samples) for s in shards)
            with progress_bar(total=total, desc=desc, unit="sample", enabled=progress) as bar:
                return _run_ray(ray_mod, fn, payload, shards, lambda s: bar.update(len(s.samples)))


# ------------------------------------------------------------------------------------------------
# Backend runs


#: Samples per block of a float backend's run: float results (membrane states, and so in rare
#: threshold ties spikes) depend in their last bits on how many samples one BLAS product holds, so
#: a float run is always made of the same blocks, aligned at multiples of this, whatever the number
#: of workers. The integer backends are exact: their shards are any size.
FLOAT_BLOCK = 64


def _run_shard(payload: tuple[str, Any, np.ndarray, bool, int], lo: int, hi: int) -> RunResult:
    """Items ``lo .. hi - 1`` of the run: samples, or blocks of ``block`` samples (float)."""
    from lnm_deploy.backends import BACKENDS

    name, net, x, record, block = payload
    if block == 1:
        return BACKENDS[name].run(net, x[lo:hi], record=record, progress=False)
    parts = [BACKENDS[name].run(net, x[b * block : min((b + 1) * block, x.shape[0])], record=record,
                                progress=False) for b in range(lo, hi)]
    return parts[0] if len(parts) == 1 else merge_results(parts)


def merge_results(parts: list[RunResult]) -> RunResult:
    """Shard results concatenated along the sample axis, in the given order (always fresh,
    writable arrays: Ray hands back read-only views of its object store)."""
    first = parts[0]
    return RunResult(
        output=np.concatenate([p.output for p in parts], axis=0),
        spikes={k: np.concatenate([p.spikes[k] for p in parts], axis=0) for k in first.spikes},
        states={n: {v: np.concatenate([p.states[n][v] for p in parts], axis=0) for v in d}
                for n, d in first.states.items()},
    )


def run_sharded(backend_name: str, net: Any, x: Any, *, workers: int | None = 1,
                ray_address: str | None = None, engine: str = "auto", record: bool = False,
                progress: bool = False) -> RunResult:
    """``BACKENDS[backend_name].run(net, x, record=..., progress=...)`` split by samples.

    ``x``: (samples, timesteps, *input_shape). The result equals the single-process run's: every
    array (samples, timesteps, ...) concatenated in sample order. ``workers=1`` without an address
    is the plain call in this process. Each shard is one call of an integer backend on its samples
    (Lava: one compiled network per shard); a float backend runs blocks of ``FLOAT_BLOCK`` samples,
    the same ones whatever the number of workers. Raises ``UserInputError`` (unknown backend, bad
    ``workers``) and what ``map_shards`` raises.
    """
    from lnm_deploy.backends import BACKENDS

    if backend_name not in BACKENDS:
        raise UserInputError(f"unknown backend {backend_name!r} (one of {', '.join(BACKENDS)})")
    workers = check_workers(workers)
    block = 1 if BACKENDS[backend_name].integer else FLOAT_BLOCK
    if not scaled(workers, ray_address) and (block == 1 or np.shape(x)[0] <= block):
        return BACKENDS[backend_name].run(net, x, record=record, progress=progress)
    x = np.asarray(x)
    if x.ndim < 2:
        raise UserInputError(f"input must be shaped (samples, timesteps, ...), got {x.shape}")
    if x.shape[0] == 0:
        return BACKENDS[backend_name].run(net, x, record=record, progress=False)
    n = int(x.shape[0])
    items = -(-n // block)
    parts = map_shards(_run_shard, (backend_name, net, x, record, block), items, workers=workers,
                       ray_address=ray_address, engine=engine, progress=progress, desc=backend_name,
                       samples_of=lambda lo, hi: range(lo * block, min(hi * block, n)))
    return merge_results(parts)


# ------------------------------------------------------------------------------------------------
# Calibration statistics


def _stats_shard(payload: tuple[Any, np.ndarray, np.ndarray, dict[str, Any]], lo: int, hi: int) -> list[Any]:
    """Statistics of batches ``lo .. hi - 1``, one ``CalibrationStats`` per batch."""
    from lnm_deploy.calibrate.stats import collect_stats

    graph, x, index, opts = payload
    bs = opts["batch_size"]
    out = []
    for b in range(lo, hi):
        xb = x[index[b * bs : (b + 1) * bs]]
        out.append(collect_stats(graph, xb, batch_size=xb.shape[0], progress=False, seed=None,
                                 bins_per_side=opts["bins_per_side"],
                                 trace_percentile=opts["trace_percentile"]))
    return out


def _add_tensor(into: Any, batch: Any, samples: int) -> None:
    """``into += batch`` exactly as ``TensorStats.update`` would have added the batch, and record
    the trace point the sequential pass records after it."""
    into.merge(batch, trace_at=samples)


def merge_batch_stats(batches: list[Any], *, batch_size: int, seed: int | None) -> Any:
    """One ``CalibrationStats`` from per-batch ones, added in order: identical to ``collect_stats``
    over the same batches (histograms, exact ranges, sums in the same order, traces)."""
    import copy

    stats = copy.deepcopy(batches[0])  # writable (Ray's arrays are read-only views)
    stats.batch_size, stats.seed = batch_size, seed
    for b in batches[1:]:
        stats.samples += b.samples
        _add_tensor(stats.input, b.input, stats.samples)
        for name, st in stats.synapses.items():
            _add_tensor(st.output, b.synapses[name].output, stats.samples)
        for name, nst in stats.neurons.items():
            other = b.neurons[name]
            # The order of trace records does not matter (one list per tensor); sums follow the
            # sequential pass: input, c, v, v_pre per neuron.
            _add_tensor(nst.input, other.input, stats.samples)
            if nst.c is not None:
                _add_tensor(nst.c, other.c, stats.samples)
            _add_tensor(nst.v, other.v, stats.samples)
            _add_tensor(nst.v_pre, other.v_pre, stats.samples)
        for name, sp in stats.spikes.items():
            sp.counts = sp.counts + b.spikes[name].counts
            sp.steps += b.spikes[name].steps
    return stats


def collect_stats_sharded(graph: Any, x: Any, *, workers: int | None, ray_address: str | None = None,
                          engine: str = "auto",
                          batch_size: int = 32, progress: bool = True, max_samples: int | None = None,
                          seed: int | None = 0, bins_per_side: int = 4096,
                          trace_percentile: float = 99.99) -> Any:
    """``calibrate.stats.collect_stats`` with its batches spread over workers: the same arguments
    and the identical ``CalibrationStats`` (the batches, hence the sample order, are those of the
    single-process pass; each worker returns one statistics object per batch and they are added
    in batch order, so sums, histograms and range traces are bit-identical whatever ``workers``).

    Costs one statistics object per batch on the way back (a 64 KiB histogram per recorded tensor
    at the default 4096 bins per side).
    """
    from lnm_deploy.calibrate import stats as st

    workers = check_workers(workers)
    opts: dict[str, Any] = {"batch_size": batch_size, "bins_per_side": bins_per_side,
                            "trace_percentile": trace_percentile}
    if not scaled(workers, ray_address):
        return st.collect_stats(graph, x, progress=progress, max_samples=max_samples, seed=seed, **opts)
    x = np.asarray(x)
    index = st.sample_order(x, batch_size=batch_size, max_samples=max_samples, seed=seed,
                            trace_percentile=opts["trace_percentile"])
    n = index.shape[0]
    n_batches = -(-n // batch_size)
    parts = map_shards(_stats_shard, (graph, x, index, opts), n_batches, workers=workers,
                       ray_address=ray_address, engine=engine, progress=progress, desc="calibrate",
                       samples_of=lambda lo, hi: index[lo * batch_size : hi * batch_size])
    return merge_batch_stats([b for part in parts for b in part], batch_size=batch_size, seed=seed)
