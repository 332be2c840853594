"""``PolyNeuron``: lnm-deploy's programmable polynomial neuron as a Lava process.

Semantics: ``docs/fixed-point.md`` section 5 (``lnm_deploy.fixedpoint.FxPoly``). All per-neuron
parameters are arrays of the process shape; ``shifts`` has one entry per Horner step. The model
is inert (no state change, no spike) at Lava steps ``k < start`` (0-based), which hides Lava's
per-synapse latency (section 7).
"""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var


class PolyNeuron(AbstractProcess):
    def __init__(self, *, shape: tuple[int, ...], coef: np.ndarray, shifts: ty.Sequence[int],
                 vth: np.ndarray, v_reset: np.ndarray, v_init: np.ndarray, c_init: np.ndarray,
                 syn_decay: np.ndarray | None, reset: str, rounding: str, overflow: str,
                 in_shift: int, state_bits: int, acc_bits: int, decay_bits: int, start: int = 0,
                 name: str | None = None) -> None:
        super().__init__(shape=shape, shifts=tuple(int(s) for s in shifts), reset=reset,
                         rounding=rounding, overflow=overflow, in_shift=int(in_shift),
                         state_bits=int(state_bits), acc_bits=int(acc_bits),
                         decay_bits=int(decay_bits), start=int(start),
                         has_synapse=syn_decay is not None, name=name)
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.coef = Var(shape=coef.shape, init=coef)
        self.vth = Var(shape=shape, init=vth)
        self.v_reset = Var(shape=shape, init=v_reset)
        self.syn_decay = Var(shape=shape, init=np.zeros(shape, np.int64) if syn_decay is None else syn_decay)
        self.v = Var(shape=shape, init=v_init)
        self.c = Var(shape=shape, init=c_init)
