"""Shared test settings: hypothesis is derandomized under CI (CI=true) so runs are repeatable."""

import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", deadline=None)
# By hand: HYPOTHESIS_PROFILE=fuzz-long runs tests/test_fuzz.py with 50x its example budgets.
settings.register_profile("fuzz-long", deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev"))

# Lava calls multiprocessing.set_start_method('fork') when first imported and fails if a start
# method was chosen already (a tqdm progress bar's lock chooses one). lnm_deploy.lava_backend
# guards its own import; tests that import Lava directly rely on this early import.
try:
    import lava.magma.runtime.message_infrastructure.multiprocessing  # noqa: F401
except ImportError:  # Python != 3.10: the Lava tests skip
    pass


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """An empty directory for a test's outputs."""
    d = tmp_path / "work"
    d.mkdir()
    return d
