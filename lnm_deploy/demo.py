"""``lnm-deploy demo``: the whole job end to end on scikit-learn's bundled digits (no download).

1. Train (or reuse) a degree-2 LNM network on the 8x8 digits, rate-encoded to spikes.
2. Export it to NIR (``model.nir``), read the file back, run the float executor, and check that it
   answers like the PyTorch model.
3. Calibrate and quantize it for ``loihi2`` (``model.loihi2.nir`` and its calibration report).
4. Verify on the whole test set: Lava (``Loihi2SimCfg(select_tag='fixed_pt')``) bit-exact with
   fxsim on every spike of every layer, float against fixed point (``report.json``, ``report.html``).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lnm_deploy.errors import UserInputError

#: Files the demo leaves in its output directory.
MODEL_FILE, TEST_FILE, CALIB_FILE, TORCH_FILE = "model.nir", "test.npz", "calib.npz", "model.safetensors"
REPORT_JSON, REPORT_HTML = "report.json", "report.html"
CALIB_SAMPLES = 256


@dataclass
class DemoResult:
    """Accuracies in [0, 1]; ``torch_accuracy`` is None when the model was reused, not trained."""

    out_dir: Path
    trained: bool
    train_seconds: float | None
    torch_accuracy: float | None
    float_accuracy: float
    agreement: float | None  # fraction of test samples where executor and torch predict the same class
    samples: int
    timesteps: int
    fixed_accuracy: dict[str, float] = field(default_factory=dict)  # per target, fxsim on the artifact
    verification: dict[str, Any] | None = None  # the verify report (JSON document)

    @property
    def passed(self) -> bool:
        return self.verification is None or bool(self.verification["passed"])


def _train(out: Path, degree: int, seed: int, progress: bool, log: Any) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Train, write model.pt / model.nir / calib.npz / test.npz; return accuracy, seconds, x, preds."""
    import copy

    import lnm_deploy
    from lnm_deploy.fileio import write_npz
    from lnm_deploy.model import encode, predict, save_model, train_digits

    log(f"training a degree-{degree} LNM network on the 8x8 digits (2 CPU cores, about 15 s)")
    res = train_digits(degree=degree, seed=seed, progress=progress)
    x_cal = encode(res.data.x_train[:CALIB_SAMPLES], res.x_test.shape[1], "rate", seed=seed + 2)
    write_npz(out / CALIB_FILE, {"x": x_cal.astype(np.uint8), "y": res.data.y_train[:CALIB_SAMPLES]})
    write_npz(out / TEST_FILE, {"x": res.x_test.astype(np.uint8), "y": res.data.y_test})
    save_model(res.model, out / TORCH_FILE)
    lnm_deploy.export(res.model, out / MODEL_FILE, input_shape=(res.x_test.shape[2],))
    # The executor runs in float64; so does this copy, with the float32-trained values exactly.
    preds = predict(copy.deepcopy(res.model).double(), res.x_test)
    log(f"trained in {res.seconds:.1f} s: PyTorch test accuracy {res.test_accuracy:.4f}; wrote "
        f"{out / MODEL_FILE}")
    return res.test_accuracy, res.seconds, res.x_test, preds


def run_demo(out_dir: str | Path, *, retrain: bool = False, degree: int = 2, seed: int = 0,
             progress: bool = True, log: Any = print, calibrate_targets: tuple[str, ...] = ("loihi2",),
             recipe: str = "agreement", verify_backends: tuple[str, ...] = ("lava",),
             lava_samples: int | None = None) -> DemoResult:
    """Run the demo into ``out_dir`` (created if missing); see the module docstring."""
    import lnm_deploy
    from lnm_deploy.execute import run_float
    from lnm_deploy.fileio import atomic_output, read_dataset
    from lnm_deploy.metrics import accuracy, predictions

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    model_path, test_path, calib_path = out / MODEL_FILE, out / TEST_FILE, out / CALIB_FILE

    torch_pred = torch_acc = train_s = None
    trained = retrain or not all(p.is_file() for p in (model_path, test_path, calib_path))
    if trained:
        torch_acc, train_s, _, torch_pred = _train(out, degree, seed, progress, log)
    else:
        log(f"reusing {model_path} (pass --retrain to train again)")

    graph = lnm_deploy.load(model_path)
    x, y = read_dataset(test_path)
    assert y is not None
    t0 = time.perf_counter()
    run = run_float(graph, x, progress=progress)
    float_acc = accuracy(run.output, y)
    log(f"float executor on {model_path.name}: accuracy {float_acc:.4f} "
        f"({x.shape[0]} samples x {x.shape[1]} steps, {time.perf_counter() - t0:.2f} s)")
    agreement = None
    if torch_pred is not None:
        agreement = float(np.mean(predictions(run.output) == torch_pred))
        log(f"executor vs PyTorch: same class on {agreement:.2%} of test samples")
    result = DemoResult(out, trained, train_s, torch_acc, float_acc, agreement, x.shape[0], x.shape[1])

    from lnm_deploy.artifact import write_artifact
    from lnm_deploy.calibrate import calibrate_network, load_recipe
    from lnm_deploy.fxsim import run_fx
    from lnm_deploy.report.calibration import write_calibration_report
    from lnm_deploy.targets import load_target

    xc, _ = read_dataset(calib_path)
    artifacts = {}
    for name in calibrate_targets:
        target = load_target(name)
        res = calibrate_network(graph, xc, target, load_recipe(recipe), source=model_path, data_path=calib_path,
                                progress=progress)
        art_path = out / f"model.{target.name}.nir"
        write_artifact(res.artifact, art_path)
        write_calibration_report(res, graph, out / f"model.{target.name}.report")
        artifacts[target.name] = res.artifact
        result.fixed_accuracy[target.name] = acc = accuracy(run_fx(res.artifact.fx, x).output, y)
        log(f"calibrated for {target.name} (recipe '{recipe}'): fxsim accuracy {acc:.4f} "
            f"({(acc - float_acc) * 100:+.2f} points); wrote {art_path}")

    if verify_backends and artifacts:
        from lnm_deploy.report.html import render_verify_page
        from lnm_deploy.verify import verify

        name, art = next(iter(artifacts.items()))
        n_lava = x.shape[0] if lava_samples is None else min(lava_samples, x.shape[0])
        log(f"verifying {name}: {', '.join(verify_backends)} against fxsim on {n_lava} samples, float against "
            f"fixed point on {x.shape[0]}")
        ver = verify(art, x, y, backends=verify_backends, float_graph=model_path, backend_samples=lava_samples,
                     progress=progress)
        result.verification = ver.to_dict()
        with atomic_output(out / REPORT_JSON) as tmp:
            tmp.write_text(json.dumps(result.verification, indent=2))
        with atomic_output(out / REPORT_HTML) as tmp:
            tmp.write_text(render_verify_page(ver, graph, art), encoding="utf-8")
        for b, chk in ver.backends.items():
            log(f"{b}: {'bit-exact' if chk.bit_exact else 'MISMATCH'} with fxsim on every spike of every layer "
                f"({chk.compared_spikes} spikes, {chk.seconds:.1f} s)")
        log(f"verification {'PASSED' if ver.passed else 'FAILED: ' + '; '.join(ver.reasons)}; wrote "
            f"{out / REPORT_JSON} and {out / REPORT_HTML}")
    return result


def _cmd(args: argparse.Namespace) -> int:
    res = run_demo(args.out, retrain=args.retrain, progress=not args.quiet)
    fixed = ", ".join(f"{t} {a:.4f}" for t, a in res.fixed_accuracy.items())
    print(f"demo {'passed' if res.passed else 'FAILED'}: float accuracy {res.float_accuracy:.4f}, fixed point "
          f"{fixed}; see {res.out_dir / REPORT_HTML}")
    return 0 if res.passed else 1


def add_demo_parser(sub: Any) -> None:  # sub: argparse._SubParsersAction
    p = sub.add_parser("demo", help="train, export, calibrate, run on Lava and verify the digits network")
    p.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    p.add_argument("--retrain", action="store_true", help="train again even if DIR has a model")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd)
