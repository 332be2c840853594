"""The lowering registry: the preference order picks among the lowerings of one kind; an unknown
pair is an error listing the known lowerings; a second registration of a pair is refused. (A float
op kind defined outside the package, calibrated through its own registered lowering, and a layer
no lowering can hold: tests/test_extension.py.)"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from lnm_deploy.calibrate import (
    calibrate_network,
    load_recipe,
    lowering_of,
    lowerings,
    register_lowering,
)
from lnm_deploy.errors import UnsupportedError
from lnm_deploy.ir import Affine, Neuron, sequential
from lnm_deploy.targets import load_target

LOIHI2 = load_target("loihi2")


def _spikes(n_in: int = 12, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((6, 20, n_in)) < 0.4).astype(np.uint8)


def test_builtin_lowerings_in_preference_order() -> None:
    assert [(lw.float_kind, lw.primitive) for lw in lowerings("neuron")] == [("neuron", "li_readout"), ("neuron", "lif"),
                                                                          ("neuron", "poly")]
    assert lowerings("floor_if") == ()
    with pytest.raises(UnsupportedError, match=r"'floor_if'.*'lif'.*known lowerings: neuron->li_readout, neuron->lif, neuron->poly"):
        lowering_of("floor_if", "lif")


def test_a_registered_pair_is_refused_and_left_in_place() -> None:
    with pytest.raises(ValueError, match="registered already"):
        register_lowering(lowering_of("neuron", "lif"))
    assert lowering_of("neuron", "lif").preference == 0  # the failed registration left it in place


def test_a_preferred_lowering_of_the_neuron_is_chosen() -> None:
    """A second lowering of "neuron" (registered by the test, preferred over the stock LIF) takes the
    layers it applies to; the built-in choice (LIF where exact) comes back once it is removed."""
    rng = np.random.default_rng(1)
    g = sequential([("fc", Affine(weight=rng.normal(0.3, 0.5, (5, 12)))),
                    ("n", Neuron(shape=(5,), poly=[0.0, 0.9], v_th=1.0))], (12,))
    x, recipe = _spikes(), load_recipe("default")
    poly = lowering_of("neuron", "poly")
    calls: list[str] = []

    def select_spy(*args: object) -> object:
        calls.append("select")
        return poly.select(*args)  # type: ignore[arg-type]

    assert calibrate_network(g, x, LOIHI2, recipe, progress=False).quantized.layers["n"].primitive == "lif"
    preferred = dataclasses.replace(poly, preference=-1, select=select_spy)  # type: ignore[arg-type]
    register_lowering(preferred, replace=True)
    try:
        res = calibrate_network(g, x, LOIHI2, recipe, progress=False)
    finally:
        register_lowering(poly, replace=True)
    assert res.quantized.layers["n"].primitive == "poly" and calls == ["select"]
    assert calibrate_network(g, x, LOIHI2, recipe, progress=False).quantized.layers["n"].primitive == "lif"


def test_lowerings_of_one_kind_must_agree_on_the_input_gain() -> None:
    """Pass 1 folds the synapses before a primitive is chosen, so every lowering of a kind must
    compute the same input gain: one that differs is refused naming both, not used silently."""
    from lnm_deploy.calibrate.passes import fold

    rng = np.random.default_rng(2)
    g = sequential([("fc", Affine(weight=rng.normal(0.3, 0.5, (5, 12)))),
                    ("n", Neuron(shape=(5,), poly=[0.0, 0.9], v_th=1.0))], (12,))
    poly = lowering_of("neuron", "poly")
    odd = dataclasses.replace(poly, input_gain=lambda node: 2.0 * poly.input_gain(node))
    register_lowering(odd, replace=True)
    try:
        with pytest.raises(UnsupportedError, match=r"'n'.*neuron->li_readout.*neuron->poly.*different input gains"):
            fold(g)
    finally:
        register_lowering(poly, replace=True)
    fold(g)  # agrees again
