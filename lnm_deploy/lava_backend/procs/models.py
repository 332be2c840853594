"""fixed_pt model of ``PolyNeuron`` (int64 numpy, ``docs/fixed-point.md`` section 5)."""

from __future__ import annotations

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lnm_deploy.lava_backend.procs.process import PolyNeuron


def _rshift(x: np.ndarray, s: int, mode: str) -> np.ndarray:
    if s == 0:
        return x
    if mode == "floor":
        return x >> s
    if mode == "trunc":
        return np.sign(x) * (np.abs(x) >> s)
    return (x + (1 << (s - 1))) >> s


def _ovf(x: np.ndarray, bits: int, mode: str) -> np.ndarray:
    half = 1 << (bits - 1)
    if mode == "saturate":
        return np.clip(x, -(half - 1), half - 1)
    return ((x + half) & ((1 << bits) - 1)) - half


@implements(proc=PolyNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyPolyNeuronModelFixed(PyLoihiProcessModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=32)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=1)
    coef: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=32)
    vth: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=32)
    v_reset: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=32)
    syn_decay: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=17)
    v: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=32)
    c: np.ndarray = LavaPyType(np.ndarray, np.int64, precision=32)

    def run_spk(self) -> None:
        a = self.a_in.recv().astype(np.int64)  # int32 sum of the synapses (wrap_32)
        p = self.proc_params
        if self.time_step - 1 < p["start"]:
            self.s_out.send(np.zeros(self.v.shape, dtype=np.int32))
            return
        S, R, rnd, ovf = p["state_bits"], p["acc_bits"], p["rounding"], p["overflow"]
        x = a << p["in_shift"]
        if p["has_synapse"]:
            kc = (1 << p["decay_bits"]) - self.syn_decay
            c = _ovf(_rshift(self.c * kc, p["decay_bits"], rnd) + x, S, ovf)
        else:
            c = _ovf(x, S, ovf)
        self.c[:] = c
        shifts = p["shifts"]
        h = np.broadcast_to(self.coef[-1], self.v.shape).astype(np.int64)
        for k in range(len(shifts) - 1, -1, -1):
            h = _ovf(_rshift(h * self.v, shifts[k], rnd) + self.coef[k], R, ovf)
        vp = _ovf(h + c, S, ovf)
        s = vp > self.vth
        if p["reset"] == "value":
            self.v[:] = np.where(s, self.v_reset, vp)
        else:
            self.v[:] = np.where(s, _ovf(vp - self.vth, S, ovf), vp)
        self.s_out.send(s.astype(np.int32))
