"""The integer network: named ``FxNode``s, directed edges, the float IR's schedule and time base.

Topology, execution order and delays are computed by ``lnm_deploy.ir.Graph.schedule`` itself (the
nodes are wrapped in private proxies), so the float executor and fxsim share one definition:
within a step nodes run in ``order``; an edge from a node that runs later (a back edge) delivers
the previous step's value (zero at t = 0); several edges into a node are summed.

Structural rules of an FxGraph (``FxGraph.schedule`` enforces them):

* synapses (Dense, Conv2d, SumPool2d) and Flatten read exactly one fresh edge, from the Input, a
  neuron, or a Flatten of those: their input is always binary spikes;
* neurons read only synapses (fresh or delayed), summed; delayed edges end only at neurons;
* the Output reads exactly one neuron.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lnm_deploy.errors import GraphError
from lnm_deploy.fixedpoint.nodes import (
    FxFlatten,
    FxInput,
    FxNeuron,
    FxNode,
    FxOutput,
    Shape,
)
from lnm_deploy.ir import Graph, Input, Output, Schedule
from lnm_deploy.ir.graph import chain
from lnm_deploy.ir.nodes import Node


@dataclass(eq=False)
class _FxProxy(Node):
    """Lets ``ir.Graph`` schedule integer nodes (private: not listed by ``ir.node_types``)."""

    fx: FxNode | None = None

    def validate(self, name: str) -> None:
        assert self.fx is not None
        self.fx.validate(name)

    def output_shape(self, name: str, input_shape: Shape | None) -> Shape:
        assert self.fx is not None
        return self.fx.output_shape(name, input_shape)


@dataclass(eq=False)
class FxGraph:
    """A quantized, target-bound network. Exactly one ``FxInput`` and one ``FxOutput``.

    ``target`` names the target the integers were chosen for ("" if none); ``metadata`` is
    provenance.
    """

    nodes: dict[str, FxNode]
    edges: list[tuple[str, str]]
    target: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)

    def _ir(self) -> Graph:
        nodes: dict[str, Node] = {}
        for name, n in self.nodes.items():
            if isinstance(n, FxInput):
                nodes[name] = Input(shape=n.shape)
            elif isinstance(n, FxOutput):
                nodes[name] = Output()
            elif isinstance(n, FxNode):
                nodes[name] = _FxProxy(fx=n)
            else:
                raise GraphError(f"is a {type(n).__name__}, not an integer (Fx) node", node=name)
        return Graph(nodes=nodes, edges=list(self.edges))

    def schedule(self) -> Schedule:
        """Validate every node and the structural rules; return order, delays and shapes."""
        sched = self._ir().schedule()

        def spike_source(src: str) -> bool:
            n = self.nodes[src]
            if isinstance(n, (FxInput, FxNeuron)):
                return True
            if isinstance(n, FxFlatten):
                ins = sched.inputs[src]
                return len(ins) == 1 and spike_source(ins[0][0])
            return False

        for name in sched.order:
            node = self.nodes[name]
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
                    if not isinstance(self.nodes[src], FxNeuron):
                        raise GraphError(f"the output must read a neuron layer, reads '{src}'", node=name)
                elif not spike_source(src):
                    raise GraphError(
                        f"reads '{src}' ({self.nodes[src].kind}); synapses read spikes "
                        "(the input, a neuron layer, or a flatten of those)",
                        node=name,
                    )
            elif node.role == "neuron":
                for src, _ in ins:
                    if self.nodes[src].role != "synapse":
                        raise GraphError(
                            f"reads '{src}' ({self.nodes[src].kind}); neurons read synapses only",
                            node=name,
                        )
        return sched

    @property
    def input_name(self) -> str:
        return self._ir().input_name

    @property
    def output_name(self) -> str:
        return self._ir().output_name

    @property
    def input_shape(self) -> Shape:
        node = self.nodes[self.input_name]
        assert isinstance(node, FxInput)
        return node.shape

    def neuron_names(self) -> list[str]:
        """Neuron layers in execution order (every one is spiking)."""
        return [n for n in self.schedule().order if isinstance(self.nodes[n], FxNeuron)]


def fx_sequential(layers: list[tuple[str, FxNode]], input_shape: Shape, *, target: str = "",
                  metadata: dict[str, Any] | None = None) -> FxGraph:
    """Chain ``input -> layers... -> output`` (a convenience for tests and quantizers)."""
    nodes, edges = chain(layers, FxInput(shape=input_shape), FxOutput())
    return FxGraph(nodes=nodes, edges=edges, target=target, metadata=dict(metadata or {}))
