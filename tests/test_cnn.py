"""Convolutional network patterns (issue 14, first slice; docs/patterns.md): pooling composed with
an adjacent convolution into one exact convolution, MaxPool2d on spikes as SumPool2d + a memoryless
IF layer, BatchNorm folded at torch export, the NIR paper's Sinabs CNN end to end, and the warning
for per-neuron biases the stock LIF loses."""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from lnm_deploy import ir  # noqa: E402
from lnm_deploy.calibrate import calibrate_network, load_recipe  # noqa: E402
from lnm_deploy.calibrate.neuron_lowerings import warn_lost_bias  # noqa: E402
from lnm_deploy.calibrate.passes import compose_conv_chain, fold  # noqa: E402
from lnm_deploy.errors import LNMDeployWarning, NumericError, UnsupportedError  # noqa: E402
from lnm_deploy.execute import run_float  # noqa: E402
from lnm_deploy.execute.float_exec import stateless_step  # noqa: E402
from lnm_deploy.fxsim import run_fx  # noqa: E402
from lnm_deploy.model import LNM, LNMSequential, model_to_ir  # noqa: E402
from lnm_deploy.model.io import load_model, save_model  # noqa: E402
from lnm_deploy.targets import load_target  # noqa: E402

DATA = Path(__file__).parent / "data"
TARGETS = ("loihi2", "loihi2-lif")


def _spikes(rng: np.random.Generator, shape: tuple[int, ...], p: float = 0.3) -> np.ndarray:
    return (rng.random(shape) < p).astype(np.float64)


# ------------------------------------------------------------------------------------------------
# 1. Pooling composed with an adjacent convolution


def _chain_graph(chain: list[tuple[str, ir.Node]], in_shape: tuple[int, int, int], v_th: float = 0.6) -> ir.Graph:
    """input spikes -> chain -> IF neuron (shape from the chain)."""
    x = np.zeros((1, *in_shape))
    for name, node in chain:  # the neuron's shape is the chain's output shape
        x = stateless_step(name, node, np.float64)(x)
    shape = x.shape[1:]
    return ir.sequential([*chain, ("n", ir.Neuron(shape=tuple(shape), poly=[0.0, 0.9], v_th=v_th))], in_shape)


def _chains(rng: np.random.Generator) -> dict[str, tuple[list[tuple[str, ir.Node]], tuple[int, int, int]]]:
    w = lambda *s: rng.normal(0.1, 0.5, s)  # noqa: E731
    return {
        # Sinabs (the NIR paper's CNN): SumPool2d -> Conv2d
        "sumpool-conv": ([("pool", ir.SumPool2d(kernel_size=2)),
                          ("conv", ir.Conv2d(weight=w(4, 3, 3, 3), bias=rng.normal(0, 0.1, 4), padding=1))], (3, 8, 8)),
        # snnTorch's CNN / VGG order: AvgPool2d -> Conv2d
        "avgpool-conv": ([("pool", ir.AvgPool2d(kernel_size=2)),
                          ("conv", ir.Conv2d(weight=w(5, 2, 3, 3)))], (2, 10, 10)),
        # Conv2d -> AvgPool2d, padded conv, bias
        "conv-avgpool": ([("conv", ir.Conv2d(weight=w(4, 2, 3, 3), bias=rng.normal(0, 0.1, 4), padding=1)),
                          ("pool", ir.AvgPool2d(kernel_size=2))], (2, 8, 8)),
        # strided conv then sum pool, odd sizes (the pool drops the last row: still exact)
        "conv-stride-sumpool": ([("conv", ir.Conv2d(weight=w(3, 2, 3, 3), stride=2)),
                                 ("pool", ir.SumPool2d(kernel_size=2))], (2, 11, 11)),
        # two poolings: stays depthwise
        "sumpool-avgpool": ([("p1", ir.SumPool2d(kernel_size=2)), ("p2", ir.AvgPool2d(kernel_size=2))], (3, 8, 8)),
    }


@pytest.mark.parametrize("name", ["sumpool-conv", "avgpool-conv", "conv-avgpool", "conv-stride-sumpool",
                                  "sumpool-avgpool"])
def test_pool_conv_chain_folds_into_one_exact_convolution(name: str) -> None:
    rng = np.random.default_rng(3)
    chain, in_shape = _chains(rng)[name]
    g = _chain_graph(chain, in_shape)
    layer = fold(g).layers["n"]
    (syn,) = layer.synapses
    assert syn.kind == "conv" and syn.name == chain[-1][0] and syn.source == "input"
    if name == "sumpool-avgpool":
        assert syn.conv["groups"] == in_shape[0]
    # The composed convolution, as a float graph, against the chain: same currents, same spikes.
    composed = ir.sequential([("conv", ir.Conv2d(weight=syn.weight, bias=layer.bias.reshape(layer.bias.shape[0], -1)[:, 0],
                                                  **syn.conv)),
                              ("n", g.nodes["n"])], in_shape)
    x = _spikes(rng, (3, 6, *in_shape))
    ref = run_float(g, x, record=True)
    got = run_float(composed, x, record=True)
    assert ref.spikes["n"].sum() > 0 and (1 - ref.spikes["n"]).sum() > 0
    assert np.array_equal(ref.spikes["n"], got.spikes["n"])
    np.testing.assert_allclose(got.states["n"]["v"], ref.states["n"]["v"], rtol=0, atol=1e-12)
    # and calibrates (loihi2: composed conv in the integer graph)
    res = calibrate_network(g, x, load_target("loihi2"), load_recipe("default"), progress=False)
    fxn = res.artifact.fx.nodes[chain[-1][0]]
    assert fxn.weight.shape == syn.weight.shape and fxn.stride == syn.conv["stride"]


def test_sumpool_conv_composition_by_hand() -> None:
    """SumPool2d(2) then a 1x1 conv of weight 3: a 2x2 stride-2 conv of weight 3 everywhere."""
    g = _chain_graph([("pool", ir.SumPool2d(kernel_size=2)), ("conv", ir.Conv2d(weight=np.full((1, 1, 1, 1), 3.0)))],
                     (1, 4, 4))
    w, conv, b = compose_conv_chain(g, ["pool", "conv"], (1, 4, 4), (1, 2, 2), "n")
    assert np.array_equal(w, np.full((1, 1, 2, 2), 3.0))
    assert conv == {"stride": (2, 2), "padding": (0, 0), "dilation": (1, 1), "groups": 1}
    assert np.array_equal(b, [0.0])


@pytest.mark.parametrize("chain, in_shape, why", [
    # pooled size 5 -> 2 drops row 4; the conv's padding then reads it in the composed conv
    ([("pool", ir.SumPool2d(kernel_size=2)), ("conv", ir.Conv2d(weight=np.ones((2, 1, 3, 3)), padding=1))],
     (1, 5, 5), "border"),
    # padding after a convolution: the intermediate zeros are not the conv of padded input
    ([("conv", ir.Conv2d(weight=np.ones((2, 1, 3, 3)))), ("pool", ir.AvgPool2d(kernel_size=2, padding=1))],
     (1, 8, 8), "border"),
    # a bias before a padded pooling: the constant differs at the border
    ([("conv", ir.Conv2d(weight=np.ones((2, 1, 1, 1)), bias=np.ones(2))),
      ("pool", ir.AvgPool2d(kernel_size=2, stride=2, padding=1))], (1, 6, 6), "constant"),
])
def test_inexact_chain_is_refused_naming_the_node(chain: list[tuple[str, ir.Node]], in_shape: tuple[int, int, int],
                                                  why: str) -> None:
    g = _chain_graph(chain, in_shape)
    with pytest.raises(UnsupportedError, match=why) as e:
        fold(g)
    assert e.value.node == chain[-1][0]
    assert "move pooling after a neuron layer" not in str(e.value)


def test_refused_before_the_statistics_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    import lnm_deploy.calibrate.pipeline as pipeline

    def no_stats(*a: object, **k: object) -> None:
        raise AssertionError("the statistics pass ran before the structural refusal")

    monkeypatch.setattr(pipeline, "collect_with_recipe", no_stats)
    g = _chain_graph([("pool", ir.SumPool2d(kernel_size=2)),
                      ("conv", ir.Conv2d(weight=np.ones((2, 1, 3, 3)), padding=1))], (1, 5, 5))
    with pytest.raises(UnsupportedError, match="cannot be one exact convolution"):
        calibrate_network(g, np.zeros((2, 3, 1, 5, 5)), load_target("loihi2"), load_recipe("default"), progress=False)


# ------------------------------------------------------------------------------------------------
# 2. MaxPool2d on spikes; 3. BatchNorm folded at export


def _bn_maxpool_model(seed: int = 0) -> LNMSequential:
    torch.manual_seed(seed)
    m = LNMSequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), LNM((4, 8, 8)), nn.MaxPool2d(2),
                      nn.Flatten(), nn.Linear(64, 10), nn.BatchNorm1d(10), LNM(10)).double()
    with torch.no_grad():
        for bn in (m["bn1"], m["bn2"]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-0.3, 0.3)
    return m.eval()


def test_batchnorm_folds_and_maxpool_maps_spike_for_spike() -> None:
    m = _bn_maxpool_model()
    g = model_to_ir(m, (1, 8, 8))
    assert "bn1" not in g.nodes and "bn2" not in g.nodes
    assert g.nodes["conv1"].metadata["folded"] == ["bn1"] and g.nodes["fc1"].metadata["folded"] == ["bn2"]
    assert isinstance(g.nodes["maxpool1_sum"], ir.SumPool2d) and isinstance(g.nodes["maxpool1"], ir.Neuron)
    x = torch.from_numpy(_spikes(np.random.default_rng(1), (4, 10, 1, 8, 8)))
    with torch.no_grad():
        _, rec = m(x, record=True)
    r = run_float(g, x.numpy(), record=True)
    for n in ("lnm1", "lnm2"):
        s_t, v_t = rec[n]["s"].numpy(), rec[n]["v"].numpy()
        assert s_t.sum() > 0
        assert np.array_equal(r.spikes[n], s_t)
        # no membrane within 1e-9 of the threshold: equality is not luck of a tie
        assert np.min(np.abs(r.states[n]["v_pre"] - g.nodes[n].v_th)) > 1e-9
        np.testing.assert_allclose(r.states[n]["v"], v_t, rtol=0, atol=1e-9)
    # max pool of binary spikes == their OR, as torch computes it
    pooled = torch.nn.functional.max_pool2d(torch.from_numpy(r.spikes["lnm1"]).flatten(0, 1), 2).numpy()
    assert np.array_equal(r.spikes["maxpool1"].reshape(pooled.shape), pooled)
    assert np.array_equal(r.spikes["maxpool1"], rec["maxpool1"]["out"].numpy())


@pytest.mark.parametrize("target", TARGETS)
def test_maxpool_calibrates_and_is_an_exact_or_in_fxsim(target: str) -> None:
    m = _bn_maxpool_model()
    g = model_to_ir(m, (1, 8, 8))
    x = _spikes(np.random.default_rng(2), (6, 10, 1, 8, 8))
    res = calibrate_network(g, x, load_target(target), load_recipe("default"), progress=False)
    fx = res.artifact.fx
    out = run_fx(fx, x, record=True)
    s1 = out.spikes["lnm1"]
    assert s1.sum() > 0
    pooled = torch.nn.functional.max_pool2d(torch.from_numpy(s1.astype(np.float64)).flatten(0, 1), 2).numpy()
    assert np.array_equal(out.spikes["maxpool1"].reshape(pooled.shape), pooled)


def test_maxpool_and_batchnorm_refusals() -> None:
    with pytest.raises(UnsupportedError, match="binary spikes") as e:
        model_to_ir(LNMSequential(nn.Conv2d(1, 2, 3), nn.MaxPool2d(2), LNM((2, 3, 3))), (1, 8, 8))
    assert e.value.node == "maxpool1"
    with pytest.raises(UnsupportedError, match="directly before it") as e:
        model_to_ir(LNMSequential(nn.Linear(4, 3), LNM(3), nn.BatchNorm1d(3), nn.Linear(3, 2), LNM(2)).eval(), (4,))
    assert e.value.node == "bn1"
    with pytest.raises(UnsupportedError, match="running statistics"):
        model_to_ir(LNMSequential(nn.Linear(4, 3), nn.BatchNorm1d(3, track_running_stats=False), LNM(3)), (4,))
    # a BatchNorm of other dimensions than its layer's (torch itself cannot run those)
    with pytest.raises(UnsupportedError, match=r"BatchNorm1d follows 'conv1' .*BatchNorm2d into a Conv2d") as e:
        model_to_ir(LNMSequential(nn.Conv2d(1, 2, 3), nn.BatchNorm1d(2), LNM((2, 4, 4))).eval(), (1, 6, 6))
    assert e.value.node == "bn1"
    with pytest.raises(UnsupportedError, match="BatchNorm2d follows 'fc1'"):
        model_to_ir(LNMSequential(nn.Linear(4, 3), nn.BatchNorm2d(3), LNM(3)).eval(), (4,))
    # running variances that cannot normalise: named, before any NaN reaches the weights
    for var in (-1.0, float("nan")):
        m = LNMSequential(nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2), LNM((2, 6, 6))).eval()
        with torch.no_grad():
            m["bn1"].running_var[1] = var
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no numpy RuntimeWarning from a square root first
            with pytest.raises(NumericError, match=r"running_var \+ eps is not positive for channel\(s\) \[1\]") as e:
                model_to_ir(m, (1, 6, 6))
        assert e.value.node == "bn1"


def test_batchnorm_and_maxpool_save_and_load(tmp_path: Path) -> None:
    m = _bn_maxpool_model()
    p = save_model(m, tmp_path / "m.safetensors")
    m2 = load_model(p).eval()
    g1, g2 = model_to_ir(m, (1, 8, 8)), model_to_ir(m2, (1, 8, 8))
    assert np.array_equal(g1.nodes["conv1"].weight, g2.nodes["conv1"].weight)
    assert np.array_equal(g1.nodes["fc1"].bias, g2.nodes["fc1"].bias)


# ------------------------------------------------------------------------------------------------
# 4. The NIR paper's Sinabs CNN (neuromorphs/NIR paper/02_cnn/cnn_sinabs.nir)


@pytest.fixture(scope="module")
def sinabs_cnn() -> tuple[ir.Graph, np.ndarray, dict[str, object]]:
    from lnm_deploy.nir_io import read_nir

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LNMDeployWarning)  # Sinabs' exporter losses, warned at read
        # Read as one spike per step where v > v_th (what calibrate runs today; Sinabs' own rules,
        # '>=' and several spikes per step, are read exactly by default and refused by calibrate)
        g = read_nir(DATA / "cnn_sinabs.nir", producer="sinabs", threshold=">", spikes="single")
    x = _spikes(np.random.default_rng(0), (4, 12, 2, 34, 34), p=0.15)
    fxs = {}
    for t in TARGETS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LNMDeployWarning)
            fxs[t] = calibrate_network(g, x, load_target(t), load_recipe("default"), progress=False).artifact.fx
    return g, x, fxs


def test_sinabs_cnn_reads_and_calibrates(sinabs_cnn: tuple[ir.Graph, np.ndarray, dict[str, object]]) -> None:
    g, x, fxs = sinabs_cnn
    opts = g.metadata["read_options"]
    assert opts["resolved"]["producer"] == "sinabs" and opts["convention"]["reset"] == "subtract"
    assert isinstance(g.nodes["4"], ir.SumPool2d) and isinstance(g.nodes["5"], ir.Conv2d)
    for t, fx in fxs.items():
        conv = fx.nodes["5"]  # type: ignore[attr-defined]
        assert conv.weight.shape == (8, 16, 6, 6) and conv.stride == (2, 2) and conv.padding == (2, 2), t
        out = run_fx(fx, x[:2], record=True)  # type: ignore[arg-type]
        assert all(out.spikes[n].sum() > 0 for n in ("1", "3", "6", "10")), t


@pytest.mark.lava
@pytest.mark.skipif(sys.version_info[:2] != (3, 10), reason="lava-nc 0.10 installs on Python 3.10 only")
@pytest.mark.parametrize("target", TARGETS)
def test_sinabs_cnn_lava_bit_exact(sinabs_cnn: tuple[ir.Graph, np.ndarray, dict[str, object]], target: str) -> None:
    from lnm_deploy.lava_backend import run_lava

    _, x, fxs = sinabs_cnn
    fx = fxs[target]
    ref = run_fx(fx, x[:2], record=True)  # type: ignore[arg-type]
    got = run_lava(fx, x[:2], record=True)  # type: ignore[arg-type]
    assert set(got.spikes) == set(ref.spikes)
    for n in ref.spikes:
        assert np.array_equal(got.spikes[n], ref.spikes[n]), n


# ------------------------------------------------------------------------------------------------
# 5. Small per-neuron biases on the stock LIF


def test_warn_lost_bias_names_the_neurons() -> None:
    bias = np.array([1e-6, 0.9, 0.0, -2e-6, 0.5])
    mant = np.array([0, 112, 0, 0, 62])
    with pytest.warns(LNMDeployWarning, match=r"2 neuron\(s\).*flat indices 0, 3"):
        assert warn_lost_bias("n", bias, mant, 3, 1e-3) == [0, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_lost_bias("n", bias[1:3], mant[1:3], 3, 1e-3) == []
        # rounding residue of a fit (1e-16 against an LSB of 1e-3) is not a bias
        assert warn_lost_bias("n", np.array([6.6e-16, -1e-15]), np.array([0, 0]), 0, 1e-3) == []


def test_small_bias_lost_on_stock_lif_is_warned() -> None:
    rng = np.random.default_rng(5)
    g = ir.sequential([("fc", ir.Affine(weight=rng.normal(0.2, 0.4, (4, 6)), bias=np.array([1e-7, 0.9, 0.3, 0.5]))),
                       ("n", ir.Neuron(shape=(4,), poly=[0.0, 0.9], v_th=1.0))], (6,))
    x = _spikes(rng, (8, 20, 6))
    with pytest.warns(LNMDeployWarning, match=r"layer 'n': the bias of 1 neuron\(s\).*flat indices 0;"):
        calibrate_network(g, x, load_target("loihi2-lif"), load_recipe("default"), progress=False)


def test_batchnorm_in_training_mode_is_folded_with_a_warning() -> None:
    """torch normalises with batch statistics in training mode: the export (running statistics, as
    eval() uses them) says so instead of folding silently."""
    from lnm_deploy.errors import LNMDeployWarning

    m = _bn_maxpool_model()
    m.train()
    with pytest.warns(LNMDeployWarning, match=r"'bn1'.*training mode.*model.eval\(\)"):
        g = model_to_ir(m, (1, 8, 8))
    m.eval()
    g_eval = model_to_ir(m, (1, 8, 8))
    assert np.array_equal(g.nodes["conv1"].weight, g_eval.nodes["conv1"].weight)


def test_the_paper_cnn_read_without_a_producer_suggests_sinabs() -> None:
    """An all-IF graph with r = 1 (Sinabs' IAF) read generically would integrate r dt per step and go
    nearly silent: the warning names the likely producer (a hint, never applied)."""
    from lnm_deploy import load
    from lnm_deploy.errors import LNMDeployWarning

    with pytest.warns(LNMDeployWarning, match="pass producer='sinabs'"):
        load(DATA / "cnn_sinabs.nir")


def test_an_input_gain_that_varies_within_a_channel_is_refused() -> None:
    """A convolution's weights are shared over positions: a per-position input gain cannot be folded
    into them (it was scaled by the channel's first gain, silently)."""
    from lnm_deploy.calibrate.passes import fold

    gain = np.ones((2, 4, 4))
    gain[1, 2, 3] = 0.5
    g = ir.sequential([("conv", ir.Conv2d(weight=np.ones((2, 1, 3, 3)), padding=1)),
                       ("n", ir.Neuron(shape=(2, 4, 4), poly=[0.0, 0.9], v_th=1.0, in_gain=gain))], (1, 4, 4))
    with pytest.raises(UnsupportedError, match=r"'n'.*varies within a channel"):
        fold(g)
    g.nodes["n"].in_gain[1] = 0.5  # per channel: fine
    fold(g)


def test_classifier_head_is_composed_from_its_weight_as_the_basis_run_would() -> None:
    """Flatten -> Affine on a feature map: the matrix read from the weight equals, bit for bit,
    what running the chain on every basis vector gives (no n_in x n_in basis is built for it)."""
    from lnm_deploy.calibrate import passes

    rng = np.random.default_rng(3)
    for bias in (None, rng.normal(0, 0.3, 7)):
        g = ir.sequential([("flat", ir.Flatten(start_dim=0, end_dim=-1)),
                           ("fc", ir.Affine(weight=rng.normal(0, 0.5, (7, 4 * 3 * 5)), bias=bias)),
                           ("n", ir.Neuron(shape=(7,), poly=[0.0, 0.9], v_th=1.0))], (4, 3, 5))
        fast = passes._compose_dense(g, ["flat", "fc"], (4, 3, 5))
        n_in = 4 * 3 * 5
        y = np.concatenate([np.zeros((1, n_in)), np.eye(n_in)]).reshape(n_in + 1, 4, 3, 5)
        for name in ("flat", "fc"):
            y = stateless_step(name, g.nodes[name], np.float64)(y)
        assert np.array_equal(fast[0], (y[1:] - y[0]).T) and np.array_equal(fast[1], y[0])
