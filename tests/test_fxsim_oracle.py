"""fxsim against a plain-Python big-integer oracle written from docs/fixed-point.md.

The oracle below uses Python ints and lists only (no numpy), one sample, one neuron at a time,
following the numbered steps of the contract. It reuses only the graph's schedule (topology).
Every configuration of fxsim is checked: both engines, the layer engine's chunking, and the numpy
and (when numba is installed) compiled kernels.
"""

from __future__ import annotations

import numpy as np
import pytest
from fx_nets import random_conv_net, random_dense_net, spikes
from hypothesis import given, settings
from hypothesis import strategies as st

from lnm_deploy.errors import DependencyError, GraphError, UserInputError
from lnm_deploy.fixedpoint import (
    FxConv2d,
    FxDense,
    FxFlatten,
    FxGraph,
    FxInput,
    FxLIF,
    FxOutput,
    FxPoly,
    fx_sequential,
)
from lnm_deploy.fxsim import compare_runs, first_mismatch, run_fx
from lnm_deploy.fxsim.sim import load_kernels

# The compiled kernels are part of the reference environment; without numba only numpy runs.
KERNELS = ["numpy"] + (["numba"] if load_kernels("auto") is not None else [])

# ------------------------------------------------------------------------ oracle: section 1


def o_wrap(x: int, n: int) -> int:
    return ((x + 2 ** (n - 1)) % 2**n) - 2 ** (n - 1)


def o_sat(x: int, n: int) -> int:
    m = 2 ** (n - 1) - 1
    return min(max(x, -m), m)


def o_ovf(x: int, n: int, mode: str) -> int:
    return o_sat(x, n) if mode == "saturate" else o_wrap(x, n)


def o_floor_div(x: int, s: int) -> int:
    return x // 2**s  # Python // is floor division


def o_rnd(x: int, s: int, mode: str) -> int:
    if s == 0:
        return x
    if mode == "floor":
        return o_floor_div(x, s)
    if mode == "trunc":
        return -o_floor_div(-x, s) if x < 0 else o_floor_div(x, s)
    assert mode == "nearest"
    return o_floor_div(x + 2 ** (s - 1), s)


def o_shexp(x: int, e: int) -> int:
    return x * 2**e if e >= 0 else o_floor_div(x, -e)


def o_corr24(p: int) -> int:
    if p > 2**23:
        return p - 2**24
    if p <= -(2**23):
        return p + 2**24
    return p


# ---------------------------------------------------------------------- oracle: section 3


def o_dense_weights(node: FxDense) -> list[list[int]]:
    n = node.num_weight_bits
    k = 8 - n + (1 if node.sign_mode == "mixed" else 0)
    out = []
    for row in node.weight.tolist():
        r = []
        for w in row:
            if node.sign_mode == "mixed":
                r.append(o_floor_div(min(max(w, -256), 255), k) * 2**k)
            elif node.sign_mode == "excitatory":
                r.append(o_floor_div(min(max(w, 0), 255), k) * 2**k)
            else:
                r.append(-(o_floor_div(min(max(-w, 0), 255), k) * 2**k))
        out.append(r)
    return out


def o_dense(node: FxDense, w: list[list[int]], s: list[int]) -> list[int]:
    return [o_wrap(o_shexp(sum(wi * si for wi, si in zip(row, s, strict=True)), node.weight_exp), node.out_bits)
            for row in w]


def o_conv(node: FxConv2d, s: list[int], in_shape: tuple[int, ...], out_shape: tuple[int, ...]) -> list[int]:
    cin, hin, win = in_shape
    cout, hout, wout = out_shape
    w = node.weight.tolist()
    cg = cin // node.groups
    og = cout // node.groups
    kh, kw = len(w[0][0]), len(w[0][0][0])
    out = []
    for o in range(cout):
        g = o // og
        for y in range(hout):
            for x in range(wout):
                acc = 0
                for c in range(cg):
                    for i in range(kh):
                        for j in range(kw):
                            yy = y * node.stride[0] - node.padding[0] + i * node.dilation[0]
                            xx = x * node.stride[1] - node.padding[1] + j * node.dilation[1]
                            if 0 <= yy < hin and 0 <= xx < win:
                                acc += w[o][c][i][j] * s[((g * cg + c) * hin + yy) * win + xx]
                out.append(o_wrap(o_shexp(acc, node.weight_exp), node.out_bits))
    return out


# ---------------------------------------------------------------------- oracle: sections 4, 5


class OLIF:
    def __init__(self, node: FxLIF) -> None:
        self.n = node
        self.u = node.u_init.reshape(-1).tolist()
        self.v = node.v_init.reshape(-1).tolist()
        self.bias = [o_shexp(m, e) for m, e in zip(node.bias_mant.reshape(-1).tolist(),
                                                   node.bias_exp.reshape(-1).tolist(), strict=True)]

    def step(self, a: list[int]) -> list[int]:
        n = self.n
        one = 2**n.decay_bits
        s_out = []
        for i, ai in enumerate(a):
            ud = o_rnd(self.u[i] * (one - n.du - 1), n.decay_bits, "trunc")  # 1
            x = o_wrap(ai * 2**n.act_shift, 32)  # 2
            self.u[i] = o_corr24(o_wrap(ud + x, 32))  # 3
            vd = o_rnd(self.v[i] * (one - n.dv), n.decay_bits, "trunc")  # 4
            vp = o_sat(o_wrap(vd + self.u[i] + self.bias[i], 32), 24)  # 5
            s = 1 if vp > n.vth * 2**n.vth_shift else 0  # 6
            self.v[i] = 0 if s else vp  # 7
            s_out.append(s)
        return s_out

    def states(self) -> dict[str, list[int]]:
        return {"u": list(self.u), "v": list(self.v)}


class OPoly:
    def __init__(self, node: FxPoly) -> None:
        self.n = node
        self.v = node.v_init.reshape(-1).tolist()
        self.c = node.c_init.reshape(-1).tolist()
        self.coef = [row.reshape(-1).tolist() for row in node.coef]
        self.vth = node.vth.reshape(-1).tolist()
        self.v_reset = node.v_reset.reshape(-1).tolist()
        self.dc = None if node.syn_decay is None else node.syn_decay.reshape(-1).tolist()

    def step(self, a: list[int]) -> list[int]:
        n = self.n
        S, R, rnd, ovf = n.state_bits, n.acc_bits, n.rounding, n.overflow
        s_out = []
        for i, ai in enumerate(a):
            x = ai * 2**n.in_shift  # 1
            if self.dc is not None:  # 2
                self.c[i] = o_ovf(o_rnd(self.c[i] * (2**n.decay_bits - self.dc[i]), n.decay_bits, rnd) + x, S, ovf)
            else:
                self.c[i] = o_ovf(x, S, ovf)
            d = len(self.coef) - 1  # 3
            h = self.coef[d][i]
            for k in range(d - 1, -1, -1):
                h = o_ovf(o_rnd(h * self.v[i], n.shifts[k], rnd) + self.coef[k][i], R, ovf)
            vp = o_ovf(h + self.c[i], S, ovf)  # 4
            s = 1 if vp > self.vth[i] else 0  # 5
            if s:  # 6
                self.v[i] = self.v_reset[i] if n.reset == "value" else o_ovf(vp - self.vth[i], S, ovf)
            else:
                self.v[i] = vp
            s_out.append(s)
        return s_out

    def states(self) -> dict[str, list[int]]:
        out = {"v": list(self.v)}
        if self.dc is not None:
            out["c"] = list(self.c)
        return out


def oracle(graph: FxGraph, x: np.ndarray) -> tuple[dict[str, list], dict[str, dict[str, list]]]:
    """Spikes and states per layer as nested lists [sample][step][flat neuron]."""
    sched = graph.schedule()
    xl = x.reshape(x.shape[0], x.shape[1], -1).tolist()
    neurons = [n for n in sched.order if graph.nodes[n].role == "neuron"]
    spk: dict[str, list] = {n: [] for n in neurons}
    sts: dict[str, dict[str, list]] = {}
    for b in range(len(xl)):
        runs: dict[str, OLIF | OPoly] = {}
        dense_w = {}
        for n in sched.order:
            node = graph.nodes[n]
            if isinstance(node, FxLIF):
                runs[n] = OLIF(node)
            elif isinstance(node, FxPoly):
                runs[n] = OPoly(node)
            elif isinstance(node, FxDense):
                dense_w[n] = o_dense_weights(node)
        for n in neurons:
            spk[n].append([])
            for k in runs[n].states():
                sts.setdefault(n, {}).setdefault(k, []).append([])
        prev: dict[str, list[int]] = {}
        for t in range(len(xl[b])):
            cur: dict[str, list[int]] = {}
            for n in sched.order:
                node = graph.nodes[n]
                ins = sched.inputs[n]
                if isinstance(node, FxInput):
                    cur[n] = xl[b][t]
                elif isinstance(node, FxOutput):
                    continue
                elif isinstance(node, FxFlatten):
                    cur[n] = cur[ins[0][0]]
                elif isinstance(node, FxDense):
                    cur[n] = o_dense(node, dense_w[n], cur[ins[0][0]])
                elif isinstance(node, FxConv2d):
                    cur[n] = o_conv(node, cur[ins[0][0]], sched.shapes[ins[0][0]], sched.shapes[n])
                else:
                    size = len(runs[n].v)
                    total = [0] * size
                    for src, delayed in ins:  # 4.1
                        vals = (prev.get(src, [0] * size)) if delayed else cur[src]
                        total = [p + q for p, q in zip(total, vals, strict=True)]
                    cur[n] = runs[n].step([o_wrap(v, 32) for v in total])
                    spk[n][b].append(cur[n])
                    for k, v in runs[n].states().items():
                        sts[n][k][b].append(v)
            prev = cur
    return spk, sts


def as_arrays(graph: FxGraph, spk: dict[str, list], sts: dict[str, dict[str, list]],
              batch: int, steps: int) -> tuple[dict[str, np.ndarray], dict[str, dict[str, np.ndarray]]]:
    shapes = graph.schedule().shapes
    a = {n: np.array(v, dtype=np.int64).reshape(batch, steps, *shapes[n]) for n, v in spk.items()}
    s = {n: {k: np.array(v, dtype=np.int64).reshape(batch, steps, *shapes[n]) for k, v in d.items()}
         for n, d in sts.items()}
    return a, s


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
