"""Import a NIR graph (``nir.NIRGraph`` or a ``.nir`` file) into lnm-deploy's IR.

- lnm-deploy's own files: every node is restored bit-exactly from its ``lnm_*`` metadata.
- Other producers: NIR's continuous-time neurons are discretised per the producer's convention
  (``conventions``: snnTorch, Norse, generic NIR) with the step ``dt``.
- Nested ``NIRGraph`` nodes are flattened: inner nodes are named ``outer.inner`` and edges into /
  out of the subgraph are rewired through its Input / Output nodes.

Producer: the graph's ``metadata["producer"]`` when present (neither snnTorch 1.0.0 nor Norse 1.1.0
write any graph or node metadata), else the ``producer`` argument, else generic NIR. dt: the ``dt``
argument, else ``metadata["dt"]``, else the producer's default (snnTorch 1e-4 s, Norse 1e-3 s),
else 1e-4 s with an ``LNMDeployWarning``.

Losses that cannot be seen in a file are documented in ``conventions`` and warned about with
``LNMDeployWarning`` naming the nodes (snnTorch's reset, Norse's time constants, batch dimensions
recorded in Input shapes).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import warnings
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import h5py
import nir
import numpy as np

from lnm_deploy.errors import (
    GraphError,
    LNMDeployError,
    LNMDeployWarning,
    NumericError,
    UnsupportedError,
    UserInputError,
)
from lnm_deploy.ir import (
    Affine,
    AvgPool2d,
    Conv2d,
    Flatten,
    Graph,
    Input,
    Neuron,
    Node,
    Output,
    Scale,
    SumPool2d,
    Threshold,
)
from lnm_deploy.ir.graph import Schedule, infer_delays
from lnm_deploy.nir_io.conventions import (
    CONVENTIONS,
    DEFAULT_DT,
    LNM_FORMAT,
    PRODUCERS,
    ROCKPOOL_MODULES,
    StepParams,
    as_array,
    euler_leak,
    euler_synapse,
    exp_leak,
    exp_synapse_after_input,
    integrator_gain,
    norse_leak,
    norse_synapse,
    rockpool_dt,
)
from lnm_deploy.nir_io.registry import EXACT_READERS, READERS, NodeRead, ReadContext, reader, reads
from lnm_deploy.nir_io.write import neuron_to_nir

Shape = tuple[int, ...]

# The numeric parameters each NIR neuron type must have.
_NEURON_FIELDS = {
    "LIF": ("tau", "r", "v_leak", "v_threshold"), "LI": ("tau", "r", "v_leak"),
    "CubaLIF": ("tau_mem", "tau_syn", "r", "v_leak", "v_threshold"),
    "CubaLI": ("tau_mem", "tau_syn", "r", "v_leak"), "IF": ("r", "v_threshold"), "I": ("r",),
}
_WHY_UNSUPPORTED = {
    "Conv1d": "1-d convolutions are not in lnm-deploy's IR (reshape to a Conv2d with height 1)",
    "Delay": "only a one-step Delay on a recurrent connection is in lnm-deploy's IR",
}


# Every node type nir 1.0.8 can read: those with a reader (below), nested graphs (flattened) and those
# refused with a reason; anything else in a file is reported before nir.read fails.
def _nir_types() -> frozenset[str]:
    return frozenset(READERS) | {"NIRGraph"} | frozenset(_WHY_UNSUPPORTED)


def _warn(msg: str) -> None:
    warnings.warn(msg, LNMDeployWarning, stacklevel=4)


# ------------------------------------------------------------------------------------------------
# Reading files


def _scan_types(group: h5py.Group, path: Path, name: str) -> None:
    if "type" not in group:
        raise GraphError(f"{path}: NIR node without a 'type'", node=name or "<root>")
    t = group["type"][()]
    t = t.decode("utf8") if isinstance(t, bytes) else str(t)
    if t not in _nir_types():
        raise UnsupportedError(f"{path}: unknown NIR node type {t!r}; known types: {', '.join(sorted(_nir_types()))}",
                               node=name or "<root>")
    if t == "NIRGraph":
        if "nodes" not in group or "edges" not in group:
            raise GraphError(f"{path}: NIRGraph without 'nodes' or 'edges'", node=name or "<root>")
        for k, child in group["nodes"].items():
            if not isinstance(child, h5py.Group):
                raise GraphError(f"{path}: malformed node entry", node=k)
            _scan_types(child, path, f"{name}.{k}" if name else k)


def _fill_port_shapes(data: dict[str, Any], name: str) -> None:
    """Input / Output nodes written without a ``shape`` (nir.read fails with ``KeyError: 'shape'``)
    get ``None``: the IR infers an Output's shape from the node that feeds it, and an Input's
    from ``input_shape`` (or reports that it is needed, naming the node)."""
    t = data.get("type")
    if t in ("Input", "Output") and "shape" not in data:
        data["shape"] = None
    if t == "NIRGraph" and isinstance(data.get("nodes"), dict):
        for k, child in data["nodes"].items():
            if not isinstance(child, dict):
                raise GraphError("malformed node entry", node=f"{name}.{k}" if name else k)
            _fill_port_shapes(child, f"{name}.{k}" if name else k)


def _missing_params(data: Any, name: str) -> tuple[str, str, list[str]] | None:
    """The first node of ``data`` (``nir.serialization.hdf2dict``'s dict) that lacks a parameter
    its NIR class requires (a dataclass field without a default): ``(node, type, [names])``."""
    import dataclasses

    if not isinstance(data, dict):
        return None
    t = data.get("type")
    cls = getattr(nir, t, None) if isinstance(t, str) else None
    if t == "NIRGraph" and isinstance(data.get("nodes"), dict):
        for k, child in data["nodes"].items():
            found = _missing_params(child, f"{name}.{k}" if name else k)
            if found is not None:
                return found
    elif cls is not None and dataclasses.is_dataclass(cls):
        missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in data
                   and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            return name or "<root>", str(t), missing
    return None


def read_nir_graph(path: str | os.PathLike[str]) -> nir.NIRGraph:
    """The ``nir.NIRGraph`` in a ``.nir`` file, with every failure as a one-line lnm-deploy error."""
    p = Path(path)
    if not p.exists():
        raise UserInputError(f"NIR file {p} does not exist")
    if not p.is_file():
        raise UserInputError(f"{p} is not a file")
    try:
        f = h5py.File(p, "r")
    except OSError as e:
        raise UserInputError(f"{p} is not a NIR file (not readable as HDF5: {e})") from e
    data: Any = None
    try:
        with f:
            if "node" not in f or not isinstance(f["node"], h5py.Group):
                raise GraphError(f"{p} is HDF5 but holds no NIR graph (no 'node' group)")
            _scan_types(f["node"], p, "")
            data = nir.serialization.hdf2dict(f["node"])
        _fill_port_shapes(data, "")
        data["type_check"] = False
        g = nir.dict2NIRNode(data)  # what nir.read(p, type_check=False) does, after the fix-up
    except LNMDeployError:
        raise
    except MemoryError as e:
        raise UserInputError(f"{p}: not enough memory to read it") from e
    except Exception as e:  # truncated HDF5 (OSError), KeyError, ValueError, TypeError from nir / h5py
        found = _missing_params(data, "") if isinstance(e, (TypeError, KeyError)) else None
        if found is not None:
            node, t, missing = found
            raise GraphError(f"{p} is not a valid NIR graph: the {t} node has no "
                             f"{', '.join(repr(m) for m in missing)}, which NIR requires", node=node) from e
        raise GraphError(f"{p} is not a valid NIR graph ({type(e).__name__}: {e})") from e
    if not isinstance(g, nir.NIRGraph):
        raise GraphError(f"{p} holds a single {type(g).__name__} node, not a NIR graph")
    return g


#: Graph metadata key under which ``from_nir`` records how the graph was read.
READ_OPTIONS_KEY = "read_options"


def read_nir(
    path: str | os.PathLike[str],
    *,
    dt: float | None = None,
    producer: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    reset: str | None = None,
    threshold: str | None = None,
    spikes: str | int | None = None,
    v_floor: float | str | None = None,
    readout_nodes: Sequence[str] | None = None,
) -> Graph:
    """Read a ``.nir`` file into a validated IR graph; see ``from_nir``.

    Raises:
        UserInputError: the file is missing or not HDF5.
        GraphError: the file is HDF5 but not a NIR graph, or the graph is malformed.
        UnsupportedError, NumericError: see ``from_nir``.
    """
    return from_nir(read_nir_graph(path), dt=dt, producer=producer, input_shape=input_shape,
                    reset=reset, threshold=threshold, spikes=spikes, v_floor=v_floor,
                    readout_nodes=readout_nodes, _source=str(path))


# ------------------------------------------------------------------------------------------------
# Flattening nested graphs


def _bypass(nodes: dict[str, nir.NIRNode], edges: list[tuple[str, str]], p: str) -> list[tuple[str, str]]:
    """Remove pass-through node ``p``: each edge ``p -> y`` becomes ``x -> y`` for every ``x -> p``
    (in place, so the summation order at ``y`` is kept)."""
    sources = [s for s, d in edges if d == p]
    out: list[tuple[str, str]] = []
    for s, d in edges:
        if d == p:
            continue
        if s == p:
            out.extend((x, d) for x in sources)
        else:
            out.append((s, d))
    del nodes[p]
    return out


def _one_step_delays(nodes: dict[str, nir.NIRNode], edges: list[tuple[str, str]], dt: float
                     ) -> tuple[dict[str, nir.NIRNode], list[tuple[str, str]], set[tuple[str, str]]]:
    """Replace every NIR ``Delay`` node of exactly one step (``delay == dt``) by delayed edges
    from its sources to its consumers; any other delay is ``UnsupportedError``."""
    nodes = dict(nodes)
    delays: set[tuple[str, str]] = set()
    for name in [n for n, v in nodes.items() if type(v).__name__ == "Delay"]:
        delay = np.asarray(as_array(nodes[name].delay, "NIR parameter 'delay'", name), dtype=np.float64)
        if delay.size == 0 or not np.all(np.isfinite(delay)) or not np.allclose(delay, dt, rtol=1e-6, atol=0.0):
            raise UnsupportedError(
                f"NIR Delay of {np.unique(delay).tolist()} s at dt = {dt} s: only a delay of exactly one step "
                "(delay == dt, on a recurrent connection) is supported; if the graph's step is another, "
                "give it with --dt (dt=)", node=name)
        before = set(edges)
        edges = _bypass(nodes, edges, name)
        delays |= {e for e in edges if e not in before}
    return nodes, edges, delays


def _stored_delays(gmeta: dict[str, Any], edges: list[tuple[str, str]]) -> set[tuple[str, str]]:
    """The delayed edges an lnm-deploy graph recorded (``lnm_delays``), checked against its edges."""
    raw = gmeta.get("lnm_delays")
    if raw is None:
        return set()
    try:
        pairs = {(str(s), str(d)) for s, d in json.loads(str(raw))}
    except (ValueError, TypeError) as e:
        raise GraphError(f"graph metadata 'lnm_delays' is not a JSON list of edges ({e})") from e
    unknown = sorted(pairs - set(edges))
    if unknown:
        raise GraphError(f"graph metadata 'lnm_delays' names edges the graph does not have: {unknown}")
    return pairs


def flatten_graph(g: nir.NIRGraph, prefix: str = "") -> tuple[dict[str, nir.NIRNode], list[tuple[str, str]]]:
    """Flatten nested ``NIRGraph`` nodes into one level (names ``outer.inner``).

    An edge into (out of) a subgraph goes to the successors of its single Input (comes from the
    predecessors of its single Output); ``sub.<input name>`` selects one port explicitly. The
    subgraph's Input/Output nodes are removed. The top level keeps its own Input/Output nodes.
    """
    nodes: dict[str, nir.NIRNode] = {}
    edges: list[tuple[str, str]] = []
    ports: dict[str, tuple[list[str], list[str]]] = {}  # sub name -> (input names, output names)
    passthrough: list[str] = []
    for name, node in g.nodes.items():
        full = f"{prefix}{name}"
        if isinstance(node, nir.NIRGraph):
            inner_nodes, inner_edges = flatten_graph(node, f"{full}.")
            ins = [f"{full}.{k}" for k, v in node.nodes.items() if isinstance(v, nir.Input)]
            outs = [f"{full}.{k}" for k, v in node.nodes.items() if isinstance(v, nir.Output)]
            ports[name] = (ins, outs)
            for k in inner_nodes:
                if k in nodes or k in g.nodes:
                    raise GraphError("flattening a subgraph gives a name that already exists", node=k)
            nodes.update(inner_nodes)
            edges.extend(inner_edges)
            passthrough.extend(ins + outs)
        else:
            if full in nodes:
                raise GraphError("flattening a subgraph gives a name that already exists", node=full)
            nodes[full] = node

    def endpoint(n: str, as_source: bool) -> str:
        if n in ports:
            ins, outs = ports[n]
            cands = outs if as_source else ins
            if len(cands) != 1:
                raise UnsupportedError(
                    f"an edge {'from' if as_source else 'into'} subgraph '{n}' is ambiguous: it has "
                    f"{len(cands)} {'Output' if as_source else 'Input'} nodes {cands}",
                    node=f"{prefix}{n}",
                )
            return cands[0]
        return f"{prefix}{n}"

    own = [(endpoint(s, True), endpoint(d, False)) for s, d in g.edges]
    for s, d in own:
        for end in (s, d):
            if end not in nodes:
                raise GraphError(f"edge ({s} -> {d}) names a node that does not exist", node=end)
    edges = own + edges
    for p in passthrough:
        edges = _bypass(nodes, edges, p)
    return nodes, edges


# ------------------------------------------------------------------------------------------------
# Node conversion


def _plain(v: Any) -> Any:
    """Metadata value as plain Python (for IR provenance)."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, np.ndarray):
        return v.tolist()
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, bytes):
        return v.decode("utf8", "replace")
    if hasattr(v, "detach"):  # a torch tensor, whatever its dtype (metadata is not a parameter)
        return v.detach().cpu().numpy().tolist()
    return v


#: Parameters that may be text rather than numbers: NIR Conv's ``padding`` ("same" / "valid").
_TEXT_FIELDS = frozenset({"padding"})


def _is_text(v: Any) -> bool:
    return isinstance(v, (str, bytes)) or (isinstance(v, (np.ndarray, np.generic)) and v.dtype.kind in "US")


def _finite_params(name: str, node: nir.NIRNode) -> dict[str, np.ndarray]:
    """The node's numeric parameters as arrays (every dataclass field but the ports, metadata and a
    text ``padding``); ``GraphError`` naming the node and the field for one that is not real
    numbers (``conventions.as_array``) or is empty, ``NumericError`` on NaN/inf."""
    out: dict[str, np.ndarray] = {}
    for field in getattr(node, "__dataclass_fields__", {}):
        if field in ("input_type", "output_type", "metadata", "nodes", "edges", "input_shape"):
            continue
        v = getattr(node, field, None)
        if v is None or (field in _TEXT_FIELDS and _is_text(v)):
            continue
        a = as_array(v, f"NIR parameter '{field}'", name)  # refuses complex, bool, text, objects
        if a.size == 0:
            raise GraphError(f"NIR parameter '{field}' is empty (shape {a.shape})", node=name)
        if not np.all(np.isfinite(a)):
            raise NumericError(f"NIR parameter '{field}' has NaN or infinite values", node=name)
        out[field] = a
    return out


def _ints(name: str | None, what: str, v: Any, minimum: int | None = None,
          fix: str = "fix the exporter or the file") -> tuple[int, ...]:
    """``v`` (a number or a list of them) as ints: ``GraphError`` naming the node and ``what`` where
    an entry is not a whole number (``4.5``), or is below ``minimum``."""
    a = as_array(v, what, name).reshape(-1)
    bad = ~np.isfinite(a) | (a != np.round(a))
    if minimum is not None:
        bad |= a < minimum
    if np.any(bad):
        limit = "whole numbers" + ("" if minimum is None else f" >= {minimum}")
        raise GraphError(f"{what} {a.tolist()} must hold {limit}, has {a[bad][0]!r}; {fix}", node=name)
    return tuple(int(x) for x in a)


def _ints2(name: str, what: str, v: Any) -> tuple[int, int]:
    a = _ints(name, f"'{what}'", v)
    if len(a) == 1:
        return (a[0], a[0])
    if len(a) == 2:
        return (a[0], a[1])
    raise GraphError(f"'{what}' must be an int or a pair, got {v!r}", node=name)


def _conv_padding(name: str, node: nir.Conv2d) -> tuple[int, int]:
    pad = node.padding
    if isinstance(pad, bytes):
        pad = pad.decode()
    if isinstance(pad, str):
        if pad == "valid":
            return (0, 0)
        if pad == "same":
            k = np.asarray(node.weight.shape[2:])
            dil = np.asarray(_ints2(name, "dilation", node.dilation))
            stride = _ints2(name, "stride", node.stride)
            if stride != (1, 1):
                raise UnsupportedError("Conv2d padding='same' needs stride 1", node=name)
            total = dil * (k - 1)
            if np.any(total % 2):
                raise UnsupportedError(
                    f"Conv2d padding='same' with kernel {tuple(k)} and dilation {tuple(dil)} pads "
                    "asymmetrically (as torch does); only symmetric zero padding is supported",
                    node=name,
                )
            return (int(total[0] // 2), int(total[1] // 2))
        raise GraphError(f"Conv2d padding {pad!r} is not 'same', 'valid' or ints", node=name)
    return _ints2(name, "padding", pad)


def _population_shape(name: str, params: dict[str, np.ndarray], in_shape: Shape | None) -> Shape:
    shapes = [a.shape for a in params.values()]
    if in_shape is not None:
        try:
            if np.broadcast_shapes(in_shape, *shapes) == tuple(in_shape):
                return tuple(in_shape)
        except ValueError:
            pass
    try:
        shape = np.broadcast_shapes(*shapes)
    except ValueError as e:
        raise GraphError(f"neuron parameters of different shapes {shapes}", node=name) from e
    if len(shape) == 0 and in_shape is None:
        raise GraphError("neuron parameters are scalars and the input shape is unknown", node=name)
    return tuple(shape)


def _foreign_neuron(name: str, node: nir.NIRNode, params: dict[str, np.ndarray], in_shape: Shape | None,
                    ctx: ReadContext) -> Neuron:
    t = type(node).__name__
    dt = ctx.dt
    conv = ctx.convention or CONVENTIONS["generic"]
    p = params
    for key in ("tau", "tau_mem", "tau_syn"):
        if key in p and np.any(p[key] == 0):
            raise NumericError(f"NIR parameter '{key}' is 0 (no time constant)", node=name)
        if key in p and np.any(p[key] < 0):
            raise GraphError(f"NIR parameter '{key}' is negative ({float(np.min(p[key]))!r}): a time "
                             "constant must be > 0 seconds; fix the exporter or the file", node=name)
    if "r" in p and np.any(p["r"] <= 0):
        raise GraphError(f"NIR parameter 'r' is {float(np.min(p['r']))!r}: the input resistance must be "
                         "> 0; fix the exporter or the file", node=name)
    missing = [k for k in _NEURON_FIELDS.get(t, ()) if k not in p]
    if missing:
        raise GraphError(f"NIR {t} has no numeric value for {missing}", node=name)
    shape = _population_shape(name, p, in_shape)
    if t in ("IF", "I"):
        step = StepParams(decay=np.ones(()), offset=np.zeros(()), in_gain=integrator_gain(p["r"], dt, conv.integrator))
    else:
        tau = p["tau"] if t in ("LIF", "LI") else p["tau_mem"]
        if conv.leak == "exp":
            # Rockpool's LI is its ExpSynTorch: the input is added, then decayed
            gain = "decay" if conv.leak_gain == "one" and t == "LI" else conv.leak_gain
            step = exp_leak(tau, p["r"], p["v_leak"], dt, gain)
        else:
            step = (norse_leak if conv.leak == "norse" else euler_leak)(tau, p["r"], p["v_leak"], dt)
    syn_decay = syn_gain = None
    if t in ("CubaLIF", "CubaLI"):
        w_in = p.get("w_in", np.ones(()))
        synapse = {"euler": euler_synapse, "jump": norse_synapse, "exp-after-input": exp_synapse_after_input}
        syn_decay, syn_gain = synapse[conv.synapse](p["tau_syn"], w_in, dt)
        if np.any(syn_decay < 0) or np.any(syn_decay > 1):
            ctx.unstable.append(name)
    if np.any(step.decay < 0) or np.any(step.decay > 1):
        ctx.unstable.append(name)
    in_gain = step.in_gain
    if syn_decay is not None and conv.synapse == "exp-after-input":
        in_gain = in_gain * syn_decay  # the membrane takes beta * (undecayed sum): see exp_synapse_after_input
    full = lambda a: np.broadcast_to(np.asarray(a, dtype=np.float64), shape)  # noqa: E731
    spiking = t in ("LIF", "CubaLIF", "IF")
    v_th = full(p["v_threshold"]) if spiking else None
    v_reset = full(p["v_reset"]) if spiking and "v_reset" in p else np.zeros(shape)
    meta: dict[str, Any] = {"nir_type": t}
    if node.metadata:
        meta["nir_metadata"] = _plain(node.metadata)
    v_floor = None
    if spiking and conv.v_floor is not None:
        v_floor = -full(p["v_threshold"]) if conv.v_floor == "-v_th" else full(float(conv.v_floor))
    return Neuron(
        shape=shape,
        poly=np.stack([full(step.offset), full(step.decay)]),
        v_th=v_th,
        v_reset=v_reset,
        reset=conv.reset if spiking else "value",  # type: ignore[arg-type]
        in_gain=full(in_gain),
        syn_decay=None if syn_decay is None else full(syn_decay),
        syn_gain=None if syn_gain is None else full(syn_gain),
        dt=dt,
        threshold=conv.threshold if spiking else ">",  # type: ignore[arg-type]
        max_spikes=conv.max_spikes if spiking else 1,
        v_floor=v_floor,
        metadata=meta,
    )


def _meta_get(name: str, meta: dict[str, Any], key: str) -> Any:
    if key not in meta:
        raise GraphError(f"lnm-deploy metadata is incomplete: '{key}' is missing", node=name)
    return meta[key]


def _arr(x: Any, what: str = "a NIR parameter", node: str | None = None) -> np.ndarray:
    return np.asarray(as_array(x, what, node), dtype=np.float64)


def _meta_arr(name: str, meta: dict[str, Any], key: str) -> np.ndarray:
    """lnm-deploy metadata ``key`` of node ``name`` as float64 (``GraphError`` if missing or not numbers)."""
    return _arr(_meta_get(name, meta, key), f"lnm-deploy metadata '{key}'", name)


def _exact_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    raw = meta.get("lnm_metadata")
    if raw is None:
        return {}
    try:
        out = json.loads(str(raw))
    except json.JSONDecodeError:
        return {"lnm_metadata": str(raw)}
    return out if isinstance(out, dict) else {"lnm_metadata": out}


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=1e-9, atol=0.0))


def _written_spiking(meta: dict[str, Any]) -> bool:
    """Whether lnm-deploy's metadata says the neuron spikes (``lnm_spiking``, written since the
    non-spiking readouts; older files lack it: then False, and a missing threshold means none)."""
    flag = meta.get("lnm_spiking", False)
    try:
        return bool(np.asarray(flag).item())
    except (ValueError, TypeError):
        return False


def exact_neuron_fields(name: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The ``Neuron`` fields lnm-deploy wrote into a node's ``lnm_*`` metadata (exact float64), for
    the exact readers of ``Neuron`` and of kinds derived from it; ``GraphError`` naming the missing
    key when the metadata is incomplete."""
    poly = _meta_arr(name, meta, "lnm_poly")
    syn = "lnm_syn_decay" in meta
    return {
        "shape": tuple(poly.shape[1:]),
        "poly": poly,
        # a spiking neuron's threshold is always written: missing, it would read as an integrator
        "v_th": _meta_arr(name, meta, "lnm_v_th") if "lnm_v_th" in meta or _written_spiking(meta) else None,
        "v_reset": _meta_arr(name, meta, "lnm_v_reset"),
        "reset": str(_meta_get(name, meta, "lnm_reset")),
        "in_gain": _meta_arr(name, meta, "lnm_in_gain"),
        "syn_decay": _meta_arr(name, meta, "lnm_syn_decay") if syn else None,
        "syn_gain": _meta_arr(name, meta, "lnm_syn_gain") if syn else None,
        "dt": float(_meta_get(name, meta, "lnm_dt")),
        # written only where they differ from the defaults (lnm_format 2): '>', 1, no floor
        "threshold": str(meta.get("lnm_threshold", ">")),
        "max_spikes": _max_spikes_meta(name, meta.get("lnm_max_spikes", 1)),
        "v_floor": _meta_arr(name, meta, "lnm_v_floor") if "lnm_v_floor" in meta else None,
    }


def _max_spikes_meta(name: str, raw: Any) -> int | None:
    """``lnm_max_spikes`` as written by ``write.neuron_to_nir``: a positive integer or ``"unbounded"``."""
    if isinstance(raw, bytes):
        raw = raw.decode("utf8", "replace")
    if isinstance(raw, str):
        if raw == "unbounded":
            return None
        raise GraphError(f"lnm-deploy metadata 'lnm_max_spikes' is {raw!r}, not an integer or 'unbounded'", node=name)
    value = np.asarray(raw)
    if value.ndim != 0 or not np.issubdtype(value.dtype, np.integer):
        raise GraphError(f"lnm-deploy metadata 'lnm_max_spikes' is {raw!r}, not an integer or 'unbounded'", node=name)
    return int(value)


def warn_if_edited(name: str, node: nir.NIRNode, neuron: Neuron) -> None:
    """Warn when ``node``'s NIR parameters are not the ones lnm-deploy derives from ``neuron`` (read
    from the exact metadata): another tool edited the file; the metadata, which is exact, wins."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LNMDeployWarning)
        expected = neuron_to_nir(name, neuron)
    if type(expected) is not type(node) or not all(
        _close(_arr(getattr(node, f), f"NIR parameter '{f}'", name), _arr(getattr(expected, f)))
        for f in _finite_params(name, expected)
    ):
        _warn(f"node '{name}': its NIR parameters disagree with its lnm-deploy metadata (edited by "
              "another tool?); the metadata, which is exact, is used")


def _exact_neuron(name: str, node: nir.NIRNode, meta: dict[str, Any]) -> Neuron:
    neuron = Neuron(**exact_neuron_fields(name, meta), metadata=_exact_metadata(meta))
    neuron.validate(name)
    warn_if_edited(name, node, neuron)
    return neuron


def _convert(name: str, node: nir.NIRNode, in_shape: Shape | None, ctx: ReadContext) -> Node:
    """``_convert_node``, with any failure that is not an lnm-deploy error (a parameter of the wrong
    type or shape: TypeError, ValueError, KeyError...) reported as a ``GraphError`` naming the node."""
    try:
        return _convert_node(name, node, in_shape, ctx)
    except LNMDeployError:
        raise
    except Exception as e:
        raise GraphError(f"NIR {type(node).__name__} has malformed parameters ({type(e).__name__}: {e})",
                         node=name) from e


def _convert_node(name: str, node: nir.NIRNode, in_shape: Shape | None, ctx: ReadContext) -> Node:
    if node is None:
        raise UnsupportedError("the graph holds None here: its exporter wrote no NIR node for this layer (Norse "
                               "1.1.0's to_nir does so for nn.Flatten and nn.AvgPool2d); export the network "
                               "without it, or put the NIR node (nir.Flatten, nir.AvgPool2d) in its place",
                               node=name)
    t = type(node).__name__
    if t in _WHY_UNSUPPORTED:
        raise UnsupportedError(f"NIR {t}: {_WHY_UNSUPPORTED[t]}", node=name)
    entry = reader(t, node=name)
    params = _finite_params(name, node)
    meta = dict(node.metadata or {})
    exact = ctx.exact and "lnm_kind" in meta
    if ctx.exact and not exact and t not in ("Input", "Output"):
        # lnm-deploy writes lnm_kind on every node: this one was edited or replaced by another tool
        _warn(f"node '{name}': the graph says lnm-deploy wrote it, but this {t} node carries none of "
              "lnm-deploy's metadata (edited by another tool?): it is read from its NIR parameters "
              "alone, as from any other producer (an LNM's polynomial, for one, is then lost)")
    ir_meta = _exact_metadata(meta) if exact else {"nir_type": t}
    if not exact and meta:
        ir_meta["nir_metadata"] = _plain(meta)
    # A kind registered with ``reads_exactly`` comes back as itself from lnm-deploy's own files.
    convert = EXACT_READERS.get(str(meta["lnm_kind"]), entry.convert) if exact else entry.convert
    return convert(NodeRead(name, node, params, meta, ir_meta, exact, in_shape, ctx))


# ------------------------------------------------------------------------------------------------
# Readers, one per NIR node type (the registry is ``lnm_deploy.nir_io.registry.READERS``)


def _dims(x: Any) -> Shape:
    """The shape of a parameter (numpy, torch or nested lists) without reading its values, which
    ``_finite_params`` reads and checks when the node is converted."""
    return tuple(int(s) for s in (x.shape if hasattr(x, "shape") else np.shape(x)))


def _weight_input(node: nir.NIRNode) -> Shape | None:
    w = _dims(node.weight)
    return (w[-1],) if len(w) == 2 else None


def _param_shape(key: str) -> Callable[[nir.NIRNode], Shape | None]:
    """The input shape implied by the shape of parameter ``key`` (None for a scalar)."""
    def implied(node: nir.NIRNode) -> Shape | None:
        a = _dims(getattr(node, key))
        return a if a else None
    return implied


@reads(Input, "Input")
def _read_input(r: NodeRead) -> Input:
    """The graph's Input; ``r.in_shape`` is its shape as resolved by the graph reader."""
    assert r.in_shape is not None
    return Input(shape=r.in_shape, metadata=_exact_metadata(r.meta) if r.ctx.exact else {"nir_type": "Input"})


@reads(Output, "Output")
def _read_output(r: NodeRead) -> Output:
    """The graph's Output. Its shape is the shape of the node feeding it (``r.in_shape``); a shape
    the node declares must be that one, possibly after leading 1s (a batch some exporters record:
    Rockpool writes ``(1, 1, n)``), or, where the producer traces (time, features) samples
    (``input_layout="time-first"``: Sinabs), after one leading time dimension. An absent or empty
    declared shape is not checked, nor one that holds as many values (another layout of the same
    output)."""
    declared = r.node.output_type.get("output") if isinstance(r.node.output_type, dict) else None
    shape = _port_shape(r.name, "Output", declared) if declared is not None else ()
    fed = r.in_shape
    if shape and fed is not None and shape != fed:
        lead = shape[: len(shape) - len(fed)]
        time_first = r.ctx.convention is not None and r.ctx.convention.input_layout == "time-first"
        fits = len(shape) > len(fed) and shape[len(lead):] == fed and (
            all(d == 1 for d in lead) or (time_first and len(lead) == 1))
        # the same values laid out otherwise ((10,) for (10, 1, 1), (C*H*W,) for (C, H, W)): the
        # output is read as the layer's, as before; only a different number of values is refused
        fits = fits or math.prod(shape) == math.prod(fed)
        if not fits:
            raise GraphError(f"the NIR Output declares shape {shape} but the node feeding it gives {fed}: fix the "
                             "exporter or the file (write the Output with the shape of the layer it reads, or "
                             "without a shape)", node=r.name)
    return Output(metadata=r.ir_meta)


@reads(Affine, "Affine", "Linear", implied_input=_weight_input)
def _read_affine(r: NodeRead) -> Affine:
    t = type(r.node).__name__
    w = r.params["weight"]
    if w.ndim != 2:
        raise UnsupportedError(f"NIR {t} weight must be 2-d (out, in), got shape {w.shape}", node=r.name)
    bias = r.params.get("bias") if t == "Affine" else None
    return Affine(weight=w, bias=bias, metadata=r.ir_meta)


@reads(Scale, "Scale", implied_input=_param_shape("scale"))
def _read_scale(r: NodeRead) -> Scale:
    scale = _meta_arr(r.name, r.meta, "lnm_scale") if r.exact and "lnm_scale" in r.meta else r.params["scale"]
    return Scale(scale=scale, metadata=r.ir_meta)


@reads(Threshold, "Threshold", implied_input=_param_shape("threshold"))
def _read_threshold(r: NodeRead) -> Threshold:
    v_th = _meta_arr(r.name, r.meta, "lnm_v_th") if r.exact and "lnm_v_th" in r.meta else r.params["threshold"]
    return Threshold(v_th=v_th, metadata=r.ir_meta)


@reads(Conv2d, "Conv2d")
def _read_conv2d(r: NodeRead) -> Conv2d:
    w = r.params["weight"]
    if w.ndim != 4:
        raise GraphError(f"Conv2d weight must be 4-d, got shape {w.shape}", node=r.name)
    has_bias = bool(r.meta.get("lnm_has_bias", True)) if r.exact else True
    node = r.node
    return Conv2d(
        weight=w,
        bias=r.params.get("bias") if has_bias else None,
        stride=_ints2(r.name, "stride", node.stride),
        padding=_conv_padding(r.name, node),
        dilation=_ints2(r.name, "dilation", node.dilation),
        groups=_ints(r.name, "NIR parameter 'groups'", node.groups)[0],
        metadata=r.ir_meta,
    )


@reads(Flatten, "Flatten")
def _read_flatten(r: NodeRead) -> Flatten:
    return Flatten(start_dim=_ints(r.name, "NIR parameter 'start_dim'", r.node.start_dim)[0],
                   end_dim=_ints(r.name, "NIR parameter 'end_dim'", r.node.end_dim)[0],
                   metadata=r.ir_meta)


def _pool_reader(cls: type[SumPool2d] | type[AvgPool2d]) -> Callable[[NodeRead], Node]:
    def read(r: NodeRead) -> Node:
        return cls(kernel_size=_ints2(r.name, "kernel_size", r.node.kernel_size),
                   stride=_ints2(r.name, "stride", r.node.stride),
                   padding=_ints2(r.name, "padding", r.node.padding), metadata=r.ir_meta)
    return read


reads(SumPool2d, "SumPool2d")(_pool_reader(SumPool2d))
reads(AvgPool2d, "AvgPool2d")(_pool_reader(AvgPool2d))


def _read_neuron(r: NodeRead) -> Neuron:
    if r.exact and r.meta.get("lnm_kind") == "neuron":
        return _exact_neuron(r.name, r.node, r.meta)
    return _foreign_neuron(r.name, r.node, r.params, r.in_shape, r.ctx)


# The parameter whose shape is the population's, per NIR neuron type.
for _t, _key in {"IF": "v_threshold", "LIF": "v_threshold", "CubaLIF": "v_threshold", "LI": "tau",
                 "CubaLI": "tau_mem", "I": "r"}.items():
    reads(Neuron, _t, implied_input=_param_shape(_key))(_read_neuron)


# ------------------------------------------------------------------------------------------------
# Graph conversion


def _expected_input(node: nir.NIRNode) -> Shape | None:
    """The input shape a consumer node implies by its parameters, where it does."""
    entry = READERS.get(type(node).__name__)
    return entry.implied_input(node) if entry is not None and entry.implied_input is not None else None


def _port_shape(name: str, port: str, raw: Any) -> Shape:
    """The shape an Input or Output node declares, as ints; ``GraphError`` naming the node where it
    is not whole numbers >= 1 (``[4.5]``, ``[0]``, text, complex). Empty for an empty shape."""
    fix = ("pass input_shape=(...) (CLI --input-shape) to override it" if port == "Input"
           else "fix the exporter or the file (or write the Output without a shape)")
    return _ints(name, f"the NIR {port}'s shape", raw, minimum=1, fix=fix)


def _input_shape(name: str, node: nir.Input, consumers: list[nir.NIRNode], override: Shape | None,
                 layout: str = "features") -> Shape:
    if override is not None:
        return tuple(int(s) for s in override)
    raw = node.input_type.get("input") if isinstance(node.input_type, dict) else None
    if raw is None:
        raise GraphError("the NIR Input node has no shape; pass input_shape=(...) (CLI: the shape "
                         "without batch and time)", node=name)
    shape = _port_shape(name, "Input", raw)
    if not shape:
        raise GraphError(f"the NIR Input's shape {shape} must be non-empty sizes >= 1 (without batch and "
                         "time); pass input_shape=(...) (CLI --input-shape) to override it", node=name)
    # Exporters that trace with a batched sample (Norse's to_nir, nirtorch without ignore_dims)
    # record the batch dimension: drop leading 1s when a consumer's parameters imply fewer dims.
    for c in consumers:
        want = _expected_input(c)
        if type(c).__name__ == "Conv2d" and len(shape) == 4 and shape[0] == 1:
            w = _dims(c.weight)
            groups = np.asarray(c.groups).reshape(-1)
            if len(w) == 4 and groups.size == 1 and shape[1] == w[1] * groups[0]:
                want = shape[1:]
        if want is not None and want != shape and len(shape) > len(want) and shape[-len(want):] == want \
                and all(s == 1 for s in shape[: len(shape) - len(want)]):
            _warn(f"node '{name}': Input shape {shape} includes a batch dimension (exporters that trace a "
                  f"batched sample write it so: Norse's to_nir, nirtorch without ignore_dims); using {want}")
            return want
    # Exporters that trace an MLP with a (batch, time, features) sample (Sinabs' to_nir) record
    # (time, features): drop the time when the convention says so, else say what it is.
    for c in consumers:
        want = _expected_input(c)
        if want is not None and len(shape) == len(want) + 1 and shape[1:] == want and shape[0] > 1:
            if layout == "time-first":
                _warn(f"node '{name}': Input shape {shape} is (time, features) (the exporter traced a "
                      f"(batch, time, features) sample); using one step's shape {want}")
                return want
            raise GraphError(
                f"the Input's shape {shape} has one more dimension than the {type(c).__name__} it feeds "
                f"expects ({want}): it looks like (time, features), recorded by an exporter "
                f"that traced a (batch, time, features) sample (Sinabs does). Pass input_shape={want} "
                f"(CLI --input-shape {' '.join(str(v) for v in want)}), or producer='sinabs' if Sinabs wrote "
                "it", node=name)
    return shape


def _resolve_producer(meta: dict[str, Any], producer: str | None,
                      nodes: dict[str, nir.NIRNode] | None = None) -> tuple[str, str]:
    """The producer and why: the graph's own ``metadata["producer"]`` if any (unknown names mean
    generic), else the ``producer`` argument, else one detected from a trace its writer leaves
    (Rockpool's node names), else ``"generic"``. The reason is one of ``"graph metadata"``,
    ``"argument"``, ``"detected: ..."``, ``"default"``."""
    if producer is not None:
        producer = producer.lower()
        if producer == "lnm_deploy":
            producer = "lnm-deploy"
        if producer not in PRODUCERS:
            raise UserInputError(f"unknown producer {producer!r}; choose one of {', '.join(PRODUCERS)}")
    found = meta.get("producer")
    if isinstance(found, bytes):
        found = found.decode("utf8", "replace")
    if isinstance(found, str) and found:
        known = found.lower()
        if producer is not None and producer != known:
            _warn(f"the graph says it was written by {found!r}; producer={producer!r} is ignored")
        return (known if known in PRODUCERS else "generic"), "graph metadata"
    if producer is not None:
        return producer, "argument"
    why = _detect(nodes or {})
    if why is not None:
        return why
    return "generic", "default"


def _detect(nodes: dict[str, nir.NIRNode]) -> tuple[str, str] | None:
    """A producer recognised by a trace its writer leaves in the graph, with the reason; None if none.

    Rockpool 3.1's ``to_nir`` names every node ``<index>_<Module>`` (``0_LinearTorch``, ``1_LIFTorch``)
    and writes ``r = tau exp(-dt/tau)/dt``: both must hold. snnTorch, Norse and Sinabs write no
    metadata and default names (``0``, ``1``...); their fingerprints are only hinted (``_looks_like``).
    """
    inner = [n for n, v in nodes.items() if not isinstance(v, (nir.Input, nir.Output))]
    if not inner:
        return None
    named = [n for n in inner if n.rsplit(".", 1)[-1].split("_", 1)[-1] in ROCKPOOL_MODULES
             and n.rsplit(".", 1)[-1].split("_", 1)[0].isdigit()]
    if len(named) != len(inner):
        return None
    if _rockpool_dt(nodes) is None:
        return None
    return "rockpool", f"detected: node names {named[:3]}{'...' if len(named) > 3 else ''} are Rockpool's"


def _rockpool_dt(nodes: dict[str, nir.NIRNode]) -> float | None:
    """The one dt (seconds) every neuron's ``r = tau exp(-dt/tau)/dt`` was written with (Rockpool),
    rounded to 6 significant digits; None without neurons or if they disagree (relative 1e-5)."""
    dts: list[np.ndarray] = []
    for n, v in nodes.items():
        if isinstance(v, (nir.LIF, nir.LI, nir.CubaLIF, nir.CubaLI)):
            key = "tau" if isinstance(v, (nir.LIF, nir.LI)) else "tau_mem"
            tau = as_array(getattr(v, key), f"NIR parameter '{key}'", n)
            r = as_array(v.r, "NIR parameter 'r'", n)
            if np.any(r <= 0) or np.any(tau <= 0):
                return None
            dts.append(np.asarray(rockpool_dt(tau, r)).reshape(-1))
    if not dts:
        return None
    every = np.concatenate(dts)
    mid = float(np.median(every))
    if not (np.isfinite(mid) and mid > 0 and np.allclose(every, mid, rtol=1e-5, atol=0.0)):
        return None
    return float(f"{mid:.6g}")


def _looks_like(nodes: dict[str, nir.NIRNode]) -> str | None:
    """A hint for the user when no producer was given: snnTorch, Norse 1.1.0 or Sinabs fingerprints
    (a guess shown in the warning, never applied)."""
    def p(name: str, key: str) -> np.ndarray:
        return as_array(getattr(nodes[name], key), f"NIR parameter '{key}'", name)

    lifs = [n for n, v in nodes.items() if isinstance(v, (nir.LIF, nir.CubaLIF, nir.LI, nir.CubaLI))]
    ifs = [n for n, v in nodes.items() if isinstance(v, nir.IF)]
    if not lifs:
        # Sinabs' IAF is written as IF with r = 1 and integrates one unit per step (dt = 1): read
        # at the generic dt, such a network integrates r dt and goes nearly silent.
        if ifs and all(np.all(p(n, "r") == 1.0) for n in ifs):
            return "sinabs"
        return None
    with np.errstate(divide="ignore", invalid="ignore"):
        def tau(n: str) -> np.ndarray:
            return p(n, "tau" if isinstance(nodes[n], (nir.LIF, nir.LI)) else "tau_mem").astype(np.float64)

        if all(np.allclose(p(n, "r") * DEFAULT_DT["snntorch"], tau(n), rtol=1e-5) for n in lifs):
            return "snntorch"
        if all(np.allclose(p(n, "r"), 1.0) and np.all(tau(n) < DEFAULT_DT["norse"]) for n in lifs):
            return "norse"
        if all(np.all(p(n, "r") == 1.0) and np.all(p(n, "v_leak") == 0.0) and np.all(tau(n) >= 1.0)
               for n in lifs):
            return "sinabs"  # time constants in steps, r = 1, v_leak = 0
    return None


def _check_floor(name: str, stated: float | str, v_floor: np.ndarray, v_th: np.ndarray) -> None:
    """``UserInputError`` (node named) where the stated membrane floor is at or above a neuron's
    firing threshold: a membrane held at or above ``v_th`` after every reset spikes every step, which
    no framework's ``min_v_mem`` means; compared per neuron with ``v_th`` as read."""
    above = v_floor >= v_th
    if not np.any(above):
        return
    where = np.argwhere(above)[0]
    at = tuple(int(i) for i in where)
    floor = "-v_th" if stated == "-v_th" else repr(float(stated))
    fix = ("the floor -v_th is at or above v_th only where v_th <= 0: give a number below the smallest "
           "threshold, or no --v-floor" if stated == "-v_th"
           else f"give a floor below {float(np.min(v_th))!r} (e.g. --v-floor=-v_th) or no --v-floor")
    raise UserInputError(f"the membrane floor v_floor={floor} (CLI --v-floor) is at or above the firing threshold of "
                         f"{int(np.sum(above))} of {above.size} neurons (neuron {at}: floor {float(v_floor[at])!r}, "
                         f"v_th {float(v_th[at])!r}; the smallest v_th is {float(np.min(v_th))!r}): a membrane "
                         f"held at or above its threshold spikes every step; {fix}", node=name)


def from_nir(
    graph_or_path: nir.NIRGraph | str | os.PathLike[str],
    *,
    dt: float | None = None,
    producer: str | None = None,
    input_shape: tuple[int, ...] | None = None,
    reset: str | None = None,
    threshold: str | None = None,
    spikes: str | int | None = None,
    v_floor: float | str | None = None,
    readout_nodes: Sequence[str] | None = None,
    _source: str | None = None,
) -> Graph:
    """Convert a NIR graph (object or file path) into a validated IR graph.

    Args:
        graph_or_path: a ``nir.NIRGraph`` (e.g. from ``snntorch.export_nir.export_to_nir`` or
            ``norse.torch.to_nir``; torch tensors as parameters are accepted) or a ``.nir`` path.
        dt: seconds per step for discretising continuous-time neurons; overrides the graph's
            ``metadata["dt"]`` and the producer's default. Ignored (with a warning if different)
            for lnm-deploy's own graphs, whose neurons are stored per step.
        producer: one of ``PRODUCERS`` (``"snntorch"``, ``"norse"``, ``"sinabs"``, ``"rockpool"``,
            ``"generic"``, ``"lnm-deploy"``), used when the graph's metadata does not name its
            producer (none of those frameworks writes one). Without it, a Rockpool graph is detected
            by its node names (warned); anything else is read as generic NIR.
        input_shape: the Input's shape (no batch, no time), when the graph does not record it or
            records it wrongly.
        reset, threshold, spikes, v_floor: what the file cannot say about the source's spiking
            neurons, overriding the producer's convention (``conventions.CONVENTIONS``), each applied
            exactly (``Neuron.reset`` / ``threshold`` / ``max_spikes`` / ``v_floor``): ``reset``
            ``"value"`` or ``"subtract"``; ``threshold`` ``">"`` or ``">="``; ``spikes``
            ``"single"`` (one per step), ``"multi"`` (``floor(v / v_th)`` per step: unbounded for
            Sinabs' MultiSpike, at most 2**16 for Rockpool) or a positive integer N (at most N);
            ``v_floor`` a finite number or ``"-v_th"``, below every spiking neuron's ``v_th``: the
            membrane's lower bound after reset (Sinabs' ``min_v_mem``, which no exporter writes;
            Sinabs' own ``from_nir`` reads IF with ``-v_th``). Ignored for lnm-deploy's own graphs, which carry them per neuron.
        readout_nodes: names (after flattening: ``outer.inner``) of neurons to read as non-spiking
            readouts, whatever the file says: the membrane is the output, no threshold, no reset
            (snnTorch's exporter writes a ``Leaky`` used as a readout as a spiking LIF). Only the
            layer the Output reads, feeding nothing else, can be one; recorded sorted, each once.

    Returns:
        An IR graph; ``metadata`` holds ``imported_from`` (producer), ``dt`` and the NIR graph
        metadata (``nir_metadata``), or, for lnm-deploy's graphs, the exact IR metadata; and always
        ``read_options``: ``{"requested": {producer, dt, input_shape[, reset, threshold, spikes,
        v_floor, readout_nodes where given]},
        "resolved": {...}, "convention": {...}, "producer_from": why}``, the options as given (None
        where not given), as the reader resolved them, the convention's fields applied and how the
        producer was chosen (``"graph metadata"``, ``"argument"``, ``"detected: ..."``, ``"default"``).

    Raises:
        UserInputError: unknown producer, bad dt or reading option, a ``readout_nodes`` name that is
            not a neuron of the graph or not the layer the Output reads (feeding nothing else), a
            ``v_floor`` at or above a spiking neuron's ``v_th`` (per neuron, as read; NaN and
            infinite floors are bad options), or (via ``read_nir``) an unreadable file.
        GraphError: malformed graph (dangling edges, missing Input shape, shape mismatches).
        UnsupportedError: node types the IR cannot express (Conv1d, Delay, unknown), asymmetric
            'same' padding, several Inputs or Outputs.
        NumericError: NaN or infinite parameters, zero time constants.
    """
    if isinstance(graph_or_path, (str, os.PathLike)):
        return read_nir(graph_or_path, dt=dt, producer=producer, input_shape=input_shape, reset=reset,
                        threshold=threshold, spikes=spikes, v_floor=v_floor, readout_nodes=readout_nodes)
    if not isinstance(graph_or_path, nir.NIRGraph):
        raise UserInputError(f"from_nir expects a nir.NIRGraph or a path, got {type(graph_or_path).__name__}")
    if dt is not None and not (isinstance(dt, (int, float)) and np.isfinite(dt) and dt > 0):
        raise UserInputError(f"dt must be a positive number of seconds, got {dt!r}")
    if input_shape is not None:
        from lnm_deploy.validate import shape_option

        input_shape = shape_option(input_shape, "input_shape (CLI --input-shape)")
    stated: dict[str, Any] = {"reset": reset, "threshold": threshold, "spikes": spikes, "v_floor": v_floor}
    try:
        checked = CONVENTIONS["generic"].with_options(**stated)
    except ValueError as e:
        raise UserInputError(str(e)) from e
    stated = {k: (getattr(checked, k) if v is not None else None) for k, v in stated.items()}
    readouts = _readout_option(readout_nodes)
    try:
        return _from_nir_graph(graph_or_path, dt, producer, input_shape, _source, stated, readouts)
    except LNMDeployError:
        raise
    except RecursionError as e:
        raise GraphError("the graph nests NIRGraph nodes too deeply") from e
    except Exception as e:  # a malformed graph object the checks above did not foresee
        raise GraphError(f"the NIR graph is malformed ({type(e).__name__}: {e})") from e


def reading_summary(read_options: Any) -> str | None:
    """One line saying how a graph was read, from its ``read_options`` (``from_nir``'s record): the
    producer convention assumed and why, the spike rules it gives, and the options the user stated;
    None when ``read_options`` is not such a record. Used by ``lnm-deploy inspect``."""
    if not isinstance(read_options, dict) or not isinstance(read_options.get("resolved"), dict):
        return None
    resolved, conv = read_options["resolved"], read_options.get("convention")
    prod = str(resolved.get("producer"))
    why = read_options.get("producer_from", "not recorded")
    if prod == "lnm-deploy" or not isinstance(conv, dict):
        line = f"producer {prod} ({why}): neurons restored exactly from lnm-deploy's metadata"
    else:
        name = CONVENTIONS[prod].framework if prod in CONVENTIONS else prod
        cap = conv.get("max_spikes", 1)
        count = ("one spike" if cap == 1 else "floor(v/v_th) spikes, unbounded" if cap is None
                 else f"floor(v/v_th) spikes, at most {cap}")
        floor = conv.get("v_floor")
        line = (f"producer {prod} ({why}): {name}'s convention, dt {resolved.get('dt')} s; spiking neurons: "
                f"{conv.get('reset')} reset, spike where v {conv.get('threshold')} v_th, {count} per step, "
                + ("no membrane floor" if floor is None else f"membrane floor {floor}"))
    stated = {k: v for k, v in (read_options.get("requested") or {}).items() if v is not None}
    if stated:
        line += "; options given: " + ", ".join(f"{k}={v}" for k, v in stated.items())
    return line


def _readout_option(readout_nodes: Sequence[str] | None) -> tuple[str, ...]:
    """``readout_nodes`` checked: a list of node names (a single string is one name), canonical:
    sorted, each once (a name given twice reads the same graph; the recorded list, replayed by
    ``verify``, does not depend on the order or repetition of ``--readout-node``)."""
    if readout_nodes is None:
        return ()
    names = [readout_nodes] if isinstance(readout_nodes, str) else list(readout_nodes)
    if not all(isinstance(n, str) and n for n in names):
        raise UserInputError(f"readout_nodes (CLI --readout-node) must be node names, got {readout_nodes!r}")
    return tuple(sorted(set(names)))


def _as_readouts(ir_nodes: dict[str, Node], names: tuple[str, ...]) -> None:
    """Make each named neuron a non-spiking readout (in place): its membrane is the output, no
    threshold, no reset; ``UserInputError`` naming a node that does not exist or is not a neuron."""
    neurons = sorted(n for n, v in ir_nodes.items() if type(v) is Neuron)
    for name in names:
        node = ir_nodes.get(name)
        if node is None or type(node) is not Neuron:
            what = "does not exist" if node is None else f"is a {node.kind}, not a neuron"
            close = difflib.get_close_matches(name, neurons, n=3)
            hint = f" (closest: {', '.join(close)})" if close else ""
            raise UserInputError(f"readout node '{name}' (readout_nodes, CLI --readout-node) {what}; the graph's "
                                 f"neurons: {', '.join(neurons) or 'none'}{hint}")
        meta = dict(node.metadata)
        meta["read_as_readout"] = True
        ir_nodes[name] = replace(node, v_th=None, reset="value", threshold=">", max_spikes=1, v_floor=None,
                                 v_reset=np.zeros(node.shape), metadata=meta)


def _from_nir_graph(g: nir.NIRGraph, dt: float | None, producer: str | None, input_shape: Shape | None,
                    _source: str | None, stated: dict[str, Any] | None = None,
                    readouts: tuple[str, ...] = ()) -> Graph:
    stated = stated or {}
    gmeta = dict(g.metadata or {})
    nodes, edges = flatten_graph(g)
    prod, prod_from = _resolve_producer(gmeta, producer, nodes)
    conv = None if prod == "lnm-deploy" else CONVENTIONS[prod].with_options(**stated)
    if prod_from.startswith("detected"):
        _warn(f"no producer given and the graph names none: read as {CONVENTIONS[prod].framework}'s "
              f"({prod_from}); pass producer= (CLI --producer) to read it otherwise")

    exact = prod == "lnm-deploy"
    if exact:
        # lnm-deploy's graphs (and the float model in an artifact, calibrated as it reads) carry
        # each neuron's spike rules and readouts: the reading options do not apply, and applying
        # a readout to an artifact's float model alone would make it differ from its integers
        given = {k: v for k, v in stated.items() if v is not None}
        if readouts:
            given["readout_nodes"] = list(readouts)
        if given:
            _warn(f"{', '.join(f'{k}={v!r}' for k, v in given.items())} ignored: lnm-deploy graphs carry each "
                  "neuron's reset, threshold, spike count, floor and readouts (an artifact's as calibrated)")
        stated, readouts = {}, ()
        fmt = gmeta.get("lnm_format")
        fmt = None if fmt is None else _ints(None, "graph metadata 'lnm_format'", fmt)[0]
        if fmt is not None and fmt > LNM_FORMAT:
            raise UnsupportedError(f"the graph uses lnm-deploy metadata format {fmt}; this "
                                   f"version reads up to {LNM_FORMAT}: upgrade lnm-deploy")
    meta_dt = gmeta.get("dt")
    meta_dt = float(as_array(meta_dt, "graph metadata 'dt'")) if meta_dt is not None else None
    if exact:
        step = meta_dt if meta_dt is not None else (dt if dt is not None else DEFAULT_DT["generic"])
        if dt is not None and meta_dt is not None and dt != meta_dt:
            _warn(f"dt={dt} ignored: lnm-deploy graphs store per-step neurons (their dt is {meta_dt})")
    elif dt is not None:
        step = float(dt)
        if prod == "snntorch" and step != DEFAULT_DT["snntorch"]:
            _warn(f"snnTorch's exporter always uses dt = 1e-4 s; dt={step} changes the dynamics")
    elif meta_dt is not None:
        step = meta_dt
    elif prod == "rockpool":
        found_dt = _rockpool_dt(nodes)
        if found_dt is None:
            step = 1e-3  # Rockpool's default dt
            _warn(f"the graph's r is not Rockpool's tau exp(-dt/tau)/dt with one dt: assumed Rockpool's "
                  f"default dt = {step} s; pass dt= (CLI --dt)")
        else:
            step = found_dt
    elif prod in DEFAULT_DT and (prod != "generic"):
        step = DEFAULT_DT[prod]
    else:
        step = DEFAULT_DT["generic"]
        if any(type(n).__name__ in _NEURON_FIELDS for n in nodes.values()):
            hint = _looks_like(nodes)
            extra = (f" It looks like {CONVENTIONS[hint].framework}'s exporter: "
                     f"pass producer={hint!r}.") if hint else ""
            _warn(f"NIR graphs carry no dt and none was given: assumed dt = {step} s (forward Euler); "
                  f"pass dt= (CLI --dt) or producer= (CLI --producer).{extra}")
    if dt is not None and prod == "rockpool":
        found_dt = _rockpool_dt(nodes)
        if found_dt is not None and not np.isclose(found_dt, step, rtol=1e-5, atol=0.0):
            _warn(f"Rockpool wrote its neurons with dt = {found_dt} s (from r = tau exp(-dt/tau)/dt); "
                  f"dt={step} changes the dynamics")
    ctx = ReadContext(prod, step, exact, convention=conv)

    nodes, edges, delays = _one_step_delays(nodes, edges, step)
    if exact:
        delays |= _stored_delays(gmeta, edges)

    inputs = [n for n, v in nodes.items() if isinstance(v, nir.Input)]
    if not inputs:
        raise GraphError(f"the graph has no Input node ({len(nodes)} nodes: {sorted(nodes)[:10]}); a NIR "
                         "graph needs one Input node (with its shape) feeding the network")
    if len(inputs) != 1:
        raise UnsupportedError(f"the graph must have exactly one Input node, has {len(inputs)} ({inputs})")
    inp = inputs[0]
    succ: dict[str, list[str]] = {n: [] for n in nodes}
    for s, d in edges:
        if s not in nodes or d not in nodes:
            bad = s if s not in nodes else d
            raise GraphError(f"edge ({s} -> {d}) names a node that does not exist", node=bad)
        succ[s].append(d)

    shape = _input_shape(inp, nodes[inp], [nodes[d] for d in succ[inp]], input_shape,
                         conv.input_layout if conv is not None else "features")
    in_node = nodes[inp]
    ir_nodes: dict[str, Node] = {
        inp: reader("Input").convert(NodeRead(inp, in_node, {}, dict(in_node.metadata or {}), {}, exact, shape, ctx))
    }
    in_shapes: dict[str, Shape] = {}
    in_from: dict[str, str] = {}  # the predecessor a node's input shape was taken from
    out_shapes: dict[str, Shape] = {inp: shape}
    queue = deque([inp])
    while queue:  # breadth first: a node's first-reached predecessor is a feed-forward one
        n = queue.popleft()
        if n != inp:
            ir = _convert(n, nodes[n], in_shapes.get(n), ctx)
            ir_nodes[n] = ir
            try:
                out_shapes[n] = ir.output_shape(n, in_shapes.get(n))
            except GraphError as e:
                preds = sorted({s for s, d in edges if d == n})
                if len(preds) > 1 and (input_shape is None or n not in succ[inp]):
                    # several inputs summed (a skip): say which one has the shape that does not fit
                    raise GraphError(
                        f"{str(e).split(';')[0].removeprefix(f'node {n!r}: ')} from '{in_from[n]}'; it sums the "
                        "outputs of "
                        f"{', '.join(repr(p) for p in preds)}, and every input summed into a layer must have "
                        "the layer's shape: project a skip with a 1x1 Conv2d (with a stride for a smaller map) "
                        "or an Affine", node=n) from e
                if input_shape is None or n not in succ[inp]:
                    raise
                raise UserInputError(f"input_shape {tuple(input_shape)} (CLI --input-shape) does not fit "
                                     f"node '{n}', which the Input feeds: {str(e).split(';')[0]}. Pass one timestep's shape "
                                     "without batch and time") from e
        for m in succ[n]:
            if m not in in_shapes and m != inp:
                in_shapes[m] = out_shapes[n]
                in_from[m] = n
                queue.append(m)
    for n, node in nodes.items():  # unreachable nodes: converted for their errors, then rejected
        if n not in ir_nodes:
            ir_nodes[n] = _convert(n, node, None, ctx)

    if exact:
        order = gmeta.get("lnm_node_order")
        try:
            names = json.loads(str(order)) if order is not None else []
        except json.JSONDecodeError:
            names = []
        if sorted(names) == sorted(ir_nodes):
            ir_nodes = {k: ir_nodes[k] for k in names}
        try:
            graph_meta = json.loads(str(gmeta.get("lnm_graph_metadata", "{}")))
        except json.JSONDecodeError:
            graph_meta = {}
        if not isinstance(graph_meta, dict):
            graph_meta = {}
    else:
        graph_meta = {"imported_from": prod, "dt": step, "initial_state": "zeros"}
        if _source is not None:
            graph_meta["source"] = _source
        if gmeta:
            graph_meta["nir_metadata"] = _plain(gmeta)

    # How this graph was read: what the caller asked for and what the reader resolved. Calibration
    # records it in the artifact's provenance so that verify reloads the float model the same way.
    graph_meta[READ_OPTIONS_KEY] = {
        "requested": {"producer": producer, "dt": None if dt is None else float(dt),
                      "input_shape": None if input_shape is None else [int(s) for s in input_shape]},
        "resolved": {"producer": prod, "dt": float(step), "input_shape": [int(s) for s in shape]},
    }
    if any(v is not None for v in stated.values()):
        graph_meta[READ_OPTIONS_KEY]["requested"].update(stated)
    if readouts:
        graph_meta[READ_OPTIONS_KEY]["requested"]["readout_nodes"] = list(readouts)
        _as_readouts(ir_nodes, readouts)
    if conv is not None and conv.v_floor is not None:  # the stated floor, on the neurons that still spike
        for n, node in ir_nodes.items():
            if type(node) is Neuron and node.v_th is not None and node.v_floor is not None:
                _check_floor(n, conv.v_floor, node.v_floor, node.v_th)
    if conv is not None:
        graph_meta[READ_OPTIONS_KEY]["convention"] = conv.describe()
    graph_meta[READ_OPTIONS_KEY]["producer_from"] = prod_from
    _warn_losses(prod, ir_nodes, ctx)
    # Delayed edges: NIR Delay nodes of one step and, in lnm-deploy's files, the recorded ones;
    # every other cycle gets its delay by the order-independent rule of ``ir.infer_delays``.
    explicit = frozenset(delays)
    rest = [e for e in edges if e not in explicit]
    delays_all = explicit | infer_delays(ir_nodes, rest, inp)
    graph = Graph(nodes=ir_nodes, edges=list(edges), metadata=graph_meta, delays=delays_all)
    sched = graph.schedule()
    _check_readout_place(graph, sched, readouts)
    return graph


def _check_readout_place(graph: Graph, sched: Schedule, readouts: tuple[str, ...]) -> None:
    """``UserInputError`` for a readout node that is not the network's readout: the one neuron layer
    the Output reads, feeding nothing else (the only place a non-spiking layer runs in fixed point,
    ``calibrate.passes.fold``; checked here so that every command reading the graph, ``inspect`` as
    well as ``calibrate``, refuses the same options the same way)."""
    out = sched.output_node
    src = sched.inputs[out]
    last = src[0][0] if len(src) == 1 else None
    for name in readouts:
        feeds = sorted({d for s, d in graph.edges if s == name and d != out})
        if name == last and not feeds:
            continue
        why = (f"feeds {', '.join(repr(d) for d in feeds)}" if name == last
               else f"the Output reads {last!r}" if last is not None
               else f"the Output reads {len(src)} nodes, not one neuron layer")
        fix = (f"name the layer the Output reads (--readout-node {last}) or read out spikes here"
               if name != last and last is not None and type(graph.nodes[last]) is Neuron
               else "drop this --readout-node (read out spikes here)")
        raise UserInputError(f"readout node '{name}' (readout_nodes, CLI --readout-node) is not the network's readout "
                             f"({why}): a neuron read as a non-spiking readout must be the layer the Output reads, "
                             f"feeding nothing else; {fix}", node=name)


def _warn_losses(prod: str, ir_nodes: dict[str, Node], ctx: ReadContext) -> None:
    foreign = [n for n, v in ir_nodes.items() if v.metadata.get("nir_type") in _NEURON_FIELDS]
    spiking = [n for n in foreign if ir_nodes[n].emits_spikes]
    if prod == "snntorch" and spiking:
        _warn(
            f"snnTorch's export_to_nir writes every neuron as reset-to-zero without reset delay; a "
            "source layer with reset_mechanism='subtract' (snnTorch's default) or reset_delay=True "
            f"(the default) behaves differently after import. Check neurons {spiking}"
        )
    pools = [n for n, v in ir_nodes.items() if v.metadata.get("nir_type") == "AvgPool2d"]
    if prod == "snntorch" and pools:
        _warn(f"snnTorch's export_to_nir writes every AvgPool2d with padding 0; a source pool with padding "
              f"behaves differently after import (where its output size is the same, nothing else shows it). "
              f"Check pools {pools}")
    if prod == "norse" and foreign:
        leaky = [n for n in foreign if ir_nodes[n].metadata.get("nir_type") not in ("IF", "I")]
        _warn(
            (f"Norse 1.1.0's to_nir writes tau = dt/tau_inv (a known bug); inverted with dt = {ctx.dt} s "
             f"(pass the dt given to to_nir if it was not {DEFAULT_DT['norse']}) for neurons {leaky}. "
             if leaky else "")
            + "Norse's v_reset is not exported (0 is used) and Norse starts v at v_leak, lnm-deploy "
            f"at 0; IF/I integrate r per step (Norse's IAF). Neurons: {foreign}"
        )
    conv = ctx.convention
    if conv is not None and prod in ("sinabs", "rockpool") and spiking:
        how = ("the framework's defaults" if conv == CONVENTIONS[prod]
               else "as stated with reset=/threshold=/spikes=/v_floor= (CLI --reset/--threshold/--spikes/--v-floor)")
        cap = conv.max_spikes
        count = ("one spike" if cap == 1 else "floor(v / v_th) spikes (unbounded)" if cap is None
                 else f"floor(v / v_th) spikes (at most {cap})")
        floor = ("no membrane floor" if conv.v_floor is None
                 else f"the membrane floor {conv.v_floor}")
        _warn(f"{conv.framework}'s exporter does not write {conv.drops}; read with {conv.reset} reset, "
              f"{count} per step where v {conv.threshold} v_th and {floor} ({how}). Neurons: {spiking}")
    if conv is not None and conv.membrane_floor and conv.v_floor is None and spiking and prod != "generic":
        _warn(f"neurons {spiking}: {conv.framework} can clip the membrane from below (Sinabs min_v_mem, off by "
              "default; Sinabs' own from_nir reads IF with min_v_mem = -v_th) and no file says so: none is "
              "applied; pass v_floor= (CLI --v-floor) if the source network has one")
    if ctx.unstable:
        _warn(
            f"neurons {sorted(set(ctx.unstable))}: dt / tau is outside [0, 1] with dt = {ctx.dt} s, so "
            "forward Euler is unstable; dt is probably wrong"
            + (" (a Norse 1.1.0 graph? pass producer='norse')" if prod == "generic" else "")
        )
