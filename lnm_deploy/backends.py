"""The backends ``lnm-deploy run``, ``verify`` and ``compile`` can use, by name: a registry.

Every backend returns a ``RunResult`` on the same time base (step t of the output answers step t of
the input). ``float`` runs a float IR graph (a plain graph, or an artifact's dequantized graph);
the integer backends run an artifact's ``FxGraph``, bit for bit per ``docs/fixed-point.md``.

A backend registers itself with ``register_backend``; what primitive kinds it runs is derived from
its own per-kind implementation tables (``Backend.kinds()``), never listed by hand here.
``backend(name)`` raises ``UserInputError`` listing the known names.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from lnm_deploy.errors import UserInputError
from lnm_deploy.execute import RunResult, run_float


@dataclass(frozen=True)
class Backend:
    """One backend.

    ``integer``: runs an artifact's integer network (else the float graph). ``run(graph, x, *,
    record, progress, **options) -> RunResult``; it checks ``graph`` first (``validate.fx_graph`` /
    ``validate.float_graph``: the package's backends do it in ``run_fx``, ``run_lava``,
    ``run_onnx``, ``run_float``), so the other kind of graph, an ``Artifact`` or None is a
    ``UserInputError`` naming what was given and the fix. ``kinds() -> frozenset[str]``: the integer
    primitive kinds it implements, read from its per-kind tables (importing the backend; raises
    ``DependencyError`` when its extra is missing); ``None`` for a float backend. ``configs``:
    named option sets of ``run`` that must all compute the same integers (for example fxsim's
    numpy engine and its numba kernels; the conformance suite runs each). ``compile(artifact,
    out, *, force, states) -> Path``: writes a model file of an artifact, or ``None``.
    """

    name: str
    integer: bool
    run: Callable[..., RunResult]
    description: str
    kinds: Callable[[], frozenset[str]] | None = None
    configs: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: {"default": {}})
    compile: Callable[..., Any] | None = None


BACKENDS: dict[str, Backend] = {}


def register_backend(b: Backend) -> Backend:
    """Add ``b`` to the registry (its name must be new)."""
    if b.name in BACKENDS:
        raise ValueError(f"backend {b.name!r} is registered twice")
    BACKENDS[b.name] = b
    return b


def backend(name: str) -> Backend:
    """The backend called ``name``; ``UserInputError`` listing the known ones."""
    b = BACKENDS.get(name)
    if b is None:
        raise UserInputError(f"unknown backend {name!r}; known: {', '.join(sorted(BACKENDS))}")
    return b


def integer_backends() -> dict[str, Backend]:
    """The registered integer backends by name."""
    return {k: b for k, b in BACKENDS.items() if b.integer}


# ------------------------------------------------------------------ the backends of the package


def _fxsim(graph: Any, x: Any, *, record: bool = False, progress: bool = False, **options: Any) -> RunResult:
    from lnm_deploy.fxsim import run_fx

    return run_fx(graph, x, record=record, progress=progress, **options)


def _fxsim_kinds() -> frozenset[str]:
    from lnm_deploy.fxsim.sim import supported_kinds

    return supported_kinds()


def _lava(graph: Any, x: Any, *, record: bool = False, progress: bool = False, **options: Any) -> RunResult:
    from lnm_deploy.lava_backend import run_lava  # imports lava-nc only when called

    return run_lava(graph, x, record=record, progress=progress, **options)


def _lava_kinds() -> frozenset[str]:
    from lnm_deploy.lava_backend import supported_kinds

    return supported_kinds()


def _onnx(graph: Any, x: Any, *, record: bool = False, progress: bool = False, **options: Any) -> RunResult:
    from lnm_deploy.onnx_backend import run_onnx  # imports onnx/onnxruntime only when called

    return run_onnx(graph, x, record=record, progress=progress, **options)


def _onnx_kinds() -> frozenset[str]:
    from lnm_deploy.onnx_backend import supported_kinds

    return supported_kinds()


def _onnx_compile(artifact: Any, out: Any, *, force: bool = False, states: bool = True) -> Any:
    from lnm_deploy.onnx_backend import compile_onnx

    return compile_onnx(artifact, out, force=force, states=states)


register_backend(Backend("float", False, run_float, "numpy float64 reference executor of the IR"))
register_backend(Backend("fxsim", True, _fxsim, "lnm-deploy's bit-accurate fixed-point simulator (batched)",
                         kinds=_fxsim_kinds,
                         configs={"numpy": {"kernels": "numpy"}, "numba": {"kernels": "numba"}}))
register_backend(Backend("lava", True, _lava, "Lava 0.10 processes under Loihi2SimCfg(select_tag='fixed_pt')",
                         kinds=_lava_kinds))
register_backend(Backend("onnx", True, _onnx, "the integer network as one ONNX model, run by onnxruntime (CPU)",
                         kinds=_onnx_kinds, compile=_onnx_compile))
