"""File helpers shared by every stage: atomic output files and checked input files."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from lnm_deploy.errors import OutputWriteError, UserInputError


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


def write_failure(e: BaseException, path: str | os.PathLike[str]) -> str | None:
    """Why writing the file ``path`` failed, in the operating system's words (``"No space left on
    device"``), if ``e`` is the system's failure to write it: an ``OSError`` with an errno that names
    ``path`` or no file. None for anything else (a bug, an interrupt, another file's error): those
    propagate as they are. (HDF5 never writes to disk itself: ``nir_io.write_nir``.)"""
    if not isinstance(e, OSError) or not e.errno:
        return None
    if e.filename is not None and os.path.abspath(os.fsdecode(e.filename)) != os.path.abspath(path):
        return None
    return e.strerror or os.strerror(e.errno)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], *, force: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically.

    On any exception the temporary file is removed and ``path`` is left as it was, so a failed
    run never leaves a half-written output. ``force=False`` refuses to overwrite an existing file.

    Raises:
        UserInputError: ``path`` cannot be written (checked first: ``check_output_path``).
        OutputWriteError: writing failed (disk full...; ``write_failure`` of the temporary file):
            names ``path`` and the operating system's reason. Other exceptions propagate as they are.
    """
    target = check_output_path(path, force=force)
    parent = target.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=parent)
    except OSError as e:
        raise OutputWriteError(target, e.strerror or type(e).__name__) from None
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates the file 0600; give the output the permissions a plain open() would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
    except BaseException as e:
        tmp_path.unlink(missing_ok=True)
        reason = None if isinstance(e, OutputWriteError) else write_failure(e, tmp_path)
        if reason is not None:
            raise OutputWriteError(target, reason) from e
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


def finite_json(o: object) -> object:
    """``o`` with every non-finite float (``inf``, ``-inf``, ``nan``, numpy's too) replaced by None,
    numpy arrays and scalars, paths and ``to_dict`` objects converted as ``json_default`` does, tuples
    as lists: data that strict JSON can hold. What a null means is the reader's documented
    convention (a report's ``*_sqnr_db`` is null where the signals are identical: infinite SQNR)."""
    if isinstance(o, float | np.floating):
        return float(o) if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: finite_json(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [finite_json(v) for v in o]
    if isinstance(o, str | int | bool) or o is None:
        return o
    return finite_json(json_default(o))


def dumps_json(o: object, **kwargs: object) -> str:
    """Strict JSON text (RFC 8259: what ``JSON.parse`` and every other reader accept) of ``o``:
    non-finite floats become null (``finite_json``) and ``allow_nan=False`` makes sure none slips
    through. ``kwargs``: ``json.dumps``'s (``indent``, ``sort_keys``)."""
    return json.dumps(finite_json(o), allow_nan=False, **kwargs)  # type: ignore[arg-type]


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
    """Write arrays to ``path`` (.npz, compressed, as ``np.savez_compressed``; no pickles) atomically.

    Raises ``OutputWriteError`` (disk full...) with nothing left behind (``atomic_output``)."""
    # np.savez_compressed's own ZipFile is left open when a write fails, and closing it when it is
    # collected, after the file under it is closed, prints "Exception ignored in ZipFile.__del__":
    # the same archive (zip64 members NAME.npy), with the ZipFile closed on every path.
    with atomic_output(path, force=force) as tmp, open(tmp, "wb") as f, \
            zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_DEFLATED, allowZip64=True) as zipf:
        for key, val in arrays.items():
            with zipf.open(key + ".npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(val), allow_pickle=False)


def nonempty_arg(hint: str) -> Callable[[str], str]:
    """An argparse ``type`` for the CLI's options that name something (a file, a directory, a
    target): refuses an empty (or blank) value, which would otherwise name the current directory
    or count as not given (``argparse.ArgumentTypeError``: a usage error, exit 2, "empty: <hint>")."""
    def check(value: str) -> str:
        import argparse

        if not value.strip():
            raise argparse.ArgumentTypeError(f"empty: {hint}")
        return value

    return check


#: ``nonempty_arg`` of the file and directory options.
path_arg = nonempty_arg("name a file or directory")
