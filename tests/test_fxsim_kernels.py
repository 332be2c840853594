"""The compiled fxsim kernels (numba) index only inside their arrays.

numba does not check indices unless asked; an out-of-range write corrupts memory silently (and
crashes later, far away). This runs random networks through every kernel path (record or not,
layer and step engines, LIF and polynomial neurons with and without a current, Dense on sparse
spikes) in a fresh interpreter with ``NUMBA_BOUNDSCHECK=1`` and an empty cache, so every kernel is
compiled with checks. Their results are compared with the numpy engine as well.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("numba")

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from fx_nets import random_dense_net, random_conv_net, spikes
    from lnm_deploy.fxsim import compare_runs, first_mismatch, run_fx

    runs = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        g = random_conv_net(rng) if seed % 8 == 7 else random_dense_net(rng, max_width=40)
        x = spikes(rng, int(rng.integers(1, 4)), int(rng.integers(1, 9)), g.input_shape)
        ref = run_fx(g, x, record=True, kernels="numpy")
        for record in (True, False):
            for chunk in (None, 2):
                got = run_fx(g, x, record=record, chunk=chunk, kernels="numba")
                if record:
                    m = compare_runs(ref, got, order=g.neuron_names())
                else:
                    m = first_mismatch(ref.spikes, got.spikes, order=g.neuron_names())
                assert m is None, f"seed {{seed}}, record {{record}}, chunk {{chunk}}: {{m}}"
                runs += 1
    print("ok", runs)
    """
)


def _run_bounds_checked(script: str, tmp_path: Path) -> list[str]:
    """``script`` (its ``{tests}`` filled in) in a fresh interpreter with ``NUMBA_BOUNDSCHECK=1`` and
    an empty numba cache, so that every kernel it calls is compiled with index checks; asserts it
    succeeded and returns the words it printed."""
    tests = str(Path(__file__).parent)
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    proc = subprocess.run([sys.executable, "-c", script.format(tests=tests)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc.stdout.split()


# ------------------------------------------------------------------ Conv2d event kernel, path by path


def _conv_reference(s: np.ndarray, w: np.ndarray, stride, padding, dilation, groups) -> np.ndarray:
    """Section 3.2 before the exponent in int64, one kernel tap at a time over all outputs."""
    rows, cin, h, wd = s.shape
    cout, cin_g, kh, kw = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    x = np.zeros((rows, cin, h + 2 * ph, wd + 2 * pw), np.int64)
    x[:, :, ph : ph + h, pw : pw + wd] = s
    h_out = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    w_out = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((rows, cout, h_out, w_out), np.int64)
    cout_g = cout // groups
    for o in range(cout):
        g = o // cout_g
        for c in range(cin_g):
            for i in range(kh):
                for j in range(kw):
                    win = x[:, g * cin_g + c, i * dh : i * dh + sh * (h_out - 1) + 1 : sh,
                            j * dw : j * dw + sw * (w_out - 1) + 1 : sw]
                    out[:, o] += int(w[o, c, i, j]) * win
    return out


def _conv_cases(rng: np.random.Generator):  # type: ignore[no-untyped-def]
    """(weight, stride, padding, dilation, groups, input shape) for every loop of ``conv_events``:
    depthwise (one input and one output channel per group: the pooling gather), one group without
    dilation along x (the row scatter; strides 1-3, padding up to and past the kernel, dilation
    along y), and the general scatter (groups with several channels, dilation along x)."""
    for kind in ("depthwise", "rows", "general"):
        for _ in range(14):
            kh, kw = int(rng.integers(1, 5)), int(rng.integers(1, 5))
            stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
            padding = (int(rng.integers(0, kh + 2)), int(rng.integers(0, kw + 2)))
            dilation = (int(rng.integers(1, 3)), 1 if kind == "rows" else int(rng.integers(1, 3)))
            if kind == "depthwise":
                groups = cin = cout = int(rng.integers(1, 5))
            elif kind == "rows":
                groups, cin, cout = 1, int(rng.integers(1, 5)), int(rng.integers(1, 20))
            else:
                groups = int(rng.integers(2, 4))
                cin, cout = groups * int(rng.integers(1, 3)), groups * int(rng.integers(2, 4))
            h = int(rng.integers(max(1, dilation[0] * (kh - 1) + 1 - 2 * padding[0]), 14))
            wd = int(rng.integers(max(1, dilation[1] * (kw - 1) + 1 - 2 * padding[1]), 14))
            w = rng.integers(-300, 301, (cout, cin // groups, kh, kw))
            yield kind, w, stride, padding, dilation, groups, (int(rng.integers(1, 7)), cin, h, wd)


def test_conv_events_every_path_is_exact() -> None:
    """``conv_events`` against the definition, path by path, on random and all-one spikes (bool
    and uint8), and at the int32 edge: weights of one sign whose window sums reach ``2**31 - 1``
    exactly (the largest bound fxsim hands to the kernel)."""
    from lnm_deploy.fixedpoint.nodes import FxConv2d
    from lnm_deploy.fixedpoint.primitives import synapse_bounds
    from lnm_deploy.fxsim.sim import ACCELERATIONS, SYNAPSES, load_kernels

    kern = load_kernels("numba")
    conv = getattr(kern, ACCELERATIONS["conv2d"])
    rng = np.random.default_rng(14)
    seen = set()
    for kind, w, stride, padding, dilation, groups, shape in _conv_cases(rng):
        seen.add(kind)
        cin_g, kh, kw = w.shape[1:]
        edge = (2**31 - 1) // (cin_g * kh * kw)
        weights = [w, np.full_like(w, edge), np.full_like(w, -edge)]
        for wt in weights:
            node = FxConv2d(weight=wt, stride=stride, padding=padding, dilation=dilation, groups=groups)
            assert synapse_bounds(node).acc < 2**31
            syn = SYNAPSES["conv2d"](node, kern)  # type: ignore[call-arg]
            assert syn.w_events is not None
            for density in (0.15, 0.6, 1.0):
                s = rng.random(shape) < density
                want = _conv_reference(s, wt, stride, padding, dilation, groups)
                for x in (s, s.astype(np.uint8)):
                    out = np.full(want.shape, -7, np.int32)
                    conv(x, syn.w_events, out, *stride, *padding, *dilation, cin_g)
                    assert np.array_equal(out, want), (kind, stride, padding, dilation, groups, shape, density)
                # the whole synapse (kernel chosen or not) against fxsim's numpy engine
                ref = SYNAPSES["conv2d"](node, None)(s).as_int()  # type: ignore[call-arg]
                assert np.array_equal(syn(s, reuse=True).as_int(), ref)
    assert seen == {"depthwise", "rows", "general"}


CONV_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_fxsim_kernels import _conv_cases, _conv_reference
    from lnm_deploy.fixedpoint.nodes import FxConv2d
    from lnm_deploy.fxsim.sim import ACCELERATIONS, SYNAPSES, load_kernels

    kern = load_kernels("numba")
    runs = 0
    for kind, w, stride, padding, dilation, groups, shape in _conv_cases(np.random.default_rng(7)):
        node = FxConv2d(weight=w, stride=stride, padding=padding, dilation=dilation, groups=groups)
        syn = SYNAPSES["conv2d"](node, kern)
        s = (np.random.default_rng(runs).random(shape) < 0.5).astype(np.uint8)
        out = np.zeros((shape[0], *node.output_shape("c", shape[1:])), np.int32)
        getattr(kern, ACCELERATIONS["conv2d"])(s, syn.w_events, out, *stride, *padding, *dilation, w.shape[1])
        assert np.array_equal(out, _conv_reference(s, w, stride, padding, dilation, groups)), kind
        runs += 1
    print("ok", runs)
    """
)


@pytest.mark.slow
def test_kernels_stay_in_bounds(tmp_path: Path) -> None:
    """Random networks through every kernel path, then every loop of ``conv_events`` path by path,
    compiled with ``NUMBA_BOUNDSCHECK=1`` (see the module docstring), in one interpreter: each
    kernel signature compiles once (the cold compile is most of this test's time)."""
    assert _run_bounds_checked(SCRIPT + CONV_SCRIPT, tmp_path)[-4:] == ["ok", "160", "ok", "42"]


def test_synapses_into_one_neuron_add_in_place_exactly() -> None:
    """A neuron fed by several Conv2d synapses (residual blocks): the later synapses add their
    products into the first one's int32 output (``_Synapse.add_into``) where the summed bounds stay
    below ``2**31``, else the outputs are summed (and wrapped) as before; numba against numpy,
    every chunking, recorded states included."""
    sys.path.insert(0, str(Path(__file__).parent))
    import fx_nets

    from lnm_deploy.fixedpoint import nodes as fx
    from lnm_deploy.fixedpoint.graph import FxGraph
    from lnm_deploy.fxsim import compare_runs, run_fx, sim

    added = []
    orig = sim._Conv.add_into

    def counting(self, s, into):  # type: ignore[no-untyped-def]
        got = orig(self, s, into)
        added.append(got is not None)
        return got

    sim._Conv.add_into = counting  # type: ignore[method-assign]
    try:
        for seed in range(12):
            rng = np.random.default_rng(seed)
            c, h, w = int(rng.integers(1, 4)), int(rng.integers(3, 9)), int(rng.integers(3, 9))
            c2 = int(rng.integers(1, 5))
            big = 2**31 // (9 * max(c, c2)) if seed % 3 == 0 else 300  # some sums reach past int32

            def conv(cin: int, cout: int, k: int, limit: int, rng: np.random.Generator = rng) -> fx.FxConv2d:
                return fx.FxConv2d(weight=rng.integers(-limit, limit + 1, (cout, cin, k, k)), padding=(k // 2, k // 2))

            def neuron(shape: tuple[int, ...], rng: np.random.Generator = rng) -> fx.FxNode:
                return fx_nets.poly(rng, shape) if rng.random() < 0.5 else fx_nets.lif(rng, shape, edges=False)

            nodes = {"input": fx.FxInput(shape=(c, h, w)), "ca": conv(c, c2, 3, 300), "n1": neuron((c2, h, w)),
                     "cb": conv(c2, c2, 3, big), "skip": conv(c, c2, 1 + 2 * int(rng.integers(0, 2)), big),
                     "skip2": conv(c2, c2, 1, 300), "n2": neuron((c2, h, w)), "output": fx.FxOutput()}
            edges = [("input", "ca"), ("ca", "n1"), ("n1", "cb"), ("cb", "n2"), ("input", "skip"), ("skip", "n2"),
                     ("n1", "skip2"), ("skip2", "n2"), ("n2", "output")]
            g = FxGraph(nodes=nodes, edges=edges)
            x = fx_nets.spikes(rng, int(rng.integers(1, 4)), int(rng.integers(1, 7)), (c, h, w))
            ref = run_fx(g, x, record=True, kernels="numpy")
            for chunk in (None, 1, 2):
                m = compare_runs(ref, run_fx(g, x, record=True, chunk=chunk, kernels="numba"), order=g.neuron_names())
                assert m is None, f"seed {seed}, chunk {chunk}: {m}"
    finally:
        sim._Conv.add_into = orig  # type: ignore[method-assign]
    assert any(added) and not all(added)  # both the in-place and the separate sum ran


@pytest.mark.parametrize("n", [1, 255, 256, 257, 700])
def test_poly_kernel_blocks_and_spike_rules_match_numpy(n: int) -> None:
    """``poly_steps`` runs blocks of ``POLY_BLOCK`` neurons through all timesteps: layers narrower,
    as wide as and wider than a block (a partial last block), with every spike rule (``>=``,
    graded counts, the floor) and the current-bias register, against the numpy contract."""
    import dataclasses

    import fx_nets

    from lnm_deploy.fxsim import compare_runs, run_fx

    runs = 0
    for seed in range(12):
        rng = np.random.default_rng(1000 * n + seed)
        n_in = int(rng.integers(1, 30))
        node = fx_nets.poly(rng, (n,))
        sm = 2 ** (node.state_bits - 1) - 1
        rules: dict[str, object] = {"threshold": ">=" if seed % 2 else ">", "max_payload": [1, 1, 3, 15][seed % 4]}
        if rules["max_payload"] != 1:
            rules["vth"] = np.maximum(node.vth, 1)
        if seed % 3 == 0:
            rules["v_floor"] = rng.integers(-sm, 1, n)
        if seed % 5 < 2:
            rules["c_bias"] = rng.integers(-min(sm, 3000), min(sm, 3000) + 1, n)
        node = dataclasses.replace(node, **rules)  # type: ignore[arg-type]
        g = fx_nets.chain([("syn", fx_nets.dense(rng, n, n_in)), ("p", node)], (n_in,))
        x = fx_nets.spikes(rng, int(rng.integers(1, 4)), int(rng.integers(1, 7)), (n_in,))
        ref = run_fx(g, x, record=True, kernels="numpy")
        for chunk in (None, 2):
            got = run_fx(g, x, record=True, chunk=chunk, kernels="numba")
            assert compare_runs(ref, got, order=g.neuron_names()) is None, (n, seed, chunk, rules)
            runs += 1
        fired = ref.spikes["p"]
        if rules["max_payload"] != 1:
            assert fired.max() <= rules["max_payload"]
    assert runs == 24


@pytest.mark.parametrize("n", [255, 257, 700])
def test_lif_kernel_blocks_match_numpy(n: int) -> None:
    """``lif_steps`` runs the same blocks of neurons as ``poly_steps``: layers with a partial last
    block, recorded, in one chunk and in chunks of two timesteps, against the numpy contract."""
    import fx_nets

    from lnm_deploy.fxsim import compare_runs, run_fx

    for seed in range(6):
        rng = np.random.default_rng(2000 * n + seed)
        n_in = int(rng.integers(1, 30))
        g = fx_nets.chain([("syn", fx_nets.dense(rng, n, n_in)), ("l", fx_nets.lif(rng, (n,)))], (n_in,))
        x = fx_nets.spikes(rng, int(rng.integers(1, 4)), int(rng.integers(1, 7)), (n_in,))
        ref = run_fx(g, x, record=True, kernels="numpy")
        for chunk in (None, 2):
            got = run_fx(g, x, record=True, chunk=chunk, kernels="numba")
            assert compare_runs(ref, got, order=g.neuron_names()) is None, (n, seed, chunk)


@pytest.mark.parametrize("acc_bits", [32, 31, 40])
def test_poly_kernel_products_at_the_int32_edges_match_numpy(acc_bits: int) -> None:
    """``poly_steps`` takes its products as int32 x int32 where every factor provably fits int32
    (``R, S <= 32``: ``narrow``) and leaves out the cubic Horner step below degree 3; both are
    exact. Driven to the edges: 32-bit states and a 32-bit Horner register with coefficients at
    ``+-(2**31 - 1)``, saturating and wrapping, with and without a current state, every degree;
    ``acc_bits`` 40 takes the 64-bit products. Against the numpy contract, recorded states included."""
    import dataclasses

    import fx_nets

    from lnm_deploy.fixedpoint import nodes as fx
    from lnm_deploy.fxsim import compare_runs, run_fx, sim

    kern = sim.load_kernels("numba")
    n, n_in = 300, 12
    for seed in range(16):
        rng = np.random.default_rng(3000 + seed)
        degree = seed % 4
        S = 32 if acc_bits != 40 else 24
        cm, sm = 2 ** (min(acc_bits, 32) - 1) - 1, 2 ** (S - 1) - 1
        coef = rng.choice([cm, -cm, 1, 0, -(2**20), min(2**30, cm)], (degree + 1, n))
        node = fx.FxPoly(shape=(n,), coef=coef, shifts=tuple(int(s) for s in rng.integers(0, 40, degree)),
                         vth=rng.choice([sm, 2**20, 1], n), v_reset=rng.integers(-100, 101, n),
                         reset="subtract" if seed % 2 else "value", in_shift=int(rng.integers(20, 31)),
                         syn_decay=None if seed % 3 == 0 else rng.integers(0, 4097, n),
                         rounding=str(rng.choice(["nearest", "floor", "trunc"])),  # type: ignore[arg-type]
                         overflow="saturate" if seed % 4 < 2 else "wrap", state_bits=S, acc_bits=acc_bits,
                         coef_bits=min(acc_bits, 32), v_init=rng.choice([sm, -sm, 0], n))
        if seed % 5 == 0:
            node = dataclasses.replace(node, c_init=rng.choice([sm, -sm], n))
        run = sim._PolyRun(node, 1, 2**40, kern)
        assert run.kargs[-4:-2] == (acc_bits <= 32, degree == 3 and bool(coef[0].any())), seed  # narrow, cubic
        g = fx_nets.chain([("syn", fx_nets.dense(rng, n, n_in)), ("p", node)], (n_in,))
        x = fx_nets.spikes(rng, 2, 6, (n_in,))
        ref = run_fx(g, x, record=True, kernels="numpy")
        got = run_fx(g, x, record=True, kernels="numba")
        assert compare_runs(ref, got, order=g.neuron_names()) is None, (acc_bits, seed)
        assert np.abs(ref.states["p"]["v"]).max() > 2 ** (S - 3), seed  # the states reached the edges
