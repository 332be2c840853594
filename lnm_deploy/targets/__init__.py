"""Hardware targets: declarative TOML files, validated on load, and design-rule checks.

The shipped files live in the top-level ``targets/`` directory of the source tree (installed as
``lnm_deploy/_data/targets``); ``available_targets()`` scans that directory, and ``load_target``
takes a shipped name or a path to a user's own file.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

from lnm_deploy.configfile import load_named, shipped_dir, shipped_files
from lnm_deploy.errors import LNMDeployWarning, UserInputError
from lnm_deploy.targets.check import RULES, check_graph
from lnm_deploy.targets.spec import (
    ConvSpec,
    DenseSpec,
    LIFSpec,
    PolySpec,
    Target,
    TargetInfo,
    convert_old_format,
    is_old_format,
    parse_target,
    spec_keys,
    target_from_toml,
)


def shipped_targets_dir() -> Path:
    """The directory of the shipped target files (see ``configfile.shipped_dir``)."""
    return shipped_dir("targets")


def available_targets() -> dict[str, Path]:
    """Shipped targets by name (the file stem), sorted."""
    return shipped_files("targets")


def load_target(name_or_path: str | os.PathLike[str]) -> Target:
    """A shipped target by name, or a target file by path (anything ending in .toml or holding a
    path separator is a path)."""
    t = load_named(name_or_path, "targets", "target", parse_target)
    stem = Path(os.fspath(name_or_path)).stem
    if os.fspath(name_or_path) == stem and t.name != stem:
        raise UserInputError(f"{t.path}: key 'target.name' is {t.name!r}, expected {stem!r} (the file name)")
    shipped = available_targets().get(t.name)
    if shipped is not None and t.path.resolve() != shipped.resolve():
        differs = _differences(t, parse_target(shipped))
        if differs:
            warnings.warn(f"{t.path} calls itself {t.name!r}, the name of a shipped target, but differs from it "
                          f"({', '.join(differs)}): artifacts, reports and comparisons will name it {t.name!r}; "
                          "give the file its own target.name", LNMDeployWarning, stacklevel=2)
    return t


def _differences(a: Target, b: Target) -> list[str]:
    """The parts (``[section]`` names) in which two targets differ."""
    out = [f"[{k}]" for k in sorted(set(a.sections) | set(b.sections)) if a.sections.get(k) != b.sections.get(k)]
    if a.info != b.info:
        out.insert(0, "[target]")
    out += [f"[{k}]" for k in ("resources", "energy") if getattr(a, k) != getattr(b, k)]
    return out


def list_targets() -> list[Target]:
    """Every shipped target, loaded (for ``lnm-deploy targets``: print ``t.summary()``)."""
    return [load_target(n) for n in available_targets()]


__all__ = [
    "RULES",
    "ConvSpec",
    "DenseSpec",
    "LIFSpec",
    "PolySpec",
    "Target",
    "TargetInfo",
    "available_targets",
    "check_graph",
    "convert_old_format",
    "is_old_format",
    "list_targets",
    "load_target",
    "parse_target",
    "shipped_targets_dir",
    "spec_keys",
    "target_from_toml",
]
