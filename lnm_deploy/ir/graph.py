"""The IR graph: named nodes, directed edges, an execution schedule.

Timing: within one timestep every node runs once, in ``schedule().order``. An edge whose source
runs *after* its destination in that order (a back edge, which closes a cycle) delivers the
source's output from the *previous* step (at t = 0: its output at a virtual step with zero input
and neurons at rest, i.e. an Affine's bias): a recurrent connection costs exactly one step, a
feed-forward one none. Several edges into one node are summed in ``edges`` order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lnm_deploy.errors import GraphError, UnsupportedError
from lnm_deploy.ir.nodes import Input, Node, Output, Shape


@dataclass(frozen=True)
class Schedule:
    """Execution order of a graph, and which edges carry last step's value."""

    order: tuple[str, ...]
    inputs: dict[str, tuple[tuple[str, bool], ...]]  # node -> ((source, delayed), ...)
    shapes: dict[str, Shape]  # output shape per node (no batch)
    input_node: str
    output_node: str


@dataclass(eq=False)
class Graph:
    """A flat graph of IR nodes. Exactly one ``Input`` and one ``Output`` node."""

    nodes: dict[str, Node]
    edges: list[tuple[str, str]]
    metadata: dict[str, Any] = field(default_factory=dict)

    def predecessors(self, name: str) -> list[str]:
        return [s for s, d in self.edges if d == name]

    def _single(self, cls: type[Node]) -> str:
        found = [n for n, node in self.nodes.items() if isinstance(node, cls)]
        if len(found) != 1:
            raise UnsupportedError(
                f"graph must have exactly one {cls.__name__} node, has {len(found)} ({found}); "
                "multi-input or multi-output graphs are not supported yet"
            )
        return found[0]

    @property
    def input_name(self) -> str:
        return self._single(Input)

    @property
    def output_name(self) -> str:
        return self._single(Output)

    @property
    def input_shape(self) -> Shape:
        node = self.nodes[self.input_name]
        assert isinstance(node, Input)
        return node.shape

    def schedule(self) -> Schedule:
        """Validate the graph and compute execution order, delayed edges and shapes.

        Order is a depth-first post-order from the input, reversed, so that feed-forward chains
        run in sequence and only edges closing a cycle are delayed.
        """
        for s, d in self.edges:
            for end in (s, d):
                if end not in self.nodes:
                    raise GraphError(f"edge ({s} -> {d}) names a node that does not exist", node=end)
        for name, node in self.nodes.items():
            node.validate(name)
        inp, out = self.input_name, self.output_name
        if self.predecessors(inp):
            raise GraphError("the Input node cannot have incoming edges", node=inp)

        succ: dict[str, list[str]] = {n: [] for n in self.nodes}
        for s, d in self.edges:
            succ[s].append(d)
        # Iterative DFS (deep graphs would overflow recursion): post-order, then reverse.
        post: list[str] = []
        state: dict[str, int] = {}  # 1 = on stack, 2 = done
        stack: list[tuple[str, int]] = [(inp, 0)]
        state[inp] = 1
        while stack:
            n, i = stack[-1]
            if i < len(succ[n]):
                stack[-1] = (n, i + 1)
                m = succ[n][i]
                if m not in state:
                    state[m] = 1
                    stack.append((m, 0))
            else:
                stack.pop()
                state[n] = 2
                post.append(n)
        order = tuple(reversed(post))
        unreached = [n for n in self.nodes if n not in state]
        if unreached:
            raise GraphError(f"nodes not reachable from the input: {unreached}", node=unreached[0])
        pos = {n: i for i, n in enumerate(order)}

        inputs: dict[str, tuple[tuple[str, bool], ...]] = {
            n: tuple((s, pos[s] >= pos[n]) for s, d in self.edges if d == n) for n in order
        }
        shapes: dict[str, Shape] = {}
        for n in order:
            fresh = [s for s, delayed in inputs[n] if not delayed]
            if n != inp and not fresh:
                raise GraphError("node is only fed by recurrent (delayed) edges", node=n)
            in_shapes = {shapes[s] for s in fresh}
            if len(in_shapes) > 1:
                raise GraphError(f"inputs of different shapes are summed: {sorted(in_shapes)}", node=n)
            shapes[n] = self.nodes[n].output_shape(n, next(iter(in_shapes)) if in_shapes else None)
        for n in order:
            for s, delayed in inputs[n]:
                if delayed and shapes[s] != shapes[next(x for x, d in inputs[n] if not d)]:
                    raise GraphError(
                        f"recurrent edge from '{s}' has shape {shapes[s]}, the node's input has another",
                        node=n,
                    )
        if succ[out]:
            raise GraphError("the Output node cannot have outgoing edges", node=out)
        return Schedule(order=order, inputs=inputs, shapes=shapes, input_node=inp, output_node=out)


def chain(layers: list[tuple[str, Any]], input_node: Any, output_node: Any) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Nodes and edges of the chain ``input -> layers... -> output`` (for both IRs)."""
    nodes: dict[str, Any] = {"input": input_node}
    edges: list[tuple[str, str]] = []
    prev = "input"
    for name, node in layers:
        if name in nodes or name == "output":
            raise GraphError("duplicate node name", node=name)
        nodes[name] = node
        edges.append((prev, name))
        prev = name
    nodes["output"] = output_node
    edges.append((prev, "output"))
    return nodes, edges


def sequential(layers: list[tuple[str, Node]], input_shape: Shape, metadata: dict[str, Any] | None = None) -> Graph:
    """Build a chain ``input -> layers... -> output`` (a convenience for tests and exporters)."""
    nodes, edges = chain(layers, Input(shape=input_shape), Output())
    return Graph(nodes=nodes, edges=edges, metadata=dict(metadata or {}))
