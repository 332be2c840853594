"""Time onnxruntime (the exported integer ONNX model) against fxsim per sample-timestep.

The network of ``sim_vs_lava.py``: 100-256-256-10 (random 8-bit mixed-sign weights, Poisson input),
T = 100, 64 samples, both run batched. ``--neuron lif`` (stock Loihi LIF, the default) or
``poly`` (a quadratic LNM neuron with a synaptic current, nearest rounding); ``--recurrent`` adds
a self-recurrent Dense to each hidden layer (fxsim then runs its step engine). The spikes of every
layer are checked bit-exact before any number is printed. Model building and session creation
are timed once and reported apart; the ratio is of ``session.run`` against ``run_fx``.

Usage: python benchmarks/onnx_vs_fxsim.py [--neuron lif|poly] [--recurrent] [--repeats 5]
The last line is ``ratio_onnx_vs_fxsim=<onnx time / fxsim time>``.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

import numpy as np

SIZES = (100, 256, 256, 10)
T = 100
SAMPLES = 64


def build(neuron: str, recurrent: bool, seed: int = 0) -> tuple[Any, np.ndarray]:
    from lnm_deploy.fixedpoint import FxDense, FxGraph, FxInput, FxLIF, FxOutput, FxPoly

    rng = np.random.default_rng(seed)
    nodes: dict[str, Any] = {"input": FxInput(shape=(SIZES[0],))}
    edges: list[tuple[str, str]] = []
    prev = "input"
    for i in range(3):
        n = SIZES[i + 1]
        w = 2 * rng.integers(-64, 64, (n, SIZES[i]))  # even: exact mixed 8-bit weights
        if neuron == "lif":
            cell: Any = FxLIF(shape=(n,), du=4095, dv=410, vth=300)
        else:  # v' = 0.885 v - 0.005 v^2 / 2^12 + c, c decays by 7 %/step
            cell = FxPoly(shape=(n,), coef=np.array([0, 29000, -20]), shifts=(15, 12), vth=300 * 64,
                          in_shift=6, syn_decay=300, rounding="nearest")
        nodes[f"fc{i}"], nodes[f"n{i}"] = FxDense(weight=w), cell
        edges += [(prev, f"fc{i}"), (f"fc{i}", f"n{i}")]
        if recurrent and i < 2:
            nodes[f"rec{i}"] = FxDense(weight=2 * rng.integers(-16, 16, (n, n)))
            edges += [(f"n{i}", f"rec{i}"), (f"rec{i}", f"n{i}")]
        prev = f"n{i}"
    nodes["output"] = FxOutput()
    edges.append((prev, "output"))
    x = (rng.random((SAMPLES, T, SIZES[0])) < 0.15).astype(np.uint8)
    return FxGraph(nodes=nodes, edges=edges, target="loihi2"), x


def best(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--neuron", choices=["lif", "poly"], default="lif")
    ap.add_argument("--recurrent", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    import onnxruntime

    from lnm_deploy.fxsim import compare_runs, run_fx
    from lnm_deploy.onnx_backend import build_onnx, onnx_session, run_onnx_model

    g, x = build(args.neuron, args.recurrent)
    t0 = time.perf_counter()
    model = build_onnx(g, states=False)
    t_build = time.perf_counter() - t0
    t0 = time.perf_counter()
    sess = onnx_session(model)
    t_sess = time.perf_counter() - t0
    ref = run_fx(g, x)
    m = compare_runs(ref, run_onnx_model(sess, x))
    if m is not None:
        raise SystemExit(f"ONNX model is not bit-exact with fxsim: {m}")
    n_spikes = sum(int(s.sum()) for s in ref.spikes.values())

    feeds = {"input": x}
    t_onnx = best(lambda: sess.run(None, feeds), args.repeats)
    t_fx = best(lambda: run_fx(g, x), args.repeats)
    per = SAMPLES * T
    print(f"network {'-'.join(map(str, SIZES))} {args.neuron}{' recurrent' if args.recurrent else ''}, "
          f"T={T}, {SAMPLES} samples, {n_spikes} spikes; bit-exact: yes")
    print(f"onnxruntime {onnxruntime.__version__}: model {len(model.SerializeToString()) / 1e6:.2f} MB, "
          f"build {t_build * 1e3:.0f} ms, session {t_sess * 1e3:.0f} ms")
    print(f"fxsim       {t_fx * 1e3:8.1f} ms  {t_fx / per * 1e6:7.2f} us per sample-timestep")
    print(f"onnxruntime {t_onnx * 1e3:8.1f} ms  {t_onnx / per * 1e6:7.2f} us per sample-timestep")
    print(f"ratio_onnx_vs_fxsim={t_onnx / t_fx:.3f}")


if __name__ == "__main__":
    main()
