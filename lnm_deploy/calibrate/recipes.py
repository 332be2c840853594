"""Calibration recipes: TOML files that say how to calibrate (method per tensor class, parameters,
granularity, sample count) and how the later agreement search runs.

Shipped recipes live in the top-level ``calibration/`` directory of the source tree (installed as
``lnm_deploy/_data/calibration``); ``load_recipe`` takes a shipped name or a path. Layout::

    [recipe]    description, max_samples, batch_size, seed, shuffle, bins_per_side,
                trace_percentile, margin
    [weights]   method, granularity, <the method's parameters>
    [search]    enabled, objective, scale_factors, per_layer, rounds, max_samples

There are no ``[currents]`` / ``[membrane]`` sections and no ``search.tensors``: the state scales
(membrane, currents) come from the exact calibrated abs-max times ``margin``, because the
overflow proofs need every calibrated value to fit, and the search scales weight clips only. A
recipe file that still has them is refused with the key named (``REMOVED``).

Every key is optional (defaults below). The allowed keys are the fields of the dataclasses here
and, in a tensor section, the keyword parameters of the chosen calibrator (read from
``lnm_deploy.calibrate.calibrators.CALIBRATORS``). Unknown sections or keys, wrong types and
out-of-range values raise ``UserInputError`` naming the file and the key.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lnm_deploy.calibrate.calibrators import (
    CALIBRATORS,
    ChannelClips,
    ClipRange,
    calibrate_per_channel,
    get_calibrator,
)
from lnm_deploy.calibrate.compare import OBJECTIVES
from lnm_deploy.calibrate.stats import (
    DEFAULT_BINS_PER_SIDE,
    DEFAULT_TRACE_PERCENTILE,
    TENSOR_CLASSES,
    CalibrationStats,
    TensorStats,
    collect_stats,
)
from lnm_deploy.configfile import (
    convert,
    fields_of,
    load_named,
    read_toml,
    shipped_dir,
    shipped_files,
)
from lnm_deploy.errors import UserInputError

GRANULARITIES: tuple[str, ...] = ("per-tensor", "per-channel")


@dataclass(frozen=True)
class TensorRecipe:
    """How the weights are calibrated (``[weights]``).

    ``granularity`` "per-channel" means one range per output channel where the target allows it
    (the quantizer falls back to per-tensor and says so otherwise).
    """

    method: str = "minmax"
    granularity: str = "per-tensor"
    params: dict[str, Any] = field(default_factory=dict)  # the method's parameters, with defaults


@dataclass(frozen=True)
class SearchRecipe:
    """The search that refines the calibrated scales by running the quantized network (done by the
    quantizer; declared here). Each candidate multiplies a layer's calibrated clip by one of
    ``scale_factors`` (on a power-of-two target 0.5 / 1 / 2 are neighbouring exponents) and is
    scored by ``objective`` against the float model on ``max_samples`` calibration samples
    (0 = all). ``per_layer``: coordinate search over layers in execution order, ``rounds`` passes;
    otherwise one factor for the whole network."""

    enabled: bool = False
    objective: str = "spike_agreement"
    scale_factors: tuple[float, ...] = (0.5, 0.70710678, 1.0, 1.41421356, 2.0)
    per_layer: bool = True
    rounds: int = 1
    max_samples: int = 128


@dataclass(frozen=True)
class RecipeInfo:
    """``[recipe]``: the run's settings. ``max_samples`` 0 = every sample of the calibration file.
    ``shuffle``: take samples in a random order from ``seed`` (affects range traces and which
    subset is used, never the histograms of the full set). ``margin``: overflow proofs must hold
    over the calibrated abs-max times this factor."""

    description: str = ""
    max_samples: int = 0
    batch_size: int = 32
    seed: int = 0
    shuffle: bool = True
    bins_per_side: int = DEFAULT_BINS_PER_SIDE
    trace_percentile: float = DEFAULT_TRACE_PERCENTILE
    margin: float = 1.25


@dataclass(frozen=True)
class Recipe:
    """A loaded, validated recipe."""

    name: str
    info: RecipeInfo
    weights: TensorRecipe
    search: SearchRecipe
    path: Path | None = None

    def for_class(self, tensor_class: str) -> TensorRecipe:
        """How tensors of ``tensor_class`` are clipped: the recipe's ``[weights]`` for weights;
        min-max for currents and membrane (what the quantizer's state scales use)."""
        if tensor_class not in TENSOR_CLASSES:
            raise UserInputError(f"unknown tensor class {tensor_class!r}; valid: {list(TENSOR_CLASSES)}")
        return self.weights if tensor_class == "weights" else TensorRecipe("minmax")

    def calibrate(self, tensor_class: str, stats: TensorStats, bits: int) -> ClipRange:
        """The per-tensor clip for one tensor of ``tensor_class`` on a ``bits``-bit grid."""
        tr = self.for_class(tensor_class)
        return get_calibrator(tr.method)(stats.hist, bits, **tr.params)

    def calibrate_weight(self, weight: np.ndarray, bits: int) -> ClipRange | ChannelClips:
        """Clip(s) for a weight tensor, per output channel (axis 0) if the recipe says so."""
        tr = self.weights
        if tr.granularity == "per-channel":
            return calibrate_per_channel(weight, bits, tr.method, axis=0,
                                         bins_per_side=self.info.bins_per_side, **tr.params)
        return self.calibrate("weights", TensorStats.from_array(weight, channel_axis=None,
                                                                bins_per_side=self.info.bins_per_side), bits)

    def to_dict(self) -> dict[str, Any]:
        """The recipe as TOML-shaped data (for the calibration record); ``path`` as a string."""

        def tensor(t: TensorRecipe) -> dict[str, Any]:
            return {"method": t.method, "granularity": t.granularity, **t.params}

        return {
            "name": self.name,
            "path": None if self.path is None else str(self.path),
            "recipe": dataclasses.asdict(self.info),
            "weights": tensor(self.weights),
            "search": {k: list(v) if isinstance(v, tuple) else v
                       for k, v in dataclasses.asdict(self.search).items()},
        }


# ----------------------------------------------------------------------------------------------
# Parsing


def _table(file: str, section: str, data: dict[str, Any], cls: type) -> Any:
    """Build dataclass ``cls`` from TOML table ``data`` (missing keys take the defaults)."""
    return cls(**fields_of(file, section, data, cls, require_all=False))


def _tensor(file: str, section: str, data: dict[str, Any]) -> TensorRecipe:
    method = data.get("method", TensorRecipe.method)
    if not isinstance(method, str):
        raise UserInputError(f"{file}: key '{section}.method' must be a string, got {method!r}")
    if method not in CALIBRATORS:
        raise UserInputError(f"{file}: key '{section}.method' has unknown method {method!r}; "
                             f"valid methods: {sorted(CALIBRATORS)}")
    info = CALIBRATORS[method]
    gran = data.get("granularity", TensorRecipe.granularity)
    if gran not in GRANULARITIES:
        raise UserInputError(f"{file}: key '{section}.granularity' is {gran!r}; allowed: {list(GRANULARITIES)}")
    raw = {k: v for k, v in data.items() if k not in ("method", "granularity")}
    unknown = sorted(set(raw) - set(info.params))
    if unknown:
        allowed = ["method", "granularity", *info.params]
        raise UserInputError(f"{file}: unknown key(s) {[f'{section}.{k}' for k in unknown]} for method "
                             f"'{method}'; [{section}] allows {allowed}")
    params: dict[str, Any] = {}
    for name, spec in info.params.items():
        where = f"{file}: key '{section}.{name}'"
        v = convert(where, spec.type, raw[name]) if name in raw else spec.default
        if spec.check is not None and not spec.check(v):
            raise UserInputError(f"{where} = {v!r} must be {spec.rule}")
        params[name] = v
    return TensorRecipe(method, gran, params)


def _validate(file: str, info: RecipeInfo, search: SearchRecipe) -> None:
    def bad(key: str, value: Any, rule: str) -> UserInputError:
        return UserInputError(f"{file}: key '{key}' = {value!r} must be {rule}")

    if info.max_samples < 0:
        raise bad("recipe.max_samples", info.max_samples, ">= 0 (0 = all samples)")
    if info.batch_size < 1:
        raise bad("recipe.batch_size", info.batch_size, ">= 1")
    if info.seed < 0:
        raise bad("recipe.seed", info.seed, ">= 0")
    b = info.bins_per_side
    if not 64 <= b <= 2**20 or b & (b - 1):
        raise bad("recipe.bins_per_side", b, "a power of two in [64, 1048576]")
    if not 0.0 < info.trace_percentile <= 100.0:
        raise bad("recipe.trace_percentile", info.trace_percentile, "in (0, 100]")
    if not 1.0 <= info.margin <= 1e6:
        raise bad("recipe.margin", info.margin, ">= 1 (a safety factor on the calibrated range)")
    if search.objective not in OBJECTIVES:
        raise UserInputError(f"{file}: key 'search.objective' is {search.objective!r}; "
                             f"allowed: {sorted(OBJECTIVES)}")
    if not all(0.0 < f <= 1e6 for f in search.scale_factors):
        raise bad("search.scale_factors", list(search.scale_factors), "positive numbers")
    if search.rounds < 1:
        raise bad("search.rounds", search.rounds, ">= 1")
    if search.max_samples < 0:
        raise bad("search.max_samples", search.max_samples, ">= 0 (0 = all samples)")


_SECTIONS: tuple[str, ...] = ("recipe", "weights", "search")

#: Recipe keys that earlier versions accepted but never acted on, and why they went: a recipe file
#: that has one is refused naming it (a calibration record that has one is read without it).
REMOVED: dict[str, str] = {
    "currents": "state scales (currents) come from the exact calibrated abs-max times recipe.margin, "
                "because the overflow proofs need every calibrated value to fit; a clip here never acted",
    "membrane": "state scales (membrane) come from the exact calibrated abs-max times recipe.margin, "
                "because the overflow proofs need every calibrated value to fit; a clip here never acted",
    "search.tensors": "the agreement search scales the weight clips only",
}


def _removed(data: dict[str, Any]) -> list[str]:
    """The removed sections / keys present in ``data``."""
    found: list[str] = [k for k in ("currents", "membrane") if k in data]
    if isinstance(data.get("search"), dict) and "tensors" in data["search"]:
        found.append("search.tensors")
    return found


def parse_recipe(data: dict[str, Any], *, name: str, source: str = "<recipe>",
                 path: Path | None = None) -> Recipe:
    """Validate TOML-shaped ``data`` (as read from a recipe file).

    ``UserInputError`` naming the file and key for unknown sections or keys, wrong types, values
    out of range and the removed settings of ``REMOVED``."""
    if found := _removed(data):
        key = found[0]
        where = f"section [{key}]" if "." not in key else f"key '{key}'"
        raise UserInputError(f"{source}: {where} is no longer supported: {REMOVED[key]}. Delete it from "
                             "the recipe (docs/calibration.md, section 2)")
    unknown = sorted(set(data) - set(_SECTIONS))
    if unknown:
        raise UserInputError(f"{source}: unknown section(s) {unknown}; allowed: {list(_SECTIONS)}")
    for s, table in data.items():
        if not isinstance(table, dict):
            raise UserInputError(f"{source}: [{s}] must be a table")
    info = _table(source, "recipe", data.get("recipe", {}), RecipeInfo)
    search = _table(source, "search", data.get("search", {}), SearchRecipe)
    weights = _tensor(source, "weights", data.get("weights", {}))
    _validate(source, info, search)
    return Recipe(name=name, info=info, weights=weights, search=search, path=path)


def recipe_from_dict(d: dict[str, Any]) -> Recipe:
    """The inverse of ``Recipe.to_dict()`` (for a calibration record read back from an artifact).
    A record written by an earlier version may hold the ``REMOVED`` settings: they are dropped."""
    path = d.get("path")
    body = {k: v for k, v in d.items() if k not in ("name", "path", "currents", "membrane")}
    if isinstance(body.get("search"), dict):
        body["search"] = {k: v for k, v in body["search"].items() if k != "tensors"}
    return parse_recipe(body, name=str(d.get("name", "recipe")), source=f"recipe record {d.get('name')!r}",
                        path=None if path is None else Path(path))


def read_recipe(path: str | os.PathLike[str]) -> Recipe:
    """Load and validate one recipe file (its name is the file stem)."""
    file, data = read_toml(path, "recipe file")
    return parse_recipe(data, name=file.stem, source=str(file), path=file)


def shipped_recipes_dir() -> Path:
    """The shipped recipe directory (see ``configfile.shipped_dir``)."""
    return shipped_dir("calibration")


def available_recipes() -> dict[str, Path]:
    """Shipped recipes by name (the file stem), sorted."""
    return shipped_files("calibration")


def load_recipe(name_or_path: str | os.PathLike[str] = "default") -> Recipe:
    """A shipped recipe by name, or a recipe file by path (anything ending in .toml or holding a
    path separator is a path)."""
    return load_named(name_or_path, "calibration", "recipe", read_recipe)


def list_recipes() -> list[Recipe]:
    """Every shipped recipe, loaded."""
    return [load_recipe(n) for n in available_recipes()]


# ----------------------------------------------------------------------------------------------
# Using a recipe


def collect_with_recipe(graph: Any, x: np.ndarray, recipe: Recipe, *, progress: bool = True,
                        workers: int | None = 1, ray_address: str | None = None,
                        engine: str = "auto", on_batch: Any = None) -> CalibrationStats:
    """``collect_stats`` with the recipe's sample count, batch size, seed and histogram settings.

    ``workers`` > 1 or ``ray_address``: the batches are spread over processes or a Ray cluster
    (``lnm_deploy.distributed.collect_stats_sharded``; the statistics are identical).
    ``on_batch``: ``collect_stats``'s per-batch hook, called only in a single-process pass (the
    sharded pass keeps its runs in the workers)."""
    info = recipe.info
    kw: dict[str, Any] = dict(batch_size=info.batch_size, progress=progress,
                              max_samples=info.max_samples or None, seed=info.seed if info.shuffle else None,
                              bins_per_side=info.bins_per_side, trace_percentile=info.trace_percentile)
    if workers != 1 or ray_address:
        from lnm_deploy.distributed import collect_stats_sharded

        return collect_stats_sharded(graph, x, workers=workers, ray_address=ray_address, engine=engine, **kw)
    return collect_stats(graph, x, on_batch=on_batch, **kw)


def choose_ranges(stats: CalibrationStats, recipe: Recipe, *, weight_bits: int, state_bits: int,
                  graph: Any = None) -> dict[str, ClipRange | ChannelClips]:
    """Apply the recipe to every collected tensor: ``"layer.tensor"`` -> its clip(s).

    Weights use ``weight_bits`` and the recipe's ``[weights]``; currents and membrane use
    ``state_bits`` (they share the state register) and min-max, as the quantizer's state scales do.
    Biases are never clipped (min-max, on the state grid). Per-channel weights need the raw
    weights: pass ``graph`` (else per-tensor is used for methods other than minmax).
    """
    out: dict[str, ClipRange | ChannelClips] = {}
    for t in stats.tensors():
        tr = recipe.for_class(t.tensor_class)
        bits = weight_bits if t.tensor_class == "weights" else state_bits
        per_channel = tr.granularity == "per-channel" and t.tensor in ("weight", "output", "input", "c",
                                                                       "v", "v_pre")
        if t.tensor == "bias":
            # A bias is a parameter, not a sampled activation: few values, each added at every
            # step, so it is never clipped (percentiles of 10 values are meaningless anyway).
            out[f"{t.layer}.{t.tensor}"] = get_calibrator("minmax")(t.stats.hist, bits)
        elif per_channel and t.tensor == "weight" and graph is not None:
            out[f"{t.layer}.{t.tensor}"] = recipe.calibrate_weight(graph.nodes[t.layer].weight, bits)
        elif per_channel and tr.method == "minmax" and t.stats.channel_abs_max is not None:
            clips = t.stats.channel_abs_max
            zeros = np.zeros_like(clips)
            out[f"{t.layer}.{t.tensor}"] = ChannelClips(clips, zeros, None, "minmax", bits, {})
        else:
            out[f"{t.layer}.{t.tensor}"] = recipe.calibrate(t.tensor_class, t.stats, bits)
    return out
