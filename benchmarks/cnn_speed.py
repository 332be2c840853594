"""Time fxsim on a calibrated VGG-style LNM network against the same network's float forward in
torch and against Lava 0.10 (``Loihi2SimCfg(select_tag='fixed_pt')``), per sample-timestep.

The network is ``calibrate_vgg.build`` (input 3x32x32 -> three blocks of Conv2d(3x3) + LNM and
SumPool2d(2) + LNM -> Linear + LNM (10)), calibrated for ``loihi2`` with the ``default`` recipe,
at T = 4 and T = 8 with 16 samples of Bernoulli(0.2) input spikes. Timed side by side in
alternating rounds (the machine is shared; the best round of each is kept):

* fxsim: ``run_fx`` on the calibrated integer network, all samples batched (compiled kernels when
  numba is installed: event-driven Conv2d / Dense, the polynomial neuron);
* torch: the float graph's forward in float32, batched, written with torch ops (``conv2d``,
  ``avg_pool2d`` x 4 for the sum pooling, ``linear``, the polynomial by Horner, the threshold and
  reset of ``lnm_deploy.ir.ops.NeuronStep``); its spikes are compared with lnm-deploy's float64
  executor (float32 against float64: agreement near 1, printed);
* Lava: ``run_lava_timed`` on ``--lava-samples`` samples (Lava cannot batch; build, compile, every
  step, read-back and stop, divided by samples * T), checked bit-exact against fxsim first.

Usage: python benchmarks/cnn_speed.py [--repeats 5] [--lava-samples 1] [--no-lava]
The last line per T is ``T=<T> ratio_torch_vs_fxsim=<torch / fxsim> ratio_lava_vs_fxsim=<Lava / fxsim>``
(issue #14: fxsim at least as fast as torch, at least 1000x faster than Lava).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from calibrate_vgg import SAMPLES, SHAPE, build  # the benchmark's network


def best_interleaved(fns: list, repeats: int) -> list[float]:  # type: ignore[type-arg]
    """Best wall time of each function over ``repeats`` rounds that run each once, in turn."""
    for fn in fns:
        fn()  # warm-up (numba's compile cache, torch's first-call set-up)
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times, strict=True):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
    return [min(ts) for ts in times]


def torch_forward(graph, x: np.ndarray):  # type: ignore[no-untyped-def]
    """The float graph's forward in float32 torch ops, batched; returns ``forward() -> {layer: spikes}``."""
    import torch
    import torch.nn.functional as F

    from lnm_deploy.ir import Affine, Conv2d, Flatten, Neuron, SumPool2d

    torch.set_grad_enabled(False)
    sched = graph.schedule()

    def t32(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    ops: list = []  # (name, kind, params)
    for name in sched.order:
        node = graph.nodes[name]
        if isinstance(node, Conv2d):
            ops.append((name, "conv", (t32(node.weight), None if node.bias is None else t32(node.bias),
                                       tuple(node.stride), tuple(node.padding))))
        elif isinstance(node, SumPool2d):
            ops.append((name, "pool", (tuple(node.kernel_size),)))
        elif isinstance(node, Flatten):
            ops.append((name, "flat", ()))
        elif isinstance(node, Affine):
            ops.append((name, "fc", (t32(node.weight), None if node.bias is None else t32(node.bias))))
        elif isinstance(node, Neuron):
            shape = tuple(sched.shapes[name])
            if node.syn_decay is not None or node.reset != "value" or node.v_th is None:
                raise SystemExit(f"{name}: this benchmark's torch forward covers value-reset LNMs without a synapse")
            full = (node.poly.shape[0], *shape)
            ops.append((name, "lnm", (t32(np.broadcast_to(node.poly, full)), t32(np.broadcast_to(node.v_th, shape)),
                                      shape, t32(np.broadcast_to(node.in_gain, shape)),
                                      t32(np.broadcast_to(node.v_reset, shape)))))
    xt = t32(x)

    def forward() -> dict[str, torch.Tensor]:
        b, steps = xt.shape[:2]
        v = {n: torch.zeros(b, *p[2]) for n, k, p in ops if k == "lnm"}
        out: dict[str, list[torch.Tensor]] = {n: [] for n in v}
        for t in range(steps):
            s = xt[:, t]
            for name, kind, p in ops:
                if kind == "conv":
                    s = F.conv2d(s, p[0], p[1], stride=p[2], padding=p[3])
                elif kind == "pool":
                    s = F.avg_pool2d(s, p[0]) * float(p[0][0] * p[0][1])
                elif kind == "flat":
                    s = s.reshape(b, -1)
                elif kind == "fc":
                    s = F.linear(s, p[0], p[1])
                else:
                    poly, vth, _, in_gain, v_reset = p
                    h = poly[-1].expand_as(v[name])
                    for k in range(poly.shape[0] - 2, -1, -1):
                        h = h * v[name] + poly[k]
                    v_pre = h + in_gain * s
                    spk = v_pre > vth
                    v[name] = torch.where(spk, v_reset.expand_as(v_pre), v_pre)
                    s = spk.float()
                    out[name].append(s)
        return {n: torch.stack(o, 1) for n, o in out.items()}

    return forward


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--lava-samples", type=int, default=1)
    ap.add_argument("--no-lava", action="store_true", help="skip the Lava timing (slow: minutes)")
    args = ap.parse_args()

    import torch

    from lnm_deploy.calibrate import calibrate_network, load_recipe
    from lnm_deploy.execute import run_float
    from lnm_deploy.fxsim import compare_runs, first_mismatch, run_fx
    from lnm_deploy.fxsim.sim import load_kernels
    from lnm_deploy.targets import load_target

    kernels = "numba" if load_kernels("auto") is not None else "numpy"
    graph, _ = build()
    target, recipe = load_target("loihi2"), load_recipe("default")
    print(f"VGG-style LNM network, input {SHAPE}, {SAMPLES} samples; fxsim kernels: {kernels}; "
          f"torch {torch.__version__} with {torch.get_num_threads()} threads")
    for steps in (4, 8):
        x = (np.random.default_rng(steps).random((SAMPLES, steps, *SHAPE)) < 0.2).astype(np.uint8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fx = calibrate_network(graph, x, target, recipe, progress=False).artifact.fx
        ref = run_fx(fx, x, record=True)
        m = compare_runs(ref, run_fx(fx, x, record=True, kernels="numpy"), order=fx.neuron_names())
        if m is not None:
            raise SystemExit(f"fxsim's {kernels} and numpy kernels differ, refusing to time: {m}")
        fwd = torch_forward(graph, x)
        flt = run_float(graph, x)
        th_spikes = fwd()
        agree = min(float(np.mean(th_spikes[n].numpy() == flt.spikes[n])) for n in th_spikes)
        t_fx, t_th = best_interleaved([lambda fx=fx, x=x: run_fx(fx, x), fwd], args.repeats)
        per = SAMPLES * steps
        print(f"T={steps}: fxsim {t_fx / per * 1e6:8.1f} us, torch float32 {t_th / per * 1e6:8.1f} us per "
              f"sample-timestep (torch vs float64 executor: lowest per-layer spike agreement {agree:.4f})")
        ratio_lava = "n/a"
        if not args.no_lava:
            from lnm_deploy.lava_backend import run_lava_timed

            n = min(args.lava_samples, SAMPLES)
            res, t = run_lava_timed(fx, x[:n])
            mm = first_mismatch({k: v[:n] for k, v in ref.spikes.items()}, res.spikes, order=fx.neuron_names())
            if mm is not None:
                raise SystemExit(f"fxsim and Lava differ, refusing to time: {mm}")
            lava = t.total_s / (n * steps)
            print(f"T={steps}: lava {lava * 1e6:10.1f} us per sample-timestep end to end ({n} sample(s), "
                  f"bit-exact with fxsim; compile {t.compile_s:.2f} s; stepping only "
                  f"{t.step_s * 1e6:.1f} us per step)")
            ratio_lava = f"{lava / (t_fx / per):.0f}"
        print(f"T={steps} ratio_torch_vs_fxsim={t_th / t_fx:.2f} ratio_lava_vs_fxsim={ratio_lava}")


if __name__ == "__main__":
    main()
