"""snnTorch convolutional networks exported by snnTorch's own ``export_to_nir`` (issue 14):
conv -> Leaky -> AvgPool2d -> conv (pooling on spikes, composed with the next convolution) and
conv -> AvgPool2d -> Leaky (pooling on currents, composed with the convolution before it).

The float executor must agree with snnTorch's own forward pass spike for spike (float64, the
same random spike input); the graph then calibrates for ``loihi2`` and ``loihi2-lif`` and Lava's
bit-accurate models reproduce fxsim's spikes exactly (``np.array_equal``).
"""

from __future__ import annotations

import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
snn = pytest.importorskip("snntorch")
from snntorch.export_nir import export_to_nir  # noqa: E402
from test_frameworks import _seed, heaviside, snn_forward  # noqa: E402, F401  (seed + warnings filter, snnTorch's forward)
from torch import nn  # noqa: E402

from lnm_deploy import ir  # noqa: E402
from lnm_deploy.calibrate import calibrate_network, load_recipe  # noqa: E402
from lnm_deploy.errors import LNMDeployWarning  # noqa: E402
from lnm_deploy.execute import run_float  # noqa: E402
from lnm_deploy.fxsim import run_fx  # noqa: E402
from lnm_deploy.nir_io import from_nir  # noqa: E402
from lnm_deploy.targets import load_target  # noqa: E402

B, T = 6, 30
IN_SHAPE = (2, 8, 8)
ZERO = {"reset_mechanism": "zero", "reset_delay": False}


def leaky(shape: tuple[int, ...]) -> snn.Leaky:
    """A Leaky layer with per-neuron beta and threshold (snnTorch's exporter needs the full shape to
    type a LIF node after a convolution)."""
    return snn.Leaky(beta=torch.rand(shape) * 0.4 + 0.5, threshold=torch.rand(shape) * 0.5 + 0.5,
                     spike_grad=heaviside, init_hidden=True, **ZERO)  # type: ignore[arg-type]


def _scaled(net: nn.Sequential, gain: float) -> nn.Sequential:
    with torch.no_grad():
        for m in net:
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.weight.mul_(gain)
    return net.double()


def pool_on_spikes() -> tuple[nn.Sequential, dict[str, int]]:
    """conv -> Leaky -> AvgPool2d -> conv -> Leaky -> Flatten -> Linear -> Leaky (snnTorch's CNN tutorial order)."""
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), leaky((4, 8, 8)), nn.AvgPool2d(2), nn.Conv2d(4, 6, 3),
                        leaky((6, 2, 2)), nn.Flatten(), nn.Linear(24, 5), leaky((5,)))
    return _scaled(net, 3.0), {"1": 1, "4": 4, "7": 7}


def pool_on_currents() -> tuple[nn.Sequential, dict[str, int]]:
    """conv -> AvgPool2d -> Leaky -> conv -> Leaky -> Flatten -> Linear -> Leaky."""
    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.AvgPool2d(2), leaky((4, 4, 4)), nn.Conv2d(4, 5, 3),
                        leaky((5, 2, 2)), nn.Flatten(), nn.Linear(20, 4), leaky((4,)))
    return _scaled(net, 4.0), {"2": 2, "4": 4, "7": 7}


NETS = {"conv-lif-avgpool-conv": pool_on_spikes, "conv-avgpool-lif": pool_on_currents}


def _import(name: str) -> tuple[nn.Sequential, dict[str, int], ir.Graph, np.ndarray]:
    net, spiking = NETS[name]()
    g = export_to_nir(net, torch.zeros(1, *IN_SHAPE, dtype=torch.float64), ignore_dims=[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LNMDeployWarning)
        graph = from_nir(g, producer="snntorch")
    said = [str(w.message) for w in caught]
    assert any("reset-to-zero" in m for m in said), said
    # snnTorch writes every AvgPool2d with padding 0: said, naming the pools
    assert any("AvgPool2d with padding 0" in m for m in said), said
    x = (torch.rand(B, T, *IN_SHAPE, dtype=torch.float64) < 0.3).double()
    return net, spiking, graph, x.numpy()


@pytest.mark.parametrize("name", sorted(NETS))
def test_float_executor_matches_snntorch_spike_for_spike(name: str) -> None:
    net, spiking, graph, x = _import(name)
    assert any(isinstance(n, ir.AvgPool2d) for n in graph.nodes.values())
    ref = snn_forward(net, torch.from_numpy(x), spiking)
    ours = run_float(graph, x)
    for layer, s in ref.items():
        assert 0 < s.sum() < s.size, f"layer {layer} must spike sometimes, not always"
        assert np.array_equal(s, ours.spikes[layer]), f"{name}: layer {layer}, {int((s != ours.spikes[layer]).sum())} differ"


@pytest.mark.lava
@pytest.mark.skipif(sys.version_info[:2] != (3, 10), reason="lava-nc 0.10 installs on Python 3.10 only")
@pytest.mark.parametrize("target", ["loihi2", "loihi2-lif"])
@pytest.mark.parametrize("name", sorted(NETS))
def test_calibrates_and_lava_is_bit_exact_with_fxsim(name: str, target: str) -> None:
    from lnm_deploy.lava_backend import run_lava

    _, spiking, graph, x = _import(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LNMDeployWarning)
        res = calibrate_network(graph, x, load_target(target), load_recipe("default"), progress=False)
    layers = res.report["comparison"]["layers"]
    assert set(spiking) <= set(layers)
    for layer in spiking:
        if target == "loihi2":  # per-neuron dynamics fit the programmable neuron: it follows the float model
            assert layers[layer]["agreement"] >= 0.95, (layer, layers[layer])
        else:  # the stock LIF has one threshold per layer: said in the report, not hidden
            assert any("per-neuron thresholds" in a for a in res.report["layers"][layer]["approximations"]), layer
    fx = res.artifact.fx
    ref = run_fx(fx, x[:2], record=True)
    got = run_lava(fx, x[:2], record=True)
    assert set(got.spikes) == set(ref.spikes)
    for n in ref.spikes:
        assert ref.spikes[n].sum() > 0, n
        assert np.array_equal(got.spikes[n], ref.spikes[n]), n
        for k in ref.states[n]:
            assert np.array_equal(got.states[n][k], ref.states[n][k]), (n, k)
