"""The backends ``lnm-deploy run`` and ``verify`` can use, by name.

Every backend returns a ``RunResult`` on the same time base (step t of the output answers step t of
the input). ``float`` runs a float IR graph (a plain graph, or an artifact's dequantized graph);
the integer backends run an artifact's ``FxGraph``, bit for bit per ``docs/fixed-point.md``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lnm_deploy.execute import RunResult, run_float


def _fxsim(graph: Any, x: Any, *, record: bool = False, progress: bool = False) -> RunResult:
    from lnm_deploy.fxsim import run_fx

    return run_fx(graph, x, record=record, progress=progress)


def _lava(graph: Any, x: Any, *, record: bool = False, progress: bool = False) -> RunResult:
    from lnm_deploy.lava_backend import run_lava  # imports lava-nc only when called

    return run_lava(graph, x, record=record, progress=progress)


def _onnx(graph: Any, x: Any, *, record: bool = False, progress: bool = False) -> RunResult:
    from lnm_deploy.onnx_backend import run_onnx  # imports onnx/onnxruntime only when called

    return run_onnx(graph, x, record=record, progress=progress)


@dataclass(frozen=True)
class Backend:
    """``integer``: runs an artifact's integer network (else the float graph)."""

    name: str
    integer: bool
    run: Callable[..., RunResult]
    description: str


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("float", False, run_float, "numpy float64 reference executor of the IR"),
        Backend("fxsim", True, _fxsim, "lnm-deploy's bit-accurate fixed-point simulator (batched)"),
        Backend("lava", True, _lava, "Lava 0.10 processes under Loihi2SimCfg(select_tag='fixed_pt')"),
        Backend("onnx", True, _onnx, "the integer network as one ONNX model, run by onnxruntime (CPU)"),
    )
}
