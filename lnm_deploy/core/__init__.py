"""The shared core below the stages: what every stage's results look like and how two runs are
compared. Imports numpy, the standard library and ``lnm_deploy.errors`` only; every stage may
import it, it imports no stage.

- ``RunResult``: what every executor returns (float, fxsim, ONNX, Lava).
- ``first_mismatch`` / ``compare_runs`` / ``Mismatch``: the first difference between two runs, by
  layer, timestep, sample and neuron (exact, ``np.array_equal``).
- ``first_divergence`` / ``Divergence``: the same question with a flat neuron index, as the
  calibration and verification reports state it.
"""

from lnm_deploy.core.compare import (
    Divergence,
    Mismatch,
    compare_runs,
    first_divergence,
    first_mismatch,
)
from lnm_deploy.core.results import RunResult

__all__ = ["Divergence", "Mismatch", "RunResult", "compare_runs", "first_divergence", "first_mismatch"]
