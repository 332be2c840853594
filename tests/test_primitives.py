"""The integer primitive registry: every node kind defined once, unknown kinds refused loudly."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest

from lnm_deploy.errors import UnsupportedError
from lnm_deploy.fixedpoint import (
    FxDense,
    FxLIF,
    FxNeuron,
    FxNode,
    fx_node_types,
    fx_sequential,
    primitive,
    primitive_of,
    primitives,
)
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
            assert p.bounds is not None and p.spec_section is not None, kind
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
