"""Lava 0.10 backend: run an ``FxGraph`` on Lava's fixed_pt process models (Python 3.10 only).

``run_lava(graph, x, *, record=False, progress=False) -> RunResult`` has fxsim's signature and
time base (``docs/fixed-point.md`` section 7 explains how Lava's per-synapse latency is hidden).
lava-nc is imported only when ``run_lava`` is called, so this package imports without it.
"""

from __future__ import annotations

from typing import Any

from lnm_deploy.errors import DependencyError


def run_lava(graph: Any, x: Any, *, record: bool = False, progress: bool = False) -> Any:
    try:
        from lnm_deploy.lava_backend import runner
    except ImportError as e:  # lava-nc missing (it installs on Python 3.10 only)
        raise DependencyError(
            f"the Lava backend needs lava-nc 0.10 (pip install 'lnm-deploy[lava]', Python 3.10): {e}"
        ) from e
    return runner.run_lava(graph, x, record=record, progress=progress)


__all__ = ["run_lava"]
