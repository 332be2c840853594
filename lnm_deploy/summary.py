"""Human- and machine-readable summaries of an IR graph (``lnm-deploy inspect``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from lnm_deploy.ir import Affine, Conv2d, Graph, Neuron, Node, Scale, Threshold


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


def _stats(a: np.ndarray) -> dict[str, Any]:
    """min / max / mean / std of an array, as plain floats (JSON-ready)."""
    a = np.asarray(a, dtype=np.float64)
    return {
        "shape": list(a.shape),
        "min": float(a.min()),
        "max": float(a.max()),
        "mean": float(a.mean()),
        "std": float(a.std()),
    }


def _params(node: Node) -> dict[str, Any]:
    p: dict[str, Any] = {}
    if isinstance(node, (Affine, Conv2d)):
        p["weight"] = _stats(node.weight)
        if node.bias is not None:
            p["bias"] = _stats(node.bias)
        if isinstance(node, Conv2d):
            p["conv"] = {"stride": node.stride, "padding": node.padding, "dilation": node.dilation,
                         "groups": node.groups}
    elif isinstance(node, Scale):
        p["scale"] = _stats(node.scale)
    elif isinstance(node, Threshold):
        p["v_th"] = _stats(node.v_th)
    elif isinstance(node, Neuron):
        uniform = bool(np.all(node.poly == node.poly.reshape(node.poly.shape[0], -1)[:, :1].reshape(
            node.poly.shape[0], *([1] * len(node.shape)))))
        p["dynamics"] = {
            "degree": node.degree,
            "poly": node.poly.reshape(node.poly.shape[0], -1)[:, 0].tolist() if uniform else "per neuron",
            "reset": node.reset if node.spiking else "none (integrator)",
            "synapse": node.syn_decay is not None,
            "dt": node.dt,
        }
        if node.v_th is not None:
            p["v_th"] = _stats(node.v_th)
        if node.syn_decay is not None:
            p["syn_decay"] = _stats(node.syn_decay)
        if "nir_type" in node.metadata:
            p["nir_type"] = str(node.metadata["nir_type"])
    return p


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
            params=_params(graph.nodes[name]),
            inputs=[f"{s} (t-1)" if d else s for s, d in srcs],
        ))
    meta = {k: (v.tolist() if isinstance(v, np.ndarray) else v.item() if isinstance(v, np.generic) else v)
            for k, v in graph.metadata.items()}
    return GraphSummary(nodes=nodes, metadata=meta, n_parameters=sum(_count(n) for n in graph.nodes.values()))
