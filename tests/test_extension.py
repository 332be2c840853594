"""Adding an integer primitive from outside the package: a toy neuron defined in this file only.

The toy is an integrate-and-fire neuron with a hard floor on its membrane, ``floor_if``. Its
integer definition (one step, per neuron, on the input ``a = wrap_32(sum of its synapses)``)::

    t  = wrap_S(v + a)                 S = state_bits (2..32); v + a is exact in int64
    v' = max(t, floor)                 floor: per layer, in [-2**(S-1), 0]
    s  = v' > vth                      vth: per neuron, in [0, 2**(S-1) - 1]
    v  = 0 where s else v'             the state "v" after the reset

Everything the toolchain needs is registered from here and removed afterwards: the node class
(``FxFloorIF``), its contract (``FloorParams``, ``floor_step``), its bound analysis
(``floor_bounds``), its target section (``FloorIFSpec``) and design rule, the primitive
(``primitives.register``), its ONNX lowering (``onnx_backend.register_neuron_lowering``, written
with the ``Builder`` API), the conformance suite's example (``conformance.register_example``)
and an independent big-integer oracle (``fx_oracle.register_oracle``). fxsim (numpy and numba
configurations) and Lava (``ContractNeuron``) run its contract step without registering
anything. Every integer backend of the backend registry must then agree with the oracle bit for
bit, feed-forward and recurrent; a target without a ``[floor_if]`` section refuses the toy.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
from conformance import (
    EXAMPLES,
    backend_configs,
    check_backend,
    random_case,
    register_example,
    unregister_example,
)
from fx_nets import chain, dense, lif, spikes
from fx_oracle import NEURONS as ORACLES
from fx_oracle import o_wrap, register_oracle, unregister_oracle

import lnm_deploy
from lnm_deploy.backends import backend, integer_backends
from lnm_deploy.errors import DependencyError, GraphError, UnsupportedError
from lnm_deploy.fixedpoint import FxConv2d, FxDense, FxGraph, FxNeuron, primitives
from lnm_deploy.fixedpoint.arith import wrap
from lnm_deploy.fixedpoint.primitives import Primitive, SpecCheck, register, unregister
from lnm_deploy.targets import check_graph, load_target
from lnm_deploy.targets.spec import target_from_toml

KIND = "floor_if"
Array = np.ndarray


# ------------------------------------------------------------------ the node and its contract


@dataclass(eq=False)
class FxFloorIF(FxNeuron):
    """The toy neuron (module docstring). ``vth`` and ``v_init`` per neuron, ``floor`` per layer."""

    kind: ClassVar[str] = KIND
    vth: Array | int = 0
    floor: int = 0
    state_bits: int = 16
    v_init: Array | int = 0

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)
        self.floor, self.state_bits = int(self.floor), int(self.state_bits)
        self.vth = np.broadcast_to(np.asarray(self.vth, dtype=np.int64), self.shape).copy()
        self.v_init = np.broadcast_to(np.asarray(self.v_init, dtype=np.int64), self.shape).copy()

    def state_names(self) -> tuple[str, ...]:
        return ("v",)

    def validate(self, name: str) -> None:
        if not 2 <= self.state_bits <= 32:
            raise GraphError(f"state_bits must lie in [2, 32], got {self.state_bits}", node=name)
        half = 1 << (self.state_bits - 1)
        for key, value, lo, hi in (("floor", self.floor, -half, 0), ("vth", self.vth, 0, half - 1),
                                   ("v_init", self.v_init, self.floor, half - 1)):
            a = np.asarray(value)
            if a.size and (a.min() < lo or a.max() > hi):
                raise GraphError(f"'{key}' must lie in [{lo}, {hi}], got [{a.min()}, {a.max()}]", node=name)


@dataclass(frozen=True)
class FloorParams:
    """The constants of one step: ``vth`` per neuron, ``floor``, ``bits`` = S."""

    vth: Array
    floor: int
    bits: int

    @classmethod
    def of(cls, node: FxFloorIF) -> FloorParams:
        return cls(vth=np.asarray(node.vth, dtype=np.int64), floor=node.floor, bits=node.state_bits)


def floor_step(p: FloorParams, state: dict[str, Array], a: Array) -> tuple[dict[str, Array], Array]:
    """One step (module docstring) on int64 arrays of any shape; ``state`` is not modified."""
    vp = np.maximum(wrap(state["v"] + a, p.bits), p.floor)
    s = vp > p.vth
    return {"v": np.where(s, 0, vp)}, s


@dataclass(frozen=True)
class FloorBounds:
    """``v + a`` lies in ``[lo, hi]``; ``wraps``: the wrap to S bits can change a value."""

    lo: int
    hi: int
    wraps: bool


def floor_bounds(node: FxFloorIF, input_bound: int) -> FloorBounds:
    """``v`` stays in ``[floor, max(vth, v_init)]`` (above the floor after every step, 0 or at
    most ``vth`` after the reset), so ``v + a`` in ``[floor - bound, max + bound]``."""
    half = 1 << (node.state_bits - 1)
    top = int(max(np.asarray(node.vth).max(initial=0), np.asarray(node.v_init).max(initial=0)))
    lo, hi = node.floor - input_bound, top + input_bound
    return FloorBounds(lo, hi, lo < -half or hi > half - 1)


@dataclass(frozen=True)
class FloorIFSpec:
    """``[floor_if]`` of a target file: the state width it has, the thresholds and floors."""

    state_bits: int
    vth: tuple[int, int]
    floor: tuple[int, int]

    def check(self, c: SpecCheck) -> None:
        c.width("state_bits", self.state_bits, (2, 32))
        c.within("vth", self.vth, (0, (1 << (self.state_bits - 1)) - 1))
        c.within("floor", self.floor, (-(1 << (self.state_bits - 1)), 0))

    def summary(self) -> str:
        return f"floored IF ({self.state_bits}-bit state)"


def check_floor_if(name: str, node: FxFloorIF, t: Any) -> None:
    """The design rule: the target's state width, thresholds and floors."""
    s: FloorIFSpec = t.spec(KIND)
    if node.state_bits != s.state_bits:
        raise GraphError(f"state_bits is {node.state_bits}; target '{t.name}' has {s.state_bits}", node=name)
    vth = np.asarray(node.vth)
    if vth.min() < s.vth[0] or vth.max() > s.vth[1]:
        raise GraphError(f"vth in [{vth.min()}, {vth.max()}] exceeds target '{t.name}' range {list(s.vth)}",
                         node=name)
    if not s.floor[0] <= node.floor <= s.floor[1]:
        raise GraphError(f"floor {node.floor} exceeds target '{t.name}' range {list(s.floor)}", node=name)


# ------------------------------------------------------------------- oracle, example, lowering


class OFloorIF:
    """Big-integer oracle of the toy, from the module docstring (Python ints, one neuron at a time)."""

    def __init__(self, node: FxFloorIF) -> None:
        self.n = node
        self.v = np.asarray(node.v_init).reshape(-1).tolist()
        self.vth = np.asarray(node.vth).reshape(-1).tolist()

    def step(self, a: list[int]) -> list[int]:
        out = []
        for i, ai in enumerate(a):
            vp = max(o_wrap(self.v[i] + ai, self.n.state_bits), self.n.floor)
            s = 1 if vp > self.vth[i] else 0
            self.v[i] = 0 if s else vp
            out.append(s)
        return out

    def states(self) -> dict[str, list[int]]:
        return {"v": list(self.v)}


def toy(rng: np.random.Generator, shape: tuple[int, ...]) -> FxFloorIF:
    bits = int(rng.choice([4, 8, 16, 32]))
    half = 1 << (bits - 1)
    floor = int(rng.choice([0, -1, -half, int(rng.integers(-half, 1))]))
    vth = rng.integers(0, min(half - 1, 3000) + 1, shape)
    v_init = rng.integers(floor, half, shape) * (rng.random() < 0.4)
    return FxFloorIF(shape=shape, vth=vth, floor=floor, state_bits=bits, v_init=np.maximum(v_init, floor))


def toy_example(rng: np.random.Generator) -> tuple[FxFloorIF, tuple[int, ...]]:
    """A layer of 1-d or (C, H, W) shape (the conformance network drives an image-shaped neuron
    through a 1x1 convolution: Lava's (W, H, C) layout is exercised)."""
    if rng.random() < 0.5:
        shape: tuple[int, ...] = (int(rng.integers(1, 9)),)
    else:
        shape = (int(rng.integers(1, 3)), int(rng.integers(1, 4)), int(rng.integers(1, 4)))
    return toy(rng, shape), shape


def _lowering_class() -> Any:
    from lnm_deploy.onnx_backend import Builder, NeuronLowering

    class FloorIFLowering(NeuronLowering):
        """One step with the Builder API; the wrap only where ``floor_bounds`` needs it."""

        node: FxFloorIF

        def step(self, b: Builder, x: str, st: dict[str, str]) -> tuple[str, dict[str, str]]:
            n = self.node
            t = b.op("Add", [st["v"], x], "v_in")
            if floor_bounds(n, self.in_bound).wraps:
                t = b.wrap(t, n.state_bits)
            fl = b.const(n.floor)
            t = b.op("Where", [b.op("Less", [t, fl], "below"), fl, t], "floored")
            s = b.op("Greater", [t, b.const(n.vth)], "spike")
            return s, {"v": b.op("Where", [s, b.const(0), t], "v")}

    return FloorIFLowering


@contextlib.contextmanager
def toy_registered() -> Iterator[None]:
    """Register the toy everywhere; remove every entry on exit (even after a failure)."""
    has_onnx = importlib.util.find_spec("onnx") is not None
    register(Primitive(KIND, FxFloorIF, FloorIFSpec, check_floor_if, bounds=floor_bounds,
                       params=FloorParams.of, step=floor_step))
    try:
        register_example(KIND, toy_example)
        register_oracle(KIND, OFloorIF, neuron=True)
        if has_onnx:
            from lnm_deploy.onnx_backend import register_neuron_lowering

            register_neuron_lowering(KIND, _lowering_class())
        yield
    finally:
        if has_onnx:
            from lnm_deploy.onnx_backend import unregister_lowering

            unregister_lowering(KIND)
        unregister_oracle(KIND)
        unregister_example(KIND)
        unregister(KIND)


@pytest.fixture
def registered() -> Iterator[None]:
    with toy_registered():
        yield


def _kinds_or_skip(name: str) -> frozenset[str]:
    b = backend(name)
    try:
        return b.kinds() if b.kinds is not None else frozenset()
    except DependencyError as e:
        pytest.skip(str(e))


def recurrent_case(seed: int) -> tuple[FxGraph, Array]:
    """input -> Dense -> toy (with a Dense self-loop) -> Dense -> stock LIF -> output."""
    rng = np.random.default_rng([seed, 11])
    n_in, n, m = (int(v) for v in rng.integers(2, 7, 3))
    g = chain([("fc1", dense(rng, n, n_in)), ("toy", toy(rng, (n,))),
               ("fc2", dense(rng, m, n, wild=False)), ("lif", lif(rng, (m,), edges=False))],
              (n_in,), {"toy": dense(rng, n, n)})
    return g, spikes(rng, 2, 12, (n_in,))


def image_case(seed: int) -> tuple[FxGraph, Array]:
    """input (1, 3, 3) -> padded 2x2 convolution -> toy on (2, 4, 2) -> output (Lava's (W, H, C)
    layout differs from the node's)."""
    rng = np.random.default_rng([seed, 12])
    g = chain([("conv", FxConv2d(weight=rng.integers(-200, 200, (2, 1, 2, 2)), padding=(1, 0))),
               ("toy", toy(rng, (2, 4, 2)))], (1, 3, 3))
    return g, spikes(rng, 2, 9, (1, 3, 3))


# ------------------------------------------------------------------------------------ the tests

#: Random cases per backend (a Lava case compiles a network of its own).
CASES = {"lava": 2}


@pytest.mark.parametrize(("name", "config"), backend_configs(), ids=lambda v: str(v))
def test_toy_matches_the_oracle_on_every_integer_backend(registered: None, name: str, config: str) -> None:
    """Every integer backend configuration of the registry runs the toy, bit-exact with the
    oracle on spikes and states, feed-forward (1-d and image-shaped) and recurrent."""
    assert KIND in _kinds_or_skip(name), f"backend {name!r} does not run a registered neuron primitive"
    b = backend(name)
    cases = [random_case(KIND, seed) for seed in range(CASES.get(name, 5))]
    cases += [recurrent_case(0), image_case(0)]
    for i, (g, x) in enumerate(cases):
        assert KIND in {nd.kind for nd in g.nodes.values()}
        check_backend(b, config, g, x, label=f"toy case {i}")


def test_toy_changes_spikes_where_the_floor_acts(registered: None) -> None:
    """Not a vacuous toy: three kicks of -100 then five of +60 make a floored layer (floor -50)
    fire from step 4 on, and the same layer with the lowest floor (a plain IF) not at all."""
    from lnm_deploy.fxsim import run_fx

    x = np.zeros((1, 8, 2), np.uint8)
    x[0, :3, 0] = 1
    x[0, 3:, 1] = 1

    def fires(floor: int) -> Array:
        g = chain([("fc", FxDense(weight=np.array([[-100, 60]]))),
                   ("toy", FxFloorIF(shape=(1,), vth=50, floor=floor, state_bits=16))], (2,))
        return run_fx(g, x, kernels="numpy").spikes["toy"][0, :, 0]

    assert fires(-50).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert not fires(-(1 << 15)).any()


def test_target_refuses_or_checks_the_toy(registered: None) -> None:
    """A target without a ``[floor_if]`` section refuses the toy by name; one with it applies the
    toy's design rule."""
    w = np.array([[4, -2], [2, 6], [0, 8]])
    g = chain([("fc", FxDense(weight=w, sign_mode="mixed")), ("toy", FxFloorIF(shape=(3,), vth=40, floor=-8))],
              (2,))
    with pytest.raises(UnsupportedError, match=r"toy.*floor_if|floor_if.*toy"):
        check_graph(g, load_target("loihi2"))
    text = (Path(lnm_deploy.__file__).parent.parent / "targets" / "loihi2.toml").read_text()
    t = target_from_toml(text + "\n[floor_if]\nstate_bits = 16\nvth = [0, 1000]\nfloor = [-100, 0]\n", "toy.toml")
    assert t.offers(KIND)
    check_graph(g, t)
    g.nodes["toy"] = FxFloorIF(shape=(3,), vth=40, floor=-101)
    with pytest.raises(GraphError, match="floor -101 exceeds"):
        check_graph(g, t)


def test_registration_does_not_leak() -> None:
    """Registered inside the context, gone after it: the primitive, every backend's kinds, the
    ONNX lowering, the suite's example and oracle (test_conformance never sees the toy)."""
    def known() -> dict[str, bool]:
        out = {"primitive": KIND in primitives(), "example": KIND in EXAMPLES, "oracle": KIND in ORACLES}
        for name, b in integer_backends().items():
            try:
                out[name] = KIND in (b.kinds() if b.kinds is not None else ())
            except DependencyError:
                pass
        return out

    assert not any(known().values())
    with toy_registered():
        assert all(known().values()), known()
    assert not any(known().values()), known()


def test_registration_refuses_duplicates_and_unknown_kinds() -> None:
    pytest.importorskip("onnx")
    from lnm_deploy.onnx_backend import NeuronLowering, register_lowering, register_neuron_lowering

    with pytest.raises(UnsupportedError, match=r"floor_if.*known"):
        register_neuron_lowering(KIND, NeuronLowering)
    with toy_registered():
        with pytest.raises(ValueError, match="already has an ONNX lowering"):
            register_neuron_lowering(KIND, NeuronLowering)
        with pytest.raises(UnsupportedError, match="is a neuron"):
            register_lowering(KIND, lambda *a: ("", 0))


def test_lava_refuses_a_failing_step_before_running(registered: None) -> None:
    """A contract step that raises would hang Lava 0.10's run(): refused on the host first."""
    if "lava" not in integer_backends():
        pytest.skip("no lava backend")
    _kinds_or_skip("lava")
    g, x = recurrent_case(1)
    bad = FxFloorIF(shape=g.nodes["toy"].shape, vth=10, floor=-4)  # type: ignore[attr-defined]
    bad.vth = np.zeros((99,), np.int64)  # the step's broadcast fails
    g.nodes["toy"] = bad
    with pytest.raises(UnsupportedError, match="contract step of primitive 'floor_if' fails"):
        backend("lava").run(g, x)


def test_no_package_file_names_the_toy() -> None:
    root = Path(lnm_deploy.__file__).parent
    hits = [str(p.relative_to(root)) for p in root.rglob("*.py")
            if any(w in p.read_text() for w in (KIND, "FloorIF", "FxFloorIF"))]
    assert not hits


def test_lava_reports_a_step_that_fails_in_its_process_model(registered: None) -> None:
    """A step that passes the host check but raises inside Lava's process model is reported as an
    error naming the layer (the model catches it: raising there would hang Lava 0.10)."""
    _kinds_or_skip("lava")

    def fails_on_input(p: FloorParams, state: dict[str, Array], a: Array) -> tuple[dict[str, Array], Array]:
        if a.any():
            raise ArithmeticError("toy failure")
        return floor_step(p, state, a)

    g, x = recurrent_case(2)
    unregister(KIND)
    register(Primitive(KIND, FxFloorIF, FloorIFSpec, check_floor_if, bounds=floor_bounds,
                       params=FloorParams.of, step=fails_on_input))
    with pytest.raises(UnsupportedError, match=r"node 'toy'.*raised in Lava's process model.*toy failure"):
        backend("lava").run(g, np.ones_like(x))
