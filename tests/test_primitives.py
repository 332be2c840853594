"""The integer primitive registry: every node kind defined once, unknown kinds refused loudly."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, ClassVar

import fx_nets
import numpy as np
import pytest

from lnm_deploy.errors import UnsupportedError
from lnm_deploy.fixedpoint import (
    FxDense,
    FxLIF,
    FxNeuron,
    FxNode,
    FxPoly,
    fx_node_types,
    fx_sequential,
    primitive,
    primitive_of,
    primitives,
)
from lnm_deploy.fixedpoint.arith import shift_exp, wrap
from lnm_deploy.fixedpoint.contract import lif_bounds
from lnm_deploy.fixedpoint.primitives import synapse_bounds
from lnm_deploy.fxsim.sim import ACCELERATIONS, NEURONS, _Val, load_kernels
from lnm_deploy.targets import RULES, check_graph, load_target


def _package_node_classes() -> set[type[FxNode]]:
    out: set[type[FxNode]] = set()
    stack = list(FxNode.__subclasses__())
    while stack:
        cls = stack.pop()
        stack.extend(cls.__subclasses__())
        if cls.__module__.startswith("lnm_deploy.") and cls is not FxNeuron:
            out.add(cls)
    return out


def test_registry_lists_every_fx_node_subclass() -> None:
    reg = primitives()
    assert {p.node_type for p in reg.values()} == _package_node_classes()
    assert fx_node_types() == {k: p.node_type for k, p in reg.items()}
    for kind, p in reg.items():
        assert p.kind == kind == p.node_type.kind
        assert p.design_rule is not None, kind
        assert RULES[p.node_type] is p.design_rule
        if p.role in ("synapse", "neuron"):
            assert p.bounds is not None and p.spec is not None and p.spec_section == kind, kind
            assert callable(p.spec.check) and callable(p.spec.summary), kind
        assert not (p.implicit and p.spec is not None), kind
        if p.role == "neuron":
            assert p.step is not None and p.params is not None, kind


def test_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(UnsupportedError, match=r"unknown integer primitive kind 'adaptive'; known: \[.*'dense'.*'lif'"):
        primitive("adaptive")
    assert primitive("lif").node_type is FxLIF


@dataclass(eq=False)
class _FxMystery(FxNeuron):
    """A neuron class nobody registered (its kind is unknown to every registry)."""

    kind: ClassVar[str] = "mystery"

    def state_names(self) -> tuple[str, ...]:
        return ("v",)


def test_check_graph_refuses_a_node_without_a_rule() -> None:
    g = fx_sequential([("fc", FxDense(weight=[[2, 4]])), ("odd", _FxMystery(shape=(1,)))], (2,))
    g.schedule()  # structurally fine
    with pytest.raises(UnsupportedError, match=r"node 'odd': unknown integer primitive kind 'mystery'; known"):
        check_graph(g, load_target("loihi2"))
    with pytest.raises(UnsupportedError, match="'mystery'"):
        primitive_of(g.nodes["odd"], "odd")


def test_limits_are_typed_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """One definition feeds the node validation and the target validation alike."""
    import lnm_deploy.fixedpoint.nodes as fx_nodes
    from lnm_deploy import limits
    from lnm_deploy.errors import GraphError, UserInputError

    assert FxPoly.RESETS is limits.RESET_MODES and FxPoly.limits(24, 32)["degree"] == limits.POLY_DEGREES
    cubic = FxPoly(shape=(1,), coef=[0, 1, 0, 1], shifts=(1, 1, 1))
    cubic.validate("p")
    load_target("loihi2")
    monkeypatch.setattr(fx_nodes, "POLY_DEGREES", (0, 2))
    with pytest.raises(GraphError, match=r"node 'p'.*degree must be 0\.\.2, got 3"):
        cubic.validate("p")
    with pytest.raises(UserInputError, match=r"key 'poly\.max_degree' = 3 is out of range \[0, 2\]"):
        load_target("loihi2")
    monkeypatch.undo()
    narrow = staticmethod(lambda decay_bits, vth_shift: {**_LIF_LIMITS(decay_bits, vth_shift), "state_bits": (2, 16)})
    monkeypatch.setattr(FxLIF, "limits", narrow)
    with pytest.raises(GraphError, match=r"'state_bits' must lie in \[2, 16\]"):
        FxLIF(shape=(1,)).validate("lif")
    with pytest.raises(UserInputError, match=r"key 'lif\.state_bits' = 24 is out of range \[2, 16\]"):
        load_target("loihi2-lif")


_LIF_LIMITS = FxLIF.limits


# ------------------------------------------------ accelerations checked against the contract step


def _contract_run(node: FxNode, a: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The registered contract step, one timestep at a time over ``a`` (T, B, *shape) int64."""
    p = primitive_of(node)
    params = p.params(node)  # type: ignore[misc]
    batch = a.shape[1]
    inits = {"u": "u_init", "v": "v_init", "c": "c_init"}
    names = ("u", "v") if p.kind == "lif" else ("v", "c")
    state = {k: np.broadcast_to(getattr(node, inits[k]), (batch, *node.shape)).astype(np.int64) for k in names}
    spikes, rec = [], {k: [] for k in node.state_names()}  # type: ignore[attr-defined]
    for t in range(a.shape[0]):
        state, s = p.step(params, state, a[t])  # type: ignore[misc]
        spikes.append(s)
        for k in rec:
            rec[k].append(state[k])
    return np.stack(spikes), {k: np.stack(v) for k, v in rec.items()}


def _accelerated_run(node: FxNode, a: np.ndarray, input_bound: int, kern: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """``run`` over ``a`` (T, B, *shape) in two chunks (the second starts at step T // 2: the
    records of a chunk go to steps ``t0`` on of the (B, T, *shape) record arrays); spikes and
    states returned time-major like ``_contract_run``'s."""
    run = NEURONS[node.kind](node, a.shape[1], input_bound, kern)  # type: ignore[call-arg]
    out = np.zeros(a.shape, dtype=bool)
    rec = {k: np.zeros((a.shape[1], a.shape[0], *a.shape[2:]), dtype=np.int64) for k in run.states()}
    half = a.shape[0] // 2
    for t0, t1 in ((0, half), (half, a.shape[0])):
        if t1 > t0:
            run.run(_Val(np.ascontiguousarray(a[t0:t1]), input_bound), out[t0:t1], rec, t0)
    return out, {k: np.swapaxes(r, 0, 1) for k, r in rec.items()}


def _inputs(rng: np.random.Generator, shape: tuple[int, ...], bound: int) -> np.ndarray:
    a = rng.integers(-bound, bound + 1, shape, dtype=np.int64)
    edge = rng.random(shape) < 0.1
    return np.where(edge, rng.choice([-bound, bound, 0], shape), a)


def _assert_same(want: tuple[np.ndarray, dict[str, np.ndarray]], got: tuple[np.ndarray, dict[str, np.ndarray]],
                 what: str) -> None:
    assert np.array_equal(want[0], got[0]), f"{what}: spikes differ"
    assert set(want[1]) == set(got[1]), what
    for k in want[1]:
        assert np.array_equal(want[1][k], got[1][k]), f"{what}: state {k} differs"


@pytest.mark.parametrize("seed", range(12))
def test_lif_float64_path_matches_the_contract(seed: int) -> None:
    """fxsim's float64 LIF path (taken only where ``lif_bounds`` proves it exact) equals the step."""
    rng = np.random.default_rng(seed)
    node = fx_nets.lif(rng, (7,))
    bound = int(rng.choice([1, 100, 2**17, 2**20, 2**31]))
    a = _inputs(rng, (9, 3, 7), bound)
    run = NEURONS["lif"](node, 3, bound, None)  # type: ignore[call-arg]
    assert run.fast == (lif_bounds(node, bound).small and bool(np.abs(node.bias).max(initial=0) <= 2**29))
    _assert_same(_contract_run(node, a), _accelerated_run(node, a, bound, None), f"seed {seed}")


def test_every_acceleration_matches_the_contract() -> None:
    kern = load_kernels("numba") if importlib.util.find_spec("numba") else None
    if kern is None:
        pytest.skip("numba is not installed")
    assert set(ACCELERATIONS) <= set(primitives())
    for name in ACCELERATIONS.values():
        assert callable(getattr(kern, name))
    for seed in range(30):
        rng = np.random.default_rng(seed)
        shape = (int(rng.integers(1, 6)),)
        node = fx_nets.lif(rng, shape) if seed % 2 else fx_nets.poly(rng, shape, small=bool(seed % 3))
        bound = int(rng.choice([1, 2**17, 2**31]))
        a = _inputs(rng, (int(rng.integers(1, 9)), int(rng.integers(1, 4)), *shape), bound)
        _assert_same(_contract_run(node, a), _accelerated_run(node, a, bound, kern), f"{node.kind}, seed {seed}")
        # Dense on spikes: the exact integer product with the effective weights (section 3.1)
        d = fx_nets.dense(rng, int(rng.integers(1, 20)), int(rng.integers(1, 40)))
        if synapse_bounds(d).acc < 2**31:
            s = (rng.random((int(rng.integers(1, 70)), d.weight.shape[1])) < 0.3).astype(np.uint8)
            w = d.effective_weight()
            out = np.zeros((s.shape[0], w.shape[0]), np.int32)
            getattr(kern, ACCELERATIONS["dense"])(s, np.ascontiguousarray(w.T.astype(np.int32)), out)
            assert np.array_equal(out, s.astype(np.int64) @ w.T), f"dense, seed {seed}"


def _conv_by_definition(s: np.ndarray, w: np.ndarray, stride, padding, dilation, groups) -> np.ndarray:
    """Section 3.2 before the exponent, output position by output position, in int64."""
    rows, cin, h, wd = s.shape
    cout, cin_g, kh, kw = w.shape
    x = np.zeros((rows, cin, h + 2 * padding[0], wd + 2 * padding[1]), np.int64)
    x[:, :, padding[0] : padding[0] + h, padding[1] : padding[1] + wd] = s
    h_out = (x.shape[2] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
    w_out = (x.shape[3] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
    out = np.zeros((rows, cout, h_out, w_out), np.int64)
    for o in range(cout):
        g = o // (cout // groups)
        for y in range(h_out):
            for xx in range(w_out):
                win = x[:, g * cin_g : (g + 1) * cin_g,
                        y * stride[0] : y * stride[0] + dilation[0] * (kh - 1) + 1 : dilation[0],
                        xx * stride[1] : xx * stride[1] + dilation[1] * (kw - 1) + 1 : dilation[1]]
                out[:, o, y, xx] = (win * w[o]).sum(axis=(1, 2, 3))
    return out


def test_conv_events_matches_the_definition_and_the_numpy_engine() -> None:
    """The event-driven Conv2d kernel (strides, padding, dilation, groups) against the definition
    and fxsim's numpy engine, on sparse spikes (where fxsim uses it)."""
    kern = load_kernels("numba") if importlib.util.find_spec("numba") else None
    if kern is None:
        pytest.skip("numba is not installed")
    from lnm_deploy.fixedpoint.nodes import FxConv2d
    from lnm_deploy.fxsim.sim import SYNAPSES

    for seed in range(40):
        rng = np.random.default_rng(seed)
        groups = int(rng.choice([1, 2, 3]))
        cin, cout = groups * int(rng.integers(1, 4)), groups * int(rng.integers(1, 4))
        kh, kw = int(rng.integers(1, 4)), int(rng.integers(1, 4))
        stride = (int(rng.integers(1, 4)), int(rng.integers(1, 4)))
        padding = (int(rng.integers(0, 3)), int(rng.integers(0, 3)))
        dilation = (int(rng.integers(1, 3)), int(rng.integers(1, 3)))
        h = int(rng.integers(dilation[0] * (kh - 1) + 1, 12))
        wd = int(rng.integers(dilation[1] * (kw - 1) + 1, 12))
        node = FxConv2d(weight=rng.integers(-300, 300, (cout, cin // groups, kh, kw)), stride=stride,
                        padding=padding, dilation=dilation, groups=groups, weight_exp=int(rng.integers(-2, 2)))
        s = (rng.random((int(rng.integers(1, 9)), cin, h, wd)) < rng.choice([0.05, 0.3])).astype(
            rng.choice([np.uint8, np.bool_]))
        want = _conv_by_definition(s, node.weight, stride, padding, dilation, groups)
        events = SYNAPSES["conv2d"](node, kern)  # type: ignore[call-arg]
        assert events.w_events is not None
        out = np.full(want.shape, -7, np.int32)
        getattr(kern, ACCELERATIONS["conv2d"])(s, events.w_events, out, *stride, *padding, *dilation, cin // groups)
        assert np.array_equal(out, want), f"seed {seed}"
        for reuse in (False, True):  # the whole synapse (exponent, wrap) against the numpy engine
            got, ref = events(s, reuse=reuse).as_int(), SYNAPSES["conv2d"](node, None)(s).as_int()  # type: ignore[call-arg]
            assert np.array_equal(got, ref), f"seed {seed}, reuse {reuse}"


def test_bounds_are_shared_and_sound() -> None:
    """fxsim and the ONNX builder read the synapse bounds of the registry; spot-check soundness."""
    rng = np.random.default_rng(3)
    for _ in range(50):
        d = fx_nets.dense(rng, 5, 9)
        b = synapse_bounds(d)
        s = (rng.random((200, 9)) < 0.5).astype(np.int64)
        acc = s @ d.effective_weight().T
        assert np.abs(acc).max(initial=0) <= b.acc
        y = shift_exp(acc, d.weight_exp)
        assert np.abs(wrap(y, d.out_bits) if b.wraps else y).max(initial=0) <= b.out
        if not b.wraps:
            assert np.array_equal(wrap(y, d.out_bits), y)


# ------------------------------------------------------------------ backends keyed by the registry


def test_every_backend_implements_every_registered_kind() -> None:
    """A new primitive must come with its implementation on every backend (tables keyed by kind)."""
    from lnm_deploy.fxsim.sim import RESHAPES, SYNAPSES, supported_kinds

    reg = primitives()
    by_role = {r: {k for k, p in reg.items() if p.role == r} for r in ("synapse", "neuron", "reshape")}
    # a neuron without an engine of its own runs its registered contract step (adaptive_poly)
    assert set(SYNAPSES) == by_role["synapse"] and set(NEURONS) <= by_role["neuron"]
    assert supported_kinds() == set(reg)
    assert set(RESHAPES) == by_role["reshape"]
    assert set(ACCELERATIONS) <= by_role["synapse"] | by_role["neuron"]
    if importlib.util.find_spec("onnx") is not None:
        from lnm_deploy.onnx_backend import build

        assert set(build.LOWERINGS) == by_role["synapse"] | by_role["reshape"]
        assert set(build.NEURONS) == by_role["neuron"]
    if importlib.util.find_spec("lava") is not None:
        from lnm_deploy.lava_backend.runner import LAVA_KINDS, _Network, lava_kinds

        assert set(lava_kinds()) == set(reg) and set(LAVA_KINDS) <= set(reg)
        assert set(_Network.BUILDERS) <= by_role["synapse"] | by_role["neuron"]


def test_backends_refuse_an_unknown_kind_listing_the_known_ones() -> None:
    from lnm_deploy.fxsim import run_fx

    g = fx_sequential([("fc", FxDense(weight=[[2, 4]])), ("odd", _FxMystery(shape=(1,)))], (2,))
    x = np.zeros((1, 2, 2), dtype=np.uint8)
    with pytest.raises(UnsupportedError, match=r"node 'odd': unknown integer primitive kind 'mystery'; known: \["):
        run_fx(g, x, kernels="numpy")
    if importlib.util.find_spec("onnx") is not None:
        from lnm_deploy.onnx_backend import build_onnx

        with pytest.raises(UnsupportedError, match=r"node 'odd': unknown integer primitive kind 'mystery'"):
            build_onnx(g)
    if importlib.util.find_spec("lava") is not None:
        from lnm_deploy.lava_backend.runner import plan

        with pytest.raises(UnsupportedError, match=r"node 'odd': unknown integer primitive kind 'mystery'"):
            plan(g)
