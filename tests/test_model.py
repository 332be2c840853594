"""Tests of the PyTorch LNM model: exact dynamics, export to the IR, data, and training."""

from __future__ import annotations

import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from lnm_deploy.errors import NumericError, UnsupportedError, UserInputError  # noqa: E402
from lnm_deploy.ir import Affine, Conv2d, Flatten, Input, Neuron, Output, SumPool2d  # noqa: E402
from lnm_deploy.model import (  # noqa: E402
    LNM,
    LNMSequential,
    RecurrentLNM,
    build_digits_model,
    current_encode,
    evaluate,
    horner,
    load_digits_split,
    model_to_ir,
    rate_encode,
    train,
    train_digits,
)
from lnm_deploy.model import SumPool2d as TorchSumPool2d  # noqa: E402
from lnm_deploy.model.data import encode  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():  # small matmuls: threads only add contention (and change float summation)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def reference_lnm(
    x: np.ndarray,
    poly: np.ndarray,
    v_th: np.ndarray,
    v_reset: np.ndarray,
    reset: str,
    alpha: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Independent numpy transcription of the IR Neuron equations; x (B, T, n) -> (s, v)."""
    v = np.zeros_like(x[:, 0])
    c = np.zeros_like(x[:, 0])
    ss, vs = [], []
    with np.errstate(all="raise"):  # an overflow would make the exact comparison vacuous (inf == inf)
        for t in range(x.shape[1]):
            i_t = x[:, t]
            if alpha is not None:
                c = alpha * c + i_t
                i_t = c
            p = poly[-1] * v
            for k in range(len(poly) - 2, -1, -1):
                p = p + poly[k]
                if k:
                    p = p * v
            vp = p + i_t
            s = vp > v_th
            v = np.where(s, v_reset if reset == "value" else vp - v_th, vp)
            ss.append(s.astype(np.float64))
            vs.append(v)
    return np.stack(ss, 1), np.stack(vs, 1)


# -- dynamics -----------------------------------------------------------------------------------


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_horner_matches_direct_sum_and_contract_order(degree: int) -> None:
    rng = np.random.default_rng(degree)
    poly = rng.normal(size=degree + 1)
    v = rng.uniform(-3, 3, size=1000)
    got = horner(torch.tensor(poly), torch.tensor(v)).numpy()
    direct = sum(poly[k] * v**k for k in range(degree + 1))
    np.testing.assert_allclose(got, direct, rtol=1e-12, atol=1e-12)
    # Bit-exact against the contract order ((theta_d v + theta_{d-1}) v + ...) + theta_0 in Python floats.
    for vi, gi in zip(v[:50], got[:50], strict=True):
        p = float(poly[degree]) * float(vi)
        for k in range(degree - 1, -1, -1):
            p = p + float(poly[k])
            if k:
                p = p * float(vi)
        assert gi == p


def test_degree1_equals_snntorch_leaky_spike_for_spike() -> None:
    snn = pytest.importorskip("snntorch")
    beta, th = 0.87, 1.0
    torch.manual_seed(0)
    x = torch.rand(4, 60, 25, dtype=torch.float64) * 0.5
    lnm = LNM(25, degree=1, beta=beta, threshold=th, reset="value", v_reset=0.0, dtype=torch.float64)
    assert lnm.poly_value()[1].item() == beta  # built in float64: no float32 rounding of beta
    s_ours, rec = lnm(x, record=True)
    leaky = snn.Leaky(
        beta=torch.tensor(beta, dtype=torch.float64),
        threshold=torch.tensor(th, dtype=torch.float64),
        reset_mechanism="zero",
        reset_delay=False,
    )
    mem = torch.zeros(4, 25, dtype=torch.float64)
    spk_ref, mem_ref = [], []
    for t in range(x.shape[1]):
        spk, mem = leaky(x[:, t], mem)
        spk_ref.append(spk.double())
        mem_ref.append(mem)
    spk_ref_t = torch.stack(spk_ref, 1)
    assert 0 < spk_ref_t.sum() < spk_ref_t.numel() / 2  # the comparison is not vacuous
    assert torch.equal(s_ours, spk_ref_t)
    assert torch.equal(rec["v"], torch.stack(mem_ref, 1))


@pytest.mark.parametrize("degree", [1, 2, 3])
@pytest.mark.parametrize("reset", ["value", "subtract"])
@pytest.mark.parametrize("synapse", [False, True])
def test_lnm_matches_reference_equations_exactly(degree: int, reset: str, synapse: bool) -> None:
    n = 16
    rng = np.random.default_rng(100 * degree + synapse)
    lnm = LNM(
        n, degree, reset=reset, synapse=synapse, alpha=0.7, granularity="neuron",
        threshold_granularity="neuron", v_reset=-0.1, dtype=torch.float64,
    )
    poly = np.zeros((degree + 1, n))
    poly[1] = rng.uniform(0.6, 0.95, n)
    poly[0] = rng.normal(0, 0.02, n)
    if degree >= 2:
        poly[2] = rng.normal(0, 0.05, n)
    if degree == 3:
        poly[3] = rng.normal(0, 0.01, n)
    lnm.set_poly(torch.tensor(poly))
    with torch.no_grad():
        lnm.v_th.copy_(torch.tensor(rng.uniform(0.5, 1.5, n)))
    assert np.array_equal(lnm.poly_value().detach().numpy(), poly)  # set_poly is exact
    x = rng.normal(0.25, 0.4, size=(3, 40, n)) * (0.3 if synapse else 1.0)
    with torch.no_grad():
        s, rec = lnm(torch.tensor(x), record=True)
    alpha = lnm.alpha_value()
    s_ref, v_ref = reference_lnm(
        x, poly, lnm.v_th.detach().numpy(), np.full(n, -0.1), reset,
        None if alpha is None else alpha.detach().numpy(),
    )
    assert 0 < s_ref.sum() < s_ref.size
    assert np.array_equal(s.numpy(), s_ref)
    assert np.array_equal(rec["v"].numpy(), v_ref)
    assert ("c" in rec) == synapse


def test_reset_modes_by_hand() -> None:
    # beta = 0.5, v_th = 1, constant input 0.8: v' = 0.8, then 1.2 (spike), then it depends on reset.
    x = torch.full((1, 3, 1), 0.8, dtype=torch.float64)
    val = LNM(1, 1, beta=0.5, reset="value", v_reset=-0.25).double()
    sub = LNM(1, 1, beta=0.5, reset="subtract").double()
    s_val, r_val = val(x, record=True)
    s_sub, r_sub = sub(x, record=True)
    assert s_val.flatten().tolist() == [0.0, 1.0, 0.0] == s_sub.flatten().tolist()
    assert r_val["v"].flatten().tolist() == pytest.approx([0.8, -0.25, -0.125 + 0.8])
    assert r_sub["v"].flatten().tolist() == pytest.approx([0.8, 0.2, 0.1 + 0.8])


def test_spike_test_is_strict() -> None:
    # v' == v_th exactly does not spike; one step later v' = 1.5 does.
    x = torch.ones(1, 2, 1, dtype=torch.float64)
    s = LNM(1, 1, beta=0.5, threshold=1.0).double()(x)
    assert s.flatten().tolist() == [0.0, 1.0]


def test_recurrent_layer_t0_and_t1() -> None:
    layer = RecurrentLNM(3, degree=1, beta=0.5, threshold=1.0, rec_bias=True).double()
    w = torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.0, 0.0], [-0.2, 0.0, 0.0]], dtype=torch.float64)
    b = torch.tensor([0.01, 0.02, 0.03], dtype=torch.float64)
    with torch.no_grad():
        layer.rec.weight.copy_(w)
        layer.rec.bias.copy_(b)
    x = torch.tensor([[[2.0, 0.1, 0.1], [0.0, 0.1, 0.1]]], dtype=torch.float64)
    s, rec = layer(x, record=True)
    # t = 0: the recurrent path delivers rec(0) = b (no spikes yet), summed after the input.
    assert s[0, 0].tolist() == [1.0, 0.0, 0.0]
    v0 = x[0, 0] + b
    assert torch.equal(rec["v"][0, 0], torch.where(s[0, 0] > 0, torch.zeros(3, dtype=torch.float64), v0))
    # t = 1: v' = P(v) + (x[1] + (W s[0] + b)), summed in that order.
    expect = 0.5 * rec["v"][0, 0] + (x[0, 1] + (w @ s[0, 0] + b))
    assert torch.equal(rec["v"][0, 1], expect)
    assert torch.equal(rec["rec"][0, 0], w @ s[0, 0] + b)
    with pytest.raises(UserInputError):
        RecurrentLNM((2, 2))


def test_gradients_flow_and_forward_spikes_are_binary() -> None:
    torch.manual_seed(1)
    model = LNMSequential(nn.Linear(8, 16), LNM(16, 2, synapse=True), nn.Linear(16, 4), LNM(4, 2))
    x = (torch.rand(5, 12, 8) < 0.5).float()
    out = model(x)
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    out.sum().backward()
    for name in ("layers.fc1.weight", "layers.lnm1.theta_raw", "layers.lnm1.v_th", "layers.lnm1.alpha"):
        g = dict(model.named_parameters())[name].grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0, name


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_regularization_zero_at_lif_init_and_positive_when_unstable(degree: int) -> None:
    lnm = LNM(10, degree, beta=0.95)
    assert lnm.regularization().item() == 0.0
    poly = torch.zeros(degree + 1)
    poly[1] = 1.5  # expanding leak: |P'| > 1 on the whole range
    lnm.set_poly(poly)
    reg = lnm.regularization()
    assert reg.item() > 0
    reg.backward()
    assert lnm.theta_raw.grad is not None and lnm.theta_raw.grad[1] > 0  # pushes theta_1 down


def test_sequential_record_names_shapes_and_dtypes() -> None:
    torch.manual_seed(2)
    model = LNMSequential(
        nn.Conv2d(1, 2, 3, padding=1), LNM((2, 6, 6), 2, granularity="channel"),
        TorchSumPool2d(2), nn.Flatten(), nn.Linear(18, 5), RecurrentLNM(5, 1),
    )
    assert [n for n, _ in model.named_layers()] == ["conv1", "lnm1", "sumpool1", "flatten1", "fc1", "rlnm1"]
    x = (torch.rand(3, 7, 1, 6, 6) < 0.3).float()
    out, rec = model(x, record=True)
    assert out.shape == (3, 7, 5) and out.dtype == torch.float32
    assert set(rec) == {"conv1", "lnm1", "sumpool1", "flatten1", "fc1", "rlnm1", "rlnm1_rec"}
    assert set(rec["lnm1"]) == {"s", "v"} and rec["lnm1"]["v"].shape == (3, 7, 2, 6, 6)
    assert rec["sumpool1"]["out"].shape == (3, 7, 2, 3, 3)
    # Sum pooling is an exact sum of the window.
    s = rec["lnm1"]["s"]
    assert torch.equal(rec["sumpool1"]["out"][..., 0, 0], s[..., :2, :2].sum(dim=(-1, -2)))
    out64 = model.double()(x)
    assert out64.dtype == torch.float64 and out64.shape == out.shape


# -- export to the IR ---------------------------------------------------------------------------


def _conv_model() -> LNMSequential:
    torch.manual_seed(3)
    return LNMSequential(
        nn.Conv2d(1, 4, 3, padding=1, bias=False),
        LNM((4, 8, 8), 3, synapse=True, granularity="channel"),
        TorchSumPool2d(2),
        nn.AvgPool2d(2),
        nn.Flatten(),
        nn.Linear(16, 12),
        RecurrentLNM(12, 2, reset="subtract", threshold_granularity="neuron", rec_bias=True),
        nn.Linear(12, 10, bias=False),
        LNM(10, 2),
    ).double()


def test_model_to_ir_structure_values_and_schedule() -> None:
    model = _conv_model()
    g = model_to_ir(model, (1, 8, 8), dt=1e-3)
    sched = g.schedule()
    names = ["conv1", "lnm1", "sumpool1", "avgpool1", "flatten1", "fc1", "rlnm1", "fc2", "lnm2"]
    assert set(g.nodes) == {"input", "output", "rlnm1_rec", *names}
    assert isinstance(g.nodes["input"], Input) and isinstance(g.nodes["output"], Output)
    assert isinstance(g.nodes["conv1"], Conv2d) and g.nodes["conv1"].bias is None
    assert isinstance(g.nodes["sumpool1"], SumPool2d)
    flat = g.nodes["flatten1"]
    assert isinstance(flat, Flatten) and (flat.start_dim, flat.end_dim) == (0, -1)
    assert sched.shapes["lnm1"] == (4, 8, 8) and sched.shapes["flatten1"] == (16,)
    assert sched.shapes["output"] == (10,)
    # Recurrent layer: neuron -> rec (fresh) and rec -> neuron (delayed), feed-forward edge first.
    assert sched.inputs["rlnm1"] == (("fc1", False), ("rlnm1_rec", True))
    assert sched.inputs["rlnm1_rec"] == (("rlnm1", False),)
    # Values are exact float64 copies of what the forward pass uses.
    lnm1, rl = model["lnm1"], model["rlnm1"]
    n1 = g.nodes["lnm1"]
    assert isinstance(n1, Neuron) and n1.poly.shape == (4, 4, 8, 8) and n1.dt == 1e-3
    assert np.array_equal(n1.poly[:, :, 3, 5], lnm1.poly_value().detach().numpy()[:, :, 0, 0])
    assert np.array_equal(n1.syn_decay[:, 0, 0], lnm1.alpha_value().detach().numpy()[:, 0, 0])
    assert np.all(n1.in_gain == 1) and np.all(n1.syn_gain == 1)
    nr = g.nodes["rlnm1"]
    assert isinstance(nr, Neuron) and nr.reset == "subtract" and nr.syn_decay is None
    assert np.array_equal(nr.v_th, rl.v_th.detach().numpy())
    rec = g.nodes["rlnm1_rec"]
    assert isinstance(rec, Affine)
    assert np.array_equal(rec.weight, rl.rec.weight.detach().numpy())
    assert np.array_equal(rec.bias, rl.rec.bias.detach().numpy())
    fc2 = g.nodes["fc2"]
    assert isinstance(fc2, Affine) and fc2.bias is None
    assert g.metadata["producer"] == "lnm-deploy"
    assert None not in g.metadata.values()


def test_float32_model_exports_the_float32_values() -> None:
    model = build_digits_model(degree=2, hidden=8)
    g = model_to_ir(model, (64,))
    w32 = model["fc1"].weight.detach()
    assert w32.dtype == torch.float32
    assert g.nodes["fc1"].weight.dtype == np.float64
    assert np.array_equal(g.nodes["fc1"].weight, w32.double().numpy())


def test_unsupported_layers_raise_naming_the_layer() -> None:
    model = LNMSequential(nn.Linear(4, 4), nn.ReLU(), LNM(4, 1))
    with pytest.raises(UnsupportedError, match="relu1"):
        model_to_ir(model, (4,))
    ceil = LNMSequential(nn.AvgPool2d(2, ceil_mode=True), nn.Flatten(), LNM(4, 1))
    with pytest.raises(UnsupportedError, match="avgpool1"):
        model_to_ir(ceil, (1, 4, 4))
    with pytest.raises(UserInputError):
        LNMSequential(nn.Flatten(start_dim=0))


def test_nan_weight_raises_numeric_error() -> None:
    model = build_digits_model(degree=2, hidden=8)
    with torch.no_grad():
        model["fc2"].weight[0, 0] = float("nan")
    with pytest.raises(NumericError) as err:
        model_to_ir(model, (64,))
    assert err.value.node == "fc2"


# -- data and training --------------------------------------------------------------------------


def test_digits_data_and_encodings() -> None:
    d = load_digits_split()
    assert d.x_train.shape == (1437, 64) and d.x_test.shape == (360, 64)
    assert np.array_equal(load_digits_split().y_test, d.y_test)  # deterministic
    assert np.bincount(d.y_test).min() >= 35  # stratified
    r1 = rate_encode(d.x_test, 20, max_rate=0.5, seed=7)
    assert r1.shape == (360, 20, 64) and r1.dtype == np.float32
    assert np.array_equal(r1, rate_encode(d.x_test, 20, max_rate=0.5, seed=7))
    assert not np.array_equal(r1, rate_encode(d.x_test, 20, max_rate=0.5, seed=8))
    assert set(np.unique(r1)) <= {0.0, 1.0}
    assert r1[:, :, d.x_test.sum(0) == 0].sum() == 0  # pixels that are always 0 never spike
    expected = (d.x_test / 16 * 0.5).mean()
    assert abs(r1.mean() - expected) < 0.01
    c = current_encode(d.x_test[:2], 3)
    assert np.array_equal(c[:, 1], (d.x_test[:2] / 16).astype(np.float32))
    with pytest.raises(UserInputError):
        encode(d.x_test, 4, encoding="nope")  # type: ignore[arg-type]


def test_short_training_beats_chance() -> None:
    d = load_digits_split()
    x_tr = rate_encode(d.x_train[:400], 8, seed=0)
    x_te = rate_encode(d.x_test[:200], 8, seed=1)
    model = build_digits_model(degree=2, hidden=32, seed=0)
    before = evaluate(model, x_te, d.y_test[:200])
    hist = train(model, x_tr, d.y_train[:400], epochs=4, lr=1e-2, batch_size=32, seed=0, progress=False)
    after = evaluate(model, x_te, d.y_test[:200])
    assert len(hist.loss) == 4 and hist.loss[-1] < hist.loss[0]
    assert after > 0.5 and after > before + 0.2


@pytest.mark.slow
def test_digits_demo_reaches_90_percent_in_under_a_minute() -> None:
    t0 = time.perf_counter()
    res = train_digits(degree=2, progress=False)
    assert time.perf_counter() - t0 < 60
    assert res.test_accuracy >= 0.90
    g = model_to_ir(res.model, (64,))
    assert g.nodes["lnm1"].degree == 2
