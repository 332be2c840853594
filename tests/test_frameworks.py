"""Graphs exported by snnTorch and Norse, imported by lnm-deploy, against the frameworks' own forward.

Each test builds a small network in the framework with random weights (scaled so every layer
spikes), exports it with the framework's own exporter (``snntorch.export_nir.export_to_nir``,
``norse.torch.to_nir``), imports it with ``from_nir``, runs lnm-deploy's float executor and the
framework's forward pass in float64 on the same random spike input, and compares the spikes of every
spiking layer with ``np.array_equal``. The ``*_loss`` tests document what the exporters lose: those
spike trains must differ.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import nir
import norse.torch as norse
import numpy as np
import pytest
import snntorch as snn
import torch
from norse.torch.functional.iaf import IAFParameters
from norse.torch.functional.lif import LIFParameters
from norse.torch.functional.lif_box import LIFBoxParameters
from norse.torch.module.iaf import IAFCell
from norse.torch.module.lif_box import LIFBoxCell
from snntorch.export_nir import _extract_snntorch_module, export_to_nir
from torch import nn

from lnm_deploy.errors import GraphError, LNMDeployWarning
from lnm_deploy.execute import run_float
from lnm_deploy.ir import Graph, Neuron
from lnm_deploy.nir_io import from_nir, read_nir, write_nir

B, T = 8, 60  # samples, timesteps


@pytest.fixture(autouse=True)
def _seed() -> Iterator[None]:
    torch.manual_seed(1234)
    with warnings.catch_warnings():  # nirtorch's own deprecation noise, not ours
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def heaviside(x: torch.Tensor) -> torch.Tensor:
    """snnTorch's spike function keeps float32 spikes; this one keeps the membrane's dtype so a
    float64 network stays float64 (the exporter ignores the surrogate)."""
    return (x > 0).to(x.dtype)


def spikes_in(shape: tuple[int, ...], p: float = 0.3) -> torch.Tensor:
    return (torch.rand(B, T, *shape, dtype=torch.float64) < p).double()


def assert_same_spikes(ref: dict[str, np.ndarray], graph: Graph, x: torch.Tensor) -> None:
    res = run_float(graph, x.numpy())
    for name, s in ref.items():
        assert name in res.spikes, f"{name} is not a spiking node of the import: {sorted(res.spikes)}"
        ours = res.spikes[name]
        assert s.shape == ours.shape, name
        total = int(s.sum())
        assert 0 < total < s.size, f"layer {name} must spike sometimes, not always ({total}/{s.size})"
        assert np.array_equal(s, ours), (
            f"layer {name}: {int((s != ours).sum())} of {s.size} spikes differ, first at step "
            f"{int(np.argwhere(s != ours)[0][1])}"
        )


def assert_spikes_differ(ref: dict[str, np.ndarray], graph: Graph, x: torch.Tensor) -> None:
    res = run_float(graph, x.numpy())
    assert all(ref[n].sum() > 0 for n in ref)
    assert any(not np.array_equal(ref[n], res.spikes[n]) for n in ref)


# ------------------------------------------------------------------------------------------------
# snnTorch


def snn_forward(net: nn.Sequential, x: torch.Tensor, spiking: dict[str, int]) -> dict[str, np.ndarray]:
    """Run an ``init_hidden=True`` snnTorch Sequential step by step; record the given layers."""
    for m in net:
        if isinstance(m, snn.SpikingNeuron):
            m.reset_mem()
    rec: dict[str, list[np.ndarray]] = {k: [] for k in spiking}
    with torch.no_grad():
        for t in range(x.shape[1]):
            h = x[:, t]
            for i, m in enumerate(net):
                h = m(h)
                for k, j in spiking.items():
                    if i == j:
                        rec[k].append(h.numpy().copy())
    return {k: np.stack(v, axis=1) for k, v in rec.items()}


def leaky(n: int | tuple[int, ...], **kw: object) -> snn.Leaky:
    shape = (n,) if isinstance(n, int) else n
    return snn.Leaky(beta=torch.rand(shape) * 0.5 + 0.45, threshold=torch.rand(shape) * 0.5 + 0.5,
                     spike_grad=heaviside, init_hidden=True, **kw)  # type: ignore[arg-type]


def scaled_linear(n_in: int, n_out: int, gain: float) -> nn.Linear:
    lin = nn.Linear(n_in, n_out)
    with torch.no_grad():
        lin.weight.mul_(gain)
    return lin


def export_snn(net: nn.Module, in_shape: tuple[int, ...], dtype: torch.dtype = torch.float64) -> nir.NIRGraph:
    return export_to_nir(net, torch.zeros(1, *in_shape, dtype=dtype), ignore_dims=[0])


def import_snn(g: nir.NIRGraph | Path) -> Graph:
    with pytest.warns(LNMDeployWarning, match="reset-to-zero"):
        return from_nir(g, producer="snntorch")


ZERO = {"reset_mechanism": "zero", "reset_delay": False}


@pytest.mark.parametrize("export_dtype", [torch.float64, torch.float32])
def test_snntorch_leaky(export_dtype: torch.dtype) -> None:
    net = nn.Sequential(scaled_linear(10, 16, 3.0), leaky(16, **ZERO), scaled_linear(16, 6, 3.0), leaky(6, **ZERO))
    g = export_snn(net.to(export_dtype), (10,), export_dtype)
    graph = import_snn(g)
    lif = graph.nodes["1"]
    assert isinstance(lif, Neuron) and lif.dt == 1e-4 and lif.syn_decay is None
    # tau = dt/(1-beta) is inverted in the file's precision: our decay reproduces the written tau
    # bit for bit (tau = dt/(1-beta) is not injective in floating point, so it may be another
    # preimage within 2 ulp), and r = tau/dt gives in_gain = 1 exactly.
    beta = net[1].beta.detach().numpy()
    ours = lif.poly[1].astype(beta.dtype)
    assert np.array_equal(1e-4 / (1 - ours), np.asarray(g.nodes["1"].tau))
    assert np.all(np.abs(ours - beta) <= 2 * np.spacing(beta))
    assert np.array_equal(lif.in_gain, np.ones(16)) and np.array_equal(lif.poly[0], np.zeros(16))
    net = net.double()
    x = spikes_in((10,))
    assert_same_spikes(snn_forward(net, x, {"1": 1, "3": 3}), graph, x)


def test_snntorch_leaky_through_file(tmp_path: Path) -> None:
    """snnTorch -> .nir (nir.write) -> lnm-deploy -> .nir (ours) -> lnm-deploy: same spikes."""
    net = nn.Sequential(scaled_linear(10, 16, 3.0), leaky(16, **ZERO), scaled_linear(16, 6, 3.0),
                        leaky(6, **ZERO)).double()
    nir.write(tmp_path / "snn.nir", export_snn(net, (10,)))
    graph = import_snn(tmp_path / "snn.nir")
    write_nir(graph, tmp_path / "ours.nir")
    again = read_nir(tmp_path / "ours.nir")
    x = spikes_in((10,))
    ref = snn_forward(net, x, {"1": 1, "3": 3})
    assert_same_spikes(ref, graph, x)
    assert_same_spikes(ref, again, x)


def test_snntorch_synaptic() -> None:
    syn = snn.Synaptic(alpha=torch.rand(12) * 0.5 + 0.3, beta=torch.rand(12) * 0.5 + 0.45,
                       threshold=torch.rand(12) * 0.5 + 1.0, spike_grad=heaviside, init_hidden=True, **ZERO)
    net = nn.Sequential(scaled_linear(10, 12, 2.0), syn, scaled_linear(12, 5, 3.0), leaky(5, **ZERO)).double()
    graph = import_snn(export_snn(net, (10,)))
    node = graph.nodes["1"]
    assert isinstance(node, Neuron) and node.syn_decay is not None and node.syn_gain is not None
    alpha = syn.alpha.numpy()
    assert np.all(np.abs(node.syn_decay - alpha) <= 2 * np.spacing(alpha))  # tau_syn = dt/(1-alpha)
    assert np.array_equal(node.syn_gain, np.ones(12))  # w_in = tau_syn/dt
    x = spikes_in((10,))
    assert_same_spikes(snn_forward(net, x, {"1": 1, "3": 3}), graph, x)


@pytest.mark.parametrize("all_to_all", [True, False])
def test_snntorch_rleaky(all_to_all: bool) -> None:
    kw: dict[str, object] = {"linear_features": 12} if all_to_all else {"all_to_all": False, "V": torch.rand(12)}
    rl = snn.RLeaky(beta=torch.rand(12) * 0.5 + 0.45, threshold=torch.rand(12) * 0.5 + 0.5,
                    spike_grad=heaviside, init_hidden=True, **ZERO, **kw)  # type: ignore[arg-type]
    if all_to_all:
        with torch.no_grad():
            rl.recurrent.weight.mul_(2.0)
            # snnTorch adds the recurrent Linear's bias at t = 0 too (recurrent(0) = b), as the
            # IR's back edge does (docs/ir.md, time base); a visible bias makes the test see it.
            rl.recurrent.bias.uniform_(0.1, 0.3)
    net = nn.Sequential(scaled_linear(10, 12, 3.0), rl, scaled_linear(12, 5, 3.0), leaky(5, **ZERO)).double()
    g = export_snn(net, (10,))
    graph = import_snn(g)
    # nirtorch 2.6 already flattens snnTorch's RLeaky subgraph into '1.lif' and '1.w_rec'.
    assert isinstance(graph.nodes["1.lif"], Neuron)
    assert ("1.w_rec", "1.lif") in graph.edges
    x = spikes_in((10,))
    assert_same_spikes(snn_forward(net, x, {"1.lif": 1, "3": 3}), graph, x)


def test_snntorch_rleaky_nested_subgraph() -> None:
    """snnTorch's own RLeaky mapping is a nested NIRGraph; we flatten it ourselves."""
    rl = snn.RLeaky(beta=torch.rand(12) * 0.5 + 0.45, threshold=torch.rand(12) * 0.5 + 0.5, linear_features=12,
                    spike_grad=heaviside, init_hidden=True, **ZERO)
    with torch.no_grad():
        rl.recurrent.weight.mul_(2.0)
        rl.recurrent.bias.uniform_(0.1, 0.3)
    fc = scaled_linear(10, 12, 3.0)
    net = nn.Sequential(fc, rl).double()
    sub = _extract_snntorch_module(rl)
    assert isinstance(sub, nir.NIRGraph)
    g = nir.NIRGraph(
        nodes={"input": nir.Input(np.array([10])), "fc": _extract_snntorch_module(fc), "rec": sub,
               "output": nir.Output(np.array([12]))},
        edges=[("input", "fc"), ("fc", "rec"), ("rec", "output")],
    )
    graph = import_snn(g)
    assert sorted(graph.nodes) == ["fc", "input", "output", "rec.lif", "rec.w_rec"]
    assert sorted(graph.edges) == [("fc", "rec.lif"), ("input", "fc"), ("rec.lif", "output"),
                                   ("rec.lif", "rec.w_rec"), ("rec.w_rec", "rec.lif")]
    assert graph.predecessors("rec.lif") == ["fc", "rec.w_rec"]  # the subgraph's summation order
    x = spikes_in((10,))
    assert_same_spikes(snn_forward(net, x, {"rec.lif": 1}), graph, x)


def test_snntorch_conv() -> None:
    c, hw = 4, 8
    conv = nn.Conv2d(2, c, 3, padding=1)
    with torch.no_grad():
        conv.weight.mul_(4.0)
    net = nn.Sequential(conv, leaky((c, hw, hw), **ZERO), nn.AvgPool2d(2), nn.Flatten(),
                        scaled_linear(c * 16, 6, 6.0), leaky(6, **ZERO)).double()
    graph = import_snn(export_snn(net, (2, hw, hw)))
    assert graph.schedule().shapes["3"] == (c * 16,)
    x = spikes_in((2, hw, hw))
    assert_same_spikes(snn_forward(net, x, {"1": 1, "5": 5}), graph, x)


# Known losses: snnTorch writes every reset as reset-to-zero without delay, and the file carries no
# trace of the source's reset_mechanism / reset_delay, so the import cannot honour them.


@pytest.mark.parametrize(
    ("kind", "kw"),
    [
        ("leaky", {"reset_mechanism": "subtract", "reset_delay": False}),  # v - thr, not 0
        ("leaky", {}),  # snnTorch's defaults: subtract, and the reset one step late
        ("synaptic", {"reset_mechanism": "zero", "reset_delay": True}),  # also drops the next input
    ],
)
def test_snntorch_reset_loss(kind: str, kw: dict[str, object]) -> None:
    if kind == "leaky":
        layer: nn.Module = leaky(16, **kw)
    else:
        layer = snn.Synaptic(alpha=torch.rand(16) * 0.5 + 0.3, beta=torch.rand(16) * 0.5 + 0.45,
                             threshold=torch.rand(16) * 0.5 + 0.5, spike_grad=heaviside, init_hidden=True, **kw)
    net = nn.Sequential(scaled_linear(10, 16, 4.0), layer).double()
    graph = import_snn(export_snn(net, (10,)))
    x = spikes_in((10,), p=0.5)
    assert_spikes_differ(snn_forward(net, x, {"1": 1}), graph, x)


def test_snntorch_leaky_zero_reset_delay_is_harmless() -> None:
    """Leaky with reset to zero: reset_delay=True only delays the *recorded* membrane's reset; the
    next step starts from 0 either way, so the spikes survive the export (Synaptic's do not)."""
    net = nn.Sequential(scaled_linear(10, 16, 4.0), leaky(16, reset_mechanism="zero", reset_delay=True)).double()
    graph = import_snn(export_snn(net, (10,)))
    x = spikes_in((10,), p=0.5)
    assert_same_spikes(snn_forward(net, x, {"1": 1}), graph, x)


# ------------------------------------------------------------------------------------------------
# Norse


def norse_forward(mods: list[nn.Module], x: torch.Tensor, spiking: dict[str, int]) -> dict[str, np.ndarray]:
    state: list[object] = [None] * len(mods)
    rec: dict[str, list[np.ndarray]] = {k: [] for k in spiking}
    with torch.no_grad():
        for t in range(x.shape[1]):
            h = x[:, t]
            for i, m in enumerate(mods):
                if i in spiking.values():
                    h, state[i] = m(h, state[i])
                else:
                    h = m(h)
                for k, j in spiking.items():
                    if i == j:
                        rec[k].append(h.numpy().copy())
    return {k: np.stack(v, axis=1) for k, v in rec.items()}


def f64(*shape: int, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(*shape, dtype=torch.float64) * (hi - lo) + lo


def norse_net() -> list[nn.Module]:
    z = {"dtype": torch.float64}
    lin1, lin2, lin3 = (scaled_linear(10, 12, 40.0).double(), scaled_linear(12, 8, 2.0).double(),
                        scaled_linear(8, 6, 20.0).double())
    box = LIFBoxCell(LIFBoxParameters(tau_mem_inv=f64(12, lo=50, hi=250), v_th=f64(12, lo=0.5, hi=1.0),
                                      v_leak=torch.zeros(12, **z), v_reset=torch.zeros(12, **z), method="heaviside"))
    iaf = IAFCell(IAFParameters(v_th=f64(8, lo=0.5, hi=1.0), v_reset=torch.zeros(8, **z), method="heaviside"))
    lif = norse.LIFCell(LIFParameters(tau_syn_inv=f64(6, lo=100, hi=300), tau_mem_inv=f64(6, lo=50, hi=150),
                                      v_th=f64(6, lo=0.2, hi=0.5), v_leak=torch.zeros(6, **z),
                                      v_reset=torch.zeros(6, **z), method="heaviside"))
    return [lin1, box, lin2, iaf, lin3, lif]


def import_norse(g: nir.NIRGraph | Path, **kw: object) -> Graph:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LNMDeployWarning)
        graph = from_nir(g, producer="norse", **kw)  # type: ignore[arg-type]
    msgs = [str(w.message) for w in caught if issubclass(w.category, LNMDeployWarning)]
    assert any("tau = dt/tau_inv" in m for m in msgs), msgs  # the inversion is announced
    assert any("batch dimension" in m for m in msgs), msgs  # Norse records Input shape (1, 10)
    return graph


def test_norse_lifbox_iaf_lif() -> None:
    mods = norse_net()
    g = norse.to_nir(norse.SequentialState(*mods), torch.zeros(1, 10, dtype=torch.float64))
    assert isinstance(g.nodes["1"], nir.LIF) and isinstance(g.nodes["3"], nir.IF)
    assert isinstance(g.nodes["5"], nir.CubaLIF)
    # What Norse 1.1.0 writes: tau = dt / tau_mem_inv with dt = 1e-3 (not 1 / tau_mem_inv).
    np.testing.assert_allclose(np.asarray(g.nodes["1"].tau), 1e-3 / mods[1].p.tau_mem_inv.numpy())
    graph = import_norse(g)
    box = graph.nodes["1"]
    assert isinstance(box, Neuron)
    np.testing.assert_allclose(box.poly[1], 1 - 1e-3 * mods[1].p.tau_mem_inv.numpy(), rtol=1e-15)
    iaf = graph.nodes["3"]
    assert isinstance(iaf, Neuron) and np.array_equal(iaf.in_gain, np.ones(8))  # v += x, no dt
    x = spikes_in((10,))
    assert_same_spikes(norse_forward(mods, x, {"1": 1, "3": 3, "5": 5}), graph, x)


def test_norse_through_file(tmp_path: Path) -> None:
    mods = norse_net()
    g = norse.to_nir(norse.SequentialState(*mods), torch.zeros(1, 10, dtype=torch.float64))
    nir.write(tmp_path / "norse.nir", g)
    graph = import_norse(tmp_path / "norse.nir")
    x = spikes_in((10,))
    assert_same_spikes(norse_forward(mods, x, {"1": 1, "3": 3, "5": 5}), graph, x)


def test_norse_other_dt() -> None:
    """to_nir(dt=...) must be given to the importer too: the bug scales tau by dt."""
    mods = norse_net()
    for m in (mods[1], mods[5]):
        m.dt = 5e-4  # the cells' own step
    g = norse.to_nir(norse.SequentialState(*mods), torch.zeros(1, 10, dtype=torch.float64), dt=5e-4)
    x = spikes_in((10,))
    ref = norse_forward(mods, x, {"1": 1, "3": 3, "5": 5})
    assert_same_spikes(ref, import_norse(g, dt=5e-4), x)
    with pytest.warns(LNMDeployWarning):
        wrong = from_nir(g, producer="norse")  # assumes 1e-3
    assert_spikes_differ(ref, wrong, x)


def test_norse_graph_read_as_generic_is_flagged() -> None:
    """Read without producer, Norse's tiny tau (dt*tau_true) make forward Euler explode: warned."""
    g = norse.to_nir(norse.SequentialState(*norse_net()), torch.zeros(1, 10, dtype=torch.float64))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", LNMDeployWarning)
        from_nir(g)
    msgs = " | ".join(str(w.message) for w in caught)
    assert "assumed dt" in msgs and "producer='norse'" in msgs and "unstable" in msgs


# ------------------------------------------------------------------------------------------------
# Sinabs 2.0 and Rockpool 3.1 (optional: skipped where not installed). Their neurons spike where
# v >= v_th and may emit several spikes per step (Sinabs MultiSpike, Rockpool's default), which
# lnm-deploy's neurons cannot: those defaults are compared by bin agreement (a bin: one neuron, one
# step; spike or not) against a bound measured and explained in docs/nir.md; the single-spike
# variants must agree spike for spike.


def _bins(ref: dict[str, np.ndarray], graph: Graph, x: torch.Tensor) -> dict[str, float]:
    res = run_float(graph, x.numpy())
    out = {}
    for name, s in ref.items():
        ours = res.spikes[name]
        assert s.shape == ours.shape, name
        assert 0 < int((s > 0).sum()) < s.size, f"layer {name} must spike sometimes, not always"
        out[name] = float(((s > 0) == (ours > 0)).mean())
    return out


def _sinabs_run(net: nn.Sequential, x: torch.Tensor, layers: tuple[int, ...]) -> dict[str, np.ndarray]:
    for m in net:
        if hasattr(m, "reset_states"):
            m.reset_states()
    ref: dict[str, np.ndarray] = {}
    h = x
    with torch.no_grad():
        for i, m in enumerate(net):
            h = m(h)
            if i in layers:
                ref[str(i)] = h.double().numpy()
    return ref


def _sinabs_mlp(neuron: str, **kw: object) -> tuple[nir.NIRGraph, dict[str, np.ndarray], torch.Tensor]:
    sl = pytest.importorskip("sinabs.layers")
    from sinabs.nir import to_nir as sinabs_to_nir

    def make() -> nn.Module:
        return sl.IAF(**kw) if neuron == "IAF" else sl.LIF(tau_mem=torch.tensor(8.0), **kw)

    gain = 1.0 if neuron == "IAF" else 8.0
    net = nn.Sequential(scaled_linear(20, 16, gain), make(), scaled_linear(16, 8, gain * 1.5), make())
    sample = torch.zeros(1, T, 20)
    net(sample)  # sinabs sizes its state on the first call
    g = sinabs_to_nir(net, sample)
    x = (torch.rand(B, T, 20) < 0.3).float()
    return g, _sinabs_run(net, x, (1, 3)), x.double()


@pytest.mark.parametrize("neuron", ["IAF", "LIF"])
def test_sinabs_single_spike_mlp_exact(neuron: str) -> None:
    pytest.importorskip("sinabs")
    from sinabs.activation import MembraneReset, SingleSpike

    g, ref, x = _sinabs_mlp(neuron, spike_fn=SingleSpike, reset_fn=MembraneReset())
    with pytest.warns(LNMDeployWarning, match="v >= v_th"):
        ir = from_nir(g, producer="sinabs", spikes="single", reset="value")
    assert ir.metadata["read_options"]["requested"]["spikes"] == "single"
    assert set(_bins(ref, ir, x).values()) == {1.0}
    assert_same_spikes({k: v for k, v in ref.items()}, ir, x)


@pytest.mark.parametrize("neuron", ["IAF", "LIF"])
def test_sinabs_default_mlp(neuron: str) -> None:
    """Sinabs' defaults (MultiSpike, MembraneSubtract; LIF norm_input): subtractive reset exact,
    several spikes in one step spread over later steps (warned)."""
    g, ref, x = _sinabs_mlp(neuron)
    with pytest.warns(LNMDeployWarning, match=r"floor\(v / v_th\)"):
        ir = from_nir(g, producer="sinabs")
    assert ir.metadata["read_options"]["convention"]["reset"] == "subtract"
    _assert_multi_residual(ref, _bins(ref, ir, x), 0.99)


def test_sinabs_mlp_time_first_input_shape() -> None:
    g, _, _ = _sinabs_mlp("IAF")
    assert tuple(as_shape(g.nodes["input"].input_type["input"])) == (T, 20)
    with pytest.raises(GraphError, match=r"looks like \(time, features\).*--input-shape 20") as e:
        from_nir(g, dt=1.0)
    assert "Flatten" not in str(e.value)
    with pytest.warns(LNMDeployWarning, match=r"is \(time, features\)"):
        ir = from_nir(g, producer="sinabs")
    assert ir.nodes["input"].shape == (20,)


def test_sinabs_cnn() -> None:
    sl = pytest.importorskip("sinabs.layers")
    from sinabs.nir import to_nir as sinabs_to_nir

    net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), sl.IAFSqueeze(batch_size=B), sl.SumPool2d(2),
                        nn.Conv2d(4, 4, 3, padding=1), sl.IAFSqueeze(batch_size=B), nn.Flatten(),
                        nn.Linear(64, 10), sl.IAFSqueeze(batch_size=B))
    x = (torch.rand(B * T, 2, 8, 8) < 0.3).float()
    net(x)
    g = sinabs_to_nir(net, x[:B])
    ref = {k: v.reshape(B, T, *v.shape[1:]) for k, v in _sinabs_run(net, x, (1, 4, 7)).items()}
    with pytest.warns(LNMDeployWarning, match="Sinabs"):
        ir = from_nir(g, producer="sinabs")
    _assert_multi_residual(ref, _bins(ref, ir, x.reshape(B, T, 2, 8, 8).double()), SINABS_CNN_BOUND)


def as_shape(a: object) -> tuple[int, ...]:
    return tuple(int(v) for v in np.asarray(a).reshape(-1))


def _rockpool_mlp(cls_name: str, gain: float, **kw: object
                  ) -> tuple[nir.NIRGraph, dict[str, np.ndarray], torch.Tensor]:
    modules = pytest.importorskip("rockpool.nn.modules")
    from rockpool.nn.combinators import Sequential
    from rockpool.nn.modules.torch.nir import to_nir as rockpool_to_nir

    cls = getattr(modules, cls_name)
    mods = [modules.LinearTorch((20, 16)), cls(16, **kw), modules.LinearTorch((16, 8)), cls(8, **kw)]
    with torch.no_grad():
        mods[0].weight.mul_(gain)
        mods[2].weight.mul_(gain)
    g = rockpool_to_nir(Sequential(*mods))
    x = (torch.rand(B, T, 20) < 0.3).float()
    ref: dict[str, np.ndarray] = {}
    h = x
    with torch.no_grad():
        for i, m in enumerate(mods):
            h, _, _ = m(h)
            if i % 2:
                ref[f"{i}_{cls_name}"] = h.double().numpy()
    return g, ref, x.double()


@pytest.mark.parametrize("cls_name", ["LIFTorch", "LIFNeuronTorch"])
def test_rockpool_single_spike_mlp_exact(cls_name: str) -> None:
    g, ref, x = _rockpool_mlp(cls_name, 1.5, max_spikes_per_dt=torch.tensor(1.0))
    with pytest.warns(LNMDeployWarning, match="Rockpool's"):
        ir = from_nir(g, spikes="single")  # detected from the node names, dt from r
    opts = ir.metadata["read_options"]
    assert opts["resolved"]["producer"] == "rockpool" and opts["producer_from"].startswith("detected")
    assert opts["resolved"]["dt"] == 1e-3
    assert_same_spikes(ref, ir, x)


@pytest.mark.parametrize("cls_name", ["LIFTorch", "LIFNeuronTorch"])
def test_rockpool_default_mlp(cls_name: str) -> None:
    g, ref, x = _rockpool_mlp(cls_name, 1.0)
    with pytest.warns(LNMDeployWarning, match=r"floor\(v / v_th\)"):
        ir = from_nir(g, producer="rockpool")
    _assert_multi_residual(ref, _bins(ref, ir, x), ROCKPOOL_MULTI_BOUND)


#: Lowest bin agreement measured with the frameworks' default multi-spike neurons at the weights
#: above (docs/nir.md): the whole difference comes from steps where the source emits >= 2 spikes.
ROCKPOOL_MULTI_BOUND = 0.75
SINABS_CNN_BOUND = 0.85


def _assert_multi_residual(ref: dict[str, np.ndarray], agreement: dict[str, float], bound: float) -> None:
    """Layers (in order) agree exactly until the first that emits several spikes in one step; from
    there on, at least ``bound``."""
    multi_seen = False
    for name, s in ref.items():
        multi_seen |= bool(s.max() > 1)
        if not multi_seen:
            assert agreement[name] == 1.0, (name, agreement)
        assert agreement[name] >= bound, (name, agreement)
