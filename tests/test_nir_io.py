"""NIR export and import: exact round trips of lnm-deploy's graphs, the NIR nodes chosen for other
readers, generic NIR semantics, and every error a bad graph or file must raise."""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import nir
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lnm_deploy.errors import (
    GraphError,
    LNMDeployWarning,
    NumericError,
    UnsupportedError,
    UserInputError,
)
from lnm_deploy.execute import run_float
from lnm_deploy.ir import (
    Affine,
    AvgPool2d,
    Conv2d,
    Flatten,
    Graph,
    Input,
    Neuron,
    Node,
    Output,
    Scale,
    SumPool2d,
    Threshold,
    sequential,
)
from lnm_deploy.nir_io import from_nir, read_nir, to_nir, write_nir
from lnm_deploy.nir_io.conventions import fit_range, linear_fit

RNG = np.random.default_rng(7)


def rnd(*shape: int, scale: float = 1.0) -> np.ndarray:
    return RNG.normal(size=shape) * scale


def neuron(shape: tuple[int, ...], degree: int = 1, synapse: bool = False, reset: str = "value",
           spiking: bool = True, dt: float = 1e-3) -> Neuron:
    """A population with per-neuron random parameters (every array distinct, so bugs show)."""
    poly = rnd(degree + 1, *shape, scale=0.05)
    if degree >= 1:
        poly[1] += RNG.uniform(0.6, 0.95, size=shape)
    return Neuron(
        shape=shape,
        poly=poly,
        v_th=RNG.uniform(0.5, 1.5, size=shape) if spiking else None,
        v_reset=RNG.uniform(-0.2, 0.1, size=shape),
        reset=reset,  # type: ignore[arg-type]
        in_gain=RNG.uniform(0.5, 2.0, size=shape),
        syn_decay=RNG.uniform(0.2, 0.9, size=shape) if synapse else None,
        syn_gain=RNG.uniform(0.5, 2.0, size=shape) if synapse else None,
        dt=dt,
        metadata={"source": "test", "layer": 3, "tags": ["a", "b"], "none": None},
    )


def assert_graphs_identical(a: Graph, b: Graph) -> None:
    """Same node names in the same order, same edges, same metadata, bit-identical arrays."""
    assert list(a.nodes) == list(b.nodes)
    assert a.edges == b.edges
    # How a graph was read (``read_options``) is recorded on reading, not part of the graph.
    def meta(g: Graph) -> dict:
        return {k: v for k, v in g.metadata.items() if k != "read_options"}

    assert meta(a) == meta(b)
    for name, x in a.nodes.items():
        y = b.nodes[name]
        assert type(x) is type(y), name
        assert x.metadata == y.metadata, name
        for f in x.__dataclass_fields__:
            u, v = getattr(x, f), getattr(y, f)
            if isinstance(u, np.ndarray) or isinstance(v, np.ndarray):
                assert isinstance(u, np.ndarray) and isinstance(v, np.ndarray), (name, f, u, v)
                assert u.dtype == v.dtype == np.float64 and u.shape == v.shape, (name, f)
                assert np.array_equal(u, v), (name, f)
            else:
                assert type(u) is type(v) and u == v, (name, f, u, v)


# ------------------------------------------------------------------------------------------------
# Graphs covering every node type


def g_affine() -> Graph:
    return sequential([("fc", Affine(weight=rnd(5, 7), bias=rnd(5))), ("fc_nobias", Affine(weight=rnd(3, 5)))],
                      (7,), metadata={"producer": "test", "dt": 1e-3, "n": [1, 2], "nested": {"a": None}})


def g_conv() -> Graph:
    return sequential(
        [
            ("conv", Conv2d(weight=rnd(4, 2, 3, 3), bias=rnd(4), stride=(1, 2), padding=(1, 0))),
            ("conv_nobias", Conv2d(weight=rnd(4, 4, 2, 2), bias=None, dilation=(2, 1))),
            ("flat", Flatten(start_dim=1, end_dim=2)),
            ("flat2", Flatten()),
        ],
        (2, 9, 9),
    )


def g_conv_grouped() -> Graph:
    return sequential(
        [
            ("conv_g", Conv2d(weight=rnd(4, 1, 3, 2), bias=rnd(4), groups=2, padding=(1, 0))),
            ("flat", Flatten()),
        ],
        (2, 5, 5),
    )


def g_pools() -> Graph:
    return sequential(
        [
            ("sum", SumPool2d(kernel_size=(2, 2), stride=(1, 1), padding=(1, 0))),
            ("avg", AvgPool2d(kernel_size=3, stride=2, padding=1)),
            ("flat", Flatten(start_dim=0, end_dim=-2)),
        ],
        (3, 8, 8),
    )


def g_scale_threshold() -> Graph:
    return sequential(
        [
            ("sc0", Scale(scale=np.array(1.5))),
            ("sc", Scale(scale=rnd(6))),
            ("th0", Threshold(v_th=np.array(0.25))),
            ("th", Threshold(v_th=rnd(6))),
        ],
        (6,),
    )


def g_neurons(degree: int, synapse: bool, reset: str) -> Graph:
    return sequential(
        [
            ("fc", Affine(weight=rnd(8, 5), bias=rnd(8))),
            ("lnm", neuron((8,), degree, synapse, reset)),
            ("fc2", Affine(weight=rnd(4, 8))),
            ("readout", neuron((4,), degree, synapse, reset, spiking=False)),
        ],
        (5,),
        metadata={"dt": 1e-3},
    )


def g_conv_neuron() -> Graph:
    return sequential(
        [
            ("conv", Conv2d(weight=rnd(3, 1, 3, 3), padding=(1, 1))),
            ("n", neuron((3, 5, 5), degree=2, synapse=True)),
            ("pool", SumPool2d(kernel_size=(5, 5))),
        ],
        (1, 5, 5),
    )


def g_integrators() -> Graph:
    if_node = Neuron(shape=(6,), poly=[0.0, 1.0], v_th=np.full(6, 0.7), v_reset=np.zeros(6), dt=1e-4)
    i_node = Neuron(shape=(6,), poly=[0.0, 1.0], v_th=None, in_gain=np.full(6, 0.5), dt=1e-4)
    return sequential([("if", if_node), ("fc", Affine(weight=rnd(6, 6))), ("i", i_node)], (6,))


def g_recurrent() -> Graph:
    nodes: dict[str, Node] = {
        "in": Input(shape=(4,)),
        "fc": Affine(weight=rnd(6, 4, scale=0.5), bias=rnd(6, scale=0.1)),
        "rnn": Neuron(shape=(6,), poly=np.array([0.0, 0.9, 0.05, -0.02])[:, None] + rnd(4, 6, scale=0.005),
                      v_th=RNG.uniform(0.5, 1.0, 6), v_reset=np.zeros(6), reset="subtract",
                      syn_decay=RNG.uniform(0.3, 0.6, 6), syn_gain=np.ones(6), dt=1e-3),
        "rnn_rec": Affine(weight=rnd(6, 6, scale=0.3)),
        "head": Affine(weight=rnd(2, 6)),
        "out": Output(),
    }
    edges = [("in", "fc"), ("fc", "rnn"), ("rnn", "rnn_rec"), ("rnn_rec", "rnn"), ("rnn", "head"), ("head", "out")]
    return Graph(nodes=nodes, edges=edges, metadata={"producer": "lnm-deploy", "dt": 1e-3})


GRAPHS: dict[str, Callable[[], Graph]] = {
    "affine": g_affine,
    "conv": g_conv,
    "conv_grouped": g_conv_grouped,
    "pools": g_pools,
    "scale_threshold": g_scale_threshold,
    "conv_neuron": g_conv_neuron,
    "integrators": g_integrators,
    "recurrent": g_recurrent,
}
for _d in (1, 2, 3):
    for _syn in (False, True):
        for _reset in ("value", "subtract"):
            GRAPHS[f"neuron_d{_d}_{'syn' if _syn else 'nosyn'}_{_reset}"] = (
                lambda d=_d, s=_syn, r=_reset: g_neurons(d, s, r)
            )


def quiet(fn: Callable[[], Any]) -> Any:
    """Call ``fn`` ignoring lnm-deploy's approximation warnings (tested separately)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LNMDeployWarning)
        return fn()


@pytest.mark.parametrize("make", GRAPHS.values(), ids=list(GRAPHS))
def test_round_trip_file_bit_exact(make: Callable[[], Graph], tmp_path: Path) -> None:
    g = make()
    g.schedule()
    path = quiet(lambda: write_nir(g, tmp_path / "g.nir"))
    assert path == tmp_path / "g.nir"
    with warnings.catch_warnings():
        warnings.simplefilter("error", LNMDeployWarning)  # our own files need no guessing
        back = read_nir(path)
    assert_graphs_identical(g, back)


@pytest.mark.parametrize("make", GRAPHS.values(), ids=list(GRAPHS))
def test_round_trip_in_memory_bit_exact(make: Callable[[], Graph]) -> None:
    g = make()
    back = from_nir(quiet(lambda: to_nir(g)))
    assert_graphs_identical(g, back)


@pytest.mark.parametrize("make", GRAPHS.values(), ids=list(GRAPHS))
def test_written_file_is_plain_nir(make: Callable[[], Graph], tmp_path: Path) -> None:
    """Any NIR reader can load it: plain ``nir.read`` with NIR's own type checking."""
    g = make()
    quiet(lambda: write_nir(g, tmp_path / "g.nir"))
    # nir 1.0.8's own Conv2d shape rule is wrong for groups > 1 and non-square kernels (warned).
    nir_bug = any(isinstance(v, Conv2d) and (v.groups > 1 or v.weight.shape[2] != v.weight.shape[3])
                  for v in g.nodes.values())
    n = nir.read(tmp_path / "g.nir", type_check=not nir_bug)
    assert set(n.nodes) == set(g.nodes)
    assert [tuple(e) for e in n.edges] == g.edges
    assert n.metadata["producer"] == "lnm-deploy" and "producer_version" in n.metadata
    sched = g.schedule()
    for name, node in n.nodes.items():
        if isinstance(node, (nir.Input, nir.Output)) or nir_bug:
            continue
        out = next(iter(node.output_type.values()))
        assert tuple(int(s) for s in out) == sched.shapes[name], name


def test_recurrent_round_trip_runs_identically(tmp_path: Path) -> None:
    g = g_recurrent()
    back = quiet(lambda: (write_nir(g, tmp_path / "r.nir"), read_nir(tmp_path / "r.nir"))[1])
    x = (RNG.random((8, 50, 4)) < 0.4).astype(np.float64)
    a, b = run_float(g, x, record=True), run_float(back, x, record=True)
    assert a.spikes["rnn"].sum() > 0
    assert np.array_equal(a.output, b.output)
    assert np.array_equal(a.states["rnn"]["v"], b.states["rnn"]["v"])


@given(
    degree=st.integers(0, 3),
    synapse=st.booleans(),
    spiking=st.booleans(),
    reset=st.sampled_from(["value", "subtract"]),
    shape=st.sampled_from([(1,), (3,), (2, 3)]),
    seed=st.integers(0, 2**31 - 1),
)
def test_neuron_round_trip_property(degree: int, synapse: bool, spiking: bool, reset: str,
                                    shape: tuple[int, ...], seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = Neuron(
        shape=shape,
        poly=rng.normal(size=(degree + 1, *shape)),
        v_th=rng.normal(size=shape) if spiking else None,
        v_reset=rng.normal(size=shape),
        reset=reset,  # type: ignore[arg-type]
        in_gain=rng.normal(size=shape),
        syn_decay=rng.normal(size=shape) if synapse else None,
        syn_gain=rng.normal(size=shape) if synapse else None,
        dt=float(rng.uniform(1e-5, 1e-2)),
    )
    layers: list[tuple[str, Node]] = [("n", n)]
    if len(shape) > 1:
        layers.append(("flat", Flatten()))
    g = sequential(layers, shape)
    assert_graphs_identical(g, from_nir(quiet(lambda: to_nir(g))))


@given(
    threshold=st.sampled_from([">", ">="]),
    max_spikes=st.sampled_from([1, 2, 7, None]),
    floor=st.booleans(),
    synapse=st.booleans(),
    reset=st.sampled_from(["value", "subtract"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_spike_rules_round_trip_property(threshold: str, max_spikes: int | None, floor: bool, synapse: bool,
                                         reset: str, seed: int) -> None:
    """The spike test, graded spikes and the membrane floor come back exactly from lnm-deploy's file."""
    rng = np.random.default_rng(seed)
    shape = (3,)
    n = Neuron(shape=shape, poly=rng.normal(size=(2, *shape)), v_th=rng.uniform(0.2, 2.0, size=shape),
               v_reset=rng.normal(size=shape), reset=reset, in_gain=rng.normal(size=shape),  # type: ignore[arg-type]
               syn_decay=rng.uniform(size=shape) if synapse else None, syn_gain=rng.normal(size=shape) if synapse else None,
               threshold=threshold, max_spikes=max_spikes,  # type: ignore[arg-type]
               v_floor=rng.normal(size=shape) if floor else None, dt=1e-3)
    g = sequential([("n", n)], shape)
    assert_graphs_identical(g, from_nir(quiet(lambda: to_nir(g))))


def test_spike_rules_in_a_file_and_its_format(tmp_path: Path) -> None:
    """Through a file: the rules are node metadata (lnm_threshold, lnm_max_spikes 'unbounded' or an
    integer, lnm_v_floor) and make the file lnm_format 2, so that a reader of format 1 refuses it; a
    graph without them stays format 1. The float runs agree bit for bit."""
    def graph(**rules: Any) -> Graph:
        n = Neuron(shape=(4,), poly=[0.0, 0.9], v_th=np.full(4, 0.5), reset="subtract", **rules)
        return sequential([("fc", Affine(weight=rnd(4, 3, scale=2.0))), ("n", n)], (3,))

    plain = quiet(lambda: to_nir(graph()))
    assert int(plain.metadata["lnm_format"]) == 1 and "lnm_threshold" not in plain.nodes["n"].metadata
    g = graph(threshold=">=", max_spikes=None, v_floor=np.full(4, -0.3))
    write_nir(g, tmp_path / "g.nir")
    with h5py.File(tmp_path / "g.nir") as f:
        assert int(f["node/metadata/lnm_format"][()]) == 2
        meta = f["node/nodes/n/metadata"]
        assert meta["lnm_threshold"][()] in (b">=", ">=") and meta["lnm_max_spikes"][()] in (b"unbounded", "unbounded")
    back = read_nir(tmp_path / "g.nir")
    assert_graphs_identical(g, back)
    x = (RNG.random((4, 30, 3)) < 0.5).astype(np.float64)
    a, b = run_float(g, x, record=True), run_float(back, x, record=True)
    assert a.spikes["n"].max() >= 2 and np.array_equal(a.spikes["n"], b.spikes["n"])
    capped = quiet(lambda: from_nir(to_nir(graph(max_spikes=3))))
    assert capped.nodes["n"].max_spikes == 3  # type: ignore[attr-defined]
    bad = to_nir(graph(max_spikes=3))
    bad.nodes["n"].metadata["lnm_max_spikes"] = "many"
    with pytest.raises(GraphError, match="lnm_max_spikes"):
        quiet(lambda: from_nir(bad))
    newer = to_nir(g)
    newer.metadata["lnm_format"] = 3
    with pytest.raises(UnsupportedError, match="format 3"):
        from_nir(newer)


def test_reading_options_are_checked() -> None:
    g = quiet(lambda: to_nir(sequential([("n", neuron((3,)))], (3,))))
    plain = strip_lnm(g)
    for kw, why in (({"spikes": 0}, "positive integer"), ({"spikes": "some"}, "positive integer"),
                    ({"v_floor": "low"}, "-v_th"), ({"v_floor": float("nan")}, "finite"),
                    ({"threshold": "<"}, "choose one of")):
        with pytest.raises(UserInputError, match=why):
            from_nir(plain, dt=1e-3, **kw)  # type: ignore[arg-type]
    read = quiet(lambda: from_nir(plain, dt=1e-3, spikes="4", v_floor="-1.5", threshold=">="))
    n = read.nodes["n"]
    assert isinstance(n, Neuron) and (n.max_spikes, n.threshold) == (4, ">=")
    assert np.array_equal(n.v_floor, np.full(3, -1.5))  # type: ignore[arg-type]
    assert read.metadata["read_options"]["requested"]["spikes"] == 4
    assert read.metadata["read_options"]["convention"]["max_spikes"] == 4


# ------------------------------------------------------------------------------------------------
# The NIR nodes other readers see


def nir_node(n: Neuron) -> nir.NIRNode:
    g = sequential([("n", n)], n.shape)
    return quiet(lambda: to_nir(g)).nodes["n"]


def strip_lnm(g: nir.NIRGraph) -> nir.NIRGraph:
    """The same NIR graph as another tool would write it: no lnm-deploy metadata."""
    for node in g.nodes.values():
        node.metadata = {}
    g.metadata = {}
    return g


def test_degree1_is_exact_lif() -> None:
    beta, th0, dt = RNG.uniform(0.5, 0.95, 6), rnd(6, scale=0.01), 1e-3
    n = Neuron(shape=(6,), poly=np.stack([th0, beta]), v_th=np.ones(6), in_gain=np.full(6, 2.0), dt=dt)
    lif = nir_node(n)
    assert isinstance(lif, nir.LIF)
    np.testing.assert_allclose(lif.tau, dt / (1 - beta), rtol=1e-15)
    np.testing.assert_allclose(lif.r, 2.0 / (1 - beta), rtol=1e-15)
    np.testing.assert_allclose(lif.v_leak, th0 / (1 - beta), rtol=1e-15)
    assert np.array_equal(lif.v_threshold, np.ones(6)) and np.array_equal(lif.v_reset, np.zeros(6))
    assert lif.metadata["lnm_fit"].startswith("NIR parameters are the least-squares")


def test_node_choice() -> None:
    assert isinstance(nir_node(neuron((3,), 1, synapse=False)), nir.LIF)
    assert isinstance(nir_node(neuron((3,), 2, synapse=True)), nir.CubaLIF)
    assert isinstance(nir_node(neuron((3,), 3, spiking=False)), nir.LI)
    assert isinstance(nir_node(neuron((3,), 1, synapse=True, spiking=False)), nir.CubaLI)
    integ = Neuron(shape=(3,), poly=[0.0, 1.0], v_th=np.ones(3), in_gain=np.full(3, 0.5), dt=1e-3)
    node = nir_node(integ)
    assert isinstance(node, nir.IF) and np.allclose(node.r, 500.0)  # dt * r = in_gain
    assert isinstance(nir_node(Neuron(shape=(3,), poly=[0.0, 1.0], v_th=None)), nir.I)
    # "almost v" is not an integrator: it is a (very slow) LIF
    assert isinstance(nir_node(Neuron(shape=(3,), poly=[1e-9, 1.0], v_th=np.ones(3))), nir.LIF)


def test_non_leaky_with_synapse_warns() -> None:
    n = Neuron(shape=(3,), poly=[0.0, 1.0], v_th=np.ones(3), syn_decay=np.full(3, 0.5), dt=1e-3)
    with pytest.warns(LNMDeployWarning, match="does not leak"):
        node = to_nir(sequential([("n", n)], (3,))).nodes["n"]
    assert isinstance(node, nir.CubaLIF) and np.all(np.isfinite(node.tau_mem)) and np.all(node.tau_mem > 0)


@pytest.mark.parametrize("degree", [2, 3])
def test_linear_fit_is_least_squares(degree: int) -> None:
    shape = (4,)
    poly = rnd(degree + 1, *shape)
    v_th, v_reset = RNG.uniform(0.5, 2.0, shape), RNG.uniform(-1.0, 0.5, shape)
    lo, hi = fit_range(v_th, v_reset, shape)
    assert np.array_equal(lo, np.minimum(v_reset, 0.0)) and np.array_equal(hi, v_th)
    a, b = linear_fit(poly, lo, hi)
    for i in range(shape[0]):
        # discrete least squares on cell midpoints: converges to the continuous fit as O(1/N^2)
        v = lo[i] + (np.arange(20000) + 0.5) * (hi[i] - lo[i]) / 20000
        p = np.polynomial.polynomial.polyval(v, poly[:, i])
        bb, aa = np.polyfit(v, p, 1)
        assert a[i] == pytest.approx(aa, abs=1e-6) and b[i] == pytest.approx(bb, abs=1e-6)


def test_degree2_nir_parameters_follow_the_fit() -> None:
    n = neuron((5,), degree=2, synapse=True)
    node = nir_node(n)
    assert isinstance(node, nir.CubaLIF)
    assert n.v_th is not None and n.v_reset is not None and n.syn_decay is not None and n.syn_gain is not None
    a, b = linear_fit(n.poly, *fit_range(n.v_th, n.v_reset, n.shape))
    np.testing.assert_allclose(node.tau_mem, n.dt / (1 - b), rtol=1e-14)
    np.testing.assert_allclose(node.v_leak, a / (1 - b), rtol=1e-14)
    np.testing.assert_allclose(node.tau_syn, n.dt / (1 - n.syn_decay), rtol=1e-14)
    np.testing.assert_allclose(node.w_in, n.syn_gain / (1 - n.syn_decay), rtol=1e-14)
    np.testing.assert_array_equal(node.metadata["lnm_poly"], n.poly)


@pytest.mark.parametrize("synapse", [False, True])
def test_generic_reader_sees_the_same_lif(synapse: bool) -> None:
    """A degree-1 graph read back *without* our metadata (as another tool sees it) gives the same
    per-step parameters up to rounding, and the same spikes."""
    dt = 1e-3
    g = sequential([("fc", Affine(weight=rnd(8, 5, scale=2.0))),
                    ("n", neuron((8,), degree=1, synapse=synapse))], (5,))
    plain = strip_lnm(to_nir(g))
    back = from_nir(plain, producer="generic", dt=dt)
    a, b = g.nodes["n"], back.nodes["n"]
    assert isinstance(a, Neuron) and isinstance(b, Neuron)
    np.testing.assert_allclose(b.poly, a.poly, rtol=1e-12, atol=1e-15)
    assert a.in_gain is not None and b.in_gain is not None
    np.testing.assert_allclose(b.in_gain, a.in_gain, rtol=1e-12)
    if synapse:
        assert b.syn_decay is not None and b.syn_gain is not None and a.syn_decay is not None
        np.testing.assert_allclose(b.syn_decay, a.syn_decay, rtol=1e-12)
        assert a.syn_gain is not None
        np.testing.assert_allclose(b.syn_gain, a.syn_gain, rtol=1e-12)
    x = (RNG.random((8, 60, 5)) < 0.4).astype(np.float64)
    s_a, s_b = run_float(g, x).spikes["n"], run_float(back, x).spikes["n"]
    assert 0 < s_a.sum() < s_a.size
    assert np.array_equal(s_a, s_b)


def test_metadata_edited_by_another_tool_warns() -> None:
    g = sequential([("n", neuron((3,)))], (3,))
    n = to_nir(g)
    n.nodes["n"].tau = n.nodes["n"].tau * 2
    with pytest.warns(LNMDeployWarning, match="disagree with its lnm-deploy metadata"):
        back = from_nir(n)
    assert np.array_equal(back.nodes["n"].poly, g.nodes["n"].poly)  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------------
# Generic NIR import


def lif_graph(**lif_kw: Any) -> nir.NIRGraph:
    n = 4
    kw: dict[str, Any] = {"tau": np.full(n, 1e-3), "r": np.full(n, 10.0), "v_leak": np.zeros(n),
                          "v_threshold": np.ones(n)}
    kw.update(lif_kw)
    return nir.NIRGraph(
        nodes={"input": nir.Input(np.array([3])), "fc": nir.Linear(weight=rnd(n, 3)), "lif": nir.LIF(**kw),
               "output": nir.Output(np.array([n]))},
        edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")],
    )


def test_generic_lif_forward_euler() -> None:
    dt = 1e-4
    g = lif_graph(tau=np.array([1e-3, 2e-3, 5e-4, 1e-2]), r=np.array([1.0, 2.0, 3.0, 4.0]),
                  v_leak=np.array([0.0, 0.1, -0.2, 0.3]))
    ir = from_nir(g, dt=dt)
    n = ir.nodes["lif"]
    assert isinstance(n, Neuron) and n.dt == dt and n.reset == "value"
    k = dt / np.array([1e-3, 2e-3, 5e-4, 1e-2])
    np.testing.assert_allclose(n.poly[1], 1 - k, rtol=1e-15)
    np.testing.assert_allclose(n.poly[0], k * np.array([0.0, 0.1, -0.2, 0.3]), rtol=1e-15)
    np.testing.assert_allclose(n.in_gain, k * np.array([1.0, 2.0, 3.0, 4.0]), rtol=1e-15)  # type: ignore[arg-type]
    assert n.metadata["nir_type"] == "LIF"
    assert ir.metadata["imported_from"] == "generic" and ir.metadata["dt"] == dt


def test_generic_other_neurons() -> None:
    dt = 1e-3
    n = 3
    nodes = {
        "input": nir.Input(np.array([n])),
        "if": nir.IF(r=np.full(n, 2.0), v_threshold=np.ones(n), v_reset=np.full(n, -0.5)),
        "cuba": nir.CubaLIF(tau_syn=np.full(n, 4e-3), tau_mem=np.full(n, 1e-2), r=np.ones(n), v_leak=np.zeros(n),
                            v_threshold=np.ones(n), w_in=np.full(n, 3.0)),
        "li": nir.LI(tau=np.full(n, 2e-3), r=np.ones(n), v_leak=np.zeros(n)),
        "i": nir.I(r=np.full(n, 5.0)),
        "culi": nir.CubaLI(tau_syn=np.full(n, 2e-3), tau_mem=np.full(n, 1e-2), r=np.ones(n), v_leak=np.zeros(n)),
        "sc": nir.Scale(scale=np.full(n, 2.0)),
        "th": nir.Threshold(threshold=np.full(n, 0.5)),
        "output": nir.Output(np.array([n])),
    }
    order = list(nodes)
    g = nir.NIRGraph(nodes=nodes, edges=list(itertools.pairwise(order)))
    ir = from_nir(g, dt=dt)
    iff, cuba, li, i, culi = (ir.nodes[k] for k in ("if", "cuba", "li", "i", "culi"))
    assert isinstance(iff, Neuron) and np.array_equal(iff.poly[1], np.ones(n)) and iff.v_reset is not None
    np.testing.assert_allclose(iff.in_gain, 2.0 * dt)  # type: ignore[arg-type]
    assert np.array_equal(iff.v_reset, np.full(n, -0.5))
    assert isinstance(cuba, Neuron) and cuba.syn_decay is not None and cuba.syn_gain is not None
    np.testing.assert_allclose(cuba.syn_decay, 1 - dt / 4e-3)
    np.testing.assert_allclose(cuba.syn_gain, 3.0 * dt / 4e-3)
    np.testing.assert_allclose(cuba.poly[1], 1 - dt / 1e-2)
    assert isinstance(li, Neuron) and not li.spiking
    assert isinstance(i, Neuron) and not i.spiking and np.allclose(i.in_gain, 5.0 * dt)  # type: ignore[arg-type]
    assert isinstance(culi, Neuron) and not culi.spiking and culi.syn_decay is not None
    assert isinstance(ir.nodes["sc"], Scale) and isinstance(ir.nodes["th"], Threshold)


def test_scalar_parameters_take_the_input_shape() -> None:
    g = nir.NIRGraph(
        nodes={"input": nir.Input(np.array([5])), "fc": nir.Affine(weight=rnd(4, 5), bias=rnd(4)),
               "lif": nir.LIF(tau=np.array(1e-3), r=np.array(10.0), v_leak=np.array(0.0),
                              v_threshold=np.array(1.0)),
               "output": nir.Output(np.array([4]))},
        edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")], type_check=False,
    )
    n = from_nir(g, dt=1e-4).nodes["lif"]
    assert isinstance(n, Neuron) and n.shape == (4,) and n.poly.shape == (2, 4)


def test_no_dt_warns_and_assumes_default() -> None:
    with pytest.warns(LNMDeployWarning, match=r"assumed dt = 0\.0001 s.*producer='snntorch'"):
        ir = from_nir(lif_graph())  # r = tau/1e-4: looks like snnTorch's exporter
    n = ir.nodes["lif"]
    assert isinstance(n, Neuron) and n.dt == 1e-4
    np.testing.assert_allclose(n.poly[1], 0.9)
    assert np.array_equal(n.in_gain, np.ones(4))  # type: ignore[arg-type]


def test_dt_from_graph_metadata() -> None:
    g = lif_graph()
    g.metadata = {"dt": 5e-4, "producer": "someone-else"}
    with warnings.catch_warnings():
        warnings.simplefilter("error", LNMDeployWarning)
        ir = from_nir(g)
    assert ir.nodes["lif"].dt == 5e-4  # type: ignore[attr-defined]
    assert from_nir(g, dt=2e-4).nodes["lif"].dt == 2e-4  # type: ignore[attr-defined]


def test_producer_argument_checked_and_metadata_wins() -> None:
    with pytest.raises(UserInputError, match="unknown producer"):
        from_nir(lif_graph(), producer="brian2")
    g = to_nir(sequential([("n", neuron((3,)))], (3,)))
    with pytest.warns(LNMDeployWarning, match="ignored"):
        back = from_nir(g, producer="snntorch")
    assert np.array_equal(back.nodes["n"].poly, g.nodes["n"].metadata["lnm_poly"])  # type: ignore[attr-defined]
    with pytest.raises(UserInputError, match="dt"):
        from_nir(lif_graph(), dt=-1.0)


def test_conv_padding_strings() -> None:
    def conv_graph(k: int, padding: Any, dilation: int = 1) -> nir.NIRGraph:
        return nir.NIRGraph(
            nodes={"input": nir.Input(np.array([1, 6, 6])),
                   "conv": nir.Conv2d(input_shape=(6, 6), weight=rnd(2, 1, k, k), stride=1, padding=padding,
                                      dilation=dilation, groups=1, bias=np.zeros(2)),
                   "output": nir.Output(np.array([2, 6, 6]))},
            edges=[("input", "conv"), ("conv", "output")], type_check=False,
        )

    assert from_nir(conv_graph(3, "same"), dt=1e-3).nodes["conv"].padding == (1, 1)  # type: ignore[attr-defined]
    assert from_nir(conv_graph(3, "same", dilation=2), dt=1e-3).nodes["conv"].padding == (2, 2)  # type: ignore[attr-defined]
    assert from_nir(conv_graph(1, "valid"), dt=1e-3).nodes["conv"].padding == (0, 0)  # type: ignore[attr-defined]
    with pytest.raises(UnsupportedError, match="asymmetric") as e:
        from_nir(conv_graph(2, "same"), dt=1e-3)
    assert e.value.node == "conv"


def test_batched_input_shape_is_fixed_with_a_warning() -> None:
    g = lif_graph()
    g.nodes["input"] = nir.Input(np.array([1, 3]))
    with pytest.warns(LNMDeployWarning, match="batch dimension"):
        ir = from_nir(g, dt=1e-4)
    assert ir.input_shape == (3,)


def test_missing_input_shape_asks_for_it() -> None:
    g = lif_graph()
    g.nodes["input"] = nir.Input(None)
    with pytest.raises(GraphError, match="input_shape") as e:
        from_nir(g, dt=1e-4)
    assert e.value.node == "input"
    assert from_nir(g, dt=1e-4, input_shape=(3,)).input_shape == (3,)


def test_nested_subgraph_is_flattened() -> None:
    n = 4
    inner = nir.NIRGraph(
        nodes={"in": nir.Input(np.array([n])),
               "lif": nir.LIF(tau=np.full(n, 1e-3), r=np.full(n, 10.0), v_leak=np.zeros(n), v_threshold=np.ones(n)),
               "rec": nir.Linear(weight=rnd(n, n)),
               "out": nir.Output(np.array([n]))},
        edges=[("in", "lif"), ("lif", "rec"), ("rec", "lif"), ("lif", "out")],
    )
    outer = nir.NIRGraph(
        nodes={"input": nir.Input(np.array([3])), "fc": nir.Linear(weight=rnd(n, 3)), "block": inner,
               "head": nir.Linear(weight=rnd(2, n)), "output": nir.Output(np.array([2]))},
        edges=[("input", "fc"), ("fc", "block"), ("block", "head"), ("head", "output")],
    )
    ir = from_nir(outer, dt=1e-4)
    assert set(ir.nodes) == {"input", "fc", "block.lif", "block.rec", "head", "output"}
    assert set(ir.edges) == {("input", "fc"), ("fc", "block.lif"), ("block.lif", "block.rec"),
                             ("block.rec", "block.lif"), ("block.lif", "head"), ("head", "output")}
    assert ir.predecessors("block.lif") == ["fc", "block.rec"]
    sched = ir.schedule()
    assert dict(sched.inputs["block.lif"]) == {"fc": False, "block.rec": True}  # recurrence delayed


# ------------------------------------------------------------------------------------------------
# Errors


@pytest.mark.parametrize(
    ("node", "why"),
    [
        (nir.Delay(delay=np.ones(4)), "one step"),
        (nir.Conv1d(input_shape=4, weight=np.ones((4, 4, 1)), stride=1, padding=0, dilation=1, groups=1,
                    bias=np.zeros(4)), "1-d convolutions"),
    ],
)
def test_unsupported_node(node: nir.NIRNode, why: str) -> None:
    g = nir.NIRGraph(
        nodes={"input": nir.Input(np.array([4])), "odd": node, "output": nir.Output(np.array([4]))},
        edges=[("input", "odd"), ("odd", "output")], type_check=False,
    )
    with pytest.raises(UnsupportedError, match=why) as e:
        from_nir(g, dt=1e-3)
    assert e.value.node == "odd"


def test_unknown_node_type_in_file(tmp_path: Path) -> None:
    path = tmp_path / "g.nir"
    nir.write(path, lif_graph())
    with h5py.File(path, "r+") as f:
        del f["node/nodes/lif/type"]
        f["node/nodes/lif"].create_dataset("type", data="QuadraticIF", dtype=h5py.string_dtype())
    with pytest.raises(UnsupportedError, match="QuadraticIF") as e:
        read_nir(path, dt=1e-4)
    assert e.value.node == "lif"


def test_nan_parameter_names_the_node() -> None:
    with pytest.raises(NumericError, match="tau") as e:
        from_nir(lif_graph(tau=np.array([1e-3, np.nan, 1e-3, 1e-3])), dt=1e-4)
    assert e.value.node == "lif"
    with pytest.raises(NumericError) as e:
        from_nir(lif_graph(tau=np.zeros(4)), dt=1e-4)
    assert e.value.node == "lif"


def test_malformed_files(tmp_path: Path) -> None:
    text = tmp_path / "notes.nir"
    text.write_text("this is not HDF5\n")
    with pytest.raises(UserInputError, match="not a NIR file") as e:
        read_nir(text)
    assert str(text) in str(e.value)

    with pytest.raises(UserInputError, match="does not exist"):
        read_nir(tmp_path / "missing.nir")

    empty = tmp_path / "empty.h5"
    with h5py.File(empty, "w") as f:
        f.create_dataset("data", data=np.arange(3))
    with pytest.raises(GraphError, match="no NIR graph") as e2:
        read_nir(empty)
    assert str(empty) in str(e2.value)

    broken = tmp_path / "broken.nir"
    nir.write(broken, lif_graph())
    with h5py.File(broken, "r+") as f:
        del f["node/nodes/lif/tau"]
    with pytest.raises(GraphError, match="not a valid NIR graph: the LIF node has no 'tau', which NIR requires") as e3:
        read_nir(broken, dt=1e-4)
    assert str(broken) in str(e3.value) and e3.value.node == "lif"

    with pytest.raises(UserInputError):
        from_nir(42)  # type: ignore[arg-type]


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    g = g_neurons(2, True, "value")
    bad = g.nodes["lnm"]
    assert isinstance(bad, Neuron)
    bad.poly[1, 0] = np.nan
    target = tmp_path / "out.nir"
    with pytest.raises(NumericError) as e:
        write_nir(g, target)
    assert e.value.node == "lnm"
    assert list(tmp_path.iterdir()) == []

    target.write_bytes(b"previous contents")
    with pytest.raises(NumericError):
        write_nir(g, target)
    assert target.read_bytes() == b"previous contents"  # an existing file is kept
    assert list(tmp_path.iterdir()) == [target]


def test_failed_serialisation_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A full disk *during* the write (the kernel's ENOSPC of /dev/full) removes the temporary file
    too, keeps an existing file and is one OutputWriteError naming the file and the reason."""
    import builtins

    from lnm_deploy.errors import OutputWriteError
    from lnm_deploy.nir_io import write as write_module

    target = tmp_path / "out.nir"
    target.write_bytes(b"old")
    opened: list[str] = []

    def full_disk(path: Any, mode: str = "r", *a: Any, **kw: Any) -> Any:
        opened.append(str(path))
        return builtins.open("/dev/full", mode, *a, **kw)

    monkeypatch.setattr(write_module, "open", full_disk, raising=False)
    with pytest.raises(OutputWriteError, match=f"cannot write {target} .No space left on device.") as e:
        quiet(lambda: write_nir(g_affine(), target))
    assert e.value.path == str(target) and e.value.exit_code == 2
    assert opened and opened[0] != str(target)  # the temporary was being written, not the file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.nir"] and target.read_bytes() == b"old"


def test_grouped_conv_warns_about_nir() -> None:
    with pytest.warns(LNMDeployWarning, match="grouped or non-square"):
        to_nir(g_conv_grouped())


def test_write_errors() -> None:
    with pytest.raises(UserInputError, match="does not exist"):
        write_nir(g_affine(), "/nonexistent-dir/x.nir")
    g = g_affine()
    g.nodes["a/b"] = g.nodes.pop("fc")
    g.edges = [("input", "a/b"), ("a/b", "fc_nobias"), ("fc_nobias", "output")]
    with pytest.raises(GraphError, match="'/'"):
        to_nir(g)


# ------------------------------------------------------------------------------------------------
# Parameters that are not real numbers, and port shapes, are refused naming the node (docs/nir.md)

NOT_REAL = {
    "complex": lambda a: np.asarray(a, dtype=np.float64) + 0.5j,
    "complex with zero imaginary part": lambda a: np.asarray(a, dtype=np.complex128),
    "bool": lambda a: np.ones(np.shape(a), dtype=bool),
    "text": lambda a: np.full(np.shape(a), "1.0"),
    "object": lambda a: np.asarray(a, dtype=np.float64).astype(object),
}
PORTS = ("input_type", "output_type", "metadata", "nodes", "edges", "input_shape")


def numeric_fields(g: nir.NIRGraph) -> list[tuple[str, str]]:
    """(node, field) for every numeric parameter of the graph's nodes (not Input / Output)."""
    out = []
    for name, node in g.nodes.items():
        for field in node.__dataclass_fields__:
            v = getattr(node, field)
            if field in PORTS or v is None or isinstance(v, str):
                continue
            out.append((name, field))
    return out


def nir_neurons() -> nir.NIRGraph:
    """Every NIR neuron type, as another tool writes them (generic NIR)."""
    n = 4
    lif = {"tau": np.full(n, 1e-2), "r": np.ones(n), "v_leak": np.zeros(n)}
    cuba = {"tau_mem": np.full(n, 1e-2), "tau_syn": np.full(n, 5e-3), "r": np.ones(n), "v_leak": np.zeros(n),
            "w_in": np.ones(n)}
    layers = {"lif": nir.LIF(**lif, v_threshold=np.ones(n), v_reset=np.zeros(n)), "li": nir.LI(**lif),
              "cubalif": nir.CubaLIF(**cuba, v_threshold=np.ones(n), v_reset=np.zeros(n)), "cubali": nir.CubaLI(**cuba),
              "if": nir.IF(r=np.ones(n), v_threshold=np.ones(n), v_reset=np.zeros(n)), "i": nir.I(r=np.ones(n))}
    nodes: dict[str, nir.NIRNode] = {"input": nir.Input(np.array([n]))}
    edges, prev = [], "input"
    for k, layer in layers.items():
        nodes[f"fc_{k}"], nodes[k] = nir.Affine(rnd(n, n), rnd(n)), layer
        edges += [(prev, f"fc_{k}"), (f"fc_{k}", k)]
        prev = k
    nodes["output"] = nir.Output(np.array([n]))
    return nir.NIRGraph(nodes=nodes, edges=[*edges, (prev, "output")])


def lnm_file(make: Callable[[], Graph]) -> Callable[[], nir.NIRGraph]:
    return lambda: quiet(lambda: to_nir(make()))


def other_file(make: Callable[[], Graph]) -> Callable[[], nir.NIRGraph]:
    return lambda: strip_lnm(quiet(lambda: to_nir(make())))


# lnm-deploy's files of every IR kind, the same files without lnm-deploy's metadata (the neuron
# graphs' best-fit LIFs are not stable generic LIFs, so the NIR neurons come from nir_neurons)
NIR_FILES = {
    **{f"lnm-deploy {m.__name__}": lnm_file(m) for m in (g_affine, g_conv, g_pools, g_scale_threshold,
                                                          g_integrators, g_conv_neuron)},
    "lnm-deploy neurons": lnm_file(lambda: g_neurons(2, True, "subtract")),
    **{f"generic {m.__name__}": other_file(m) for m in (g_affine, g_conv, g_pools, g_scale_threshold)},
    "generic neurons": nir_neurons,
}


@pytest.mark.parametrize("file", NIR_FILES)
def test_every_parameter_that_is_not_real_numbers_is_refused(file: str) -> None:
    """Complex values (whose imaginary part a cast would drop), booleans, text and objects in any
    numeric NIR parameter: GraphError naming the node and the parameter, for every node type."""
    import copy

    base = NIR_FILES[file]()
    quiet(lambda: from_nir(base, dt=1e-3))  # the graph itself reads
    fields = numeric_fields(base)
    assert fields
    for i, (name, field) in enumerate(fields):
        for what in (list(NOT_REAL) if i < 2 else [list(NOT_REAL)[i % len(NOT_REAL)]]):
            g = copy.deepcopy(base)
            setattr(g.nodes[name], field, NOT_REAL[what](getattr(g.nodes[name], field)))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # numpy's ComplexWarning would be the old, silent cast
                with pytest.raises(GraphError, match=field) as e:
                    from_nir(g, dt=1e-3)
            assert e.value.node == name, (name, field, what, str(e.value))


def test_lnm_metadata_that_is_not_real_numbers_is_refused() -> None:
    g = quiet(lambda: to_nir(g_neurons(1, False, "value")))
    name = next(n for n, v in g.nodes.items() if "lnm_poly" in (v.metadata or {}))
    g.nodes[name].metadata["lnm_poly"] = np.asarray(g.nodes[name].metadata["lnm_poly"]) + 1j
    with pytest.raises(GraphError, match=r"lnm_poly.*complex") as e:
        from_nir(g)
    assert e.value.node == name


def complex_weight_file(path: Path) -> Path:
    """Input 4 -> Affine (3, 4) -> LIF 3 -> Output, its weight rewritten as complex in the file."""
    g = nir.NIRGraph(
        nodes={"in": nir.Input(np.array([4])), "fc": nir.Affine(np.ones((3, 4)), np.zeros(3)),
               "lif": nir.LIF(tau=np.full(3, 1e-2), r=np.ones(3), v_leak=np.zeros(3), v_threshold=np.ones(3)),
               "out": nir.Output(np.array([3]))},
        edges=[("in", "fc"), ("fc", "lif"), ("lif", "out")])
    nir.write(path, g)
    with h5py.File(path, "r+") as f:
        del f["node/nodes/fc/weight"]
        f["node/nodes/fc/weight"] = np.ones((3, 4), complex)
    return path


def test_complex_parameter_in_a_file_is_refused_by_every_command(tmp_path: Path, capsys: Any) -> None:
    from lnm_deploy.cli import main

    path = complex_weight_file(tmp_path / "m.nir")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no ComplexWarning: nothing is cast
        with pytest.raises(GraphError, match="'weight' is complex") as e:
            read_nir(path, dt=1e-3)
    assert e.value.node == "fc"
    x = tmp_path / "x.npz"
    np.savez(x, x=np.ones((2, 5, 4), dtype=np.uint8), y=np.zeros(2, dtype=np.int64))
    for args in (["inspect", str(path), "--dt", "1e-3"],
                 ["run", str(path), "--data", str(x), "--backend", "float", "--dt", "1e-3", "--out",
                  str(tmp_path / "run.npz")],
                 ["calibrate", str(path), "--data", str(x), "--target", "loihi2", "--dt", "1e-3", "--out",
                  str(tmp_path / "a.nir")]):
        capsys.readouterr()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            code = main(args)
        err = capsys.readouterr().err
        assert code == GraphError.exit_code, (args, err)
        assert "node 'fc'" in err and "'weight' is complex" in err, err


def port_file(path: Path, port: str, shape: Any) -> Path:
    """A valid graph (Input 3 -> Linear (4, 3) -> LIF 4 -> Output) whose Input or Output shape is
    rewritten in the file (None: removed)."""
    nir.write(path, lif_graph())
    with h5py.File(path, "r+") as f:
        del f[f"node/nodes/{port}/shape"]
        if shape is not None:
            f[f"node/nodes/{port}/shape"] = shape
    return path


def test_output_shape_must_be_the_shape_it_reads(tmp_path: Path) -> None:
    with pytest.raises(GraphError, match=r"declares shape \(7,\).*gives \(4,\)") as e:
        read_nir(port_file(tmp_path / "a.nir", "output", np.array([7])), dt=1e-4)
    assert e.value.node == "output"
    with pytest.raises(GraphError, match=r"declares shape \(2, 3\)"):
        read_nir(port_file(tmp_path / "b.nir", "output", np.array([2, 3])), dt=1e-4)
    with pytest.raises(GraphError, match="whole numbers >= 1") as e:
        read_nir(port_file(tmp_path / "c.nir", "output", np.array([4.5])), dt=1e-4)
    assert e.value.node == "output"
    # absent or empty: the shape it reads; leading 1s (a batch: Rockpool writes (1, 1, n)) are fine,
    # and so is another layout of as many values ((2, 2), (4, 1, 1))
    for i, ok in enumerate([None, np.array([], dtype=np.int64), np.array([1, 1, 4]), np.array([4.0]),
                            np.array([2, 2]), np.array([4, 1, 1])]):
        path = port_file(tmp_path / f"ok{i}.nir", "output", ok)
        g = quiet(lambda p=path: read_nir(p, dt=1e-4))
        sched = g.schedule()
        assert sched.shapes[sched.output_node] == (4,)


def test_output_shape_of_a_time_first_producer_may_lead_with_time() -> None:
    g = lif_graph()
    g.nodes["output"] = nir.Output(np.array([9, 4]))
    g.nodes["input"] = nir.Input(np.array([9, 3]))
    ir = quiet(lambda: from_nir(g, producer="sinabs"))
    assert ir.schedule().shapes["output"] == (4,)
    with pytest.raises(GraphError, match=r"declares shape \(9, 4\)"):
        quiet(lambda: from_nir(g, dt=1e-4, input_shape=(3,)))


@pytest.mark.parametrize("shape", [np.array([4.5]), np.array([0]), np.array([-3]), np.array([3 + 0j]),
                                   np.array([True])], ids=["4.5", "0", "-3", "complex", "bool"])
def test_input_shape_must_be_whole_sizes(tmp_path: Path, shape: np.ndarray) -> None:
    with pytest.raises(GraphError, match="Input's shape") as e:
        read_nir(port_file(tmp_path / "g.nir", "input", shape), dt=1e-4)
    assert e.value.node == "input"


def test_input_shape_of_whole_floats_reads(tmp_path: Path) -> None:
    g = quiet(lambda: read_nir(port_file(tmp_path / "g.nir", "input", np.array([3.0])), dt=1e-4))
    assert g.schedule().shapes["input"] == (3,)


@pytest.mark.parametrize("key", ["lnm_v_th", "lnm_poly", "lnm_reset", "lnm_in_gain"])
def test_incomplete_lnm_metadata_is_refused(key: str, tmp_path: Path) -> None:
    """A spiking LNM's threshold deleted from its metadata read as an integrator (no threshold:
    float accuracy 0.66 instead of 0.96, exit 0); like every other key, it is now refused. The
    non-spiking readout, written without a threshold, still reads."""
    path = tmp_path / "g.nir"
    g = g_neurons(2, True, "value")
    write_nir(g, path)
    read_nir(path)  # the readout has no lnm_v_th and reads
    with h5py.File(path, "r+") as f:
        del f[f"node/nodes/lnm/metadata/{key}"]
    with pytest.raises(GraphError, match=rf"lnm-deploy metadata is incomplete: '{key}' is missing") as e:
        read_nir(path)
    assert e.value.node == "lnm"


def test_a_node_stripped_of_lnm_metadata_in_an_lnm_deploy_graph_is_warned_about(tmp_path: Path) -> None:
    """The graph still says lnm-deploy wrote it, but one node lost its metadata (another tool):
    it reads from its NIR parameters (a degree-2 LNM as a LIF fit), which a warning says."""
    path = tmp_path / "g.nir"
    write_nir(g_neurons(2, True, "value"), path)
    with warnings.catch_warnings():
        warnings.simplefilter("error", LNMDeployWarning)
        read_nir(path)  # untouched: no warning
    with h5py.File(path, "r+") as f:
        del f["node/nodes/lnm/metadata"]
    with pytest.warns(LNMDeployWarning, match=r"node 'lnm': the graph says lnm-deploy wrote it, but this \w+ node "
                                              r"carries none of lnm-deploy's metadata"):
        g = read_nir(path)
    assert len(g.nodes["lnm"].poly) == 2  # the NIR node's linear fit, not the degree-2 polynomial
