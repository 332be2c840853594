"""Process models of ``PolyNeuron`` and ``Recorder``.

* ``PyPolyNeuronModelFixed`` (``fixed_pt``): bit-accurate, int64 numpy, ``docs/fixed-point.md``
  section 5: it calls the contract step ``lnm_deploy.fixedpoint.contract.poly_step``, the one
  fxsim's numpy engine calls.
* ``PyPolyNeuronModelFloat`` (``floating_pt``): a *different* model of the same process, as
  Lava's float LIF is of its LIF. Same ports and Vars, float64 arithmetic, no rounding and no
  saturation: with the state on the integer grid (one LSB of ``v`` = ``q``),
  ``v' = sum_k coef[k] 2^-f_k v^k + c``, ``c = c (1 - syn_decay / 2^D) + a 2^in_shift + c_bias``, which is
  the dequantized neuron of the artifact's float graph divided by ``q``. It answers "what does
  the float model of this network do", never "what does the chip do": do not compare it with
  ``fixed_pt`` expecting equality.
* ``PyContractNeuronModelFixed`` (``fixed_pt``): ``ContractNeuron``: the registered contract step
  of its primitive, ``primitive(kind).step(params, states, a)``, int64 numpy, on the node's layout.
* ``PyRecorderModelFixed`` / ``PyRecorderModelFloat``: write spikes (uint8) and states (int64 /
  float64) into the memory maps named by the process.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort, PyOutPort, PyRefPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol

from lnm_deploy.fixedpoint.contract import PolyParams, poly_step
from lnm_deploy.fixedpoint.primitives import primitive
from lnm_deploy.lava_backend.procs.process import ContractNeuron, PolyNeuron, Recorder

#: The Vars of ``PolyNeuron`` and their precision (bits) in the ``fixed_pt`` model; ``_poly_vars``
#: declares them on both models (int64 or float64).
POLY_VARS = {"coef": 32, "vth": 32, "v_reset": 32, "syn_decay": 17, "v": 32, "c": 32}
POLY_VARS["c_bias"] = 32  # the current-bias register


def _poly_vars(fixed: bool) -> Any:
    """Class decorator: a ``LavaPyType`` attribute per ``POLY_VARS`` entry (Lava finds them with
    ``getattr``, like ones written in the class body)."""

    def deco(cls: Any) -> Any:
        for name, bits in POLY_VARS.items():
            setattr(cls, name, LavaPyType(np.ndarray, np.int64, precision=bits) if fixed
                    else LavaPyType(np.ndarray, float))
        return cls

    return deco


class _PolyBase(PyLoihiProcessModel):
    """Time base shared by both models: inert before ``start``, reset to the initial states at it."""

    coef: np.ndarray
    vth: np.ndarray
    v_reset: np.ndarray
    syn_decay: np.ndarray
    v: np.ndarray
    c: np.ndarray
    c_bias: np.ndarray

    def _local_step(self) -> int:
        period = self.proc_params["period"]
        k = self.time_step - 1
        return k % period if period > 0 else k

    def _begin(self) -> bool:
        """False (and zero spikes sent) while inert; resets the states at ``start``."""
        p = self.proc_params
        k = self._local_step()
        if k < p["start"]:
            self.s_out.send(np.zeros(self.v.shape, dtype=self.s_out_dtype))
            return False
        if k == p["start"]:
            self.v[:] = p["v_init"]
            self.c[:] = p["c_init"]
        return True


@implements(proc=PolyNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
@_poly_vars(fixed=True)
class PyPolyNeuronModelFixed(_PolyBase):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=32)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=1)
    s_out_dtype = np.int32

    def run_spk(self) -> None:
        a = self.a_in.recv().astype(np.int64)  # int32 sum of the synapses (wrap_32)
        if not self._begin():
            return
        p = self.proc_params
        kc = (1 << p["decay_bits"]) - self.syn_decay if p["has_synapse"] else None
        params = PolyParams(coef=self.coef, shifts=tuple(p["shifts"]), vth=self.vth, v_reset=self.v_reset,
                            reset=p["reset"], in_shift=p["in_shift"], kc=kc, rounding=p["rounding"],
                            overflow=p["overflow"], state_bits=p["state_bits"], acc_bits=p["acc_bits"],
                            decay_bits=p["decay_bits"], threshold=p.get("threshold", ">"),
                            max_payload=p.get("max_payload", 1), v_floor=p.get("v_floor"))
        params = dataclasses.replace(params, c_bias=self.c_bias)  # the current-bias register (zeros: none)
        new, s = poly_step(params, {"v": self.v, "c": self.c}, a)  # the contract, written once
        self.c[:] = new["c"]
        self.v[:] = new["v"]
        self.s_out.send(s.astype(np.int32))  # a graded layer's counts (section 5.2), else 0/1


@implements(proc=PolyNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
@_poly_vars(fixed=False)
class PyPolyNeuronModelFloat(_PolyBase):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, float)
    s_out_dtype = float

    def run_spk(self) -> None:
        a = np.asarray(self.a_in.recv(), dtype=np.float64)
        if not self._begin():
            return
        p = self.proc_params
        x = a * 2.0 ** p["in_shift"] + self.c_bias  # with the current-bias register
        if p["has_synapse"]:
            self.c[:] = self.c * (1.0 - self.syn_decay / 2.0 ** p["decay_bits"]) + x
        else:
            self.c[:] = x
        shifts = p["shifts"]
        h = np.broadcast_to(self.coef[-1], self.v.shape).astype(np.float64)
        for k in range(len(shifts) - 1, -1, -1):
            h = h * self.v * 2.0 ** -shifts[k] + self.coef[k]
        vp = h + self.c
        s = vp >= self.vth if p.get("threshold", ">") == ">=" else vp > self.vth
        cap = p.get("max_payload", 1)
        n = np.where(s, np.clip(np.floor(vp / np.maximum(self.vth, 1)), 1, cap), 0.0) if cap > 1 else s
        if p["reset"] == "value":
            self.v[:] = np.where(s, self.v_reset, vp)
        else:
            self.v[:] = np.where(s, vp - n * self.vth, vp)
        if p.get("v_floor") is not None:
            self.v[:] = np.maximum(self.v, p["v_floor"])
        self.s_out.send(np.asarray(n, dtype=np.float64))


def _node_layout(a: np.ndarray, ndim: int) -> np.ndarray:
    """Lava's (W, H, C) <-> the node's (C, H, W) (its own inverse); 1-d unchanged."""
    return a.transpose(2, 1, 0) if ndim == 3 else a


@implements(proc=ContractNeuron, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyContractNeuronModelFixed(PyLoihiProcessModel):
    """The contract step of any neuron primitive (``ContractNeuron``), with ``PolyNeuron``'s time
    base: inert before ``start``, states reset to their initial values at it. A step that raises
    is reported in ``error_file`` (the runner raises it after the sample) instead of raising
    here, where Lava 0.10 would hang."""

    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=32)
    s_out: PyOutPort = LavaPyType(PyOutPort.VEC_DENSE, np.int32, precision=1)
    s0: np.ndarray = LavaPyType(np.ndarray, np.int64)
    s1: np.ndarray = LavaPyType(np.ndarray, np.int64)
    s2: np.ndarray = LavaPyType(np.ndarray, np.int64)
    s3: np.ndarray = LavaPyType(np.ndarray, np.int64)

    def run_spk(self) -> None:
        a = self.a_in.recv().astype(np.int64)  # int32 sum of the synapses (wrap_32)
        p = self.proc_params
        k = self.time_step - 1
        k = k % p["period"] if p["period"] > 0 else k
        if k < p["start"]:
            self.s_out.send(np.zeros(self.s0.shape, dtype=np.int32))
            return
        names = p["states"]
        held = [getattr(self, f"s{i}") for i in range(len(names))]
        if k == p["start"]:
            for var, init in zip(held, p["inits"], strict=True):
                var[:] = init
        nd = p["layout_ndim"]
        state = {n: _node_layout(v, nd).copy() for n, v in zip(names, held, strict=True)}
        try:
            step = primitive(p["kind"]).step
            assert step is not None  # the runner builds a ContractNeuron only for a registered step
            new, s = step(p["params"], state, _node_layout(a, nd))  # the contract, written once
            out = [_node_layout(np.asarray(new[n], dtype=np.int64), nd) for n in names]
            spikes = _node_layout(np.asarray(s), nd).astype(np.int32)
            for var, val in zip(held, out, strict=True):
                var[:] = val
        except Exception as e:  # raising here would leave Lava 0.10's run() waiting forever
            with open(p["error_file"], "a") as f:
                f.write(f"step {self.time_step}: {type(e).__name__}: {e}\n")
            spikes = np.zeros(self.s0.shape, dtype=np.int32)
        self.s_out.send(spikes)


class _RecorderBase(PyLoihiProcessModel):
    state_dtype: type = np.int64

    def __init__(self, proc_params: Any) -> None:
        super().__init__(proc_params)
        self._maps: list[np.memmap] | None = None

    def _open(self) -> list[np.memmap]:
        if self._maps is None:
            p = self.proc_params
            shape = (p["length"], *p["shape"])
            dtypes = [np.uint8] + [self.state_dtype] * p["n_refs"]
            self._maps = [np.memmap(f, dtype=d, mode="r+", shape=shape) for f, d in zip(p["files"], dtypes, strict=True)]
        return self._maps

    def _row(self) -> int:
        return (self.time_step - 1) % self.proc_params["length"]

    def run_spk(self) -> None:
        s = self.s_in.recv()
        # integers as they come (a graded layer's counts, 0..255: docs/fixed-point.md 5.2), else 0/1
        self._open()[0][self._row()] = s if s.dtype.kind in "iu" else np.clip(np.rint(np.abs(s)), 0, 255)

    def post_guard(self) -> bool:
        return self.proc_params["n_refs"] > 0

    def run_post_mgmt(self) -> None:
        maps = self._open()
        row = self._row()
        for i in range(self.proc_params["n_refs"]):
            maps[1 + i][row] = getattr(self, f"ref_{i}").read()


@implements(proc=Recorder, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyRecorderModelFixed(_RecorderBase):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32, precision=24)
    ref_0: PyRefPort = LavaPyType(PyRefPort.VEC_DENSE, np.int64)
    ref_1: PyRefPort = LavaPyType(PyRefPort.VEC_DENSE, np.int64)
    ref_2: PyRefPort = LavaPyType(PyRefPort.VEC_DENSE, np.int64)
    ref_3: PyRefPort = LavaPyType(PyRefPort.VEC_DENSE, np.int64)
    state_dtype = np.int64


@implements(proc=Recorder, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyRecorderModelFloat(_RecorderBase):
    s_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)
    ref_0: PyRefPort = LavaPyType(PyRefPort.VEC_DENSE, float)
    ref_1: PyRefPort = LavaPyType(PyRefPort.VEC_DENSE, float)
    ref_2: PyRefPort = LavaPyType(PyRefPort.VEC_DENSE, float)
    ref_3: PyRefPort = LavaPyType(PyRefPort.VEC_DENSE, float)
    state_dtype = np.float64
