"""The one input-validation layer, shared by the Python API and the command line.

Every public entry point (``run_float``, ``run_fx``, the Lava / ONNX backends, ``calibrate_network``,
``verify``, ``export``, ``metrics.accuracy``) and every CLI command checks its inputs here, so the
API refuses exactly what the CLI refuses, with the same message. Each function either returns the
value in its canonical form or raises ``UserInputError`` (exit code 2) naming the argument (and its
CLI option where there is one), the limit, and the fix. Nothing here prints.

- ``spikes(x, graph, what)``: binary spikes (samples, timesteps, *input_shape) -> uint8.
- ``values(x, shape, what)``: real, finite inputs of the float executor -> the array as given.
- ``labels(y, n_samples, n_classes, what)``: integer class labels -> int64.
- ``shape_option(value, option)``, ``positive_int(value, name)``, ``finite_float(value, name)``.
- ``backends(value, integer_only)``: one name or several -> a tuple of known backend names.
- ``target(value)`` / ``recipe(value)``: a ``Target`` / ``Recipe``, or a shipped name or a .toml path.
- ``npz_dataset(path)``: ``x`` and optional ``y`` from a ``.npz`` (no pickle, size-limited).
- ``float_graph(graph, entry)`` / ``fx_graph(graph, entry)``: the network an entry point runs (a
  float IR ``Graph`` / an artifact's ``FxGraph``), or an error saying what was given instead.
"""

from __future__ import annotations

import contextlib
import math
import numbers
import os
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from lnm_deploy.errors import UserInputError

Array = np.ndarray
Shape = tuple[int, ...]

#: Environment variable that sets the largest array a data file may declare, in bytes.
MAX_DATA_BYTES_ENV = "LNM_DEPLOY_MAX_DATA_BYTES"
#: Without the variable: this fraction of the memory available when the file is read.
MAX_DATA_FRACTION = 0.5


# ------------------------------------------------------------------------------------------------
# Arrays


def _input_shape(graph_or_shape: Any) -> Shape:
    """The per-step input shape of an IR ``Graph``, an ``FxGraph`` or a plain shape."""
    if isinstance(graph_or_shape, (tuple, list)):
        return tuple(int(s) for s in graph_or_shape)
    sched = graph_or_shape.schedule()
    return tuple(sched.shapes[sched.input_node])


def _array(x: Any, what: str) -> Array:
    try:
        a = np.asarray(x)
    except Exception as e:  # ragged nested lists, objects numpy cannot convert
        raise UserInputError(f"{what} is not an array ({type(e).__name__}: {e})") from e
    if a.dtype == object or a.dtype.kind not in "biuf":
        raise UserInputError(f"{what} must be a real numeric array (bool, int or float), got dtype "
                             f"{a.dtype}; convert it (complex values: take .real if that is meant)")
    return a


def _shaped(a: Array, shape: Shape, what: str, allow_empty: bool = False) -> None:
    if a.ndim != 2 + len(shape) or tuple(a.shape[2:]) != tuple(shape):
        raise UserInputError(f"{what} must be shaped (samples, timesteps, {', '.join(map(str, shape))}), "
                             f"got {a.shape}")
    if not allow_empty and (a.shape[0] == 0 or a.shape[1] == 0):
        raise UserInputError(f"{what} is empty: {a.shape} (need samples >= 1, timesteps >= 1)")


def data_shape(x: Any, graph: Any, what: str) -> None:
    """``UserInputError`` unless ``x`` is a real numeric array shaped (samples, timesteps,
    *input_shape) of ``graph`` (an IR ``Graph``, an ``FxGraph`` or the shape; zero samples or
    timesteps pass: each command's own check decides). For the CLI, which names the file in
    ``what`` before the values are checked where they are used."""
    _shaped(_array(x, what), _input_shape(graph), what, allow_empty=True)


def spikes(x: Any, graph: Any, what: str = "input", *, allow_empty: bool = False) -> Array:
    """Binary spikes shaped (samples, timesteps, *input_shape) as uint8, or ``UserInputError``.

    ``graph``: an IR ``Graph``, an ``FxGraph`` or the input shape itself. bool, integer and float
    arrays are accepted when every value is exactly 0 or 1; complex, object and string arrays, NaN
    and any other value are refused (a fixed-point target takes spikes, not currents). Zero
    samples or timesteps are refused unless ``allow_empty`` (fxsim and Lava return an empty run).
    """
    a = _array(x, what)
    _shaped(a, _input_shape(graph), what, allow_empty)
    if a.dtype != np.bool_:
        bad = (a != 0) & (a != 1)
        if bad.any():
            i = tuple(int(k) for k in np.argwhere(bad)[0])
            raise UserInputError(f"{what} must hold binary spikes (0 or 1); got {a[i]!r} at index {i}: a "
                                 "fixed-point target takes spikes, encode currents as spikes first")
    return np.ascontiguousarray(a, dtype=np.uint8)


def values(x: Any, graph: Any, what: str = "input") -> Array:
    """Real, finite inputs shaped (samples, timesteps, *input_shape) for the float executor (which
    also takes currents); returned as given (no copy), or ``UserInputError``."""
    a = _array(x, what)
    _shaped(a, _input_shape(graph), what)
    if a.dtype.kind == "f" and not np.all(np.isfinite(a)):
        raise UserInputError(f"{what} has NaN or infinite values")
    return a


def labels(y: Any, n_samples: int, n_classes: int | None = None, what: str = "labels") -> Array:
    """Class labels shaped (n_samples,) as int64: integer-valued, >= 0 and < ``n_classes``."""
    try:
        a = np.asarray(y)
    except Exception as e:
        raise UserInputError(f"{what} is not an array ({type(e).__name__}: {e})") from e
    if a.dtype == object or a.dtype.kind not in "iuf":
        raise UserInputError(f"{what} must be integer class indices, got dtype {a.dtype}")
    if a.shape != (n_samples,):
        raise UserInputError(f"{what} must be shaped ({n_samples},) (one per sample), got {a.shape}")
    if a.dtype.kind == "f":
        if not np.all(np.isfinite(a)) or not np.all(a == np.round(a)):
            raise UserInputError(f"{what} must be whole numbers (class indices); got non-integer values")
    if a.size and a.min() < 0:
        raise UserInputError(f"{what} must be >= 0 (class indices); got {a.min()!r}")
    if n_classes is not None and a.size and a.max() >= n_classes:
        raise UserInputError(f"{what} must be < {n_classes} (the network has {n_classes} outputs); "
                             f"got {a.max()!r}")
    return a.astype(np.int64)


# ------------------------------------------------------------------------------------------------
# Scalars and options


def fraction(value: Any, name: str) -> float:
    """A finite number in [0, 1] (accuracy drops, agreement floors); -0.0 becomes 0.0."""
    v = finite_float(value, name)
    if not 0.0 <= v <= 1.0:
        raise UserInputError(f"{name} must be a number in [0, 1], got {value!r}")
    return v + 0.0


def shape_option(value: Any, option: str = "--input-shape") -> Shape:
    """A shape without batch and time: an int (``64`` -> ``(64,)``), a sequence of ints, or text
    ``"2,34,34"`` / ``"2x34x34"``; every size >= 1."""
    if isinstance(value, str):
        try:
            shape = tuple(int(s) for s in value.replace("x", ",").split(",") if s.strip())
        except ValueError:
            raise UserInputError(f"{option}: not a shape: {value!r} (use e.g. 2,34,34)") from None
    elif isinstance(value, numbers.Integral) and not isinstance(value, bool):
        shape = (int(value),)
    else:
        try:
            items = list(value)
        except TypeError:
            raise UserInputError(f"{option}: not a shape: {value!r} (use an int or a tuple of ints, "
                                 "e.g. (2, 34, 34))") from None
        if not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in items):
            raise UserInputError(f"{option}: not a shape: {value!r} (sizes must be integers)")
        shape = tuple(int(s) for s in items)
    if not shape or min(shape) < 1:
        raise UserInputError(f"{option}: not a shape: {value!r} (sizes must be >= 1, e.g. 2,34,34)")
    return shape


def positive_int(value: Any, name: str) -> int:
    """An integer >= 1 (bools and non-integral floats are refused)."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Integral, float)) or (
            isinstance(value, float) and not value.is_integer()):
        raise UserInputError(f"{name} must be a positive integer, got {value!r}")
    if int(value) < 1:
        raise UserInputError(f"{name} must be >= 1, got {value!r}")
    return int(value)


def finite_float(value: Any, name: str, *, positive: bool = False, minimum: float | None = None) -> float:
    """A finite real number (optionally > 0, or >= ``minimum``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise UserInputError(f"{name} must be a number, got {value!r}")
    v = float(value)
    if not math.isfinite(v):
        raise UserInputError(f"{name} must be finite, got {value!r}")
    if positive and v <= 0:
        raise UserInputError(f"{name} must be > 0, got {value!r}")
    if minimum is not None and v < minimum:
        raise UserInputError(f"{name} must be >= {minimum}, got {value!r}")
    return v


def backends(value: str | Iterable[str], *, integer_only: bool = True,
             option: str = "--backend") -> tuple[str, ...]:
    """Backend names (one string or several; none is allowed), duplicates dropped, each known (and,
    with ``integer_only``, one that runs an artifact's integers)."""
    from lnm_deploy.backends import BACKENDS

    names = [value] if isinstance(value, str) else value
    try:
        names = list(names)
    except TypeError:
        raise UserInputError(f"{option}: expected a backend name or a list of names, got {value!r}") from None
    allowed = [k for k, b in BACKENDS.items() if b.integer or not integer_only]
    for n in names:
        if not isinstance(n, str) or n not in allowed:
            what = "integer backends" if integer_only else "backends"
            raise UserInputError(f"{option} {n!r}: not one of the {what} ({', '.join(allowed)})")
    return tuple(dict.fromkeys(names))


def _named(value: Any, cls: type, load: Any, what: str) -> Any:
    """``value`` if it is a ``cls``, else loaded by ``load`` from a shipped name or a .toml path."""
    if isinstance(value, cls):
        return value
    if isinstance(value, (str, os.PathLike)):
        return load(value)
    raise UserInputError(f"{what} must be a {cls.__name__}, a shipped {what} name or a .toml path, got "
                         f"{type(value).__name__}")


def target(value: Any) -> Any:
    """A ``Target``: passed through, or loaded from a shipped name / a .toml path."""
    from lnm_deploy.targets import Target, load_target

    return _named(value, Target, load_target, "target")


def recipe(value: Any) -> Any:
    """A ``Recipe``: passed through, loaded from a shipped name / a .toml path, or the default (None)."""
    from lnm_deploy.calibrate.recipes import Recipe, load_recipe

    return _named("default" if value is None else value, Recipe, load_recipe, "recipe")


# ------------------------------------------------------------------------------------------------
# Data files


def max_data_bytes() -> int:
    """The largest array a data file may declare: ``$LNM_DEPLOY_MAX_DATA_BYTES`` if set, else
    ``MAX_DATA_FRACTION`` of the memory available now (psutil)."""
    env = os.environ.get(MAX_DATA_BYTES_ENV)
    if env:
        try:
            limit = int(float(env))
        except ValueError:
            raise UserInputError(f"{MAX_DATA_BYTES_ENV}={env!r} is not a number of bytes") from None
        except OverflowError:  # inf, 1e400
            raise UserInputError(f"{MAX_DATA_BYTES_ENV}={env!r} is not a finite number of bytes "
                                 "(give a size such as 64e9, or unset it for the default)") from None
        if limit < 1:
            raise UserInputError(f"{MAX_DATA_BYTES_ENV}={env!r} must be >= 1")
        return limit
    import psutil

    return int(psutil.virtual_memory().available * MAX_DATA_FRACTION)


def _declared_sizes(p: Path) -> dict[str, tuple[Shape, np.dtype, int]]:
    """Each ``.npy`` member's (shape, dtype, bytes) from its header, without loading any data."""
    from numpy.lib import format as npformat

    out: dict[str, tuple[Shape, np.dtype, int]] = {}
    with zipfile.ZipFile(p) as zf:
        for info in zf.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
            with zf.open(info) as fh:
                version = npformat.read_magic(fh)
                if version == (1, 0):
                    shape, _, dtype = npformat.read_array_header_1_0(fh)
                else:
                    shape, _, dtype = npformat.read_array_header_2_0(fh)
            if dtype.hasobject:
                raise UserInputError(f"{p}: array {name!r} holds Python objects ({dtype}); lnm-deploy "
                                     "never unpickles data: save plain numeric arrays")
            out[name] = (tuple(shape), dtype, math.prod(shape) * dtype.itemsize)
    return out


def npz_dataset(path: str | os.PathLike[str]) -> tuple[Array, Array | None]:
    """``x`` (samples, timesteps, *input_shape) and optional labels ``y`` (samples,) from ``.npz``.

    Read with ``allow_pickle=False``; each member's declared size (shape x itemsize, from its
    ``.npy`` header) is checked against ``max_data_bytes()`` before anything is decompressed.
    """
    from lnm_deploy.fileio import existing_file

    p = existing_file(path, "data file")
    if not zipfile.is_zipfile(p):
        head = b"?"
        with contextlib.suppress(OSError), open(p, "rb") as f:
            head = f.read(8)
        kind = ("an empty file" if not head else "a .npy file" if head.startswith(b"\x93NUMPY")
                else "an HDF5 file, a .nir graph?" if head.startswith(b"\x89HDF")
                else "a truncated zip archive" if head.startswith(b"PK") else "not a zip archive")
        raise UserInputError(f"{p} is not a readable .npz file ({kind}); save x and y with numpy.savez")
    limit = max_data_bytes()
    try:
        sizes = _declared_sizes(p)
    except UserInputError:
        raise
    except Exception as e:  # bad zip members, bad .npy headers
        raise UserInputError(f"{p} is not a readable .npz file ({type(e).__name__}: {e})") from e
    for name in ("x", "y"):
        if name in sizes and sizes[name][2] > limit:
            shape, dtype, nbytes = sizes[name]
            raise UserInputError(
                f"{p}: array {name!r} declares shape {shape} of {dtype} = {nbytes} bytes, above the "
                f"limit of {limit} bytes ({MAX_DATA_BYTES_ENV}, default {MAX_DATA_FRACTION:g} of "
                "available memory); split the data or raise the limit")
    try:
        with np.load(p, allow_pickle=False) as z:
            if "x" not in z.files:
                raise UserInputError(f"{p} has no array 'x' (it has {sorted(z.files)})")
            x = z["x"]
            y = z["y"] if "y" in z.files else None
    except UserInputError:
        raise
    except MemoryError as e:
        raise UserInputError(f"{p}: not enough memory to load it; split the data") from e
    except Exception as e:  # zipfile/pickle/format errors: name the file, not the library
        raise UserInputError(f"{p} is not a readable .npz file ({type(e).__name__}: {e})") from e
    if x.ndim < 3:
        raise UserInputError(f"{p}: 'x' must be shaped (samples, timesteps, *input_shape), got {x.shape}")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise UserInputError(f"{p}: 'x' is empty {x.shape}")
    if x.dtype.kind not in "biuf":
        raise UserInputError(f"{p}: 'x' must be real numbers (bool, int or float), got {x.dtype}")
    if y is not None:
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise UserInputError(f"{p}: 'y' must be shaped ({x.shape[0]},), got {y.shape}")
        y = labels(y, x.shape[0], what=f"{p}: 'y'")
    return x, y


# ------------------------------------------------------------------------------------------------
# Whole calls


def check_spikes(x: Any, graph: Any, what: str = "calibration data") -> Array:
    """``spikes`` under its old name (it lived in ``lnm_deploy.calibrate.pipeline``)."""
    return spikes(x, graph, what)


def n_outputs(graph: Any) -> int:
    """The number of output values per step (classes, for ``labels``) of an IR or Fx graph."""
    sched = graph.schedule()
    return math.prod(sched.shapes[sched.output_node])


# ------------------------------------------------------------------------------------------------
# The network an entry point runs


_EXPECTS = {
    "float": "a float IR Graph (lnm_deploy.load(path), or an artifact's .graph)",
    "integer": "an FxGraph (an artifact's .fx, or calibrate_network's result.artifact.fx)",
}
# (what is expected, what was given) -> the fix
_FIXES = {
    ("integer", "float"): "calibrate it first (lnm_deploy.calibrate.calibrate_network, CLI lnm-deploy calibrate) and "
                          "pass result.artifact.fx, or run the float graph with run_float (backend 'float')",
    ("integer", "artifact"): "pass its .fx (the integer network)",
    ("integer", "result"): "pass its .artifact.fx (the integer network)",
    ("integer", "path"): "read the artifact with lnm_deploy.artifact.read_artifact(path) and pass its .fx",
    ("integer", "nir"): "read it with lnm_deploy.load and calibrate it first (calibrate_network), then pass "
                        "result.artifact.fx",
    ("integer", "other"): "pass an artifact's .fx (lnm_deploy.artifact.read_artifact(path).fx)",
    ("float", "integer"): "an integer network runs with run_fx (backends fxsim, lava, onnx); its artifact's "
                          ".graph is the float model run_float runs",
    ("float", "artifact"): "pass its .graph (the float model), or its .fx to run_fx",
    ("float", "result"): "pass its .artifact.graph (the float model), or .artifact.fx to run_fx",
    ("float", "path"): "read it first with lnm_deploy.load(path)",
    ("float", "nir"): "convert it first with lnm_deploy.load(nir_graph)",
    ("float", "other"): "read a .nir file with lnm_deploy.load(path)",
}


def _what_it_is(value: Any) -> tuple[str, str]:
    """``(words, kind)`` for a value given where a network was expected; kind is one of
    ``float``, ``integer``, ``artifact``, ``result``, ``path``, ``nir``, ``other``."""
    from lnm_deploy.fixedpoint.graph import FxGraph
    from lnm_deploy.ir import Graph

    name = type(value).__name__
    if isinstance(value, Graph):
        return "a float Graph", "float"
    if isinstance(value, FxGraph):
        return "an FxGraph (an integer network)", "integer"
    if hasattr(value, "fx") and hasattr(value, "graph"):  # lnm_deploy.artifact.Artifact
        return f"an {name}", "artifact"
    if hasattr(value, "artifact"):  # lnm_deploy.calibrate.CalibrationResult
        return f"a {name}", "result"
    if isinstance(value, (str, os.PathLike)):
        return f"a path ({os.fspath(value)!r})", "path"
    if name == "NIRGraph":
        return "a nir.NIRGraph", "nir"
    return ("None" if value is None else f"a {name}"), "other"


def _network(graph: Any, expects: str, entry: str) -> Any:
    words, kind = _what_it_is(graph)
    if kind == expects:
        return graph
    raise UserInputError(f"{entry} needs {_EXPECTS[expects]}; got {words}: {_FIXES[expects, kind]}")


def float_graph(graph: Any, entry: str) -> Any:
    """``graph`` if it is a float IR ``Graph`` (what ``run_float`` and ``calibrate_network`` take),
    else ``UserInputError`` naming ``entry``, what it got (an ``FxGraph``, an ``Artifact``, a path,
    a ``nir.NIRGraph``, None...) and the fix (load the file; pass the artifact's ``.graph``)."""
    return _network(graph, "float", entry)


def fx_graph(graph: Any, entry: str) -> Any:
    """``graph`` if it is an ``FxGraph`` (an artifact's integer network: what ``run_fx`` and the Lava
    and ONNX backends run), else ``UserInputError`` naming ``entry``, what it got (a float
    ``Graph``, an ``Artifact``, a path, None...) and the fix (calibrate first; pass ``.fx``)."""
    return _network(graph, "integer", entry)


def ir_graph(graph: Any, what: str = "calibrate_network") -> Any:
    """An IR ``Graph``, or ``UserInputError`` (``float_graph`` with ``what`` as the entry point)."""
    return float_graph(graph, what)


def calibration_args(graph: Any, x: Any, target_: Any, recipe_: Any, y: Any = None
                     ) -> tuple[Any, Array, Any, Any, Array | None]:
    """``calibrate_network``'s arguments checked and coerced (graph, spikes, target, recipe, labels)."""
    graph = ir_graph(graph)
    x = spikes(x, graph, "calibration data")
    t, r = target(target_), recipe(recipe_)
    if y is not None:
        y = labels(y, x.shape[0], n_outputs(graph), "calibration labels")
    return graph, x, t, r, y


def verify_options(backends_: Any, max_accuracy_drop: Any, backend_samples: Any
                   ) -> tuple[tuple[str, ...], float, int | None]:
    """``verify``'s options: integer backend names (one string or several), the accepted accuracy
    drop (a fraction in [0, 1]) and the number of backend samples (None or >= 1)."""
    names = backends(backends_, integer_only=True, option="--backend")
    drop = fraction(max_accuracy_drop, "max_accuracy_drop (--max-accuracy-drop)")
    n = None if backend_samples is None else positive_int(backend_samples,
                                                          "backend_samples (--backend-samples)")
    return names, drop, n
