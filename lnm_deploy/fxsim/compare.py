"""Exact comparison of two runs: the first layer, timestep and neuron that differ.

The comparison lives in the shared core (``lnm_deploy.core.compare``); these names are kept here
for the code that imports them from fxsim.
"""

from lnm_deploy.core.compare import Mismatch, compare_runs, first_mismatch

__all__ = ["Mismatch", "compare_runs", "first_mismatch"]
