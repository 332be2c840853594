"""Calibration: statistics of a calibration set run through the float executor, calibrators that
turn them into clipping ranges, recipes that say which calibrator to use where, and the per-layer
error metrics of the calibration report. Numpy only.

Typical use::

    recipe = load_recipe("default")
    stats = collect_with_recipe(graph, x, recipe)            # progress bar with ETA
    ranges = choose_ranges(stats, recipe, weight_bits=8, state_bits=24, graph=graph)
    print(stats.summary())                                   # ranges, stability, rates

Modules: ``stats`` (Histogram, TensorStats, collect_stats), ``calibrators`` (minmax, percentile, mse,
entropy; power-of-two exponents), ``recipes`` (TOML recipes in ``calibration/``), ``compare``
(SQNR, spike agreement, rate drift, first divergence), ``quantize`` (float graph -> integer network
for a target; ``passes`` its four passes, ``lowering`` the registry of per-kind lowerings a new
neuron kind registers, ``neuron_lowerings`` the Neuron's) and ``pipeline`` (``calibrate_network``: all of it, plus the agreement search).
"""

# The Neuron's lowerings ("lif", "poly") register on import: before any other calibrate module runs.
from lnm_deploy.calibrate import neuron_lowerings as _neuron_lowerings  # noqa: F401  (registers)
from lnm_deploy.calibrate.calibrators import (
    CALIBRATORS,
    CalibratorInfo,
    ChannelClips,
    ClipRange,
    calibrate,
    calibrate_per_channel,
    expected_mse,
    get_calibrator,
    power_of_two_scale,
    power_of_two_scales,
    qmax,
)
from lnm_deploy.calibrate.compare import (
    OBJECTIVES,
    Divergence,
    LayerComparison,
    compare_spikes,
    first_divergence,
    mean_spike_agreement,
    rate_drift,
    spike_agreement,
    sqnr_db,
)
from lnm_deploy.calibrate.lowering import (
    Lowering,
    lowering_of,
    lowerings,
    register_lowering,
    unregister_lowering,
)
from lnm_deploy.calibrate.pipeline import CalibrationResult, calibrate_network
from lnm_deploy.calibrate.quantize import NeuronRange, Quantized, quantize
from lnm_deploy.calibrate.recipes import (
    Recipe,
    RecipeInfo,
    SearchRecipe,
    TensorRecipe,
    available_recipes,
    choose_ranges,
    collect_with_recipe,
    list_recipes,
    load_recipe,
    read_recipe,
    recipe_from_dict,
    shipped_recipes_dir,
)
from lnm_deploy.calibrate.stats import (
    TENSOR_CLASSES,
    CalibrationStats,
    Histogram,
    NeuronStats,
    RangeTrace,
    SpikeStats,
    Stability,
    SynapseStats,
    TensorRef,
    TensorStats,
    collect_stats,
)

__all__ = [
    "CALIBRATORS",
    "OBJECTIVES",
    "TENSOR_CLASSES",
    "CalibrationResult",
    "CalibrationStats",
    "CalibratorInfo",
    "ChannelClips",
    "ClipRange",
    "Divergence",
    "Histogram",
    "LayerComparison",
    "Lowering",
    "NeuronRange",
    "NeuronStats",
    "Quantized",
    "RangeTrace",
    "Recipe",
    "RecipeInfo",
    "SearchRecipe",
    "SpikeStats",
    "Stability",
    "SynapseStats",
    "TensorRecipe",
    "TensorRef",
    "TensorStats",
    "available_recipes",
    "calibrate",
    "calibrate_network",
    "calibrate_per_channel",
    "choose_ranges",
    "collect_stats",
    "collect_with_recipe",
    "compare_spikes",
    "expected_mse",
    "first_divergence",
    "get_calibrator",
    "list_recipes",
    "load_recipe",
    "lowering_of",
    "lowerings",
    "mean_spike_agreement",
    "power_of_two_scale",
    "power_of_two_scales",
    "qmax",
    "quantize",
    "rate_drift",
    "read_recipe",
    "recipe_from_dict",
    "register_lowering",
    "shipped_recipes_dir",
    "spike_agreement",
    "sqnr_db",
    "unregister_lowering",
]
