"""fxsim bit-exact against Lava 0.10's own fixed_pt models (PyDenseModelBitAcc, PyLifModelBitAcc,
PyConvModelFixed) under Loihi2SimCfg(select_tag='fixed_pt'), plus lnm-deploy's PolyNeuron model.

Every comparison is np.array_equal on every spike and every state of every layer; a failure names
the first layer, timestep and neuron. Lava installs on Python 3.10 only: there these tests must
run (a missing lava-nc is an error, not a skip).
"""

from __future__ import annotations

import sys

import numpy as np
import pytest
from fx_nets import chain, lif, random_conv_net, random_dense_net, spikes
from hypothesis import given, settings
from hypothesis import strategies as st

from lnm_deploy.errors import UnsupportedError
from lnm_deploy.fixedpoint import FxDense, FxGraph, FxLIF, fx_sequential
from lnm_deploy.fxsim import compare_runs, run_fx
from lnm_deploy.fxsim.sim import load_kernels

if sys.version_info[:2] != (3, 10):
    pytest.skip("lava-nc 0.10 installs on Python 3.10 only", allow_module_level=True)

from lnm_deploy.lava_backend import run_lava

pytestmark = [pytest.mark.lava, pytest.mark.slow]
KERNELS = ["numpy"] + (["numba"] if load_kernels("auto") is not None else [])


def assert_bit_exact(graph: FxGraph, x: np.ndarray) -> None:
    got = run_lava(graph, x, record=True)
    for kernels in KERNELS:
        m = compare_runs(run_fx(graph, x, record=True, kernels=kernels), got, order=graph.neuron_names())
        assert m is None, f"fxsim ({kernels} kernels) vs Lava: {m}"


@pytest.mark.parametrize("net", ["dense", "conv"])
@settings(max_examples=22)
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 10))
def test_lif_networks(net: str, seed: int, steps: int) -> None:
    """Stock LIF networks against Lava. ``dense``: feed-forward and self-recurrent Dense + LIF,
    weights Lava clips and truncates, all sign modes, weight exponents up to 24 (int32 wraps), LIF
    states started at the wrap/saturation edges. ``conv``: Conv2d (stride, padding, groups) + LIF,
    SumPool2d, Flatten + Dense, against Lava's Conv."""
    rng = np.random.default_rng(seed)
    g = random_dense_net(rng, neurons="lif") if net == "dense" else random_conv_net(rng, neurons="lif")
    assert_bit_exact(g, spikes(rng, 1, steps if net == "dense" else min(steps, 8), g.input_shape))


@settings(max_examples=10)
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 8))
def test_polynomial_neuron_process(seed: int, steps: int) -> None:
    """lnm-deploy's PolyNeuron Lava process (fixed_pt model) against fxsim, mixed with LIF."""
    rng = np.random.default_rng(seed)
    g = random_dense_net(rng, neurons="any", max_layers=2) if seed % 3 else random_conv_net(rng, neurons="any")
    assert_bit_exact(g, spikes(rng, 1, steps, g.input_shape))


def test_lif_wrap_and_saturation_edges() -> None:
    """u driven across +-2**23 (wrap, and the kept value 2**23), v into both saturation limits,
    inputs large enough for every int32 wrap inside Lava's LIF, du = 0 and dv = 0."""
    rng = np.random.default_rng(3)
    n = 8
    w = np.array([[255] * 4, [-256] * 4, [254, -256, 254, -256], [1, 0, 0, 0]] * 2)
    layers = []
    for exp, du, dv, vth in ((11, 0, 0, 2**17 - 1), (17, 4095, 0, 0), (24, 0, 4095, 5), (6, 100, 1, 2**17 - 1)):
        node = FxLIF(shape=(n,), du=du, dv=dv, vth=vth,
                     bias_mant=rng.integers(-4096, 4096, n), bias_exp=rng.integers(0, 8, n),
                     u_init=np.array([2**23, -(2**23) + 1, 2**23 - 64, 0] * 2),
                     v_init=np.array([2**23 - 1, -(2**23) + 1, 0, 2**22] * 2))
        layers.append((fx_sequential([("d", FxDense(weight=w, weight_exp=exp)), ("l", node)], (4,)), exp))
    x = np.ones((2, 12, 4), dtype=np.uint8)
    x[1, ::3] = 0
    for g, exp in layers:
        ref = run_fx(g, x, record=True)
        u = ref.states["l"]["u"]
        if exp == 11:  # the edge cases are actually reached
            assert u.max() == 2**23 or u.min() < -(2**22)
        assert_bit_exact(g, x)


def test_weights_lava_clips_and_truncates() -> None:
    """Out-of-range and odd weights in every sign mode and weight width."""
    w = np.array([[300, 255, 254, 129, 3, 1, 0, -1], [-300, -256, -255, -129, -3, -2, 0, 7]])
    x = np.tile(np.eye(8, dtype=np.uint8), (2, 1))[None]
    for mode, ww in (("mixed", w), ("excitatory", np.abs(w)), ("inhibitory", -np.abs(w))):
        for bits in (8, 5, 1):
            g = fx_sequential([("d", FxDense(weight=ww, num_weight_bits=bits, sign_mode=mode)),
                               ("l", FxLIF(shape=(2,), du=4095, dv=4095, vth=0))], (8,))
            ref = run_fx(g, x, record=True)
            assert_bit_exact(g, x)
            # u = a << 6 exposes the effective weight of each input column directly
            eff = g.nodes["d"].effective_weight()  # type: ignore[attr-defined]
            assert np.array_equal(ref.states["l"]["u"][0, :8].T, eff << 6)


def test_two_samples_and_recurrence_time_base() -> None:
    """Batch of 2 through Lava (one sample at a time) and a self-loop: the one-step delay."""
    rng = np.random.default_rng(11)
    g = chain([("d", FxDense(weight=rng.integers(-50, 120, (6, 5)))), ("l", lif(rng, (6,), edges=False))],
              (5,), {"l": FxDense(weight=rng.integers(-100, 100, (6, 6)))})
    assert_bit_exact(g, spikes(rng, 2, 15, (5,)))


def test_unsupported_topologies_are_named() -> None:
    rng = np.random.default_rng(0)
    g = fx_sequential([("d0", FxDense(weight=np.ones((3, 2), int))), ("l0", lif(rng, (3,), edges=False)),
                       ("d1", FxDense(weight=np.ones((3, 3), int))), ("l1", lif(rng, (3,), edges=False))], (2,))
    g.nodes["back"] = FxDense(weight=np.ones((3, 3), int))
    g.edges += [("l1", "back"), ("back", "l0")]
    with pytest.raises(UnsupportedError, match=r"node 'l0'.*self-loop"):
        run_lava(g, np.zeros((1, 2, 2), np.uint8))
