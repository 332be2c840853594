"""The graph: named nodes, directed edges, explicit one-step delays, an execution schedule.

One graph type for the float IR (``lnm_deploy.ir`` nodes) and the integer network (``FxGraph``, a
subclass with integer nodes and structural rules): a node only needs ``kind``, ``validate`` and
``output_shape``; the Input and Output are the nodes of kind ``"input"`` and ``"output"``.

Timing: within one timestep every node runs once, in ``schedule().order``. A **delayed edge**
delivers its source's output from the *previous* step (at t = 0: its output at a virtual step with
zero input and neurons at rest, i.e. an Affine's bias); every other edge delivers the current
step's. Which edges are delayed is part of the graph (``Graph.delays``), not of the edge order:
given explicitly by whoever builds the graph (the torch exporter, lnm-deploy's own NIR files, NIR
``Delay`` nodes of one step), or else inferred by ``infer_delays`` (every cycle gets one,
independently of edge order). A
delayed edge must close a cycle: a recurrent connection costs exactly one step, a feed-forward one
none. Several edges into one node are summed in ``edges`` order.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from lnm_deploy.errors import GraphError, UnsupportedError
from lnm_deploy.ir.nodes import Input, Node, Output, Shape

Edge = tuple[str, str]


@dataclass(frozen=True)
class Schedule:
    """Execution order of a graph, and which edges carry last step's value."""

    order: tuple[str, ...]
    inputs: dict[str, tuple[tuple[str, bool], ...]]  # node -> ((source, delayed), ...)
    shapes: dict[str, Shape]  # output shape per node (no batch)
    input_node: str
    output_node: str


def _depth_first(succ: dict[str, list[str]], roots: Iterable[str]) -> tuple[list[str], list[Edge]]:
    """Iterative depth-first search over ``succ`` from each root not yet visited, in order:
    the post-order of the nodes visited, and the back edges (to a node still on the search path:
    each closes a cycle)."""
    post: list[str] = []
    back: list[Edge] = []
    state: dict[str, int] = {}  # 1 = on the search path, 2 = done
    for root in roots:
        if root in state:
            continue
        state[root] = 1
        stack: list[tuple[str, int]] = [(root, 0)]
        while stack:
            n, i = stack[-1]
            if i < len(succ[n]):
                stack[-1] = (n, i + 1)
                m = succ[n][i]
                if state.get(m) == 1:
                    back.append((n, m))
                elif m not in state:
                    state[m] = 1
                    stack.append((m, 0))
            else:
                stack.pop()
                state[n] = 2
                post.append(n)
    return post, back


def infer_delays(names: Iterable[str], edges: Iterable[Edge], source: str) -> frozenset[Edge]:
    """The delayed edges of a graph that does not say which (generic NIR): every cycle gets one,
    chosen independently of the order in which the edges are listed.

    A depth-first search from ``source`` (the Input) that visits successors nearest to the input
    first (breadth-first distance from the input, then name); the edges it finds closing a cycle
    (back edges to a node still on the search path) are delayed. So the feedback edge of a
    recurrent layer, the one from the later layer back to the earlier one, carries the delay, as
    a reader of the network drawn from its input would expect. Nodes the input does not reach are
    searched from afterwards, by name (``schedule`` refuses them anyway).
    """
    names = sorted(set(names))
    edges = list(edges)
    succ: dict[str, list[str]] = {n: [] for n in names}
    for s, d in edges:
        if s in succ and d in succ and d not in succ[s]:
            succ[s].append(d)
    depth = {source: 0} if source in succ else {}
    frontier = [source] if source in succ else []
    while frontier:
        nxt = []
        for n in frontier:
            for m in succ[n]:
                if m not in depth:
                    depth[m] = depth[n] + 1
                    nxt.append(m)
        frontier = nxt
    far = len(names) + 1
    for n in succ:
        succ[n].sort(key=lambda m: (depth.get(m, far), m))
    _, back = _depth_first(succ, ([source] if source in succ else []) + names)
    return frozenset(back)


class GraphNode(Protocol):
    """What a graph needs of a node (float IR nodes and integer ``FxNode``s alike)."""

    kind: ClassVar[str]

    def validate(self, name: str) -> None: ...

    def output_shape(self, name: str, input_shape: Shape | None) -> Shape: ...


N = TypeVar("N", bound=GraphNode)


@dataclass(eq=False)
class GraphBase(Generic[N]):
    """A flat graph of nodes. Exactly one node of kind ``"input"`` and one of kind ``"output"``.

    The one graph type: ``Graph`` (float IR nodes) and ``lnm_deploy.fixedpoint.FxGraph`` (integer
    nodes) are this class over their node type. ``delays``: the edges that deliver the previous
    step's value; None infers them (``infer_delays``). ``delayed_edges()`` is what is in force.
    """

    nodes: dict[str, N]
    edges: list[Edge]
    metadata: dict[str, Any] = field(default_factory=dict)
    delays: frozenset[Edge] | None = None

    def predecessors(self, name: str) -> list[str]:
        return [s for s, d in self.edges if d == name]

    def delayed_edges(self) -> frozenset[Edge]:
        """The delayed edges: ``delays`` if given, else ``infer_delays``."""
        if self.delays is not None:
            return frozenset((str(s), str(d)) for s, d in self.delays)
        return infer_delays(self.nodes, self.edges, self.input_name)

    def _single(self, kind: str) -> str:
        found = [n for n, node in self.nodes.items() if getattr(node, "kind", None) == kind]
        if len(found) != 1:
            cls = {"input": Input, "output": Output}[kind].__name__
            raise UnsupportedError(
                f"graph must have exactly one {cls} node, has {len(found)} ({found}); "
                "multi-input or multi-output graphs are not supported yet"
            )
        return found[0]

    @property
    def input_name(self) -> str:
        return self._single("input")

    @property
    def output_name(self) -> str:
        return self._single("output")

    @property
    def input_shape(self) -> Shape:
        shape: Shape = self.nodes[self.input_name].shape  # type: ignore[attr-defined]  # Input/FxInput
        return shape

    def schedule(self) -> Schedule:
        """Validate the graph and compute execution order, delayed edges and shapes.

        The order is a depth-first post-order from the input over the edges that are not delayed,
        reversed (a topological order: feed-forward chains run in sequence).
        """
        seen: set[tuple[str, str]] = set()
        for s, d in self.edges:
            for end in (s, d):
                if end not in self.nodes:
                    raise GraphError(f"edge ({s} -> {d}) names a node that does not exist", node=end)
            if (s, d) in seen:  # ambiguous: summed twice, or one connection listed twice
                raise GraphError(f"edge ({s} -> {d}) appears twice: a node reads each source once; remove the "
                                 "duplicate (or scale the source's weights to sum it twice)", node=d)
            seen.add((s, d))
        for name, node in self.nodes.items():
            node.validate(name)
        inp, out = self.input_name, self.output_name
        if self.predecessors(inp):
            raise GraphError("the Input node cannot have incoming edges", node=inp)
        delays = self.delayed_edges()
        for s, d in delays:
            if (s, d) not in self.edges:
                raise GraphError(f"delayed edge ({s} -> {d}) is not an edge of the graph", node=d)

        succ: dict[str, list[str]] = {n: [] for n in self.nodes}
        fresh_succ: dict[str, list[str]] = {n: [] for n in self.nodes}
        for s, d in self.edges:
            succ[s].append(d)
            if (s, d) not in delays:
                fresh_succ[s].append(d)
        for s, d in sorted(delays):
            if s != d and not _reaches(fresh_succ, d, s):
                raise UnsupportedError(
                    f"delayed edge ({s} -> {d}) does not close a cycle: a delay on a feed-forward path is "
                    "not supported yet (only recurrent connections carry one step)", node=d)
        reached = {inp}
        todo = [inp]
        while todo:
            for m in succ[todo.pop()]:
                if m not in reached:
                    reached.add(m)
                    todo.append(m)
        unreached = [n for n in self.nodes if n not in reached]
        if unreached:
            raise GraphError(f"nodes not reachable from the input: {unreached}", node=unreached[0])
        # Depth-first over the edges that are not delayed: post-order, then reverse.
        post, back = _depth_first(fresh_succ, [inp])
        if back:
            n, m = back[0]
            raise GraphError(f"the cycle through '{n}' -> '{m}' has no delayed edge: every cycle needs "
                             "one (a recurrent connection delivers the previous step)", node=m)
        visited = set(post)
        only_delayed = [n for n in self.nodes if n not in visited]
        if only_delayed:
            raise GraphError("node is only fed by recurrent (delayed) edges", node=only_delayed[0])
        order = tuple(reversed(post))
        pos = {n: i for i, n in enumerate(order)}

        inputs: dict[str, tuple[tuple[str, bool], ...]] = {
            n: tuple((s, (s, d) in delays) for s, d in self.edges if d == n) for n in order
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
        assert all(pos[s] >= pos[d] for s, d in delays)
        if succ[out]:
            raise GraphError("the Output node cannot have outgoing edges", node=out)
        return Schedule(order=order, inputs=inputs, shapes=shapes, input_node=inp, output_node=out)


@dataclass(eq=False)
class Graph(GraphBase[Node]):
    """A graph of float IR nodes (``lnm_deploy.ir.nodes``)."""


def _reaches(succ: dict[str, list[str]], a: str, b: str) -> bool:
    """``b`` is reachable from ``a`` along ``succ``."""
    seen, todo = {a}, [a]
    while todo:
        for m in succ[todo.pop()]:
            if m == b:
                return True
            if m not in seen:
                seen.add(m)
                todo.append(m)
    return False


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
