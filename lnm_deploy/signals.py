"""SIGTERM and SIGHUP handled like Ctrl-C, so that every cleanup path runs.

``timeout``, CI cancellations and job schedulers stop a job with SIGTERM (a closed terminal sends
SIGHUP). Python's default for both is to die at once: ``finally`` blocks do not run, so Lava's
worker processes are orphaned and temporary files stay. While ``terminate_as_interrupt`` is
active they raise ``Terminated``, a ``KeyboardInterrupt``, in the main thread instead: every path
that cleans up after Ctrl-C cleans up after them too.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator
from typing import Any

__all__ = ["SIGNALS", "Terminated", "deferred_termination", "terminate_as_interrupt", "terminated_by"]

#: The signals handled like SIGINT (those this platform has).
SIGNALS: tuple[int, ...] = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGHUP") if hasattr(signal, n))


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP arrived (``signum``); a ``KeyboardInterrupt`` so that cleanup runs."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


#: The signals ``raise_terminated`` has handled since the last ``terminate_as_interrupt`` (the
#: CLI's) began, in order.
_received: list[int] = []


def raise_terminated(signum: int, frame: Any) -> None:
    """A signal handler: raise ``Terminated(signum)`` (and note ``signum``: ``terminated_by``)."""
    _received.append(signum)
    raise Terminated(signum)


def terminated_by() -> int | None:
    """The first signal ``raise_terminated`` handled since the last ``terminate_as_interrupt``
    (not ``only_default``) began, else None. For the caller that catches a plain
    ``KeyboardInterrupt`` where a library replaced the ``Terminated`` raised in it: Ray's
    ``ray.wait``/``ray.get`` turn any exception from a signal handler into ``KeyboardInterrupt``
    (measured on Ray 2.60: SIGTERM or SIGHUP while Ray tasks ran ended as "interrupted", 130)."""
    return _received[0] if _received else None


@contextlib.contextmanager
def terminate_as_interrupt(*, only_default: bool = False) -> Iterator[None]:
    """SIGTERM and SIGHUP raise ``Terminated`` while active; the old handlers are restored after.

    ``only_default``: replace only handlers that are still the default (leave a handler the
    application installed, or an ignored signal, alone). Does nothing outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if not only_default:
        _received.clear()
    old: dict[int, Any] = {}
    try:
        for s in SIGNALS:
            cur = signal.getsignal(s)
            if only_default and cur is not signal.SIG_DFL:
                continue
            old[s] = signal.signal(s, raise_terminated)
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


@contextlib.contextmanager
def deferred_termination() -> Iterator[None]:
    """For library code that must clean up (stop worker processes, remove shared memory): where
    SIGTERM/SIGHUP still have their default action (the process dies), they raise ``Terminated``
    inside the block; when it has been unwound (cleanup done), the signal is sent again with the
    default action restored, so the process still dies of it, as it would have without us.
    Where the application handles these signals itself (the CLI does), nothing changes."""
    defaults = [s for s in SIGNALS if threading.current_thread() is threading.main_thread()
                and signal.getsignal(s) is signal.SIG_DFL]
    if not defaults:
        yield
        return
    try:
        with terminate_as_interrupt(only_default=True):
            yield
    except Terminated as e:
        if e.signum in defaults and signal.getsignal(e.signum) is signal.SIG_DFL:
            os.kill(os.getpid(), e.signum)
        raise
