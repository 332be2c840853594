"""The machinery of the conformance suite (``test_conformance.py``): example generators per
primitive kind, the network built around an example, and the bit-exact check of a backend's run
against the big-integer oracle (``fx_oracle.py``).

Both lists the suite runs over are derived from registries: the primitives from
``lnm_deploy.fixedpoint.primitives.primitives()`` (every neuron, synapse and reshape kind), the
backends from ``lnm_deploy.backends.integer_backends()`` (each of a backend's ``configs``: fxsim's
numpy engine and its numba kernels are two). A test file that defines its own primitive registers
an example generator here (``register_example``; ``unregister_example`` when done) and the
oracle of its step (``fx_oracle.register_oracle``); ``check_backend`` then runs it on every
backend that implements it (``tests/test_extension.py`` does).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np
from fx_nets import adaptive, atrlif, chain, dense, lif, poly, spikes
from fx_oracle import as_arrays, oracle

from lnm_deploy.backends import Backend, integer_backends
from lnm_deploy.fixedpoint import FxConv2d, FxDense, FxFlatten, FxGraph, FxNode
from lnm_deploy.fixedpoint.primitives import output_state, primitives
from lnm_deploy.fxsim import first_mismatch

Shape = tuple[int, ...]
#: An example of one primitive: the node and the shape it reads (a neuron: its own shape).
Example = tuple[FxNode, Shape]
#: Example generators by primitive kind: ``rng -> (node, input shape)``; small and random.
EXAMPLES: dict[str, Callable[[np.random.Generator], Example]] = {}
#: The roles whose kinds the suite covers (input and output are part of every network).
ROLES = ("neuron", "synapse", "reshape")


def register_example(kind: str, generator: Callable[[np.random.Generator], Example]) -> None:
    """Add the example generator of ``kind`` (a new kind; ``ValueError`` for a second one)."""
    if kind in EXAMPLES:
        raise ValueError(f"kind {kind!r} already has an example generator")
    EXAMPLES[kind] = generator


def unregister_example(kind: str) -> None:
    """Remove the example generator of ``kind`` (a test's own primitive, when the test is done)."""
    if kind in _BUILTIN:
        raise ValueError(f"the example of {kind!r} is part of the suite")
    EXAMPLES.pop(kind, None)


def covered_kinds() -> list[str]:
    """Every registered primitive kind the suite must cover (neurons, synapses, reshapes)."""
    return sorted(k for k, p in primitives().items() if p.role in ROLES)


def backend_configs() -> list[tuple[str, str]]:
    """Every (integer backend, configuration) pair of the backend registry."""
    return [(name, cfg) for name, b in integer_backends().items() for cfg in b.configs]


def _image(rng: np.random.Generator) -> Shape:
    return (int(rng.integers(1, 3)), int(rng.integers(2, 6)), int(rng.integers(2, 6)))


def _conv(rng: np.random.Generator) -> Example:
    shape = _image(rng)
    c_out = int(rng.integers(1, 4))
    kh, kw = int(rng.integers(1, min(3, shape[1]) + 1)), int(rng.integers(1, min(3, shape[2]) + 1))
    node = FxConv2d(weight=rng.integers(-256, 256, (c_out, shape[0], kh, kw)),
                    stride=(int(rng.integers(1, 3)), int(rng.integers(1, 3))),
                    padding=(int(rng.integers(0, 2)), int(rng.integers(0, 2))))
    return node, shape


def _dense(rng: np.random.Generator) -> Example:
    n_in = int(rng.integers(1, 9))
    return dense(rng, int(rng.integers(1, 9)), n_in), (n_in,)


def _neuron(make: Callable[[np.random.Generator, Shape], FxNode]) -> Callable[[np.random.Generator], Example]:
    def gen(rng: np.random.Generator) -> Example:
        shape = (int(rng.integers(1, 9)),)
        return make(rng, shape), shape

    return gen


def _with_c_bias(gen: Callable[[np.random.Generator], Example]) -> Callable[[np.random.Generator], Example]:
    """One example in two of a programmable neuron carries a current-bias register (``c_bias``):
    small values mostly, its range edges ``+-(2**(S-1) - 1)`` on some neurons."""

    def wrapped(rng: np.random.Generator) -> Example:
        node, shape = gen(rng)
        if rng.random() < 0.5:
            return node, shape
        sm = 2 ** (node.state_bits - 1) - 1  # type: ignore[attr-defined]
        cb = rng.integers(-min(3000, sm), min(3000, sm) + 1, node.shape)  # type: ignore[attr-defined]
        edge = rng.random(cb.shape) < 0.25
        cb[edge] = sm * rng.choice([-1, 1], cb.shape)[edge]
        return dataclasses.replace(node, c_bias=cb), shape

    return wrapped


register_example("dense", _dense)
register_example("conv2d", _conv)
register_example("flatten", lambda rng: (FxFlatten(), _image(rng)))
register_example("lif", _neuron(lif))
register_example("poly", _with_c_bias(_neuron(poly)))
register_example("adaptive_poly", _with_c_bias(_neuron(adaptive)))


def _li_readout(rng: np.random.Generator, shape: Shape) -> FxNode:
    """A random non-spiking readout: a random stock LIF's decays, bias and (edge) initial states."""
    from lnm_deploy.li_readout import FxLIReadout

    b = lif(rng, shape)
    return FxLIReadout(shape=shape, du=b.du, dv=b.dv, bias_mant=b.bias_mant, bias_exp=b.bias_exp,
                       u_init=b.u_init, v_init=b.v_init)


register_example("li_readout", _neuron(_li_readout))
register_example("atrlif", _neuron(atrlif))
_BUILTIN = frozenset(EXAMPLES)


def network(kind: str, rng: np.random.Generator) -> FxGraph:
    """A small random network around an example of ``kind``: a synapse reads the input and drives
    a stock LIF; a reshape feeds a Dense; a neuron is driven by a Dense (a 1-x1 convolution for
    an image-shaped neuron) and, one time in two, also by a recurrent Dense self-loop."""
    if kind not in EXAMPLES:
        raise KeyError(f"primitive kind {kind!r} has no example generator for the conformance suite; "
                       f"add one with tests/conformance.py register_example({kind!r}, rng -> (node, input_shape))")
    node, in_shape = EXAMPLES[kind](rng)
    out_shape = node.output_shape(kind, in_shape)
    nodes: list[tuple[str, FxNode]] = []
    rec: dict[str, FxDense] = {}
    if node.role == "neuron":
        if len(out_shape) == 1:
            n_in = int(rng.integers(1, 9))
            driver: FxNode = dense(rng, out_shape[0], n_in)
            in_shape = (n_in,)
            if rng.random() < 0.5:
                rec[kind] = dense(rng, out_shape[0], out_shape[0])
        else:
            driver = FxConv2d(weight=rng.integers(-256, 256, (out_shape[0], 1, 1, 1)))
            in_shape = (1, *out_shape[1:])
        nodes = [("driver", driver), (kind, node)]
    elif node.role == "synapse":
        nodes = [(kind, node), ("lif", lif(rng, out_shape, edges=False))]
    else:
        n = int(rng.integers(1, 6))
        nodes = [(kind, node), ("fc", dense(rng, n, int(np.prod(out_shape)), wild=False, sign_modes=False)),
                 ("lif", lif(rng, (n,), edges=False))]
    return chain(nodes, in_shape, rec)


def check_backend(b: Backend, config: str, graph: FxGraph, x: np.ndarray, label: str = "") -> None:
    """Run ``graph`` on ``x`` with backend ``b`` (its ``configs[config]`` options, recording
    states) and assert its spikes and states equal the oracle's (``np.array_equal``); the message
    names the first mismatching layer, timestep, sample and neuron."""
    batch, steps = x.shape[:2]
    o_spk, o_sts = as_arrays(graph, *oracle(graph, x), batch, steps)
    options: dict[str, Any] = dict(b.configs[config])
    res = b.run(graph, x, record=True, progress=False, **options)
    # A non-spiking readout (Primitive.output_state) has no spike output: its states are compared.
    order = [n for n in graph.neuron_names() if output_state(graph.nodes[n], n) is None]
    where = f"[{b.name} {config}]{' ' + label if label else ''}"
    m = first_mismatch({n: o_spk[n] for n in order}, res.spikes, order=order)
    assert m is None, f"{where} spikes differ from the oracle: {m}"
    for layer in graph.neuron_names():
        for k, want in o_sts.get(layer, {}).items():
            got = res.states[layer][k]
            assert np.array_equal(want, got), f"{where} {first_mismatch({k: want}, {k: got}, quantity=f'{layer} state')}"
    sched = graph.schedule()
    src = sched.inputs[sched.output_node][0][0]
    graded = output_state(graph.nodes[src], src)
    want_out = o_spk[src] if graded is None else o_sts[src][graded]
    assert np.array_equal(res.output, want_out), f"{where} output differs from layer {src!r}'s " + (
        "spikes" if graded is None else graded)


def random_case(kind: str, seed: int) -> tuple[FxGraph, np.ndarray]:
    """The network and spikes of case ``seed`` of ``kind`` (stable across runs and machines)."""
    rng = np.random.default_rng([seed, *kind.encode()])
    g = network(kind, rng)
    return g, spikes(rng, int(rng.integers(1, 3)), int(rng.integers(1, 8)), g.input_shape)


# ------------------------------------------------------------- graded spikes (fixed-point.md 5.2)


def graded_poly(rng: np.random.Generator, shape: Shape, *, graded: bool = True) -> FxNode:
    """A random polynomial neuron with the rules of section 5.2: a random spike test, a payload
    cap in {2, 3, 7, 255} (graded; 1 with ``graded=False``), a small threshold (``vth >= 1``, so
    that counts above 1 are common) and, one time in two, a membrane floor."""
    import dataclasses

    from lnm_deploy.fixedpoint import FxPoly

    p = poly(rng, shape)
    n = int(np.prod(shape))
    sm = 2 ** (p.state_bits - 1) - 1
    fields = {f.name: getattr(p, f.name) for f in dataclasses.fields(FxPoly) if f.name != "metadata"}
    fields.update(threshold=str(rng.choice([">", ">="])),
                  max_payload=int(rng.choice([2, 3, 7, 255])) if graded else 1,
                  vth=rng.integers(1, 400, n).reshape(shape),
                  v_floor=None if rng.random() < 0.5 else rng.integers(-min(sm, 3000), 200, n).reshape(shape))
    return FxPoly(**fields)


def graded_network(rng: np.random.Generator, *, conv: bool) -> FxGraph:
    """input -> synapse -> graded polynomial layer -> synapse fed by it -> a spiking layer (a
    graded polynomial neuron or a stock LIF): Dense layers (``conv=False``; one time in two a
    recurrent self-loop on the graded layer) or Conv2d layers with a Flatten and a Dense after."""
    from fx_nets import weights

    rec: dict[str, FxDense] = {}
    if not conv:
        n_in, n1, n2 = (int(rng.integers(1, 9)) for _ in range(3))
        nodes: list[tuple[str, FxNode]] = [
            ("fc1", FxDense(weight=weights(rng, (n1, n_in), wild=False), weight_exp=int(rng.integers(0, 8)))),
            ("g1", graded_poly(rng, (n1,))),
            ("fc2", dense(rng, n2, n1)),
            ("out", graded_poly(rng, (n2,), graded=rng.random() < 0.5) if rng.random() < 0.7 else lif(rng, (n2,))),
        ]
        if rng.random() < 0.5:
            rec["g1"] = dense(rng, n1, n1, wild=False)
        return chain(nodes, (n_in,), rec)
    shape = _image(rng)
    c1 = int(rng.integers(1, 4))
    conv1 = FxConv2d(weight=rng.integers(-256, 256, (c1, shape[0], 2, 2)), padding=(1, 1))
    s1 = conv1.output_shape("conv1", shape)
    conv2 = FxConv2d(weight=rng.integers(-256, 256, (2, c1, 2, 2)), stride=(1, 2))
    s2 = conv2.output_shape("conv2", s1)
    n_out = int(rng.integers(1, 5))
    nodes = [("conv1", conv1), ("g1", graded_poly(rng, s1)), ("conv2", conv2), ("g2", graded_poly(rng, s2)),
             ("flat", FxFlatten()), ("fc", dense(rng, n_out, int(np.prod(s2)), wild=False)),
             ("out", lif(rng, (n_out,), edges=False))]
    return chain(nodes, shape, rec)


def graded_case(seed: int, *, conv: bool) -> tuple[FxGraph, np.ndarray]:
    """The graded network and spikes of case ``seed`` (stable across runs and machines)."""
    rng = np.random.default_rng([seed, 16, int(conv)])
    g = graded_network(rng, conv=conv)
    return g, spikes(rng, int(rng.integers(1, 3)), int(rng.integers(2, 9)), g.input_shape)
