"""Save and load trained ``LNMSequential`` models (``lnm-deploy export`` reads these files).

A model file is ONE safetensors file (docs/model.md, "Model files"): the tensors of the model's
``state_dict()`` plus, in the safetensors header's ``__metadata__`` (a str -> str map)::

    format        "lnm-deploy.model"
    version       "2"            (version 1 was a torch.save pickle; it is never read)
    architecture  JSON: {"layers": [{"name": "fc1", "type": "Linear", "config": {...}}, ...]}
                  (an ``LNMGraph`` adds "inputs": {layer: [source, ...]}, its skips)
    producer      "lnm-deploy <version>" (informational)

:func:`load_model` never unpickles: it parses the header itself, rebuilds the layers from the
allow-list :data:`lnm_deploy.model.layers.LAYER_TYPES` (on torch's ``meta`` device, so a hostile
architecture allocates nothing), checks every tensor's name, shape and dtype, and only then reads
the tensors. Pickles (``torch.save``, ``pickle.dump``) are refused with a pointer to
:func:`convert_legacy_model`.
"""

from __future__ import annotations

import json
import os
import pickle
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lnm_deploy._version import __version__
from lnm_deploy.errors import DependencyError, UserInputError
from lnm_deploy.fileio import atomic_output, existing_file
from lnm_deploy.model.layers import (
    LAYER_TYPES,
    LNMSequential,
    layer_type,
    layer_type_of,
)

try:
    from safetensors.torch import load as _st_load
    from safetensors.torch import save as _st_save
except ImportError as e:  # pragma: no cover - depends on the environment
    raise DependencyError("lnm_deploy.model needs safetensors: pip install 'lnm-deploy[torch]'") from e

FORMAT = "lnm-deploy.model"
VERSION = "2"
# safetensors' own limit on the JSON header; anything larger is not a model file.
MAX_HEADER_BYTES = 100_000_000


def _architecture(model: LNMSequential) -> dict[str, Any]:
    layers = []
    for name, layer in model.named_layers():
        entry = layer_type_of(layer)
        layers.append({"name": name, "type": entry.name, "config": entry.config(layer)})
    inputs = getattr(model, "inputs", None)  # an LNMGraph (lnm_deploy.model.builders): its skips
    return {"layers": layers} if inputs is None else {"layers": layers, "inputs": inputs}


def _build(arch: Any, where: str) -> LNMSequential:
    """An ``LNMSequential`` on the meta device (no memory) from the architecture JSON."""
    if not isinstance(arch, dict) or not {"layers"} <= set(arch) <= {"layers", "inputs"} \
            or not isinstance(arch["layers"], list):
        raise UserInputError(f"{where}: architecture must be a JSON object {{\"layers\": [...]}} (and, for an "
                             "LNMGraph, \"inputs\": {layer: [sources]})")
    inputs = arch.get("inputs")
    if inputs is not None and not (isinstance(inputs, dict) and all(
            isinstance(v, list) and all(isinstance(s, str) for s in v) for v in inputs.values())):
        raise UserInputError(f"{where}: architecture \"inputs\" must map layer names to lists of source names")
    named: dict[str, nn.Module] = {}
    with torch.device("meta"):
        for i, item in enumerate(arch["layers"]):
            if not isinstance(item, dict) or set(item) != {"name", "type", "config"}:
                raise UserInputError(
                    f"{where}: layer {i} must be an object with keys name, type, config"
                )
            name = item["name"]
            if not isinstance(name, str) or not name:
                raise UserInputError(f"{where}: layer {i} has an invalid name {name!r}")
            if name in named:
                raise UserInputError(f"{where}: layer name {name!r} is used twice")
            try:
                named[name] = layer_type(item["type"]).from_config(item["config"])
            except UserInputError as e:
                raise UserInputError(f"{where}: layer {name!r}: {e}") from e
            except (TypeError, ValueError, RuntimeError, OverflowError) as e:  # torch's own checks
                raise UserInputError(f"{where}: layer {name!r} has an invalid config: {e}") from e
        try:
            if inputs is not None:
                from lnm_deploy.model.builders import LNMGraph

                return LNMGraph(named, inputs)
            return LNMSequential(named)
        except UserInputError as e:
            raise UserInputError(f"{where}: {e}") from e


def _check_tensors(expected: Mapping[str, Tensor], found: Mapping[str, Tensor], where: str) -> None:
    """``UserInputError`` naming the first missing, extra, mis-shaped or mis-typed tensor."""
    missing = [k for k in expected if k not in found]
    extra = [k for k in found if k not in expected]
    if missing:
        raise UserInputError(f"{where}: tensor(s) missing: {', '.join(missing)}")
    if extra:
        raise UserInputError(f"{where}: unexpected tensor(s): {', '.join(extra)}")
    for k, want in expected.items():
        got = found[k]
        if tuple(got.shape) != tuple(want.shape):
            raise UserInputError(
                f"{where}: tensor {k} has shape {tuple(got.shape)}, the architecture needs "
                f"{tuple(want.shape)}"
            )
        if got.dtype != want.dtype:
            raise UserInputError(
                f"{where}: tensor {k} has dtype {got.dtype}, the architecture needs {want.dtype}"
            )


def save_model(model: LNMSequential, path: str | os.PathLike[str]) -> Path:
    """Write ``model`` to ``path`` (recommended suffix ``.safetensors``) atomically.

    The file holds the architecture (layer names, types and constructor arguments) and every
    tensor of ``model.state_dict()``, copied to the CPU unchanged (same dtype and values). See the
    module docstring for the format.

    Raises:
        UserInputError: ``model`` is not an ``LNMSequential``, a layer's type is not in
            :data:`lnm_deploy.model.layers.LAYER_TYPES` (the message lists the known ones), a
            dtype is not float16/bfloat16/float32/float64, or the tensors do not match what the
            architecture rebuilds (e.g. a layer whose tensors were cast to mixed dtypes); the
            output's directory is missing.
    """
    if not isinstance(model, LNMSequential):
        raise UserInputError(f"save_model expects an LNMSequential, got {type(model).__name__}")
    arch = _architecture(model)
    state = {
        k: v.detach().to("cpu").clone(memory_format=torch.contiguous_format)
        for k, v in model.state_dict().items()
    }
    # Refuse to write a file that load_model would reject.
    _check_tensors(_build(arch, "model").state_dict(), state, "model")
    metadata = {
        "format": FORMAT,
        "version": VERSION,
        "architecture": json.dumps(arch, allow_nan=False),
        "producer": f"lnm-deploy {__version__}",
    }
    data = _st_save(state, metadata=metadata)  # bytes: a full disk is then a plain OSError (OutputWriteError)
    with atomic_output(path) as tmp:
        Path(tmp).write_bytes(data)
    return Path(path)


def _header(data: bytes) -> dict[str, Any] | None:
    """The safetensors JSON header of ``data``, or None if ``data`` does not start with one."""
    if len(data) < 8:
        return None
    (n,) = struct.unpack("<Q", data[:8])
    if n < 2 or n > MAX_HEADER_BYTES or 8 + n > len(data) or data[8:9] != b"{":
        return None
    try:
        header = json.loads(data[8 : 8 + n].decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return None
    return header if isinstance(header, dict) else None


def _legacy_message(path: Path, kind: str) -> str:
    dst = path.with_suffix(".safetensors")
    if dst == path:  # a pickle named .safetensors: do not suggest overwriting the source
        dst = path.with_name(f"{path.stem}.converted.safetensors")
    return (
        f"{path} is {kind}; lnm-deploy never unpickles model files, because loading a pickle runs "
        f"any code it contains. If you trust this file (e.g. an older lnm-deploy wrote it), convert "
        f"it once: python -c \"from lnm_deploy.model import convert_legacy_model; "
        f"convert_legacy_model('{path}', '{dst}')\", then use {dst}"
    )


def _zip_names(data: bytes) -> list[str]:
    """The member names of a zip archive in ``data`` (its directory only: nothing is extracted or
    run), or [] when it cannot be read."""
    import io
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as z:
            return z.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return []


def load_model(path: str | os.PathLike[str]) -> LNMSequential:
    """Read a model written by :func:`save_model` (on the CPU, in ``eval()`` mode).

    Never unpickles and never runs code from the file. NaN or infinite values load as they are
    (export reports them).

    Raises:
        UserInputError: ``path`` is missing; it is a pickle or a ``torch.save`` zip (the message
            says how to convert a trusted one with :func:`convert_legacy_model`); it is not a
            safetensors file, or its header lacks or has a wrong ``format``/``version``/
            ``architecture``; the architecture names an unknown layer type (the message lists the
            known ones) or has a bad config; a tensor is missing, extra, or of the wrong shape or
            dtype (the message names it); the tensor data is truncated or corrupt.
    """
    p = existing_file(path, "model file")
    data = p.read_bytes()
    header = _header(data)
    if header is None:
        if data[:1] == b"\x80":
            raise UserInputError(_legacy_message(p, "a pickle (torch.save or pickle.dump)"))
        if data[:4] == b"PK\x03\x04":
            names = _zip_names(data)
            if names and all(n.endswith(".npy") for n in names):
                raise UserInputError(f"{p} is a NumPy archive (.npz: data, such as --data's), not a model file "
                                     "(expected a .safetensors file written by lnm_deploy.model.save_model)")
            raise UserInputError(_legacy_message(p, "a zip archive (torch.save)"))
        raise UserInputError(
            f"{p} is not a model file (expected a .safetensors file written by "
            f"lnm_deploy.model.save_model)"
        )
    meta = header.get("__metadata__")
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        got = meta.get("format") if isinstance(meta, dict) else None
        raise UserInputError(
            f"{p} is a safetensors file but not an lnm-deploy model (format tag {got!r}, "
            f"expected {FORMAT!r}; write models with lnm_deploy.model.save_model)"
        )
    if "version" not in meta:
        raise UserInputError(f"{p}: the model file has no version")
    if meta["version"] != VERSION:
        raise UserInputError(
            f"{p}: model file version {meta['version']!r} is not supported (this lnm-deploy "
            f"reads version {VERSION})"
        )
    if "architecture" not in meta:
        raise UserInputError(f"{p}: the model file has no architecture")
    try:
        arch = json.loads(meta["architecture"])
    except (TypeError, ValueError) as e:
        raise UserInputError(f"{p}: the architecture is not valid JSON ({e})") from e
    model = _build(arch, str(p))
    try:
        tensors = _st_load(data)
    except Exception as e:  # safetensors' own parser: truncated or corrupt data
        raise UserInputError(f"{p}: corrupt tensor data ({type(e).__name__}: {e})") from e
    _check_tensors(model.state_dict(), tensors, str(p))
    model.load_state_dict(tensors, strict=True, assign=True)
    for k, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_meta:  # every state_dict entry was assigned above; this guards the invariant
            raise UserInputError(f"{p}: tensor {k} was not loaded")
    model.eval()
    return model


def _legacy_globals() -> list[Any]:
    from collections import OrderedDict

    return [entry.cls for entry in LAYER_TYPES.values()] + [LNMSequential, nn.ModuleDict, OrderedDict]


def convert_legacy_model(
    src: str | os.PathLike[str], dst: str | os.PathLike[str]
) -> Path:
    """Convert an old model file (a ``torch.save`` pickle of version 1) to the current format.

    Run this only on a file you trust. It reads ``src`` with ``torch.load(weights_only=True)``,
    torch's restricted unpickler, allowing (``torch.serialization.safe_globals``) only the layer
    classes of :data:`lnm_deploy.model.layers.LAYER_TYPES`, ``LNMSequential`` and
    ``nn.ModuleDict``: a pickle that references anything else (such as ``os.system``) is refused
    without running it. That restricted unpickler is torch's, not ours; treat an untrusted pickle
    as unsafe regardless. Writes ``dst`` with :func:`save_model` and returns its path.

    Raises:
        UserInputError: ``src`` is missing, is not a ``torch.save`` file, references a class
            outside the allow-list, or does not hold an ``LNMSequential`` (bare, or in the old
            ``{"format": "lnm-deploy.model", "model": ...}`` dict); or :func:`save_model` refuses
            the model.
    """
    p = existing_file(src, "model file")
    try:
        with torch.serialization.safe_globals(_legacy_globals()):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UserInputError(
            f"{p}: refused by torch's restricted unpickler (only lnm-deploy layer classes are "
            f"allowed): {e}"
        ) from e
    except Exception as e:  # torch's loader: not a torch.save file, truncated zip, ...
        raise UserInputError(f"{p} is not a torch.save file ({type(e).__name__}: {e})") from e
    model = obj.get("model") if isinstance(obj, dict) and obj.get("format") == FORMAT else obj
    if not isinstance(model, LNMSequential):
        raise UserInputError(f"{p} does not hold an LNMSequential (got {type(model).__name__})")
    return save_model(model, dst)
