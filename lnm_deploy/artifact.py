"""The deployable artifact: one NIR file that any NIR reader can run, carrying the exact integers.

Layout of an artifact (``.nir``, HDF5):

- the nodes are a valid NIR graph of the **dequantized** network (float parameters equal to the
  integers times their scales), so any NIR reader runs the quantized network in float;
- graph metadata ``lnm_fx``: the integer network (``FxGraph``) encoded by
  ``lnm_deploy.fixedpoint.encode_fxgraph``, the exact spec that fxsim, Lava and ONNX execute;
- graph metadata ``lnm_artifact``: a JSON document with the target, the recipe, the calibration
  record (ranges, scales, overflow proofs, fits) and provenance (versions, the float graph's path
  and SHA-256).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lnm_deploy.errors import GraphError, LNMDeployError, UserInputError
from lnm_deploy.fileio import json_default
from lnm_deploy.fixedpoint import FxGraph, decode_fxgraph, encode_fxgraph
from lnm_deploy.ir import Graph

if TYPE_CHECKING:
    from lnm_deploy.targets import Target

FX_KEY = "lnm_fx"
RECORD_KEY = "lnm_artifact"


@dataclass
class Artifact:
    """A calibrated network: the dequantized float graph, the integer graph and their record."""

    graph: Graph
    fx: FxGraph
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def target(self) -> str:
        return self.fx.target


def write_artifact(artifact: Artifact, path: str | os.PathLike[str], *, force: bool = True) -> Path:
    """Write ``artifact`` to ``path`` atomically (validated first; nothing is left on failure)."""
    from lnm_deploy.nir_io import write_nir

    extra = {
        FX_KEY: encode_fxgraph(artifact.fx),
        RECORD_KEY: json.dumps(artifact.record, default=json_default, sort_keys=True),
    }
    return write_nir(artifact.graph, path, extra_metadata=extra, force=force)


def _split(path: str | os.PathLike[str], **read_kw: Any) -> tuple[Graph, FxGraph | None, dict[str, Any]]:
    from lnm_deploy.nir_io import from_nir, read_nir_graph

    ng = read_nir_graph(path)
    meta = dict(ng.metadata or {})
    fx_meta = meta.pop(FX_KEY, None)
    raw_record = meta.pop(RECORD_KEY, None)
    ng.metadata = meta
    graph = from_nir(ng, _source=str(path), **read_kw)
    if fx_meta is None:
        return graph, None, {}
    try:
        fx = decode_fxgraph(fx_meta)
        record = json.loads(str(raw_record)) if raw_record is not None else {}
    except (ValueError, KeyError, TypeError) as e:
        raise GraphError(f"{path}: the artifact's integer network is unreadable ({e})") from e
    except LNMDeployError as e:
        raise GraphError(f"{path}: the artifact's integer network is invalid ({e})") from e
    if not isinstance(record, dict):
        raise GraphError(f"{path}: the artifact's record ('{RECORD_KEY}') is {type(record).__name__}, "
                         "not a JSON object; recalibrate to rewrite it")
    check_integers(fx, record, path)
    return graph, fx, record


def artifact_target(fx: FxGraph, record: dict[str, Any], path: str | os.PathLike[str]) -> Target:
    """The target an artifact was calibrated for: the description embedded in its record (written
    by ``calibrate``; TOML text in the current format or, for artifacts written before target
    sections were keyed by primitive, in the old one, converted by ``target_from_toml``), else,
    for artifacts written before it was embedded, the shipped target of that name. ``GraphError``
    when neither exists or the embedded one is not the artifact's."""
    from lnm_deploy.targets import available_targets, load_target, target_from_toml

    spec = record.get("target_spec")
    if isinstance(spec, dict) and isinstance(spec.get("toml"), str):
        try:
            target = target_from_toml(spec["toml"], f"{path} (embedded target '{spec.get('name')}')")
        except LNMDeployError as e:
            raise GraphError(f"{path}: the artifact's embedded target description is invalid ({e})") from e
        if target.name != fx.target:
            raise GraphError(f"{path}: the integer network is for target '{fx.target}' but the embedded "
                             f"target description is '{target.name}' (the file was modified)")
        return target
    if fx.target in available_targets():
        return load_target(fx.target)
    raise GraphError(f"{path}: the artifact does not embed its target description and '{fx.target}' is "
                     "not a shipped target, so its integers cannot be checked: calibrate it again")


def check_integers(fx: FxGraph, record: dict[str, Any], path: str | os.PathLike[str]) -> None:
    """Re-check every integer of ``fx`` against the artifact's target (the design rules of
    ``lnm_deploy.targets.check_graph``: bit widths, ranges, exponents, fan-in, primitives), so that a
    modified or corrupted artifact is refused by every command that reads it (``GraphError``, exit 3)
    instead of being run and reported on."""
    from lnm_deploy.targets import check_graph

    target = artifact_target(fx, record, path)
    try:
        check_graph(fx, target)
    except LNMDeployError as e:
        raise GraphError(f"{path}: the artifact's integers do not satisfy its target '{target.name}' "
                         f"({e}); was the file modified after calibration?") from e


def read_artifact(path: str | os.PathLike[str]) -> Artifact:
    """Read an artifact written by ``write_artifact`` (``lnm-deploy calibrate``)."""
    graph, fx, record = _split(path)
    if fx is None:
        raise UserInputError(
            f"{path} is a float graph, not a calibrated artifact: run "
            "'lnm-deploy calibrate GRAPH.nir --data CALIB.npz --target NAME --out ARTIFACT.nir' first"
        )
    return Artifact(graph=graph, fx=fx, record=record)


def read_graph_or_artifact(path: str | os.PathLike[str], **read_kw: Any) -> tuple[Graph, Artifact | None]:
    """The float graph in ``path`` and, when the file is an artifact, the artifact."""
    graph, fx, record = _split(path, **read_kw)
    return graph, (Artifact(graph=graph, fx=fx, record=record) if fx is not None else None)
