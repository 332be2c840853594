"""Reports people read: calibration reports and verification pages (JSON, PNG, offline HTML)."""

from __future__ import annotations

import os
from pathlib import Path

#: The suffix of the calibration report directory that sits next to an artifact.
REPORT_SUFFIX = ".report"


def report_dir_for(artifact: str | os.PathLike[str]) -> Path:
    """The calibration report directory of the artifact at ``artifact``: next to it, named after it
    with ``.nir`` replaced by ``.report`` (``model.loihi2.nir`` -> ``model.loihi2.report``); a name
    without the ``.nir`` suffix gets ``.report`` appended (``model.h5`` -> ``model.h5.report``)."""
    path = Path(artifact)
    stem = path.name[: -len(".nir")] if path.name.lower().endswith(".nir") and len(path.name) > 4 else path.name
    return path.with_name(stem + REPORT_SUFFIX)
