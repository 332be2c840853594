"""The ``lnm-deploy`` command line. The only place that prints errors and chooses exit codes.

Exit codes: 0 success; 1 a check did not pass (``verify``); 2 bad input or usage, or an output
that cannot be written (disk full: ``OutputWriteError``); 3 malformed
graph; 4 unsupported node or semantics; 5 numeric problem (NaN, overflow); 6 missing optional
dependency, or a service it needs that does not answer (a Ray cluster at ``--ray-address``); 130
interrupted (Ctrl-C); 128 + N terminated by signal N (143 SIGTERM, 129 SIGHUP).
Outputs are declared and checked before any work and written all together at the end, or not at
all (``lnm_deploy.outputs``).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from lnm_deploy._version import __version__
from lnm_deploy.errors import LNMDeployError, UserInputError
from lnm_deploy.fileio import dumps_json, nonempty_arg, path_arg

Command = Callable[[argparse.Namespace], int]
#: argparse ``type`` of ``--target`` and ``--recipe``: an empty one was taken as not given.
_name_arg = nonempty_arg("give a shipped name or a .toml path")


def _load(args: argparse.Namespace):  # -> tuple[ir.Graph, Artifact | None]
    from lnm_deploy.artifact import read_graph_or_artifact
    from lnm_deploy.fileio import existing_file

    return read_graph_or_artifact(existing_file(args.graph, "graph file"), dt=args.dt,
                                  producer=args.producer, input_shape=args.input_shape, reset=args.reset,
                                  threshold=args.threshold, spikes=args.spikes, v_floor=args.v_floor,
                                  readout_nodes=args.readout_node)


def _shape(text: str) -> tuple[int, ...]:
    from lnm_deploy.validate import shape_option

    try:
        return shape_option(text, "--input-shape")
    except UserInputError as e:  # argparse prints it with the usage and exits 2
        raise argparse.ArgumentTypeError(str(e).removeprefix("--input-shape: ")) from None


def _checked(check: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a ``lnm_deploy.validate`` check (one validation layer for the API and
    the CLI): its ``UserInputError`` becomes argparse's usage error (exit 2)."""

    def parse(text: str) -> Any:
        try:
            return check(text)
        except UserInputError as e:
            raise argparse.ArgumentTypeError(str(e)) from None

    return parse


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserInputError(f"not a number: {text!r}") from None


def _fraction_check(text: str) -> float:
    from lnm_deploy.validate import fraction

    return fraction(_number(text), "the value")


def _positive_int_check(text: str) -> int:
    from lnm_deploy.validate import positive_int

    try:
        value = int(text)
    except ValueError:
        raise UserInputError(f"not a whole number: {text!r}") from None
    return positive_int(value, "the value")


def _dt_check(text: str) -> float:
    from lnm_deploy.validate import finite_float

    return finite_float(_number(text), "dt (seconds per step)", positive=True)


_fraction = _checked(_fraction_check)
_positive_int = _checked(_positive_int_check)
_dt = _checked(_dt_check)


def cmd_inspect(args: argparse.Namespace) -> int:
    from lnm_deploy.summary import summarize

    if not args.resources:
        given = [o for o, v in (("--data", args.data), ("--target", args.target)) if v is not None]
        if given:
            raise UserInputError(f"{' and '.join(given)} {'needs' if len(given) == 1 else 'need'} --resources "
                                 f"(inspect ARTIFACT --resources {' '.join(f'{o} ...' for o in given)}); "
                                 "without it inspect shows the graph only")
    graph, artifact = _load(args)
    if args.resources:
        return _inspect_resources(args, artifact)
    s = summarize(graph)
    if args.json:
        doc = s.to_dict()
        if artifact is not None:
            doc["artifact"] = {"target": artifact.target, "record": artifact.record}
        print(dumps_json(doc, indent=2))
    else:
        from lnm_deploy.nir_io import READ_OPTIONS_KEY, reading_summary

        print(f"{args.graph}" + (f"  (calibrated artifact for target '{artifact.target}')" if artifact else ""))
        read = reading_summary(graph.metadata.get(READ_OPTIONS_KEY))
        if read:
            print(f"read as: {read}")
        if artifact is not None:  # how the float graph it was calibrated from was read
            prov = artifact.record.get("provenance")
            src = prov.get("source_graph") if isinstance(prov, dict) else None
            calib = reading_summary(src.get("read_options") if isinstance(src, dict) else None)
            if calib:
                print(f"calibrated from a graph read as: {calib}")
        print(s.to_text())
    return 0


def _inspect_resources(args: argparse.Namespace, artifact: Any) -> int:
    """``inspect ARTIFACT --resources [--data D] [--target T]``: mapping and cost (lnm_deploy.cost)."""
    from lnm_deploy import validate
    from lnm_deploy.artifact import artifact_target
    from lnm_deploy.cost import resources_report, resources_text
    from lnm_deploy.fileio import read_dataset
    from lnm_deploy.fxsim import run_fx
    from lnm_deploy.targets import load_target

    if artifact is None:
        raise UserInputError(f"--resources: {args.graph} is not a calibrated artifact; run 'lnm-deploy calibrate' first")
    if args.target:
        from lnm_deploy.targets import check_graph

        target = load_target(args.target)
        try:  # the artifact's own target was checked when it was read; another one is checked here
            check_graph(artifact.fx, target)
        except LNMDeployError as e:
            raise type(e)(f"--target {args.target}: {args.graph} cannot run on target '{target.name}' "
                          f"(calibrated for '{artifact.target}'): {e}; calibrate the float graph for "
                          f"'{target.name}' instead") from e
    else:
        target = artifact_target(artifact.fx, artifact.record, args.graph)
    x = None if args.data is None else validate.spikes(read_dataset(args.data)[0], artifact.graph, f"x in {args.data}")
    runs = {} if x is None else {"fxsim": run_fx(artifact.fx, x)}
    if args.json:
        print(dumps_json(resources_report(artifact.fx, target, x, runs), indent=2))
    else:
        print(resources_text(artifact.fx, target, x, runs))
    return 0


def cmd_calibrate(args: argparse.Namespace) -> int:
    from lnm_deploy.artifact import write_artifact
    from lnm_deploy.calibrate import calibrate_network, load_recipe
    from lnm_deploy.fileio import existing_file, read_dataset
    from lnm_deploy.outputs import Outputs
    from lnm_deploy.report import report_dir_for
    from lnm_deploy.report.calibration import declare_report, write_calibration_report
    from lnm_deploy.targets import load_target

    with Outputs(force=args.force) as outs:  # artifact and report: both written, or neither
        outs.inputs(GRAPH=args.graph, **{"--data": args.data})
        outs.file(args.out, option="--out")  # first: a directory (".") has no report name next to it
        report_dir = Path(args.report_dir) if args.report_dir else report_dir_for(args.out)
        outs.directory(report_dir, option="--report-dir")
        declare_report(outs, report_dir)  # report.json...: an input there is refused before any work
        target = load_target(args.target)
        recipe = load_recipe(args.recipe)
        graph, artifact = _load(args)
        declare_report(outs, report_dir, graph)  # and its figures, before calibrating
        if artifact is not None:
            raise UserInputError(f"{args.graph} is already a calibrated artifact (target "
                                 f"'{artifact.target}'); calibrate the float graph it came from")
        x, y = read_dataset(args.data)
        _data_shape(x, graph, args.data)
        result = calibrate_network(graph, x, target, recipe, y=y, source=existing_file(args.graph),
                                   data_path=args.data, progress=not args.quiet, **_scale(args))
        write_artifact(result.artifact, outs.stage(args.out))
        write_calibration_report(result, graph, report_dir, outputs=outs)
    rep = result.report
    print(f"calibrated {args.graph} for {target.name} with recipe '{recipe.name}' on {rep['samples']} samples")
    for name, layer in rep["comparison"]["layers"].items():
        rec = rep["layers"][name]
        print(f"  {name:<12} {rec['primitive']:<4} spike agreement {layer['agreement']:.4f}  "
              f"rate {layer['rate_reference']:.4f} -> {layer['rate_test']:.4f}")
    if "float_accuracy" in rep:
        print(f"  accuracy on the calibration set: float {rep['float_accuracy']:.4f}, "
              f"fixed {rep['fixed_accuracy']:.4f}")
        lz = rep.get("lzc_readout") or {}
        if lz.get("fitted"):
            print(f"  LZC readout (fitted on the float outputs): float {lz['float_accuracy']:.4f}, "
                  f"fixed {lz['fixed_accuracy']:.4f}")
        elif lz:
            print(f"  no LZC readout: {lz['reason']}")
    print(f"-> {args.out}  (report: {report_dir}/report.json)")
    return 0


def _compare_file(path: str) -> Path:
    """``verify --compare OTHER``: an existing file, else ``UserInputError`` naming the option."""
    from lnm_deploy.fileio import existing_file

    try:
        return existing_file(path, "the artifact")
    except UserInputError as e:
        raise UserInputError(f"--compare: {e}") from e


def cmd_verify(args: argparse.Namespace) -> int:
    from lnm_deploy.artifact import read_artifact
    from lnm_deploy.fileio import existing_file, read_dataset
    from lnm_deploy.outputs import Outputs
    from lnm_deploy.verify import verify

    with Outputs(force=args.force) as outs:  # --json and --html: both written, or neither
        outs.inputs(ARTIFACT=args.artifact, **{"--data": args.data, "--compare": args.compare,
                                               "--float": None if args.float == "dequantized" else args.float})
        if args.json:
            outs.file(args.json, option="--json")
        if args.html:
            outs.file(args.html, option="--html")
        artifact = read_artifact(existing_file(args.artifact, "artifact"))
        prov = artifact.record.get("provenance")
        src = prov.get("source_graph") if isinstance(prov, dict) else None
        source = src.get("path") if isinstance(src, dict) else None
        if isinstance(source, str):  # read unless --float says otherwise; never an output either way
            outs.inputs(**{"the float graph it was calibrated from": source})
        x, y = read_dataset(args.data)
        _data_shape(x, artifact.graph, args.data)
        backends = tuple(dict.fromkeys(args.backend or ["lava"]))
        result = verify(artifact, x, y, backends=backends, float_graph=args.float,
                        max_accuracy_drop=args.max_accuracy_drop, backend_samples=args.backend_samples,
                        min_agreement=args.min_agreement, producer=args.producer, dt=args.dt,
                        input_shape=args.input_shape, progress=not args.quiet, readout=args.readout,
                        compare=None if args.compare is None else _compare_file(args.compare),
                        artifact_path=args.artifact,
                        **_scale(args))
        if args.json:
            outs.write_text(args.json, dumps_json(result.to_dict(), indent=2))
        if args.html:
            from lnm_deploy.report.html import render_verify_page

            assert result.float_graph is not None
            outs.write_text(args.html, render_verify_page(result, result.float_graph, artifact,
                                                             artifact_path=str(args.artifact)))
    fm = result.float_model
    how = ("as calibrated" if fm.get("as_calibrated") else
           "OPT-OUT: float and fixed differ only by rounding" if fm.get("opt_out") else "NOT as calibrated")
    resolved = (fm.get("read_options") or {}).get("resolved") or {}
    opts = ", ".join(f"{k} {v}" for k, v in resolved.items() if v is not None)
    print(f"verify {args.artifact} on {result.samples} samples x {result.timesteps} steps "
          f"(target {result.target})")
    print(f"  float model: {result.float_source} ({how}{'; ' + opts if opts else ''})")
    for note in fm.get("notes", []):
        print(f"    note: {note}")
    for name, b in result.backends.items():
        state = "bit-exact" if b.bit_exact else f"{b.mismatched_spikes} of {b.compared_spikes} spikes differ"
        print(f"  {name} vs fxsim on {b.samples} of {result.samples} samples: {state} "
              f"({b.compared_spikes} spikes compared, {b.seconds:.1f} s)")
    if result.float_accuracy is not None:
        print(f"  accuracy: float {result.float_accuracy:.4f}, fixed {result.fixed_accuracy:.4f} "
              f"(largest accepted drop {result.max_accuracy_drop:.4g})")
    else:
        print(f"  no labels: fixed point predicts the float model's class on {result.prediction_agreement:.4f} "
              f"of the samples, output bins agree {result.output_agreement:.4f} (floor {result.min_agreement:.4g})")
    lzc = result.lzc
    if lzc.readout:
        crit = " (the criterion: --readout lzc)" if result.readout == "lzc" else ""
        if lzc.float_accuracy is not None:
            backs = "".join(f", {b} {a:.4f}{lzc.samples_note(b)}" for b, a in lzc.backend_accuracy.items())
            print(f"  LZC readout accuracy: float {lzc.float_accuracy:.4f}, fixed {lzc.fixed_accuracy:.4f}{backs}{crit}")
        else:
            print(f"  LZC readout: fixed point gives the float model's class on {lzc.prediction_agreement:.4f} "
                  f"of the samples{crit}")
    if lzc.drift is not None:
        drift = lzc.drift
        print(f"  LZC drift per output neuron (mean |float - fixed|): max {drift.max:.4f}, "
              f"mean {float(np.mean(drift.mean_abs_diff)):.4f} over {drift.mean_abs_diff.size} neurons")
    mem = result.membrane  # a non-spiking readout layer: its membrane is the output
    if mem is not None:
        exact = ", ".join(f"{b} {'bit-exact' if c['bit_exact'] else str(c['mismatches']) + ' values differ'}"
                          for b, c in mem.backends.items())
        print(f"  readout '{mem.layer}' membrane ({mem.rule}): float vs fixed rms error {mem.rms_error:.4g}, "
              f"max abs error {mem.max_abs_error:.4g} (float range {mem.float_range:.4g}; q {mem.q:.4g})"
              + (f"; vs fxsim: {exact}" if exact else ""))
    for layer in result.layers:
        print(f"  {layer.name:<12} spike agreement {layer.spike_agreement:.4f}  "
              f"rate {layer.rate_float:.4f} -> {layer.rate_fixed:.4f}")
    if result.first_divergence:
        d = result.first_divergence
        print(f"  first divergence: layer {d['layer']}, sample {d['sample']}, timestep {d['timestep']}, "
              f"neuron {d['neuron']}: {d.get('cause', '')}")
    from lnm_deploy.cost import summary_lines

    for line in summary_lines(result.resources):
        print(f"  {line}")
    print("PASSED" if result.passed else "FAILED: " + "; ".join(result.reasons))
    return 0 if result.passed else 1


def cmd_export(args: argparse.Namespace) -> int:
    import lnm_deploy
    from lnm_deploy.fileio import existing_file
    from lnm_deploy.model import load_model
    from lnm_deploy.outputs import Outputs

    with Outputs(force=args.force) as outs:
        outs.inputs(MODEL=args.model)
        outs.file(args.out, option="--out")
        model = load_model(existing_file(args.model, "model file"))
        lnm_deploy.export(model, outs.stage(args.out), input_shape=args.input_shape, dt=args.dt)
    print(f"exported {args.model} -> {args.out}")
    return 0


def cmd_compile(args: argparse.Namespace) -> int:
    from lnm_deploy.backends import backend
    from lnm_deploy.fileio import existing_file

    b = backend(args.backend)
    if b.compile is None:
        raise UserInputError(f"backend {b.name!r} has no compiler")
    out = b.compile(existing_file(args.artifact, "artifact"), args.out, force=args.force,
                    states=not args.no_states)
    print(f"compiled {args.artifact} -> {out} ({b.name}: {b.description})")
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    from lnm_deploy.targets import list_targets, load_target

    targets = [load_target(args.file)] if args.file else list_targets()
    for t in targets:
        print(t.summary())
        print(f"    {t.path}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from lnm_deploy.outputs import Outputs

    with Outputs(force=args.force) as outs:
        outs.inputs(GRAPH=args.graph, **{"--data": args.data})
        outs.file(args.out, option="--out")  # checked before any work
        msg = _run(args, outs)
    print(f"{msg} -> {args.out}")
    return 0


def _run(args: argparse.Namespace, outs) -> str:  # outs: lnm_deploy.outputs.Outputs
    """The work of ``run``: stages ``--out`` in ``outs``; returns the summary line."""
    from lnm_deploy.backends import BACKENDS
    from lnm_deploy.distributed import run_sharded
    from lnm_deploy.fileio import read_dataset, write_npz
    from lnm_deploy.metrics import accuracy

    backend = BACKENDS[args.backend]
    graph, artifact = _load(args)
    if backend.integer and artifact is None:
        raise UserInputError(
            f"--backend {backend.name} runs a calibrated artifact and {args.graph} is a float graph: run "
            "'lnm-deploy calibrate GRAPH.nir --data CALIB.npz --target NAME --out ARTIFACT.nir' first"
        )
    x, y = read_dataset(args.data)
    net = artifact.fx if backend.integer and artifact is not None else graph
    _data_shape(x, net, args.data)
    result = run_sharded(backend.name, net, x, record=args.states, progress=not args.quiet, **_scale(args))
    out = result.output
    arrays: dict[str, np.ndarray] = {"output": out.reshape(out.shape[0], out.shape[1], -1)}
    for name, s in result.spikes.items():
        arrays[f"spikes/{name}"] = s
    for name, st in result.states.items():
        for var, a in st.items():
            arrays[f"{var}/{name}"] = a
    msg = f"{args.backend}: {x.shape[0]} samples x {x.shape[1]} steps"
    if y is not None:
        acc = accuracy(out, y)
        arrays["accuracy"] = np.asarray(acc)
        msg += f", accuracy {acc:.4f}"
    write_npz(outs.stage(args.out), arrays)
    return msg


def _reading(check: Callable[[str], Any]) -> Callable[[str], Any]:
    """An argparse type from a reading-option check that raises ``ValueError``."""
    def parse(text: str) -> Any:
        try:
            return check(text)
        except ValueError as e:  # argparse prints it with the usage and exits 2
            raise argparse.ArgumentTypeError(str(e)) from None
    return parse


def _graph_args(p: argparse.ArgumentParser) -> None:
    from lnm_deploy.nir_io.conventions import (
        RESET_MODES_READ,
        THRESHOLD_TESTS,
        spikes_option,
        v_floor_option,
    )

    p.add_argument("graph", type=path_arg, help="a NIR graph file (.nir)")
    _read_args(p)
    # What a NIR file cannot say; recorded in the artifact's provenance and replayed by verify.
    p.add_argument("--reset", choices=RESET_MODES_READ, default=None,
                   help="the neurons' reset, where the producer's exporter does not write it")
    p.add_argument("--threshold", choices=THRESHOLD_TESTS, default=None,
                   help="the spike test (v > v_th or v >= v_th), where the file does not say")
    p.add_argument("--spikes", type=_reading(spikes_option), default=None, metavar="{single,multi,N}",
                   help="spikes per step where the file does not say: one, floor(v/v_th) (graded; "
                        "Sinabs MultiSpike: unbounded, Rockpool: at most 2**16) or at most N")
    p.add_argument("--v-floor", type=_reading(v_floor_option), default=None, metavar="{FLOAT,-v_th}",
                   help="the membrane's lower bound after reset (Sinabs min_v_mem; no exporter writes it), "
                        "below every neuron's threshold; -v_th: minus each neuron's threshold")
    p.add_argument("--readout-node", action="append", default=None, metavar="NAME",
                   help="read this neuron as a non-spiking readout (membrane output, no threshold or reset), "
                        "e.g. an snnTorch Leaky used as the readout; repeatable")


def _read_args(p: argparse.ArgumentParser) -> None:
    from lnm_deploy.nir_io.conventions import PRODUCERS

    p.add_argument("--producer", choices=list(PRODUCERS), default=None,
                   help="who wrote the graph, when its metadata does not say (sets dt and conventions)")
    p.add_argument("--dt", type=_dt, default=None,
                   help="seconds per timestep used to discretise NIR's continuous-time neurons")
    p.add_argument("--input-shape", type=_shape, default=None, metavar="SHAPE",
                   help="input shape without batch, e.g. 2,34,34, when the graph's Input has none")


def _scale_args(p: argparse.ArgumentParser) -> None:
    """--workers / --ray-address (lnm_deploy.distributed, docs/scale.md)."""
    import os

    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="split the samples over N worker processes (default 1: this process; with "
                        "--ray-address: every CPU of the cluster)")
    p.add_argument("--ray-address", default=os.environ.get("RAY_ADDRESS") or None, metavar="ADDR",
                   type=_checked(_ray_address),
                   help="run the workers on this Ray cluster: host:port, ray://host:port or auto "
                        "(default: $RAY_ADDRESS; needs ray); an address where nothing answers within "
                        "a few seconds is an error (exit 6)")
    p.add_argument("--engine", choices=["auto", "ray", "local"], default="auto",
                   help="what runs --workers N > 1 without --ray-address: local (forked processes, one "
                        "CPU each; what auto, the default, chooses) or ray (a local Ray instance)")


def _ray_address(text: str) -> str:
    """A --ray-address (or $RAY_ADDRESS, which argparse parses as the default) checked for its
    form only: whether a cluster answers there is seen when the work starts."""
    from lnm_deploy.distributed import check_ray_address

    check_ray_address(text)
    return text.strip()


def _scale(args: argparse.Namespace) -> dict:
    return {"workers": args.workers, "ray_address": args.ray_address, "engine": args.engine}


def _data_shape(x: Any, graph: Any, path: str) -> None:
    """The shape of ``x`` read from ``path`` against ``graph``'s input, with the file named."""
    from lnm_deploy import validate

    validate.data_shape(x, graph, f"x in {path}")


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors: ``lnm-deploy run: error: <what>
    (lnm-deploy run --help lists the options)`` on stderr, exit 2 (argparse prints the whole usage
    text first; errors here are one line). Subcommands' parsers are of this class too;
    ``commands``: each command's parser (set by ``build_parser``)."""

    commands: dict[str, argparse.ArgumentParser] = {}  # noqa: RUF012  (replaced per instance)

    def error(self, message: str) -> Any:  # argparse's own signature returns NoReturn
        self.exit(2, f"{self.prog}: error: {message} ({self.prog} --help lists the options)\n")


def build_parser() -> _Parser:
    from lnm_deploy.backends import BACKENDS

    parser = _Parser(
        prog="lnm-deploy",
        description="Deploy spiking networks with learned neuron dynamics to neuromorphic targets.",
    )
    parser.add_argument("--version", action="version", version=f"lnm-deploy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("export", help="export a trained LNM model (a .safetensors file written by "
                       "lnm_deploy.model.save_model) to NIR")
    p.add_argument("model", type=path_arg, help="a .safetensors file written by lnm_deploy.model.save_model; pickles "
                   "(torch.save .pt files) are refused, never loaded: convert a trusted one with "
                   "lnm_deploy.model.convert_legacy_model")
    p.add_argument("--input-shape", type=_shape, required=True, metavar="SHAPE", help="e.g. 64 or 2,34,34")
    p.add_argument("--dt", type=float, default=1e-3, help="seconds per timestep, recorded in the graph")
    p.add_argument("--out", type=path_arg, required=True, help="the .nir file to write")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("inspect", help="layers, neuron types, shapes, parameters and metadata of a graph")
    _graph_args(p)
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--resources", action="store_true",
                   help="an artifact's mapping onto its target's cores and, with --data, the cost of one inference "
                        "(synaptic operations, neuron updates, messages, energy and latency estimates)")
    p.add_argument("--data", type=path_arg, default=None,
                   help="with --resources (refused without it): .npz with spikes x to count the cost on (fxsim)")
    p.add_argument("--target", type=_name_arg, default=None,
                   help="with --resources (refused without it): map onto this target (name or .toml) instead of the "
                        "artifact's own, after checking the artifact against its design rules")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("run", help="run a graph on spike data with a backend")
    _graph_args(p)
    p.add_argument("--data", type=path_arg, required=True, help=".npz with x (samples, timesteps, *input_shape), optional y")
    p.add_argument("--backend", choices=list(BACKENDS), default="float",
                   help="; ".join(f"{b.name}: {b.description}" for b in BACKENDS.values()))
    p.add_argument("--out", type=path_arg, required=True, help=".npz to write: output, spikes/<layer>, [v|c]/<layer>")
    p.add_argument("--states", action="store_true", help="also record membrane and synaptic states")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _scale_args(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("calibrate", help="calibrate and quantize a float graph for a target -> artifact")
    _graph_args(p)
    p.add_argument("--data", type=path_arg, required=True, help="calibration spikes: .npz with x (samples, timesteps, ...)")
    p.add_argument("--target", type=_name_arg, required=True,
                   help="a shipped target name (see 'targets') or a .toml path")
    p.add_argument("--recipe", type=_name_arg, default="default", help="a shipped recipe name or a .toml path")
    p.add_argument("--out", type=path_arg, required=True, help="the artifact to write (.nir)")
    p.add_argument("--report-dir", type=path_arg, default=None, help="report directory (default: OUT with .nir replaced by .report)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _scale_args(p)
    p.set_defaults(func=cmd_calibrate)

    p = sub.add_parser("verify", help="check an artifact: backends bit-exact with fxsim, fixed vs float")
    p.add_argument("artifact", type=path_arg, help="a calibrated artifact (.nir) written by 'calibrate'")
    p.add_argument("--data", type=path_arg, required=True, help=".npz with x (samples, timesteps, ...) and optional labels y")
    p.add_argument("--backend", action="append", choices=[b for b, v in BACKENDS.items() if v.integer],
                   help="integer backend(s) to hold against fxsim (repeatable; default: lava)")
    p.add_argument("--float", type=path_arg, default=None, metavar="GRAPH",
                   help="the float graph to compare with (default: the one the artifact was calibrated "
                        "from, read as it was then); 'dequantized': the artifact's own graph, an opt-out "
                        "the verdict shows")
    _read_args(p)
    p.add_argument("--json", type=path_arg, default=None, help="write the verification report as JSON")
    p.add_argument("--html", type=path_arg, default=None, help="write a self-contained HTML page with plots")
    p.add_argument("--backend-samples", type=_positive_int, default=None, metavar="N",
                   help="hold the backends against fxsim on the first N samples (default: all)")
    p.add_argument("--max-accuracy-drop", type=_fraction, default=0.005,
                   help="with labels: largest accepted float - fixed accuracy difference, in [0, 1] "
                        "(default 0.005)")
    p.add_argument("--min-agreement", type=_fraction, default=0.95,
                   help="without labels: smallest accepted fraction of samples where fixed point predicts "
                        "the float model's class (default 0.95)")
    from lnm_deploy.readout import MEMBRANE_READOUTS

    p.add_argument("--readout", choices=["count", "lzc", *MEMBRANE_READOUTS], default="count",
                   help="the readout the accuracy criterion uses: 'count' (arg-max of the output spike "
                        "counts, default) or 'lzc' (the Lempel-Ziv complexity readout calibrate fitted with "
                        "labels; the LZC accuracies and drift are reported either way); for a non-spiking "
                        "readout layer (LI / CubaLI) the arg-max of its membrane's maximum over time "
                        "('membrane-max'), last step ('membrane-last') or sum over time ('membrane-sum')")
    p.add_argument("--compare", type=path_arg, default=None, metavar="OTHER_ARTIFACT",
                   help="another artifact of the same network (e.g. calibrated for loihi2-lif): its accuracy and "
                        "cost per inference are shown beside this one's")
    p.add_argument("--force", action="store_true", help="overwrite --json/--html if they exist")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    _scale_args(p)
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("compile", help="compile an artifact for a backend: one ONNX golden model")
    p.add_argument("artifact", type=path_arg, help="a calibrated artifact (.nir) written by 'calibrate'")
    p.add_argument("--backend", choices=[b for b, v in BACKENDS.items() if v.compile], default="onnx",
                   help="what to compile for")
    p.add_argument("--out", type=path_arg, required=True, help="the model file to write (.onnx)")
    p.add_argument("--no-states", action="store_true", help="spikes only, no membrane/current outputs")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=cmd_compile)

    p = sub.add_parser("targets", help="the hardware targets and their key limits")
    p.add_argument("--file", type=path_arg, default=None, help="describe (and validate) this target file instead")
    p.set_defaults(func=cmd_targets)

    from lnm_deploy.demo import add_demo_parser

    add_demo_parser(sub)
    parser.commands = dict(sub.choices)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line each on stderr (lnm-deploy's own without a source location)."""
    from lnm_deploy.errors import LNMDeployWarning

    where = "" if issubclass(category, LNMDeployWarning) else f" ({category.__name__}, {filename}:{lineno})"
    print(f"lnm-deploy: warning: {message}{where}", file=sys.stderr if file is None else file)


#: Values starting with "-" that an option takes besides numbers (``--v-floor -v_th``).
_DASH_VALUES: dict[str, tuple[str, ...]] = {"--v-floor": ("-v_th",)}


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _join_dash_values(parser: argparse.ArgumentParser, argv: Sequence[str]) -> list[str]:
    """``argv`` with ``OPTION VALUE`` written ``OPTION=VALUE`` where ``OPTION`` (spelled in full) takes
    one value and ``VALUE`` starts with ``-`` and is a number in any float form (``-1e30``, ``-.5``,
    ``-inf``) or one of ``_DASH_VALUES``: argparse takes a value starting with ``-`` only in the forms
    ``-2`` and ``-2.5`` and reads ``--v-floor -1e30`` as an option without its value. No token that
    is an option is rewritten (no option is named like a number); nothing after ``--`` is."""
    commands: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            commands = dict(action.choices)
    out = list(argv)
    sub: argparse.ArgumentParser | None = None
    i = 0
    while i < len(out):
        tok = out[i]
        if tok == "--":
            break
        if sub is None:
            sub = commands.get(tok)
            i += 1
            continue
        one_value = {o for a in sub._actions if a.nargs is None for o in a.option_strings}
        nxt = out[i + 1] if i + 1 < len(out) else None
        if tok in one_value and nxt is not None and nxt.startswith("-") and \
                (_is_number(nxt) or nxt in _DASH_VALUES.get(tok, ())):
            out[i:i + 2] = [f"{tok}={nxt}"]
        i += 1
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(_join_dash_values(parser, sys.argv[1:] if argv is None else argv))
    if extra:  # said by the command's own parser: "lnm-deploy run: error: ..." (argparse: "lnm-deploy: ...")
        parser.commands.get(args.command, parser).error(f"unrecognized arguments: {' '.join(extra)}")
    func: Command = args.func
    import warnings

    warnings.showwarning = _show_warning
    from lnm_deploy.signals import Terminated, terminate_as_interrupt, terminated_by

    try:
        # SIGTERM (timeout, CI cancellations, job schedulers) and SIGHUP unwind like Ctrl-C: Lava's
        # processes are stopped, temporaries and staged outputs removed (lnm_deploy.signals).
        with terminate_as_interrupt():
            code = func(args)
            sys.stdout.flush()  # a closed pipe (| head) shows here, not at the interpreter's exit
            return code
    except LNMDeployError as e:
        print(f"lnm-deploy {args.command}: error: {e}", file=sys.stderr)
        return e.exit_code
    except Terminated as e:
        print(f"lnm-deploy: terminated ({signal_name(e.signum)})", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        signum = terminated_by()  # a SIGTERM/SIGHUP whose Terminated a library re-raised as an interrupt
        if signum is not None:
            print(f"lnm-deploy: terminated ({signal_name(signum)})", file=sys.stderr)
            return 128 + signum
        print("lnm-deploy: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `lnm-deploy inspect G.nir | head -1`: the reader left; say nothing
        import os

        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())  # Python's exit would flush into the closed pipe
        return 128 + 13  # SIGPIPE


def signal_name(signum: int) -> str:
    import signal

    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
