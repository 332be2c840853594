"""Lava processes of lnm-deploy: ``PolyNeuron`` (the programmable polynomial neuron),
``ContractNeuron`` (any neuron primitive with a registered contract step) and ``Recorder`` (a
spike and state probe that writes to shared memory).

Only process and process-model modules live in this package: Lava's model discovery executes every
``.py`` file in a process's directory.

``PolyNeuron`` semantics: ``docs/fixed-point.md`` section 5 (``lnm_deploy.fixedpoint.FxPoly``).
All per-neuron parameters are arrays of the process shape; ``shifts`` has one entry per Horner
step; ``c_bias`` (None: zeros) is the current-bias register, added to ``a_in << in_shift`` every step.
The spike rules of section 5.2 (``threshold``, ``max_payload``, ``v_floor``) are process
parameters; a graded layer (``max_payload > 1``) sends its counts through ``s_out`` (int32), which
the Dense/Conv it feeds reads with ``num_message_bits > 0``. Two process models implement it (``models.py``): ``fixed_pt`` (bit-accurate, int64) and
``floating_pt`` (float64, a different model; see there).

Time base: with ``period = 0`` the local step is the Lava step ``k = time_step - 1``; with
``period = P > 0`` it is ``k mod P``, so one compiled network runs many samples back to back. At
local steps ``k < start`` the neuron is inert (no state change, no spike; the input is ignored),
at ``k == start`` it first resets ``v`` and ``c`` to ``v_init`` and ``c_init``. This hides Lava's
per-synapse latency (``docs/lava.md``). ``ContractNeuron`` has the same time base.
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
                 period: int = 0, name: str | None = None, c_bias: np.ndarray | None = None,
                 threshold: str = ">", max_payload: int = 1, v_floor: np.ndarray | None = None) -> None:
        v_init = np.broadcast_to(np.asarray(v_init), shape).copy()
        c_init = np.broadcast_to(np.asarray(c_init), shape).copy()
        rules: dict[str, ty.Any] = {}  # docs/fixed-point.md 5.2, only where they differ from the binary neuron
        if threshold != ">" or max_payload != 1 or v_floor is not None:
            rules = {"threshold": str(threshold), "max_payload": int(max_payload),
                     "v_floor": None if v_floor is None else np.broadcast_to(np.asarray(v_floor, np.int64), shape).copy()}
        super().__init__(shape=shape, shifts=tuple(int(s) for s in shifts), reset=reset,
                         rounding=rounding, overflow=overflow, in_shift=int(in_shift),
                         state_bits=int(state_bits), acc_bits=int(acc_bits),
                         decay_bits=int(decay_bits), start=int(start), period=int(period),
                         has_synapse=syn_decay is not None, v_init=v_init, c_init=c_init, name=name, **rules)
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        self.coef = Var(shape=coef.shape, init=coef)
        self.vth = Var(shape=shape, init=vth)
        self.v_reset = Var(shape=shape, init=v_reset)
        self.syn_decay = Var(shape=shape, init=np.zeros(shape, np.int64) if syn_decay is None else syn_decay)
        self.v = Var(shape=shape, init=v_init)
        self.c = Var(shape=shape, init=c_init)
        # the current-bias register (docs/fixed-point.md 5, step 1), added to a_in << in_shift; zeros: none
        self.c_bias = Var(shape=shape, init=np.zeros(shape, np.int64) if c_bias is None
                          else np.broadcast_to(np.asarray(c_bias, np.int64), shape).copy())


#: The most states a ``ContractNeuron`` (and a ``Recorder``) holds: its Vars ``s0`` .. ``s3``.
MAX_STATES = 4


class ContractNeuron(AbstractProcess):
    """A neuron population whose step is the contract step of its integer primitive, looked up
    by ``kind`` in ``lnm_deploy.fixedpoint.primitives`` inside the process model:
    ``primitive(kind).step(params, states, a)`` (the function fxsim's numpy engine evaluates), so
    a primitive registered at run time (a test's, a plugin's) runs here without a process of its
    own (Lava forks its model processes: the registry entry is inherited).

    ``params``: ``primitive(kind).params(node)``, in the node's layout; ``states``: the state
    names (``node.state_names()``, at most ``MAX_STATES``), held in the Vars ``s0``, ``s1``, ...
    in order (``state_var(name)``), int64, in Lava's layout (``shape``); ``inits``: each state's
    initial value (Lava layout, broadcast to ``shape``). ``layout_ndim``: 3 when the layer is an
    image, whose Lava layout (W, H, C) the model transposes to the node's (C, H, W) around the
    step. ``start``/``period``: the time base of ``PolyNeuron``. ``error_file``: where the model
    appends the error of a step that raises (it then sends no spikes; the host reads the file).
    Only a ``fixed_pt`` model exists.
    """

    def __init__(self, *, shape: tuple[int, ...], kind: str, params: ty.Any, states: ty.Sequence[str],
                 inits: ty.Sequence[np.ndarray], layout_ndim: int, error_file: str, start: int = 0,
                 period: int = 0, name: str | None = None) -> None:
        states = tuple(str(k) for k in states)
        if len(states) > MAX_STATES or len(inits) != len(states):
            raise ValueError(f"a ContractNeuron holds 1..{MAX_STATES} states with one initial value "
                             f"each, got {states} and {len(inits)} values")
        full = [np.broadcast_to(np.asarray(i, dtype=np.int64), shape).copy() for i in inits]
        super().__init__(shape=shape, kind=str(kind), params=params, states=states, inits=full,
                         layout_ndim=int(layout_ndim), error_file=str(error_file), start=int(start),
                         period=int(period), name=name)
        self.a_in = InPort(shape=shape)
        self.s_out = OutPort(shape=shape)
        zero = np.zeros(shape, np.int64)
        self.s0 = Var(shape=shape, init=full[0] if len(full) > 0 else zero)
        self.s1 = Var(shape=shape, init=full[1] if len(full) > 1 else zero)
        self.s2 = Var(shape=shape, init=full[2] if len(full) > 2 else zero)
        self.s3 = Var(shape=shape, init=full[3] if len(full) > 3 else zero)

    def state_var(self, state: str) -> Var:
        """The Var holding ``state`` (one of the ``states`` given)."""
        var: Var = getattr(self, f"s{self.proc_params['states'].index(state)}")
        return var


class Recorder(AbstractProcess):
    """Records the spikes arriving at ``s_in`` and, through ``ref_0``/``ref_1`` (connect them with
    ``ref.connect_var(var)``), up to ``MAX_STATES`` state Vars (``ref_0`` .. ``ref_3``; the first
    ``n_refs`` are connected) read after each step's spiking phase.

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
        self.ref_2 = RefPort(shape=shape)
        self.ref_3 = RefPort(shape=shape)
