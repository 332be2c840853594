"""Lava processes of lnm-deploy: ``PolyNeuron`` (the programmable polynomial neuron) and
``Recorder`` (a spike and state probe that writes to shared memory).

Only process and process-model modules live in this package: Lava's model discovery executes every
``.py`` file in a process's directory.

``PolyNeuron`` semantics: ``docs/fixed-point.md`` section 5 (``lnm_deploy.fixedpoint.FxPoly``).
All per-neuron parameters are arrays of the process shape; ``shifts`` has one entry per Horner
step. Two process models implement it (``models.py``): ``fixed_pt`` (bit-accurate, int64) and
``floating_pt`` (float64, a different model; see there).

Time base: with ``period = 0`` the local step is the Lava step ``k = time_step - 1``; with
``period = P > 0`` it is ``k mod P``, so one compiled network runs many samples back to back. At
local steps ``k < start`` the neuron is inert (no state change, no spike; the input is ignored),
at ``k == start`` it first resets ``v`` and ``c`` to ``v_init`` and ``c_init``. This hides Lava's
per-synapse latency (``docs/lava.md``).
"""

from __future__ import annotations

import typing as ty

import numpy as np
from lava.magma.core.process.ports.ports import InPort, OutPort, RefPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.process.variable import Var


class PolyNeuron(AbstractProcess):
    def __init__(self, *, shape: tuple[int, ...], coef: np.ndarray, shifts: ty.Sequence[int],
                 vth: np.ndarray, v_reset: np.ndarray, v_init: np.ndarray, c_init: np.ndarray,
                 syn_decay: np.ndarray | None, reset: str, rounding: str, overflow: str,
                 in_shift: int, state_bits: int, acc_bits: int, decay_bits: int, start: int = 0,
                 period: int = 0, name: str | None = None) -> None:
        v_init = np.broadcast_to(np.asarray(v_init), shape).copy()
        c_init = np.broadcast_to(np.asarray(c_init), shape).copy()
        super().__init__(shape=shape, shifts=tuple(int(s) for s in shifts), reset=reset,
                         rounding=rounding, overflow=overflow, in_shift=int(in_shift),
                         state_bits=int(state_bits), acc_bits=int(acc_bits),
                         decay_bits=int(decay_bits), start=int(start), period=int(period),
                         has_synapse=syn_decay is not None, v_init=v_init, c_init=c_init, name=name)
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.coef = Var(shape=coef.shape, init=coef)
        self.vth = Var(shape=shape, init=vth)
        self.v_reset = Var(shape=shape, init=v_reset)
        self.syn_decay = Var(shape=shape, init=np.zeros(shape, np.int64) if syn_decay is None else syn_decay)
        self.v = Var(shape=shape, init=v_init)
        self.c = Var(shape=shape, init=c_init)


class Recorder(AbstractProcess):
    """Records the spikes arriving at ``s_in`` and, through ``ref_0``/``ref_1`` (connect them with
    ``ref.connect_var(var)``), up to two state Vars read after each step's spiking phase.

    Lava's own ``RingBuffer`` sink and ``Monitor`` are read back with ``Var.get``, which moves one
    value per message (about 35 us each). This probe writes every step into numpy memory maps
    (``files``: one path per recorded quantity, spikes first, each holding ``length`` rows of
    ``shape``; row ``(time_step - 1) mod length``) that the host reads directly.
    """

    def __init__(self, *, shape: tuple[int, ...], files: ty.Sequence[str], length: int, n_refs: int = 0,
                 name: str | None = None) -> None:
        super().__init__(shape=shape, files=tuple(str(f) for f in files), length=int(length),
                         n_refs=int(n_refs), name=name)
        self.s_in = InPort(shape=shape)
        self.ref_0 = RefPort(shape=shape)
        self.ref_1 = RefPort(shape=shape)
