"""``RunResult``: what every executor of a network returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Array = np.ndarray


@dataclass
class RunResult:
    """What a run returns; every array is (batch, timesteps, *shape).

    ``output``: the Output node's values. ``spikes``: every spiking node's spikes (a node whose
    ``emits_spikes`` is true: a Neuron with a threshold, a Threshold), always recorded. ``states``:
    per stateful node its state variables by name (``Node.state_names``; for a Neuron ``{"v":
    membrane after reset, "v_pre": membrane before the spike test, "c": synaptic current}``, ``c``
    only for nodes with a synapse), only with ``record=True``. ``values``: the output of each node
    named in ``run_float``'s ``keep_outputs``; ``inputs``: the summed input (what its step receives)
    of each node named in ``keep_inputs`` (both empty unless asked for; float executor only).
    """

    output: Array
    spikes: dict[str, Array] = field(default_factory=dict)
    states: dict[str, dict[str, Array]] = field(default_factory=dict)
    values: dict[str, Array] = field(default_factory=dict)
    inputs: dict[str, Array] = field(default_factory=dict)
