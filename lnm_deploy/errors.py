"""One exception hierarchy for the whole tool.

The library raises these; only the CLI (``lnm_deploy.cli``) catches them, prints one line and exits
with the class's ``exit_code``. Messages name the offending node (or file) and, where there is one,
the fix.
"""

from __future__ import annotations

import os


class LNMDeployError(Exception):
    """Base class of every error lnm-deploy raises on purpose."""

    exit_code = 2

    def __init__(self, message: str, *, node: str | None = None) -> None:
        self.node = node
        super().__init__(f"node '{node}': {message}" if node else message)


class UserInputError(LNMDeployError):
    """Bad input from the user: a missing file, wrong shapes, bad arguments."""

    exit_code = 2


class OutputWriteError(UserInputError):
    """An output file could not be written (disk full, quota, permission lost during the run).

    ``path``: the file that was being written; ``reason``: the operating system's words for why
    (``"No space left on device"``). Nothing partial is left behind (``lnm_deploy.fileio``)."""

    exit_code = 2

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = os.fspath(path)
        self.reason = reason
        super().__init__(f"cannot write {path} ({reason})")


class GraphError(LNMDeployError):
    """A graph that is malformed: dangling edges, shape mismatches, missing parameters."""

    exit_code = 3


class UnsupportedError(LNMDeployError):
    """A node type or a semantic (reset mode, discretisation) that lnm-deploy cannot honour."""

    exit_code = 4


class NumericError(LNMDeployError):
    """NaN or infinite parameters, or values that cannot be represented."""

    exit_code = 5


class DependencyError(LNMDeployError):
    """An optional dependency (torch, lava-nc, onnx) that this operation needs is missing, or a
    service it needs does not answer (a Ray cluster at ``--ray-address``)."""

    exit_code = 6


class LNMDeployWarning(UserWarning):
    """Semantics were approximated or information was lost (for example by a framework's exporter)."""

