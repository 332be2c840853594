"""The programmable neuron's current-bias register (``FxPoly.c_bias``, docs/fixed-point.md section 5).

A recurrent CubaLIF network whose Affine synapses carry biases, built with snnTorch (``RSynaptic``
and ``Synaptic`` after biased ``nn.Linear`` layers), exported with snnTorch's own exporter and read
with ``from_nir``, deploys on ``loihi2`` with the biases in the register: every layer agrees with
the float model on random input at >= 0.99, and fxsim (both engines), ONNX and Lava agree bit for
bit. Without the register (the steady-state fold, ``c_bias`` range (0, 0)) and on the stock LIF
(``loihi2-lif``, which keeps the fold and warns with a bound on its cost) the agreement is lower.

The network's weights lie on the 8-bit grids min-max calibration picks and its decays on 1/32, so
that what the comparison measures is the bias: with random weights the rounding of the weights
alone costs 1-2 points in this recurrent network, whatever is done with the bias.
"""

from __future__ import annotations

import dataclasses
import re
import warnings

import numpy as np
import pytest

from lnm_deploy.calibrate import calibrate_network, load_recipe
from lnm_deploy.errors import GraphError, LNMDeployWarning, UnsupportedError
from lnm_deploy.execute import run_float
from lnm_deploy.fixedpoint import FxDense, FxPoly
from lnm_deploy.fixedpoint.encode import decode_fxgraph, encode_fxgraph
from lnm_deploy.fxsim import run_fx
from lnm_deploy.ir import Affine, Graph
from lnm_deploy.targets import check_graph, load_target, target_from_toml
from lnm_deploy.targets.spec import Target

N_IN, N_H, N_OUT = 16, 12, 8
LOIHI2 = load_target("loihi2")


def without_register(t: Target) -> Target:
    """``t`` with the programmable neuron's current-bias register removed (range (0, 0))."""
    sections = dict(t.sections)
    sections["poly"] = dataclasses.replace(t.poly, c_bias=(0, 0))
    return Target(t.info, sections, t.path, resources=t.resources, energy=t.energy)


def _grid_weights(gen: object, n_out: int, n_in: int, k_max: int, step: float) -> object:
    import torch

    k = torch.randint(-k_max, k_max + 1, (n_out, n_in), generator=gen)  # type: ignore[arg-type]
    k[0, 0] = k_max  # the largest weight sets the grid (min-max calibration)
    return k.to(torch.float32) * step


def snntorch_graph(zero_bias: bool = False) -> Graph:
    """RSynaptic (all-to-all recurrent Linear with a bias) after a biased Linear, then a biased
    Linear into a Synaptic; exported by snnTorch's ``export_to_nir``, read by ``from_nir``."""
    import snntorch as snn
    import torch
    from snntorch.export_nir import export_to_nir
    from torch import nn

    from lnm_deploy.nir_io import from_nir

    gen = torch.Generator().manual_seed(3)

    def lin(n_in: int, n_out: int, k_max: int) -> nn.Linear:
        layer = nn.Linear(n_in, n_out)
        with torch.no_grad():
            layer.weight.copy_(_grid_weights(gen, n_out, n_in, k_max, 2.0**-7))
            layer.bias.uniform_(-0.05, 0.05, generator=gen)
        return layer

    def decays(n: int, lo: int, hi: int) -> torch.Tensor:
        return torch.randint(lo, hi + 1, (n,), generator=gen).to(torch.float32) / 32

    def thresholds(n: int) -> torch.Tensor:
        return torch.rand(n, generator=gen) * 0.5 + 1.0

    rs = snn.RSynaptic(alpha=decays(N_H, 28, 31), beta=decays(N_H, 24, 28), threshold=thresholds(N_H),
                       linear_features=N_H, init_hidden=True, reset_mechanism="zero")
    with torch.no_grad():  # snnTorch 1.0's RSynaptic needs reset_delay (its default) with init_hidden
        rs.recurrent.weight.copy_(_grid_weights(gen, N_H, N_H, 24, 2.0**-7))
        rs.recurrent.bias.uniform_(-0.05, 0.05, generator=gen)
    sy = snn.Synaptic(alpha=decays(N_OUT, 28, 31), beta=decays(N_OUT, 24, 28), threshold=thresholds(N_OUT),
                      init_hidden=True, reset_mechanism="zero", reset_delay=False)
    net = nn.Sequential(lin(N_IN, N_H, 127), rs, lin(N_H, N_OUT, 127), sy)
    if zero_bias:
        with torch.no_grad():
            for m in (net[0], rs.recurrent, net[2]):
                m.bias.zero_()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nirtorch's deprecations; snnTorch's reset written as reset-to-zero
        g = export_to_nir(net, torch.zeros(1, N_IN), ignore_dims=[0])
        return from_nir(g, producer="snntorch")


@pytest.fixture(scope="module")
def graph() -> Graph:
    pytest.importorskip("snntorch")
    return snntorch_graph()


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(7)
    return ((rng.random((48, 50, N_IN)) < 0.3).astype(np.uint8),
            (rng.random((48, 50, N_IN)) < 0.3).astype(np.uint8))


def agreements(graph: Graph, target: Target, data: tuple[np.ndarray, np.ndarray]) -> tuple[dict[str, float], object]:
    xc, xt = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LNMDeployWarning)
        res = calibrate_network(graph, xc, target, load_recipe("default"), progress=False)
    ref, fixed = run_float(graph, xt), run_fx(res.artifact.fx, xt)
    for layer, s in ref.spikes.items():
        assert 0.05 < s.mean() < 0.7, f"layer {layer} rate {s.mean():.3f}: the comparison would prove little"
    return {k: float(np.mean(s == fixed.spikes[k])) for k, s in ref.spikes.items()}, res


def test_graph_is_a_biased_recurrent_cubalif(graph: Graph) -> None:
    biased = [n for n, node in graph.nodes.items() if isinstance(node, Affine) and node.bias is not None
              and np.any(node.bias != 0)]
    assert len(biased) == 3 and graph.delays, (biased, graph.delays)
    assert all(getattr(graph.nodes[n], "syn_decay", None) is not None for n in ("1.lif", "3"))


def test_register_deploys_on_loihi2(graph: Graph, data: tuple[np.ndarray, np.ndarray]) -> None:
    agree, res = agreements(graph, LOIHI2, data)
    old, _ = agreements(graph, without_register(LOIHI2), data)
    zeroed, _ = agreements(snntorch_graph(zero_bias=True), LOIHI2, data)
    print(f"\nfloat-vs-fixed agreement: register {agree}, steady-state fold {old}, biases zeroed {zeroed}")
    assert all(a >= 0.99 for a in agree.values()), agree
    assert min(old.values()) < min(agree.values()) - 0.02, (old, agree)  # what the fold cost
    for layer in agree:
        node, rec = res.artifact.fx.nodes[layer], res.quantized.layers[layer]  # type: ignore[attr-defined]
        assert isinstance(node, FxPoly) and node.c_bias is not None and np.any(node.c_bias != 0)
        assert not rec.approximations, rec.approximations
        cb = rec.proof["current_bias"]
        assert cb["scale_real_per_lsb"] == rec.q and cb["max_abs_int"] == int(np.abs(node.c_bias).max())
        assert cb["max_abs_error_real_per_step"] <= rec.q / 2 * (1 + 1e-9)
        # the static bound includes the register
        assert rec.proof["static_bounds"]["x"] == (rec.proof["input_bound_int"] << node.in_shift) + cb["max_abs_int"]
    # the dequantized graph carries the bias on a same-step synapse and runs like the integers
    deq = res.artifact.graph  # type: ignore[attr-defined]
    assert np.any(deq.nodes["0"].bias != 0) and np.any(deq.nodes["2"].bias != 0) and deq.nodes["1.w_rec"].bias is None
    x = data[1][:8]
    d, f = run_float(deq, x), run_fx(res.artifact.fx, x)  # type: ignore[attr-defined]
    assert all(np.mean(d.spikes[k] == f.spikes[k]) >= 0.999 for k in d.spikes)


def test_backends_bit_exact(graph: Graph, data: tuple[np.ndarray, np.ndarray]) -> None:
    _, res = agreements(graph, LOIHI2, data)
    fx = res.artifact.fx  # type: ignore[attr-defined]
    x = data[1][:6, :40]
    ref = run_fx(fx, x, record=True, kernels="numpy")
    runs = {"numba": lambda: run_fx(fx, x, record=True, kernels="numba")}
    pytest.importorskip("onnxruntime")
    from lnm_deploy.onnx_backend import run_onnx

    runs["onnx"] = lambda: run_onnx(fx, x, record=True)
    for name, run in runs.items():
        got = run()
        for k in ref.spikes:
            assert np.array_equal(ref.spikes[k], got.spikes[k]), (name, k)
            for s in ref.states[k]:
                assert np.array_equal(ref.states[k][s], got.states[k][s]), (name, k, s)


@pytest.mark.lava
def test_lava_bit_exact(graph: Graph, data: tuple[np.ndarray, np.ndarray]) -> None:
    pytest.importorskip("lava")
    from lnm_deploy.lava_backend import run_lava

    _, res = agreements(graph, LOIHI2, data)
    fx = res.artifact.fx  # type: ignore[attr-defined]
    x = data[1][:2, :25]
    ref, got = run_fx(fx, x, record=True), run_lava(fx, x, record=True)
    for k in ref.spikes:
        assert np.array_equal(ref.spikes[k], got.spikes[k]), k
        for s in ref.states[k]:
            assert np.array_equal(ref.states[k][s], got.states[k][s]), (k, s)


def test_stock_lif_warns_with_the_cost(graph: Graph, data: tuple[np.ndarray, np.ndarray]) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = calibrate_network(graph, data[0], load_target("loihi2-lif"), load_recipe("default"), progress=False)
    said = [str(w.message) for w in caught if issubclass(w.category, LNMDeployWarning)]
    for layer in ("1.lif", "3"):  # named, with the bound on the transient's error
        assert any(re.match(rf"layer '{re.escape(layer)}': bias entering the synaptic current folded .*differs by at "
                            r"most [0-9.e+-]+ \(\d+% of the threshold", m) for m in said), said
    for layer, rec in res.quantized.layers.items():
        assert any("steady state" in a and "below 1 % after" in a for a in rec.approximations), (layer, rec)
    agree, _ = agreements(graph, load_target("loihi2-lif"), data)
    print(f"\nloihi2-lif float-vs-fixed agreement (steady-state fold): {agree}")


def test_no_register_without_a_synapse() -> None:
    """A bias into a neuron without a current state stays in coef[0] (exact there)."""
    from lnm_deploy.ir import Neuron, sequential

    rng = np.random.default_rng(0)
    x = (rng.random((16, 30, 5)) < 0.3).astype(np.uint8)
    for syn_decay, bias in ((None, rng.uniform(0.05, 0.1, 6)), (0.8, np.zeros(6))):
        g = sequential([("fc", Affine(weight=rng.normal(0, 1, (6, 5)), bias=bias)),
                        ("n", Neuron(shape=(6,), poly=[0.0, 0.9, 0.01], v_th=1.0, syn_decay=syn_decay))], (5,))
        res = calibrate_network(g, x, LOIHI2, load_recipe("default"), progress=False)
        node = res.artifact.fx.nodes["n"]
        assert isinstance(node, FxPoly) and node.c_bias is None
        assert "current_bias" not in res.quantized.layers["n"].proof


# ----------------------------------------------------------------------- the field and the contract


def _poly(**kw: object) -> FxPoly:
    base: dict[str, object] = dict(shape=(3,), coef=[[10, 20, 30], [3000, 3500, 4000]], shifts=(12,), vth=50000,
                                   in_shift=16, syn_decay=[100, 400, 4096])
    base.update(kw)
    return FxPoly(**base)  # type: ignore[arg-type]


def test_field_defaults_and_serialisation() -> None:
    from fx_nets import chain

    plain = chain([("d", FxDense(weight=np.full((3, 2), 64))), ("p", _poly())], (2,))
    assert "c_bias" not in encode_fxgraph(plain)["nodes"]["p"]  # old artifacts: byte-identical, and they load
    sm = 2**23 - 1
    biased = chain([("d", FxDense(weight=np.full((3, 2), 64))), ("p", _poly(c_bias=[sm, -sm, 7]))], (2,))
    back = decode_fxgraph(encode_fxgraph(biased))
    assert np.array_equal(back.nodes["p"].c_bias, [sm, -sm, 7])  # type: ignore[attr-defined]
    with pytest.raises(GraphError, match="c_bias"):
        _poly(c_bias=[sm + 1, 0, 0]).validate("p")
    with pytest.raises(GraphError, match="does not fit"):
        _poly(c_bias=[1, 2])


def test_design_rule_and_optional_key() -> None:
    from fx_nets import chain

    sm = 2**23 - 1
    g = chain([("d", FxDense(weight=np.full((3, 2), 64))), ("p", _poly(c_bias=[sm, -sm, 0]))], (2,))
    check_graph(g, LOIHI2)
    # a target file without the key (an older file, an artifact's embedded one): no register
    text = LOIHI2.path.read_text().replace("c_bias = [-8388607, 8388607]", "# c_bias")
    old = target_from_toml(text, "old loihi2")
    assert old.poly.c_bias == (0, 0)
    with pytest.raises(UnsupportedError, match="no current-bias register"):
        check_graph(g, old)
    narrow = target_from_toml(LOIHI2.path.read_text().replace("c_bias = [-8388607, 8388607]",
                                                               "c_bias = [-1000, 1000]"), "narrow")
    with pytest.raises(GraphError, match="c_bias"):
        check_graph(g, narrow)


@pytest.mark.parametrize("rounding", ["nearest", "floor", "trunc"])
def test_contract_at_the_range_edges(rounding: str) -> None:
    """The register at +-(2**(S-1) - 1) with the largest input shift and inputs near 2**31, against
    the big-integer oracle (saturation of c from both sides)."""
    from fx_nets import chain
    from fx_oracle import as_arrays, oracle

    sm = 2**23 - 1
    node = _poly(c_bias=[sm, -sm, -1], rounding=rounding)
    g = chain([("d", FxDense(weight=np.array([[255, -256], [-256, 254], [8, 8]]), weight_exp=7)), ("p", node)], (2,))
    x = (np.random.default_rng(1).random((3, 12, 2)) < 0.5).astype(np.uint8)
    spk, sts = as_arrays(g, *oracle(g, x), 3, 12)
    for kernels in ("numpy", "numba"):
        r = run_fx(g, x, record=True, kernels=kernels)
        assert np.array_equal(r.spikes["p"], spk["p"]) and np.array_equal(r.states["p"]["c"], sts["p"]["c"])
        assert np.array_equal(r.states["p"]["v"], sts["p"]["v"])
    assert np.any(sts["p"]["c"] == sm) and np.any(sts["p"]["c"] == -sm)  # both edges reached


def test_adaptive_neuron_uses_the_register() -> None:
    """The adaptive-threshold neuron's membrane is the programmable neuron's: a bias into its
    synaptic current goes into the same register, and its backends run it bit-exact."""
    from lnm_deploy.adaptive import AdaptiveNeuron, FxAdaptivePoly
    from lnm_deploy.ir import sequential

    rng = np.random.default_rng(2)
    g = sequential([("fc", Affine(weight=rng.normal(0, 0.4, (6, 5)), bias=rng.uniform(-0.02, 0.05, 6))),
                    ("a", AdaptiveNeuron(shape=(6,), poly=[0.0, 0.9], v_th=1.0, syn_decay=0.9,
                                         theta_decay=0.9, theta_step=0.3))], (5,))
    x = (rng.random((16, 40, 5)) < 0.3).astype(np.uint8)
    res = calibrate_network(g, x, LOIHI2, load_recipe("default"), progress=False)
    node = res.artifact.fx.nodes["a"]
    assert isinstance(node, FxAdaptivePoly) and node.c_bias is not None and np.any(node.c_bias != 0)
    assert not res.quantized.layers["a"].approximations
    # the dequantized graph (the rounded bias on 'fc') runs like the integers (random weights: the
    # float graph itself differs by their rounding)
    deq, fixed = run_float(res.artifact.graph, x), run_fx(res.artifact.fx, x, record=True)
    assert res.artifact.graph.nodes["fc"].bias is not None
    assert 0 < deq.spikes["a"].mean() < 0.7 and np.mean(deq.spikes["a"] == fixed.spikes["a"]) >= 0.999
    pytest.importorskip("onnxruntime")
    from lnm_deploy.onnx_backend import run_onnx

    got = run_onnx(res.artifact.fx, x, record=True)
    assert np.array_equal(got.spikes["a"], fixed.spikes["a"])
    assert all(np.array_equal(got.states["a"][k], fixed.states["a"][k]) for k in fixed.states["a"])


def test_a_stock_lif_like_layer_with_a_current_bias_takes_the_register_on_loihi2() -> None:
    """A Synaptic layer with one alpha, one beta and one threshold per layer is exactly a stock LIF
    but for the bias into its current, which the stock LIF could only fold at its steady state:
    on a target whose programmable neuron has the register, it goes there (no fold, no warning);
    on loihi2-lif it is the stock LIF with the fold, warned."""
    pytest.importorskip("snntorch")
    import snntorch as snn
    import torch
    from snntorch.export_nir import export_to_nir
    from torch import nn

    from lnm_deploy.nir_io import from_nir

    torch.manual_seed(0)
    def syn(n: int) -> nn.Module:  # per-neuron tensors (snnTorch's exporter needs them), all equal
        return snn.Synaptic(alpha=torch.full((n,), 0.75), beta=torch.full((n,), 0.875), threshold=torch.ones(n),
                            init_hidden=True, reset_mechanism="zero", reset_delay=False)

    net = nn.Sequential(nn.Linear(12, 10), syn(10), nn.Linear(10, 4), syn(4))
    with torch.no_grad():
        net[0].bias.fill_(0.25)
        net[2].bias.fill_(0.125)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = from_nir(export_to_nir(net, torch.zeros(1, 12), ignore_dims=[0]), producer="snntorch")
    x = (np.random.default_rng(0).random((16, 30, 12)) < 0.3).astype(np.uint8)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = calibrate_network(g, x, load_target("loihi2"), load_recipe("default"), progress=False)
    neurons = [n for n, node in res.artifact.fx.nodes.items() if isinstance(node, FxPoly)]
    assert len(neurons) == 2 and all(res.artifact.fx.nodes[n].c_bias is not None for n in neurons)
    assert not [w for w in caught if "steady state" in str(w.message)]
    with pytest.warns(LNMDeployWarning, match="steady state"):
        lif = calibrate_network(g, x, load_target("loihi2-lif"), load_recipe("default"), progress=False)
    assert {r.primitive for r in lif.quantized.layers.values()} == {"lif"}
