"""The neuron's spike rules beyond lnm-deploy's default (``Neuron.threshold``, ``max_spikes``,
``v_floor``; ``docs/ir.md``): the float step against a step written out by hand, the stock LIF
refusing a rule by name instead of calibrating something else, and loihi2's programmable neuron
running it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from lnm_deploy.calibrate import calibrate_network, load_recipe
from lnm_deploy.errors import GraphError, LNMDeployWarning, UnsupportedError
from lnm_deploy.execute import run_float
from lnm_deploy.ir import Affine, Neuron, sequential
from lnm_deploy.targets import load_target


def _by_hand(x: np.ndarray, v_th: float, ge: bool, max_spikes: int | None, subtract: bool,
             floor: float | None) -> tuple[np.ndarray, np.ndarray]:
    """An integrate-and-fire neuron (P(v) = v, in_gain 1), one neuron, step by step in Python floats."""
    v, out, vs = 0.0, [], []
    for xt in x:
        vp = v + float(xt)
        fired = vp >= v_th if ge else vp > v_th
        n = 0
        if fired:
            n = 1 if max_spikes == 1 else max(1, int(np.floor(vp / v_th)))
            if max_spikes is not None:
                n = min(n, max_spikes)
        v = (vp - n * v_th if subtract else 0.0) if fired else vp
        if floor is not None:
            v = max(v, floor)
        out.append(n)
        vs.append(v)
    return np.array(out, dtype=np.float64), np.array(vs)


@pytest.mark.parametrize("ge", [False, True], ids=[">", ">="])
@pytest.mark.parametrize("max_spikes", [1, 3, None])
@pytest.mark.parametrize("subtract", [False, True], ids=["value", "subtract"])
@pytest.mark.parametrize("floor", [None, -0.5])
def test_float_step_matches_a_hand_written_step(ge: bool, max_spikes: int | None, subtract: bool,
                                                floor: float | None) -> None:
    # inputs on a quarter grid hit v == v_th and v == k v_th exactly, so the tie rules are exercised
    x = np.array([0.25, 0.75, 1.0, 2.5, -3.0, 4.0, 1.0, 0.0, 3.25, -0.25, 1.75, 5.0, 0.5]).reshape(-1, 1)
    g = sequential([("n", Neuron(shape=(1,), poly=[0.0, 1.0], v_th=1.0, reset="subtract" if subtract else "value",
                                 threshold=">=" if ge else ">", max_spikes=max_spikes,
                                 v_floor=None if floor is None else np.full(1, floor)))], (1,))
    res = run_float(g, x[None], record=True)
    spikes, v = _by_hand(x[:, 0], 1.0, ge, max_spikes, subtract, floor)
    assert np.array_equal(res.output[0, :, 0], spikes)
    assert np.array_equal(res.states["n"]["v"][0, :, 0], v)
    assert spikes.max() > 1 or max_spikes == 1  # the input reaches several spikes per step


def test_graded_spikes_need_a_positive_threshold() -> None:
    g = sequential([("n", Neuron(shape=(2,), poly=[0.0, 1.0], v_th=np.array([1.0, 0.0]), max_spikes=None))], (2,))
    with pytest.raises(GraphError, match="v_th > 0"):
        g.schedule()
    with pytest.raises(GraphError, match="max_spikes"):
        sequential([("n", Neuron(shape=(2,), poly=[0.0, 1.0], v_th=1.0, max_spikes=0))], (2,)).schedule()


@pytest.mark.parametrize("rule", [{"threshold": ">="}, {"max_spikes": None}, {"v_floor": np.zeros(4)}],
                         ids=["ge", "graded", "floor"])
def test_the_stock_lif_refuses_a_rule_it_does_not_run(rule: dict) -> None:
    """loihi2-lif (stock LIF only) refuses each rule by name; loihi2's programmable neuron runs them
    (``docs/fixed-point.md`` 5.2; ``tests/test_graded.py``)."""
    rng = np.random.default_rng(0)
    g = sequential([("fc", Affine(weight=rng.normal(0.3, 0.3, (4, 5)))),
                    ("n", Neuron(shape=(4,), poly=[0.0, 0.9], v_th=1.0, **rule))], (5,))
    x = (rng.random((4, 8, 5)) < 0.5).astype(np.uint8)
    with pytest.raises(UnsupportedError, match=r"'n'.*(v >= v_th|graded|floor)|(v >= v_th|graded|floor).*'n'"):
        calibrate_network(g, x, load_target("loihi2-lif"), load_recipe("default"), progress=False)
    fx = calibrate_network(g, x, load_target("loihi2"), load_recipe("default"), progress=False).artifact.fx
    node = fx.nodes["n"]
    assert node.kind == "poly"
    assert (node.threshold, node.max_payload > 1, node.v_floor is not None) == (  # type: ignore[attr-defined]
        rule.get("threshold", ">"), "max_spikes" in rule, "v_floor" in rule)


def test_divergence_replay_steps_the_same_rules() -> None:
    """verify's replay of one neuron (with nothing swapped) is the float executor's trace, rules included."""
    from lnm_deploy.verify import replay_neuron

    rng = np.random.default_rng(4)
    g = sequential([("fc", Affine(weight=rng.normal(0.8, 0.6, (3, 5)))),
                    ("n", Neuron(shape=(3,), poly=[0.0, 0.9], v_th=0.5, reset="subtract", threshold=">=",
                                 max_spikes=4, v_floor=np.full(3, -0.3)))], (5,))
    x = (rng.random((2, 12, 5)) < 0.6).astype(np.uint8)
    res = run_float(g, x, record=True)
    assert res.output.max() > 1  # graded
    for flat in range(3):
        tr = replay_neuron(g, g, "n", flat, 1, 11, {**res.spikes, g.input_name: x})
        assert np.array_equal(tr["s"], res.output[1, :, flat])
        # float64 both, summed in another order (one neuron's dot product against the batched matmul)
        np.testing.assert_allclose(tr["v"], res.states["n"]["v"][1, :, flat], rtol=1e-12, atol=1e-12)


def test_an_adaptive_neuron_refuses_rules_it_does_not_define() -> None:
    from lnm_deploy.adaptive import AdaptiveNeuron

    for rule in ({"threshold": ">="}, {"max_spikes": 2}, {"v_floor": np.zeros(2)}):
        g = sequential([("a", AdaptiveNeuron(shape=(2,), poly=[0.0, 0.9], v_th=1.0, **rule))], (2,))
        with pytest.raises(UnsupportedError, match="adaptive-threshold neuron"):
            g.schedule()


@pytest.mark.parametrize("max_spikes, dtype", [(1, np.uint8), (255, np.uint8), (256, np.uint16), (2**16, np.uint32),
                                               (None, np.uint32)])
def test_graded_spike_records_hold_their_counts(max_spikes: int | None, dtype: type) -> None:
    """A record never wraps: counts above 255 get a wider record, an unbounded count that outgrows
    even that is an error naming the layer."""
    g = sequential([("n", Neuron(shape=(1,), poly=[0.0, 1.0], v_th=1.0, reset="subtract", max_spikes=max_spikes))],
                   (1,))
    x = np.array([[[300.0], [0.5], [70000.0]]])
    res = run_float(g, x)
    assert res.spikes["n"].dtype == dtype
    cap = np.inf if max_spikes is None else max_spikes
    assert res.spikes["n"][0, 0, 0] == min(300, cap)
    assert np.array_equal(res.spikes["n"], res.output)  # the record is the output, exactly
    from lnm_deploy.errors import NumericError

    if max_spikes is None:
        with pytest.raises(NumericError, match=r"'n'.*spikes in one step"):
            run_float(g, np.array([[[5e9]]]))


@pytest.mark.parametrize("value", [2.7, "3", np.float64(2.5), float("nan"), True])
def test_a_non_integer_spike_cap_is_refused_never_truncated(value: object) -> None:
    from lnm_deploy.fixedpoint import FxPoly

    with pytest.raises(GraphError, match="max_spikes"):
        sequential([("n", Neuron(shape=(1,), poly=[0.0, 1.0], v_th=1.0, max_spikes=value))], (1,)).schedule()
    if not isinstance(value, bool):
        with pytest.raises(GraphError, match="max_payload must be an integer"):
            FxPoly(shape=(1,), coef=[0, 1], shifts=[0], vth=[4], max_payload=value)
    assert sequential([("n", Neuron(shape=(1,), poly=[0.0, 1.0], v_th=1.0, max_spikes=3.0))],
                      (1,)).nodes["n"].max_spikes == 3


def test_calibrating_a_silent_network_is_warned() -> None:
    """A float model no layer of which spikes on the calibration data (a graph read with the wrong
    dt, say) calibrates, but not silently."""
    rng = np.random.default_rng(0)
    x = (rng.random((4, 8, 5)) < 0.5).astype(np.uint8)
    quiet = sequential([("fc", Affine(weight=np.full((4, 5), 1e-3))),
                        ("n", Neuron(shape=(4,), poly=[0.0, 0.9], v_th=1.0))], (5,))
    with pytest.warns(LNMDeployWarning, match="no layer of the float model spikes"):
        calibrate_network(quiet, x, load_target("loihi2"), load_recipe("default"), progress=False)
    live = sequential([("fc", Affine(weight=np.full((4, 5), 0.6))),
                       ("n", Neuron(shape=(4,), poly=[0.0, 0.9], v_th=1.0))], (5,))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        calibrate_network(live, x, load_target("loihi2"), load_recipe("default"), progress=False)
    assert not [w for w in caught if "no layer of the float model spikes" in str(w.message)]
