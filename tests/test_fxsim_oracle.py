"""fxsim against a plain-Python big-integer oracle written from docs/fixed-point.md.

The oracle (``fx_oracle.py``) uses Python ints and lists only (no numpy), one sample, one neuron at a time,
following the numbered steps of the contract. It reuses only the graph's schedule (topology).
Every configuration of fxsim is checked: both engines, the layer engine's chunking, and the numpy
and (when numba is installed) compiled kernels.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from fx_nets import random_conv_net, random_dense_net, spikes
from fx_oracle import as_arrays, oracle
from hypothesis import given, settings
from hypothesis import strategies as st

from lnm_deploy.errors import DependencyError, GraphError, UserInputError
from lnm_deploy.fixedpoint import (
    FxDense,
    FxGraph,
    FxLIF,
    FxPoly,
    fx_sequential,
)
from lnm_deploy.fxsim import compare_runs, first_mismatch, run_fx
from lnm_deploy.fxsim.sim import load_kernels

# The compiled kernels are part of the reference environment; without numba only numpy runs.
KERNELS = ["numpy"] + (["numba"] if load_kernels("auto") is not None else [])

def check_against_oracle(graph: FxGraph, x: np.ndarray) -> None:
    batch, steps = x.shape[:2]
    o_spk, o_sts = as_arrays(graph, *oracle(graph, x), batch, steps)
    order = graph.neuron_names()
    recurrent = any(d for ins in graph.schedule().inputs.values() for _, d in ins)
    configs = [("step", None)] + ([] if recurrent else [("layer", None), ("layer", 3)])  # chunks of 3 steps
    for kernels in KERNELS:
        for engine, chunk in configs:
            res = run_fx(graph, x, record=True, engine=engine, chunk=chunk, kernels=kernels)
            cfg = f"[{engine} engine, chunk {chunk}, {kernels} kernels]"
            m = first_mismatch(o_spk, res.spikes, order=order)
            assert m is None, f"{cfg} {m}"
            for layer in order:
                m = first_mismatch(o_sts[layer], res.states[layer], quantity=f"{layer} state")
                assert m is None, f"{cfg} layer {layer}: {m}"
            # without record, the compiled kernels take another path through their loops
            m = first_mismatch(o_spk, run_fx(graph, x, engine=engine, chunk=chunk, kernels=kernels).spikes,
                               order=order)
            assert m is None, f"{cfg} without record: {m}"


# ------------------------------------------------------------------------------------ tests


@settings(max_examples=400)
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 12), batch=st.integers(1, 3))
def test_dense_networks_match_oracle(seed: int, steps: int, batch: int) -> None:
    rng = np.random.default_rng(seed)
    g = random_dense_net(rng)
    check_against_oracle(g, spikes(rng, batch, steps, g.input_shape))


@settings(max_examples=40)
@given(seed=st.integers(0, 2**32 - 1), steps=st.integers(1, 6))
def test_conv_networks_match_oracle(seed: int, steps: int) -> None:
    rng = np.random.default_rng(seed)
    g = random_conv_net(rng)
    check_against_oracle(g, spikes(rng, 2, steps, g.input_shape))


@settings(max_examples=60)
@given(seed=st.integers(0, 2**32 - 1))
def test_lif_edges_match_oracle(seed: int) -> None:
    """Strong inputs on states started at the wrap and saturation limits (fast and int paths)."""
    rng = np.random.default_rng(seed)
    n = 6
    for exp in (0, 9, 17):  # 17: |a| >= 2**25, every int32 wrap of Lava's LIF can trigger
        w = rng.choice([-256, 255, 254, -255, 0, 100], (n, 4))
        g = fx_sequential([
            ("d", FxDense(weight=w, weight_exp=exp)),
            ("l", FxLIF(shape=(n,), du=int(rng.choice([0, 4095, 100])), dv=int(rng.choice([0, 4095, 7])),
                        vth=int(rng.choice([0, 2**17 - 1, 2**18])), bias_mant=rng.integers(-4096, 4096, n),
                        bias_exp=7, u_init=rng.choice([2**23, -(2**23) + 1, 2**23 - 1], n),
                        v_init=rng.choice([2**23 - 1, -(2**23) + 1], n))),
        ], (4,))
        check_against_oracle(g, spikes(rng, 2, 8, (4,)))


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1))
def test_int32_input_wrap_matches_oracle(seed: int) -> None:
    """Two synapses whose sum leaves int32: the neuron input wraps (4.1) before any shift."""
    from fx_nets import chain, poly

    rng = np.random.default_rng(seed)
    n = 5
    ff = FxDense(weight=rng.choice([0, 1, 3, 127], (n, 6)), weight_exp=24, sign_mode="excitatory")
    rec = FxDense(weight=rng.choice([0, 1, 64, 127], (n, n)), weight_exp=24, sign_mode="excitatory")
    p = poly(rng, (n,))
    p.overflow = "saturate"
    g = chain([("d", ff), ("p", p)], (6,), {"p": rec})
    check_against_oracle(g, spikes(rng, 2, 6, (6,)))


def test_first_mismatch_names_layer_step_neuron() -> None:
    a = {"l1": np.zeros((2, 5, 3), np.uint8), "l2": np.zeros((2, 5, 4), np.uint8)}
    b = {k: v.copy() for k, v in a.items()}
    b["l2"][1, 2, 3] = 1
    b["l1"][0, 4, 0] = 1
    m = first_mismatch(a, b, order=["l1", "l2"])
    assert m is not None and (m.layer, m.timestep, m.sample, m.neuron) == ("l2", 2, 1, (3,))
    assert "layer 'l2'" in str(m) and "timestep 2" in str(m) and "neuron (3,)" in str(m)
    assert first_mismatch(a, {k: v.copy() for k, v in a.items()}) is None


def test_engines_agree_on_larger_network() -> None:
    rng = np.random.default_rng(7)
    g = random_dense_net(rng, recurrent=False, wild=False, max_width=64, max_layers=3)
    x = spikes(rng, 8, 40, g.input_shape)
    a = run_fx(g, x, record=True, engine="layer", kernels="numpy")
    for kernels in KERNELS:
        for engine, chunk in (("layer", None), ("layer", 7), ("step", None)):
            b = run_fx(g, x, record=True, engine=engine, chunk=chunk, kernels=kernels)
            m = compare_runs(a, b, order=g.neuron_names())
            assert m is None, f"[{engine}, chunk {chunk}, {kernels}] {m}"


@pytest.mark.parametrize("batch, steps", [(1, 6), (4, 1), (3, 5)])
def test_a_result_is_its_own_after_the_next_run(batch: int, steps: int) -> None:
    """``run_fx`` keeps working arrays per thread from one run to the next: a result must not share
    memory with them (with batch or timesteps 1 a time-major spike array's transpose is already
    contiguous, and a view of it was once returned and overwritten by the next run)."""
    for seed in range(6):
        rng = np.random.default_rng(seed)
        g = random_conv_net(rng) if seed % 3 == 2 else random_dense_net(rng, recurrent=bool(seed % 2))
        x1, x2 = spikes(rng, batch, steps, g.input_shape), spikes(rng, batch, steps, g.input_shape)
        for kernels in KERNELS:
            r1 = run_fx(g, x1, record=True, kernels=kernels)
            kept = {k: v.copy() for k, v in r1.spikes.items()}
            out = r1.output.copy()
            r2 = run_fx(g, x2, record=True, kernels=kernels)
            for k, v in r1.spikes.items():
                assert not np.shares_memory(v, r2.spikes[k]), f"seed {seed}, {kernels}: layer {k}"
                assert np.array_equal(v, kept[k]), f"seed {seed}, {kernels}: layer {k} changed by the next run"
            assert np.array_equal(r1.output, out), f"seed {seed}, {kernels}: output changed by the next run"


def test_the_kept_working_arrays_stay_under_their_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    """A thread keeps its last runs' working arrays (``_Pool``) up to ``POOL_KEEP_BYTES``: runs of
    many batch sizes once piled up arrays of every shape, none of them taken again. Results do
    not depend on what was kept."""
    from lnm_deploy.fxsim import sim

    rng = np.random.default_rng(5)
    g = random_conv_net(rng)
    cap = 64 << 10
    monkeypatch.setattr(sim, "POOL_KEEP_BYTES", cap)
    for kernels in KERNELS:
        for batch in range(1, 12):
            x = spikes(rng, batch, 3, g.input_shape)
            got = run_fx(g, x, record=True, kernels=kernels)
            free = sim._Pool._local.free
            assert sum(a.nbytes for a in free) <= cap, f"batch {batch}: {len(free)} arrays kept"
            monkeypatch.setattr(sim, "POOL_KEEP_BYTES", 0)  # nothing kept: every array is fresh
            assert compare_runs(got, run_fx(g, x, record=True, kernels=kernels)) is None
            monkeypatch.setattr(sim, "POOL_KEEP_BYTES", cap)


@pytest.mark.parametrize("batch,steps", [(0, 3), (2, 0), (0, 0)])
def test_an_empty_input_gives_an_empty_run(batch: int, steps: int) -> None:
    """No samples or no timesteps: every array of the result has that shape (once, no samples
    raised a ValueError from a reshape)."""
    for seed in range(3):
        rng = np.random.default_rng(seed)
        g = random_conv_net(rng) if seed == 2 else random_dense_net(rng, recurrent=bool(seed))
        x = np.zeros((batch, steps, *g.input_shape), np.uint8)
        for kernels in KERNELS:
            r = run_fx(g, x, record=True, kernels=kernels)
            assert r.output.shape[:2] == (batch, steps)
            assert r.spikes and all(v.shape[:2] == (batch, steps) for v in r.spikes.values())
            assert all(v.shape[:2] == (batch, steps) for st in r.states.values() for v in st.values())


def test_dense_spikes_take_blas_and_agree() -> None:
    """Above EVENTS_MAX_DENSITY the compiled path hands Dense to BLAS; results do not change."""
    rng = np.random.default_rng(3)
    g = fx_sequential([("d", FxDense(weight=rng.integers(-128, 128, (40, 30)))),
                       ("l", FxLIF(shape=(40,), du=100, dv=300, vth=20))], (30,))
    for p in (0.05, 0.9):
        x = (rng.random((3, 20, 30)) < p).astype(np.uint8)
        a = run_fx(g, x, record=True, kernels="numpy")
        for kernels in KERNELS:
            m = compare_runs(a, run_fx(g, x, record=True, kernels=kernels), order=["l"])
            assert m is None, f"[density {p}, {kernels}] {m}"


def test_kernels_option(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    g = fx_sequential([("d", FxDense(weight=np.ones((2, 3), int))), ("l", FxLIF(shape=(2,)))], (3,))
    x = np.ones((1, 2, 3), np.uint8)
    with pytest.raises(UserInputError, match="kernels must be one of"):
        run_fx(g, x, kernels="cuda")
    with pytest.raises(UserInputError, match="chunk"):
        run_fx(g, x, chunk=0)
    for bad in (True, 1.0, np.int64(0)):
        with pytest.raises(UserInputError, match="chunk"):
            run_fx(g, x, chunk=bad)  # type: ignore[arg-type]
    assert compare_runs(run_fx(g, x, chunk=np.int64(1)), run_fx(g, x, chunk=1)) is None  # numpy integers are integers
    monkeypatch.setenv("LNM_DEPLOY_KERNELS", "gpu")
    with pytest.raises(UserInputError, match="LNM_DEPLOY_KERNELS"):
        run_fx(g, x)
    monkeypatch.setenv("LNM_DEPLOY_KERNELS", "numpy")
    assert load_kernels("auto") is None
    monkeypatch.delenv("LNM_DEPLOY_KERNELS")
    saved = sys.modules.get("lnm_deploy.fxsim.kernels")
    sys.modules["lnm_deploy.fxsim.kernels"] = None  # type: ignore[assignment]  # import now fails
    try:
        with pytest.raises(DependencyError, match="numba"):
            run_fx(g, x, kernels="numba")
        assert run_fx(g, x, kernels="auto").output.shape == (1, 2, 2)  # falls back to numpy
    finally:
        if saved is None:
            del sys.modules["lnm_deploy.fxsim.kernels"]
        else:
            sys.modules["lnm_deploy.fxsim.kernels"] = saved


def test_rejects_non_binary_input_and_bad_shapes() -> None:
    g = fx_sequential([("d", FxDense(weight=np.ones((2, 3), int))), ("l", FxLIF(shape=(2,)))], (3,))
    with pytest.raises(UserInputError, match="binary"):
        run_fx(g, np.full((1, 2, 3), 2))
    with pytest.raises(UserInputError, match="shaped"):
        run_fx(g, np.zeros((1, 2, 4)))
    with pytest.raises(GraphError, match="node 'l'"):
        fx_sequential([("d", FxDense(weight=np.ones((2, 3), int))), ("l", FxLIF(shape=(2,), du=5000))], (3,)).schedule()
    with pytest.raises(GraphError, match="neurons read synapses"):
        fx_sequential([("l0", FxLIF(shape=(3,)))], (3,)).schedule()


def _first(g: FxGraph, role: str) -> str:
    return next(n for n in g.schedule().order if g.nodes[n].role == role)


class _NegatedDense(FxDense):
    """A node class from outside the package whose weights are another method's result."""

    def effective_weight(self) -> np.ndarray:
        return -super().effective_weight()


@pytest.mark.parametrize("edit", ["weight in place", "neuron array in place", "neuron attribute", "new node",
                                  "node class"])
def test_a_graph_edited_between_runs_runs_as_edited(edit: str) -> None:
    """``run_fx`` keeps what it derives from a graph (schedule, converted weights, kernel
    parameters) for the graph's next run; an edit of any node between runs, in place included,
    must be run as edited: the same result as a fresh copy of the edited graph."""
    import copy
    import dataclasses

    changed = 0
    for seed in range(8):
        rng = np.random.default_rng(100 + seed)
        g = random_conv_net(rng) if seed % 2 else random_dense_net(rng, recurrent=seed % 4 == 0)
        x = spikes(rng, 2, 6, g.input_shape)
        for kernels in KERNELS:
            before = run_fx(g, x, record=True, kernels=kernels)
            syn, neuron = _first(g, "synapse"), _first(g, "neuron")
            node = g.nodes[neuron]
            if edit == "weight in place":
                g.nodes[syn].weight[...] = -g.nodes[syn].weight  # type: ignore[attr-defined]
            elif edit == "neuron array in place":
                arr = node.coef if hasattr(node, "coef") else node.bias_mant  # type: ignore[attr-defined]
                if np.ndim(arr) == 0:
                    continue
                arr[...] = arr // 2 + 1
            elif edit == "neuron attribute":
                if hasattr(node, "coef"):
                    node.in_shift = (node.in_shift + 3) % 9  # type: ignore[attr-defined]
                else:
                    node.du = (node.du + 1000) % 4096  # type: ignore[attr-defined]
            elif edit == "node class":
                if type(g.nodes[syn]) is not FxDense:
                    continue
                g.nodes[syn].__class__ = _NegatedDense
            else:
                g.nodes[syn] = dataclasses.replace(g.nodes[syn], weight=-g.nodes[syn].weight)  # type: ignore[attr-defined]
            got = run_fx(g, x, record=True, kernels=kernels)
            ref = run_fx(copy.deepcopy(g), x, record=True, kernels=kernels)
            assert compare_runs(ref, got, order=g.neuron_names()) is None, (edit, seed, kernels)
            changed += compare_runs(before, got, order=g.neuron_names()) is not None
    assert changed >= 4, changed  # the edits changed results: the check above saw them


def test_runs_of_one_graph_in_threads_agree() -> None:
    """Runs of one graph in several threads at once share what was derived from the graph (never
    written during a run): each gets what it gets alone."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(5)
    g = random_conv_net(rng)
    xs = [spikes(rng, 3, 5, g.input_shape) for _ in range(8)]
    for kernels in KERNELS:
        alone = [run_fx(g, x, record=True, kernels=kernels) for x in xs]
        with ThreadPoolExecutor(4) as pool:
            together = list(pool.map(lambda x: run_fx(g, x, record=True, kernels=kernels), xs * 3))  # noqa: B023
        for i, got in enumerate(together):
            assert compare_runs(alone[i % len(xs)], got, order=g.neuron_names()) is None, (kernels, i)


def test_a_kept_plan_never_keeps_its_graph_alive() -> None:
    """What ``run_fx`` keeps for a graph's next run goes with the graph, even where a node refers
    back to the graph (provenance in ``metadata``)."""
    import gc
    import weakref

    from lnm_deploy.fxsim.sim import _Plan

    refs = []
    for seed in range(5):
        rng = np.random.default_rng(seed)
        g = random_dense_net(rng, recurrent=False)
        g.nodes[_first(g, "synapse")].metadata["graph"] = g
        run_fx(g, spikes(rng, 2, 3, g.input_shape))
        assert g in _Plan._plans
        refs.append(weakref.ref(g))
        del g
    gc.collect()
    assert all(r() is None for r in refs)


def test_graphs_and_nodes_of_other_classes_run_as_before() -> None:
    """A graph subclass (hashable or not) and node classes from outside the package run as a
    fresh copy does; their plans are not kept (their semantics may live in class attributes)."""
    import copy
    import dataclasses

    from lnm_deploy.fxsim.sim import _Plan

    @dataclasses.dataclass  # eq=True: instances are unhashable
    class MyGraph(FxGraph):
        pass

    rng = np.random.default_rng(3)
    g = random_dense_net(rng, recurrent=False)
    x = spikes(rng, 2, 4, g.input_shape)
    mine = MyGraph(nodes=g.nodes, edges=g.edges, delays=g.delays, target=g.target)
    for kernels in KERNELS:
        assert compare_runs(run_fx(g, x, record=True, kernels=kernels), run_fx(mine, x, record=True, kernels=kernels),
                            order=g.neuron_names()) is None
    syn = _first(g, "synapse")
    assert type(g.nodes[syn]) is FxDense
    g.nodes[syn].__class__ = _NegatedDense
    run_fx(g, x)
    assert g not in _Plan._plans
    negated = _NegatedDense.effective_weight
    _NegatedDense.effective_weight = FxDense.effective_weight  # type: ignore[method-assign]
    try:  # a class attribute edited between runs: run as edited
        ref = run_fx(copy.deepcopy(g), x, record=True)
        assert compare_runs(ref, run_fx(g, x, record=True), order=g.neuron_names()) is None
    finally:
        _NegatedDense.effective_weight = negated  # type: ignore[method-assign]


@pytest.mark.parametrize("make, field", [
    (lambda v: FxLIF(shape=(2,), du=v, dv=1, vth=1), "du"),
    (lambda v: FxLIF(shape=(v,), du=1, dv=1, vth=1), "shape"),
    (lambda v: FxDense(weight=np.ones((2, 2), int), weight_exp=v), "weight_exp"),
    (lambda v: FxPoly(shape=(2,), coef=np.ones((2, 2), int), shifts=(v,), vth=3), "shifts"),
    (lambda v: FxPoly(shape=(2,), coef=np.ones((2, 2), int), in_shift=v, vth=3), "in_shift"),
])
def test_integer_fields_are_never_truncated(make: Any, field: str) -> None:
    """An integer field of an integer node given a non-integral number is refused by name (it was
    truncated: shifts=(15.7,) became 15); an integral float is that integer."""
    with pytest.raises(GraphError, match=f"{field} must be an integer, got 2.5"):
        make(2.5)
    node = make(2.0)
    got = getattr(node, field)
    assert (got[0] if isinstance(got, tuple) else got) == 2 and type(got[0] if isinstance(got, tuple) else got) is int
