"""The IR's validation and schedule, and the float executor against independent references."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

from lnm_deploy.errors import GraphError, NumericError, UnsupportedError, UserInputError
from lnm_deploy.execute import run_float
from lnm_deploy.ir import (
    Affine,
    AvgPool2d,
    Conv2d,
    Flatten,
    Graph,
    Input,
    Neuron,
    Output,
    SumPool2d,
    Threshold,
    node_types,
    sequential,
)


def _neuron_reference(x, poly, v_th, v_reset, reset, syn_decay=None):
    """Plain-Python loop over one neuron's input sequence, straight from docs/ir.md."""
    v = c = 0.0
    out_s, out_v = [], []
    for xt in x:
        if syn_decay is not None:
            c = syn_decay * c + xt
        else:
            c = xt
        p = poly[-1]
        for k in range(len(poly) - 2, -1, -1):
            p = p * v + poly[k]
        vp = p + c
        s = vp > v_th
        v = (v_reset if reset == "value" else vp - v_th) if s else vp
        out_s.append(int(s))
        out_v.append(v)
    return out_s, out_v


@given(
    degree=st.integers(0, 3),
    reset=st.sampled_from(["value", "subtract"]),
    synapse=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_neuron_matches_scalar_reference(degree, reset, synapse, seed):
    rng = np.random.default_rng(seed)
    # bounded over the range the inputs reach: the cubic term pulls a negative v back (with +0.01
    # some input sequences drove v below its unstable fixed point near -7.6 and it diverged)
    poly = [0.0, 0.8, 0.05, -0.01][: degree + 1]
    x = rng.normal(0.2, 0.4, size=(4, 30, 3))
    g = sequential(
        [("n", Neuron(shape=(3,), poly=poly, v_th=1.0, v_reset=-0.1, reset=reset,
                      syn_decay=0.5 if synapse else None))],
        (3,),
    )
    r = run_float(g, x, record=True)
    for b in range(4):
        for i in range(3):
            s, v = _neuron_reference(x[b, :, i], poly, 1.0, -0.1, reset, 0.5 if synapse else None)
            assert np.array_equal(r.spikes["n"][b, :, i], s)
            assert np.array_equal(r.states["n"]["v"][b, :, i], v)  # same float ops, same order


def test_recurrent_edge_is_delayed_one_step():
    # One neuron that spikes at t=0 from its input, then only through its own recurrent weight.
    g = Graph(
        nodes={
            "in": Input(shape=(1,)),
            "n": Neuron(shape=(1,), poly=[0.0, 0.0], v_th=0.5),
            "rec": Affine(weight=[[1.0]]),
            "out": Output(),
        },
        edges=[("in", "n"), ("n", "rec"), ("rec", "n"), ("n", "out")],
    )
    sched = g.schedule()
    assert dict(sched.inputs["n"]) == {"in": False, "rec": True}
    x = np.zeros((1, 5, 1))
    x[0, 0, 0] = 1.0
    r = run_float(g, x)
    # t=0 input spike; t=1.. driven by the previous step's spike: a self-sustaining train.
    assert r.output[0, :, 0].tolist() == [1, 1, 1, 1, 1]
    x2 = np.zeros((1, 5, 1))
    r2 = run_float(g, x2)
    assert r2.output.sum() == 0
    # A recurrent bias acts from t = 0 on (virtual step t = -1 with neurons at rest).
    g.nodes["rec"] = Affine(weight=[[0.0]], bias=[0.25])
    r3 = run_float(g, x2, record=True)
    assert r3.states["n"]["v"][0, :, 0].tolist() == [0.25] * 5


@pytest.mark.parametrize(
    ("stride", "padding", "dilation", "groups"),
    [((1, 1), (0, 0), (1, 1), 1), ((2, 1), (1, 2), (1, 2), 2), ((3, 2), (2, 0), (2, 1), 4)],
)
def test_conv_and_pool_match_torch(stride, padding, dilation, groups):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 4, 9, 11))
    w = rng.normal(size=(8, 4 // groups, 3, 2))
    b = rng.normal(size=8)
    conv = Conv2d(weight=w, bias=b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    g = sequential([("conv", conv), ("pool", AvgPool2d(kernel_size=2, stride=2, padding=1))], (4, 9, 11))
    r = run_float(g, x[:, None])  # one timestep
    ref = F.avg_pool2d(
        F.conv2d(torch.tensor(x), torch.tensor(w), torch.tensor(b), stride, padding, dilation, groups), 2, 2, 1
    ).numpy()
    assert r.output.shape[2:] == ref.shape[1:] == g.schedule().shapes["pool"]
    np.testing.assert_allclose(r.output[:, 0], ref, rtol=1e-12, atol=1e-12)  # float path: BLAS order differs

    gs = sequential([("pool", SumPool2d(kernel_size=(3, 2), stride=(1, 2)))], (4, 9, 11))
    spikes = (rng.random((2, 1, 4, 9, 11)) < 0.5).astype(float)
    ref = F.avg_pool2d(torch.tensor(spikes[:, 0]), (3, 2), (1, 2), divisor_override=1).numpy()
    assert np.array_equal(run_float(gs, spikes).output[:, 0], ref)  # integer sums: exact


def test_flatten_dims_are_unbatched():
    g = sequential([("f", Flatten(start_dim=1))], (2, 3, 4))
    assert g.schedule().shapes["f"] == (2, 12)
    x = np.arange(2 * 1 * 24, dtype=float).reshape(2, 1, 2, 3, 4)
    assert np.array_equal(run_float(g, x).output, x.reshape(2, 1, 2, 12))


def test_divergent_dynamics_raise_naming_node_and_step():
    g = sequential([("n", Neuron(shape=(1,), poly=[0.0, 0.0, 10.0], v_th=None))], (1,))
    with pytest.raises(NumericError, match=r"'n'.*step 8"):
        run_float(g, np.full((1, 20, 1), 3.0))


def test_threshold_strict():
    g = sequential([("th", Threshold(v_th=[1.0, 2.0]))], (2,))
    r = run_float(g, np.array([[[1.0, 2.0000001]]]))
    assert r.spikes["th"].tolist() == [[[0, 1]]]


def test_validation_errors_name_the_node():
    ok = [("fc", Affine(weight=np.ones((3, 4))))]
    with pytest.raises(GraphError, match=r"'fc'.*expects input shape \(4,\), gets \(5,\); its weight \(out, in\) "
                       r"= \(3, 4\) takes 4 values per step; check the layer before it"):
        sequential(ok, (5,)).schedule()
    with pytest.raises(GraphError, match=r"'fc'.*expects input shape \(4,\), gets \(1, 2, 2\); insert a Flatten"):
        sequential(ok, (1, 2, 2)).schedule()
    with pytest.raises(GraphError, match=r"gets \(1, 2, 3\); its weight"):  # 6 values: no Flatten helps
        sequential(ok, (1, 2, 3)).schedule()
    with pytest.raises(NumericError, match=r"'fc'.*NaN"):
        sequential([("fc", Affine(weight=np.full((3, 4), np.nan)))], (4,)).schedule()
    with pytest.raises(GraphError, match=r"'lif'.*expects input shape \(2,\)"):
        sequential([("fc", Affine(weight=np.ones((3, 4)))), ("lif", Neuron(shape=(2,), poly=[0, 1], v_th=1))],
                   (4,)).schedule()
    g = sequential(ok, (4,))
    g.nodes["orphan"] = Affine(weight=np.ones((1, 1)))
    with pytest.raises(GraphError, match="not reachable"):
        g.schedule()
    g = sequential(ok, (4,))
    g.edges.append(("fc", "nowhere"))
    with pytest.raises(GraphError, match="does not exist"):
        g.schedule()
    g = sequential(ok, (4,))
    g.edges.append(g.edges[1])  # once summed twice, silently
    with pytest.raises(GraphError, match=r"edge \({} -> {}\) appears twice".format(*g.edges[1])):
        g.schedule()
    g = sequential(ok, (4,))
    g.nodes["in2"] = Input(shape=(4,))
    with pytest.raises(UnsupportedError, match="exactly one Input"):
        g.schedule()
    with pytest.raises(GraphError, match="degree"):
        sequential([("n", Neuron(shape=(1,), poly=np.zeros(5), v_th=1.0))], (1,)).schedule()


def test_run_rejects_bad_data():
    g = sequential([("fc", Affine(weight=np.ones((3, 4))))], (4,))
    with pytest.raises(UserInputError, match=r"\(samples, timesteps, 4\)"):
        run_float(g, np.zeros((2, 5, 3)))
    with pytest.raises(UserInputError, match="NaN"):
        run_float(g, np.full((2, 5, 4), np.nan))


def test_registry_is_built_from_the_code():
    kinds = node_types()
    assert {"input", "output", "affine", "conv2d", "sumpool2d", "avgpool2d", "flatten", "neuron",
            "threshold", "scale"} <= set(kinds)
    assert all(cls.kind == k for k, cls in kinds.items())


@pytest.mark.parametrize("bad", [1.5, (1, 2.5), np.array([2.0, np.nan]), True, "2", (1, 2, 3)])
def test_geometry_pairs_are_integers_never_truncated(bad: object) -> None:
    """Stride, padding, dilation and kernel sizes are an integer or a pair of integers: a
    non-integral value is refused by name (a stride of 1.5 used to become 1), an integral float is
    that integer."""
    from lnm_deploy.ir.nodes import pair

    with pytest.raises(GraphError, match="'stride' must be an int or a pair of ints"):
        pair("conv", "stride", bad)
    assert pair("conv", "stride", 2.0) == (2, 2) and pair("conv", "stride", np.array([1, 3])) == (1, 3)
