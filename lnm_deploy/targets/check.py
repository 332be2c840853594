"""Design-rule checks of an ``FxGraph`` against a ``Target``: small named rules, one driver.

The rules of the nodes live with their primitives (``lnm_deploy.fixedpoint.primitives``); this
module holds the graph-level rules and the driver. Each rule raises ``GraphError`` (a value
outside the target's limits) or ``UnsupportedError`` (a node or topology the target does not
offer), naming the node, the parameter and the limit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from lnm_deploy.errors import UnsupportedError
from lnm_deploy.fixedpoint import FxGraph, FxNode
from lnm_deploy.fixedpoint.primitives import primitive_of, primitives
from lnm_deploy.targets.spec import Target


def _rules() -> dict[type[FxNode], Callable[..., None]]:
    return {p.node_type: p.design_rule for p in primitives().values() if p.design_rule is not None}


class _Rules(Mapping[type[FxNode], Callable[..., None]]):
    """A read-only view of the primitive registry's design rules, read at each lookup (a primitive
    registered after this module was imported is in it)."""

    def __getitem__(self, key: type[FxNode]) -> Callable[..., None]:
        return _rules()[key]

    def __iter__(self) -> Iterator[type[FxNode]]:
        return iter(_rules())

    def __len__(self) -> int:
        return len(_rules())


#: The design rule of every node class, derived from the primitive registry (read-only view).
RULES: Mapping[type[FxNode], Callable[..., None]] = _Rules()


def check_recurrence(graph: FxGraph, t: Target) -> None:
    sched = graph.schedule()
    for name in sched.order:
        for src, delayed in sched.inputs[name]:
            if not delayed:
                continue
            if t.info.recurrence == "none":
                raise UnsupportedError(f"target '{t.name}' has no recurrent connections (edge from '{src}')", node=name)
            if t.info.recurrence == "self":
                origin = sched.inputs[src][0][0]
                if origin != name:
                    raise UnsupportedError(
                        f"target '{t.name}' allows only self-recurrence; '{src}' reads '{origin}'", node=name)


def check_path_lengths(graph: FxGraph, t: Target) -> None:
    """A target that cannot delay spikes (``[target] path_delays = "equal"``) refuses a layer whose
    feed-forward paths cross different numbers of synapses (``FxGraph.path_lengths``)."""
    if t.info.path_delays != "equal":
        return
    for layer, lengths in graph.path_lengths().items():
        if len(set(lengths.values())) > 1:
            paths = ", ".join(f"{n}: {k}" for n, k in sorted(lengths.items(), key=lambda i: (i[1], i[0])))
            raise UnsupportedError(
                f"paths into the layer cross different numbers of synapses ({paths}); target '{t.name}' "
                "delays every synapse by one step and cannot delay the shorter paths (path_delays = "
                "\"equal\"): give every path into a layer the same number of synapses, or use a target "
                "with path_delays = \"relay\"", node=layer)


def check_graph(graph: FxGraph, target: Target) -> None:
    """Run every node's design rule (``Primitive.design_rule``); raise on the first violation
    (node, parameter and limit named). A node whose kind is not registered, that the target does
    not offer (no section for its primitive), or whose primitive has no rule, is refused with
    ``UnsupportedError`` (never skipped)."""
    graph.schedule()
    for name, node in graph.nodes.items():
        p = primitive_of(node, name)
        target.spec(p.kind, node=name)  # UnsupportedError: the target does not offer it
        if p.design_rule is None:
            raise UnsupportedError(f"no design rule for {node.kind!r} nodes: cannot tell whether target "
                                   f"'{target.name}' fits them", node=name)
        p.design_rule(name, node, target)
    check_recurrence(graph, target)
    check_path_lengths(graph, target)
