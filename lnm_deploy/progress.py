"""Progress bars for people at a terminal, and nothing for logs.

tqdm redraws its bar with carriage returns; written into a log file or a CI log (stderr not a
terminal) that is one long line of ``\\r``-separated bars per loop. ``progress`` returns a tqdm bar
only when it is enabled and stderr is a terminal, and otherwise a bar that draws nothing (same
methods: iteration, ``update``, ``set_postfix``, ``close``, ``with``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class SilentBar(Generic[T]):
    """A progress bar that counts and draws nothing (the non-terminal stand-in for tqdm)."""

    def __init__(self, iterable: Iterable[T] | None = None, total: int | None = None) -> None:
        self.iterable = iterable
        self.total = total
        self.n = 0

    def __iter__(self) -> Iterator[T]:
        if self.iterable is None:
            raise TypeError("this progress bar was made from a total, not an iterable")
        for item in self.iterable:
            yield item
            self.n += 1

    def __enter__(self) -> SilentBar[T]:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        self.n += n

    def set_postfix(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_description(self, *args: Any, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def is_terminal(stream: Any = None) -> bool:
    """Whether ``stream`` (default: the current ``sys.stderr``) is an interactive terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", enabled: bool = True, leave: bool = False) -> Any:
    """A progress bar over ``iterable`` (or for ``total`` manual ``update`` steps).

    A ``tqdm`` bar on stderr when ``enabled`` and stderr is a terminal; otherwise a ``SilentBar``,
    which writes nothing (so logs get no carriage-return lines). Either one iterates like
    ``iterable``, counts ``update(n)`` calls and works in a ``with`` block.
    """
    if not (enabled and is_terminal()):
        return SilentBar(iterable, total)
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, unit=unit, leave=leave, file=sys.stderr)
