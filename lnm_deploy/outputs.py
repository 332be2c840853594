"""One output-commit mechanism for every command: declare, check, stage, commit together.

A command declares every location it will write (``Outputs.file``, ``Outputs.directory``) before
any computation; each is checked at once (exists without ``force``, is a directory where a file
is wanted or the reverse, parent missing, parent not writable: probed by creating and removing a
temporary file). Results are then written to temporaries beside their targets (``stage``,
``write_bytes``, ``write_text``) and renamed in together by ``commit``. If anything fails before
or during the commit, or the run is interrupted, every temporary is removed, every file already
renamed in is taken out again (a file that ``force`` replaced is restored from its backup) and a
directory created by this run is removed again: nothing of the run is left behind.

Nothing is ever deleted that this run did not create: with ``force`` an existing file that the
command writes is replaced, an existing directory is written into (other files in it are kept).
The files a command reads are declared too (``Outputs.inputs``): an output that is one of them
is refused, ``force`` or not.

Usage::

    with Outputs(force=args.force) as outs:
        out = outs.file(args.out, option="--out")      # checked now, before any work
        result = compute()
        outs.write_bytes(out, result)                  # staged beside out
    # committed here; on an exception nothing of this run remains
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from lnm_deploy.errors import OutputWriteError, UserInputError

__all__ = ["Outputs", "check_directory", "check_file"]


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold Ctrl-C, SIGTERM and SIGHUP while renaming in or rolling back (a few system calls): one
    arriving then is delivered right after, when the outputs are consistent again."""
    sigs = {getattr(signal, n) for n in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, n)}
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _why(e: OSError) -> str:
    return e.strerror or type(e).__name__


def _probe_writable(directory: Path, what: str) -> None:
    """Create and remove a temporary file in ``directory``; ``UserInputError`` if that fails."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".lnm-deploy-probe-", dir=directory)
    except OSError as e:
        raise UserInputError(f"cannot write in {directory} ({_why(e)}); choose a writable location "
                             f"for {what}") from None
    os.close(fd)
    with contextlib.suppress(OSError):
        os.unlink(tmp)


def check_file(path: str | os.PathLike[str], *, force: bool, what: str = "the output") -> Path:
    """Check that the file ``path`` can be written now: it is not a directory, it does not exist
    (unless ``force``), its directory exists and is writable. Returns ``path`` as a Path."""
    if isinstance(path, str) and not path.strip():
        raise UserInputError(f"an empty path was given for {what}; name a file")
    target = Path(path)
    if target.is_dir():
        raise UserInputError(f"{target} is a directory; {what} must name a file")
    if target.exists() or target.is_symlink():
        if not force:
            raise UserInputError(f"{target} exists; pass --force to overwrite it or choose another "
                                 f"file for {what}")
        if not target.is_file():
            raise UserInputError(f"{target} exists and is not a regular file; choose another file "
                                 f"for {what}")
    parent = target.parent
    if not parent.is_dir():
        raise UserInputError(f"output directory {parent} does not exist; create it or choose another "
                             f"location for {what}")
    _probe_writable(parent, what)
    return target


def check_directory(path: str | os.PathLike[str], *, force: bool, what: str = "the output directory"
                    ) -> Path:
    """Check that the directory ``path`` can be written: it does not exist (then its parent must be
    writable) or, with ``force``, it is a writable directory (written into, never emptied)."""
    target = Path(path)
    if target.exists() or target.is_symlink():
        if not target.is_dir():
            raise UserInputError(f"{target} exists and is not a directory; choose another location "
                                 f"for {what}")
        if not force:
            raise UserInputError(f"{target} exists; pass --force to write into it (files lnm-deploy "
                                 f"does not write there are kept) or choose another location for {what}")
        _probe_writable(target, what)
        return target
    parent = target.parent
    if not parent.is_dir():
        raise UserInputError(f"{parent} does not exist; create it or choose another location for {what}")
    _probe_writable(parent, what)
    return target


@dataclass
class _Dir:
    target: Path
    existed: bool
    staging: Path | None = None  # where the new directory is built until the commit
    parent: _Dir | None = None  # the new declared directory it is built in, if any
    committed: bool = False  # renamed into place (a nested one moves with its parent)

    def top(self) -> _Dir:
        return self if self.parent is None else self.parent.top()

    def where(self) -> Path | None:
        """Where the new directory is now: its target once its top directory is renamed in."""
        if self.parent is not None:
            up = self.parent.where()
            return None if up is None or self.staging is None else up / self.target.name
        return self.target if self.committed else self.staging


@dataclass
class _File:
    target: Path
    tmp: Path | None = None  # the staged content
    backup: Path | None = None  # the file that force replaced, until the commit completes
    committed: bool = False


class Outputs:
    """The outputs of one command run (see the module docstring).

    ``force``: replace existing files and write into existing directories (never delete anything
    else). Use as a context manager: a normal exit commits, an exception (including
    ``KeyboardInterrupt``) aborts. ``commit`` and ``abort`` may also be called directly.
    """

    def __init__(self, *, force: bool = False) -> None:
        self.force = force
        self._files: dict[Path, _File] = {}
        self._dirs: dict[Path, _Dir] = {}
        self._done = False
        self._after: list[Callable[[], None]] = []
        self._inputs: list[tuple[str, str]] = []  # (path, option) of the files the command reads
        self._options: dict[Path, str] = {}  # each declared output's option

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run ``fn()`` right after a successful commit, with the same signals held, so that a
        Ctrl-C or SIGTERM cannot fall between the outputs appearing and ``fn``'s clean-up (for
        example removing files the new outputs replace). ``fn`` must not raise."""
        self._after.append(fn)

    # ---------------------------------------------------------------------------- declaring

    @staticmethod
    def _key(path: str | os.PathLike[str]) -> Path:
        return Path(os.path.abspath(path))

    def inputs(self, **paths: str | os.PathLike[str] | None) -> None:
        """Declare the files the command reads, by option (``inputs(**{"--data": args.data})``;
        None is skipped): an output that is one of them (the same path, through a link or not) is
        refused, with or without ``force``, now and when declared or staged later."""
        for option, path in paths.items():
            if path is not None:
                self._inputs.append((os.fspath(path), option))
        for key in [*self._files, *self._dirs]:
            self._not_an_input(key, self._options.get(key, "the output"))

    def _not_an_input(self, key: Path, option: str) -> None:
        for path, what in self._inputs:
            same = os.path.realpath(path) == os.path.realpath(key)
            with contextlib.suppress(OSError):
                same = same or os.path.samefile(path, key)
            if same:
                raise UserInputError(f"{key} is this command's input ({what}) and its output ({option}); "
                                     "write the output to another file (--force never replaces an input)")

    def file(self, path: str | os.PathLike[str], *, option: str = "the output") -> Path:
        """Declare and check the output file ``path`` now; returns it as a Path."""
        key = self._key(path)
        if key in self._files:
            raise UserInputError(f"{path} is named twice as an output; give each output its own file")
        if key.parent in self._dirs:
            self._check_in_dir(key, option)  # refuses an input too
        else:
            self._not_an_input(key, option)
            check_file(path, force=self.force, what=option)
        self._files[key] = _File(key)
        self._options[key] = option
        return Path(path)

    def directory(self, path: str | os.PathLike[str], *, option: str = "the output directory") -> Path:
        """Declare and check the output directory ``path``; files directly inside it may then be
        staged without declaring each one (their names need not be known up front)."""
        key = self._key(path)
        if key in self._dirs or key in self._files:
            raise UserInputError(f"{path} is named twice as an output")
        self._not_an_input(key, option)
        self._options[key] = option
        up = self._dirs.get(key.parent)
        if up is not None and not up.existed:  # inside a new directory: nothing there yet
            self._dirs[key] = _Dir(key, existed=False, parent=up)
            return Path(path)
        check_directory(path, force=self.force, what=option)
        self._dirs[key] = _Dir(key, existed=key.is_dir())
        return Path(path)

    def _check_in_dir(self, key: Path, option: str) -> None:
        self._not_an_input(key, option)
        if key.is_dir():
            raise UserInputError(f"{key} is a directory; lnm-deploy writes a file of that name "
                                 f"({option}): move it away")
        if (key.exists() or key.is_symlink()) and not (self.force and key.is_file()):
            raise UserInputError(f"{key} exists; pass --force to overwrite it")

    # ---------------------------------------------------------------------------- staging

    def stage(self, path: str | os.PathLike[str]) -> Path:
        """A new temporary file beside ``path`` (declared, or directly in a declared directory) to
        write the output into; committed to ``path`` later. Staging again replaces the old one."""
        key = self._key(path)
        entry = self._files.get(key)
        if entry is None:
            if key.parent not in self._dirs:
                raise ValueError(f"{path} was not declared as an output")  # a bug, not user input
            self._check_in_dir(key, "a report file")
            entry = self._files[key] = _File(key)
        if self._done:
            raise ValueError("outputs already committed or aborted")
        where = self._staging_dir(key.parent)
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{key.name}.", suffix=".tmp", dir=where)
        except OSError as e:
            raise OutputWriteError(key, _why(e)) from None
        os.close(fd)
        if entry.tmp is not None:
            entry.tmp.unlink(missing_ok=True)
        entry.tmp = Path(tmp)
        return entry.tmp

    def staged(self, path: str | os.PathLike[str]) -> Path | None:
        """The temporary holding ``path``'s content, if staged (to read it back before commit)."""
        entry = self._files.get(self._key(path))
        return None if entry is None else entry.tmp

    def staged_files(self) -> dict[Path, Path]:
        """Absolute target -> temporary, for every output staged so far."""
        return {f.target: f.tmp for f in self._files.values() if f.tmp is not None}

    def _staging_dir(self, parent: Path) -> Path:
        d = self._dirs.get(parent)
        if d is None or d.existed:
            return parent
        if d.staging is None:
            try:
                if d.parent is not None:
                    staging = self._staging_dir(d.parent.target) / parent.name
                    staging.mkdir()
                    d.staging = staging
                else:
                    d.staging = Path(tempfile.mkdtemp(prefix=f".{parent.name}.", suffix=".tmp",
                                                      dir=parent.parent))
            except OSError as e:
                raise UserInputError(f"cannot create {parent} ({_why(e)})") from None
        return d.staging

    @contextlib.contextmanager
    def writing(self, path: str | os.PathLike[str]) -> Iterator[Path]:
        """``stage(path)`` as a context: an ``OSError`` while writing (disk full) becomes one
        ``OutputWriteError`` naming ``path``."""
        tmp = self.stage(path)
        try:
            yield tmp
        except OSError as e:
            raise OutputWriteError(path, _why(e)) from None

    def _named(self, e: OutputWriteError) -> OutputWriteError | None:
        """``e`` naming the output whose staged temporary it names (writers such as ``write_nir``
        are handed the temporary and name it), or None if it names none of them."""
        failed = os.path.abspath(e.path)
        for f in self._files.values():
            if f.tmp is not None and os.path.abspath(f.tmp) == failed:
                return OutputWriteError(f.target, e.reason)
        return None

    def write_bytes(self, path: str | os.PathLike[str], data: bytes) -> Path:
        with self.writing(path) as tmp:
            tmp.write_bytes(data)
        return tmp

    def write_text(self, path: str | os.PathLike[str], text: str) -> Path:
        with self.writing(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
        return tmp

    # ---------------------------------------------------------------------------- commit

    def commit(self) -> list[Path]:
        """Rename every staged output into place; all or nothing. Returns the paths written.

        On failure everything renamed so far is rolled back (replaced files restored from their
        backups), temporaries are removed and ``UserInputError`` names the path that failed.
        """
        if self._done:
            raise ValueError("outputs already committed or aborted")
        with _signals_held():
            written = self._commit()
            for fn in self._after:
                fn()
            return written

    def _commit(self) -> list[Path]:
        mask = _umask()
        written: list[Path] = []
        current: Path | None = None
        try:
            for d in self._dirs.values():
                if d.staging is not None:
                    current = d.target
                    os.chmod(d.staging, 0o777 & ~mask)
            for f in self._files.values():
                if f.tmp is not None:
                    os.chmod(f.tmp, 0o666 & ~mask)
            for f in self._files.values():  # in new directories: final names while staged
                home = self._dirs.get(f.target.parent)
                if f.tmp is not None and home is not None and home.staging is not None:
                    current = f.target
                    os.replace(f.tmp, home.staging / f.target.name)
                    f.tmp = home.staging / f.target.name
            for d in self._dirs.values():  # new directories: one rename each, contents included
                if d.staging is not None and d.parent is None:
                    current = d.target
                    if d.target.exists() or d.target.is_symlink():
                        raise FileExistsError(errno.EEXIST, "appeared during the run")
                    os.rename(d.staging, d.target)
                    d.committed = True
            for f in self._files.values():
                if f.tmp is None or self._in_new_dir(f):
                    continue
                current = f.target
                if f.target.is_dir():
                    raise IsADirectoryError(errno.EISDIR, "a directory appeared there during the run")
                if f.target.exists() or f.target.is_symlink():
                    if not self.force:
                        raise FileExistsError(errno.EEXIST, "appeared during the run")
                    f.backup = self._backup(f.target)
                os.replace(f.tmp, f.target)
                f.committed = True
            written = [f.target for f in self._files.values() if f.tmp is not None]
        except BaseException as e:
            self._rollback()
            self._done = True
            if isinstance(e, OSError):
                raise UserInputError(f"cannot write {current} ({_why(e)}); nothing of this run "
                                     "was kept") from None
            raise
        self._done = True
        for f in self._files.values():  # the commit is complete: drop the backups
            if f.backup is not None:
                with contextlib.suppress(OSError):
                    f.backup.unlink()
        return written

    def _in_new_dir(self, f: _File) -> bool:
        d = self._dirs.get(f.target.parent)
        return d is not None and d.staging is not None

    @staticmethod
    def _backup(target: Path) -> Path:
        """A hard link (else a renamed copy) of ``target`` beside it, to restore on rollback."""
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".bak", dir=target.parent)
        os.close(fd)
        backup = Path(name)
        try:
            os.unlink(backup)
            os.link(target, backup)
        except OSError:
            os.replace(target, backup)
        return backup

    def _rollback(self) -> None:
        for f in reversed(list(self._files.values())):
            with contextlib.suppress(OSError):
                if f.committed:
                    if f.backup is not None:
                        os.replace(f.backup, f.target)
                        f.backup = None
                    else:
                        f.target.unlink()
                    f.committed = False
                if f.tmp is not None:
                    f.tmp.unlink(missing_ok=True)
                if f.backup is not None and (f.target.exists() or f.target.is_symlink()):
                    f.backup.unlink()  # a backup link of a file that is still in place
                elif f.backup is not None:
                    os.replace(f.backup, f.target)
        # New directories: remove the files this run staged there, then the (now empty) directories,
        # deepest first. Anything else found there was not ours and stays (with its directory).
        for d in sorted(self._dirs.values(), key=lambda d: -len(d.target.parts)):
            where = d.where()
            if where is None:
                continue
            for f in self._files.values():
                if f.target.parent == d.target and f.tmp is not None:
                    with contextlib.suppress(OSError):
                        (where / f.tmp.name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                where.rmdir()

    def abort(self) -> None:
        """Remove every temporary; nothing of this run remains. Idempotent."""
        if not self._done:
            self._done = True
            with _signals_held():
                self._rollback()

    def __enter__(self) -> Outputs:
        return self

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        if et is None:
            if not self._done:
                self.commit()
        else:
            named = self._named(ev) if isinstance(ev, OutputWriteError) else None
            self.abort()
            if named is not None:  # the output's own name, not its temporary's
                raise named from None
