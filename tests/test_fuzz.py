"""Fuzz and bad-input suite: whatever a user feeds lnm-deploy, it answers with a result or a typed
``LNMDeployError`` (CLI exit code 2, 3, 4 or 5), never another exception or a traceback.

Inputs: hypothesis-generated NIR graphs, valid and corrupted (NaN / inf / negative parameters,
wrong dtypes, shape mismatches between connected nodes, dangling edges, cycles without a neuron,
unknown or unsupported nodes, missing Input, missing datasets, truncated or overwritten HDF5
bytes), through ``lnm_deploy.load``, ``lnm-deploy inspect`` and a small ``calibrate``; ``.npz``
data files (random arrays, dtypes, shapes and names, pickled objects, random bytes, truncated
zips) through ``lnm-deploy run``; target and recipe TOML (random bytes, random documents, the
shipped files with one key changed) through ``load_target`` / ``load_recipe``.

Run time: the default run of this file takes well under a minute (each test has a small example
budget; under ``CI=true`` the examples are derandomized, see tests/conftest.py). For a long run by
hand, select the ``fuzz-long`` profile, which multiplies every budget by 50:

    HYPOTHESIS_PROFILE=fuzz-long PYTHONPATH=$PWD .venv/bin/python -m pytest tests/test_fuzz.py -q

(``FUZZ_SCALE=<n>`` scales the budgets by ``n`` instead.) A failure prints the falsifying example
and a reproduction blob (``print_blob``); add it with ``@example`` or ``@reproduce_failure``.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import h5py
import nir
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import lnm_deploy
import lnm_deploy.verify
from lnm_deploy.calibrate import calibrate_network, load_recipe
from lnm_deploy.cli import main
from lnm_deploy.configfile import shipped_files, tomllib
from lnm_deploy.errors import LNMDeployError
from lnm_deploy.ir import Affine, Graph, Neuron, sequential
from lnm_deploy.nir_io import write_nir
from lnm_deploy.targets import load_target

EXIT_TYPED = {2, 3, 4, 5}
SCALE = float(os.environ.get("FUZZ_SCALE") or (50 if os.environ.get("HYPOTHESIS_PROFILE") == "fuzz-long" else 1))


def fuzz(examples: int) -> Callable[[Any], Any]:
    """Settings for one fuzz test: ``examples`` times ``SCALE``, no deadline (the first call of
    a backend compiles kernels), the loaded profile's other settings (derandomized under CI)."""
    return settings(max_examples=max(1, int(examples * SCALE)), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much])


@contextlib.contextmanager
def workdir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="lnm-fuzz-") as d:
        yield Path(d)


def typed_or_value(fn: Callable[[], Any]) -> Any:
    """``fn()``'s value, or None when it raised an ``LNMDeployError`` with a typed exit code."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            value = fn()
        except LNMDeployError as e:
            assert e.exit_code in EXIT_TYPED, (type(e).__name__, str(e))
            assert str(e), type(e).__name__
            event(type(e).__name__)
            return None
    event("ok")
    return value


def cli(args: list[str]) -> tuple[int, str]:
    """``lnm-deploy ARGS`` in process: (exit code, stderr). An argparse exit counts as its code."""
    err, out = io.StringIO(), io.StringIO()
    with warnings.catch_warnings(), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        warnings.simplefilter("ignore")
        try:
            code = main(args)
        except SystemExit as e:
            code = int(e.code or 0)
    text = err.getvalue()
    assert "Traceback" not in text, text
    return code, text


# ------------------------------------------------------------------------------------------------
# NIR graphs

NEURONS = ("LIF", "LI", "IF", "I", "CubaLIF", "CubaLI")
LAYERS = ("Linear", "Affine", "Scale", "Threshold", *NEURONS)
NEURON_FIELDS = {
    "LIF": ("tau", "r", "v_leak", "v_threshold"), "LI": ("tau", "r", "v_leak"), "IF": ("r", "v_threshold"),
    "I": ("r",), "CubaLIF": ("tau_mem", "tau_syn", "r", "v_leak", "v_threshold"),
    "CubaLI": ("tau_mem", "tau_syn", "r", "v_leak"),
}
RANGES = {"tau": (1e-3, 5e-2), "tau_mem": (1e-3, 5e-2), "tau_syn": (1e-3, 5e-2), "r": (0.5, 5.0),
          "v_leak": (-0.5, 0.5), "v_threshold": (0.2, 2.0)}
BAD_VALUES = (np.nan, np.inf, -np.inf, 0.0, -1.0, -1e-3, 1e300, -1e300)
CORRUPTIONS = ("nan", "negative", "dtype", "shape", "dangling", "cycle", "unsupported", "no_input",
               "input_shape", "self_loop", "duplicate_edge", "orphan")


def _floats(draw: st.DrawFn, shape: tuple[int, ...], lo: float, hi: float) -> np.ndarray:
    return draw(hnp.arrays(np.float64, shape, elements=st.floats(lo, hi, allow_nan=False, width=64)))


def _node(draw: st.DrawFn, kind: str, width: int) -> tuple[nir.NIRNode, int]:
    if kind in ("Linear", "Affine"):
        out = draw(st.integers(1, 5))
        w = _floats(draw, (out, width), -2.0, 2.0)
        if kind == "Linear":
            return nir.Linear(weight=w), out
        return nir.Affine(weight=w, bias=_floats(draw, (out,), -0.5, 0.5)), out
    if kind == "Scale":
        return nir.Scale(scale=_floats(draw, (width,), -2.0, 2.0)), width
    if kind == "Threshold":
        return nir.Threshold(threshold=_floats(draw, (width,), 0.1, 2.0)), width
    params = {f: _floats(draw, (width,), *RANGES[f]) for f in NEURON_FIELDS[kind]}
    if kind in ("CubaLIF", "CubaLI"):
        params["w_in"] = np.ones(width)
    return getattr(nir, kind)(**params), width


@st.composite
def nir_graphs(draw: st.DrawFn, corrupt: bool = True, layers: tuple[str, ...] = LAYERS,
               last: tuple[str, ...] = ()) -> tuple[dict[str, nir.NIRNode], list[tuple[str, str]], list[str]]:
    """(nodes, edges, applied corruptions) of a chain Input -> layers -> Output (with ``last``:
    pairs of Linear/Affine and one of ``layers``, then Linear/Affine and one of ``last``)."""
    width = draw(st.integers(1, 5))
    nodes: dict[str, nir.NIRNode] = {"input": nir.Input(np.array([width]))}
    edges: list[tuple[str, str]] = []
    prev = "input"
    if last:  # what a fixed-point target can take: (synapse, neuron) pairs, spiking at the end
        kinds = [k for _ in range(draw(st.integers(0, 2)))
                 for k in (draw(st.sampled_from(("Linear", "Affine"))), draw(st.sampled_from(layers)))]
        kinds += [draw(st.sampled_from(("Linear", "Affine"))), draw(st.sampled_from(last))]
    else:
        kinds = draw(st.lists(st.sampled_from(layers), max_size=4))
    for i, kind in enumerate(kinds):
        node, width = _node(draw, kind, width)
        nodes[f"n{i}"] = node
        edges.append((prev, f"n{i}"))
        prev = f"n{i}"
    nodes["output"] = nir.Output(np.array([width]))
    edges.append((prev, "output"))
    applied = draw(st.lists(st.sampled_from(CORRUPTIONS), max_size=2)) if corrupt else []
    names = [n for n in nodes if n not in ("input", "output")]
    for c in applied:
        if c in ("nan", "negative", "dtype", "shape") and names:
            name = draw(st.sampled_from(names))
            node = nodes[name]
            fields = [f for f in node.__dataclass_fields__ if isinstance(getattr(node, f), np.ndarray)
                      and f not in ("input_type", "output_type")]
            if not fields:
                continue
            f = draw(st.sampled_from(fields))
            try:  # (a field a first corruption made non-numeric stays as it is)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    a = np.array(getattr(node, f), dtype=np.float64)
            except (TypeError, ValueError):
                continue
            if a.size == 0:
                continue
            if c == "nan":
                a.reshape(-1)[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from(BAD_VALUES[:3]))
            elif c == "negative":
                a.reshape(-1)[draw(st.integers(0, a.size - 1))] = draw(st.sampled_from(BAD_VALUES[3:]))
            elif c == "dtype":
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    a = draw(st.sampled_from([a.astype(complex) + 1j, a.astype(bool), a.astype(str),
                                              a.astype(np.int8), np.array("text"), np.array([]),
                                              a.astype(object)]))
            else:
                extra = draw(st.integers(1, 3))
                a = np.ones(tuple(s + extra for s in a.shape) or (extra,)) if draw(st.booleans()) \
                    else np.ones((*a.shape, extra))
            setattr(node, f, a)
        elif c == "dangling":
            edges.append((draw(st.sampled_from(list(nodes))), "ghost"))
        elif c == "cycle" and len(names) >= 2:
            i, j = sorted(draw(st.lists(st.sampled_from(names), min_size=2, max_size=2, unique=True)))
            edges.append((j, i))
        elif c == "self_loop" and names:
            n = draw(st.sampled_from(names))
            edges.append((n, n))
        elif c == "duplicate_edge" and edges:
            edges.append(draw(st.sampled_from(edges)))
        elif c == "unsupported" and "input" in nodes:
            kind = draw(st.sampled_from(["Delay", "Conv1d", "Flatten"]))
            w = max(1, int(np.asarray(nodes["input"].input_type["input"]).reshape(-1)[0]))
            if kind == "Delay":
                nodes["odd"] = nir.Delay(delay=np.ones(w))
            elif kind == "Conv1d":
                nodes["odd"] = nir.Conv1d(input_shape=w, weight=np.ones((1, 1, 1)), stride=1, padding=0,
                                          dilation=1, groups=1, bias=np.zeros(1))
            else:
                nodes["odd"] = nir.Flatten(input_type={"input": np.array([w])}, start_dim=3, end_dim=-1)
            first = edges[0][1]
            edges[0] = ("input", "odd")
            edges.append(("odd", first))
        elif c == "no_input" and "input" in nodes:
            del nodes["input"]
            edges = [e for e in edges if "input" not in e]
        elif c == "input_shape" and "input" in nodes:
            shape = draw(st.sampled_from([[0], [-3], [], [1, 2, 3], [10**6]]))
            nodes["input"] = nir.Input(np.array(shape, dtype=np.int64))
        elif c == "orphan":
            nodes["orphan"] = nir.Scale(scale=np.ones(2))
    return nodes, edges, applied


def to_nir_graph(nodes: dict[str, nir.NIRNode], edges: list[tuple[str, str]]) -> nir.NIRGraph | None:
    """The ``nir.NIRGraph``, or None where nir itself cannot build it (not lnm-deploy's to judge)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)
    except Exception:
        return None


def write_nir_file(g: nir.NIRGraph, path: Path) -> bool:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            nir.write(path, g)
        return True
    except Exception:  # nir cannot write it (object arrays...): nothing of ours to test on file
        return False


def corrupt_file(draw: st.DrawFn, path: Path) -> str:
    """One file-level corruption of a written NIR file; returns its name."""
    kind = draw(st.sampled_from(["none", "truncate", "overwrite", "drop_dataset", "retype", "edge_bytes",
                                 "string_param", "numeric_param", "numeric_param"]))
    raw = path.read_bytes()
    if kind == "truncate":
        path.write_bytes(raw[: draw(st.integers(0, max(0, len(raw) - 1)))])
    elif kind == "overwrite":
        at = draw(st.integers(0, max(0, len(raw) - 1)))
        junk = draw(st.binary(min_size=1, max_size=64))
        path.write_bytes(raw[:at] + junk + raw[at + len(junk):])
    elif kind in ("drop_dataset", "retype", "edge_bytes", "string_param", "numeric_param"):
        with h5py.File(path, "r+") as f:
            datasets: list[str] = []
            f["node"].visititems(lambda k, v: datasets.append(k) if isinstance(v, h5py.Dataset) else None)
            if not datasets:
                return kind
            target = draw(st.sampled_from(sorted(datasets)))
            full = f"node/{target}"
            if kind == "drop_dataset":
                del f[full]
            elif kind == "retype":
                types = [d for d in datasets if d.endswith("type")]
                if types:
                    t = f"node/{draw(st.sampled_from(sorted(types)))}"
                    del f[t]
                    f.create_dataset(t, data=draw(st.sampled_from(["QuadraticIF", "", "NIRGraph", "Input"])))
            elif kind == "edge_bytes" and "edges" in f["node"]:
                del f["node/edges"]
                f["node"].create_dataset("edges", data=draw(st.sampled_from(
                    [np.array([[b"input", b"nowhere"]]), np.array([1, 2, 3]), np.array([[b"a", b"b", b"c"]])])))
            elif kind == "numeric_param":
                old = f[full][()]
                numeric = isinstance(old, (np.ndarray, np.generic)) and np.asarray(old).dtype.kind in "biuf"
                shape = np.shape(old) if numeric and draw(st.booleans()) else \
                    draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
                dtype = draw(st.sampled_from([np.int64, np.float64, np.int8, np.bool_]))
                del f[full]
                f.create_dataset(full, data=draw(hnp.arrays(dtype, shape)))
            else:
                del f[full]
                f.create_dataset(full, data=draw(st.sampled_from(["3", "nan", "abc"])))
    return kind


SPIKES = np.random.default_rng(3).random((3, 6, 64)) < 0.5


def spikes_for(g: Graph) -> np.ndarray:
    shape = g.input_shape
    n = math.prod(shape)
    assume(n <= 64)
    return SPIKES[:, :, :n].reshape(3, 6, *shape).astype(np.uint8)


@fuzz(200)
@given(data=nir_graphs(), st_data=st.data())
def test_nir_graphs_load_inspect_or_fail_typed(data: Any, st_data: st.DataObject) -> None:
    nodes, edges, _ = data
    g = to_nir_graph(nodes, edges)
    assume(g is not None)
    typed_or_value(lambda: lnm_deploy.load(g, dt=1e-3))
    with workdir() as d:
        path = d / "g.nir"
        if not write_nir_file(g, path):
            return
        corrupt_file(st_data.draw, path)
        typed_or_value(lambda: lnm_deploy.load(path, dt=1e-3))
        code, err = cli(["inspect", str(path), "--dt", "1e-3"])
        assert code in {0, *EXIT_TYPED}, err
        if code:
            assert err.count("\n") == 1, err


@fuzz(40)
@given(data=nir_graphs(corrupt=False, layers=NEURONS, last=("LIF", "CubaLIF", "IF")))
def test_valid_nir_graphs_calibrate_or_fail_typed(data: Any) -> None:
    nodes, edges, _ = data
    g = to_nir_graph(nodes, edges)
    assume(g is not None)
    graph = typed_or_value(lambda: lnm_deploy.load(g, dt=1e-3))
    if graph is None:
        return
    x = spikes_for(graph)
    typed_or_value(lambda: calibrate_network(graph, x, "loihi2", "default", progress=False))


def test_calibrate_cli_on_fuzzed_graph_files() -> None:
    """A few graphs through the whole ``lnm-deploy calibrate`` (files, artifact, report)."""
    rng = np.random.default_rng(5)
    with workdir() as d:
        np.savez(d / "x.npz", x=(rng.random((4, 8, 3)) < 0.4).astype(np.uint8), y=rng.integers(0, 2, 4))
        for i, tau in enumerate((1e-2, -1e-2, np.nan)):
            g = nir.NIRGraph(
                nodes={"input": nir.Input(np.array([3])), "fc": nir.Linear(weight=rng.normal(size=(2, 3))),
                       "lif": nir.LIF(tau=np.full(2, tau), r=np.ones(2), v_leak=np.zeros(2),
                                      v_threshold=np.full(2, 0.5)),
                       "output": nir.Output(np.array([2]))},
                edges=[("input", "fc"), ("fc", "lif"), ("lif", "output")],
            )
            path = d / f"g{i}.nir"
            nir.write(path, g)
            code, err = cli(["calibrate", str(path), "--dt", "1e-3", "--data", str(d / "x.npz"), "--target",
                             "loihi2", "--out", str(d / f"a{i}.nir"), "--quiet"])
            assert code == [0, 3, 5][i], err
            if code:
                assert "'lif'" in err and "'tau'" in err


@fuzz(60)
@given(raw=st.binary(max_size=2048))
def test_random_bytes_as_nir_file(raw: bytes) -> None:
    with workdir() as d:
        path = d / "g.nir"
        path.write_bytes(raw)
        typed_or_value(lambda: lnm_deploy.load(path))
        code, err = cli(["inspect", str(path)])
        assert code in EXIT_TYPED, err


@fuzz(60)
@given(cut=st.floats(0.0, 1.0, exclude_max=True))
def test_truncated_lnm_deploy_file(cut: float) -> None:
    g = sequential([("fc", Affine(weight=np.ones((3, 2)))), ("n", Neuron(shape=(3,), poly=[0.0, 0.9], v_th=1.0))],
                   (2,))
    with workdir() as d:
        path = d / "g.nir"
        write_nir(g, path)
        raw = path.read_bytes()
        path.write_bytes(raw[: int(len(raw) * cut)])
        assert typed_or_value(lambda: lnm_deploy.load(path)) is None
        code, _ = cli(["inspect", str(path)])
        assert code in EXIT_TYPED


# ------------------------------------------------------------------------------------------------
# Data files

DTYPES = [np.bool_, np.uint8, np.int8, np.int64, np.float16, np.float32, np.float64, np.complex64,
          np.dtype("U2"), np.dtype("S2"), np.dtype("M8[s]"), np.dtype([("a", "u1"), ("b", "f4")])]


@st.composite
def arrays_any(draw: st.DrawFn) -> np.ndarray:
    if draw(st.integers(0, 9)) == 0:  # a pickled object array: must be refused, never unpickled
        return np.array([{"a": 1}, None], dtype=object)
    dtype = np.dtype(draw(st.sampled_from(DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=5, min_side=0, max_side=4))
    if dtype.kind in "biuf" and draw(st.booleans()):  # mostly spikes, so some runs get through
        return draw(hnp.arrays(dtype, shape, elements=st.sampled_from([0, 1]).map(dtype.type)))
    return draw(hnp.arrays(dtype, shape))


@pytest.fixture(scope="module")
def small_graph_file() -> Iterator[Path]:
    g = sequential([("fc", Affine(weight=np.ones((2, 3)))), ("n", Neuron(shape=(2,), poly=[0.0, 0.9], v_th=1.0))],
                   (3,))
    with workdir() as d:
        write_nir(g, d / "g.nir")
        yield d / "g.nir"


@fuzz(200)
@given(members=st.dictionaries(st.sampled_from(["x", "y", "z", "x.npy"]), arrays_any(), max_size=3),
       spikes_x=st.booleans(), y=st.one_of(st.none(), arrays_any()))
def test_npz_files_run_or_fail_typed(small_graph_file: Path, members: dict[str, np.ndarray], spikes_x: bool,
                                     y: np.ndarray | None) -> None:
    if spikes_x:  # a well-formed x, so the labels and the run get exercised too
        members = {**members, "x": np.zeros((2, 3, 3), dtype=np.uint8)}
        if y is not None:
            members["y"] = y
    with workdir() as d:
        path = d / "d.npz"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            np.savez(path, **members)
        code, err = cli(["run", str(small_graph_file), "--data", str(path), "--out", str(d / "o.npz"), "--quiet"])
        assert code in {0, 2}, err
        assert (code == 0) == (d / "o.npz").exists()


@fuzz(100)
@given(raw=st.binary(max_size=1024), keep=st.floats(0.0, 1.0))
def test_random_or_truncated_bytes_as_npz(small_graph_file: Path, raw: bytes, keep: float) -> None:
    with workdir() as d:
        path = d / "d.npz"
        if raw[:1] == b"\0":  # half the time: a truncated or overwritten real .npz
            np.savez_compressed(path, x=np.ones((2, 3, 3), dtype=np.uint8), y=np.zeros(2, dtype=int))
            good = path.read_bytes()
            cut = int(len(good) * keep)
            path.write_bytes(good[:cut] + raw[1:] if len(raw) % 2 else good[:cut])
        else:
            path.write_bytes(raw)
        code, err = cli(["run", str(small_graph_file), "--data", str(path), "--out", str(d / "o.npz"), "--quiet"])
        assert code in {0, 2}, err


# ------------------------------------------------------------------------------------------------
# Target and recipe TOML


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(x)}" for k, x in v.items()) + "}"
    raise TypeError(type(v))


def dump_toml(doc: dict[str, Any], prefix: tuple[str, ...] = ()) -> str:
    """A minimal TOML writer (scalars, arrays, inline tables, nested tables)."""
    lines = []
    tables = {k: v for k, v in doc.items() if isinstance(v, dict)}
    for k, v in doc.items():
        if k not in tables:
            lines.append(f"{json.dumps(k)} = {_toml_value(v)}")
    for k, v in tables.items():
        path = (*prefix, k)
        lines.append("\n[" + ".".join(json.dumps(p) for p in path) + "]")
        lines.append(dump_toml(v, path))
    return "\n".join(lines)


scalars = st.one_of(st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(),
                    st.text(max_size=8))
toml_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3), max_leaves=6)


def _shipped(kind: str) -> dict[str, dict[str, Any]]:
    out = {}
    for name, p in shipped_files(kind).items():
        with open(p, "rb") as f:
            out[name] = tomllib.load(f)
    return out


SHIPPED = {"targets": _shipped("targets"), "calibration": _shipped("calibration")}
LOADERS = {"targets": load_target, "calibration": load_recipe}


def _leaves(doc: dict[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out = []
    for k, v in doc.items():
        out += _leaves(v, (*prefix, k)) if isinstance(v, dict) else [(*prefix, k)]
    return out


@fuzz(200)
@given(kind=st.sampled_from(["targets", "calibration"]), st_data=st.data(), value=toml_values,
       action=st.sampled_from(["set", "delete", "add", "table"]))
def test_shipped_toml_with_one_key_changed(kind: str, st_data: st.DataObject, value: Any, action: str) -> None:
    name = st_data.draw(st.sampled_from(sorted(SHIPPED[kind])))
    doc = json.loads(json.dumps(SHIPPED[kind][name], default=list))
    leaf = st_data.draw(st.sampled_from(_leaves(doc)))
    parent = doc
    for k in leaf[:-1]:
        parent = parent[k]
    if action == "set":
        parent[leaf[-1]] = value
    elif action == "delete":
        del parent[leaf[-1]]
    elif action == "add":
        parent["fuzz_key"] = value
    else:
        parent[leaf[-1]] = {"x": value}
    try:
        text = dump_toml(doc)
        tomllib.loads(text)
    except Exception:  # a value our tiny writer cannot express (lone surrogates...)
        assume(False)
    with workdir() as d:
        path = d / f"{name}.toml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        loaded = typed_or_value(lambda: LOADERS[kind](path))
        if loaded is not None and kind == "targets":
            typed_or_value(loaded.summary)


@fuzz(120)
@given(kind=st.sampled_from(["targets", "calibration"]),
       raw=st.one_of(st.binary(max_size=512),
                     st.dictionaries(st.text(min_size=1, max_size=6), toml_values, max_size=4).map(
                         lambda d: dump_toml(d).encode("utf-8", "surrogatepass"))))
def test_random_toml_files(kind: str, raw: bytes) -> None:
    with workdir() as d:
        path = d / "t.toml"
        path.write_bytes(raw)
        got = typed_or_value(lambda: LOADERS[kind](path))
        assert got is None or kind == "calibration"  # an empty recipe is the defaults; no target is
        if kind == "targets":
            code, err = cli(["targets", "--file", str(path)])
            assert code == 2 and "t.toml" in err, err


# ------------------------------------------------------------------------------------------------
# Calibrated artifacts


@pytest.fixture(scope="module")
def artifact_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lnm_deploy.artifact import write_artifact

    rng = np.random.default_rng(9)
    g = sequential([("fc", Affine(weight=rng.normal(size=(4, 3)))),
                    ("n", Neuron(shape=(4,), poly=[0.0, 0.9], v_th=0.5, dt=1e-3))], (3,))
    res = calibrate_network(g, (rng.random((4, 8, 3)) < 0.5).astype(np.uint8), "loihi2", "default",
                            progress=False)
    path = tmp_path_factory.mktemp("artifact") / "a.nir"
    write_artifact(res.artifact, path)
    return path


@fuzz(120)
@given(st_data=st.data())
def test_corrupted_artifacts_read_or_fail_typed(artifact_file: Path, st_data: st.DataObject) -> None:
    from lnm_deploy.artifact import read_artifact

    with workdir() as d:
        path = d / "a.nir"
        path.write_bytes(artifact_file.read_bytes())
        kind = corrupt_file(st_data.draw, path)
        event(kind)
        art = typed_or_value(lambda: read_artifact(path))
        code, err = cli(["inspect", str(path)])
        assert code in {0, *EXIT_TYPED}, err
        if art is not None:
            x = (np.arange(2 * 4 * 3).reshape(2, 4, 3) % 2).astype(np.uint8)
            typed_or_value(lambda: lnm_deploy.verify.verify(art, x, backends=(), progress=False))
