"""A float graph calibrated for loihi2 and written as the files the CLI and verify read (shared by
tests that need them: the float NIR, the artifact, calibration and test spikes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from lnm_deploy.artifact import write_artifact
from lnm_deploy.calibrate import calibrate_network, load_recipe
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
