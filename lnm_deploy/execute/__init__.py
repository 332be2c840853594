"""Executors of the IR: ``run_float`` is the float reference (numpy only).

The backends by name (float, fxsim, lava) are in ``lnm_deploy.backends``.
"""

from lnm_deploy.execute.float_exec import RunResult, run_float

__all__ = ["RunResult", "run_float"]
