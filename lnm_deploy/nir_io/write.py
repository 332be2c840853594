"""Export an IR graph to NIR (``nir.NIRGraph`` in memory, or a ``.nir`` HDF5 file).

The NIR graph is flat and valid for any NIR reader: Affine (Linear when there is no bias), Conv2d,
Flatten, SumPool2d, AvgPool2d, Scale, Threshold, Input, Output map one to one; each Neuron becomes
the NIR neuron that best approximates it:

=========================  ===================  ==================
neuron                     spiking              non-spiking
=========================  ===================  ==================
``P(v) = v``, no synapse   ``IF``               ``I``
otherwise, no synapse      ``LIF``              ``LI``
with a synapse             ``CubaLIF``          ``CubaLI``
=========================  ===================  ==================

with the parameters of the least-squares linear fit of P (exact for degree <= 1, see
``conventions.linear_fit`` and ``conventions.FIT_DESCRIPTION``), discretised by forward Euler with
the node's ``dt``. The *exact* semantics ride along in node metadata (keys ``lnm_*``): the full
polynomial, every per-step array, dt, the reset mode, the timing convention and, where they are not
the defaults, the spike rules (``lnm_threshold`` ``">="``, ``lnm_max_spikes`` an integer or
``"unbounded"``, ``lnm_v_floor``; such files are ``lnm_format`` 2, others 1);
``lnm_deploy.nir_io.read`` restores the IR bit-exactly from them. Graph metadata carries
``producer = "lnm-deploy"``, ``producer_version``, ``dt`` (when all neurons share one), the exact
IR metadata (JSON) and the node order.

Metadata values are only strings, floats, ints, bools and non-empty float arrays: ``nir.write``
rejects ``None``, and ints/lists/bools come back as numpy scalars/arrays/``np.bool_``.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nir
import numpy as np

from lnm_deploy._version import __version__
from lnm_deploy.errors import GraphError, LNMDeployWarning
from lnm_deploy.fileio import atomic_output
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
from lnm_deploy.nir_io.conventions import (
    DISCRETISATION,
    FIT_DESCRIPTION,
    LNM_FORMAT,
    LNM_FORMAT_PLAIN,
    MIN_LEAK,
    THRESHOLD_TEST,
    TIMING,
    fit_range,
    leak_denominator,
    linear_fit,
)
from lnm_deploy.nir_io.registry import writer, writes

Shape = tuple[int, ...]


def _json_default(o: Any) -> Any:
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (Path, os.PathLike)):
        return os.fspath(o)
    return repr(o)


def metadata_json(meta: dict[str, Any]) -> str:
    """IR metadata (free-form provenance) as JSON; numpy values become lists/numbers, unknown
    objects their ``repr``."""
    return json.dumps(meta, default=_json_default, sort_keys=False)


def _meta_array(a: np.ndarray) -> np.ndarray | float:
    """An array for metadata: 0-d arrays become floats (HDF5 scalar datasets refuse gzip)."""
    a = np.asarray(a, dtype=np.float64)
    return float(a) if a.ndim == 0 else a.copy()


def _is_exact_integrator(node: Neuron) -> bool:
    """True when ``P(v) = v`` exactly, for every neuron of the population."""
    if node.degree < 1:
        return False
    want = np.zeros_like(node.poly)
    want[1] = 1.0
    return bool(np.array_equal(node.poly, want))


def neuron_to_nir(name: str, node: Neuron) -> nir.NIRNode:
    """The NIR neuron approximating ``node`` (see the module docstring), with exact metadata."""
    shape = node.shape
    dt = node.dt
    assert node.in_gain is not None and node.v_reset is not None
    lo, hi = fit_range(node.v_th, node.v_reset, shape)
    meta: dict[str, Any] = {
        "lnm_kind": "neuron",
        "lnm_poly": node.poly.copy(),
        "lnm_v_reset": _meta_array(node.v_reset),
        "lnm_reset": node.reset,
        "lnm_in_gain": _meta_array(node.in_gain),
        "lnm_dt": float(dt),
        "lnm_spiking": bool(node.spiking),
        "lnm_discretisation": DISCRETISATION,
        "lnm_threshold_test": THRESHOLD_TEST,
        "lnm_timing": TIMING,
        "lnm_fit": FIT_DESCRIPTION,
        "lnm_fit_range": np.stack([lo, hi]),
    }
    if node.v_th is not None:
        meta["lnm_v_th"] = _meta_array(node.v_th)
    if node.syn_decay is not None:
        assert node.syn_gain is not None
        meta["lnm_syn_decay"] = _meta_array(node.syn_decay)
        meta["lnm_syn_gain"] = _meta_array(node.syn_gain)
    if node.metadata:
        meta["lnm_metadata"] = metadata_json(node.metadata)
    # The spike rules, only where they differ from the defaults (">", one spike, no floor): such a
    # file is lnm_format 2 (see ``_uses_spike_rules``).
    if node.threshold != ">":
        meta["lnm_threshold"] = str(node.threshold)
    if node.max_spikes != 1:
        meta["lnm_max_spikes"] = "unbounded" if node.max_spikes is None else int(node.max_spikes)
    if node.v_floor is not None:
        meta["lnm_v_floor"] = _meta_array(node.v_floor)

    v_th = node.v_th
    if node.syn_decay is None and _is_exact_integrator(node):
        r = node.in_gain / dt
        if v_th is None:
            return nir.I(r=r, metadata=meta)
        return nir.IF(r=r, v_threshold=v_th.copy(), v_reset=node.v_reset.copy(), metadata=meta)

    a, b = linear_fit(node.poly, lo, hi)
    den = leak_denominator(b)
    if np.any(b >= 1.0):
        warnings.warn(
            f"node '{name}': the linear fit of its polynomial does not leak (slope b up to "
            f"{float(np.max(b)):.6g} >= 1), so its NIR time constant is negative or huge "
            f"(tau = dt/(1-b), |1-b| >= {MIN_LEAK:g}); only lnm-deploy's metadata is exact",
            LNMDeployWarning,
            stacklevel=3,
        )
    tau = dt / den
    v_leak = a / den
    r = node.in_gain / den
    if node.syn_decay is None:
        if v_th is None:
            return nir.LI(tau=tau, r=r, v_leak=v_leak, metadata=meta)
        return nir.LIF(tau=tau, r=r, v_leak=v_leak, v_threshold=v_th.copy(), v_reset=node.v_reset.copy(),
                       metadata=meta)
    assert node.syn_gain is not None
    sden = leak_denominator(node.syn_decay)
    tau_syn = dt / sden
    w_in = node.syn_gain / sden
    if v_th is None:
        return nir.CubaLI(tau_syn=tau_syn, tau_mem=tau, r=r, v_leak=v_leak, w_in=w_in, metadata=meta)
    return nir.CubaLIF(tau_syn=tau_syn, tau_mem=tau, r=r, v_leak=v_leak, v_threshold=v_th.copy(),
                       v_reset=node.v_reset.copy(), w_in=w_in, metadata=meta)


def _node_to_nir(name: str, node: Node, in_shape: Shape | None, out_shape: Shape) -> nir.NIRNode:
    meta: dict[str, Any] = {"lnm_kind": node.kind}
    if node.metadata:
        meta["lnm_metadata"] = metadata_json(node.metadata)
    return writer(node.kind, node=name)(name, node, in_shape, out_shape, meta)


# ------------------------------------------------------------------------------------------------
# Writers, one per IR kind (the registry is ``lnm_deploy.nir_io.registry.WRITERS``): each gets the
# node's name, the node, its input and output shapes (no batch) and the metadata to write
# (``lnm_kind`` and the node's own metadata as JSON).


@writes(Neuron)
def _write_neuron(name: str, node: Neuron, in_shape: Shape | None, out_shape: Shape,
                  meta: dict[str, Any]) -> nir.NIRNode:
    return neuron_to_nir(name, node)  # its own exact metadata (lnm_*) instead of ``meta``


@writes(Input)
def _write_input(name: str, node: Input, in_shape: Shape | None, out_shape: Shape,
                 meta: dict[str, Any]) -> nir.NIRNode:
    return nir.Input(input_type=np.array(node.shape, dtype=np.int64), metadata=meta)


@writes(Output)
def _write_output(name: str, node: Output, in_shape: Shape | None, out_shape: Shape,
                  meta: dict[str, Any]) -> nir.NIRNode:
    return nir.Output(output_type=np.array(out_shape, dtype=np.int64), metadata=meta)


@writes(Affine)
def _write_affine(name: str, node: Affine, in_shape: Shape | None, out_shape: Shape,
                  meta: dict[str, Any]) -> nir.NIRNode:
    if node.bias is None:
        return nir.Linear(weight=node.weight.copy(), metadata=meta)
    return nir.Affine(weight=node.weight.copy(), bias=node.bias.copy(), metadata=meta)


@writes(Conv2d)
def _write_conv2d(name: str, node: Conv2d, in_shape: Shape | None, out_shape: Shape,
                  meta: dict[str, Any]) -> nir.NIRNode:
    assert in_shape is not None
    meta["lnm_has_bias"] = node.bias is not None
    bias = node.bias.copy() if node.bias is not None else np.zeros(node.weight.shape[0])
    conv = nir.Conv2d(
        input_shape=(int(in_shape[1]), int(in_shape[2])),
        weight=node.weight.copy(),
        stride=tuple(node.stride),
        padding=tuple(node.padding),
        dilation=tuple(node.dilation),
        groups=int(node.groups),
        bias=bias,
        metadata=meta,
    )
    # nir 1.0.8 derives Conv2d types from weight.shape[1] (ignoring groups) and from a square
    # kernel of side weight.shape[2]; set the true types, and say that NIR's own check fails.
    conv.input_type = {"input": np.array(in_shape, dtype=np.int64)}
    conv.output_type = {"output": np.array(out_shape, dtype=np.int64)}
    if node.groups != 1 or node.weight.shape[2] != node.weight.shape[3]:
        warnings.warn(
            f"node '{name}': nir 1.0.8 computes the shapes of grouped or non-square Conv2d "
            "wrongly, so nir.read(path) with its default type_check=True rejects this file; "
            "lnm-deploy and nir.read(path, type_check=False) read it correctly",
            LNMDeployWarning,
            stacklevel=4,
        )
    return conv


@writes(Flatten)
def _write_flatten(name: str, node: Flatten, in_shape: Shape | None, out_shape: Shape,
                   meta: dict[str, Any]) -> nir.NIRNode:
    return nir.Flatten(input_type={"input": np.array(in_shape, dtype=np.int64)},
                       start_dim=int(node.start_dim), end_dim=int(node.end_dim), metadata=meta)


def _pool_writer(cls: type[nir.SumPool2d] | type[nir.AvgPool2d]) -> Callable[..., nir.NIRNode]:
    def write(name: str, node: SumPool2d | AvgPool2d, in_shape: Shape | None, out_shape: Shape,
              meta: dict[str, Any]) -> nir.NIRNode:
        assert node.stride is not None
        pool = cls(kernel_size=np.array(node.kernel_size, dtype=np.int64),
                   stride=np.array(node.stride, dtype=np.int64),
                   padding=np.array(node.padding, dtype=np.int64), metadata=meta)
        # NIR leaves pooling types undefined until graph inference; set them so check_types works.
        pool.input_type = {"input": np.array(in_shape, dtype=np.int64)}
        pool.output_type = {"output": np.array(out_shape, dtype=np.int64)}
        return pool
    return write


writes(SumPool2d)(_pool_writer(nir.SumPool2d))
writes(AvgPool2d)(_pool_writer(nir.AvgPool2d))


@writes(Scale)
def _write_scale(name: str, node: Scale, in_shape: Shape | None, out_shape: Shape,
                 meta: dict[str, Any]) -> nir.NIRNode:
    assert in_shape is not None
    meta["lnm_scale"] = _meta_array(node.scale)
    return nir.Scale(scale=np.broadcast_to(node.scale, in_shape).copy(), metadata=meta)


@writes(Threshold)
def _write_threshold(name: str, node: Threshold, in_shape: Shape | None, out_shape: Shape,
                     meta: dict[str, Any]) -> nir.NIRNode:
    assert in_shape is not None
    meta["lnm_v_th"] = _meta_array(node.v_th)
    return nir.Threshold(threshold=np.broadcast_to(node.v_th, in_shape).copy(), metadata=meta)


def _uses_spike_rules(graph: Graph) -> bool:
    """True when a neuron has a spike rule a format-1 reader would ignore (``>=``, graded spikes, a
    membrane floor): the file is then written as ``LNM_FORMAT`` so that such a reader refuses it."""
    return any(isinstance(n, Neuron) and (n.threshold != ">" or n.max_spikes != 1 or n.v_floor is not None)
               for n in graph.nodes.values())


def to_nir(graph: Graph) -> nir.NIRGraph:
    """Convert a validated IR graph to a flat ``nir.NIRGraph`` (see the module docstring).

    Raises:
        GraphError, NumericError, UnsupportedError: from the graph's validation
            (``Graph.schedule()``: NaN parameters, bad shapes, ...), or for node names NIR's HDF5
            layout cannot hold (empty, containing '/') and duplicate edges (NIR forbids them).
    """
    sched = graph.schedule()
    for name in graph.nodes:
        if not name or "/" in name:
            raise GraphError("NIR node names must be non-empty and contain no '/'", node=name or "<empty>")
    seen: set[tuple[str, str]] = set()
    for e in graph.edges:
        if e in seen:
            raise GraphError(f"duplicate edge {e[0]} -> {e[1]}; NIR forbids duplicate edges "
                             "(merge them by doubling the weights)", node=e[1])
        seen.add(e)

    nodes: dict[str, nir.NIRNode] = {}
    for name, node in graph.nodes.items():
        fresh = [s for s, delayed in sched.inputs.get(name, ()) if not delayed]
        in_shape = sched.shapes[fresh[0]] if fresh else None
        nodes[name] = _node_to_nir(name, node, in_shape, sched.shapes[name])

    sched_delays = graph.delayed_edges()
    dts = sorted({n.time_step for n in graph.nodes.values() if n.time_step is not None})
    meta: dict[str, Any] = {
        "producer": "lnm-deploy",
        "producer_version": __version__,
        "lnm_format": LNM_FORMAT if _uses_spike_rules(graph) else LNM_FORMAT_PLAIN,
        "discretisation": DISCRETISATION,
        "threshold_test": THRESHOLD_TEST,
        "timing": TIMING,
        "lnm_node_order": json.dumps(list(graph.nodes)),
        # The delayed edges (recurrent connections): other NIR readers see a cycle.
        "lnm_delays": json.dumps(sorted([s, d] for s, d in sched_delays)),
        # How this graph was once read is not a property of the graph: not written.
        "lnm_graph_metadata": metadata_json({k: v for k, v in graph.metadata.items() if k != "read_options"}),
    }
    if len(dts) == 1:
        meta["dt"] = float(dts[0])
    elif isinstance(graph.metadata.get("dt"), (int, float)) and not dts:
        meta["dt"] = float(graph.metadata["dt"])
    g = nir.NIRGraph(nodes=nodes, edges=[(s, d) for s, d in graph.edges], metadata=meta, type_check=False)
    try:
        g.check_types()
    except (ValueError, NotImplementedError) as e:  # our mapping produced inconsistent NIR types
        raise GraphError(f"the exported NIR graph fails NIR's type check: {e}") from e
    return g


def _has_scalar_arrays(d: Any) -> bool:
    if isinstance(d, dict):
        return any(_has_scalar_arrays(v) for v in d.values())
    return isinstance(d, np.ndarray) and (d.ndim == 0 or d.size == 0)


def write_nir(graph: Graph, path: str | os.PathLike[str], *, extra_metadata: dict[str, Any] | None = None,
              force: bool = True) -> Path:
    """Write ``graph`` to ``path`` as a NIR HDF5 file, atomically; return the path.

    ``extra_metadata`` is added to the NIR graph's metadata as is (NIR-serialisable values only:
    no None); calibrated artifacts carry their integer network there. ``force=False`` refuses to
    overwrite an existing file.

    The graph is converted first (all validation errors surface before any file is touched), then
    written to a temporary file beside ``path`` that replaces ``path`` only on success: on any error
    neither a partial ``path`` nor a temporary file is left behind (an existing ``path`` is kept).

    Raises:
        UserInputError: the directory does not exist or is not writable (checked before writing).
        OutputWriteError: writing failed (disk full): names ``path`` and the system's reason
            (``lnm_deploy.fileio.atomic_output``).
        GraphError, NumericError, UnsupportedError: see ``to_nir``.
    """
    g = to_nir(graph)
    if extra_metadata:
        g.metadata.update(extra_metadata)
    compression = None if _has_scalar_arrays(g.to_dict()) else "gzip"
    target = Path(path)
    with atomic_output(target, force=force) as tmp:
        # HDF5 builds the file in memory and Python writes it: HDF5 writing to a full disk itself
        # fails in ways that cannot be handled (RuntimeError text, errors while objects are
        # collected, a crash when it closes the file), a plain write raises ENOSPC (atomic_output).
        image = io.BytesIO()
        try:
            nir.write(image, g, compression=compression)
        except (TypeError, ValueError) as e:  # h5py refusing a value: a bug in the mapping above
            raise GraphError(f"cannot serialise the graph to {target}: {e}") from e
        with open(tmp, "wb") as f:
            f.write(image.getbuffer())
    return target
