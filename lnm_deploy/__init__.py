"""lnm-deploy: take spiking networks with learned neuron dynamics to neuromorphic hardware.

The public API is small: ``export`` (PyTorch model -> NIR), ``load`` (NIR -> IR), ``run_float``
(the float reference executor). Torch is imported only by ``export``.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from lnm_deploy import adaptive as _adaptive  # noqa: F401  (registers the adaptive-threshold neuron)
from lnm_deploy import li_readout as _li_readout  # noqa: F401  (registers the non-spiking readout)
from lnm_deploy._version import __version__
from lnm_deploy.execute import RunResult, run_float

if TYPE_CHECKING:
    import nir

    from lnm_deploy.ir import Graph


def export(model: Any, path: str | os.PathLike[str] | None = None, *, input_shape: int | tuple[int, ...],
           dt: float = 1e-3) -> nir.NIRGraph:
    """Export a trained ``lnm_deploy.model.LNMSequential`` to a NIR graph (and to ``path`` if given).

    LNM layers become the NIR neuron that best approximates them, with the exact polynomial,
    dt (seconds per step), reset mode and threshold test in node metadata (see docs/nir.md).
    ``input_shape``: one step's input without batch and time, an int (``64``) or a tuple.
    """
    from lnm_deploy import validate
    from lnm_deploy.model import model_to_ir
    from lnm_deploy.nir_io import to_nir, write_nir

    shape = validate.shape_option(input_shape, "input_shape (CLI --input-shape)")
    dt = validate.finite_float(dt, "dt (CLI --dt)", positive=True)
    graph = model_to_ir(model, shape, dt=dt)
    if path is not None:
        write_nir(graph, path)
    return to_nir(graph)


def load(source: str | os.PathLike[str] | nir.NIRGraph, *, dt: float | None = None,
         producer: str | None = None, input_shape: tuple[int, ...] | None = None, reset: str | None = None,
         threshold: str | None = None, spikes: str | None = None) -> Graph:
    """Read a NIR graph (file or ``nir.NIRGraph``) written by lnm-deploy, snnTorch, Norse, Sinabs,
    Rockpool or others; the options are ``lnm_deploy.nir_io.from_nir``'s (docs/nir.md)."""
    from lnm_deploy.nir_io import from_nir

    return from_nir(source, dt=dt, producer=producer, input_shape=input_shape, reset=reset,
                    threshold=threshold, spikes=spikes)


__all__ = ["RunResult", "__version__", "export", "load", "run_float"]
