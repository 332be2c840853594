"""A float graph calibrated for loihi2 and written as the files the CLI and verify read (shared by
tests that need them: the float NIR, the artifact, calibration and test spikes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lnm_deploy.artifact import write_artifact
from lnm_deploy.calibrate import calibrate_network, load_recipe
from lnm_deploy.ir import Affine, Neuron, sequential
from lnm_deploy.nir_io import write_nir
from lnm_deploy.targets import load_target


def calibrated_files(d: Path, g: Any, *, samples: int, test: int, n_in: int = 12, steps: int = 24,
                     seed: int = 1) -> dict[str, Any]:
    """``g`` written to ``d/float.nir``; Bernoulli(0.35) spikes (``samples``, ``steps``, ``n_in``)
    and labels in 0..3 from ``seed``; ``calib.npz`` (x), ``test.npz`` (the first ``test`` samples,
    x and y); ``g`` calibrated for loihi2 (default recipe) on x and written to ``d/art.nir``."""
    write_nir(g, d / "float.nir")
    rng = np.random.default_rng(seed)
    x = (rng.random((samples, steps, n_in)) < 0.35).astype(np.uint8)
    y = rng.integers(0, 4, samples)
    np.savez(d / "calib.npz", x=x)
    np.savez(d / "test.npz", x=x[:test], y=y[:test])
    res = calibrate_network(g, x, load_target("loihi2"), load_recipe("default"), source=d / "float.nir",
                            progress=False)
    write_artifact(res.artifact, d / "art.nir")
    return {"dir": d, "graph": g, "x": x, "fx": res.artifact.fx, "float": d / "float.nir",
            "art": d / "art.nir", "test": d / "test.npz", "calib": d / "calib.npz"}


def two_layer_files(d: Path) -> tuple[Path, Path]:
    """A small float graph (input 6 -> fc1 -> lnm1 (12, degree 2) -> fc2 -> lnm2 (4)) written to
    ``d/g.nir``, and Bernoulli(0.4) spikes (6 samples, 20 steps) with labels in 0..3 to
    ``d/x.npz``: the inputs of the output tests. Returns both paths."""
    rng = np.random.default_rng(0)
    g = sequential(
        [
            ("fc1", Affine(weight=rng.normal(0, 1.0, (12, 6)), bias=rng.normal(0, 0.1, 12))),
            ("lnm1", Neuron(shape=(12,), poly=[0.0, 0.9, 0.05], v_th=1.0, dt=1e-3)),
            ("fc2", Affine(weight=rng.normal(0, 1.0, (4, 12)))),
            ("lnm2", Neuron(shape=(4,), poly=[0.0, 0.8], v_th=0.5, dt=1e-3)),
        ],
        (6,),
    )
    write_nir(g, d / "g.nir")
    rng = np.random.default_rng(1)
    np.savez(d / "x.npz", x=(rng.random((6, 20, 6)) < 0.4).astype(np.uint8), y=rng.integers(0, 4, 6))
    return d / "g.nir", d / "x.npz"
