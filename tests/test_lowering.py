"""The lowering registry: a float op kind defined in a test file is calibrated without editing the
package; the preference order picks among the lowerings of one kind; unknown kinds and layers no
lowering can hold are errors naming the node, what the target offers and the known lowerings."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pytest
from extension_toy import FLOOR_APPROXIMATION, FLOOR_IF_TO_LIF, FloorIF, registered, toy_graph

from lnm_deploy.calibrate import calibrate_network, load_recipe, lowering_of, lowerings
from lnm_deploy.calibrate.passes import fold
from lnm_deploy.errors import LNMDeployWarning, UnsupportedError, UserInputError
from lnm_deploy.execute import run_float
from lnm_deploy.fixedpoint import FxLIF
from lnm_deploy.fxsim import run_fx
from lnm_deploy.ir import Affine, Neuron, sequential
from lnm_deploy.targets import load_target

LOIHI2, LIF_ONLY = load_target("loihi2"), load_target("loihi2-lif")


def _spikes(n_in: int = 12, seed: int = 0) -> np.ndarray:
    return (np.random.default_rng(seed).random((6, 20, n_in)) < 0.4).astype(np.uint8)


def test_builtin_lowerings_in_preference_order() -> None:
    assert [(lw.float_kind, lw.primitive) for lw in lowerings("neuron")] == [("neuron", "lif"), ("neuron", "poly")]
    assert lowerings("floor_if") == ()
    with pytest.raises(UnsupportedError, match=r"'floor_if'.*'lif'.*known lowerings: neuron->lif, neuron->poly"):
        lowering_of("floor_if", "lif")


def test_toy_float_op_steps_with_a_floor() -> None:
    node = FloorIF(shape=(1,), v_th=1.0, floor=-0.5)
    step = node.float_step("n", 1, np.float64)
    outs = [float(step(np.array([[x]]))[0, 0]) for x in (-2.0, 0.6, 1.0, -0.1)]
    assert outs == [0.0, 0.0, 1.0, 0.0]  # -2 floored to -0.5; then 0.1; 1.1 spikes, resets to 0; -0.1
    assert float(step.state("v")[0, 0]) == -0.1


def test_a_toy_kind_is_calibrated_through_its_registered_lowering() -> None:
    g, x = toy_graph(), _spikes()
    with pytest.raises(UnsupportedError, match=r"'if1'.*no lowering for float kind 'floor_if'"):
        fold(g)  # not registered: pass 1 cannot map its input gain
    with registered():
        assert lowerings("floor_if") == (FLOOR_IF_TO_LIF,)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LNMDeployWarning)
            res = calibrate_network(g, x, LOIHI2, load_recipe("default"), progress=False)
    assert lowerings("floor_if") == ()  # unregistered again
    # statistics and ranges come from the states the toy op names v / v_pre
    assert set(res.stats.neurons) == {"if1", "if2"} and set(res.stats.spikes) == {"if1", "if2"}
    ref = run_float(g, x, record=True)
    assert res.stats.neurons["if1"].v_pre.hist.minimum == ref.states["if1"]["v_pre"].min() >= -0.5
    assert res.mapped is not None and list(res.mapped.layers) == ["if1", "if2"]
    for n in ("if1", "if2"):
        rec = res.quantized.layers[n]
        assert rec.primitive == "lif" and rec.approximations == [FLOOR_APPROXIMATION]
        assert isinstance(res.quantized.fx.nodes[n], FxLIF)
        assert rec.proof["holds"] and "static_bounds" in rec.proof
    fx = run_fx(res.quantized.fx, x, record=True)
    assert np.array_equal(fx.spikes["if2"], res.fixed_run.spikes["if2"][: fx.spikes["if2"].shape[0]])
    assert float(np.mean(fx.spikes["if1"] == ref.spikes["if1"])) > 0.7


def test_a_layer_no_lowering_holds_names_node_offers_and_known() -> None:
    no_lif = dataclasses.replace(LOIHI2, lif=None)
    with registered():
        with pytest.raises(UnsupportedError) as e:
            calibrate_network(toy_graph(), _spikes(), no_lif, load_recipe("default"), progress=False)
    msg = str(e.value)
    assert "'if1'" in msg and "floor_if" in msg and "poly" in msg and "floor_if->lif" in msg
    with pytest.raises(UserInputError, match="registered already"):
        with registered(lowering_of("neuron", "lif")):
            pass
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
    from lnm_deploy.calibrate import register_lowering

    register_lowering(preferred, replace=True)
    try:
        res = calibrate_network(g, x, LOIHI2, recipe, progress=False)
    finally:
        register_lowering(poly, replace=True)
    assert res.quantized.layers["n"].primitive == "poly" and calls == ["select"]
    assert calibrate_network(g, x, LOIHI2, recipe, progress=False).quantized.layers["n"].primitive == "lif"
