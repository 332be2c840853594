"""Lava 0.10 backend: run an ``FxGraph`` on Lava's fixed_pt process models (Python 3.10 only).

``run_lava(graph, x, *, record=False, progress=False) -> RunResult`` has fxsim's signature and
time base (``docs/lava.md`` explains how Lava's per-synapse latency is hidden and how one compiled
network runs every sample). ``run_lava_float`` runs the same network on Lava's ``floating_pt``
models (a different, float model). ``run_lava_timed`` also returns where the time went.
lava-nc is imported only when one of them is called, so this package imports without it.
"""

from __future__ import annotations

from typing import Any

from lnm_deploy.errors import DependencyError


def _runner() -> Any:
    try:
        from lnm_deploy.lava_backend import runner
    except ImportError as e:  # lava-nc missing (it installs on Python 3.10 only)
        raise DependencyError(
            f"the Lava backend needs lava-nc 0.10 (pip install 'lnm-deploy[lava]', Python 3.10): {e}"
        ) from e
    return runner


def _fx(graph: Any, entry: str) -> Any:
    """``graph`` checked as an ``FxGraph`` before lava-nc is imported (``validate.fx_graph``)."""
    from lnm_deploy import validate

    return validate.fx_graph(graph, entry)


def run_lava(graph: Any, x: Any, *, record: bool = False, progress: bool = False) -> Any:
    """Bit-accurate run under ``Loihi2SimCfg(select_tag='fixed_pt')``; a ``RunResult`` like fxsim's.
    ``UserInputError`` when ``graph`` is not an ``FxGraph`` (an artifact's ``.fx``)."""
    _fx(graph, "run_lava")
    return _runner().run_lava(graph, x, record=record, progress=progress)


def run_lava_float(graph: Any, x: Any, *, record: bool = False, progress: bool = False) -> Any:
    """The float model of the same network (``select_tag='floating_pt'``); never bit-exact."""
    _fx(graph, "run_lava_float")
    return _runner().run_lava_float(graph, x, record=record, progress=progress)


def run_lava_timed(graph: Any, x: Any, *, record: bool = False, progress: bool = False,
                   samples_per_network: int | None = None) -> tuple[Any, Any]:
    """``run_lava`` plus a ``LavaTimings`` (build, compile, stepping, read-back, stop seconds)."""
    _fx(graph, "run_lava_timed")
    return _runner().run(graph, x, record=record, progress=progress, samples_per_network=samples_per_network)


def supported_kinds() -> frozenset[str]:
    """The primitive kinds the Lava backend maps (its ``LAVA_KINDS`` table, plus every neuron
    primitive with a registered contract step, run as a ``ContractNeuron``; imports lava-nc)."""
    return frozenset(_runner().lava_kinds())


__all__ = ["run_lava", "run_lava_float", "run_lava_timed", "supported_kinds"]
