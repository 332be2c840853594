"""``verify --backend lava`` on the demo's digits artifact with 1 and with N workers, side by side.

The artifact is the demo's (``lnm_deploy.demo``: the degree-2 LNM digits network trained, exported,
calibrated for loihi2 with the 'agreement' recipe); ``--demo-out DIR`` reuses a demo directory
(``model.loihi2.nir``, ``test.npz``), else the demo's steps run once into a temporary directory
(training takes about 15 s on 2 cores). Each configuration is the full ``verify`` call (float,
fxsim, Lava on every sample and the comparison), timed end to end, Ray's start-up and shut-down
included; the reports must be identical (every field but the timings) before anything is printed.

Also printed: the load average when it starts (the machine may be shared) and how many cores the
1-worker run kept busy (Lava runs one OS process per Lava process: a single run already uses more
than one core, which bounds what a second worker can add on 2 cores).

Usage: python benchmarks/verify_workers.py [--demo-out DIR] [--samples 360] [--workers 2]
       [--engine ray|local|both]
The last line is ``ratio=<wall N workers / wall 1 worker> ...`` (target <= 0.85 with 2 workers on
2 cores).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path
from typing import Any


def artifact(demo_out: str | None) -> tuple[Path, Path]:
    from lnm_deploy.demo import TEST_FILE, run_demo

    if demo_out:
        d = Path(demo_out)
    else:
        d = Path(tempfile.mkdtemp(prefix="lnm-verify-bench-"))
        t0 = time.perf_counter()
        run_demo(d, verify_backends=(), progress=False, log=lambda m: print(f"  demo: {m}"))
        print(f"built the demo artifact in {time.perf_counter() - t0:.1f} s ({d})")
    art, test = d / "model.loihi2.nir", d / TEST_FILE
    if not art.is_file() or not test.is_file():
        raise SystemExit(f"{d} has no model.loihi2.nir / {TEST_FILE}: run 'lnm-deploy demo --out {d}'")
    return art, test


def strip(doc: dict[str, Any]) -> dict[str, Any]:
    doc = json.loads(json.dumps(doc, default=str))
    for b in doc["backends"].values():
        b.pop("seconds")
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--demo-out", default=None, help="reuse this demo output directory")
    ap.add_argument("--samples", type=int, default=360, help="test samples to verify (default 360: all)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--engine", choices=["ray", "local", "both"], default="both",
                    help="ray: a local Ray instance; local: forked processes (as without Ray)")
    args = ap.parse_args()

    from lnm_deploy import distributed
    from lnm_deploy.artifact import read_artifact
    from lnm_deploy.fileio import read_dataset
    from lnm_deploy.verify import verify

    art_path, test_path = artifact(args.demo_out)
    art = read_artifact(art_path)
    x, y = read_dataset(test_path)
    x, y = x[: args.samples], None if y is None else y[: args.samples]
    n = x.shape[0]
    print(f"verify --backend lava on {art_path.name}: {n} samples x {x.shape[1]} steps")

    def cpu() -> float:
        return sum(r.ru_utime + r.ru_stime for r in (resource.getrusage(resource.RUSAGE_SELF),
                                                      resource.getrusage(resource.RUSAGE_CHILDREN)))

    def timed(workers: int, engine: str = "auto") -> tuple[float, dict[str, Any]]:
        t0 = time.perf_counter()
        res = verify(art, x, y, backends=("lava",), workers=workers, engine=engine, progress=False)
        return time.perf_counter() - t0, res.to_dict()

    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")

    engines = ["ray", "local"] if args.engine == "both" else [args.engine]
    c0 = cpu()
    wall1, doc1 = timed(1)
    cores = (cpu() - c0) / wall1
    print(f"  workers=1            wall {wall1:7.2f} s  lava {doc1['backends']['lava']['seconds']:6.2f} s  "
          f"{n / wall1:6.2f} samples/s/worker  ({cores:.2f} cores busy)")
    line = []
    for engine in engines:
        if engine == "ray" and distributed._ray_module() is None:
            print("  (ray is not installed: skipping the Ray engine)")
            continue
        wall, doc = timed(args.workers, engine)
        if strip(doc) != strip(doc1):
            raise SystemExit(f"the {engine} report with {args.workers} workers differs from the 1-worker one")
        ratio = wall / wall1
        print(f"  workers={args.workers} ({engine:<5})  wall {wall:7.2f} s  lava {doc['backends']['lava']['seconds']:6.2f} s"
              f"  {n / wall / args.workers:6.2f} samples/s/worker  ratio {ratio:.3f}  reports identical")
        line.append(f"ratio_{engine}={ratio:.3f}")
    print(f"bit_exact={doc1['backends']['lava']['bit_exact']} cores_one_worker={cores:.2f} " + " ".join(line))


if __name__ == "__main__":
    main()
