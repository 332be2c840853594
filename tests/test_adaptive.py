"""The adaptive-threshold LNM (``lnm_deploy.adaptive``, ``docs/adaptive.md``): torch layer, float
op, NIR round trip, and a calibrated degree-2 network bit-exact across every integer backend and
the big-integer oracle (``fx_oracle.OAdaptive``). The conformance suite covers the primitive on
random examples (``conformance.register_example("adaptive_poly", ...)``)."""

from __future__ import annotations

import sys
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


@pytest.mark.parametrize(("net", "kind", "seed", "steps"), [("calibrated", "adaptive_poly", 6, 25),
                                                       ("calibrated_lif", "atrlif", 11, 30)])
@pytest.mark.parametrize(("name", "config"), backend_configs(), ids=lambda v: str(v))
def test_calibrated_network_is_bit_exact_on_every_backend(request: pytest.FixtureRequest, net: str, kind: str,
                                                          seed: int, steps: int, name: str, config: str) -> None:
    """fxsim (numpy, numba), ONNX and Lava against the big-integer oracle, spikes and states: the
    degree-2 adaptive network on loihi2 (``adaptive_poly``) and the degree-1 one on loihi2-lif
    (Lava's own ATRLIF, ``fx_oracle.OATRLIF``)."""
    b = backend(name)
    try:
        kinds = b.kinds() if b.kinds is not None else frozenset()
    except DependencyError as e:
        pytest.skip(str(e))
    assert kind in kinds
    fx = request.getfixturevalue(net).quantized.fx
    x = _spikes(seed, batch=3 if name == "lava" else 16, steps=steps).astype(np.uint8)
    check_backend(b, config, fx, x, label=f"calibrated {kind} net")


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


# ---------------------------------------------- refractoriness and Lava's ATRLIF (loihi2-lif)


def _atr_graph(seed: int = 0, n_in: int = 10, n_hidden: int = 12, n_out: int = 4) -> object:
    """A degree-1 adaptive network with refractoriness: exactly Lava's ATRLIF, layer by layer."""
    rng = np.random.default_rng(seed)
    return sequential([
        ("fc1", Affine(weight=rng.normal(0.25, 0.4, (n_hidden, n_in)))),
        ("a1", AdaptiveNeuron(shape=(n_hidden,), poly=[0.0, 0.9], v_th=1.0, syn_decay=0.6, theta_decay=0.8,
                              theta_step=0.3, refractory_decay=0.9)),
        ("fc2", Affine(weight=rng.normal(0.3, 0.4, (n_out, n_hidden)))),
        ("a2", AdaptiveNeuron(shape=(n_out,), poly=[0.0, 0.85], v_th=0.8, theta_decay=0.7, theta_step=0.4,
                              refractory_decay=0.85)),
    ], (n_in,))


def test_refractory_state_follows_the_documented_recursion() -> None:
    """Neurons by hand, theta fixed at 1 and d_r 0.5. P(v) = v, input 1.5 each step: v' = 1.5, 3,
    4.5, ... (never reset); r decays by half, then jumps by 2 theta at a spike: 0 -> 2, 1 -> 3,
    1.5 -> 3.5, ...; v' - r > 1 every step. P(v) = v / 2, input 1.2: v' = 1.2 (r 0: spike, r 2),
    1.8 (r 1: 0.8, silent), 2.1 (r 0.5: 1.6, spike)."""
    node = AdaptiveNeuron(shape=(1,), poly=[0.0, 1.0], v_th=1.0, theta_decay=0.0, theta_step=0.0,
                          refractory_decay=0.5)
    assert node.state_names[-1] == "r"
    step = node.float_step("a", 1, np.float64)
    spikes, rs, vs = [], [], []
    for _ in range(5):
        spikes.append(int(step(np.array([[1.5]]))[0, 0]))
        rs.append(float(step.state("r")[0, 0]))
        vs.append(float(step.state("v")[0, 0]))
    assert vs == [1.5, 3.0, 4.5, 6.0, 7.5]  # never reset
    assert rs == [2.0, 3.0, 3.5, 3.75, 3.875]
    assert spikes == [1, 1, 1, 1, 1]
    weak = AdaptiveNeuron(shape=(1,), poly=[0.0, 0.5], v_th=1.0, refractory_decay=0.5).float_step("b", 1, np.float64)
    assert [int(weak(np.array([[1.2]]))[0, 0]) for _ in range(3)] == [1, 0, 1]


def test_refractory_validation_and_nir_round_trip() -> None:
    from lnm_deploy.nir_io import from_nir, to_nir

    with pytest.raises(GraphError, match="refractory_decay must lie in"):
        AdaptiveNeuron(shape=(2,), poly=[0.0, 0.9], v_th=1.0, refractory_decay=1.5).validate("a")
    g = _atr_graph()
    back = from_nir(to_nir(g))  # type: ignore[arg-type]
    for name in ("a1", "a2"):
        assert np.array_equal(back.nodes[name].refractory_decay, g.nodes[name].refractory_decay)  # type: ignore[attr-defined]
    assert back.nodes["a1"].state_names[-1] == "r"
    plain = from_nir(to_nir(_graph()))  # type: ignore[arg-type]
    assert plain.nodes["a1"].refractory_decay is None


def test_torch_refractory_layer_matches_the_float_op() -> None:
    import torch
    from torch import nn

    from lnm_deploy.model import LNMSequential, model_to_ir
    from lnm_deploy.model.adaptive import AdaptiveLNM

    torch.manual_seed(1)
    lnm = AdaptiveLNM(6, 1, refractory_decay=0.8, dtype=torch.float64)
    seq = LNMSequential(nn.Linear(10, 6).double(), lnm)
    with torch.no_grad():
        lnm.set_poly([0.0, 0.9])
    assert AdaptiveLNM.from_config(lnm.config()).refractory_decay == 0.8
    x = _spikes(8, batch=6)
    g = model_to_ir(seq, (10,))
    name = next(n for n, nd in g.nodes.items() if nd.kind == "adaptive_neuron")
    res = run_float(g, x, record=True)
    with torch.no_grad():
        s, rec = lnm(next(iter(seq.layers.values()))(torch.from_numpy(x)), record=True)
    assert np.array_equal(res.spikes[name], s.numpy()) and s.numpy().any()
    assert np.array_equal(res.states[name]["r"], rec["r"].numpy())
    with pytest.raises(Exception, match="refractory_decay must lie in"):
        AdaptiveLNM(3, 1, refractory_decay=2.0)


@pytest.fixture(scope="module")
def calibrated_lif() -> object:
    from lnm_deploy.calibrate import calibrate_network, load_recipe

    return calibrate_network(_atr_graph(), _spikes(5, batch=32), load_target("loihi2-lif"),  # type: ignore[arg-type]
                             load_recipe("default"), progress=False)


def test_degree1_refractory_network_maps_exactly_onto_atrlif(calibrated_lif: object) -> None:
    from lnm_deploy.adaptive import FxATRLIF, atrlif_exact
    from lnm_deploy.fxsim import run_fx

    q = calibrated_lif.quantized  # type: ignore[attr-defined]
    g = _atr_graph()
    for n in ("a1", "a2"):
        rec = q.layers[n]
        assert atrlif_exact(g.nodes[n])  # type: ignore[attr-defined]
        assert rec.primitive == "atrlif" and rec.proof["holds"] and rec.approximations == [] and rec.fit == {}
        assert isinstance(q.fx.nodes[n], FxATRLIF) and q.fx.nodes[n].theta_step > 0 and q.fx.nodes[n].dr > 0
    # the dequantized float graph is the integer network (same spikes), the float one is close
    x = _spikes(9, batch=16)
    fi = run_fx(q.fx, x.astype(np.uint8), kernels="numpy")
    dq, fl = run_float(q.graph, x), run_float(_atr_graph(), x)  # type: ignore[arg-type]
    for n in ("a1", "a2"):
        assert fi.spikes[n].any() and np.array_equal(dq.spikes[n], fi.spikes[n]), n
        agree = float(np.mean(fl.spikes[n] == fi.spikes[n]))
        print(f"{n}: float/fixed spike agreement {agree:.4f}")
        assert agree >= 0.9, (n, agree)


def test_atrlif_network_runs_on_lavas_atrlif_bit_exact(calibrated_lif: object) -> None:
    """The calibrated network on Lava's own ATRLIF process (lava.proc.atrlif, fixed_pt) against
    fxsim: spikes and every state (i, v, theta, r) np.array_equal, and fxsim against the oracle."""
    pytest.importorskip("lava")
    from lnm_deploy.fxsim import run_fx
    from lnm_deploy.lava_backend import run_lava, supported_kinds
    from lnm_deploy.lava_backend.runner import LAVA_KINDS

    assert "atrlif" in supported_kinds() and "atrlif" in LAVA_KINDS  # a process of its own: Lava's ATRLIF
    fx = calibrated_lif.quantized.fx  # type: ignore[attr-defined]
    x = _spikes(10, batch=4, steps=40).astype(np.uint8)
    lv, fs = run_lava(fx, x, record=True), run_fx(fx, x, record=True)
    for n in ("a1", "a2"):
        assert fs.spikes[n].any() and np.array_equal(lv.spikes[n], fs.spikes[n]), n
        assert set(lv.states[n]) == {"i", "v", "theta", "r"}
        for k in ("i", "v", "theta", "r"):
            assert np.array_equal(lv.states[n][k], fs.states[n][k]), (n, k)
    check_backend(backend("fxsim"), "numpy", fx, x, label="calibrated ATRLIF net")


def test_polynomial_adaptive_network_is_fitted_onto_atrlif_with_its_cost() -> None:
    """A degree-2 adaptive network (reset, no refractoriness) on loihi2-lif: the LIF fit of each
    polynomial (rms residual reported in the record), the reset replaced by ATRLIF's refractory
    state, both listed and warned about; the integer network still spikes."""
    from lnm_deploy.calibrate import calibrate_network, load_recipe
    from lnm_deploy.fxsim import run_fx

    with pytest.warns(LNMDeployWarning, match="fitted by a LIF"):
        c = calibrate_network(_graph(seed=2), _spikes(5, batch=32), load_target("loihi2-lif"),  # type: ignore[arg-type]
                              load_recipe("default"), progress=False)
    q = c.quantized
    for n in ("a1", "a2"):
        rec = q.layers[n]
        assert rec.primitive == "atrlif" and rec.fit["degree"] == 2 and rec.fit["rms_residual"] > 0
        assert any("rms residual" in a for a in rec.approximations)
        assert any("refractory state" in a for a in rec.approximations)
    assert run_fx(q.fx, _spikes(6, batch=4).astype(np.uint8)).spikes["a1"].any()


def test_atrlif_node_rules() -> None:
    from lnm_deploy.adaptive import FxATRLIF
    from lnm_deploy.targets import check_graph

    with pytest.raises(GraphError, match="'dtheta' must lie in"):
        FxATRLIF(shape=(2,), dtheta=5000).validate("f")
    with pytest.raises(GraphError, match="must be an integer"):
        FxATRLIF(shape=(2,), theta_0=1.5)
    node = FxATRLIF(shape=(3,), theta_0=4095, theta_step=10)
    assert node.theta_init.tolist() == [4095 << 6] * 3 and node.state_names() == ("i", "v", "theta", "r")
    from lnm_deploy.fixedpoint import FxDense, FxGraph, FxInput, FxOutput

    g = FxGraph(nodes={"input": FxInput(shape=(2,)), "fc": FxDense(weight=np.full((3, 2), 2, np.int64)),
                       "n": FxATRLIF(shape=(3,), theta_0=5000), "output": FxOutput()},
                edges=[("input", "fc"), ("fc", "n"), ("n", "output")])
    with pytest.raises(GraphError, match=r"theta_0 in \[5000, 5000\] exceeds target 'loihi2-lif' range \[0, 4095\]"):
        check_graph(g, load_target("loihi2-lif"))
    with pytest.raises(UnsupportedError, match=r"'atrlif'.*loihi2-lif"):
        check_graph(g, load_target("loihi2"))
    neg = _atr_graph()
    neg.nodes["a2"].theta_step[...] = -0.1  # type: ignore[attr-defined]
    from lnm_deploy.calibrate import calibrate_network, load_recipe

    with pytest.raises(UnsupportedError, match="theta_step >= 0"):
        calibrate_network(neg, _spikes(5, batch=8), load_target("loihi2-lif"), load_recipe("default"),  # type: ignore[arg-type]
                          progress=False)


def test_atrlif_artifact_round_trip(calibrated_lif: object, tmp_path: object) -> None:
    from pathlib import Path

    from lnm_deploy.adaptive import FxATRLIF
    from lnm_deploy.artifact import read_artifact, write_artifact
    from lnm_deploy.fxsim import run_fx

    path = Path(str(tmp_path)) / "atr.nir"
    art = calibrated_lif.artifact  # type: ignore[attr-defined]
    write_artifact(art, path)
    back = read_artifact(path)
    assert isinstance(back.fx.nodes["a1"], FxATRLIF)
    x = _spikes(12, batch=4).astype(np.uint8)
    r1, r2 = run_fx(art.fx, x, record=True), run_fx(back.fx, x, record=True)
    assert all(np.array_equal(r1.spikes[k], r2.spikes[k]) for k in r1.spikes)


def test_atrlif_exact_is_false_where_the_mapping_approximates() -> None:
    """A degree-2 leak, per-neuron thresholds, no refractoriness or a negative jump: not exact."""
    from lnm_deploy.adaptive import atrlif_exact

    base = {"shape": (3,), "poly": [0.0, 0.9], "v_th": 1.0, "theta_decay": 0.8, "theta_step": 0.3,
            "refractory_decay": 0.9}
    assert atrlif_exact(AdaptiveNeuron(**base))
    assert atrlif_exact(AdaptiveNeuron(**{**base, "poly": [0.2]}))  # degree 0: no leak term to check
    for change in ({"poly": [0.0, 0.9, 0.05]}, {"v_th": [1.0, 1.1, 1.2]}, {"refractory_decay": None},
                   {"theta_step": -0.1}):
        assert not atrlif_exact(AdaptiveNeuron(**{**base, **change})), change


def test_threshold_regulariser_keeps_the_threshold_positive() -> None:
    """0 while the threshold cannot reach 0 under any spike train; else the squared reach below 0
    (worked by hand: theta_0 1, jump -0.5, d 0.9: low = 1 - 0.5 / 0.1 = -4, penalty 16), with a
    gradient that raises the jump and shortens the threshold's memory."""
    torch = pytest.importorskip("torch")
    from lnm_deploy.model.adaptive import AdaptiveLNM

    m = AdaptiveLNM(4, 2, theta_decay=0.9, theta_step=0.2)
    base = float(m.regularization())
    assert base == float(super(AdaptiveLNM, m).regularization()) == 0.0
    with torch.no_grad():
        m.theta_step.fill_(-0.5)
    low, high = m.threshold_range()
    assert float(low) == pytest.approx(-4.0) and float(high) == pytest.approx(1.0)
    r = m.regularization()
    assert float(r) == pytest.approx(16.0)
    r.backward()
    assert float(m.theta_step.grad) < 0 and float(m.theta_decay.grad) > 0  # descent: jump up, decay down


@pytest.mark.lava
@pytest.mark.skipif(sys.version_info[:2] != (3, 10), reason="lava-nc 0.10 installs on Python 3.10 only")
def test_a_threshold_that_never_relaxes_is_noted_and_its_bound_is_the_spiking_limit() -> None:
    """theta_decay 1 (dtheta 0) with a jump: the threshold grows by one jump per spike, so the
    geometric bound does not exist. The layer record says so, the overflow proof bounds theta by
    the membrane's limit plus one jump (a spike needs v - r >= theta, v saturated) inside Lava's
    int32 registers, and Lava's ATRLIF stays bit-exact with fxsim on a long run."""
    from lnm_deploy.calibrate import calibrate_network, load_recipe
    from lnm_deploy.fxsim import run_fx
    from lnm_deploy.lava_backend import run_lava

    rng = np.random.default_rng(2)
    g = sequential([
        ("fc1", Affine(weight=rng.normal(0.5, 0.3, (6, 10)))),
        ("a1", AdaptiveNeuron(shape=(6,), poly=[0.0, 0.9], v_th=1.0, theta_decay=1.0, theta_step=0.3,
                              refractory_decay=0.9)),
    ], (10,))
    x = _spikes(3, batch=8, steps=60)
    with pytest.warns(LNMDeployWarning, match="theta_decay rounds to 1"):
        res = calibrate_network(g, x, load_target("loihi2-lif"), load_recipe("default"), progress=False)
    rec = res.quantized.layers["a1"]
    assert any("does not relax" in a for a in rec.approximations)
    p = rec.proof
    assert not p["theta_bounded_geometrically"] and p["holds"]
    assert p["theta_bound_int"] >= p["state_limit"] + p["theta_step"] * 64
    assert p["theta_bound_int"] <= p["register_limit"] and p["refractory_bound_int"] <= p["register_limit"]
    fx = res.artifact.fx
    ref, got = run_fx(fx, x[:2], record=True), run_lava(fx, x[:2], record=True)
    assert ref.spikes["a1"].sum() > 0
    for k in ref.states["a1"]:
        assert np.array_equal(got.states["a1"][k], ref.states["a1"][k]), k
    assert np.array_equal(got.spikes["a1"], ref.spikes["a1"])


def test_a_refractory_layer_on_loihi2_is_refused_saying_why() -> None:
    """loihi2 offers adaptive_poly, which has no refractory state: the refusal says so and where
    the layer can go, rather than listing adaptive_poly as both possible and offered."""
    from lnm_deploy.calibrate import calibrate_network, load_recipe

    with pytest.raises(UnsupportedError, match=r"node 'a1'.*adaptive_poly: the layer is refractory.*atrlif"):
        calibrate_network(_atr_graph(), _spikes(5, batch=8), load_target("loihi2"),  # type: ignore[arg-type]
                          load_recipe("default"), progress=False)


def test_divergence_replay_covers_adaptive_layers(calibrated: object) -> None:
    """verify's divergence replay steps an adaptive layer with its own float step: with nothing
    swapped it is the float executor's trace, and a real divergence gets a cause."""
    from lnm_deploy.core import first_divergence
    from lnm_deploy.fxsim import run_fx
    from lnm_deploy.verify import explain_divergence, replay_neuron

    art = calibrated.artifact  # type: ignore[attr-defined]
    g = _graph(seed=2, synapse=True)
    x = _spikes(7, batch=16).astype(np.uint8)
    fl, fi = run_float(g, x, record=True), run_fx(art.fx, x)  # type: ignore[arg-type]
    spikes = {**fl.spikes, g.input_name: x}  # type: ignore[attr-defined]
    for flat in range(3):
        tr = replay_neuron(g, g, "a1", flat, 2, x.shape[1] - 1, spikes)  # type: ignore[arg-type]
        assert np.array_equal(tr["s"], fl.spikes["a1"][2, :, flat])
    div = first_divergence(fl.spikes, fi.spikes, ["a1", "a2"])
    assert div is not None  # fitted and rounded: some spike differs on 16 samples
    d = explain_divergence(g, art, div, fl, x)  # type: ignore[arg-type]
    assert not d["cause"].startswith("undetermined"), d
