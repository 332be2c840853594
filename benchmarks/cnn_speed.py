"""Time fxsim on calibrated VGG-style and ResNet-style LNM networks against the same networks'
float forward in torch and against Lava 0.10 (``Loihi2SimCfg(select_tag='fixed_pt')``), per
sample-timestep, and their calibration against one float pass.

The networks are ``lnm_deploy.model.vgg`` (three stages conv3x3 -> BatchNorm -> LNM -> MaxPool2d
of 16, 32, 32 channels, Linear head) and ``lnm_deploy.model.resnet`` (stem of 16 channels, an
identity block and a projected stride-2 block of 32, Linear head) on 3x32x32 input, degree-2
LNM layers, BatchNorm statistics from the data (``init_batchnorm``; untrained), exported with
``model_to_ir`` (BatchNorm folded, max pooling as sum pooling into an OR layer) and calibrated for
``loihi2`` with the ``default`` recipe, at T = 4 and T = 8 with 16 samples of Bernoulli(0.2) input
spikes. Timed side by side in alternating rounds (the machine is shared; the best round of each
is kept):

* fxsim: ``run_fx`` on the calibrated integer network, all samples batched (compiled kernels when
  numba is installed: event-driven Conv2d / Dense, the polynomial neuron);
* torch: the model's own forward (float32, batched, no gradients);
* calibration: ``calibrate_network`` against one ``run_float`` pass over the same samples;
* Lava: ``run_lava_timed`` on the first ``--lava-samples`` samples (default 8, the number
  ``verify`` runs through Lava in issue #14), run as ``run_lava`` runs them: one compiled network
  takes the samples back to back, each for T + the network's depth steps. Its end-to-end time
  (build, compile, every step, read-back, stop) divided by samples * T is the headline figure.
  Two more readings are printed beside it, because Lava's per-network cost (build, compile,
  stop: about 1-2 s here) dominates short runs: one sample in a fresh network (the same cost
  divided by T alone: what one-sample-at-a-time use pays) and Lava's stepping alone (``run_s``,
  every Lava step of the run, divided by samples * T: what any number of samples approaches).
  Every Lava run is checked bit-exact against fxsim first.

Fairness: fxsim's compiled kernels and torch run on the same number of threads (``--threads``,
default torch's own default), printed with the machine's load average before and after: the
times are wall-clock bests of alternating rounds, and on a loaded machine (a load average above
the core count) they mostly measure the scheduler. (CPU time is no fairer here: torch and numba
both run OpenMP pools whose threads spin after a parallel region, counted to whatever runs next.)

Usage: python benchmarks/cnn_speed.py [--repeats 5] [--lava-samples 8] [--no-lava] [--threads N]
The last line per network and T is ``<net> T=<T> ratio_torch_vs_fxsim=<torch / fxsim>
ratio_lava_vs_fxsim=<Lava / fxsim, --lava-samples samples> ratio_lava1_vs_fxsim=<one sample in a
fresh network> ratio_lava_stepping_vs_fxsim=<Lava's stepping alone>
ratio_calibrate_vs_float=<calibration / one float pass>`` (issue #14 asks for fxsim at least as
fast as torch, at least 1000x faster than Lava per sample-timestep, calibration at most 3x).
"""

from __future__ import annotations

import argparse
import os
import warnings

import numpy as np
from sim_vs_lava import best_interleaved  # the same interleaved timing (benchmarks/ is on the path)

SAMPLES, SHAPE, CHANNELS = 16, (3, 32, 32), {"vgg": (16, 32, 32), "resnet": (16, 32)}


def build(net: str, x: np.ndarray):  # type: ignore[no-untyped-def]
    """(torch model in eval mode, its float IR graph) for ``net`` ("vgg" or "resnet")."""
    import torch

    from lnm_deploy.model import init_batchnorm, model_to_ir, resnet, vgg

    torch.manual_seed(0)
    make = {"vgg": vgg, "resnet": resnet}[net]
    model = make(input_shape=SHAPE, channels=CHANNELS[net], classes=10, degree=2)
    init_batchnorm(model, torch.as_tensor(x, dtype=torch.float32))
    return model, model_to_ir(model, SHAPE)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--lava-samples", type=int, default=8,
                    help="samples Lava runs through one network (default 8, as verify in issue #14)")
    ap.add_argument("--no-lava", action="store_true", help="skip the Lava timing (slow: minutes)")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for both torch and fxsim's kernels (default: torch's default)")
    args = ap.parse_args()

    import torch

    from lnm_deploy.calibrate import calibrate_network, load_recipe
    from lnm_deploy.execute import run_float
    from lnm_deploy.fxsim import compare_runs, first_mismatch, run_fx
    from lnm_deploy.fxsim.sim import load_kernels
    from lnm_deploy.targets import load_target

    torch.set_grad_enabled(False)
    kernels = "numba" if load_kernels("auto") is not None else "numpy"
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    fx_threads = "-"
    if kernels == "numba":
        import numba

        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        fx_threads = str(numba.get_num_threads())
    target, recipe = load_target("loihi2"), load_recipe("default")
    print(f"input {SHAPE}, {SAMPLES} samples; fxsim kernels: {kernels} with {fx_threads} threads; torch "
          f"{torch.__version__} with {threads} threads; load average {os.getloadavg()[0]:.2f}")

    def calibrate(graph, x):  # type: ignore[no-untyped-def]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return calibrate_network(graph, x, target, recipe, progress=False)

    for net in ("vgg", "resnet"):
        for steps in (4, 8):
            x = (np.random.default_rng(steps).random((SAMPLES, steps, *SHAPE)) < 0.2).astype(np.uint8)
            model, graph = build(net, x)
            res = calibrate(graph, x)
            fx = res.artifact.fx
            ref = run_fx(fx, x, record=True)
            m = compare_runs(ref, run_fx(fx, x, record=True, kernels="numpy"), order=fx.neuron_names())
            if m is not None:
                raise SystemExit(f"fxsim's {kernels} and numpy kernels differ, refusing to time: {m}")
            rates = {n: round(float(s.mean()), 3) for n, s in ref.spikes.items()}
            agree = {n: round(d["agreement"], 3) for n, d in res.report["comparison"]["layers"].items()}
            print(f"{net} T={steps}: fxsim spike rates {rates}; float-vs-fixed agreement {agree}")
            xt = torch.as_tensor(x, dtype=torch.float32)
            t_fx, t_th, t_float, t_cal = best_interleaved(
                [lambda fx=fx, x=x: run_fx(fx, x), lambda model=model, xt=xt: model(xt),
                 lambda graph=graph, x=x: run_float(graph, x), lambda graph=graph, x=x: calibrate(graph, x)],
                args.repeats)
            per = SAMPLES * steps
            print(f"{net} T={steps}: fxsim {t_fx / per * 1e6:8.1f} us, torch float32 {t_th / per * 1e6:8.1f} us per "
                  f"sample-timestep; one float pass {t_float:.3f} s, calibration {t_cal:.3f} s")
            ratios = {"lava": "n/a", "lava1": "n/a", "lava_stepping": "n/a"}
            if not args.no_lava:
                from lnm_deploy.lava_backend import run_lava_timed

                fx_per = t_fx / per
                n = max(1, min(args.lava_samples, SAMPLES))
                for tag, k in (("lava", n), ("lava1", 1)):
                    if tag == "lava1" and n == 1:
                        ratios["lava1"] = ratios["lava"]
                        continue
                    got, t = run_lava_timed(fx, x[:k], samples_per_network=k)
                    mm = first_mismatch({kk: v[:k] for kk, v in ref.spikes.items()}, got.spikes,
                                        order=fx.neuron_names())
                    if mm is not None:
                        raise SystemExit(f"fxsim and Lava differ, refusing to time: {mm}")
                    lava = t.total_s / (k * steps)
                    print(f"{net} T={steps}: lava {lava * 1e6:10.1f} us per sample-timestep end to end ({k} sample(s) "
                          f"in {t.networks} network(s), bit-exact with fxsim; build {t.build_s:.2f} s, compile "
                          f"{t.compile_s:.2f} s, stop {t.stop_s:.2f} s; {t.steps} Lava steps of "
                          f"{t.step_s * 1e6:.1f} us)")
                    ratios[tag] = f"{lava / fx_per:.0f}"
                    if tag == "lava":
                        stepping = t.run_s / (k * steps)
                        print(f"{net} T={steps}: lava stepping alone {stepping * 1e6:10.1f} us per sample-timestep")
                        ratios["lava_stepping"] = f"{stepping / fx_per:.0f}"
            print(f"{net} T={steps} ratio_torch_vs_fxsim={t_th / t_fx:.2f} ratio_lava_vs_fxsim={ratios['lava']} "
                  f"ratio_lava1_vs_fxsim={ratios['lava1']} ratio_lava_stepping_vs_fxsim={ratios['lava_stepping']} "
                  f"ratio_calibrate_vs_float={t_cal / t_float:.2f}")

if __name__ == "__main__":
    main()
    print(f"load average {os.getloadavg()[0]:.2f}")
