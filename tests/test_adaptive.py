"""The adaptive-threshold LNM (``lnm_deploy.adaptive``, ``docs/adaptive.md``): torch layer, float
op, NIR round trip, and a calibrated degree-2 network bit-exact across every integer backend and
the big-integer oracle (``fx_oracle.OAdaptive``). The conformance suite covers the primitive on
random examples (``conformance.register_example("adaptive_poly", ...)``)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from conformance import backend_configs, check_backend

from lnm_deploy.adaptive import AdaptiveNeuron, FxAdaptivePoly
from lnm_deploy.backends import backend
from lnm_deploy.errors import DependencyError, GraphError, LNMDeployWarning, UnsupportedError
from lnm_deploy.execute import run_float
from lnm_deploy.ir import Affine, Neuron, sequential
from lnm_deploy.targets import load_target

Array = np.ndarray


def _graph(seed: int = 0, n_in: int = 10, n_hidden: int = 12, n_out: int = 4, synapse: bool = False) -> object:
    rng = np.random.default_rng(seed)
    return sequential([
        ("fc1", Affine(weight=rng.normal(0.25, 0.4, (n_hidden, n_in)))),
        ("a1", AdaptiveNeuron(shape=(n_hidden,), poly=[0.0, 0.85, -0.04], v_th=1.0,
                              syn_decay=0.6 if synapse else None, theta_decay=rng.uniform(0.7, 0.95, n_hidden),
                              theta_step=rng.uniform(0.2, 0.6, n_hidden))),
        ("fc2", Affine(weight=rng.normal(0.3, 0.4, (n_out, n_hidden)))),
        ("a2", AdaptiveNeuron(shape=(n_out,), poly=[0.0, 0.9, -0.03], v_th=0.8, reset="subtract",
                              theta_decay=0.8, theta_step=0.4)),
    ], (n_in,))


def _spikes(seed: int, batch: int = 24, steps: int = 30, n: int = 10, p: float = 0.35) -> Array:
    return (np.random.default_rng(seed).random((batch, steps, n)) < p).astype(np.float64)


# ----------------------------------------------------------------------------- float semantics


def test_theta_follows_the_documented_recursion() -> None:
    """One neuron by hand: input 2 at t = 0, 2, 3 with theta_0 1, d 0.5, step 1 and P(v) = 0:
    theta = 1, 2, 1.5, 2.25 ... and the spike at t = 3 is suppressed by the raised threshold."""
    node = AdaptiveNeuron(shape=(1,), poly=[0.0], v_th=1.0, theta_decay=0.5, theta_step=1.0)
    x = np.array([2.0, 0.0, 2.0, 2.0, 0.0, 2.0])[None, :, None]
    step = node.float_step("a", 1, np.float64)
    spikes, thetas = [], []
    for t in range(x.shape[1]):
        thetas.append(float(step.state("theta")[0, 0]))
        spikes.append(int(step(x[:, t])[0, 0]))
    assert thetas == [1.0, 2.0, 1.5, 2.25, 1.625, 1.3125]
    assert spikes == [1, 0, 1, 0, 0, 1]
    plain = Neuron(shape=(1,), poly=[0.0], v_th=1.0).float_step("n", 1, np.float64)
    assert [int(plain(x[:, t])[0, 0]) for t in range(x.shape[1])] == [1, 0, 1, 1, 0, 1]


def test_without_a_step_it_is_the_neuron() -> None:
    g = _graph(synapse=True)
    plain = sequential([(n, Neuron(shape=nd.shape, poly=nd.poly, v_th=nd.v_th, v_reset=nd.v_reset, reset=nd.reset,
                                   syn_decay=nd.syn_decay) if isinstance(nd, AdaptiveNeuron) else nd)
                        for n, nd in g.nodes.items() if n not in ("input", "output")], (10,))  # type: ignore[attr-defined]
    for nd in g.nodes.values():  # type: ignore[attr-defined]
        if isinstance(nd, AdaptiveNeuron):
            nd.theta_step[...] = 0.0
    x = _spikes(1)
    a, b = run_float(g, x), run_float(plain, x)  # type: ignore[arg-type]
    assert all(np.array_equal(a.spikes[k], b.spikes[k]) for k in ("a1", "a2"))


def test_validation() -> None:
    with pytest.raises(GraphError, match="theta_decay must lie in"):
        AdaptiveNeuron(shape=(2,), poly=[0.0, 0.9], v_th=1.0, theta_decay=1.5).validate("a")
    with pytest.raises(GraphError, match="needs v_th"):
        AdaptiveNeuron(shape=(2,), poly=[0.0, 0.9], v_th=None).validate("a")
    with pytest.raises(GraphError, match="'theta_decay' must lie in"):
        FxAdaptivePoly(shape=(2,), coef=[0, 1], shifts=(0,), theta_decay=5000).validate("f")


def test_torch_layer_matches_the_float_op_spike_for_spike() -> None:
    torch = pytest.importorskip("torch")
    from torch import nn

    from lnm_deploy.model import LNMSequential, model_to_ir
    from lnm_deploy.model.adaptive import AdaptiveLNM

    torch.manual_seed(0)
    layers = [nn.Linear(10, 12), AdaptiveLNM(12, 2, synapse=True, theta_granularity="neuron", dtype=torch.float64),
              nn.Linear(12, 4), AdaptiveLNM(4, 2, reset="subtract", dtype=torch.float64)]
    model = LNMSequential(*layers).double()
    model = dict(enumerate(model.layers.values()))  # type: ignore[assignment]
    seq = LNMSequential(*model.values())  # type: ignore[attr-defined]
    with torch.no_grad():
        model[1].set_poly([0.02, 0.85, 0.01])
        model[1].theta_decay.copy_(torch.rand(12, dtype=torch.float64) * 0.3 + 0.65)
        model[1].theta_step.copy_(torch.rand(12, dtype=torch.float64) * 0.5)
        model[3].set_poly([0.0, 0.9, 0.02])
    x = _spikes(3)
    g = model_to_ir(seq, (10,))
    assert {nd.kind for nd in g.nodes.values()} >= {"adaptive_neuron"}
    res = run_float(g, x, record=True)
    with torch.no_grad():
        h = model[0](torch.from_numpy(x))
        s1, rec = model[1](h, record=True)
        s2 = model[3](model[2](s1))
    name1, name2 = [n for n, nd in g.nodes.items() if nd.kind == "adaptive_neuron"]
    assert np.array_equal(res.spikes[name1], s1.numpy()) and np.array_equal(res.spikes[name2], s2.numpy())
    assert np.array_equal(res.states[name1]["theta"], rec["theta"].numpy())
    assert s1.numpy().any() and not s1.numpy().all()
    # gradients reach theta_0, the decay and the step through the surrogate
    out = seq(torch.from_numpy(x)).sum()
    out.backward()
    for p in ("v_th", "theta_decay", "theta_step"):
        assert getattr(model[1], p).grad is not None and torch.any(getattr(model[1], p).grad != 0), p


def test_nir_round_trip_is_exact(tmp_path: object) -> None:
    from lnm_deploy.nir_io import from_nir, to_nir

    g = _graph(synapse=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LNMDeployWarning)  # an untouched file reads without a warning
        back = from_nir(to_nir(g))  # type: ignore[arg-type]
    edited = to_nir(g)  # type: ignore[arg-type]
    edited.nodes["a1"].v_threshold = edited.nodes["a1"].v_threshold * 2.0
    with pytest.warns(LNMDeployWarning, match="'a1'.*disagree with its lnm-deploy metadata"):
        from_nir(edited)
    for name in ("a1", "a2"):
        a, b = g.nodes[name], back.nodes[name]  # type: ignore[attr-defined]
        assert type(b) is AdaptiveNeuron
        for f in ("poly", "v_th", "v_reset", "in_gain", "theta_decay", "theta_step"):
            assert np.array_equal(getattr(a, f), getattr(b, f)), f
        assert a.reset == b.reset and (a.syn_decay is None) == (b.syn_decay is None)
    x = _spikes(4)
    r1, r2 = run_float(g, x), run_float(back, x)  # type: ignore[arg-type]
    assert all(np.array_equal(r1.spikes[k], r2.spikes[k]) for k in ("a1", "a2"))
    # other tools see the membrane's LIF approximation
    import nir

    assert isinstance(to_nir(g).nodes["a1"], nir.CubaLIF)  # type: ignore[arg-type]


# ------------------------------------------------------------------------ calibrated on loihi2


@pytest.fixture(scope="module")
def calibrated() -> object:
    from lnm_deploy.calibrate import calibrate_network, load_recipe

    g = _graph(seed=2, synapse=True)
    return calibrate_network(g, _spikes(5, batch=48), load_target("loihi2"), load_recipe("default"),  # type: ignore[arg-type]
                             progress=False)


def test_calibrated_for_loihi2_uses_the_threshold_register(calibrated: object) -> None:
    q = calibrated.quantized  # type: ignore[attr-defined]
    assert {q.layers[n].primitive for n in ("a1", "a2")} == {"adaptive_poly"}
    assert all(q.layers[n].proof["holds"] for n in ("a1", "a2"))
    fx = q.fx.nodes["a1"]
    assert isinstance(fx, FxAdaptivePoly) and fx.degree == 2 and np.any(fx.theta_step > 0)
    assert fx.state_names() == ("v", "c", "theta")
    with pytest.raises(UnsupportedError, match="adaptive_poly"):
        from lnm_deploy.targets import check_graph

        check_graph(q.fx, load_target("loihi2-lif"))


@pytest.mark.parametrize(("name", "config"), backend_configs(), ids=lambda v: str(v))
def test_calibrated_network_is_bit_exact_on_every_backend(calibrated: object, name: str, config: str) -> None:
    """fxsim (numpy, numba), ONNX and Lava against the big-integer oracle, spikes and states."""
    b = backend(name)
    try:
        kinds = b.kinds() if b.kinds is not None else frozenset()
    except DependencyError as e:
        pytest.skip(str(e))
    assert "adaptive_poly" in kinds
    fx = calibrated.quantized.fx  # type: ignore[attr-defined]
    x = _spikes(6, batch=3 if name == "lava" else 16, steps=25).astype(np.uint8)
    check_backend(b, config, fx, x, label="calibrated adaptive net")


def test_float_and_fixed_point_agree(calibrated: object) -> None:
    """The float graph and the integer network on held-out spikes: per-layer spike agreement
    (fraction of equal spikes) and spike-count correlation, reported and high."""
    from lnm_deploy.fxsim import run_fx

    fx, g = calibrated.quantized.fx, _graph(seed=2, synapse=True)  # type: ignore[attr-defined]
    x = _spikes(7, batch=64)
    fl, fi = run_float(g, x), run_fx(fx, x.astype(np.uint8), kernels="numpy")  # type: ignore[arg-type]
    for layer in ("a1", "a2"):
        a, b = fl.spikes[layer].astype(bool), fi.spikes[layer].astype(bool)
        agree = float(np.mean(a == b))
        ca, cb = a.sum(axis=1).reshape(-1), b.sum(axis=1).reshape(-1)
        corr = float(np.corrcoef(ca, cb)[0, 1])
        print(f"{layer}: spike agreement {agree:.4f}, count correlation {corr:.4f}, rates {a.mean():.3f}/{b.mean():.3f}")
        assert a.any() and agree >= 0.95 and corr >= 0.9, (layer, agree, corr)
