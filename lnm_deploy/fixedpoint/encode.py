"""Encode an ``FxGraph`` to a plain nested dict that NIR metadata can carry, and back.

The dict holds only str, int, numpy int64 arrays and nested dicts (never None, bool or float:
``nir.write`` rejects None and turns bools into ``np.bool_``). Layout::

    {"format": "lnm-deploy.fxgraph", "version": 1, "target": str,
     "nodes": {name: {"kind": str, <field>: value, ...}, ...},
     "edges": {"e00000": {"src": str, "dst": str}, ...}}      # keys keep the edge order

A field whose value is None (``FxPoly.syn_decay`` without a synapse) is left out, and so is a field
marked ``omit_default`` in its dataclass metadata (``nodes.OMIT_DEFAULT``: fields added after
version 1, such as ``FxPoly.threshold``) while it holds its default: networks that do not use
such a field encode byte for byte as before, and decoding fills the default back in. Node
``metadata`` is provenance and is not encoded. ``nir.read`` gives numpy scalars and arrays back;
``decode_fxgraph`` accepts those as well as the Python values ``encode_fxgraph`` writes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from lnm_deploy.errors import GraphError, UserInputError
from lnm_deploy.fixedpoint.graph import FxGraph
from lnm_deploy.fixedpoint.nodes import FxNode, fx_node_types

FORMAT = "lnm-deploy.fxgraph"
VERSION = 1


def _enc(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        return value.astype(np.int64)
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, str):
        return value
    if isinstance(value, tuple):
        return np.asarray(value, dtype=np.int64).reshape(-1)
    raise TypeError(f"cannot encode {type(value).__name__}")


def encode_fxgraph(graph: FxGraph) -> dict[str, Any]:
    """``graph`` as a metadata-safe nested dict (see the module docstring). Validates first."""
    graph.schedule()
    nodes: dict[str, Any] = {}
    for name, node in graph.nodes.items():
        d: dict[str, Any] = {"kind": node.kind}
        for f in dataclasses.fields(node):
            if f.name == "metadata":
                continue
            v = getattr(node, f.name)
            if v is None:
                continue
            if f.metadata.get("omit_default") and v == f.default:
                continue
            try:
                d[f.name] = _enc(v)
            except TypeError as e:
                raise GraphError(f"field '{f.name}': {e}", node=name) from e
        nodes[name] = d
    delays = graph.delayed_edges()
    edges = {f"e{i:05d}": {"src": s, "dst": t, "delayed": int((s, t) in delays)}
             for i, (s, t) in enumerate(graph.edges)}
    return {"format": FORMAT, "version": VERSION, "target": graph.target, "nodes": nodes, "edges": edges}


def _dec(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "SU":
            return str(value.item() if value.ndim == 0 else value)
        return value.astype(np.int64) if value.ndim else int(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.str_):
        return str(value)
    return value


def decode_fxgraph(d: dict[str, Any]) -> FxGraph:
    """Inverse of ``encode_fxgraph``; raises ``UserInputError`` on a malformed or foreign dict."""
    if not isinstance(d, dict) or _dec(d.get("format")) != FORMAT:
        raise UserInputError(f"not an lnm-deploy integer graph (format {d.get('format')!r})")
    version = _dec(d.get("version"))
    if version != VERSION:
        raise UserInputError(f"integer graph version {version} is not supported (this is {VERSION})")
    types = fx_node_types()
    nodes: dict[str, FxNode] = {}
    for name, nd in dict(d.get("nodes", {})).items():
        kind = _dec(nd.get("kind"))
        cls = types.get(kind)
        if cls is None:
            raise UserInputError(f"unknown integer node kind {kind!r}; known: {sorted(types)}")
        names = {f.name for f in dataclasses.fields(cls) if f.init and f.name != "metadata"}
        unknown = set(nd) - names - {"kind"}
        if unknown:
            raise UserInputError(f"node '{name}' ({kind}) has unknown fields {sorted(unknown)}")
        kwargs = {k: _dec(v) for k, v in nd.items() if k != "kind"}
        try:
            nodes[str(name)] = cls(**kwargs)
        except TypeError as e:
            raise UserInputError(f"node '{name}' ({kind}): {e}") from e
    raw_edges = dict(d.get("edges", {}))
    edges = [(str(_dec(raw_edges[k]["src"])), str(_dec(raw_edges[k]["dst"]))) for k in sorted(raw_edges)]
    # Explicit delayed edges (written since the graph type made them explicit); older artifacts
    # carry none and get the inferred ones (the same for every graph those versions wrote).
    flagged = [k for k in sorted(raw_edges) if "delayed" in raw_edges[k]]
    delays = None
    if flagged:
        delays = frozenset((str(_dec(raw_edges[k]["src"])), str(_dec(raw_edges[k]["dst"])))
                           for k in flagged if int(_dec(raw_edges[k]["delayed"])))
    g = FxGraph(nodes=nodes, edges=edges, target=str(_dec(d.get("target", ""))), delays=delays)
    g.schedule()
    return g
