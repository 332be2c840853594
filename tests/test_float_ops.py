"""Every IR node kind owns its float behaviour and its NIR mapping (registries, not ladders)."""

from __future__ import annotations

import numpy as np
import pytest

from lnm_deploy.errors import GraphError, UnsupportedError
from lnm_deploy.execute import run_float
from lnm_deploy.ir import (
    Affine,
    FloatStep,
    Graph,
    Input,
    Neuron,
    Output,
    node_type,
    node_types,
    sequential,
)
from lnm_deploy.nir_io import registry
from lnm_deploy.verify import replay_neuron

# One instance of every kind, with the input shape it takes: the registry tests below run over
# node_types(), so a kind added without an example here (or without a step / NIR mapping) fails.
EXAMPLES = {
    "input": (lambda: Input(shape=(2, 4, 4)), None),
    "output": (lambda: Output(), (2, 4, 4)),
    "affine": (lambda: Affine(weight=np.ones((3, 4)), bias=np.zeros(3)), (4,)),
    "scale": (lambda: node_type("scale")(scale=np.full((2, 4, 4), 0.5)), (2, 4, 4)),
    "conv2d": (lambda: node_type("conv2d")(weight=np.ones((3, 2, 3, 3))), (2, 4, 4)),
    "sumpool2d": (lambda: node_type("sumpool2d")(kernel_size=2), (2, 4, 4)),
    "avgpool2d": (lambda: node_type("avgpool2d")(kernel_size=2), (2, 4, 4)),
    "flatten": (lambda: node_type("flatten")(), (2, 4, 4)),
    "threshold": (lambda: node_type("threshold")(v_th=np.full((2, 4, 4), 0.5)), (2, 4, 4)),
    "neuron": (lambda: Neuron(shape=(2, 4, 4), poly=[0.0, 0.9], v_th=1.0, syn_decay=0.5), (2, 4, 4)),
    "adaptive_neuron": (lambda: node_type("adaptive_neuron")(shape=(2, 4, 4), poly=[0.0, 0.9], v_th=1.0,
                                                             syn_decay=0.5, theta_decay=0.9, theta_step=0.3),
                        (2, 4, 4)),
}


def _package_kinds() -> list[str]:
    """The package's own kinds (a test file may define more, e.g. tests/test_extension.py)."""
    return sorted(k for k, cls in node_types().items() if cls.__module__.startswith("lnm_deploy."))


def test_every_kind_has_an_example() -> None:
    assert set(EXAMPLES) == set(_package_kinds())


@pytest.mark.parametrize("kind", _package_kinds())
def test_every_kind_has_a_float_step_and_states(kind: str) -> None:
    make, in_shape = EXAMPLES[kind]
    node = make()
    assert type(node) is node_type(kind)
    node.validate(kind)
    out_shape = node.output_shape(kind, in_shape)
    step = node.float_step(kind, 3, np.float64)
    assert isinstance(step, FloatStep)
    assert step.state_names == node.state_names
    assert node.stateful == bool(node.state_names)
    x = np.random.default_rng(0).normal(size=(3, *(in_shape or node.output_shape(kind, None))))
    y = step(x)
    assert y.shape == (3, *out_shape)
    for s in node.state_names:
        assert step.state(s).shape[0] == 3
    if node.emits_spikes:
        assert set(np.unique(y)) <= {0.0, 1.0}
    assert isinstance(node.describe(), dict)


@pytest.mark.parametrize("kind", _package_kinds())
def test_every_kind_has_a_nir_reader_and_writer(kind: str) -> None:
    assert kind in registry.WRITERS
    assert kind in {r.kind for r in registry.READERS.values()} | set(registry.EXACT_READERS)


def test_neuron_state_names_follow_the_synapse() -> None:
    assert Neuron(shape=(2,), poly=[0.0, 1.0], v_th=1.0).state_names == ("v", "v_pre")
    assert Neuron(shape=(2,), poly=[0.0, 1.0], v_th=1.0, syn_decay=0.5).state_names == ("v", "v_pre", "c")
    assert not Neuron(shape=(2,), poly=[0.0, 1.0], v_th=None).emits_spikes


def test_unknown_kinds_list_the_known_ones() -> None:
    with pytest.raises(UnsupportedError, match=r"unknown IR node kind 'maxpool2d'.*affine.*neuron"):
        node_type("maxpool2d")
    with pytest.raises(UnsupportedError, match=r"MaxPool2d is not supported; lnm-deploy reads .*Affine.*LIF"):
        registry.reader("MaxPool2d")
    with pytest.raises(GraphError, match=r"no NIR mapping for IR node kind 'maxpool2d'.*affine"):
        registry.writer("maxpool2d")


def test_a_kind_without_float_semantics_is_refused_by_the_executor() -> None:
    from lnm_deploy.ir.nodes import Node

    class Opaque(Node):  # a throwaway kind, removed below
        kind = "opaque_test_kind"

    g = Graph(nodes={"in": Input(shape=(2,)), "o": Opaque(), "out": Output()}, edges=[("in", "o"), ("o", "out")])
    with pytest.raises(UnsupportedError, match=r"opaque_test_kind.*no float step") as err:
        run_float(g, np.zeros((1, 2, 2)))
    del g, err, Opaque  # leave the registry as it was for the other tests
    import gc

    gc.collect()
    assert "opaque_test_kind" not in node_types()


@pytest.mark.parametrize("reset", ["value", "subtract"])
@pytest.mark.parametrize("synapse", [False, True])
def test_verify_replay_is_the_executor_bit_for_bit(reset: str, synapse: bool) -> None:
    rng = np.random.default_rng(1)
    n_in, n = 6, 5
    # Dyadic weights on 0/1 spikes: every synapse sum is exact whatever the summation order, so the
    # neuron sees the same input in both; then only the neuron step decides the trace.
    w = rng.integers(-8, 9, size=(n, n_in)) / 8.0
    g = sequential([
        ("fc", Affine(weight=w, bias=rng.integers(-4, 5, size=n) / 16.0)),
        ("lnm", Neuron(shape=(n,), poly=[0.01, 0.83, 0.07, -0.02], v_th=0.6, v_reset=0.1, reset=reset,
                       in_gain=rng.uniform(0.5, 1.5, n), syn_decay=rng.uniform(0.3, 0.9, n) if synapse else None,
                       syn_gain=rng.uniform(0.5, 1.5, n) if synapse else None)),
    ], input_shape=(n_in,))
    x = (rng.random((3, 40, n_in)) < 0.4).astype(np.float64)
    ref = run_float(g, x, record=True)
    spikes = {**ref.spikes, g.input_name: x}
    for sample in range(3):
        for flat in range(n):
            tr = replay_neuron(g, g, "lnm", flat, sample, 39, spikes, set())
            assert np.array_equal(tr["v"], ref.states["lnm"]["v"][sample, :, flat])
            assert np.array_equal(tr["v_pre"], ref.states["lnm"]["v_pre"][sample, :, flat])
            assert np.array_equal(tr["s"], ref.spikes["lnm"][sample, :, flat])
    assert ref.spikes["lnm"].any() and not ref.spikes["lnm"].all()
