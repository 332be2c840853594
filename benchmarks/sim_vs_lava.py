"""Time fxsim, Lava 0.10 (Loihi2SimCfg fixed_pt) and a float PyTorch forward per sample-timestep.

One 100-256-256-10 LIF network (random 8-bit mixed-sign weights, Poisson input), T = 100,
64 samples. fxsim (with its compiled kernels when numba is installed, and with numpy alone) and
torch run all 64 samples batched, timed in alternating rounds (this machine is shared, so all see
the same load) and the best round of each is kept. Lava cannot batch: one compiled network runs
the samples one after the other, and its end-to-end time (build, compile, every step, read-back,
stop) is divided by samples * T. fxsim's spikes are checked bit-exact against Lava's on every
sample Lava ran (and its two kernel paths against each other) before any number is printed.

Usage: python benchmarks/sim_vs_lava.py [--lava-samples 64] [--repeats 7]
(fewer Lava samples run faster but weigh Lava's one-off compile more heavily).
The last line is ``ratio_vs_lava=<Lava time / fxsim time> ratio_vs_torch=<torch time / fxsim time>``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

SIZES = (100, 256, 256, 10)
T = 100
SAMPLES = 64
DU, DV, VTH = 4095, 410, 300  # u = a_in << 6 each step (no current memory), v leaks ~10 %/step


def build(seed: int = 0):  # type: ignore[no-untyped-def]
    from lnm_deploy.fixedpoint import FxDense, FxLIF, fx_sequential

    rng = np.random.default_rng(seed)
    layers = []
    for i in range(3):
        w = 2 * rng.integers(-64, 64, (SIZES[i + 1], SIZES[i]))  # even: exact mixed 8-bit weights
        layers += [(f"fc{i}", FxDense(weight=w)),
                   (f"lif{i}", FxLIF(shape=(SIZES[i + 1],), du=DU, dv=DV, vth=VTH))]
    g = fx_sequential(layers, (SIZES[0],), target="loihi2")
    x = (rng.random((SAMPLES, T, SIZES[0])) < 0.15).astype(np.uint8)
    return g, x


def best_interleaved(fns: list, repeats: int, clock=time.perf_counter) -> list[float]:  # type: ignore[type-arg, no-untyped-def]
    """Best time of each function over ``repeats`` rounds that run each once, in turn (``clock``:
    wall time by default; ``time.process_time`` counts this process's CPU time, all threads)."""
    for fn in fns:
        fn()  # warm-up
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            t0 = clock()
            fn()
            ts.append(clock() - t0)
    return [min(ts) for ts in times]


def torch_forward(g, x: np.ndarray):  # type: ignore[no-untyped-def]
    """Plain float32 torch loop over time: nn.Linear + the LIF update (the float model's shape)."""
    import torch

    torch.set_grad_enabled(False)
    lins = []
    for i in range(3):
        w = g.nodes[f"fc{i}"].weight
        lin = torch.nn.Linear(w.shape[1], w.shape[0], bias=False)
        lin.weight.copy_(torch.from_numpy(w.astype(np.float32) * 64))
        lins.append(lin)
    xt = torch.from_numpy(x.astype(np.float32))
    ku, kv, vth = (4096 - DU - 1) / 4096, (4096 - DV) / 4096, float(VTH << 6)

    def forward() -> torch.Tensor:
        b = xt.shape[0]
        u = [torch.zeros(b, n) for n in SIZES[1:]]
        v = [torch.zeros(b, n) for n in SIZES[1:]]
        out = []
        for t in range(xt.shape[1]):
            s = xt[:, t]
            for i, lin in enumerate(lins):
                u[i] = u[i] * ku + lin(s)
                v[i] = v[i] * kv + u[i]
                s = (v[i] > vth).float()
                v[i] = v[i] * (1.0 - s)
            out.append(s)
        return torch.stack(out, 1)

    return forward


def time_lava(g, x: np.ndarray, n: int, ref) -> tuple[float, float, object]:  # type: ignore[no-untyped-def]
    """(end-to-end seconds per sample: build, compile, run, read every layer, stop, with one
    compiled network for the ``n`` samples; stepping-only seconds per Lava step; the timings).
    Every spike of every layer of every timed sample is checked bit-exact against fxsim."""
    from lnm_deploy.fxsim import first_mismatch
    from lnm_deploy.lava_backend import run_lava_timed

    res, t = run_lava_timed(g, x[:n])
    m = first_mismatch({k: v[:n] for k, v in ref.spikes.items()}, res.spikes, order=g.neuron_names())
    if m is not None:
        raise SystemExit(f"fxsim and Lava differ, refusing to time: {m}")
    return t.total_s / n, t.step_s, t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lava-samples", type=int, default=SAMPLES)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args()

    from lnm_deploy.fxsim import compare_runs, run_fx
    from lnm_deploy.fxsim.sim import load_kernels

    kernels = "numba" if load_kernels("auto") is not None else "numpy"
    g, x = build()
    t0 = time.perf_counter()
    ref = run_fx(g, x, record=True)
    first = time.perf_counter() - t0
    rates = {k: round(float(v.mean()), 3) for k, v in ref.spikes.items()}
    print(f"network {'-'.join(map(str, SIZES))} LIF, T={T}, samples={SAMPLES}, spike rates {rates}")
    m = compare_runs(ref, run_fx(g, x, record=True, kernels="numpy"), order=g.neuron_names())
    if m is not None:
        raise SystemExit(f"fxsim's {kernels} and numpy kernels differ, refusing to time: {m}")

    fns = [lambda: run_fx(g, x), torch_forward(g, x), lambda: run_fx(g, x, kernels="numpy")]
    fx, th, fx_np = (t / (SAMPLES * T) for t in best_interleaved(fns, args.repeats))
    print(f"fxsim  : {fx * 1e6:9.3f} us per sample-timestep ({SAMPLES} samples batched, {kernels} kernels; "
          f"the first run, compiling or loading them, took {first:.2f} s)")
    print(f"fxsim  : {fx_np * 1e6:9.3f} us per sample-timestep (numpy only, same integers)")
    print(f"torch  : {th * 1e6:9.3f} us per sample-timestep (float32, {SAMPLES} samples batched)")
    e2e, step, t = time_lava(g, x, args.lava_samples, ref)
    lava = e2e / T
    print(f"lava   : {lava * 1e6:9.3f} us per sample-timestep, end to end (build + compile + {T}+3 "
          f"steps per sample + read every layer + stop; one compiled network runs the "
          f"{args.lava_samples} of {SAMPLES} samples one after the other, scaled per sample-timestep; "
          f"spikes bit-exact with fxsim; compile {t.compile_s:.2f} s)")  # type: ignore[attr-defined]
    print(f"lava   : {step * 1e6:9.3f} us per sample-timestep, stepping only (compile excluded); "
          f"ratio_vs_lava_stepping_only={step / fx:.0f}")
    print(f"ratio_vs_lava={lava / fx:.0f} ratio_vs_torch={th / fx:.2f}")


if __name__ == "__main__":
    main()
