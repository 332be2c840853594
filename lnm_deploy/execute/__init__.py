"""Executors of the IR: ``run_float`` is the float reference (numpy only).

The backends by name (float, fxsim, lava) are in ``lnm_deploy.backends``. ``RunResult`` lives in
the shared core (``lnm_deploy.core``) and is re-exported here.
"""

from lnm_deploy.core.results import RunResult
from lnm_deploy.execute.float_exec import run_float

__all__ = ["RunResult", "run_float"]
