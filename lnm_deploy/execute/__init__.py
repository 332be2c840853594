"""Executors of the IR, by backend name. ``run_float`` is the float reference (numpy only).

Every backend takes ``(graph, x, *, record=False, progress=False)`` with x shaped
(samples, timesteps, *input_shape) and returns a ``RunResult`` on the same time base: step t of the
output answers step t of the input.
"""

from collections.abc import Callable

from lnm_deploy.execute.float_exec import RunResult, run_float

Backend = Callable[..., RunResult]

BACKENDS: dict[str, Backend] = {"float": run_float}

__all__ = ["BACKENDS", "Backend", "RunResult", "run_float"]
