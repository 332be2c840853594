"""The integer (fixed-point) network a target executes: typed nodes, graph, metadata encoding.

numpy only. Exact step semantics: ``docs/fixed-point.md``; the simulator: ``lnm_deploy.fxsim``.
"""

from lnm_deploy.fixedpoint.arith import OVERFLOWS, ROUNDINGS, Overflow, Rounding
from lnm_deploy.fixedpoint.encode import decode_fxgraph, encode_fxgraph
from lnm_deploy.fixedpoint.graph import FxGraph, fx_sequential
from lnm_deploy.fixedpoint.nodes import (
    SIGN_MODES,
    FxConv2d,
    FxDense,
    FxFlatten,
    FxInput,
    FxLIF,
    FxNeuron,
    FxNode,
    FxOutput,
    FxPoly,
    SignMode,
    SpikeRule,
    dense_effective_weight,
    dense_weight_grid,
    fx_node_types,
    sign_mode_of,
)
from lnm_deploy.fixedpoint.primitives import Primitive, primitive, primitive_of, primitives

__all__ = [
    "OVERFLOWS",
    "ROUNDINGS",
    "SIGN_MODES",
    "FxConv2d",
    "FxDense",
    "FxFlatten",
    "FxGraph",
    "FxInput",
    "FxLIF",
    "FxNeuron",
    "FxNode",
    "FxOutput",
    "FxPoly",
    "Overflow",
    "Primitive",
    "Rounding",
    "SignMode",
    "SpikeRule",
    "decode_fxgraph",
    "dense_effective_weight",
    "dense_weight_grid",
    "encode_fxgraph",
    "fx_node_types",
    "fx_sequential",
    "primitive",
    "primitive_of",
    "primitives",
    "sign_mode_of",
]
