"""fxsim: the bit-accurate, batched simulator of integer networks (``FxGraph``).

numpy throughout, with compiled kernels (``kernels.py``, numba) for Dense, LIF and the polynomial
neuron when numba is installed. ``run_fx(graph, x)`` follows ``docs/fixed-point.md`` exactly and
returns an ``lnm_deploy.execute.RunResult`` on the float executor's time base; ``first_mismatch``
and ``compare_runs`` name the first layer, timestep and neuron where two runs differ.
"""

from lnm_deploy.fxsim.compare import Mismatch, compare_runs, first_mismatch
from lnm_deploy.fxsim.sim import run_fx

__all__ = ["Mismatch", "compare_runs", "first_mismatch", "run_fx"]
