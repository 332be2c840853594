"""Save and load trained ``LNMSequential`` models (``lnm-deploy export`` reads these files).

The file is a ``torch.save`` of the whole module (a pickle): load only files you trust.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from lnm_deploy.errors import UserInputError
from lnm_deploy.fileio import atomic_output
from lnm_deploy.model.layers import LNMSequential

FORMAT = "lnm-deploy.model"


def save_model(model: LNMSequential, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` to ``path`` atomically."""
    with atomic_output(path) as tmp:
        torch.save({"format": FORMAT, "version": 1, "model": model}, tmp)
    return Path(path)


def load_model(path: str | os.PathLike[str]) -> LNMSequential:
    """Read a model written by ``save_model``; ``UserInputError`` for anything else."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # pickle, zip or torch errors: name the file
        raise UserInputError(f"{path} is not a model file written by lnm_deploy.model.save_model "
                             f"({type(e).__name__}: {e})") from e
    if not isinstance(obj, dict) or obj.get("format") != FORMAT or not isinstance(obj.get("model"), LNMSequential):
        raise UserInputError(f"{path} is not a model file written by lnm_deploy.model.save_model")
    model: LNMSequential = obj["model"]
    model.eval()
    return model
