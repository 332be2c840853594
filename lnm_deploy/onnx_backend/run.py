"""Run an lnm-deploy ONNX model with onnxruntime (CPU) and return a ``RunResult``.

The model describes itself (``metadata_props``: ``input``, ``output``, ``layers``), so a model
file runs without its ``FxGraph``. ``compile_onnx`` writes the model of an artifact file.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lnm_deploy.errors import UserInputError
from lnm_deploy.execute import RunResult
from lnm_deploy.fileio import sha256_file
from lnm_deploy.fixedpoint.graph import FxGraph
from lnm_deploy.onnx_backend.build import META_FORMAT, build_onnx, require, require_onnx

if TYPE_CHECKING:
    import onnxruntime



def _ort() -> Any:
    return require("onnxruntime")


def onnx_session(model: Any, *, threads: int | None = None) -> onnxruntime.InferenceSession:
    """An onnxruntime CPU session for a ``ModelProto``, serialized bytes or a ``.onnx`` path."""
    ort = _ort()
    if isinstance(model, ort.InferenceSession):
        return model
    if isinstance(model, (str, os.PathLike)):
        data: bytes = Path(model).read_bytes()
    elif isinstance(model, bytes):
        data = model
    else:
        data = model.SerializeToString()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # unused Scan state outputs are expected, not worth a warning
    if threads:
        opts.intra_op_num_threads = threads
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def model_layout(session: onnxruntime.InferenceSession) -> dict[str, Any]:
    """The layout an lnm-deploy model declares: input name/shape, output name, layers."""
    meta = session.get_modelmeta().custom_metadata_map
    if meta.get("format") != META_FORMAT:
        raise UserInputError(f"not an lnm-deploy ONNX model (metadata format {meta.get('format')!r})")
    return {"input": json.loads(meta["input"]), "output": meta["output"],
            "layers": json.loads(meta["layers"])}


def _check_input(x: Any, in_shape: tuple[int, ...]) -> np.ndarray:
    # Empty inputs are refused there too: onnxruntime's Scan crashes (SIGFPE) on zero steps.
    from lnm_deploy import validate

    return validate.spikes(x, in_shape, "input")


def run_onnx_model(model: Any, x: Any, *, record: bool = False, progress: bool = False,
                   chunk: int | None = None) -> RunResult:
    """Run an lnm-deploy ONNX model (session, ``ModelProto``, bytes or path) on spikes ``x``
    (samples, timesteps, *input_shape). Same ``RunResult`` layout as ``run_fx``.

    ``record`` needs a model built with ``states=True``. ``progress`` shows a bar over chunks of
    samples (``chunk`` samples per ``run``; default all at once, or about 20 chunks with progress).
    """
    sess = onnx_session(model)
    lay = model_layout(sess)
    in_name = lay["input"]["name"]
    xs = _check_input(x, tuple(lay["input"]["shape"][2:]))
    names = [lay["output"]] + [ly["name"] for ly in lay["layers"]]
    if record:
        missing = [ly["name"] for ly in lay["layers"] if not ly["states"]]
        if missing:
            raise UserInputError(
                f"this ONNX model has no state outputs for {missing}; build it with states=True"
            )
        names += [f"{ly['name']}.{k}" for ly in lay["layers"] for k in ly["states"]]
    n = xs.shape[0]
    step = chunk or (max(1, -(-n // 20)) if progress else n)
    starts = range(0, n, step)
    if progress:
        from lnm_deploy.progress import progress as progress_bar

        starts = progress_bar(starts, desc="onnxruntime", unit="chunk")
    parts = [sess.run(names, {in_name: xs[i : i + step]}) for i in starts]
    got = {k: (np.concatenate([p[j] for p in parts]) if len(parts) > 1 else parts[0][j])
           for j, k in enumerate(names)}
    # A non-spiking readout's (all-0) spike tensor is not a spike output (``output_state``).
    spikes = {ly["name"]: got[ly["name"]] for ly in lay["layers"] if not ly.get("output_state")}
    states: dict[str, dict[str, np.ndarray]] = {}
    if record:
        states = {ly["name"]: {k: got[f"{ly['name']}.{k}"] for k in ly["states"]} for ly in lay["layers"]}
    return RunResult(output=got[lay["output"]], spikes=spikes, states=states)


def run_onnx(fx: FxGraph, x: Any, *, record: bool = False, progress: bool = False,
             engine: str = "auto") -> RunResult:
    """Build ``fx``'s ONNX model and run it with onnxruntime on the CPU (see ``run_onnx_model``);
    ``UserInputError`` when ``fx`` is not an ``FxGraph`` (an artifact's ``.fx``)."""
    from lnm_deploy import validate

    validate.fx_graph(fx, "run_onnx")
    return run_onnx_model(build_onnx(fx, states=record, engine=engine), x, record=record,
                          progress=progress)


def compile_onnx(artifact_path: str | os.PathLike[str], out_path: str | os.PathLike[str], *,
                 force: bool = False, states: bool = True, engine: str = "auto") -> Path:
    """Write the ONNX model of an artifact file to ``out_path`` atomically; returns the path.

    Metadata: ``target``, ``artifact_sha256`` (of the artifact file), ``artifact`` (its file
    name), ``lnm_deploy_version`` and the layout keys ``build_onnx`` writes.
    """
    from lnm_deploy.artifact import read_artifact
    from lnm_deploy.fileio import existing_file
    from lnm_deploy.outputs import Outputs

    require_onnx()
    src = existing_file(artifact_path, "artifact")
    with Outputs(force=force) as outs:
        outs.inputs(ARTIFACT=src)
        outs.file(out_path, option="--out")  # checked before any work
        art = read_artifact(src)
        model = build_onnx(art.fx, states=states, engine=engine,
                           metadata={"artifact_sha256": sha256_file(src), "artifact": src.name})
        outs.write_bytes(out_path, model.SerializeToString())
    return Path(out_path)
