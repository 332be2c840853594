"""lnm-deploy's intermediate representation: discrete-time graphs of numpy dataclasses.

The bottom of the import graph: this package imports numpy and ``lnm_deploy.errors`` only.
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
    node_types,
)

__all__ = [
    "RESET_MODES",
    "Affine",
    "AvgPool2d",
    "Conv2d",
    "Flatten",
    "Graph",
    "Input",
    "Neuron",
    "Node",
    "Output",
    "Scale",
    "Schedule",
    "Shape",
    "SumPool2d",
    "Threshold",
    "node_types",
    "sequential",
]
