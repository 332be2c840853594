"""Map a float IR graph onto a target's integer primitives: the quantizer.

Input: a validated float IR graph, the calibrated ranges of every neuron layer, a target. Output:
the integer network (``FxGraph``), the dequantized float graph (the integers times their scales,
for any NIR reader), and a typed record of every choice (scales, shifts, fits, overflow proofs).

``quantize`` runs the four passes of ``lnm_deploy.calibrate.passes`` (fold the synapse chains onto
a mapped, still-float graph; select a primitive per layer; plan scales; encode integers); that
module documents each pass and the scale rules (also docs/calibration.md). Passes 2-4 of a layer
are its float kind's registered ``Lowering`` (``lnm_deploy.calibrate.lowering``; the Neuron's two
in ``lnm_deploy.calibrate.neuron_lowerings``). The names here are re-exported for existing callers;
``find_synapses`` (pass 1 for one layer) is kept for them, the package reads the mapped graph.
"""

from __future__ import annotations

from lnm_deploy.calibrate.lowering import (
    Lowering,
    choose_lowering,
    lowering_of,
    lowerings,
    register_lowering,
    unregister_lowering,
)
from lnm_deploy.calibrate.neuron_lowerings import lif_fit
from lnm_deploy.calibrate.passes import (
    EncodedLayer,
    LayerRecord,
    MappedGraph,
    MappedLayer,
    NeuronRange,
    Quantized,
    ScalePlan,
    Selection,
    Synapse,
    SynapsePlan,
    WeightClip,
    assemble,
    encode,
    find_synapses,
    fold,
    plan,
    quantize_mapped,
    select,
)
from lnm_deploy.fixedpoint import Rounding
from lnm_deploy.ir import Graph
from lnm_deploy.targets import Target

__all__ = [
    "EncodedLayer",
    "LayerRecord",
    "Lowering",
    "MappedGraph",
    "MappedLayer",
    "NeuronRange",
    "Quantized",
    "ScalePlan",
    "Selection",
    "Synapse",
    "SynapsePlan",
    "WeightClip",
    "assemble",
    "choose_lowering",
    "encode",
    "find_synapses",
    "fold",
    "lif_fit",
    "lowering_of",
    "lowerings",
    "plan",
    "quantize",
    "quantize_mapped",
    "register_lowering",
    "select",
    "unregister_lowering",
]


def quantize(graph: Graph, ranges: dict[str, NeuronRange], target: Target, *, weight_clip: WeightClip,
             margin: float = 1.25, rounding: Rounding = "nearest") -> Quantized:
    """Quantize ``graph`` for ``target``: ``fold`` then ``quantize_mapped`` (see
    ``lnm_deploy.calibrate.passes``). ``ranges``: per neuron layer its calibrated ranges (real
    units); ``weight_clip``: the weight calibrator; ``margin``: the overflow proofs hold over the
    calibrated abs-max times this. Raises ``UnsupportedError`` / ``NumericError`` naming the node."""
    return quantize_mapped(fold(graph), ranges, target, weight_clip=weight_clip, margin=margin,
                           rounding=rounding)
