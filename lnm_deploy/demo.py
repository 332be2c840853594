"""``lnm-deploy demo``: the main job end to end on scikit-learn's bundled digits (no download).

Trains (or reuses) a degree-2 LNM network, exports it to NIR, reads the file back and runs it with
the float reference executor, and checks that the executor answers like the PyTorch model.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from lnm_deploy.errors import UserInputError

#: Files the demo leaves in its output directory.
MODEL_FILE, TEST_FILE, CALIB_FILE = "model.nir", "test.npz", "calib.npz"
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


def run_demo(out_dir: str | Path, *, retrain: bool = False, degree: int = 2, seed: int = 0,
             progress: bool = True, log=print, calibrate_targets: tuple[str, ...] = ("loihi2",),
             recipe: str = "agreement") -> DemoResult:
    """Run the demo into ``out_dir`` (created if missing); see the module docstring."""
    import lnm_deploy
    from lnm_deploy.execute import run_float
    from lnm_deploy.fileio import read_dataset, write_npz
    from lnm_deploy.metrics import accuracy, predictions

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserInputError(f"{out} exists and is not a directory")
    out.mkdir(parents=True, exist_ok=True)
    model_path, test_path, calib_path = out / MODEL_FILE, out / TEST_FILE, out / CALIB_FILE

    torch_pred = None
    torch_acc = train_s = None
    trained = retrain or not (model_path.is_file() and test_path.is_file() and calib_path.is_file())
    if trained:
        from lnm_deploy.model import encode, train_digits

        log(f"training a degree-{degree} LNM network on the 8x8 digits (2 CPU cores, about a minute)")
        res = train_digits(degree=degree, seed=seed, progress=progress)
        torch_acc, train_s = res.test_accuracy, res.seconds
        x_cal = encode(res.data.x_train[:CALIB_SAMPLES], res.x_test.shape[1], "rate", seed=seed + 2)
        write_npz(calib_path, {"x": x_cal.astype(np.uint8), "y": res.data.y_train[:CALIB_SAMPLES]})
        write_npz(test_path, {"x": res.x_test.astype(np.uint8), "y": res.data.y_test})
        lnm_deploy.export(res.model, model_path, input_shape=(res.x_test.shape[2],))
        import copy

        from lnm_deploy.model import predict

        # The executor runs in float64; so does this copy, with the float32-trained values exactly.
        torch_pred = predict(copy.deepcopy(res.model).double(), res.x_test)
        log(f"trained in {train_s:.1f} s: PyTorch test accuracy {torch_acc:.4f}; wrote {model_path}")
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
    fixed: dict[str, float] = {}
    if calibrate_targets:
        from lnm_deploy.artifact import write_artifact
        from lnm_deploy.calibrate import calibrate_network, load_recipe
        from lnm_deploy.fxsim import run_fx
        from lnm_deploy.report.calibration import write_calibration_report
        from lnm_deploy.targets import load_target

        xc, _ = read_dataset(calib_path)
        for name in calibrate_targets:
            target = load_target(name)
            res = calibrate_network(graph, xc, target, load_recipe(recipe), progress=progress)
            art_path = out / f"model.{target.name}.nir"
            write_artifact(res.artifact, art_path)
            write_calibration_report(res, graph, out / f"model.{target.name}.report")
            fixed[target.name] = accuracy(run_fx(res.artifact.fx, x).output, y)
            log(f"calibrated for {target.name} (recipe '{recipe}'): fxsim accuracy {fixed[target.name]:.4f} "
                f"({(fixed[target.name] - float_acc) * 100:+.2f} points); wrote {art_path}")
    return DemoResult(out, trained, train_s, torch_acc, float_acc, agreement, x.shape[0], x.shape[1], fixed)


def _cmd(args: argparse.Namespace) -> int:
    res = run_demo(args.out, retrain=args.retrain, progress=not args.quiet)
    print(f"demo done: {res.out_dir}/{MODEL_FILE}, {TEST_FILE}, {CALIB_FILE}; "
          f"float accuracy {res.float_accuracy:.4f}")
    return 0


def add_demo_parser(sub) -> None:  # sub: argparse._SubParsersAction
    p = sub.add_parser("demo", help="train, export and run the digits LNM network end to end")
    p.add_argument("--out", default="demo_out", help="output directory (default: demo_out)")
    p.add_argument("--retrain", action="store_true", help="train again even if DIR has a model")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd)
