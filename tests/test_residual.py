"""Residual connections end to end (issue 14; docs/patterns.md "Residual connections"): a neuron
layer whose input is the sum of a convolution from the previous layer and an identity or projected
(1x1, stride 2) skip from an earlier one. Float IR, NIR round trip, one scale plan for every
synapse into a layer whatever the edge order, the identity skip as an exact unit-weight integer
synapse, fxsim / ONNX / Lava bit-exact (Lava delays the shorter path with relays), and the
design-rule error from ``calibrate`` for a target that cannot delay."""

from __future__ import annotations

import dataclasses
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from lnm_deploy import ir
from lnm_deploy.artifact import read_artifact, write_artifact
from lnm_deploy.calibrate import calibrate_network, load_recipe
from lnm_deploy.calibrate.passes import Synapse, fold, plan_synapses
from lnm_deploy.errors import GraphError, NumericError, UnsupportedError
from lnm_deploy.execute import run_float
from lnm_deploy.fixedpoint import FxConv2d, FxDense, FxFlatten, FxGraph, FxLIF, fx_sequential
from lnm_deploy.fxsim import run_fx
from lnm_deploy.nir_io import read_nir, write_nir
from lnm_deploy.targets import load_target

LAYERS = ("n1", "n2", "n3", "n4", "n5", "n6")


def resnet(seed: int = 0, order: list[int] | None = None) -> ir.Graph:
    """1x8x8 input; conv stem (8 channels); block 1: two 3x3 convs, identity skip n1 -> n3; block
    2: 3x3 stride-2 conv, 3x3 conv, projected skip n3 -> proj (1x1 stride 2) -> n5; linear head.
    n3 is quadratic (the polynomial neuron on loihi2), the rest leaky (the stock LIF)."""
    rng = np.random.default_rng(seed)

    def w(*s: int, sc: float = 2.5) -> np.ndarray:
        return rng.normal(0.0, sc, s) / np.sqrt(np.prod(s[1:]))

    def nrn(shape: tuple[int, ...], poly: list[float] | None = None) -> ir.Neuron:
        return ir.Neuron(shape=shape, poly=poly or [0.0, 0.8], v_th=0.5)

    nodes: dict[str, ir.Node] = {
        "input": ir.Input(shape=(1, 8, 8)),
        "stem": ir.Conv2d(weight=w(8, 1, 3, 3, sc=3.0), bias=np.full(8, 0.2), padding=1), "n1": nrn((8, 8, 8)),
        "b1c1": ir.Conv2d(weight=w(8, 8, 3, 3), padding=1), "n2": nrn((8, 8, 8)),
        "b1c2": ir.Conv2d(weight=w(8, 8, 3, 3), padding=1), "n3": nrn((8, 8, 8), [0.0, 0.7, 0.1]),
        "b2c1": ir.Conv2d(weight=w(16, 8, 3, 3), padding=1, stride=2), "n4": nrn((16, 4, 4)),
        "b2c2": ir.Conv2d(weight=w(16, 16, 3, 3), padding=1),
        "proj": ir.Conv2d(weight=w(16, 8, 1, 1, sc=2.0), stride=2), "n5": nrn((16, 4, 4)),
        "flat": ir.Flatten(start_dim=0, end_dim=-1), "fc": ir.Affine(weight=w(10, 256, sc=3.0), bias=np.zeros(10)),
        "n6": nrn((10,)), "output": ir.Output(),
    }
    edges = [("input", "stem"), ("stem", "n1"), ("n1", "b1c1"), ("b1c1", "n2"), ("n2", "b1c2"), ("b1c2", "n3"),
             ("n1", "n3"),  # identity skip
             ("n3", "b2c1"), ("b2c1", "n4"), ("n4", "b2c2"), ("b2c2", "n5"), ("n3", "proj"), ("proj", "n5"),
             ("n5", "flat"), ("flat", "fc"), ("fc", "n6"), ("n6", "output")]
    if order is not None:
        edges = [edges[i] for i in order]
    return ir.Graph(nodes=nodes, edges=edges)


def mlp_skip() -> ir.Graph:
    """A 1-d residual: l2 reads a2(l1) plus the identity of l0 (two synapses apart)."""
    rng = np.random.default_rng(5)
    n = lambda: ir.Neuron(shape=(8,), poly=[0.0, 0.9], v_th=0.5)  # noqa: E731
    nodes: dict[str, ir.Node] = {"input": ir.Input(shape=(6,)), "a0": ir.Affine(weight=rng.normal(0.3, 0.6, (8, 6))),
                                 "l0": n(), "a1": ir.Affine(weight=rng.normal(0.2, 0.6, (8, 8))), "l1": n(),
                                 "a2": ir.Affine(weight=rng.normal(0.0, 0.5, (8, 8))), "l2": n(), "output": ir.Output()}
    edges = [("input", "a0"), ("a0", "l0"), ("l0", "a1"), ("a1", "l1"), ("l1", "a2"), ("a2", "l2"), ("l0", "l2"),
             ("l2", "output")]
    return ir.Graph(nodes=nodes, edges=edges)


def _spikes(shape: tuple[int, ...], seed: int = 1, p: float = 0.4) -> np.ndarray:
    return (np.random.default_rng(seed).random(shape) < p).astype(np.float64)


@pytest.fixture(scope="module")
def calibrated() -> dict[str, Any]:
    g = resnet()
    x = _spikes((12, 6, 1, 8, 8))
    res = calibrate_network(g, x, load_target("loihi2"), load_recipe("default"), progress=False)
    return {"graph": g, "x": x, "res": res}


def _fx_dump(fx: FxGraph) -> tuple[Any, ...]:
    """Every integer of an FxGraph, its edges as a set and its delays: equal dumps, equal networks."""
    def val(v: Any) -> Any:
        return (np.asarray(v).dtype.str, np.asarray(v).shape, np.asarray(v).tobytes()) if isinstance(v, np.ndarray) else v

    nodes = {n: (type(node).__name__, tuple((f.name, val(getattr(node, f.name))) for f in dataclasses.fields(node)))
             for n, node in fx.nodes.items()}
    return nodes, frozenset(fx.edges), fx.delayed_edges()


# ------------------------------------------------------------------------------------------------
# Float IR, fold, NIR


def test_residual_float_graph_sums_its_inputs_and_round_trips_through_nir(tmp_path: Path) -> None:
    g = resnet()
    sched = g.schedule()
    assert [s for s, _ in sched.inputs["n3"]] == ["b1c2", "n1"]
    assert sorted(s for s, _ in sched.inputs["n5"]) == ["b2c2", "proj"]
    x = _spikes((3, 5, 1, 8, 8))
    ref = run_float(g, x, record=True)
    assert all(0 < ref.spikes[n].mean() < 1 for n in LAYERS)
    # The identity skip adds n1's spikes (times in_gain = 1) to n3's input.
    no_skip = ir.Graph(nodes=dict(g.nodes), edges=[e for e in g.edges if e != ("n1", "n3")])
    assert not np.array_equal(run_float(no_skip, x).spikes["n3"], ref.spikes["n3"])
    write_nir(g, tmp_path / "resnet.nir")
    back = read_nir(tmp_path / "resnet.nir")
    assert set(back.edges) == set(g.edges)
    got = run_float(back, x)
    for n in LAYERS:
        assert np.array_equal(got.spikes[n], ref.spikes[n]), n


def test_identity_skip_folds_to_a_unit_weight_synapse() -> None:
    layers = fold(resnet()).layers
    b1c2, skip = layers["n3"].synapses
    assert (b1c2.name, b1c2.source) == ("b1c2", "n2")  # the deeper source sets the scale
    assert (skip.name, skip.source, skip.kind) == ("n1_to_n3", "n1", "conv")
    assert skip.conv == {"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 8}
    assert np.array_equal(skip.weight, np.ones((8, 1, 1, 1)))
    assert [s.name for s in layers["n5"].synapses] == ["b2c2", "proj"]
    (dense_skip,) = [s for s in fold(mlp_skip()).layers["l2"].synapses if s.source == "l0"]
    assert dense_skip.kind == "dense" and np.array_equal(dense_skip.weight, np.eye(8))


def test_identity_skip_of_another_shape_is_refused_naming_the_layer() -> None:
    g = resnet()
    g.edges.append(("n1", "n5"))  # (8, 8, 8) spikes into a (16, 4, 4) layer
    with pytest.raises(GraphError, match=r"node 'n5'.*inputs of different shapes"):
        fold(g)


# ------------------------------------------------------------------------------------------------
# One scale plan whatever the edge order


def test_edge_order_gives_the_identical_integer_network(calibrated: dict[str, Any]) -> None:
    base = _fx_dump(calibrated["res"].artifact.fx)
    x = calibrated["x"]
    n_edges = len(calibrated["graph"].edges)
    rng = np.random.default_rng(11)
    for order in (list(range(n_edges))[::-1], list(rng.permutation(n_edges))):
        res = calibrate_network(resnet(order=order), x, load_target("loihi2"), load_recipe("default"), progress=False)
        assert _fx_dump(res.artifact.fx) == base


def _syn(name: str, w: np.ndarray) -> Synapse:
    return Synapse(name, name, False, "dense", w)


def test_a_skip_with_larger_weights_coarsens_the_layer_scale_instead_of_failing() -> None:
    """The first synapse's weights are small, the skip's 10^4 times larger: at the first synapse's
    finest scale the skip would need exponent 7 + 13; the plan coarsens q so that both fit."""
    target = load_target("loihi2")
    rng = np.random.default_rng(2)
    small, big = rng.uniform(-1e-3, 1e-3, (6, 6)), rng.uniform(-10, 10, (6, 6))

    def clip(_: str, w: np.ndarray, bits: int) -> float:
        return float(np.max(np.abs(w)))

    q, _, plans = plan_synapses("l", [_syn("main", small), _syn("skip", big)], target, 1e-6, 6, clip, (0, 0))
    assert q > 1e-6
    for p in plans:
        assert p.clipped == 0.0
        np.testing.assert_allclose(p.dequantized(), p.synapse.weight, rtol=0,
                                   atol=p.real_per_lsb * 2)  # on the grid, nothing clipped
    # Where no scale holds both (at the scale the skip needs, the first's weights round to zero),
    # the error names the synapse that is lost.
    with pytest.raises(NumericError, match="node 'main': every weight rounds to zero"):
        plan_synapses("l", [_syn("main", small), _syn("skip", big * 1e4)], target, 1e-6, 6, clip, (0, 0))


def test_a_coarsened_plan_warns_once_about_weights_lost_at_the_scale_it_keeps() -> None:
    """Most of the first synapse's weights round to zero at the first scale tried and at the
    coarser one the skip forces: one warning, with the kept plan's share, not one per scale tried."""
    target = load_target("loihi2")
    rng = np.random.default_rng(3)
    main = np.where(rng.random((6, 6)) < 0.8, 1e-7, 1e-3) * rng.choice([-1, 1], (6, 6))
    big = rng.uniform(-10, 10, (6, 6))

    def clip(_: str, w: np.ndarray, bits: int) -> float:
        return float(np.max(np.abs(w)))

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        q, _, plans = plan_synapses("l", [_syn("main", main), _syn("skip", big)], target, 1e-9, 6, clip, (0, 0))
    lost = [str(w.message) for w in caught if "round to zero" in str(w.message)]
    assert q > 1e-9 and len(lost) == 1 and lost[0].startswith("synapse 'main'")
    share = np.mean(plans[0].weight_int[main != 0] == 0)
    assert f"{share:.0%} of its non-zero weights" in lost[0]


# ------------------------------------------------------------------------------------------------
# Integer backends


def test_resnet_fxsim_onnx_and_artifact_round_trip(calibrated: dict[str, Any], tmp_path: Path) -> None:
    from lnm_deploy.onnx_backend import run_onnx

    res, x = calibrated["res"], calibrated["x"]
    fx = res.artifact.fx
    skip = fx.nodes["n1_to_n3"]
    assert isinstance(skip, FxConv2d) and skip.groups == 8 and skip.weight.shape == (8, 1, 1, 1)
    assert len(np.unique(skip.weight)) == 1 and skip.weight.flat[0] > 0  # one exact integer weight
    assert {fx.nodes[n].kind for n in ("n3", "n5")} == {"poly", "lif"}
    ref = run_fx(fx, x[:4], record=True)
    onnx = run_onnx(fx, x[:4], record=True)
    for n in LAYERS:
        assert np.array_equal(onnx.spikes[n], ref.spikes[n]), n
    write_artifact(res.artifact, tmp_path / "a.nir")
    back = read_artifact(tmp_path / "a.nir").fx
    assert _fx_dump(back) == _fx_dump(fx)
    # Per-layer float-vs-fixed spike agreement (reported; the quantization is close, not exact).
    fl, fi = res.float_run, res.fixed_run
    agreement = {n: float(np.mean(fl.spikes[n] == fi.spikes[n])) for n in LAYERS}
    print("float-vs-fixed spike agreement per layer:", {n: round(a, 4) for n, a in agreement.items()})
    assert min(agreement.values()) > 0.85, agreement  # random weights; errors compound with depth


def test_path_lengths_count_synapses_and_relays_leave_the_contract_unchanged(calibrated: dict[str, Any]) -> None:
    fx = calibrated["res"].artifact.fx
    lengths = fx.path_lengths()
    assert lengths["n3"] == {"b1c2": 3, "n1_to_n3": 2}
    assert lengths["n5"] == {"b2c2": 5, "proj": 4}
    assert lengths["n6"] == {"fc": 6}
    pytest.importorskip("lava")
    if sys.version_info[:2] != (3, 10):
        pytest.skip("lava-nc 0.10 installs on Python 3.10 only")
    from lnm_deploy.lava_backend.runner import align_paths

    aligned, relays = align_paths(fx)
    assert relays == ["n1_to_n3__delay1", "proj__delay1"]
    assert {len(set(v.values())) for v in aligned.path_lengths().values()} == {1}
    x = calibrated["x"][:4]
    ref, got = run_fx(fx, x, record=True), run_fx(aligned, x, record=True)
    for n in LAYERS:
        assert np.array_equal(got.spikes[n], ref.spikes[n]), n
    for r in relays:  # a relay repeats its source's spikes
        src = "n1" if r.startswith("n1") else "n3"
        assert np.array_equal(got.spikes[r], ref.spikes[src])


def _equal_paths_target(tmp_path: Path) -> Any:
    text = Path(load_target("loihi2").path).read_text()
    text = text.replace('name = "loihi2"', 'name = "eqpaths"').replace('path_delays = "relay"', 'path_delays = "equal"')
    path = tmp_path / "eqpaths.toml"
    path.write_text(text)
    return load_target(path)


def test_calibrate_refuses_unequal_paths_for_a_target_that_cannot_delay(tmp_path: Path) -> None:
    target = _equal_paths_target(tmp_path)
    assert target.info.path_delays == "equal"
    g = mlp_skip()
    with pytest.raises(UnsupportedError, match=r"node 'l2'.*l0_to_l2: 2, a2: 3.*eqpaths"):
        calibrate_network(g, _spikes((6, 5, 6)), target, load_recipe("default"), progress=False)
    # equal paths pass
    chain = ir.Graph(nodes={k: v for k, v in g.nodes.items()}, edges=[e for e in g.edges if e != ("l0", "l2")])
    calibrate_network(chain, _spikes((6, 5, 6)), target, load_recipe("default"), progress=False)


def test_target_path_delays_is_checked_and_optional(tmp_path: Path) -> None:
    from lnm_deploy.errors import UserInputError
    from lnm_deploy.targets.spec import target_from_toml

    text = Path(load_target("loihi2").path).read_text()
    assert target_from_toml(text.replace('path_delays = "relay"\n', "").replace(
        'path_delays = "relay"', ""), "old").info.path_delays == "relay"
    with pytest.raises(UserInputError, match="path_delays"):
        target_from_toml(text.replace('path_delays = "relay"', 'path_delays = "fifo"'), "bad")


@pytest.mark.lava
@pytest.mark.skipif(sys.version_info[:2] != (3, 10), reason="lava-nc 0.10 installs on Python 3.10 only")
def test_resnet_fxsim_onnx_lava_bit_exact(calibrated: dict[str, Any]) -> None:
    from lnm_deploy.lava_backend import run_lava
    from lnm_deploy.onnx_backend import run_onnx

    fx, x = calibrated["res"].artifact.fx, calibrated["x"][:3]
    ref = run_fx(fx, x, record=True)
    onnx = run_onnx(fx, x)
    lava = run_lava(fx, x, record=True)
    assert set(lava.spikes) == set(ref.spikes) == set(LAYERS)
    for n in LAYERS:
        assert np.array_equal(lava.spikes[n], ref.spikes[n]), n
        assert np.array_equal(onnx.spikes[n], ref.spikes[n]), n
        for v, a in ref.states[n].items():
            assert np.array_equal(lava.states[n][v], a), (n, v)


@pytest.mark.lava
@pytest.mark.skipif(sys.version_info[:2] != (3, 10), reason="lava-nc 0.10 installs on Python 3.10 only")
def test_dense_identity_skip_and_hand_made_skips_on_lava() -> None:
    from lnm_deploy.lava_backend import run_lava

    g = mlp_skip()
    x = _spikes((4, 6, 6), seed=3)
    fx = calibrate_network(g, x, load_target("loihi2-lif"), load_recipe("default"), progress=False).artifact.fx
    skip = fx.nodes["l0_to_l2"]
    assert isinstance(skip, FxDense) and np.array_equal(skip.weight, skip.weight.flat[0] * np.eye(8, dtype=int))
    ref = run_fx(fx, x)
    assert ref.spikes["l2"].sum() > 0
    got = run_lava(fx, x)
    for n in ref.spikes:
        assert np.array_equal(got.spikes[n], ref.spikes[n]), n
    # Paths differing by two synapses, from the input, and through a flatten of a 3-d layer.
    rng = np.random.default_rng(4)
    h = fx_sequential([("c0", FxConv2d(weight=rng.integers(-3, 6, (2, 1, 3, 3)), padding=(1, 1))),
                       ("s0", FxLIF(shape=(2, 4, 4), du=4095, dv=100, vth=2)),
                       ("c1", FxConv2d(weight=rng.integers(-3, 6, (2, 2, 3, 3)), padding=(1, 1))),
                       ("s1", FxLIF(shape=(2, 4, 4), du=4000, dv=100, vth=3)),
                       ("f", FxConv2d(weight=rng.integers(-2, 5, (2, 2, 1, 1)))),
                       ("s2", FxLIF(shape=(2, 4, 4), du=4000, dv=0, vth=2)),
                       ("fl", FxFlatten()), ("d3", FxDense(weight=rng.integers(-40, 90, (5, 32)))),
                       ("l3", FxLIF(shape=(5,), du=3000, dv=200, vth=20))], (1, 4, 4))
    h.nodes.update({"skip_in": FxConv2d(weight=rng.integers(0, 4, (2, 1, 1, 1))), "fl0": FxFlatten(),
                    "skip_dense": FxDense(weight=rng.integers(-30, 80, (5, 32)))})
    h.edges += [("input", "skip_in"), ("skip_in", "s2"), ("s0", "fl0"), ("fl0", "skip_dense"), ("skip_dense", "l3")]
    assert h.path_lengths()["s2"] == {"f": 3, "skip_in": 1}
    assert h.path_lengths()["l3"] == {"d3": 4, "skip_dense": 2}
    xs = _spikes((2, 7, 1, 4, 4), seed=6, p=0.5).astype(np.uint8)
    ref = run_fx(h, xs, record=True)
    assert ref.spikes["s2"].sum() > 0 and ref.spikes["l3"].sum() > 0
    got = run_lava(h, xs, record=True)
    assert set(got.spikes) == set(ref.spikes)
    for n in ref.spikes:
        assert np.array_equal(got.spikes[n], ref.spikes[n]), n
        assert np.array_equal(got.states[n]["v"], ref.states[n]["v"]), n


# ------------------------------------------------------------------------------------------------
# Model side: VGG- and ResNet-style LNM networks (lnm_deploy.model.builders)


@pytest.fixture(scope="module")
def digits_x() -> np.ndarray:
    pytest.importorskip("torch")
    from lnm_deploy.model import load_digits_split, rate_encode

    sp = load_digits_split()
    return rate_encode(sp.x_train[:24], 8, seed=0).reshape(24, 8, 1, 8, 8).astype(np.float64)


def _built(name: str, x: np.ndarray) -> tuple[Any, ir.Graph]:
    torch = pytest.importorskip("torch")
    from lnm_deploy.model import init_batchnorm, model_to_ir, resnet, vgg

    torch.manual_seed(0)
    model = {"vgg": vgg, "resnet": resnet}[name](dtype=torch.float64)
    init_batchnorm(model, torch.as_tensor(x))
    return model, model_to_ir(model, (1, 8, 8))


@pytest.mark.parametrize("name", ["vgg", "resnet"])
def test_builders_export_batchnorm_folded_max_pool_and_residual_sums(name: str, digits_x: np.ndarray,
                                                                     tmp_path: Path) -> None:
    import torch

    from lnm_deploy.model import load_model, model_to_ir, save_model

    model, g = _built(name, digits_x)
    kinds = {n: node.kind for n, node in g.nodes.items()}
    assert not any("bn" in n for n in g.nodes)  # every BatchNorm folded into its Conv2d / Linear
    sums = {n: sorted(g.predecessors(n)) for n, k in kinds.items() if k == "neuron" and len(g.predecessors(n)) > 1}
    if name == "vgg":
        assert sums == {} and kinds["maxpool1"] == "neuron" and kinds["maxpool1_sum"] == "sumpool2d"
    else:
        assert sums == {"b1_out": ["b1_conv2", "stem_lnm"], "b2_out": ["b2_conv2", "b2_proj"]}
        assert g.nodes["b2_proj"].stride == (2, 2) and g.nodes["b2_proj"].weight.shape[2:] == (1, 1)
    # the float executor agrees with the torch forward spike for spike (float64)
    x = digits_x[:6]
    with torch.no_grad():
        _, rec = model(torch.as_tensor(x), record=True)
    ref = run_float(g, x)
    for n, s in ref.spikes.items():
        assert 0 < s.mean() < 1, n
        assert np.array_equal(rec[n].get("s", rec[n].get("out")).numpy(), s), n
    # the model file keeps the skips
    save_model(model, tmp_path / "m.safetensors")
    back = model_to_ir(load_model(tmp_path / "m.safetensors"), (1, 8, 8))
    assert back.edges == g.edges
    assert np.array_equal(run_float(back, x).output, ref.output)


@pytest.mark.lava
@pytest.mark.skipif(sys.version_info[:2] != (3, 10), reason="lava-nc 0.10 installs on Python 3.10 only")
@pytest.mark.parametrize("name", ["vgg", "resnet"])
def test_builders_calibrate_for_loihi2_and_run_lava_bit_exact(name: str, digits_x: np.ndarray) -> None:
    from lnm_deploy.lava_backend import run_lava

    _, g = _built(name, digits_x)
    res = calibrate_network(g, digits_x, load_target("loihi2"), load_recipe("default"), progress=False)
    fx = res.artifact.fx
    x = digits_x[:8]
    ref = run_fx(fx, x)
    got = run_lava(fx, x)
    assert set(got.spikes) == set(ref.spikes)
    for n in ref.spikes:
        assert np.array_equal(got.spikes[n], ref.spikes[n]), n
    agreement = {n: float(np.mean(res.float_run.spikes[n] == res.fixed_run.spikes[n])) for n in ref.spikes}
    print(f"{name}: float-vs-fixed spike agreement per layer:", {n: round(a, 4) for n, a in agreement.items()})
    assert min(agreement.values()) > 0.8, agreement


def test_builders_refuse_bad_shapes_by_name() -> None:
    pytest.importorskip("torch")
    from lnm_deploy.errors import UserInputError
    from lnm_deploy.model import resnet, vgg

    for make in (vgg, resnet):
        for shape in ((8, 8), (1, 8.5, 8), (0, 8, 8), 8):
            with pytest.raises(UserInputError, match=r"input_shape must be \(C, H, W\)"):
                make(shape, (4,))
        for channels in ((4, 0), 4, "48"):
            with pytest.raises(UserInputError, match="channels must be a sequence of positive integers"):
                make((1, 8, 8), channels)
        make(np.array([1, 8, 8]), (4,))  # any sequence of three integers
        make((1, 8, 8), (4.0, 8.0), classes=3.0)  # integral floats are integers (used as ints)
    with pytest.raises(UserInputError, match="at least one stage"):
        resnet((1, 8, 8), ())
    for make in (vgg, resnet):  # the initial v_th: NaN never fires, <= 0 fires at rest
        for bad in (float("nan"), float("inf"), -1, 0, "1", True):
            with pytest.raises(UserInputError, match="threshold must be a finite number above 0"):
                make((1, 8, 8), (4,), threshold=bad)
        make((1, 8, 8), (4,), threshold=0.25)
    # an input shape with the wrong channel count is the caller's input_shape (it was exit 3, no hint)
    from lnm_deploy.model import model_to_ir

    with pytest.raises(UserInputError, match=r"input_shape \(2, 8, 8\) .* does not fit the model: node 'stem'"):
        model_to_ir(resnet((1, 8, 8), (4,)).eval(), (2, 8, 8))


def test_init_batchnorm_refuses_bad_data_by_name() -> None:
    """torch's own errors ("Expected more than 1 value per channel", conv2d shape errors) were
    shown for data the model cannot take; NaN data set NaN statistics."""
    torch = pytest.importorskip("torch")
    from lnm_deploy.errors import UserInputError
    from lnm_deploy.model import init_batchnorm, resnet, vgg

    for model in (vgg((1, 8, 8), (4,), 3), resnet((1, 8, 8), (4,), 3)):
        for x, match in ((torch.zeros(1, 1, 1, 8, 8), r"B \* T >= 2"),
                         (torch.zeros(2, 2, 64), r"\(B, T, C, H, W\) with 1 channels"),
                         (torch.zeros(2, 2, 3, 8, 8), "with 1 channels"),
                         (torch.full((2, 2, 1, 8, 8), float("nan")), "NaN or inf"),
                         (torch.zeros(2, 2, 1, 8, 8, dtype=torch.complex64), "real numbers"),
                         ("abc", "array of numbers"),
                         (torch.zeros(2, 2, 1, 16, 16), r"\(2, 2, .*16, 16\)")):
            with pytest.raises(UserInputError, match=match):
                init_batchnorm(model, x)
            assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
        init_batchnorm(model, np.ones((2, 3, 1, 8, 8), np.uint8))  # spikes as integers


def test_lnm_graph_refuses_bad_skips() -> None:
    pytest.importorskip("torch")
    from torch import nn

    from lnm_deploy.errors import UserInputError
    from lnm_deploy.model import LNM, LNMGraph

    layers = {"fc1": nn.Linear(4, 3), "l1": LNM(3), "fc2": nn.Linear(3, 3), "l2": LNM(3)}
    with pytest.raises(UserInputError, match=r"'fc2'.*only an LNM layer sums"):
        LNMGraph(layers, {"fc2": ["l1", "fc1"]})
    with pytest.raises(UserInputError, match="'l1' reads \\['l2'\\]"):
        LNMGraph(layers, {"l1": ["l2"]})
    with pytest.raises(UserInputError, match="does not have"):
        LNMGraph(layers, {"nope": ["l1"]})
    g = LNMGraph(layers, {"l2": ["fc2", "l1"]})
    assert g.sources("l2") == ["fc2", "l1"] and g.sources("fc1") == ["input"]
    # a skip of another shape: named with the fix, not taken for a wrong input shape
    from lnm_deploy.model import model_to_ir

    m = LNMGraph({"conv1": nn.Conv2d(1, 2, 3, padding=1), "lnm1": LNM((2, 6, 6)), "pool": nn.AvgPool2d(2),
                  "conv2": nn.Conv2d(2, 2, 1), "lnm2": LNM((2, 3, 3))}, {"lnm2": ["conv2", "lnm1"]})
    with pytest.raises(GraphError, match=r"'lnm2' sums \['conv2', 'lnm1'\].*project it with a 1x1 Conv2d") as e:
        model_to_ir(m, (1, 6, 6))
    assert e.value.node == "lnm2" and "input_shape" not in str(e.value)


@pytest.mark.parametrize("inputs", [
    {"lnm_a": ["conv"], "bn": ["conv"]},  # the conv read by a layer before the BatchNorm
    {"bn": ["conv"], "lnm_b": ["bn"], "lnm_a": ["conv"]},  # ... and after it
    {"bn": ["conv"], "lnm_a": ["bn", "conv"], "lnm_b": ["bn"]},  # a residual sum of BN(conv) + conv
])
def test_a_batchnorm_on_a_shared_convolution_leaves_the_convolution_to_its_other_readers(
        inputs: dict[str, list[str]]) -> None:
    """A BatchNorm folds into the Conv2d it reads; where other layers read that Conv2d too, they
    keep its unnormalised output (the BatchNorm becomes a folded copy of it): once, every reader
    got the folded one, silently."""
    torch = pytest.importorskip("torch")
    from torch import nn

    from lnm_deploy.model import LNM, LNMGraph, model_to_ir

    torch.manual_seed(0)
    layers = {"conv": nn.Conv2d(1, 2, 3, padding=1), "bn": nn.BatchNorm2d(2),
              "lnm_a": LNM((2, 6, 6), threshold=0.2), "lnm_b": LNM((2, 6, 6), threshold=0.2)}
    order = ["conv", *inputs]
    order += [n for n in layers if n not in order]
    m = LNMGraph({n: layers[n] for n in order}, inputs).double().eval()
    with torch.no_grad():
        m["conv"].weight.fill_(0.3)
        m["conv"].bias.zero_()
        m["bn"].running_mean.fill_(1.0)
        m["bn"].running_var.fill_(0.25)
        m["bn"].weight.fill_(3.0)
    x = (np.random.default_rng(0).random((2, 4, 1, 6, 6)) < 0.5).astype(np.float64)
    g = model_to_ir(m, (1, 6, 6))
    assert len(g.edges) == len(set(g.edges)), g.edges
    _, rec = m(torch.from_numpy(x), record=True)
    got = run_float(g, x)
    for n in ("lnm_a", "lnm_b"):
        want = rec[n]["s"].detach().numpy()
        assert want.sum() > 0 and np.array_equal(got.spikes[n], want), n
    assert not np.array_equal(got.spikes["lnm_a"], got.spikes["lnm_b"])  # the two readers differ


def test_two_batchnorms_on_one_convolution_leave_no_dead_node() -> None:
    """Every reader of the Conv2d is a BatchNorm: each becomes a folded copy, and the conv itself,
    read by nothing, is not exported."""
    torch = pytest.importorskip("torch")
    from torch import nn

    from lnm_deploy.model import LNM, LNMGraph, model_to_ir

    torch.manual_seed(1)
    m = LNMGraph({"conv": nn.Conv2d(1, 4, 3, padding=1), "bnA": nn.BatchNorm2d(4), "lA": LNM((4, 6, 6), threshold=0.2),
                  "bnB": nn.BatchNorm2d(4), "lB": LNM((4, 6, 6), threshold=0.2), "out": LNM((4, 6, 6), threshold=0.2)},
                 {"bnA": ["conv"], "lA": ["bnA"], "bnB": ["conv"], "lB": ["bnB"], "out": ["lA", "lB"]}).double()
    with torch.no_grad():
        m["bnB"].running_var.fill_(4.0)
    m.eval()
    g = model_to_ir(m, (1, 6, 6))
    assert "conv" not in g.nodes and ("input", "bnA") in g.edges and ("input", "bnB") in g.edges
    x = (np.random.default_rng(1).random((2, 4, 1, 6, 6)) < 0.5).astype(np.float64)
    _, rec = m(torch.from_numpy(x), record=True)
    got = run_float(g, x)
    for n in ("lA", "lB", "out"):
        assert np.array_equal(got.spikes[n], rec[n]["s"].detach().numpy()), n


# ------------------------------------------------------------------------------------------------
# BatchNorm at NIR import: Conv2d -> Scale (gamma / sqrt(var + eps)) [-> depthwise 1x1 bias] folds


def _bn_graph(scale: np.ndarray) -> tuple[ir.Graph, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    w, b = rng.normal(0.2, 0.6, (4, 2, 3, 3)), rng.normal(0, 0.1, 4)
    beta = rng.normal(0, 0.2, 4)
    g = ir.sequential([("conv", ir.Conv2d(weight=w, bias=b, padding=1)), ("bn", ir.Scale(scale=scale)),
                       ("bn_bias", ir.Conv2d(weight=np.ones((4, 1, 1, 1)), bias=beta, groups=4)),
                       ("n", ir.Neuron(shape=(4, 8, 8), poly=[0.0, 0.9], v_th=0.6))], (2, 8, 8))
    return g, w, b, beta, scale


def test_batchnorm_as_scale_after_conv_in_nir_folds_into_the_convolution(tmp_path: Path) -> None:
    import warnings

    gamma = np.random.default_rng(1).uniform(0.5, 2.0, 4)
    g, w, b, beta, _ = _bn_graph(gamma.reshape(4, 1, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nir 1.0.8's grouped-conv shape note
        write_nir(g, tmp_path / "bn.nir")
    read = read_nir(tmp_path / "bn.nir")
    assert [type(n).__name__ for n in read.nodes.values()][1:4] == ["Conv2d", "Scale", "Conv2d"]
    layer = fold(read).layers["n"]
    (syn,) = layer.synapses
    assert syn.kind == "conv" and syn.conv["padding"] == (1, 1) and syn.weight.shape == (4, 2, 3, 3)
    np.testing.assert_allclose(syn.weight, w * gamma[:, None, None, None], rtol=1e-12)
    np.testing.assert_allclose(layer.bias[:, 0, 0], b * gamma + beta, rtol=1e-12)
    # the folded convolution is the chain: same spikes; and it calibrates to one integer conv
    folded = ir.sequential([("conv", ir.Conv2d(weight=syn.weight, bias=layer.bias[:, 0, 0], padding=1)),
                            ("n", read.nodes["n"])], (2, 8, 8))
    x = _spikes((4, 6, 2, 8, 8), seed=2)
    ref = run_float(read, x)
    assert 0 < ref.spikes["n"].mean() < 1
    assert np.array_equal(run_float(folded, x).spikes["n"], ref.spikes["n"])
    fx = calibrate_network(read, x, load_target("loihi2"), load_recipe("default"), progress=False).artifact.fx
    assert [n for n in fx.nodes if fx.nodes[n].role == "synapse"] == ["bn_bias"]


def test_a_scale_that_varies_across_positions_is_refused_naming_it() -> None:
    scale = np.random.default_rng(3).uniform(0.5, 2.0, (4, 8, 8))
    g, *_ = _bn_graph(scale)
    with pytest.raises(UnsupportedError, match=r"node 'bn_bias'.*Scale 'bn'.*varies across positions"):
        fold(g)


def test_a_skip_of_another_shape_read_from_nir_names_the_skip() -> None:
    """A NIR graph summing a (32,) skip into a (16,) layer: the error names the layer, the input
    whose shape does not fit, every summed input and the fix (not only the layer's main input)."""
    import nir

    from lnm_deploy.errors import GraphError
    from lnm_deploy.nir_io import from_nir

    rng = np.random.default_rng(0)

    def lif(n: int) -> nir.LIF:
        tau = np.full(n, 1e-3)
        return nir.LIF(tau=tau, r=np.ones(n), v_leak=np.zeros(n), v_threshold=np.ones(n), v_reset=np.zeros(n))

    nodes = {"input": nir.Input(input_type={"input": np.array([16])}),
             "a1": nir.Affine(weight=rng.normal(0, 0.5, (32, 16)), bias=np.zeros(32)), "l1": lif(32),
             "a2": nir.Affine(weight=rng.normal(0, 0.5, (16, 32)), bias=np.zeros(16)), "l2": lif(16),
             "output": nir.Output(output_type={"output": np.array([16])})}
    edges = [("input", "a1"), ("a1", "l1"), ("l1", "a2"), ("a2", "l2"), ("l2", "output"), ("l1", "l2")]
    g = nir.NIRGraph(nodes=nodes, edges=edges, type_check=False)
    with pytest.raises(GraphError, match=r"node 'l2': .*\(32,\) from 'l1'; it sums the outputs of 'a2', 'l1'.*1x1 Conv2d"):
        from_nir(g, dt=1e-3)
