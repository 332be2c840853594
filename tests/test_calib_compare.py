"""Per-layer error metrics of the calibration report, on crafted examples."""

import math

import numpy as np
import pytest

from lnm_deploy.calibrate import (
    Divergence,
    compare_spikes,
    first_divergence,
    mean_spike_agreement,
    rate_drift,
    spike_agreement,
    sqnr_db,
)
from lnm_deploy.errors import UserInputError
from lnm_deploy.execute import RunResult


def _zeros():
    return {"a": np.zeros((3, 8, 4), np.uint8), "b": np.zeros((3, 8, 2, 3), np.uint8)}


def test_first_divergence_none_when_equal():
    assert first_divergence(_zeros(), _zeros(), ["a", "b"]) is None


def test_first_divergence_earliest_timestep_wins_over_layer_order():
    ref, test = _zeros(), _zeros()
    test["a"][0, 5, 1] = 1
    test["b"][2, 3, 1, 2] = 1  # later layer, earlier step
    assert first_divergence(ref, test, ["a", "b"]) == Divergence("b", 2, 3, 5)  # flat (1, 2) -> 5


def test_first_divergence_ties_break_by_layer_then_sample_then_neuron():
    ref, test = _zeros(), _zeros()
    test["a"][2, 4, 0] = 1
    test["a"][1, 4, 3] = 1
    test["a"][1, 4, 2] = 1
    test["b"][0, 4, 0, 0] = 1
    assert first_divergence(ref, test, ["a", "b"]) == ("a", 1, 4, 2)
    assert first_divergence(ref, test, ["b", "a"]) == ("b", 0, 4, 0)
    # The default order is the first run's, and a RunResult works like its spikes dict.
    run_ref = RunResult(output=np.zeros(1), spikes=ref)
    d = first_divergence(run_ref, test)
    assert d is not None and (d.layer, d.sample, d.timestep, d.neuron) == ("a", 1, 4, 2)


def test_first_divergence_bad_input():
    ref = _zeros()
    with pytest.raises(UserInputError, match="layer 'c' is missing"):
        first_divergence(ref, ref, ["a", "c"])
    bad = dict(ref, a=np.zeros((3, 7, 4)))
    with pytest.raises(UserInputError, match="layer 'a'"):
        first_divergence(ref, bad)


def test_sqnr_agreement_and_drift():
    ref = np.array([1.0, -1.0, 2.0, 0.0])
    assert sqnr_db(ref, ref) == math.inf
    assert sqnr_db(ref, ref + np.array([0.1, 0.0, 0.0, 0.0])) == pytest.approx(10 * math.log10(6 / 0.01))
    assert sqnr_db(np.zeros(3), np.ones(3)) == -math.inf
    # any shape (batch, time, *neurons), integer test values against float reference
    ref3 = np.arange(24, dtype=np.float64).reshape(2, 3, 4) - 11.5
    test3 = np.rint(ref3).astype(np.int64)
    expect = 10 * math.log10(float(np.sum(ref3**2)) / float(np.sum((ref3 - test3) ** 2)))
    assert sqnr_db(ref3, test3) == pytest.approx(expect, rel=1e-12)
    a = np.array([[1, 0, 1, 1], [0, 0, 1, 0]], np.uint8)
    b = np.array([[1, 1, 1, 0], [0, 0, 1, 0]], np.uint8)
    assert spike_agreement(a, b) == 6 / 8
    assert rate_drift(a, b) == pytest.approx(0.0)
    assert rate_drift(a, np.zeros_like(a)) == pytest.approx(-0.5)
    with pytest.raises(UserInputError, match="different shapes"):
        spike_agreement(a, b[:1])


def test_compare_spikes_per_layer():
    ref, test = _zeros(), _zeros()
    ref["a"][:, :, 0] = 1  # rate 1/4
    test["b"][0, 0, 0, 0] = 1
    comps = compare_spikes(ref, test)
    assert list(comps) == ["a", "b"]
    assert comps["a"].agreement == 0.75 and comps["a"].rate_reference == 0.25
    assert comps["a"].rate_test == 0.0 and comps["a"].rate_drift == -0.25
    assert comps["b"].agreement == 1 - 1 / (3 * 8 * 6)
    assert mean_spike_agreement(ref, test) == pytest.approx((comps["a"].agreement + comps["b"].agreement) / 2)
    assert comps["b"].to_dict()["layer"] == "b"


def test_rates_agreement_and_scaled_sqnr_equal_numpys_own_values() -> None:
    """The counting paths (booleans, integers) and the one-buffer scaled SQNR give numpy's float64
    values bit for bit (the calibration report must not change with how they are computed)."""
    rng = np.random.default_rng(5)
    for dtype in (np.bool_, np.uint8, np.int16, np.int64, np.float32):
        a = (rng.random((7, 5, 13)) < 0.3).astype(dtype)
        b = (rng.random((7, 5, 13)) < 0.4).astype(dtype)
        assert spike_agreement(a, b) == float(np.mean(a == b))
        assert rate_drift(a, b) == float(np.mean(b, dtype=np.float64) - np.mean(a, dtype=np.float64))
    ref = rng.normal(size=(4, 6, 9))
    t = rng.integers(-500, 500, (4, 6, 9))
    for q in (0.0123, np.linspace(0.01, 0.02, 9)):
        assert sqnr_db(ref, t, test_scale=q) == sqnr_db(ref, t * q)
