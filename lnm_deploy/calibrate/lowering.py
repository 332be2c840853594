"""Lowerings: how the quantizer maps one float op kind onto one integer primitive.

A ``Lowering`` is registered per (float kind, primitive kind), e.g. ("neuron", "lif") and
("neuron", "poly") (``lnm_deploy.calibrate.neuron_lowerings``). It owns, for its primitive, every
step of the quantizer that depends on the neuron model (docs/calibration.md, "Lowerings"):

- ``input_gain(node) -> Array``: the real current into the state per unit of the layer's summed
  synapse output, node-shaped (pass 1 scales the folded synapses by it). Every lowering of one
  float kind must compute the same gain (pass 1 is target-independent and uses the first one);
- ``applies(layer, target) -> bool``: whether it can lower the mapped layer on the target; of the
  lowerings of a float kind that apply, the one with the lowest ``preference`` is chosen (pass 2);
- ``select(layer, rng, target, margin, rounding) -> Selection`` (pass 2), ``plan(selection,
  target, weight_clip) -> ScalePlan`` (pass 3), ``encode(selection, plan, target) ->
  EncodedLayer`` (pass 4: the ``FxNode``, the dequantized float node, the ``LayerRecord``).

A float op whose layers are lowered is stateful, emits spikes and names its calibrated states
``"v"`` (the state after reset), ``"v_pre"`` (before the spike test) and, with a synaptic current,
``"c"`` (``Node.state_names``): the statistics and ``NeuronRange`` read those.

``register_lowering`` / ``unregister_lowering`` / ``lowerings`` / ``lowering_of`` /
``choose_lowering``; an unknown pair or a layer no registered lowering can hold is an
``UnsupportedError`` naming the node, the primitives the target offers and the known lowerings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lnm_deploy.errors import UnsupportedError

if TYPE_CHECKING:
    from lnm_deploy.calibrate.passes import (
        EncodedLayer,
        MappedLayer,
        NeuronRange,
        ScalePlan,
        Selection,
        WeightClip,
    )
    from lnm_deploy.fixedpoint import Rounding
    from lnm_deploy.ir import Node
    from lnm_deploy.targets import Target

Array = np.ndarray


@dataclass(frozen=True)
class Lowering:
    """How layers of float kind ``float_kind`` become primitive ``primitive`` (see the module
    docstring for each callable's contract). ``preference``: lower is tried first among the
    lowerings of one float kind (ties: registration order)."""

    float_kind: str
    primitive: str
    applies: Callable[[MappedLayer, Target], bool]
    select: Callable[[MappedLayer, NeuronRange, Target, float, Rounding], Selection]
    plan: Callable[[Selection, Target, WeightClip], ScalePlan]
    encode: Callable[[Selection, ScalePlan, Target], EncodedLayer]
    input_gain: Callable[[Node], Array]
    preference: int = 0
    description: str = ""
    #: why the lowering does not apply to a layer on a target that offers its primitive (for the
    #: error when no lowering applies), or None: "it does not apply to this layer"
    why_not: Callable[[MappedLayer, Target], str] | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.float_kind, self.primitive)

    def __str__(self) -> str:
        return f"{self.float_kind}->{self.primitive}"


_REGISTRY: dict[tuple[str, str], Lowering] = {}


def register_lowering(lowering: Lowering, *, replace: bool = False) -> Lowering:
    """Register ``lowering`` under (float kind, primitive); returns it.

    Raises:
        ValueError: that pair is registered already and ``replace`` is False (a programming error,
            as for every registry of the package: primitives, NIR mappings, ONNX lowerings, backends).
    """
    if lowering.key in _REGISTRY and not replace:
        raise ValueError(f"a lowering {lowering} is registered already (pass replace=True)")
    _REGISTRY[lowering.key] = lowering
    return lowering


def unregister_lowering(float_kind: str, primitive: str) -> Lowering:
    """Remove and return the lowering of (``float_kind``, ``primitive``).

    Raises:
        UnsupportedError: none is registered (the message lists the known ones).
    """
    lw = lowering_of(float_kind, primitive)
    del _REGISTRY[lw.key]
    return lw


def lowerings(float_kind: str | None = None) -> tuple[Lowering, ...]:
    """The registered lowerings of ``float_kind`` (all with None), by preference then registration."""
    order = {k: i for i, k in enumerate(_REGISTRY)}
    found = [lw for lw in _REGISTRY.values() if float_kind is None or lw.float_kind == float_kind]
    return tuple(sorted(found, key=lambda lw: (lw.preference, order[lw.key])))


def _known() -> str:
    return ", ".join(str(lw) for lw in lowerings()) or "none"


def lowering_of(float_kind: str, primitive: str) -> Lowering:
    """The lowering of (``float_kind``, ``primitive``).

    Raises:
        UnsupportedError: none is registered (the message lists the known ones).
    """
    lw = _REGISTRY.get((float_kind, primitive))
    if lw is None:
        raise UnsupportedError(f"no lowering of float kind {float_kind!r} onto primitive {primitive!r}; "
                               f"known lowerings: {_known()}")
    return lw


def input_gain(node: Node, name: str) -> Array:
    """The real current into the state of layer ``name`` per unit synapse output: every lowering
    of the node's kind must give the same (pass 1 folds the synapses before a primitive is chosen).

    Raises:
        UnsupportedError: no lowering is registered for the node's kind, or two of its lowerings
            disagree on the gain (a plugin error that would miscalibrate silently otherwise).
    """
    found = lowerings(node.kind)
    if not found:
        raise UnsupportedError(f"no lowering for float kind {node.kind!r} (register one with "
                               f"lnm_deploy.calibrate.register_lowering); known lowerings: {_known()}", node=name)
    gain = np.asarray(found[0].input_gain(node), dtype=np.float64)
    for other in found[1:]:
        g = np.asarray(other.input_gain(node), dtype=np.float64)
        if g.shape != gain.shape or not np.array_equal(g, gain):
            raise UnsupportedError(f"lowerings {found[0]} and {other} of float kind {node.kind!r} compute "
                                   "different input gains; every lowering of one kind must agree", node=name)
    return gain


def choose_lowering(layer: MappedLayer, target: Target) -> Lowering:
    """The preferred registered lowering of ``layer``'s float kind that applies on ``target``.

    Raises:
        UnsupportedError: none applies (the message names the node, the primitives the target
            offers and the known lowerings).
    """
    for lw in lowerings(layer.node.kind):
        if lw.applies(layer, target):
            return lw
    mine = ", ".join(lw.primitive for lw in lowerings(layer.node.kind)) or "none"
    # a lowering whose primitive the target offers and which still does not apply: say why
    refused = [f"{lw.primitive}: {lw.why_not(layer, target) if lw.why_not else 'does not apply to this layer'}"
               for lw in lowerings(layer.node.kind) if target.offers(lw.primitive)]
    why = f" ({'; '.join(refused)})" if refused else ""
    raise UnsupportedError(
        f"target '{target.name}' offers no neuron for this layer{why} (float kind {layer.node.kind!r}, "
        f"lowerable onto: {mine}; the target offers: {', '.join(target.offered())}; known lowerings: "
        f"{_known()})", node=layer.name)
