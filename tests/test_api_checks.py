"""The Python API's run entry points check the network they are given (``validate.float_graph`` /
``validate.fx_graph``): a float ``Graph`` where an ``FxGraph`` is needed, an ``Artifact``, a
path, a ``nir.NIRGraph`` or None is a ``UserInputError`` naming the entry point, what it got and
the fix, never an ``AttributeError`` from deep inside (docs/security.md: the API refuses what the
CLI refuses). Every backend in ``BACKENDS`` is held to it, so a new backend is too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import nir
import numpy as np
import pytest

from lnm_deploy import validate
from lnm_deploy.artifact import Artifact, read_artifact, write_artifact
from lnm_deploy.backends import BACKENDS
from lnm_deploy.calibrate import CalibrationResult, calibrate_network
from lnm_deploy.errors import UserInputError
from lnm_deploy.execute import run_float
from lnm_deploy.fxsim import run_fx
from lnm_deploy.ir import Affine, Graph, Neuron, sequential

RNG = np.random.default_rng(11)


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Graph, CalibrationResult, Artifact, Path, Any]:
    g = sequential([("fc", Affine(weight=RNG.normal(0, 1.0, (3, 4)), bias=RNG.normal(0, 0.1, 3))),
                    ("lif", Neuron(shape=(3,), poly=[0.0, 0.9], v_th=0.5, dt=1e-3))], (4,))
    x = (RNG.random((4, 10, 4)) < 0.4).astype(np.uint8)
    res = calibrate_network(g, x, "loihi2", "default", progress=False)
    path = tmp_path_factory.mktemp("api") / "a.nir"
    write_artifact(res.artifact, path)
    return g, res, read_artifact(path), path, x


def wrong_for_integer(c: Any) -> dict[str, tuple[Any, str]]:
    """What is not an FxGraph, each with (a part of) the fix its message must give."""
    g, res, art, path, _ = c
    return {"a float Graph": (g, "calibrate it first"), "an Artifact": (art, "pass its .fx"),
            "a CalibrationResult": (res, "pass its .artifact.fx"), "a path": (str(path), "read_artifact"),
            "a nir.NIRGraph": (nir.NIRGraph(nodes={}, edges=[]), "calibrate it first"),
            "None": (None, "pass an artifact's .fx")}


def wrong_for_float(c: Any) -> dict[str, tuple[Any, str]]:
    """What is not a float Graph, each with (a part of) the fix its message must give."""
    _, res, art, path, _ = c
    return {"an FxGraph": (art.fx, "run_fx"), "an Artifact": (art, "pass its .graph"),
            "a CalibrationResult": (res, "pass its .artifact.graph"), "a path": (path, "lnm_deploy.load(path)"),
            "a nir.NIRGraph": (nir.NIRGraph(nodes={}, edges=[]), "lnm_deploy.load(nir_graph)"),
            "None": (None, "lnm_deploy.load(path)")}


def refused(fn: Any, entry: str, got: str, fix: str, needs: str) -> None:
    with pytest.raises(UserInputError) as e:
        fn()
    msg = str(e.value)
    assert msg.startswith(f"{entry} needs {needs}"), msg
    assert f"got {got}" in msg and fix in msg, msg
    assert e.value.exit_code == 2


def test_run_fx_names_what_it_got_and_the_fix(calibrated: Any) -> None:
    x = calibrated[4]
    for got, (value, fix) in wrong_for_integer(calibrated).items():
        refused(lambda v=value: run_fx(v, x), "run_fx", got, fix, "an FxGraph")
    assert run_fx(calibrated[2].fx, x).output.shape == (4, 10, 3)  # the right argument still runs


def test_run_float_names_what_it_got_and_the_fix(calibrated: Any) -> None:
    x = calibrated[4]
    for got, (value, fix) in wrong_for_float(calibrated).items():
        refused(lambda v=value: run_float(v, x), "run_float", got, fix, "a float IR Graph")
    assert run_float(calibrated[2].graph, x).output.shape == (4, 10, 3)


@pytest.mark.parametrize("name", sorted(BACKENDS))
def test_every_backend_checks_its_network(calibrated: Any, name: str) -> None:
    """Each registered backend refuses the other kind of network, an Artifact and None with a
    UserInputError before it imports anything optional (Lava, onnxruntime)."""
    x = calibrated[4]
    b = BACKENDS[name]
    wrong = wrong_for_integer(calibrated) if b.integer else wrong_for_float(calibrated)
    needs = "an FxGraph" if b.integer else "a float IR Graph"
    for got in ("a float Graph" if b.integer else "an FxGraph", "an Artifact", "None"):
        value, fix = wrong[got]
        with pytest.raises(UserInputError) as e:
            b.run(value, x)
        assert f"needs {needs}" in str(e.value) and f"got {got}" in str(e.value) and fix in str(e.value)


def test_onnx_and_lava_entry_points_check_their_network(calibrated: Any) -> None:
    from lnm_deploy.lava_backend import run_lava, run_lava_float, run_lava_timed
    from lnm_deploy.onnx_backend import build_onnx, run_onnx

    g, x = calibrated[0], calibrated[4]
    for entry, fn in {"run_lava": run_lava, "run_lava_float": run_lava_float, "run_lava_timed": run_lava_timed,
                      "run_onnx": run_onnx}.items():
        refused(lambda f=fn: f(g, x), entry, "a float Graph", "calibrate it first", "an FxGraph")
    refused(lambda: build_onnx(calibrated[2]), "build_onnx", "an Artifact", "pass its .fx", "an FxGraph")


def test_calibrate_network_says_what_it_got(calibrated: Any) -> None:
    art, x = calibrated[2], calibrated[4]
    refused(lambda: calibrate_network(art, x, "loihi2", "default", progress=False), "calibrate_network",
            "an Artifact", "pass its .graph", "a float IR Graph")
    refused(lambda: calibrate_network(art.fx, x, "loihi2", "default", progress=False), "calibrate_network",
            "an FxGraph", "run_fx", "a float IR Graph")


def test_the_checks_return_their_argument(calibrated: Any) -> None:
    g, _, art, _, _ = calibrated
    assert validate.float_graph(g, "f") is g and validate.ir_graph(g) is g
    assert validate.fx_graph(art.fx, "f") is art.fx
