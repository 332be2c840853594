"""The foundation's promise: a PyTorch LNM network, exported to a .nir file, read back and run by
the float executor, gives the same spikes as PyTorch (float64, random inputs)."""

from __future__ import annotations

from pathlib import Path

import nir
import numpy as np
import pytest
import torch
from torch import nn

import lnm_deploy
from lnm_deploy.ir import Neuron
from lnm_deploy.model import LNM, LNMSequential, RecurrentLNM, SumPool2d

BATCH, STEPS = 8, 60
F64 = torch.float64


def _randomize(model: LNMSequential, seed: int) -> None:
    """Non-trivial dynamics: random polynomial coefficients inside the stable range, random thresholds."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in model.named_layers():
            if isinstance(layer, LNM):
                p = layer.poly_value().clone()
                p[0] = 0.02 * torch.randn(p[0].shape, generator=g, dtype=F64)
                p[1] = 0.6 + 0.3 * torch.rand(p[1].shape, generator=g, dtype=F64)
                # Signs keep the state bounded below: +v^2 and -v^3 push a very negative v upward.
                for k in range(2, p.shape[0]):
                    p[k] = (-1) ** k * 0.03 / k * torch.rand(p[k].shape, generator=g, dtype=F64)
                layer.set_poly(p)
                layer.v_th.copy_(0.5 + 0.5 * torch.rand(layer.v_th.shape, generator=g, dtype=F64))
            if isinstance(layer, RecurrentLNM):
                layer.rec.weight.mul_(3.0)
            if isinstance(layer, (nn.Linear, nn.Conv2d)):
                layer.weight.mul_(2.0)


def _compare(model: LNMSequential, input_shape: tuple[int, ...], tmp_path: Path, seed: int) -> None:
    _randomize(model, seed)
    rng = np.random.default_rng(seed)
    x = (rng.random((BATCH, STEPS, *input_shape)) < 0.3).astype(np.float64)
    with torch.no_grad():
        out, rec = model(torch.from_numpy(x), record=True)

    path = tmp_path / "model.nir"
    lnm_deploy.export(model, path, input_shape=input_shape, dt=1e-3)
    assert isinstance(nir.read(path), nir.NIRGraph)  # a plain NIR reader accepts it
    graph = lnm_deploy.load(path)
    result = lnm_deploy.run_float(graph, x, record=True)

    assert np.array_equal(result.output, out.numpy())
    neurons = [n for n, node in graph.nodes.items() if isinstance(node, Neuron)]
    assert neurons
    for name in neurons:
        s = rec[name]["s"].numpy()
        assert s.sum() > 0, f"layer {name} never spikes: the test would prove nothing"
        assert s.mean() < 0.9, f"layer {name} always spikes"
        assert np.array_equal(result.spikes[name], s), f"spikes differ in {name}"
        np.testing.assert_allclose(result.states[name]["v"], rec[name]["v"].numpy(), rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("degree", [1, 2, 3])
@pytest.mark.parametrize("synapse", [False, True])
@pytest.mark.parametrize("recurrent", [False, True])
def test_mlp_roundtrip(degree: int, synapse: bool, recurrent: bool, tmp_path: Path) -> None:
    torch.manual_seed(degree * 4 + synapse * 2 + recurrent)
    hidden = (RecurrentLNM(24, degree, synapse=synapse, rec_bias=True, dtype=F64) if recurrent
              # Subtractive reset cannot keep up with a strong synaptic current: v would grow
              # without bound, so it is exercised without the synapse.
              else LNM(24, degree, synapse=synapse, reset="value" if synapse else "subtract", dtype=F64))
    model = LNMSequential(
        nn.Linear(20, 24, dtype=F64), hidden, nn.Linear(24, 10, dtype=F64),
        LNM(10, degree, synapse=synapse, granularity="neuron", threshold_granularity="neuron", dtype=F64),
    )
    _compare(model, (20,), tmp_path, seed=degree)


def test_conv_roundtrip(tmp_path: Path) -> None:
    torch.manual_seed(7)
    model = LNMSequential(
        nn.Conv2d(2, 4, 3, padding=1, dtype=F64),
        LNM((4, 8, 8), 2, granularity="channel", dtype=F64),
        SumPool2d(2),
        nn.Flatten(),
        nn.Linear(64, 10, dtype=F64),
        LNM(10, 3, synapse=True, dtype=F64),
    )
    _compare(model, (2, 8, 8), tmp_path, seed=11)
