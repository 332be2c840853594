"""Importing Lava 0.10 after something else touched ``multiprocessing``.

Lava calls ``multiprocessing.set_start_method('fork')`` when first imported, which raises
"context has already been set" once anything fixed the default context first: the first tqdm
progress bar does (it creates a multiprocessing lock), so does ``multiprocessing.get_context()``.
``lava_import_guard`` lets that one call force the method Lava needs (``fork``, the Linux default).
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
from collections.abc import Iterator


@contextlib.contextmanager
def lava_import_guard() -> Iterator[None]:
    real = mp.set_start_method

    def _force(method: str | None, force: bool = False) -> None:
        real(method, force=True)

    mp.set_start_method = _force
    try:
        yield
    finally:
        mp.set_start_method = real
