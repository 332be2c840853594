"""The integer network: ``FxGraph``, the graph type of ``lnm_deploy.ir`` with integer nodes.

Topology, execution order and delays are ``lnm_deploy.ir.graph.GraphBase``'s (one graph type): within a
step nodes run in ``order``; a delayed edge delivers the previous step's value (zero at t = 0);
several edges into a node are summed.

Structural rules of an FxGraph (``FxGraph.schedule`` enforces them):

* synapses (Dense, Conv2d) and Flatten read exactly one fresh edge, from the Input, a
  neuron, or a Flatten of those: their input is always binary spikes;
* neurons read only synapses (fresh or delayed), summed; delayed edges end only at neurons;
* the Output reads exactly one neuron.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from lnm_deploy.errors import GraphError
from lnm_deploy.fixedpoint.nodes import (
    FxInput,
    FxNode,
    FxOutput,
    Shape,
)
from lnm_deploy.ir import Schedule
from lnm_deploy.ir.graph import GraphBase, chain


@dataclass(eq=False)
class FxGraph(GraphBase[FxNode]):
    """A quantized, target-bound network. Exactly one ``FxInput`` and one ``FxOutput``.

    ``nodes`` are ``FxNode``s; ``target`` names the target the integers were chosen for ("" if
    none); ``metadata`` is provenance; ``delays`` as for ``lnm_deploy.ir.graph.GraphBase``.
    """

    target: str = ""

    def schedule(self) -> Schedule:
        """Validate every node and the structural rules; return order, delays and shapes."""
        for name, n in self.nodes.items():
            if not isinstance(n, FxNode):
                raise GraphError(f"is a {type(n).__name__}, not an integer (Fx) node", node=name)
        sched = super().schedule()
        nodes = self.nodes

        def spike_source(src: str) -> bool:
            n = nodes[src]
            if n.role in ("input", "neuron"):
                return True
            if n.role == "reshape":
                ins = sched.inputs[src]
                return len(ins) == 1 and spike_source(ins[0][0])
            return False

        for name in sched.order:
            node = nodes[name]
            ins = sched.inputs[name]
            if node.role in ("synapse", "reshape", "output"):
                if len(ins) != 1 or ins[0][1]:
                    raise GraphError(
                        f"a {node.kind} node needs exactly one feed-forward input, has "
                        f"{[s for s, _ in ins]}",
                        node=name,
                    )
                src = ins[0][0]
                if node.role == "output":
                    if nodes[src].role != "neuron":
                        raise GraphError(f"the output must read a neuron layer, reads '{src}'", node=name)
                elif not spike_source(src):
                    raise GraphError(
                        f"reads '{src}' ({nodes[src].kind}); synapses read spikes "
                        "(the input, a neuron layer, or a flatten of those)",
                        node=name,
                    )
            elif node.role == "neuron":
                for src, _ in ins:
                    if nodes[src].role != "synapse":
                        raise GraphError(
                            f"reads '{src}' ({nodes[src].kind}); neurons read synapses only",
                            node=name,
                        )
        return sched

    def path_lengths(self) -> dict[str, dict[str, int]]:
        """Per neuron layer, the length of the feed-forward path through each synapse into it, in
        synapses (what a chip whose every synapse costs one step, as Lava's do, sees): the number
        of synapses from the input up to and including that one, a neuron layer being as deep as
        its deepest input; delayed (recurrent) edges are left out (their one step is the
        contract's). ``{layer: {synapse: length}}``, layers in execution order. Where a layer's
        lengths differ, such a chip must delay the shorter paths (``lnm_deploy.lava_backend``
        inserts relays) or refuse the graph (``lnm_deploy.targets.check_graph``)."""
        sched = self.schedule()
        depth: dict[str, int] = {}
        out: dict[str, dict[str, int]] = {}
        for name in sched.order:
            role = self.nodes[name].role
            fresh = [s for s, delayed in sched.inputs[name] if not delayed]
            if role == "input":
                depth[name] = 0
            elif role == "neuron":
                out[name] = {s: depth[s] for s in fresh}
                depth[name] = max(out[name].values())
            else:
                depth[name] = depth[fresh[0]] + (role == "synapse")
        return out

    def neuron_names(self) -> list[str]:
        """Neuron layers in execution order (every one is spiking)."""
        return [n for n in self.schedule().order if self.nodes[n].role == "neuron"]


def fx_sequential(layers: list[tuple[str, FxNode]], input_shape: Shape, *, target: str = "",
                  metadata: dict[str, Any] | None = None) -> FxGraph:
    """Chain ``input -> layers... -> output`` (a convenience for tests and quantizers)."""
    nodes, edges = chain(layers, FxInput(shape=input_shape), FxOutput())
    return FxGraph(nodes=nodes, edges=edges, target=target, metadata=dict(metadata or {}))


__all__ = ["FxGraph", "Shape", "fx_sequential"]
