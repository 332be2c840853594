"""Declarative TOML files shipped with the package (targets, calibration recipes): reading,
typed conversion into dataclass fields, and the shipped-file lookup, shared by both loaders.

Errors are ``UserInputError`` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import os
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from lnm_deploy.errors import UserInputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10
    import tomli as tomllib

T = TypeVar("T")
Range = tuple[int, int]


def read_toml(path: str | os.PathLike[str], what: str) -> tuple[Path, dict[str, Any]]:
    """The parsed TOML of ``path``; ``what`` names the kind of file in errors ("target file")."""
    file = Path(path)
    if not file.is_file():
        raise UserInputError(f"{what} {file} does not exist")
    try:
        with open(file, "rb") as fh:
            return file, tomllib.load(fh)
    except tomllib.TOMLDecodeError as e:
        raise UserInputError(f"{file}: not valid TOML ({e})") from e
    except UnicodeDecodeError as e:
        raise UserInputError(f"{what} {file} is not a text file (not UTF-8 at byte {e.start}); a "
                             f"{what} is TOML text") from e
    except OSError as e:
        raise UserInputError(f"{what} {file} cannot be read ({e.strerror or e})") from e
    except RecursionError as e:
        raise UserInputError(f"{file}: not valid TOML (nested too deeply)") from e


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def convert(where: str, hint: Any, value: Any) -> Any:
    """``value`` checked against the field type ``hint``; ``where`` names file and key in errors."""
    if hint is bool:
        if not isinstance(value, bool):
            raise UserInputError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if not _is_int(value):
            raise UserInputError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserInputError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise UserInputError(f"{where} must be a string, got {value!r}")
        return value
    if hint == Range:
        if not isinstance(value, list) or len(value) != 2 or not all(_is_int(v) for v in value):
            raise UserInputError(f"{where} must be a range [low, high] of two integers, got {value!r}")
        if value[0] > value[1]:
            raise UserInputError(f"{where}: low {value[0]} is above high {value[1]}")
        return (value[0], value[1])
    if hint == tuple[float, ...]:
        if (not isinstance(value, list) or not value
                or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
            raise UserInputError(f"{where} must be a non-empty list of numbers, got {value!r}")
        return tuple(float(v) for v in value)
    if hint == tuple[str, ...]:
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise UserInputError(f"{where} must be a non-empty list of strings, got {value!r}")
        return tuple(value)
    raise AssertionError(f"no converter for {hint}")  # pragma: no cover


def fields_of(file: Path | str, section: str, data: dict[str, Any], cls: type[T], *,
              require_all: bool) -> dict[str, Any]:
    """The checked keyword arguments for dataclass ``cls`` from TOML table ``data``: unknown keys
    are rejected; with ``require_all`` every field must be given (else defaults apply)."""
    if not isinstance(data, dict):
        raise UserInputError(f"{file}: [{section}] must be a table")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise UserInputError(f"{file}: unknown key(s) {[f'{section}.{k}' for k in unknown]} in [{section}]; "
                             f"allowed: {fields}")
    if require_all:
        missing = [f for f in fields if f not in data]
        if missing:
            raise UserInputError(f"{file}: missing key(s) {missing} in [{section}]")
    return {k: convert(f"{file}: key '{section}.{k}'", hints[k], v) for k, v in data.items()}


def shipped_dir(kind: str) -> Path:
    """Where the shipped ``kind`` files are (``targets``, ``calibration``): the top-level folder of
    the source tree first, then the installed package data ``lnm_deploy/_data/<kind>``."""
    import lnm_deploy

    pkg = Path(lnm_deploy.__file__).resolve().parent
    source_tree = pkg.parent / kind
    if source_tree.is_dir() and any(source_tree.glob("*.toml")):
        return source_tree
    return pkg / "_data" / kind


def shipped_files(kind: str) -> dict[str, Path]:
    """Shipped files of ``kind`` by name (the file stem), sorted."""
    d = shipped_dir(kind)
    return {p.stem: p for p in sorted(d.glob("*.toml"))} if d.is_dir() else {}


def load_named(name_or_path: str | os.PathLike[str], kind: str, what: str, read: Callable[[Path], T]) -> T:
    """A shipped file by name, or a file by path (ending in .toml or holding a path separator)."""
    s = os.fspath(name_or_path)
    if s.endswith(".toml") or os.sep in s or (os.altsep and os.altsep in s):
        return read(Path(s))
    shipped = shipped_files(kind)
    if s not in shipped:
        raise UserInputError(f"unknown {what} {s!r}; shipped {what}s: {sorted(shipped)} (or pass a .toml path)")
    return read(shipped[s])
