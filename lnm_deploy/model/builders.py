"""Deep convolutional LNM networks as the LNM paper trains them: a graph-style container for skips
(``LNMGraph``) and builders for a VGG-style (``vgg``) and a ResNet-style (``resnet``) network.

``LNMGraph`` is an ``LNMSequential`` whose layers may read other layers than the one before them:
``inputs[name]`` lists the layers (or ``"input"``) whose outputs are **summed** into layer
``name``. Only an ``LNM`` layer may sum several inputs (the IR's neuron sums its input edges, the
integer neuron its synapses): a residual block ends in an LNM reading its last convolution (after
BatchNorm) and the skip: the block's input spikes themselves (identity skip) or a 1x1 convolution
of them (projected skip). ``model_to_ir`` writes each source as an edge into the layer (the sum);
``save_model`` / ``load_model`` keep ``inputs``. docs/patterns.md ("Residual connections") shows
what each pattern becomes downstream.

The builders put BatchNorm after every convolution and linear layer (folded into it at export) and
``MaxPool2d`` after LNM layers (exported as a SumPool2d into a memoryless IF layer: max of spikes =
their OR). ``init_batchnorm`` sets the BatchNorm statistics from data (one cumulative pass, no
training) so that an untrained network's layers spike.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lnm_deploy.errors import UserInputError
from lnm_deploy.ir.nodes import is_integer
from lnm_deploy.model.layers import LNM, LNMSequential


class LNMGraph(LNMSequential):
    """Named layers run in the given order; layer ``name`` reads the sum of the outputs of
    ``inputs[name]`` (layer names or ``"input"``, each earlier in the order), or of the layer
    before it when ``name`` is not in ``inputs``.

    Args:
        layers: ``{name: nn.Module}`` in execution order (names as ``LNMSequential``'s).
        inputs: ``{name: [source, ...]}``; several sources only into an ``LNM`` layer (their
            outputs, each ``(B, T, *shape)`` of the layer's shape, are added).

    Raises:
        UserInputError: an unknown or later source, several sources into a layer that is not an
            LNM, or no source.
    """

    def __init__(self, layers: Mapping[str, nn.Module], inputs: Mapping[str, Sequence[str]] | None = None) -> None:
        super().__init__(OrderedDict(layers))
        names = list(self.layers.keys())
        given = {str(k): [str(s) for s in v] for k, v in (inputs or {}).items()}
        unknown = sorted(set(given) - set(names))
        if unknown:
            raise UserInputError(f"inputs names layer(s) {unknown} that the graph does not have")
        self.inputs: dict[str, list[str]] = {}
        for i, name in enumerate(names):
            srcs = given.get(name, [names[i - 1] if i else "input"])
            earlier = {"input", *names[:i]}
            if not srcs:
                raise UserInputError(f"layer {name!r} reads nothing (inputs[{name!r}] is empty)")
            if bad := [s for s in srcs if s not in earlier]:
                raise UserInputError(f"layer {name!r} reads {bad}: sources must be 'input' or layers before it "
                                     f"({names[:i]})")
            if len(srcs) != len(set(srcs)):
                raise UserInputError(f"layer {name!r} reads a source twice: {srcs}")
            if len(srcs) > 1 and not isinstance(self.layers[name], LNM):
                raise UserInputError(f"layer {name!r} ({type(self.layers[name]).__name__}) sums {srcs}; only an LNM "
                                     "layer sums several inputs (end the residual block with an LNM)")
            self.inputs[name] = srcs

    def sources(self, name: str) -> list[str]:
        """The layers (or ``"input"``) whose outputs are summed into layer ``name``."""
        return list(self.inputs[name])

    def _input_of(self, name: str, previous: Tensor, outs: dict[str, Tensor]) -> Tensor:
        """The sum of the outputs of ``self.inputs[name]`` (``LNMSequential.forward`` runs the rest)."""
        srcs = self.inputs[name]
        h = outs[srcs[0]]
        for s in srcs[1:]:
            h = h + outs[s]
        return h


def _lnm(shape: tuple[int, ...], degree: int, threshold: float, dtype: torch.dtype | None) -> LNM:
    return LNM(shape, degree=degree, beta=0.9, threshold=threshold, granularity="channel" if len(shape) == 3 else "layer",
               dtype=dtype)


def _conv_bn(c_in: int, c_out: int, k: int, stride: int, dtype: torch.dtype | None) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, k, stride=stride, padding=k // 2, bias=False, dtype=dtype),
            nn.BatchNorm2d(c_out, dtype=dtype)]


def _checked(input_shape: Any, channels: Any, classes: Any,
             need_channels: bool) -> tuple[tuple[int, int, int], tuple[int, ...], int]:
    """``input_shape`` as positive ints (C, H, W), ``channels`` as a tuple of positive ints and
    ``classes`` as a positive int; ``UserInputError`` for another shape, anything that is not a
    positive integer (4.0 is 4), or no stage where one is needed."""

    def ints(v: Any) -> tuple[Any, ...]:
        try:
            return tuple(v) if not isinstance(v, (str, bytes)) else ()
        except TypeError:
            return ()

    def positive(v: Any) -> bool:
        return is_integer(v) and int(v) >= 1

    shape = ints(input_shape)
    if len(shape) != 3 or not all(map(positive, shape)):
        raise UserInputError(f"input_shape must be (C, H, W), three positive integers (e.g. (3, 32, 32)), got "
                             f"{input_shape!r}")
    chans = ints(channels)
    if (isinstance(channels, (str, bytes)) or not hasattr(channels, "__iter__") or not all(map(positive, chans))
            or not positive(classes)):
        raise UserInputError(f"channels must be a sequence of positive integers (e.g. (16, 32)) and classes a "
                             f"positive integer, got {channels!r} and {classes!r}")
    if need_channels and not chans:
        raise UserInputError("channels must name at least one stage (e.g. (16, 32))")
    c, h, w = (int(v) for v in shape)
    return (c, h, w), tuple(int(v) for v in chans), int(classes)


def _checked_threshold(threshold: Any) -> float:
    """``threshold`` as a float: a finite number above 0 (the LNM layers' initial ``v_th``: at or
    below the resting membrane 0 every neuron fires at every step; NaN never fires)."""
    try:
        v = float(threshold)
    except (TypeError, ValueError):
        v = float("nan")
    if isinstance(threshold, (bool, str, bytes)) or not math.isfinite(v) or v <= 0:
        raise UserInputError(f"threshold must be a finite number above 0 (the LNM layers' initial v_th, e.g. 1.0), "
                             f"got {threshold!r}")
    return v


def vgg(input_shape: tuple[int, int, int] = (1, 8, 8), channels: Sequence[int] = (8, 16), classes: int = 10, *,
        degree: int = 1, threshold: float = 1.0, dtype: torch.dtype | None = None) -> LNMSequential:
    """A VGG-style LNM network: per stage ``conv3x3 -> BatchNorm2d -> LNM -> MaxPool2d(2)``, then
    ``Flatten -> Linear -> BatchNorm1d -> LNM(classes)``. Input ``(C, H, W)`` with H and W divisible
    by ``2 ** len(channels)``. LNM layers: ``degree`` 1 (LIF-like, the stock LIF on loihi2) to 3,
    per-channel polynomials. Layer names are ``LNMSequential``'s auto names (conv1, bn1, lnm1,
    maxpool1, ...)."""
    (c, h, w), channels, classes = _checked(input_shape, channels, classes, need_channels=False)
    threshold = _checked_threshold(threshold)
    if h % 2 ** len(channels) or w % 2 ** len(channels):
        raise UserInputError(f"input {tuple(input_shape)}: H and W must divide by 2^{len(channels)} (one 2x2 max "
                             "pool per stage)")
    layers: list[nn.Module] = []
    for c_out in channels:
        layers += [*_conv_bn(c, c_out, 3, 1, dtype), _lnm((c_out, h, w), degree, threshold, dtype), nn.MaxPool2d(2)]
        c, h, w = c_out, h // 2, w // 2
    layers += [nn.Flatten(), nn.Linear(c * h * w, classes, bias=False, dtype=dtype),
               nn.BatchNorm1d(classes, dtype=dtype), _lnm((classes,), degree, threshold, dtype)]
    return LNMSequential(*layers)


def resnet(input_shape: tuple[int, int, int] = (1, 8, 8), channels: Sequence[int] = (8, 16), classes: int = 10, *,
           degree: int = 1, threshold: float = 1.0, dtype: torch.dtype | None = None) -> LNMGraph:
    """A ResNet-style LNM network (``LNMGraph``): a stem ``conv3x3 -> BN -> LNM`` of
    ``channels[0]``, then one basic block per entry of ``channels``: ``conv3x3 (stride s) -> BN ->
    LNM -> conv3x3 -> BN``, summed with the skip into the block's output LNM. The skip is the
    identity (the block's input spikes) where the block keeps channels and size (the first), else
    a projection ``conv1x1 (stride 2) -> BN`` (stride 2 and more channels). Head: ``Flatten ->
    Linear -> BN -> LNM(classes)``.

    Names: ``stem``, ``stem_bn``, ``stem_lnm``; block k: ``b{k}_conv1``, ``b{k}_bn1``, ``b{k}_lnm1``,
    ``b{k}_conv2``, ``b{k}_bn2``, (``b{k}_proj``, ``b{k}_proj_bn``), ``b{k}_out`` (the LNM that sums);
    ``flatten``, ``fc``, ``fc_bn``, ``out``."""
    (c, h, w), channels, classes = _checked(input_shape, channels, classes, need_channels=True)
    threshold = _checked_threshold(threshold)
    layers: dict[str, nn.Module] = {}
    inputs: dict[str, list[str]] = {}
    c0 = int(channels[0])
    layers["stem"], layers["stem_bn"] = _conv_bn(c, c0, 3, 1, dtype)
    layers["stem_lnm"] = _lnm((c0, h, w), degree, threshold, dtype)
    c, prev = c0, "stem_lnm"
    for k, c_out in enumerate(channels, start=1):
        stride = 1 if (c_out == c and k == 1) else 2
        if stride == 2 and (h % 2 or w % 2):
            raise UserInputError(f"block {k}: a stride-2 block needs an even map, got {h}x{w}")
        h2, w2 = h // stride, w // stride
        p = f"b{k}"
        layers[f"{p}_conv1"], layers[f"{p}_bn1"] = _conv_bn(c, c_out, 3, stride, dtype)
        inputs[f"{p}_conv1"] = [prev]
        layers[f"{p}_lnm1"] = _lnm((c_out, h2, w2), degree, threshold, dtype)
        layers[f"{p}_conv2"], layers[f"{p}_bn2"] = _conv_bn(c_out, c_out, 3, 1, dtype)
        if stride == 1 and c_out == c:
            skip = prev  # identity: the block's input spikes
        else:
            layers[f"{p}_proj"], layers[f"{p}_proj_bn"] = _conv_bn(c, c_out, 1, stride, dtype)
            inputs[f"{p}_proj"] = [prev]
            skip = f"{p}_proj_bn"
        layers[f"{p}_out"] = _lnm((c_out, h2, w2), degree, threshold, dtype)
        inputs[f"{p}_out"] = [f"{p}_bn2", skip]
        c, h, w, prev = c_out, h2, w2, f"{p}_out"
    layers["flatten"] = nn.Flatten()
    inputs["flatten"] = [prev]
    layers["fc"] = nn.Linear(c * h * w, classes, bias=False, dtype=dtype)
    layers["fc_bn"] = nn.BatchNorm1d(classes, dtype=dtype)
    layers["out"] = _lnm((classes,), degree, threshold, dtype)
    return LNMGraph(layers, inputs)


@torch.no_grad()
def init_batchnorm(model: LNMSequential, x: Tensor | Any) -> LNMSequential:
    """Set every BatchNorm's running statistics from ``x`` ``(B, T, *input_shape)``: one forward
    pass in training mode with cumulative averages (``momentum=None``, statistics reset first),
    then ``model.eval()``. No gradient step: a data-driven initialisation that puts each
    convolution's output at zero mean and unit variance, so an untrained network spikes (a
    stand-in for training in tests and examples). Returns ``model``.

    Raises:
        UserInputError: ``x`` is not finite numbers shaped (B, T, *input_shape) for the model's
            first Conv2d / Linear, or holds a single sample-timestep (B * T = 1: a BatchNorm in
            training mode needs more than one value per channel).
    """
    try:
        xt = torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserInputError(f"init_batchnorm: x must be an array of numbers (B, T, *input_shape) ({e})") from None
    if xt.is_complex():
        raise UserInputError(f"init_batchnorm: x must hold real numbers, got {xt.dtype}")
    first = next((m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))), None)
    if first is not None:
        conv = isinstance(first, nn.Conv2d)
        rank, layout, n_in, unit = ((5, "(B, T, C, H, W)", first.in_channels, "channels") if conv
                                    else (3, "(B, T, features)", first.in_features, "features"))
        if xt.ndim != rank or xt.shape[2] != n_in:
            raise UserInputError(f"init_batchnorm: x must be {layout} with {n_in} {unit} (the model's first "
                                 f"{type(first).__name__}), got shape {tuple(xt.shape)}")
    if xt.ndim < 3 or xt.shape[0] * xt.shape[1] < 2:
        raise UserInputError(f"init_batchnorm: x {tuple(xt.shape)} must be (B, T, *input_shape) with B * T >= 2 "
                             "(BatchNorm statistics need more than one value per channel)")
    if xt.is_floating_point() and not bool(torch.isfinite(xt).all()):
        raise UserInputError("init_batchnorm: x holds NaN or inf (the statistics would be NaN)")
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    try:
        model(xt)
    except (ValueError, RuntimeError) as e:  # a shape the model cannot take (H, W), a dtype torch refuses
        raise UserInputError(f"init_batchnorm: the model's forward pass refused x {tuple(xt.shape)} {xt.dtype}: "
                             f"{e}") from e
    finally:
        for m, mom in zip(bns, saved, strict=True):
            m.momentum = mom
        model.eval()
    return model


__all__ = ["LNMGraph", "init_batchnorm", "resnet", "vgg"]
