"""The ONNX backend against fxsim: every layer's spikes and states, bit for bit.

Randomized networks come from ``fx_nets`` (the generators the fxsim oracle and Lava tests use),
biased towards wrap and saturation edges; deterministic cases pin each operator's rounding and
overflow. A golden vector is replayed with onnxruntime and numpy alone, as ``docs/onnx.md`` says.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

import onnx
from fx_nets import chain, dense, lif, poly, random_conv_net, random_dense_net, spikes
from hypothesis import given, settings
from hypothesis import strategies as st

from lnm_deploy import __version__
from lnm_deploy import fixedpoint as fx
from lnm_deploy.backends import BACKENDS
from lnm_deploy.errors import GraphError, UnsupportedError, UserInputError
from lnm_deploy.fixedpoint import fx_sequential
from lnm_deploy.fxsim import compare_runs, first_mismatch, run_fx
from lnm_deploy.onnx_backend import (
    IR_VERSION,
    OPSET,
    build_onnx,
    compile_onnx,
    onnx_session,
    run_onnx,
    run_onnx_model,
)
from lnm_deploy.onnx_backend import build as onnx_build

SEEDS = st.integers(0, 2**32 - 1)


def assert_bit_exact(g: fx.FxGraph, x: np.ndarray, *, engine: str = "auto") -> None:
    """fxsim and the ONNX model agree on every layer's spikes and states (first mismatch shown)."""
    ref = run_fx(g, x, record=True)
    got = run_onnx(g, x, record=True, engine=engine)
    order = g.neuron_names()
    m = first_mismatch(ref.spikes, got.spikes, order=order)
    assert m is None, f"[{engine}] {m}"
    m = compare_runs(ref, got, order=order)
    assert m is None, f"[{engine}] {m}"
    assert np.array_equal(ref.output, got.output)
    for layer, s in got.spikes.items():
        assert s.dtype == np.uint8, layer
        for k, a in got.states[layer].items():
            assert a.dtype == np.int64, (layer, k)


# ------------------------------------------------------------------------ randomized networks


@settings(max_examples=120)
@given(seed=SEEDS, steps=st.integers(1, 10), batch=st.integers(1, 3))
def test_feedforward_dense_networks(seed: int, steps: int, batch: int) -> None:
    rng = np.random.default_rng(seed)
    g = random_dense_net(rng, recurrent=False)
    assert_bit_exact(g, spikes(rng, batch, steps, g.input_shape))


@settings(max_examples=100)
@given(seed=SEEDS, steps=st.integers(1, 10))
def test_recurrent_dense_networks(seed: int, steps: int) -> None:
    rng = np.random.default_rng(seed)
    g = random_dense_net(rng, recurrent=True)
    if not any(k.endswith("_rec") for k in g.nodes):  # make sure there is a back edge
        g = chain([("d", dense(rng, 4, g.input_shape[0])), ("n", lif(rng, (4,)))], g.input_shape,
                  {"n": dense(rng, 4, 4)})
    assert_bit_exact(g, spikes(rng, 2, steps, g.input_shape))


@settings(max_examples=80)
@given(seed=SEEDS, steps=st.integers(1, 6))
def test_conv_pool_flatten_networks(seed: int, steps: int) -> None:
    rng = np.random.default_rng(seed)
    g = random_conv_net(rng)
    assert_bit_exact(g, spikes(rng, 2, steps, g.input_shape))


@pytest.mark.parametrize("neurons", ["lif", "poly"])
@settings(max_examples=60)
@given(seed=SEEDS, conv=st.booleans())
def test_single_neuron_kind_networks(neurons: str, seed: int, conv: bool) -> None:
    """The loihi2-lif kind of network (stock LIF everywhere, states started at the edges) and the
    loihi2 kind (polynomial neurons: all roundings, overflows, resets)."""
    rng = np.random.default_rng(seed)
    g = random_conv_net(rng, neurons=neurons) if conv else random_dense_net(rng, neurons=neurons)
    assert_bit_exact(g, spikes(rng, 2, 8, g.input_shape))


@settings(max_examples=50)
@given(seed=SEEDS)
def test_step_engine_matches(seed: int) -> None:
    """One Scan over the whole network computes the same integers as one Scan per layer."""
    rng = np.random.default_rng(seed)
    g = random_conv_net(rng) if seed % 2 else random_dense_net(rng)
    assert_bit_exact(g, spikes(rng, 2, 6, g.input_shape), engine="step")


def feedback_net(rng: np.random.Generator) -> fx.FxGraph:
    """A back edge to an earlier layer, a skip synapse, and a cycle synapse read outside the cycle."""
    def neuron(shape: tuple[int, ...]) -> fx.FxNode:
        return poly(rng, shape) if rng.random() < 0.5 else lif(rng, shape)

    nodes: dict[str, fx.FxNode] = {
        "input": fx.FxInput(shape=(4,)), "syn0": dense(rng, 5, 4), "n0": neuron((5,)),
        "syn1": dense(rng, 3, 5), "n1": neuron((3,)), "fb": dense(rng, 5, 3),
        "skip": dense(rng, 3, 4), "n2": neuron((3,)), "syn2": dense(rng, 2, 3), "n3": neuron((2,)),
        "syn3": dense(rng, 2, 3), "output": fx.FxOutput(),
    }
    edges = [("input", "syn0"), ("syn0", "n0"), ("n0", "syn1"), ("syn1", "n1"), ("n1", "fb"),
             ("fb", "n0"), ("input", "skip"), ("skip", "n1"), ("syn1", "n2"), ("n2", "syn2"),
             ("syn2", "n3"), ("n1", "syn3"), ("syn3", "n3"), ("n3", "output")]
    return fx.FxGraph(nodes=nodes, edges=edges)


@settings(max_examples=40)
@given(seed=SEEDS)
def test_feedback_to_earlier_layer(seed: int) -> None:
    rng = np.random.default_rng(seed)
    g = feedback_net(rng)
    x = spikes(rng, 2, 8, (4,))
    assert_bit_exact(g, x)
    assert_bit_exact(g, x, engine="step")


@settings(max_examples=40)
@given(seed=SEEDS)
def test_lif_wrap_and_saturation_edges(seed: int) -> None:
    """Strong inputs on states at the limits: every int32 wrap, corr24 and sat24 of 4.2."""
    rng = np.random.default_rng(seed)
    n = 6
    for exp in (0, 9, 17, 24):
        w = rng.choice([-256, 255, 254, -255, 0, 100], (n, 4))
        g = fx_sequential([
            ("d", fx.FxDense(weight=w, weight_exp=exp)),
            ("l", fx.FxLIF(shape=(n,), du=int(rng.choice([0, 4095, 100])), dv=int(rng.choice([0, 4095, 7])),
                        vth=int(rng.choice([0, 2**17 - 1, 2**18])), bias_mant=rng.integers(-4096, 4096, n),
                        bias_exp=int(rng.choice([0, 7, 15])), u_init=rng.choice([2**23, -(2**23) + 1, 2**23 - 1], n),
                        v_init=rng.choice([2**23 - 1, -(2**23) + 1], n))),
        ], (4,))
        assert_bit_exact(g, spikes(rng, 2, 8, (4,)))


@settings(max_examples=30)
@given(seed=SEEDS)
def test_int32_input_wrap(seed: int) -> None:
    """Two synapses whose sum leaves int32: the neuron input wraps (4.1) before any shift."""
    rng = np.random.default_rng(seed)
    n = 5
    ff = fx.FxDense(weight=rng.choice([0, 1, 3, 127], (n, 6)), weight_exp=24, sign_mode="excitatory")
    rec = fx.FxDense(weight=rng.choice([0, 1, 64, 127], (n, n)), weight_exp=24, sign_mode="excitatory")
    neuron = poly(rng, (n,)) if seed % 2 else lif(rng, (n,))
    g = chain([("d", ff), ("p", neuron)], (6,), {"p": rec})
    assert_bit_exact(g, spikes(rng, 2, 6, (6,)))


# -------------------------------------------------------------------------- operator by operator


@pytest.mark.parametrize("rounding", ["nearest", "floor", "trunc"])
@pytest.mark.parametrize("overflow", ["saturate", "wrap"])
@pytest.mark.parametrize("reset", ["value", "subtract"])
@pytest.mark.parametrize("synapse", [False, True])
def test_poly_every_rounding_overflow_reset(rounding: str, overflow: str, reset: str, synapse: bool) -> None:
    rng = np.random.default_rng(7)
    n = 8
    layers: list[tuple[str, fx.FxNode]] = []
    for i, (bits, acc) in enumerate([(12, 24), (24, 40), (16, 32)]):
        sm = 2 ** (bits - 1) - 1
        layers += [
            (f"d{i}", fx.FxDense(weight=rng.choice([-256, 254, 0, 96, -32], (n, n)), weight_exp=int(rng.integers(-3, 12)))),
            (f"p{i}", fx.FxPoly(shape=(n,), coef=rng.integers(-(2**15) + 1, 2**15, (4, n)), shifts=(3, 11, 17),
                             vth=rng.integers(0, sm + 1, n), v_reset=rng.integers(-sm, sm + 1, n), reset=reset,  # type: ignore[arg-type]
                             in_shift=int(rng.integers(0, 9)),
                             syn_decay=rng.choice([0, 1, 2048, 4095, 4096], n) if synapse else None,
                             rounding=rounding, overflow=overflow, state_bits=bits, acc_bits=acc,  # type: ignore[arg-type]
                             v_init=rng.choice([sm, -sm, 0, 1, -1], n), c_init=rng.choice([sm, -sm, 0], n))),
        ]
    g = fx_sequential(layers, (n,))
    assert_bit_exact(g, spikes(rng, 3, 12, (n,)))


@pytest.mark.parametrize("sign_mode", ["mixed", "excitatory", "inhibitory"])
def test_dense_weight_grid_and_exponent(sign_mode: str) -> None:
    """Clipping and LSB truncation of every num_weight_bits, positive and negative exponents."""
    rng = np.random.default_rng(3)
    for bits in range(1, 9):
        for exp in (-8, -3, 0, 5):
            w = rng.integers(-300, 300, (6, 9))
            lif_ = fx.FxLIF(shape=(6,), du=0, dv=1000, vth=1)
            g = fx_sequential([("d", fx.FxDense(weight=w, weight_exp=exp, num_weight_bits=bits,
                                             sign_mode=sign_mode)), ("l", lif_)], (9,))  # type: ignore[arg-type]
            assert_bit_exact(g, spikes(rng, 2, 5, (9,)))


@pytest.mark.parametrize(("stride", "padding", "dilation", "groups"), [
    ((1, 1), (0, 0), (1, 1), 1), ((2, 1), (1, 2), (1, 1), 1), ((1, 2), (2, 1), (2, 1), 1),
    ((1, 1), (1, 1), (2, 2), 2), ((2, 2), (0, 1), (1, 2), 4),
])
def test_conv_geometry(stride: tuple[int, int], padding: tuple[int, int], dilation: tuple[int, int],
                       groups: int) -> None:
    rng = np.random.default_rng(11)
    conv = fx.FxConv2d(weight=rng.integers(-256, 256, (4, 4 // groups, 3, 2)), stride=stride,
                    padding=padding, dilation=dilation, groups=groups)
    shape = conv.output_shape("conv", (4, 7, 6))
    pool = fx.FxConv2d(weight=np.ones((4, 1, 2, 3), dtype=np.int64), stride=(1, 2), padding=(1, 1), groups=4)
    pshape = pool.output_shape("pool", shape)
    g = fx_sequential([
        ("conv", conv), ("n0", fx.FxLIF(shape=shape, du=100, dv=200, vth=3)),
        ("pool", pool), ("n1", fx.FxPoly(shape=pshape, coef=np.array([0, 30000]), shifts=(15,), vth=1)),
        ("flat", fx.FxFlatten()), ("fc", fx.FxDense(weight=rng.integers(-128, 128, (3, int(np.prod(pshape)))))),
        ("n2", fx.FxLIF(shape=(3,), du=4095, dv=0, vth=0)),
    ], (4, 7, 6))
    assert_bit_exact(g, spikes(rng, 2, 4, (4, 7, 6)))


def test_wide_weights_use_digits_and_wrap_24() -> None:
    """Conv weights far beyond 8 bits (base-256 digits) and a 24-bit output wrap."""
    rng = np.random.default_rng(5)
    w = rng.integers(-(2**30), 2**30, (3, 2, 2, 2))
    g = fx_sequential([
        ("conv", fx.FxConv2d(weight=w, weight_exp=3)),
        ("n0", fx.FxPoly(shape=(3, 4, 4), coef=np.array([0, 2**14]), shifts=(14,), vth=1000, overflow="wrap")),
    ], (2, 5, 5))
    assert_bit_exact(g, spikes(rng, 2, 6, (2, 5, 5)))
    model = build_onnx(g)
    assert "DOUBLE" in _assert_float_products_exact(model)  # weight sums beyond 2**24: a float64 product


def test_outputs_exactly_at_the_wrap_boundary() -> None:
    """A synapse output of exactly +2**(out_bits-1) wraps to the most negative value."""
    poly_ = {"coef": np.array([0]), "shifts": (), "vth": 1000}
    g = fx_sequential([("d", fx.FxDense(weight=np.array([[128, -128], [-128, -128]]), weight_exp=24)),
                       ("p", fx.FxPoly(shape=(2,), **poly_))], (2,))  # type: ignore[arg-type]
    x = np.array([[[1, 0], [0, 1], [1, 1]]], dtype=np.uint8)
    assert_bit_exact(g, x)
    assert run_onnx(g, x).spikes["p"][0, 0, 0] == 0  # +2**31 wrapped to -2**31: no spike
    conv = fx.FxConv2d(weight=np.array([[[[2**23]]], [[[-(2**23)]]]]).reshape(2, 1, 1, 1))
    g = fx_sequential([("c", conv), ("p", fx.FxPoly(shape=(2, 2, 2), **poly_))], (1, 2, 2))  # type: ignore[arg-type]
    assert_bit_exact(g, spikes(np.random.default_rng(0), 2, 3, (1, 2, 2)))


def _assert_float_products_exact(model: onnx.ModelProto, f32: int = 2**24, f64: int = 2**53) -> set[str]:
    """Every float initializer is the weight of a MatMul whose column sums of |w| are below the
    exact limit of its format (then spikes times weights are exact in any order); returns the
    MatMul weight types used."""
    from onnx import numpy_helper

    nodes = [*model.graph.node, *(b for n in model.graph.node for a in n.attribute if a.g.node for b in a.g.node)]
    assert not any(n.op_type == "MatMulInteger" for n in nodes)
    consts = {t.name: t for t in model.graph.initializer}
    weights = {n.input[1] for n in nodes if n.op_type == "MatMul"}
    floats = {onnx.TensorProto.FLOAT: f32, onnx.TensorProto.DOUBLE: f64}
    used = set()
    for name, t in consts.items():
        if t.data_type in floats or name in weights:
            assert name in weights, f"float initializer {name} outside a MatMul"
            w = numpy_helper.to_array(t)
            bound = float(np.abs(w).sum(axis=-2).max()) if w.size else 0.0
            if t.data_type in floats:
                assert bound < floats[t.data_type], (name, bound)
            used.add(onnx.TensorProto.DataType.Name(t.data_type))
    return used


def test_products_pick_an_exact_format_by_the_weight_sums(monkeypatch: pytest.MonkeyPatch) -> None:
    """float32 while every partial sum stays below 2**24, float64 below 2**53, else int64 MatMul:
    each bit-exact with fxsim."""
    rng = np.random.default_rng(9)
    g = random_dense_net(rng, recurrent=True)
    x = spikes(rng, 2, 6, g.input_shape)
    for f32, f64, want in ((2**24, 2**53, "FLOAT"), (1, 2**53, "DOUBLE"), (1, 1, "INT64")):
        monkeypatch.setattr(onnx_build, "F32_EXACT", f32)
        monkeypatch.setattr(onnx_build, "F64_EXACT", f64)
        used = _assert_float_products_exact(build_onnx(g), f32, f64)
        assert want in used
        assert_bit_exact(g, x)


@pytest.mark.parametrize("fan_out", [10, 17, 24, 31, 40])
def test_dense_layers_of_every_width_are_exact(fan_out: int) -> None:
    """onnxruntime 1.23.2's MatMulInteger (uint8 GEMM) returned wrong sums for 17 to 31 output
    columns on this project's CPU; the lowering must be exact at every width (12 -> fan_out)."""
    rng = np.random.default_rng(fan_out)
    g = fx_sequential([("d", fx.FxDense(weight=rng.integers(-94, 255, (fan_out, 12)))),
                       ("p", fx.FxPoly(shape=(fan_out,), coef=np.array([0, 29000]), shifts=(15,), vth=300))],
                      (12,))  # type: ignore[arg-type]
    assert_bit_exact(g, (rng.random((64, 20, 12)) < 0.4).astype(np.uint8))


# -------------------------------------------------------------------------------- the model


def small_net() -> fx.FxGraph:
    rng = np.random.default_rng(1)
    return fx_sequential([
        ("fc1", fx.FxDense(weight=2 * rng.integers(-64, 64, (12, 6)))),
        ("lnm1", fx.FxPoly(shape=(12,), coef=np.array([0, 29000, 40]), shifts=(15, 10), vth=300, in_shift=6,
                        syn_decay=500)),
        ("fc2", fx.FxDense(weight=2 * rng.integers(-64, 64, (4, 12)))),
        ("lif2", fx.FxLIF(shape=(4,), du=300, dv=400, vth=20)),
    ], (6,), target="loihi2")


def test_model_is_valid_and_self_describing() -> None:
    g = small_net()
    model = build_onnx(g, metadata={"artifact_sha256": "ab" * 32})
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == IR_VERSION <= 11
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
    assert OPSET <= 23
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["target"] == "loihi2"
    assert meta["artifact_sha256"] == "ab" * 32
    assert meta["lnm_deploy_version"] == __version__
    assert [ly["name"] for ly in json.loads(meta["layers"])] == ["lnm1", "lif2"]
    assert [i.name for i in model.graph.input] == ["input"]
    outs = {o.name: o.type.tensor_type for o in model.graph.output}
    assert set(outs) == {"lnm1", "lnm1.v", "lnm1.c", "lif2", "lif2.u", "lif2.v", "output"}
    assert outs["lnm1"].elem_type == onnx.TensorProto.UINT8
    assert outs["lif2.u"].elem_type == onnx.TensorProto.INT64
    dims = [d.dim_param or d.dim_value for d in outs["lnm1"].shape.dim]
    assert dims == ["batch", "time", 12]
    assert sum(n.op_type == "Scan" for n in model.graph.node) == 2
    # floats only as synapse weights whose products are exact in their format (_int_matmul)
    _assert_float_products_exact(model)
    spikes_only = build_onnx(g, states=False)
    assert {o.name for o in spikes_only.graph.output} == {"lnm1", "lif2", "output"}


def test_backend_registry_runs_onnx() -> None:
    g = small_net()
    x = spikes(np.random.default_rng(2), 3, 20, (6,))
    backend = BACKENDS["onnx"]
    assert backend.integer
    got = backend.run(g, x, record=True, progress=False)
    assert compare_runs(run_fx(g, x, record=True), got) is None
    # Chunks of samples (what progress=True runs, one bar step per chunk; tqdm is left out here:
    # its multiprocessing lock fixes the start method, which Lava's import must choose itself).
    chunked = run_onnx_model(build_onnx(g), x, record=True, chunk=2)
    assert compare_runs(got, chunked) is None


def test_errors_name_the_problem() -> None:
    g = small_net()
    with pytest.raises(UserInputError, match="binary"):
        run_onnx(g, np.full((1, 3, 6), 2))
    with pytest.raises(UserInputError, match="shaped"):
        run_onnx(g, np.zeros((1, 3, 5)))
    with pytest.raises(UserInputError, match="empty"):
        run_onnx(g, np.zeros((1, 0, 6)))
    with pytest.raises(UserInputError, match="states=True"):
        run_onnx_model(build_onnx(g, states=False), np.zeros((1, 3, 6)), record=True)
    with pytest.raises(UserInputError, match="engine"):
        build_onnx(g, engine="fast")

    class FxOdd(fx.FxNode):
        kind = "odd"
        role = "synapse"

    bad = fx_sequential([("odd", FxOdd()), ("n", fx.FxLIF(shape=(6,)))], (6,))
    with pytest.raises(UnsupportedError, match="node 'odd'"):
        build_onnx(bad)
    clash = fx_sequential([("d", fx.FxDense(weight=np.ones((2, 6)))), ("n", fx.FxLIF(shape=(2,))),
                           ("d2", fx.FxDense(weight=np.ones((2, 2)))), ("n.u", fx.FxLIF(shape=(2,)))], (6,))
    with pytest.raises(GraphError, match="collide"):
        build_onnx(clash)


def test_importing_lnm_deploy_does_not_import_onnx() -> None:
    code = ("import sys, lnm_deploy, lnm_deploy.backends, lnm_deploy.onnx_backend; "
            "assert 'onnx' not in sys.modules and 'onnxruntime' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------- artifact and golden replay


def write_test_artifact(path: Path) -> fx.FxGraph:
    from lnm_deploy.artifact import Artifact, write_artifact
    from lnm_deploy.ir import Affine, Neuron, sequential

    fx = small_net()
    rng = np.random.default_rng(0)
    graph = sequential([
        ("fc1", Affine(weight=rng.normal(0, 1.0, (12, 6)))),
        ("lnm1", Neuron(shape=(12,), poly=np.array([0.0, 0.9, 0.05]), v_th=np.array(1.0),
                         syn_decay=np.array(0.5))),
        ("fc2", Affine(weight=rng.normal(0, 1.0, (4, 12)))),
        ("lif2", Neuron(shape=(4,), poly=np.array([0.0, 0.9]), v_th=np.array(1.0), syn_decay=np.array(0.9))),
    ], (6,))
    write_artifact(Artifact(graph=graph, fx=fx, record={"target": "loihi2"}), path)
    return fx


def replay_golden(model_path: str, golden_path: str) -> list[str]:
    """docs/onnx.md's replay: onnxruntime + numpy only (no lnm_deploy). Returns mismatching keys."""
    import numpy as np  # self-contained on purpose
    import onnxruntime as ort

    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    golden = np.load(golden_path)
    x = golden["x"].astype(np.uint8)  # (batch, time, *input_shape), 0/1
    names = [o.name for o in sess.get_outputs()]
    out = dict(zip(names, sess.run(names, {sess.get_inputs()[0].name: x}), strict=True))
    bad = []
    for key in golden.files:  # "spikes/<layer>", "<state>/<layer>"
        if key == "x" or "/" not in key:
            continue
        kind, layer = key.split("/", 1)
        got = out[layer] if kind == "spikes" else out[f"{layer}.{kind}"]
        if not np.array_equal(got, golden[key]):
            bad.append(key)
    return bad


def test_compile_artifact_and_replay_golden_vector(tmp_path: Path) -> None:
    from lnm_deploy.onnx_backend import sha256_file

    art = tmp_path / "model.loihi2.nir"
    fx = write_test_artifact(art)
    out = tmp_path / "model.onnx"
    assert compile_onnx(art, out) == out
    model = onnx.load(str(out))
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["artifact_sha256"] == sha256_file(art)
    assert meta["target"] == "loihi2"
    assert meta["lnm_deploy_version"] == __version__
    with pytest.raises(UserInputError, match="exists"):
        compile_onnx(art, out)
    compile_onnx(art, out, force=True)

    # The golden vector: the input and fxsim's per-layer spikes and states, as `lnm-deploy run`
    # writes them ("spikes/<layer>", "<state>/<layer>").
    x = spikes(np.random.default_rng(4), 4, 25, (6,))
    ref = run_fx(fx, x, record=True)
    arrays = {"x": x, **{f"spikes/{k}": v for k, v in ref.spikes.items()}}
    arrays.update({f"{s}/{k}": a for k, st_ in ref.states.items() for s, a in st_.items()})
    golden = tmp_path / "golden.npz"
    np.savez(golden, **arrays)
    assert sum(int(v.sum()) for v in ref.spikes.values()) > 0
    assert replay_golden(str(out), str(golden)) == []
    arrays["spikes/lif2"] = 1 - arrays["spikes/lif2"]
    np.savez(golden, **arrays)
    assert replay_golden(str(out), str(golden)) == ["spikes/lif2"]
    # the file runs without its fx.FxGraph too
    assert compare_runs(ref, run_onnx_model(onnx_session(out), x, record=True)) is None
