"""File helpers shared by every stage: atomic output files and checked input files."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from lnm_deploy.errors import UserInputError


def sha256_file(path: str | os.PathLike[str]) -> str:
    """The SHA-256 of a file's bytes, hex (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_output_path(path: str | os.PathLike[str], *, force: bool) -> Path:
    """Fail early (before any work) if the file ``path`` cannot be written: it exists without
    ``force``, it is a directory, its directory is missing or not writable (``UserInputError``).

    Commands declare all their outputs at once with ``lnm_deploy.outputs.Outputs`` instead."""
    from lnm_deploy.outputs import check_file

    return check_file(path, force=force)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, force: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    On any exception the temporary file is removed and ``path`` is left as it was, so a failed
    run never leaves a half-written output. ``force=False`` refuses to overwrite an existing file.
    """
    target = check_output_path(path, force=force)
    parent = target.parent
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file 0600; give the output the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def json_default(o: object) -> object:
    """``json.dumps(default=...)`` for numpy arrays and scalars, paths, and objects with ``to_dict``."""
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def existing_file(path: str | os.PathLike[str], what: str = "file") -> Path:
    """``path`` as a Path, or ``UserInputError`` if it is not an existing file."""
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"{what} {p} does not exist" if not p.exists() else f"{p} is not a file")
    return p


def read_dataset(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray | None]:
    """Read ``x`` (samples, timesteps, *input_shape) and optional labels ``y`` (samples,) from .npz
    (``lnm_deploy.validate.npz_dataset``: no pickle, declared sizes checked before loading)."""
    from lnm_deploy.validate import npz_dataset

    x, y = npz_dataset(path)
    return x, y


def write_npz(path: str | os.PathLike[str], arrays: dict[str, np.ndarray], *, force: bool = True) -> None:
    """Write arrays to ``path`` (.npz) atomically."""


    with atomic_output(path, force=force) as tmp, open(tmp, "wb") as f:
        np.savez_compressed(f, **arrays)  # a file object: np.savez would append '.npz' to a path
