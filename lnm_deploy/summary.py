"""Human- and machine-readable summaries of an IR graph (``lnm-deploy inspect``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lnm_deploy.ir import Graph, Node


@dataclass
class NodeSummary:
    name: str
    kind: str
    input_shape: list[int] | None
    output_shape: list[int]
    params: dict[str, Any] = field(default_factory=dict)
    inputs: list[str] = field(default_factory=list)  # sources; "name (t-1)" marks a recurrent edge


@dataclass
class GraphSummary:
    nodes: list[NodeSummary]
    metadata: dict[str, Any]
    n_parameters: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_text(self) -> str:
        lines = []
        if self.metadata:
            lines.append("metadata:")
            lines += [f"  {k}: {_short(v)}" for k, v in sorted(self.metadata.items())]
        lines.append(f"{len(self.nodes)} nodes, {self.n_parameters} parameters")
        w = max(len(n.name) for n in self.nodes)
        for n in self.nodes:
            shape = f"{tuple(n.input_shape) if n.input_shape else '-'} -> {tuple(n.output_shape)}"
            src = f"  <- {', '.join(n.inputs)}" if n.inputs else ""
            lines.append(f"  {n.name:<{w}}  {n.kind:<9} {shape}{src}")
            for k, v in n.params.items():
                lines.append(f"  {'':<{w}}    {k}: {_short(v)}")
        return "\n".join(lines)


def _short(v: Any) -> str:
    if isinstance(v, dict):
        return "{" + ", ".join(f"{k}: {_short(x)}" for k, x in v.items()) + "}"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, list) and v and all(isinstance(x, float) for x in v):
        return "[" + ", ".join(f"{x:.4g}" for x in v) + "]"
    s = str(v)
    return s if len(s) <= 100 else s[:97] + "..."


def _count(node: Node) -> int:
    arrays = [getattr(node, f, None) for f in ("weight", "bias", "scale", "poly", "v_th", "v_reset", "syn_decay")]
    return int(sum(a.size for a in arrays if isinstance(a, np.ndarray)))


def summarize(graph: Graph) -> GraphSummary:
    """Nodes in execution order with shapes, parameter statistics and inputs."""
    sched = graph.schedule()
    nodes = []
    for name in sched.order:
        srcs = sched.inputs[name]
        fresh = [s for s, d in srcs if not d]
        nodes.append(NodeSummary(
            name=name,
            kind=graph.nodes[name].kind,
            input_shape=list(sched.shapes[fresh[0]]) if fresh else None,
            output_shape=list(sched.shapes[name]),
            params=graph.nodes[name].describe(),
            inputs=[f"{s} (t-1)" if d else s for s, d in srcs],
        ))
    meta = {k: (v.tolist() if isinstance(v, np.ndarray) else v.item() if isinstance(v, np.generic) else v)
            for k, v in graph.metadata.items()}
    return GraphSummary(nodes=nodes, metadata=meta, n_parameters=sum(_count(n) for n in graph.nodes.values()))
