"""Limits shared by the float IR and the integer primitives, defined once (imports nothing).

Both ``lnm_deploy.ir.nodes`` (the float ``Neuron``) and ``lnm_deploy.fixedpoint`` (``FxPoly``, the
target sections and design rules) read these; the limits that only the integer network knows live
with their primitive (``lnm_deploy.fixedpoint.nodes``: ``SIGN_MODES``, ``FxLIF.limits``, ...) and the
roundings and overflow modes with the arithmetic that implements them
(``lnm_deploy.fixedpoint.arith``: ``ROUNDINGS``, ``OVERFLOWS``).
"""

from __future__ import annotations

from typing import Literal

#: What a neuron does to its membrane after a spike: set it to ``v_reset`` ("value") or subtract
#: the threshold ("subtract").
ResetMode = Literal["value", "subtract"]
RESET_MODES: tuple[str, ...] = ("value", "subtract")
#: The neuron's spike test: ``v' > v_th`` (lnm-deploy's default, snnTorch, Norse) or ``v' >= v_th``
#: (Sinabs, Rockpool).
ThresholdTest = Literal[">", ">="]
THRESHOLD_TESTS: tuple[str, ...] = (">", ">=")

#: The polynomial degrees a neuron may have, inclusive (``P(v) = sum_k theta_k v^k``, Horner).
POLY_DEGREES: tuple[int, int] = (0, 3)
MAX_POLY_DEGREE: int = POLY_DEGREES[1]

__all__ = ["MAX_POLY_DEGREE", "POLY_DEGREES", "RESET_MODES", "THRESHOLD_TESTS", "ResetMode", "ThresholdTest"]
