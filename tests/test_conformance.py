"""Conformance suite: every registered primitive on every registered integer backend that
implements it, bit-exact against the big-integer oracle (``fx_oracle.py``).

The kinds come from the primitive registry, the backends (and their configurations: fxsim's numpy
engine and its numba kernels) from the backend registry, so a new primitive or backend is covered
without editing this file; a primitive without an example generator fails
``test_every_primitive_has_an_example``. A backend whose extra is not installed (lava-nc,
onnxruntime, numba) skips. Lava runs cost more, so it gets fewer cases per kind.
"""

from __future__ import annotations

import pytest
from conformance import EXAMPLES, backend_configs, check_backend, covered_kinds, random_case

from lnm_deploy.backends import backend
from lnm_deploy.errors import DependencyError

#: Random cases per (kind, backend); fewer for Lava, whose runs cost more (a compiled process network each).
CASES = {"lava": 3}
DEFAULT_CASES = 6


def test_every_primitive_has_an_example() -> None:
    missing = [k for k in covered_kinds() if k not in EXAMPLES]
    assert not missing, (f"primitive kinds {missing} have no example generator for the conformance suite: "
                         "add one with tests/conformance.py register_example(kind, rng -> (node, input_shape))")


def test_suite_covers_every_backend_and_kind() -> None:
    """The parametrisation below is the registries', not a hand-kept list."""
    from lnm_deploy.backends import integer_backends

    assert {b for b, _ in backend_configs()} == set(integer_backends())
    assert {"fxsim", "onnx", "lava"} <= set(integer_backends())
    assert {"dense", "conv2d", "lif", "poly", "flatten"} <= set(covered_kinds())


@pytest.mark.parametrize(("name", "config"), backend_configs(), ids=lambda v: str(v))
@pytest.mark.parametrize("kind", covered_kinds())
def test_primitive_matches_oracle(kind: str, name: str, config: str) -> None:
    b = backend(name)
    try:
        kinds = b.kinds() if b.kinds is not None else frozenset()
    except DependencyError as e:
        pytest.skip(str(e))
    if kind not in kinds:
        pytest.skip(f"backend {name!r} does not implement kind {kind!r}")
    for seed in range(CASES.get(name, DEFAULT_CASES)):
        graph, x = random_case(kind, seed)
        try:
            check_backend(b, config, graph, x, label=f"kind {kind!r}, case {seed}")
        except DependencyError as e:
            pytest.skip(str(e))
