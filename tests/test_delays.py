"""Explicit delay edges: which edge of a cycle carries the one-step delay is part of the graph,
never of the edge order; NIR ``Delay`` nodes of one step are read as delayed edges."""

from __future__ import annotations

import itertools
from pathlib import Path

import nir
import numpy as np
import pytest

from lnm_deploy.errors import GraphError, UnsupportedError
from lnm_deploy.execute import run_float
from lnm_deploy.fixedpoint import FxGraph, decode_fxgraph, encode_fxgraph
from lnm_deploy.ir import Affine, Graph, Input, Neuron, Output
from lnm_deploy.ir.graph import infer_delays
from lnm_deploy.nir_io import from_nir, read_nir, write_nir


def _nodes(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "input": Input(shape=(6,)),
        "fc": Affine(weight=rng.normal(0.3, 0.5, (8, 6))),
        "skip": Affine(weight=rng.normal(0.1, 0.3, (8, 6))),
        "lnm": Neuron(shape=(8,), poly=[0.0, 0.8], v_th=1.0),
        "rec": Affine(weight=rng.normal(0, 0.4, (8, 8)), bias=rng.normal(0, 0.05, 8)),
        "output": Output(),
    }


EDGES = [("input", "fc"), ("input", "skip"), ("fc", "lnm"), ("skip", "lnm"), ("lnm", "rec"), ("rec", "lnm"),
         ("lnm", "output")]


def _x(seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).random((3, 12, 6)) < 0.4).astype(np.uint8)


def test_delay_does_not_depend_on_edge_order() -> None:
    """A skip edge listed first used to move the delay onto a feed-forward edge."""
    ref = None
    for perm in itertools.islice(itertools.permutations(EDGES), 0, 5040, 97):
        g = Graph(nodes=_nodes(), edges=list(perm))
        assert g.delayed_edges() == {("rec", "lnm")}
        sched = g.schedule()
        assert dict(sched.inputs["lnm"])["rec"] is True
        out = run_float(g, _x()).spikes["lnm"]
        # Summation order differs with the edge order (float rounding), spikes do not here.
        if ref is None:
            ref = out
        assert np.array_equal(out, ref)


def test_infer_delays_is_order_independent() -> None:
    e = [("i", "a"), ("i", "b"), ("a", "b"), ("b", "a")]
    assert infer_delays("iab", e, "i") == infer_delays("iab", e[::-1], "i") == {("b", "a")}
    assert infer_delays("ia", [("i", "a"), ("a", "a")], "i") == {("a", "a")}
    assert infer_delays("iabc", [("i", "a"), ("a", "b"), ("b", "c"), ("a", "c")], "i") == frozenset()
    # A feedback edge to an earlier layer, with a skip that reaches the later layer as early.
    fb = [("input", "syn0"), ("syn0", "n0"), ("n0", "syn1"), ("syn1", "n1"), ("n1", "fb"), ("fb", "n0"),
          ("input", "skip"), ("skip", "n1")]
    names = {n for edge in fb for n in edge}
    for perm in itertools.islice(itertools.permutations(fb), 0, 40320, 997):
        assert len(infer_delays(names, perm, "input")) == 1
        assert infer_delays(names, perm, "input") == infer_delays(names, fb, "input")


def test_explicit_delays_are_checked() -> None:
    g = Graph(nodes=_nodes(), edges=list(EDGES), delays=frozenset())
    with pytest.raises(GraphError, match="no delayed edge"):
        g.schedule()
    g = Graph(nodes=_nodes(), edges=list(EDGES), delays=frozenset({("rec", "lnm"), ("skip", "lnm")}))
    with pytest.raises(UnsupportedError, match="does not close a cycle"):
        g.schedule()
    g = Graph(nodes=_nodes(), edges=list(EDGES), delays=frozenset({("lnm", "nowhere")}))
    with pytest.raises(GraphError, match="not an edge"):
        g.schedule()


def test_delays_survive_nir_files(tmp_path: Path) -> None:
    g = Graph(nodes=_nodes(), edges=list(EDGES), delays=frozenset({("rec", "lnm")}))
    write_nir(g, tmp_path / "g.nir")
    back = read_nir(tmp_path / "g.nir")
    assert back.delayed_edges() == {("rec", "lnm")}
    assert np.array_equal(run_float(back, _x()).spikes["lnm"], run_float(g, _x()).spikes["lnm"])


def test_fx_graph_delays_survive_encoding() -> None:
    from fx_nets import random_dense_net

    seen = 0
    for seed in range(20):
        fx = random_dense_net(np.random.default_rng(seed), recurrent=True)
        back = decode_fxgraph(encode_fxgraph(fx))
        assert isinstance(back, FxGraph) and back.delayed_edges() == fx.delayed_edges()
        seen += bool(fx.delayed_edges())
    assert seen  # some of them are recurrent


def _nir_rec(delay_node: bool, delay: float = 1e-3) -> nir.NIRGraph:
    rng = np.random.default_rng(2)
    w, wr = rng.normal(0.4, 0.5, (5, 4)), rng.normal(0, 0.4, (5, 5))
    lif = nir.LIF(tau=np.full(5, 0.01), r=np.full(5, 10.0), v_leak=np.zeros(5), v_threshold=np.ones(5),
                  v_reset=np.zeros(5))
    nodes = {"input": nir.Input(np.array([4])), "fc": nir.Linear(weight=w), "lif": lif,
             "rec": nir.Linear(weight=wr), "output": nir.Output(np.array([5]))}
    edges = [("input", "fc"), ("fc", "lif"), ("lif", "rec"), ("lif", "output")]
    if delay_node:
        nodes["d"] = nir.Delay(delay=np.full(5, delay))
        edges += [("rec", "d"), ("d", "lif")]
    else:
        edges += [("rec", "lif")]
    return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)


def test_nir_one_step_delay_node_is_a_delayed_edge() -> None:
    x = (np.random.default_rng(3).random((2, 15, 4)) < 0.5).astype(np.uint8)
    with_delay = from_nir(_nir_rec(True), dt=1e-3)
    plain = from_nir(_nir_rec(False), dt=1e-3)
    assert with_delay.delayed_edges() == {("rec", "lif")} == plain.delayed_edges()
    assert np.array_equal(run_float(with_delay, x).spikes["lif"], run_float(plain, x).spikes["lif"])
    with pytest.raises(UnsupportedError, match="exactly one step") as e:
        from_nir(_nir_rec(True, delay=2e-3), dt=1e-3)
    assert e.value.node == "d"


def test_nir_feed_forward_delay_is_refused() -> None:
    g = nir.NIRGraph(
        nodes={"input": nir.Input(np.array([3])), "d": nir.Delay(delay=np.full(3, 1e-3)),
               "fc": nir.Linear(weight=np.eye(3)),
               "lif": nir.IF(r=np.ones(3), v_threshold=np.ones(3), v_reset=np.zeros(3)),
               "output": nir.Output(np.array([3]))},
        edges=[("input", "d"), ("d", "fc"), ("fc", "lif"), ("lif", "output")], type_check=False)
    with pytest.raises(UnsupportedError, match="does not close a cycle"):
        from_nir(g, dt=1e-3)
