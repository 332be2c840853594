"""lnm-deploy's intermediate representation: discrete-time graphs of numpy dataclasses.

The bottom of the import graph: this package imports numpy and ``lnm_deploy.errors`` only.
Each node kind owns its float semantics (``Node.float_step``, ``state_names``, ``emits_spikes``,
``spike_source``; the arithmetic in ``lnm_deploy.ir.ops``); ``node_types()`` / ``node_type(kind)``
are the registry, collected from the class tree.
"""

from lnm_deploy.ir.graph import Graph, Schedule, sequential
from lnm_deploy.ir.nodes import (
    RESET_MODES,
    Affine,
    AvgPool2d,
    Conv2d,
    Flatten,
    Input,
    Neuron,
    Node,
    Output,
    Scale,
    Shape,
    SumPool2d,
    Threshold,
    node_type,
    node_types,
)
from lnm_deploy.ir.ops import FloatStep, NeuronStep, StatelessStep

__all__ = [
    "RESET_MODES",
    "Affine",
    "AvgPool2d",
    "Conv2d",
    "Flatten",
    "FloatStep",
    "Graph",
    "Input",
    "Neuron",
    "NeuronStep",
    "Node",
    "Output",
    "Scale",
    "Schedule",
    "Shape",
    "StatelessStep",
    "SumPool2d",
    "Threshold",
    "node_type",
    "node_types",
    "sequential",
]
