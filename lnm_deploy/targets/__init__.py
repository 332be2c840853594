"""Hardware targets: declarative TOML files, validated on load, and design-rule checks.

The shipped files live in the top-level ``targets/`` directory of the source tree (installed as
``lnm_deploy/_data/targets``); ``available_targets()`` scans that directory, and ``load_target``
takes a shipped name or a path to a user's own file.
"""

from __future__ import annotations

import os
from pathlib import Path

from lnm_deploy.errors import UserInputError
from lnm_deploy.targets.check import RULES, check_graph
from lnm_deploy.targets.spec import (
    ConvSpec,
    DenseSpec,
    LIFSpec,
    PolySpec,
    SumPoolSpec,
    Target,
    TargetInfo,
    parse_target,
)


def shipped_targets_dir() -> Path:
    """The directory of the shipped target files: next to the package source tree first, then the
    installed package data."""
    import lnm_deploy

    pkg = Path(lnm_deploy.__file__).resolve().parent
    source_tree = pkg.parent / "targets"
    if source_tree.is_dir() and any(source_tree.glob("*.toml")):
        return source_tree
    return pkg / "_data" / "targets"


def available_targets() -> dict[str, Path]:
    """Shipped targets by name (the file stem), sorted."""
    d = shipped_targets_dir()
    return {p.stem: p for p in sorted(d.glob("*.toml"))} if d.is_dir() else {}


def load_target(name_or_path: str | os.PathLike[str]) -> Target:
    """A shipped target by name, or a target file by path (anything ending in .toml or holding a
    path separator is a path)."""
    s = os.fspath(name_or_path)
    if s.endswith(".toml") or os.sep in s or (os.altsep and os.altsep in s):
        return parse_target(s)
    shipped = available_targets()
    if s not in shipped:
        raise UserInputError(f"unknown target {s!r}; shipped targets: {sorted(shipped)} (or pass a .toml path)")
    t = parse_target(shipped[s])
    if t.name != s:
        raise UserInputError(f"{shipped[s]}: key 'target.name' is {t.name!r}, expected {s!r} (the file name)")
    return t


def list_targets() -> list[Target]:
    """Every shipped target, loaded (for ``lnm-deploy targets``: print ``t.summary()``)."""
    return [load_target(n) for n in available_targets()]


__all__ = [
    "RULES",
    "ConvSpec",
    "DenseSpec",
    "LIFSpec",
    "PolySpec",
    "SumPoolSpec",
    "Target",
    "TargetInfo",
    "available_targets",
    "check_graph",
    "list_targets",
    "load_target",
    "parse_target",
    "shipped_targets_dir",
]
