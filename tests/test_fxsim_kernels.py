"""The compiled fxsim kernels (numba) index only inside their arrays.

numba does not check indices unless asked; an out-of-range write corrupts memory silently (and
crashes later, far away). This runs random networks through every kernel path (record or not,
layer and step engines, LIF and polynomial neurons with and without a current, Dense on sparse
spikes) in a fresh interpreter with ``NUMBA_BOUNDSCHECK=1`` and an empty cache, so every kernel is
compiled with checks. Their results are compared with the numpy engine as well.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytest.importorskip("numba")

SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from fx_nets import random_dense_net, random_conv_net, spikes
    from lnm_deploy.fxsim import compare_runs, first_mismatch, run_fx

    runs = 0
    for seed in range(40):
        rng = np.random.default_rng(seed)
        g = random_conv_net(rng) if seed % 8 == 7 else random_dense_net(rng, max_width=40)
        x = spikes(rng, int(rng.integers(1, 4)), int(rng.integers(1, 9)), g.input_shape)
        ref = run_fx(g, x, record=True, kernels="numpy")
        for record in (True, False):
            for chunk in (None, 2):
                got = run_fx(g, x, record=record, chunk=chunk, kernels="numba")
                if record:
                    m = compare_runs(ref, got, order=g.neuron_names())
                else:
                    m = first_mismatch(ref.spikes, got.spikes, order=g.neuron_names())
                assert m is None, f"seed {{seed}}, record {{record}}, chunk {{chunk}}: {{m}}"
                runs += 1
    print("ok", runs)
    """
)


@pytest.mark.slow
def test_kernels_stay_in_bounds(tmp_path: Path) -> None:
    tests = str(Path(__file__).parent)
    env = {**os.environ, "NUMBA_BOUNDSCHECK": "1", "NUMBA_CACHE_DIR": str(tmp_path / "numba-cache")}
    proc = subprocess.run([sys.executable, "-c", SCRIPT.format(tests=tests)], env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.split()[-2:] == ["ok", "160"]
