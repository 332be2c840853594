"""Export an :class:`LNMSequential` to lnm-deploy's IR (a flat, discrete-time graph).

Node names are the model's layer names (see :class:`LNMSequential`), plus ``input``, ``output`` and,
for each RecurrentLNM ``name``, an Affine ``name_rec`` on the back edge ``name -> name_rec -> name``,
and for each MaxPool2d ``name`` a SumPool2d ``name_sum`` into a memoryless IF layer ``name`` (max of
binary spikes = their OR; docs/patterns.md). A BatchNorm1d/2d is folded into the Conv2d or Linear
directly before it (eval-mode running statistics) and has no node of its own.
Every value is copied as float64 exactly (``detach().double()``), taken from what the forward pass
uses (e.g. the clamped ``alpha``), so a float64 model and the numpy executor agree spike for spike.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lnm_deploy._version import __version__
from lnm_deploy.errors import (
    GraphError,
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
    SumPool2d,
)
from lnm_deploy.model.layers import LNM, LNMSequential, RecurrentLNM
from lnm_deploy.model.layers import SumPool2d as TorchSumPool2d


def _np(t: Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy().copy()


def _opt(t: Tensor | None) -> np.ndarray | None:
    return None if t is None else _np(t)


def _p2(v: Any) -> tuple[int, int]:
    a = np.asarray(v).reshape(-1)
    return (int(a[0]), int(a[-1]))


def _full(t: Tensor, lead: tuple[int, ...], shape: tuple[int, ...]) -> np.ndarray:
    a = _np(t)
    missing = len(lead) + len(shape) - a.ndim  # per-layer values: (d+1,) -> (d+1, 1, ..., 1)
    a = a.reshape(*a.shape[: len(lead)], *([1] * missing), *a.shape[len(lead) :])
    return np.broadcast_to(a, (*lead, *shape)).copy()


def _conv_padding(name: str, layer: nn.Conv2d) -> tuple[int, int]:
    if layer.padding_mode != "zeros":
        raise UnsupportedError(f"Conv2d padding_mode {layer.padding_mode!r}; only 'zeros'", node=name)
    pad = layer.padding
    if isinstance(pad, str):
        if pad == "valid":
            return (0, 0)
        # 'same' (stride 1): total padding d*(k-1) per dim, symmetric only when it is even.
        totals = [layer.dilation[i] * (layer.kernel_size[i] - 1) for i in range(2)]
        if any(tp % 2 for tp in totals):
            raise UnsupportedError(f"Conv2d padding='same' with an odd total padding {totals} (kernel_size "
                                   f"{tuple(layer.kernel_size)}, dilation {tuple(layer.dilation)}) pads one side more than the "
                                   "other, which the IR's symmetric padding cannot express: use an odd kernel size, or "
                                   "pad explicitly (padding=k // 2) and size the layers after it", node=name)
        return (totals[0] // 2, totals[1] // 2)
    return (int(pad[0]), int(pad[1]))


def _flatten_dim(name: str, d: int) -> int:
    # nn.Flatten dims count the batch dim; IR dims do not. Negative dims mean the same in both.
    if d == 0:
        raise UnsupportedError("nn.Flatten over the batch dimension (dim 0)", node=name)
    return d - 1 if d > 0 else d


def neuron_node(layer: LNM, dt: float, metadata: dict[str, Any] | None = None) -> Neuron:
    """The IR Neuron of one LNM layer (full-shape float64 arrays, in_gain = syn_gain = 1)."""
    shape = layer.shape
    alpha = layer.alpha_value()
    meta: dict[str, Any] = {
        "source": type(layer).__name__,
        "granularity": layer.granularity,
        "threshold_granularity": layer.threshold_granularity,
        "surrogate": layer.surrogate,
        "torch_dtype": str(layer.theta_raw.dtype).removeprefix("torch."),
    }
    meta.update(metadata or {})
    return Neuron(
        shape=shape,
        poly=_full(layer.poly_value(), (layer.degree + 1,), shape),
        v_th=_full(layer.v_th, (), shape),
        v_reset=_full(layer.v_reset, (), shape),
        reset=layer.reset,
        in_gain=np.ones(shape),
        syn_decay=None if alpha is None else _full(alpha, (), shape),
        syn_gain=np.ones(shape) if alpha is not None else None,
        dt=dt,
        metadata=meta,
    )


LayerNodes = list[tuple[str, Node]]
#: torch layer class -> its converter ``(name, layer, dt) -> [(node name, IR node), ...]``; a layer
#: is converted by the entry of the nearest class in its MRO (so RecurrentLNM before LNM).
LAYER_CONVERTERS: dict[type[nn.Module], Callable[[str, Any, float], LayerNodes]] = {}


def converts(cls: type[nn.Module]) -> Callable[[Callable[[str, Any, float], LayerNodes]],
                                               Callable[[str, Any, float], LayerNodes]]:
    """Register the decorated function as the IR converter of torch layers of class ``cls``."""
    def deco(fn: Callable[[str, Any, float], LayerNodes]) -> Callable[[str, Any, float], LayerNodes]:
        LAYER_CONVERTERS[cls] = fn
        return fn
    return deco


@converts(RecurrentLNM)
def _recurrent_lnm(name: str, layer: RecurrentLNM, dt: float) -> LayerNodes:
    rec = Affine(weight=_np(layer.rec.weight), bias=_opt(layer.rec.bias), metadata={"source": "Linear"})
    return [(name, neuron_node(layer, dt, {"recurrent": f"{name}_rec"})), (f"{name}_rec", rec)]


@converts(LNM)
def _lnm(name: str, layer: LNM, dt: float) -> LayerNodes:
    return [(name, neuron_node(layer, dt))]


@converts(nn.Linear)
def _linear(name: str, layer: nn.Linear, dt: float) -> LayerNodes:
    return [(name, Affine(weight=_np(layer.weight), bias=_opt(layer.bias), metadata={"source": "Linear"}))]


@converts(nn.Conv2d)
def _conv2d(name: str, layer: nn.Conv2d, dt: float) -> LayerNodes:
    conv = Conv2d(
        weight=_np(layer.weight),
        bias=_opt(layer.bias),
        stride=_p2(layer.stride),
        padding=_conv_padding(name, layer),
        dilation=_p2(layer.dilation),
        groups=layer.groups,
        metadata={"source": "Conv2d"},
    )
    return [(name, conv)]


@converts(nn.Flatten)
def _flatten(name: str, layer: nn.Flatten, dt: float) -> LayerNodes:
    flat = Flatten(
        start_dim=_flatten_dim(name, layer.start_dim),
        end_dim=_flatten_dim(name, layer.end_dim),
        metadata={"source": "Flatten"},
    )
    return [(name, flat)]


@converts(TorchSumPool2d)
def _sumpool2d(name: str, layer: TorchSumPool2d, dt: float) -> LayerNodes:
    spool = SumPool2d(
        kernel_size=_p2(layer.kernel_size),
        stride=_p2(layer.stride),
        padding=_p2(layer.padding),
        metadata={"source": "SumPool2d"},
    )
    return [(name, spool)]


@converts(nn.AvgPool2d)
def _avgpool2d(name: str, layer: nn.AvgPool2d, dt: float) -> LayerNodes:
    pad = _p2(layer.padding)
    if layer.ceil_mode:
        raise UnsupportedError("AvgPool2d(ceil_mode=True) pools a partial window at the edge, which the IR's pooling "
                               "does not: use ceil_mode=False (and an input size the window divides)", node=name)
    if layer.divisor_override is not None:
        raise UnsupportedError("AvgPool2d(divisor_override=...); use SumPool2d for sums", node=name)
    if not layer.count_include_pad and any(pad):
        raise UnsupportedError("AvgPool2d(count_include_pad=False) with padding", node=name)
    apool = AvgPool2d(
        kernel_size=_p2(layer.kernel_size),
        stride=_p2(layer.kernel_size if layer.stride is None else layer.stride),
        padding=pad,
        metadata={"source": "AvgPool2d"},
    )
    return [(name, apool)]


@converts(nn.MaxPool2d)
def _maxpool2d(name: str, layer: nn.MaxPool2d, dt: float) -> LayerNodes:
    """On binary spikes a max over a window is their logical OR: a SumPool2d ``name_sum`` (the
    count of spikes in the window) into a memoryless IF layer ``name`` (``P(v) = 0``: v is this
    step's count; spikes where count > 0.5; reset to 0). Exact on spikes only: ``model_to_ir``
    refuses a MaxPool2d whose input is not a spiking layer or the input spikes."""
    if layer.ceil_mode or layer.return_indices:
        raise UnsupportedError("MaxPool2d(ceil_mode=True or return_indices=True): the IR pools whole windows and "
                               "returns no indices; use ceil_mode=False, return_indices=False", node=name)
    if _p2(layer.dilation) != (1, 1):
        raise UnsupportedError("MaxPool2d with dilation", node=name)
    # torch pads a max pool with -inf, the SumPool2d with 0: on spikes (>= 0) the OR is the same.
    pool = SumPool2d(kernel_size=_p2(layer.kernel_size), stride=_p2(layer.kernel_size if layer.stride is None else layer.stride),
                     padding=_p2(layer.padding), metadata={"source": "MaxPool2d", "max_pool_of": name})
    # shape is filled in by model_to_ir once the input shape is known (a placeholder here).
    return [(f"{name}_sum", pool), (name, _or_neuron((1,), dt))]


def _or_neuron(shape: tuple[int, ...], dt: float) -> Neuron:
    """A memoryless IF layer: v = this step's input, spike where v > 0.5, reset to 0."""
    return Neuron(shape=shape, poly=np.zeros(1), v_th=np.full(shape, 0.5), v_reset=np.zeros(shape), reset="value", dt=dt,
                  metadata={"source": "MaxPool2d", "max_pool": "logical OR of the window on binary spikes"})


#: torch layers folded into the node before them at export: ``(name, layer, previous IR node) ->
#: the previous node with the layer folded in``. ``UnsupportedError`` naming the layer when the
#: previous node cannot absorb it.
LayerFolder = Callable[[str, Any, str, "Node | None"], Node]
LAYER_FOLDERS: dict[type[nn.Module], LayerFolder] = {}


def _fold_batchnorm(name: str, bn: nn.modules.batchnorm._BatchNorm, prev_name: str, prev: Node | None) -> Node:
    """BatchNorm (eval mode: running statistics) folded into the Conv2d / Affine before it:
    ``w' = w g``, ``b' = (b - mean) g + beta`` with ``g = gamma / sqrt(var + eps)`` per output
    channel (float64). ``UnsupportedError`` for a BatchNorm not directly after a Conv2d or Linear,
    or without running statistics."""
    if not isinstance(prev, (Conv2d, Affine)):
        raise UnsupportedError(
            f"{type(bn).__name__} follows '{prev_name}' ({type(prev).__name__ if prev is not None else 'the input'}); "
            "a BatchNorm is folded into the Conv2d or Linear directly before it: put it right after one",
            node=name)
    if bn.running_mean is None or bn.running_var is None:
        raise UnsupportedError(f"{type(bn).__name__}(track_running_stats=False) has no running statistics to "
                               "fold; train with track_running_stats=True", node=name)
    if bn.training:
        warnings.warn(f"layer '{name}': {type(bn).__name__} is in training mode (it normalises with each "
                      "batch's statistics); the export folds its running statistics, as model.eval() "
                      "would use them: call model.eval() before exporting", LNMDeployWarning, stacklevel=4)
    # the layer each BatchNorm normalises as torch runs it (SyncBatchNorm: any)
    want = next((w for b, w in ((nn.BatchNorm1d, Affine), (nn.BatchNorm2d, Conv2d),
                                (nn.SyncBatchNorm, (Affine, Conv2d))) if isinstance(bn, b)), None)
    if want is None or not isinstance(prev, want):
        raise UnsupportedError(
            f"{type(bn).__name__} follows '{prev_name}' ({type(prev).__name__}); a BatchNorm1d folds into a Linear, "
            "a BatchNorm2d into a Conv2d (as torch runs them): use the BatchNorm of the layer's dimensions", node=name)
    mean, var = _np(bn.running_mean), _np(bn.running_var)
    gamma = _np(bn.weight) if bn.weight is not None else np.ones_like(mean)
    beta = _np(bn.bias) if bn.bias is not None else np.zeros_like(mean)
    var_eps = var + float(bn.eps)
    if bad := [int(c) for c in np.flatnonzero(~(var_eps > 0))]:  # NaN included
        raise NumericError(f"{type(bn).__name__}: running_var + eps is not positive for channel(s) {bad[:8]} "
                           f"(running_var {var[bad[0]]!r}); fix or recompute the running statistics "
                           "(lnm_deploy.model.init_batchnorm)", node=name)
    g = gamma / np.sqrt(var_eps)
    w = prev.weight
    if w.shape[0] != g.shape[0]:
        raise UnsupportedError(f"{type(bn).__name__} has {g.shape[0]} features, '{prev_name}' gives "
                               f"{w.shape[0]} channels", node=name)
    b = prev.bias if prev.bias is not None else np.zeros(w.shape[0])
    meta = dict(prev.metadata)
    meta["folded"] = [*meta.get("folded", []), name]
    w2 = w * g.reshape(-1, *([1] * (w.ndim - 1)))
    b2 = (b - mean) * g + beta
    if isinstance(prev, Conv2d):
        return Conv2d(weight=w2, bias=b2, stride=prev.stride, padding=prev.padding, dilation=prev.dilation,
                      groups=prev.groups, metadata=meta)
    return Affine(weight=w2, bias=b2, metadata=meta)


LAYER_FOLDERS[nn.modules.batchnorm._BatchNorm] = _fold_batchnorm


def layer_nodes(name: str, layer: nn.Module, dt: float) -> LayerNodes:
    """IR node(s) for one torch layer; a RecurrentLNM gives ``[(name, Neuron), (name_rec, Affine)]``.

    Raises:
        UnsupportedError: a layer class without a converter (the message lists the supported ones).
    """
    for cls in type(layer).__mro__:
        if cls in LAYER_CONVERTERS:
            return LAYER_CONVERTERS[cls](name, layer, dt)
    raise UnsupportedError(
        f"layer type {type(layer).__name__} has no IR equivalent (supported: "
        f"{', '.join(sorted(c.__name__ for c in LAYER_CONVERTERS))}; folded into the layer before: "
        f"{', '.join(sorted(c.__name__ for c in LAYER_FOLDERS))})",
        node=name,
    )


def _max_pool_nodes(name: str, produced: LayerNodes, nodes: dict[str, Node], prev: str) -> LayerNodes:
    """The MaxPool2d's nodes with the OR layer shaped: its input must be spikes (a spiking Neuron
    or the input), where max is exactly OR."""
    src = nodes[prev]
    if not (isinstance(src, Input) or (isinstance(src, Neuron) and src.emits_spikes)):
        raise UnsupportedError(
            f"MaxPool2d follows '{prev}' ({type(src).__name__}); it maps exactly only on binary spikes (max = "
            "logical OR): put it directly after an LNM layer (or first, on input spikes)", node=name)
    (sum_name, pool), (_, neuron) = produced
    assert isinstance(neuron, Neuron)
    in_shape = src.shape
    out_shape = pool.output_shape(sum_name, tuple(in_shape))
    return [(sum_name, pool), (name, _or_neuron(tuple(out_shape), neuron.dt))]


def model_to_ir(model: LNMSequential, input_shape: tuple[int, ...], dt: float = 1e-3) -> Graph:
    """Export ``model`` to a validated IR graph ``input -> layers -> output``.

    Args:
        model: the network (any dtype; values are read as the forward pass uses them).
        input_shape: per-step input shape without batch and time, e.g. ``(64,)``.
        dt: seconds per step, recorded on every Neuron (the dynamics are already per step).

    Raises:
        UnsupportedError: a layer the IR cannot express (the message names it).
        NumericError: NaN or infinite parameters (raised by the graph's validation).
        UserInputError: an ``input_shape`` the first layer does not accept (or not a shape).
    """
    if not isinstance(model, LNMSequential):
        raise UserInputError(f"model_to_ir expects an LNMSequential (or an LNMGraph), got {type(model).__name__}")
    if not (dt > 0 and np.isfinite(dt)):
        raise UserInputError(f"dt must be positive, got {dt}")
    from lnm_deploy.validate import shape_option

    nodes: dict[str, Node] = {"input": Input(shape=shape_option(input_shape, "input_shape (CLI --input-shape)"))}
    edges: list[tuple[str, str]] = []
    prev = "input"
    delays: set[tuple[str, str]] = set()
    # A graph container (lnm_deploy.model.builders.LNMGraph) names the layers each layer sums;
    # a folded layer (BatchNorm) is read through the node it was folded into.
    sources_of = getattr(model, "sources", None)
    folded_into: dict[str, str] = {}
    copied: set[str] = set()  # nodes a folded copy was made of
    # How many layers (and the output) read each layer: a layer is folded into a node that only it
    # reads; where others read that node too, the folded copy becomes a node of its own.
    layers = model.named_layers()
    names = [n for n, _ in layers]
    raw_sources = {n: sources_of(n) if sources_of is not None else [names[i - 1] if i else "input"]
                   for i, n in enumerate(names)}
    readers: dict[str, int] = {}
    for s in [*(s for srcs in raw_sources.values() for s in srcs), *names[-1:]]:  # the output reads the last
        readers[s] = readers.get(s, 0) + 1
    for name, layer in layers:
        raw = raw_sources[name]
        srcs = [folded_into.get(s, s) for s in raw]
        if len(srcs) == 1:
            prev = srcs[0]
        folder = next((LAYER_FOLDERS[c] for c in type(layer).__mro__ if c in LAYER_FOLDERS), None)
        if folder is not None:
            folded = folder(name, layer, prev, None if prev == "input" else nodes[prev])
            if readers.get(raw[0], 0) > 1:  # others read ``prev`` as it is: a folded copy of it
                if name in nodes:
                    raise UserInputError(f"IR node name {name!r} is used twice", node=name)
                nodes[name] = folded
                edges += [(s, name) for s, d in edges if d == prev]
                copied.add(prev)
                prev = name
            else:
                nodes[prev] = folded
                folded_into[name] = prev
            continue
        produced = layer_nodes(name, layer, float(dt))
        if isinstance(layer, nn.MaxPool2d):
            produced = _max_pool_nodes(name, produced, nodes, prev)
        for n, _ in produced:
            if n in nodes:
                raise UserInputError(f"IR node name {n!r} is used twice", node=n)
        nodes.update(produced)
        # Feed-forward edge(s) first: a node sums its inputs in edge order, x[t] + rec(s[t-1]).
        edges += [(s, produced[0][0]) for s in srcs]
        if isinstance(layer, nn.MaxPool2d):
            edges.append((produced[0][0], name))
        elif len(produced) == 2:
            rec_name = produced[1][0]
            edges += [(name, rec_name), (rec_name, name)]
            delays.add((rec_name, name))  # the recurrent weights deliver the previous step's spikes
        prev = name
    nodes["output"] = Output()
    edges.append((prev, "output"))
    for n in copied:  # every reader took a folded copy (two BatchNorms on one conv): nothing reads it
        if not any(s == n for s, _ in edges):
            del nodes[n]
            edges = [(s, d) for s, d in edges if d != n]
    graph = Graph(
        nodes=nodes,
        edges=edges,
        delays=frozenset(delays),
        metadata={
            "producer": "lnm-deploy",
            "producer_version": __version__,
            "source": f"lnm_deploy.model.{type(model).__name__}",
            "torch_version": torch.__version__,
            "torch_dtype": str(model.dtype).removeprefix("torch."),
            "dt": float(dt),
            "initial_state": "zeros",
        },
    )
    try:
        graph.schedule()  # validates: shapes chain, parameters finite (NumericError), back edges delayed
    except GraphError as e:
        if "inputs of different shapes are summed" in str(e) and sources_of is not None and e.node in names:
            raise GraphError(f"layer {e.node!r} sums {sources_of(e.node)}, {str(e).split(': ', 1)[1]}: a skip must "
                             "give the layer's shape; project it with a 1x1 Conv2d (stride 2 for a map half the "
                             "size) or a Linear", node=e.node) from e
        if "shape" not in str(e) and e.node not in {d for src, d in graph.edges if src == "input"}:
            raise
        # The layers chain by construction: a shape that does not fit (a layer reading the input
        # that refuses it included) is the caller's input_shape.
        raise UserInputError(f"input_shape {graph.input_shape} (CLI --input-shape) does not fit the "
                             f"model: {str(e).split(';')[0]}; pass one timestep's shape without batch and time, e.g. "
                             "64 for a Dense first layer or 2,34,34 for a Conv") from e
    return graph
