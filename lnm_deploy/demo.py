"""``lnm-deploy demo``: the whole job end to end on scikit-learn's bundled digits (no download).

``--task poisson`` runs the same job on generated Poisson spike-train classes with a network of
adaptive-threshold LNM neurons (``run_poisson_demo``, below); the digits task is the default.

1. Train (or reuse) a degree-2 LNM network on the 8x8 digits, rate-encoded to spikes.
2. Export it to NIR (``model.nir``), read the file back, run the float executor, and check that it
   answers like the PyTorch model.
3. Calibrate and quantize it for ``loihi2`` (``model.loihi2.nir`` and its calibration report) and,
   to compare costs, for ``loihi2-lif`` (its LIF fit, ``model.loihi2-lif.nir``).
4. Verify on the whole test set: Lava (``Loihi2SimCfg(select_tag='fixed_pt')``) bit-exact with
   fxsim on every spike of every layer, float against fixed point, resources and cost, LNM against
   its LIF fit (``report.json``, ``report.html``).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from lnm_deploy.errors import UserInputError
from lnm_deploy.fileio import dumps_json, path_arg
from lnm_deploy.outputs import Outputs
from lnm_deploy.report import report_dir_for

#: Files the demo leaves in its output directory.
MODEL_FILE, TEST_FILE, CALIB_FILE, TORCH_FILE = "model.nir", "test.npz", "calib.npz", "model.safetensors"
REPORT_JSON, REPORT_HTML = "report.json", "report.html"
#: The demo's list of the files it wrote (relative path -> SHA-256): what a rerun may replace.
MANIFEST, MANIFEST_FORMAT = "demo-manifest.json", "lnm-deploy.demo-manifest"
CALIB_SAMPLES = 256
#: The demo's tasks (``--task``): the bundled digits (default) and generated Poisson spike trains.
TASKS: tuple[str, ...] = ("digits", "poisson")


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
    #: (poisson task) the verify report with the LZC readout as the accuracy criterion
    lzc_verification: dict[str, Any] | None = None
    task: str = "digits"

    @property
    def passed(self) -> bool:
        return all(v is None or bool(v["passed"]) for v in (self.verification, self.lzc_verification))


def _sha256(path: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_manifest_task(out: Path) -> str:
    """The task (``digits`` or ``poisson``) of the demo run whose manifest is in ``out``
    (``digits`` for a manifest written before tasks existed, or none)."""
    try:
        doc = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return "digits"
    task = doc.get("task", "digits") if isinstance(doc, dict) else "digits"
    return task if task in TASKS else "digits"


def read_manifest(out: Path) -> dict[str, str] | None:
    """The files an earlier demo run wrote into ``out`` (relative path -> SHA-256), or None when
    ``out`` has no readable manifest."""
    try:
        doc = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    files = doc.get("files") if isinstance(doc, dict) and doc.get("format") == MANIFEST_FORMAT else None
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        return None
    # Only plain relative paths inside ``out`` (a manifest is a file anyone can edit: an absolute
    # path, a ``..`` or a path through a link never names a file of the demo's).
    return {str(k): v for k, v in files.items() if _inside(out, str(k))}


def _inside(out: Path, rel: str) -> bool:
    """``rel`` is a relative POSIX path without ``..`` that resolves inside ``out`` (no link)."""
    pure = PurePosixPath(rel)
    if not rel or pure.is_absolute() or ".." in pure.parts or "\\" in rel:
        return False
    root = os.path.realpath(out)
    return os.path.commonpath([root, os.path.realpath(out / rel)]) == root


class _Plan:
    """What the demo may write in ``out``: every existing file it would replace must be one an
    earlier demo run wrote (listed in the manifest, unchanged since), unless ``force``."""

    def __init__(self, out: Path, force: bool) -> None:
        self.out, self.force = out, force
        if out.exists() and not out.is_dir():
            raise UserInputError(f"{out} exists and is not a directory; choose another --out")
        manifest = read_manifest(out) if out.is_dir() else {}
        #: the task of the demo whose manifest is in ``out`` (None: no manifest)
        self.task: str | None = read_manifest_task(out) if manifest else None
        if manifest is None:
            if any(out.iterdir()) and not force:
                raise UserInputError(f"{out} is not empty and was not written by the demo (it has no "
                                     f"{MANIFEST}); pass --force to write into it (other files are "
                                     "kept) or choose another --out")
            manifest = {}
        self.manifest: dict[str, str] = manifest

    def ours(self, rel: str) -> bool:
        """``rel`` is missing, or the demo wrote it and it is unchanged since."""
        p = self.out / rel
        if not (p.exists() or p.is_symlink()):
            return True
        return p.is_file() and rel in self.manifest and _sha256(p) == self.manifest[rel]

    def other_task(self, task: str) -> bool:
        """``out`` holds the demo of another task than ``task``: refused unless ``force``, and then
        its files this run does not rewrite are removed (``stale``), so the two never mix."""
        if self.task is None or self.task == task:
            return False
        if not self.force:
            raise UserInputError(f"{self.out} holds the {self.task} demo (its {MANIFEST}), not the {task} "
                                 f"demo's: choose another --out, or pass --force to replace it (the {self.task} "
                                 "demo's own unchanged files are removed, other files kept)")
        return True

    def stale(self, written: set[str]) -> list[str]:
        """The files of the manifest that this run does not write (``written``) and that are still
        as the demo wrote them (same SHA-256): the earlier demo's own, to remove. A changed file is
        not the demo's any more: it is kept (and left out of the new manifest)."""
        return [rel for rel in sorted(self.manifest) if rel not in written and rel != MANIFEST
                and _inside(self.out, rel) and (self.out / rel).is_file() and not (self.out / rel).is_symlink()
                and self.ours(rel)]

    def claim(self, rel: str) -> None:
        """Refuse (unless ``force``) to replace ``rel`` if the demo did not write it as it is now."""
        p = self.out / rel
        if p.is_dir():
            raise UserInputError(f"{p} is a directory; the demo writes a file there: move it away")
        if not self.force and not self.ours(rel):
            why = "changed since the demo wrote it" if rel in self.manifest else "not written by the demo"
            raise UserInputError(f"{p} is {why}; pass --force to replace it or choose another --out")

    def claim_dir(self, rel: str) -> None:
        """Like ``claim`` for every file already in the directory ``rel`` (whose report file names
        are only known after the calibration)."""
        p = self.out / rel
        if p.exists() and not p.is_dir():
            raise UserInputError(f"{p} exists and is not a directory; move it away")
        if p.is_dir():
            for f in sorted(p.rglob("*")):
                if not f.is_dir():
                    self.claim(f.relative_to(self.out).as_posix())


def _train(out: Path, outs: Outputs, degree: int, seed: int, progress: bool, log: Any
           ) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Train; stage model.safetensors / model.nir / calib.npz / test.npz; return accuracy, seconds, x, preds."""
    import copy

    import lnm_deploy
    from lnm_deploy.fileio import write_npz
    from lnm_deploy.model import encode, predict, save_model, train_digits

    log(f"training a degree-{degree} LNM network on the 8x8 digits (2 CPU cores, about 15 s)")
    res = train_digits(degree=degree, seed=seed, progress=progress)
    x_cal = encode(res.data.x_train[:CALIB_SAMPLES], res.x_test.shape[1], "rate", seed=seed + 2)
    write_npz(outs.stage(out / CALIB_FILE), {"x": x_cal.astype(np.uint8), "y": res.data.y_train[:CALIB_SAMPLES]})
    write_npz(outs.stage(out / TEST_FILE), {"x": res.x_test.astype(np.uint8), "y": res.data.y_test})
    save_model(res.model, outs.stage(out / TORCH_FILE))
    lnm_deploy.export(res.model, outs.stage(out / MODEL_FILE), input_shape=(res.x_test.shape[2],))
    # The executor runs in float64; so does this copy, with the float32-trained values exactly.
    preds = predict(copy.deepcopy(res.model).double(), res.x_test)
    log(f"trained in {res.seconds:.1f} s: PyTorch test accuracy {res.test_accuracy:.4f}")
    return res.test_accuracy, res.seconds, res.x_test, preds


def _final_paths(record: dict[str, Any], final: dict[str, str]) -> None:
    """Provenance paths of staged files -> the paths they are committed to (same content)."""
    prov = record.get("provenance") or {}
    for key in ("source_graph", "calibration_data"):
        entry = prov.get(key)
        if isinstance(entry, dict) and entry.get("path") in final:
            entry["path"] = final[entry["path"]]


def run_demo(out_dir: str | Path, *, retrain: bool = False, force: bool = False, degree: int = 2,
             seed: int = 0, progress: bool = True, log: Any = print,
             calibrate_targets: tuple[str, ...] | None = None, recipe: str = "agreement",
             verify_backends: tuple[str, ...] = ("lava",), lava_samples: int | None = None,
             task: str = "digits", poisson: PoissonConfig | None = None) -> DemoResult:
    """Run the demo into ``out_dir`` (created if missing); see the module docstring.

    Every file is written at the end, all together, or none (``lnm_deploy.outputs``). The demo
    lists what it wrote, with SHA-256, in ``demo-manifest.json``: a rerun reuses its trained model
    and replaces its own files; a file it did not write, or one changed since, is refused unless
    ``force`` (a non-empty directory without a manifest too). Other files are never touched.

    ``task``: ``"digits"`` or ``"poisson"`` (``run_poisson_demo``; ``poisson`` its configuration);
    a model is reused only by a run of the same task (the manifest records it). A directory holding
    the other task's demo is refused unless ``force``; then that demo's own files (listed, unchanged)
    that this run does not rewrite are removed with the commit (put back if it fails), so the
    manifest lists exactly what this run wrote; a changed one is kept, unlisted.
    ``calibrate_targets``: default ``("loihi2", "loihi2-lif")`` for the digits (the verify page
    compares the LNM with its LIF fit) and ``("loihi2",)`` for the Poisson task.
    """
    if task not in TASKS:
        raise UserInputError(f"unknown demo task {task!r}; known: {list(TASKS)}")
    if calibrate_targets is None:
        calibrate_targets = ("loihi2", "loihi2-lif") if task == "digits" else ("loihi2",)
    out = Path(out_dir)
    plan = _Plan(out, force)
    replace_other = plan.other_task(task)  # another task's demo: refused unless force
    model_path, test_path, calib_path = out / MODEL_FILE, out / TEST_FILE, out / CALIB_FILE
    reuse = not retrain and read_manifest_task(out) == task and all(
        p.is_file() and plan.ours(p.name) for p in (model_path, test_path, calib_path))
    trained = not reuse
    names = [TORCH_FILE, MODEL_FILE, TEST_FILE, CALIB_FILE] if trained else []
    names += [f"model.{t}.nir" for t in calibrate_targets]
    if verify_backends and calibrate_targets:
        names += [REPORT_JSON, REPORT_HTML]
    for rel in names:
        plan.claim(rel)
    if (out / MANIFEST).is_dir():
        raise UserInputError(f"{out / MANIFEST} is a directory; move it away")
    report_dirs = [report_dir_for(f"model.{t}.nir").as_posix() for t in calibrate_targets]
    for rel in report_dirs:
        plan.claim_dir(rel)

    # The plan made sure that whatever exists and is replaced is the demo's own (or --force).
    aside = _SetAside()
    try:
        with Outputs(force=True) as outs:
            outs.directory(out, option="--out")
            for rel in report_dirs:
                outs.directory(out / rel, option="--out")
            result = _demo(out, outs, trained, degree, seed, progress, log, calibrate_targets, recipe,
                           verify_backends, lava_samples, task, poisson or PoissonConfig(degree=degree))
            base = Path(os.path.abspath(out))
            staged = {target.relative_to(base).as_posix(): tmp for target, tmp in outs.staged_files().items()}
            # Another task's demo: only what this run writes is listed; its own unchanged files go.
            entries = {} if replace_other else {
                rel: h for rel, h in plan.manifest.items() if (out / rel).is_file() and plan.ours(rel)}
            entries.update({rel: _sha256(tmp) for rel, tmp in staged.items()})
            entries.pop(MANIFEST, None)
            outs.write_text(out / MANIFEST, json.dumps(
                {"format": MANIFEST_FORMAT, "version": 1, "task": task,
                 "note": "files lnm-deploy demo wrote here (SHA-256); it replaces only these",
                 "files": dict(sorted(entries.items()))}, indent=2) + "\n")
            if replace_other:  # last, just before the commit: put back if it fails
                aside.move(out, plan.stale(set(staged)))
            removed: list[str] = []
            # deleted with the commit's signals held: a Ctrl-C cannot leave the hidden files behind
            outs.after_commit(lambda: removed.extend(aside.drop()))
    except BaseException:
        aside.restore()
        raise
    if removed:
        log(f"removed the {plan.task} demo's files this run does not write: {', '.join(removed)}")
    return result


class _SetAside:
    """Files of an earlier demo that a run removes, committed with its outputs: renamed to hidden
    names beside them just before the commit (``move``), put back if the commit fails
    (``restore``), deleted once it succeeded (``drop``, which also removes the directories they
    leave empty)."""

    def __init__(self) -> None:
        self.out: Path | None = None
        self.moved: list[tuple[str, Path, Path]] = []  # (relative path, file, hidden name)

    def move(self, out: Path, rels: list[str]) -> None:
        import tempfile

        self.out = out
        for rel in rels:
            p = out / rel
            fd, name = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".removed", dir=p.parent)
            os.close(fd)
            try:
                os.replace(p, name)
            except OSError as e:
                Path(name).unlink(missing_ok=True)
                raise UserInputError(f"cannot remove {p} ({e.strerror or type(e).__name__}); nothing "
                                     "of this run was kept") from None
            self.moved.append((rel, p, Path(name)))

    def restore(self) -> None:
        for _, p, hidden in reversed(self.moved):
            try:
                os.replace(hidden, p)
            except OSError:
                pass
        self.moved = []

    def drop(self) -> list[str]:
        import contextlib

        for _, _, hidden in self.moved:
            with contextlib.suppress(OSError):
                hidden.unlink()
        if self.out is not None:  # directories the removed files leave empty (never ``out`` itself)
            top = Path(os.path.abspath(self.out))
            for d in sorted({Path(os.path.abspath(p.parent)) for _, p, _ in self.moved},
                            key=lambda d: -len(d.parts)):
                while d != top and top in d.parents:
                    try:
                        d.rmdir()
                    except OSError:
                        break
                    d = d.parent
        removed = [rel for rel, _, _ in self.moved]
        self.moved = []
        return removed


def _demo(out: Path, outs: Outputs, trained: bool, degree: int, seed: int, progress: bool, log: Any,
          calibrate_targets: tuple[str, ...], recipe: str, verify_backends: tuple[str, ...],
          lava_samples: int | None, task: str = "digits", poisson: PoissonConfig | None = None) -> DemoResult:
    """The demo's work; every file is staged in ``outs`` (and read back from there)."""
    import lnm_deploy
    from lnm_deploy.execute import run_float
    from lnm_deploy.fileio import read_dataset
    from lnm_deploy.metrics import accuracy, predictions

    model_path, test_path, calib_path = out / MODEL_FILE, out / TEST_FILE, out / CALIB_FILE
    torch_pred = torch_acc = train_s = None
    poisson_task = task == "poisson"
    cfg = poisson or PoissonConfig(degree=degree)
    if trained and poisson_task:
        torch_acc, train_s, _, torch_pred = _train_poisson(out, outs, cfg, seed, progress, log)
    elif trained:
        torch_acc, train_s, _, torch_pred = _train(out, outs, degree, seed, progress, log)
    else:
        log(f"reusing {model_path} (pass --retrain to train again)")

    def current(p: Path) -> Path:  # the staged file until the commit, else the existing one
        return outs.staged(p) or p

    final = {str(current(p).resolve()): str(p.resolve()) for p in (model_path, calib_path)}
    graph = lnm_deploy.load(current(model_path))
    x, y = read_dataset(current(test_path))
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
    result = DemoResult(out, trained, train_s, torch_acc, float_acc, agreement, x.shape[0], x.shape[1],
                        task=task)

    from lnm_deploy.artifact import write_artifact
    from lnm_deploy.calibrate import calibrate_network, load_recipe
    from lnm_deploy.fxsim import run_fx
    from lnm_deploy.report.calibration import write_calibration_report
    from lnm_deploy.targets import load_target

    xc, yc = read_dataset(current(calib_path))
    artifacts = {}
    for name in calibrate_targets:
        target = load_target(name)
        # with labels (the poisson task) calibrate also fits the LZC readout on the float outputs
        res = calibrate_network(graph, xc, target, load_recipe(recipe), source=current(model_path),
                                data_path=current(calib_path), progress=progress,
                                y=yc if poisson_task else None)
        _final_paths(res.artifact.record, final)
        _final_paths(res.report, final)
        art_path = out / f"model.{target.name}.nir"
        write_artifact(res.artifact, outs.stage(art_path))
        write_calibration_report(res, graph, report_dir_for(art_path), outputs=outs)
        artifacts[target.name] = res.artifact
        result.fixed_accuracy[target.name] = acc = accuracy(run_fx(res.artifact.fx, x).output, y)
        log(f"calibrated for {target.name} (recipe '{recipe}'): fxsim accuracy {acc:.4f} "
            f"({(acc - float_acc) * 100:+.2f} points)")

    if verify_backends and artifacts:
        from lnm_deploy.report.html import render_verify_page
        from lnm_deploy.verify import verify

        name, art = next(iter(artifacts.items()))
        if poisson_task and lava_samples is None:
            lava_samples = cfg.lava_samples
        n_lava = x.shape[0] if lava_samples is None else min(lava_samples, x.shape[0])
        log(f"verifying {name}: {', '.join(verify_backends)} against fxsim on {n_lava} samples, float against "
            f"fixed point on {x.shape[0]}")
        other = next((a for t, a in artifacts.items() if t != name), None)  # LNM against its LIF fit: cost
        drop = cfg.max_accuracy_drop if poisson_task else 0.005
        ver = verify(art, x, y, backends=verify_backends, float_graph=current(model_path),
                     backend_samples=lava_samples, progress=progress, compare=other, max_accuracy_drop=drop,
                     artifact_path=out / f"model.{name}.nir")
        ver.float_source = str(model_path)
        result.verification = ver.to_dict()
        outs.write_text(out / REPORT_JSON, dumps_json(result.verification, indent=2))
        outs.write_text(out / REPORT_HTML, render_verify_page(ver, graph, art,
                                                             artifact_path=str(out / f"model.{name}.nir")))
        for b, chk in ver.backends.items():
            log(f"{b}: {'bit-exact' if chk.bit_exact else 'MISMATCH'} with fxsim on every spike of every layer "
                f"({chk.compared_spikes} spikes, {chk.seconds:.1f} s)")
        log(f"verification {'PASSED' if ver.passed else 'FAILED: ' + '; '.join(ver.reasons)}")
        if poisson_task:
            result.lzc_verification = _verify_lzc(art, x, y, current(model_path), model_path, drop, progress,
                                                  log)
            result.verification["lzc_readout_verification"] = result.lzc_verification
            outs.write_text(out / REPORT_JSON, dumps_json(result.verification, indent=2))
    return result


def _cmd(args: argparse.Namespace) -> int:
    out = args.out if args.out is not None else ("demo_out" if args.task == "digits" else f"demo_{args.task}_out")
    res = run_demo(out, retrain=args.retrain, force=args.force, progress=not args.quiet, task=args.task)
    fixed = ", ".join(f"{t} {a:.4f}" for t, a in res.fixed_accuracy.items())
    lzc = ""
    if res.lzc_verification is not None:
        lz = res.lzc_verification["lzc"]
        lzc = f"; LZC readout float {lz['float_accuracy']:.4f}, fixed point {lz['fixed_accuracy']:.4f}"
        counted = (res.verification or {}).get("lzc") or {}  # the backends ran in the first verify
        for b, a in (counted.get("backend_accuracy") or {}).items():
            n = (counted.get("backend_samples") or {}).get(b)
            lzc += f", {b} {a:.4f}" + (f" ({n} of {res.samples} samples)" if n is not None else "")
    print(f"demo {'passed' if res.passed else 'FAILED'}: float accuracy {res.float_accuracy:.4f}, fixed point "
          f"{fixed}{lzc}; wrote {res.out_dir}/ (see {res.out_dir / REPORT_HTML})")
    return 0 if res.passed else 1


def add_demo_parser(sub: Any) -> None:  # sub: argparse._SubParsersAction
    p = sub.add_parser("demo", help="train, export, calibrate, run on Lava and verify the digits network "
                                    "(or, --task poisson, adaptive-threshold neurons on Poisson spike trains)")
    p.add_argument("--task", choices=TASKS, default="digits",
                   help="digits: LNM network on the bundled 8x8 digits (default); poisson: adaptive-threshold "
                        "LNM network on generated Poisson spike-train classes, verified with the spike-count "
                        "and the Lempel-Ziv complexity readouts")
    p.add_argument("--out", type=path_arg, default=None,
                   help="output directory (default: demo_out, demo_poisson_out)")
    p.add_argument("--retrain", action="store_true", help="train again even if DIR has a model")
    p.add_argument("--force", action="store_true",
                   help="write into DIR even where files are not the demo's own (listed in "
                        f"{MANIFEST}); files the demo does not write are never touched, except that "
                        "over the other --task's demo its own unchanged files are removed")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd)


# ------------------------------------------------------------------------------ --task poisson
#
# Generated Poisson spike-train classes (no download), a network of adaptive-threshold LNM neurons
# (``lnm_deploy.model.adaptive.AdaptiveLNM``: degree-2 leak, learned theta_0, decay and jump)
# trained with surrogate gradients, then the digits demo's pipeline: NIR, float executor, calibrate
# for loihi2 (the ``adaptive_poly`` primitive) with labels (so the artifact carries an LZC
# readout), Lava bit-exact with fxsim, and verify twice: spike-count readout, then LZC readout.

#: The classes of the Poisson task, by label.
POISSON_CLASSES: tuple[str, ...] = ("low-rate", "poisson", "bursty", "regular")


@dataclass(frozen=True)
class PoissonConfig:
    """The Poisson task's size. ``rate``: spikes per step per channel of classes 1-3 (class 0 has
    ``low_rate``); ``steps``: timesteps per sample; ``*_per_class``: samples of each class;
    ``max_accuracy_drop``: the largest float - fixed-point accuracy accepted (fraction);
    ``lava_samples``: test samples Lava runs (held bit-exact against fxsim) unless the demo is
    given its own number."""

    n_in: int = 16
    hidden: int = 32
    steps: int = 40
    degree: int = 2
    rate: float = 0.25
    low_rate: float = 0.08
    train_per_class: int = 150
    test_per_class: int = 100
    calib_per_class: int = 48
    epochs: int = 15
    lr: float = 1e-2
    batch_size: int = 32
    max_accuracy_drop: float = 0.01
    lava_samples: int = 48


def poisson_dataset(n_per_class: int, steps: int = 40, n_in: int = 16, *, rate: float = 0.25,
                    low_rate: float = 0.08, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Spike trains of the four ``POISSON_CLASSES``, shuffled: ``x`` (4 n, steps, n_in) uint8,
    ``y`` (4 n,) int64.

    0 ``low-rate``: independent Bernoulli (discrete Poisson) spikes, ``low_rate`` per step;
    1 ``poisson``: the same at ``rate``; 2 ``bursty``: ``rate`` on average, but modulated by one
    on/off state per sample shared by all channels (a two-state Markov chain switching with
    probability 0.15 per step; ``2 rate - 0.02`` on, 0.02 off); 3 ``regular``: one spike every 4
    steps per channel with a random phase, 5% dropped. Classes 1-3 have about the same rate: only
    the temporal structure tells them apart.
    """
    rng = np.random.default_rng(seed)
    n, shape = int(n_per_class), (int(n_per_class), int(steps), int(n_in))
    if n < 1 or steps < 1 or n_in < 1 or not 0 < low_rate <= 1 or not 0.01 < rate <= 0.5:
        raise UserInputError(f"poisson_dataset: bad size or rate (n {n_per_class}, steps {steps}, n_in {n_in}, "
                             f"rate {rate}, low_rate {low_rate})")
    on = np.zeros(shape[:2], dtype=bool)
    state = rng.random(n) < 0.5
    for t in range(steps):
        state = np.where(rng.random(n) < 0.15, ~state, state)
        on[:, t] = state
    phase = rng.integers(0, 4, (n, 1, n_in))
    xs = [rng.random(shape) < low_rate,
          rng.random(shape) < rate,
          rng.random(shape) < np.where(on, 2 * rate - 0.02, 0.02)[:, :, None],
          ((np.arange(steps)[None, :, None] + phase) % 4 == 0) & (rng.random(shape) < 0.95)]
    x = np.concatenate(xs).astype(np.uint8)
    y = np.repeat(np.arange(len(xs), dtype=np.int64), n)
    perm = rng.permutation(y.size)
    return x[perm], y[perm]


def build_poisson_model(cfg: PoissonConfig, seed: int = 0) -> Any:
    """``fc1 -> AdaptiveLNM(hidden) -> fc2 -> AdaptiveLNM(4)``, weights drawn under ``seed``
    (the global RNG state is untouched)."""
    import torch
    from torch import nn

    from lnm_deploy.model import LNMSequential
    from lnm_deploy.model.adaptive import AdaptiveLNM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return LNMSequential(nn.Linear(cfg.n_in, cfg.hidden),
                             AdaptiveLNM(cfg.hidden, cfg.degree, theta_decay=0.8, theta_step=0.3),
                             nn.Linear(cfg.hidden, len(POISSON_CLASSES)),
                             AdaptiveLNM(len(POISSON_CLASSES), cfg.degree, theta_decay=0.8, theta_step=0.3))


def _train_poisson(out: Path, outs: Outputs, cfg: PoissonConfig, seed: int, progress: bool, log: Any
                   ) -> tuple[float, float, np.ndarray, np.ndarray]:
    """Generate, train; stage model.safetensors / model.nir / calib.npz / test.npz (with labels);
    return the test accuracy, the training seconds, the test spikes and the model's predictions."""
    import copy

    import torch

    import lnm_deploy
    from lnm_deploy.fileio import write_npz
    from lnm_deploy.model import predict, save_model
    from lnm_deploy.model.train import evaluate, train

    def data(n: int, s: int) -> tuple[np.ndarray, np.ndarray]:
        return poisson_dataset(n, cfg.steps, cfg.n_in, rate=cfg.rate, low_rate=cfg.low_rate, seed=s)

    x_tr, y_tr = data(cfg.train_per_class, seed)
    x_te, y_te = data(cfg.test_per_class, seed + 1)
    x_ca, y_ca = data(cfg.calib_per_class, seed + 2)
    log(f"training {cfg.hidden}+{len(POISSON_CLASSES)} adaptive-threshold LNM neurons (degree {cfg.degree}) on "
        f"{y_tr.size} Poisson spike trains ({', '.join(POISSON_CLASSES)}; {cfg.steps} steps x {cfg.n_in} channels)")
    model = build_poisson_model(cfg, seed)
    old = torch.get_num_threads()
    torch.set_num_threads(1)  # small matmuls: one thread is as fast and machine-independent (train_digits)
    try:
        hist = train(model, x_tr, y_tr, cfg.epochs, cfg.lr, cfg.batch_size, seed=seed, progress=progress)
    finally:
        torch.set_num_threads(old)
    acc = evaluate(model, x_te, y_te)
    write_npz(outs.stage(out / CALIB_FILE), {"x": x_ca, "y": y_ca})
    write_npz(outs.stage(out / TEST_FILE), {"x": x_te, "y": y_te})
    save_model(model, outs.stage(out / TORCH_FILE))
    lnm_deploy.export(model, outs.stage(out / MODEL_FILE), input_shape=(cfg.n_in,))
    preds = predict(copy.deepcopy(model).double(), x_te)
    log(f"trained in {hist.seconds:.1f} s: PyTorch test accuracy {acc:.4f}")
    return acc, hist.seconds, x_te, preds


def _verify_lzc(art: Any, x: np.ndarray, y: np.ndarray, float_graph: Path, source: Path, drop: float,
                progress: bool, log: Any) -> dict[str, Any]:
    """Verify again with the LZC readout as the accuracy criterion (float and fxsim; the backends
    were held bit-exact by the first verify); log its accuracies and the per-neuron LZC drift.
    ``float_graph``: the float model read (the staged file until the commit); ``source``: where it
    is committed, which the report names."""
    from lnm_deploy.verify import verify

    ver = verify(art, x, y, backends=(), float_graph=float_graph, progress=progress, readout="lzc",
                 max_accuracy_drop=drop)
    ver.float_source = str(source)
    doc = ver.to_dict()
    lz = ver.lzc
    log(f"LZC readout (nearest centroid on per-neuron LZC, fitted on {lz.fitted_on}): accuracy float "
        f"{lz.float_accuracy:.4f}, fixed point {lz.fixed_accuracy:.4f}")
    if lz.drift is not None:
        per = ", ".join(f"{d:.4f}" for d in lz.drift.mean_abs_diff.reshape(-1))
        log(f"LZC drift float -> fixed point per output neuron ({', '.join(POISSON_CLASSES)}): {per}")
    log(f"LZC-readout verification {'PASSED' if ver.passed else 'FAILED: ' + '; '.join(ver.reasons)}")
    return doc


def run_poisson_demo(out_dir: str | Path, **kwargs: Any) -> DemoResult:
    """``run_demo(out_dir, task="poisson", **kwargs)``: the Poisson spike-train task (module
    docstring; ``poisson=PoissonConfig(...)`` sets its size)."""
    return run_demo(out_dir, task="poisson", **kwargs)
