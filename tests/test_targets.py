"""Target files: shipped registry, strict loading, design-rule checks; FxGraph metadata encoding."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from fx_nets import random_conv_net, random_dense_net, spikes
from hypothesis import given, settings
from hypothesis import strategies as st

from lnm_deploy.configfile import tomllib
from lnm_deploy.errors import GraphError, LNMDeployWarning, UnsupportedError, UserInputError
from lnm_deploy.fixedpoint import (
    FxConv2d,
    FxDense,
    FxFlatten,
    FxLIF,
    FxNeuron,
    FxPoly,
    Primitive,
    decode_fxgraph,
    dense_effective_weight,
    dense_weight_grid,
    encode_fxgraph,
    fx_sequential,
    primitives,
)
from lnm_deploy.fixedpoint.primitives import register, unregister
from lnm_deploy.fxsim import compare_runs, run_fx
from lnm_deploy.targets import (
    Target,
    available_targets,
    check_graph,
    is_old_format,
    list_targets,
    load_target,
    shipped_targets_dir,
    spec_keys,
    target_from_toml,
)

LOIHI2 = (shipped_targets_dir() / "loihi2.toml").read_text()

#: ``targets/loihi2.toml`` as shipped before sections were keyed by primitive: artifacts written
#: then embed this text and must still load.
OLD_LOIHI2 = """# Loihi 2 as simulated bit-exactly by Lava 0.10 (Loihi2SimCfg(select_tag="fixed_pt")), plus
# lnm-deploy's programmable polynomial neuron. Semantics: docs/fixed-point.md.

[target]
name = "loihi2"
description = "Loihi 2 (Lava 0.10 fixed_pt): Dense/Conv synapses, stock LIF and a programmable polynomial neuron"
reference = "lava-nc 0.10.0 PyDenseModelBitAcc, PyConvModelFixed, PyLifModelBitAcc; lnm-deploy PolyNeuron"
input = "binary"
recurrence = "self"     # self-loops through one synapse (Lava's Dense latency = the one-step delay)
flatten = true

[dense]
weight_bits = 8                              # weights are clipped to 8 bits (+ sign)
num_weight_bits = [1, 8]                     # LSBs kept; mixed sign loses one more bit
weight_exp = [-8, 7]                         # shifts the accumulated sum (floor to the right)
sign_modes = ["mixed", "excitatory", "inhibitory"]
out_bits = 32                                # a_out travels through an int32 channel (wraps)
max_fan_in = 65536

[conv]
weight = [-256, 255]                         # used as given (no clip, no LSB truncation)
weight_exp = [0, 0]                          # Lava's Conv ignores weight_exp
out_bits = 24                                # the output wraps modulo 2^24
max_fan_in = 65535                           # keeps Lava's float32 convolution exact

[sumpool]
out_bits = 24
max_window = 64

[neurons.lif]
state_bits = 24                              # u wraps into (-2^23, 2^23], v saturates to +-(2^23-1)
decay_bits = 12                              # u *= (4096 - du - 1)/4096, v *= (4096 - dv)/4096
vth_shift = 6                                # spike if v > vth << 6
act_shift = 6                                # u += a_in << 6
du = [0, 4095]
dv = [0, 4095]
vth = [0, 131071]                            # 17 bits
bias_mant = [-4096, 4095]                    # 13 bits, bias = bias_mant << bias_exp
bias_exp = [0, 7]
u_overflow = "wrap"
v_overflow = "saturate"
decay_rounding = "trunc"                     # toward zero

[neurons.poly]
max_degree = 3                               # P(v) by fixed-point Horner
state_bits = 24                              # v and c
acc_bits = 32                                # Horner register width R
coef_bits = 16                               # signed coefficient mantissas
decay_bits = 12                              # optional current: c *= (4096 - syn_decay)/4096
shift = [0, 40]                              # per Horner step (per layer)
in_shift = [0, 16]                           # x = a_in << in_shift
rounding = ["nearest", "floor", "trunc"]
overflow = ["saturate"]                      # never a silent wrap
reset = ["value", "subtract"]
synapse = true
"""


def test_registry_scans_the_shipped_directory() -> None:
    names = available_targets()
    assert {"loihi2", "loihi2-lif"} <= set(names)
    assert set(names) == {p.stem for p in shipped_targets_dir().glob("*.toml")}
    for t in list_targets():
        assert t.summary().startswith(t.name + ":")
    assert load_target("loihi2").poly is not None and load_target("loihi2").lif is not None
    assert load_target("loihi2-lif").poly is None


def test_summary_shows_the_declared_system_and_energy_figures() -> None:
    t = load_target("loihi2")
    assert t.resources is not None and t.energy is not None
    line = t.summary()
    assert f"{t.resources.chips} chip(s) x {t.resources.cores_per_chip} cores" in line
    assert f"{t.resources.synaptic_memory_bits / 8192:g} KiB synaptic memory per core" in line
    assert f"{t.energy.synop_pj:g} pJ/synop" in line and "unverified" in line


def test_user_file_by_path(tmp_path: Path) -> None:
    p = tmp_path / "mychip.toml"
    p.write_text(LOIHI2.replace('name = "loihi2"', 'name = "mychip"'))
    assert load_target(p).name == "mychip"
    assert load_target(str(p)).name == "mychip"


def test_unknown_target_lists_the_shipped_ones() -> None:
    with pytest.raises(UserInputError, match="loihi2-lif"):
        load_target("truenorth")
    with pytest.raises(UserInputError, match="does not exist"):
        load_target("missing.toml")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.replace("max_fan_in = 65536", "max_fan_in = 65536\nfan_out = 3"), r"unknown key.*fan_out.*\[dense\]"),
        (lambda s: s.replace("out_bits = 32", ""), r"missing key.*out_bits.*\[dense\]"),
        (lambda s: s.replace("acc_bits = 32", "acc_bits = 48"), r"key 'poly\.acc_bits' = 48 is out of range \[2, 40\]"),
        (lambda s: s.replace("state_bits = 24                              # u wraps", "state_bits = 40 # u"),
         r"key 'lif\.state_bits' = 40 is out of range \[2, 30\]"),
        (lambda s: s.replace("weight_bits = 8 ", "weight_bits = 12 "), r"key 'dense\.weight_bits' = 12 is out of range \[1, 8\]"),
        (lambda s: s.replace("weight_bits = 8 ", "weight_bits = 4 "), r"dense\.num_weight_bits' = \[1, 8\] exceeds \[1, 4\]"),
        (lambda s: s.replace("num_weight_bits = [1, 8]", "num_weight_bits = [1, 6]"),
         r"dense\.num_weight_bits' = \[1, 6\] must end at 'dense\.weight_bits' = 8"),
        (lambda s: s.replace('rounding = ["nearest", "floor", "trunc"]', 'rounding = ["stochastic"]'), r"poly\.rounding.*stochastic"),
        (lambda s: s.replace('reset = ["value", "subtract"]', 'reset = ["zero"]'), r"poly\.reset' has 'zero'; allowed: \['value', 'subtract'\]"),
        (lambda s: s.replace("max_degree = 3 ", "max_degree = 4 "), r"poly\.max_degree' = 4 is out of range \[0, 3\]"),
        (lambda s: s.replace("du = [0, 4095]", "du = [0, 9000]"), r"lif\.du.*exceeds"),
        (lambda s: s.replace("du = [0, 4095]", "du = 7"), r"lif\.du' must be a range"),
        (lambda s: s.replace("[conv2d]", "[maxpool]"), r"unknown section \[maxpool\].*one of \[.*'conv2d'.*'lif'"),
        (lambda s: s.replace("[conv2d]", "[conv]"), r"unknown section \[conv\]"),
        (lambda s: s.replace("[conv2d]", "[input]"), r"unknown section \[input\] \(offered by every target"),
        (lambda s: s.replace("[flatten]", "[flatten]\nmax_size = 3"), r"\[flatten\] takes no keys"),
        (lambda s: s.replace('recurrence = "self"', 'recurrence = "all"'), r"target\.recurrence' has 'all'"),
        (lambda s: s.replace('u_overflow = "wrap"', 'u_overflow = "saturate"'), r"lif\.u_overflow' has 'saturate'; allowed: \['wrap'\]"),
        (lambda s: s[:s.index("[lif]")], r"needs at least one neuron section"),
        (lambda s: s + "\n[[", r"not valid TOML"),
    ],
)
def test_bad_target_files_name_file_and_key(tmp_path: Path, edit, message: str) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "bad.toml"
    p.write_text(edit(LOIHI2))
    with pytest.raises(UserInputError, match=message) as e:
        load_target(p)
    assert str(p) in str(e.value)


def _net(**lif_kw: int) -> object:
    w = np.array([[2, -4, 254], [0, 6, -256]])
    return fx_sequential([("fc", FxDense(weight=w)), ("lif", FxLIF(shape=(2,), **lif_kw))], (3,))


def test_check_graph_accepts_and_rejects_naming_node_and_limit() -> None:
    t = load_target("loihi2")
    check_graph(_net(), t)  # type: ignore[arg-type]
    g = _net()
    g.nodes["fc"].weight[0, 0] = 3  # type: ignore[attr-defined]
    with pytest.raises(GraphError, match=r"node 'fc'.*weight 3 .* would become 2.*multiples of 2"):
        check_graph(g, t)  # type: ignore[arg-type]
    with pytest.raises(GraphError, match=r"node 'lif'.*vth in \[200000, 200000\] exceeds .*\[0, 131071\]"):
        check_graph(_net(vth=200000), t)  # type: ignore[arg-type]
    poly = fx_sequential([("fc", FxDense(weight=np.array([[2]]))),
                          ("p", FxPoly(shape=(1,), coef=[[0], [30000]], shifts=(15,)))], (1,))
    check_graph(poly, t)
    with pytest.raises(UnsupportedError, match=r"node 'p'.*does not offer the 'poly' primitive.*fit the polynomial"):
        check_graph(poly, load_target("loihi2-lif"))
    poly.nodes["p"].overflow = "wrap"  # type: ignore[attr-defined]
    with pytest.raises(GraphError, match=r"node 'p'.*overflow 'wrap' not offered"):
        check_graph(poly, t)


def test_dense_weight_grid_matches_effective_weights() -> None:
    for mode in ("mixed", "excitatory", "inhibitory"):
        for bits in range(1, 9):
            step, lo, hi = dense_weight_grid(bits, mode)
            grid = np.arange(lo, hi + 1, step)
            assert np.array_equal(dense_effective_weight(grid, bits, mode), grid)
            allw = np.arange(-400, 400)
            assert set(np.unique(dense_effective_weight(allw, bits, mode))) <= set(grid.tolist())


@settings(max_examples=30)
@given(seed=st.integers(0, 2**32 - 1))
def test_encode_decode_round_trip_through_nir(seed: int, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Encoded graphs survive nir.write/nir.read and simulate identically."""
    import nir

    rng = np.random.default_rng(seed)
    g = random_conv_net(rng) if seed % 2 else random_dense_net(rng)
    d = encode_fxgraph(g)
    graph = nir.NIRGraph(nodes={"input": nir.Input(input_type=np.array([1])),
                                "output": nir.Output(output_type=np.array([1]))},
                         edges=[("input", "output")], metadata={"lnm_fx": d})
    path = tmp_path_factory.mktemp("nir") / "g.nir"
    nir.write(path, graph)
    back = decode_fxgraph(nir.read(path).metadata["lnm_fx"])
    assert back.edges == g.edges and set(back.nodes) == set(g.nodes)
    x = spikes(rng, 2, 5, g.input_shape)
    m = compare_runs(run_fx(g, x, record=True), run_fx(back, x, record=True), order=g.neuron_names())
    assert m is None, str(m)


def test_decode_rejects_foreign_dicts() -> None:
    with pytest.raises(UserInputError, match="not an lnm-deploy integer graph"):
        decode_fxgraph({"format": "other"})
    d = encode_fxgraph(_net())  # type: ignore[arg-type]
    d["nodes"]["lif"]["tau"] = 3
    with pytest.raises(UserInputError, match=r"node 'lif'.*unknown fields \['tau'\]"):
        decode_fxgraph(d)


# ------------------------------------------------------------------ the table keyed by primitive


def test_sections_are_keyed_by_primitive_and_the_accessors_read_them() -> None:
    t = load_target("loihi2")
    assert list(t.sections) == ["flatten", "dense", "conv2d", "lif", "poly", "adaptive_poly", "li_readout"]
    assert t.offered() == ["input", "output", "flatten", "dense", "conv2d", "lif", "poly", "adaptive_poly",
                         "li_readout"]
    assert t.offers("input") and t.offers("lif") and not t.offers("sumpool2d") and not t.offers("nonsense")
    for kind, spec in t.sections.items():
        p = primitives()[kind]
        assert (spec is None) == (p.spec is None) and (spec is None or isinstance(spec, p.spec)), kind
        assert spec_keys(kind) == ([f.name for f in dataclasses.fields(p.spec)] if p.spec else [])
    assert t.dense is t.spec("dense") and t.conv is t.spec("conv2d") and t.lif is t.spec("lif")
    assert t.poly is t.spec("poly") and t.neurons() == ["lif", "poly", "adaptive_poly", "li_readout"]
    lif_only = load_target("loihi2-lif")
    assert lif_only.poly is None and lif_only.neurons() == ["lif", "atrlif", "li_readout"]
    with pytest.raises(UnsupportedError, match=r"node 'p': target 'loihi2-lif' does not offer the 'poly' primitive "
                                               r"\(it offers \['input', 'output', 'flatten', 'dense', 'conv2d', 'lif', 'atrlif', "
                                               r"'li_readout'\]\)"):
        lif_only.spec("poly", node="p")
    # one section replaced (or dropped) by kind, as dataclasses.replace does
    four = dataclasses.replace(t, dense=dataclasses.replace(t.dense, num_weight_bits=(1, 4)))
    assert four.dense.num_weight_bits == (1, 4) and four.poly is t.poly and t.dense.num_weight_bits == (1, 8)
    assert Target(t.info, t.sections, t.path, conv2d=None).conv is None
    with pytest.raises(TypeError, match="neurons"):
        Target(t.info, t.sections, t.path, neurons=None)


def test_a_target_without_dense_loads_and_says_so(tmp_path: Path) -> None:
    text = LOIHI2[:LOIHI2.index("[dense]")] + LOIHI2[LOIHI2.index("[conv2d]"):]
    p = tmp_path / "convonly.toml"
    p.write_text(text)
    t = load_target(p)
    assert not t.offers("dense") and t.conv is not None
    with pytest.raises(UnsupportedError, match="does not offer the 'dense' primitive"):
        _ = t.dense


def _without(tmp_path: Path, section: str) -> Target:
    start = LOIHI2.index(f"[{section}]")
    end = LOIHI2.index("\n[", start + 1)
    p = tmp_path / f"no-{section}.toml"
    p.write_text(LOIHI2[:start] + LOIHI2[end + 1:])
    t = load_target(p)
    assert not t.offers(section)
    return t


def test_check_graph_refuses_a_primitive_the_target_does_not_offer(tmp_path: Path) -> None:
    g = fx_sequential([("conv", FxConv2d(weight=np.arange(-9, 9).reshape(2, 1, 3, 3))),
                       ("n0", FxLIF(shape=(2, 2, 2))), ("flat", FxFlatten()),
                       ("fc", FxDense(weight=np.full((3, 8), 6))), ("n1", FxLIF(shape=(3,)))], (1, 4, 4))
    check_graph(g, load_target("loihi2"))
    with pytest.raises(UnsupportedError, match=r"node 'conv': target '.*' does not offer the 'conv2d' primitive"):
        check_graph(g, _without(tmp_path, "conv2d"))
    with pytest.raises(UnsupportedError, match=r"node 'flat': .*does not offer the 'flatten' primitive"):
        check_graph(g, _without(tmp_path, "flatten"))


@dataclass(eq=False)
class _FxToy(FxNeuron):
    """A neuron primitive registered by this test only, without a design rule."""

    kind: ClassVar[str] = "toy"

    def state_names(self) -> tuple[str, ...]:
        return ("v",)


def test_check_graph_refuses_a_primitive_without_a_rule(tmp_path: Path) -> None:
    register(Primitive("toy", _FxToy, None, None))
    try:
        p = tmp_path / "toychip.toml"
        p.write_text(LOIHI2.replace('name = "loihi2"', 'name = "toychip"') + "\n[toy]\n")
        t = load_target(p)
        assert t.offers("toy") and t.spec("toy") is None and t.neurons() == ["lif", "poly", "adaptive_poly", "li_readout",
                                                                                          "toy"]
        g = fx_sequential([("fc", FxDense(weight=[[2, 4]])), ("odd", _FxToy(shape=(1,)))], (2,))
        with pytest.raises(UnsupportedError, match=r"node 'odd': no design rule for 'toy' nodes"):
            check_graph(g, t)
        with pytest.raises(UnsupportedError, match=r"node 'odd': target 'loihi2' does not offer the 'toy'"):
            check_graph(g, load_target("loihi2"))
    finally:
        unregister("toy")
    assert "toy" not in primitives()


# ---------------------------------------------------------------------------- the old format


def test_the_old_format_is_converted_to_the_same_target(tmp_path: Path) -> None:
    new = load_target("loihi2")
    new = Target(new.info, new.sections, new.path, adaptive_poly=None, li_readout=None,  # sections the old format predates
                 poly=dataclasses.replace(new.poly, c_bias=(0, 0), max_spike_payload=1))  # the register and graded spikes
    assert is_old_format(tomllib.loads(OLD_LOIHI2)) and not is_old_format(tomllib.loads(LOIHI2))
    embedded = target_from_toml(OLD_LOIHI2, "artifact.nir (embedded target 'loihi2')")
    assert embedded.info == new.info and embedded.sections == new.sections
    p = tmp_path / "loihi2.toml"
    p.write_text(OLD_LOIHI2)
    with pytest.warns(LNMDeployWarning, match="old format"):
        from_file = load_target(p)
    assert from_file.sections == new.sections
    # the old format's own errors still name the file and the key
    for edit, message in [
        (lambda s: s.replace("[sumpool]", "[maxpool]"), r"unknown section.*maxpool.*old target format"),
        (lambda s: s.replace("flatten = true", "flatten = 1"), r"target\.flatten' must be true or false"),
        (lambda s: s.replace("du = [0, 4095]", "du = [0, 9000]"), r"key 'lif\.du' = \[0, 9000\] exceeds"),
    ]:
        with pytest.raises(UserInputError, match=message):
            target_from_toml(edit(OLD_LOIHI2), "old.toml")
    no_flatten = target_from_toml(OLD_LOIHI2.replace("flatten = true", "flatten = false"), "old.toml")
    assert not no_flatten.offers("flatten")


def _small_calibration(target: Target, hidden: int = 5) -> object:
    from lnm_deploy.calibrate import calibrate_network, load_recipe
    from lnm_deploy.ir import Affine, Neuron, sequential

    rng = np.random.default_rng(7)
    g = sequential([("fc1", Affine(weight=rng.normal(0, 0.6, (hidden, 6)))),
                    ("n1", Neuron(shape=(hidden,), poly=[0.0, 0.9, 0.02], v_th=1.0)),
                    ("fc2", Affine(weight=rng.normal(0, 0.6, (3, hidden)))),
                    ("n2", Neuron(shape=(3,), poly=[0.0, 0.8], v_th=1.0))], (6,))
    x = (rng.random((16, 12, 6)) < 0.4).astype(np.uint8)
    return calibrate_network(g, x, target, load_recipe("default"), progress=False)


def test_an_artifact_embedding_the_old_format_still_loads_and_is_rechecked(tmp_path: Path) -> None:
    from lnm_deploy.artifact import read_artifact, write_artifact

    res = _small_calibration(load_target("loihi2"))
    art = res.artifact  # type: ignore[attr-defined]
    assert "[poly]" in art.record["target_spec"]["toml"]
    art.record["target_spec"] = {"name": "loihi2", "toml": OLD_LOIHI2}
    path = write_artifact(art, tmp_path / "old.nir")
    back = read_artifact(path)
    assert set(back.fx.nodes) == set(art.fx.nodes) and back.record["target_spec"]["toml"] == OLD_LOIHI2
    art.fx.nodes["fc1"].weight[0, 0] = 301  # beyond the 8-bit weights of the embedded (old) target
    write_artifact(art, tmp_path / "bad.nir")
    with pytest.raises(GraphError, match=r"do not satisfy its target 'loihi2'.*node 'fc1'"):
        read_artifact(tmp_path / "bad.nir")


def test_a_four_bit_dense_target_loads_and_calibrates(tmp_path: Path) -> None:
    p = tmp_path / "fourbit.toml"
    p.write_text(LOIHI2.replace('name = "loihi2"', 'name = "fourbit"')
                 .replace("weight_bits = 8 ", "weight_bits = 4 ").replace("num_weight_bits = [1, 8]", "num_weight_bits = [1, 4]"))
    t = load_target(p)
    assert t.dense.weight_bits == 4 and t.summary().startswith("fourbit: dense 4-bit weights")
    res = _small_calibration(t)
    fx = res.artifact.fx  # type: ignore[attr-defined]
    denses = [n for n in fx.nodes.values() if isinstance(n, FxDense)]
    assert len(denses) == 2
    for d in denses:
        assert d.num_weight_bits == 4
        step, lo, hi = dense_weight_grid(4, d.sign_mode)
        k = step.bit_length() - 1
        mant = d.weight >> k
        assert np.array_equal(mant << k, d.weight), "weights off the 4-bit grid"
        assert np.abs(mant).max() < 2**4 and d.weight.min() >= lo and d.weight.max() <= hi
        assert np.array_equal(d.effective_weight(), d.weight)
        assert len(np.unique(mant)) > 1
    check_graph(fx, t)
    with pytest.raises(GraphError, match=r"num_weight_bits in \[4, 4\] exceeds target 'fourbit-edited' range \[1, 2\]"):
        check_graph(fx, load_target(_rewrite(tmp_path, p, "num_weight_bits = [1, 4]", "num_weight_bits = [1, 2]",
                                             "weight_bits = 4 ", "weight_bits = 2 ")))


def _rewrite(tmp_path: Path, src: Path, *pairs: str) -> Path:
    text = src.read_text()
    for a, b in zip(pairs[::2], pairs[1::2], strict=True):
        text = text.replace(a, b)
    out = tmp_path / f"{src.stem}-edited.toml"
    out.write_text(text.replace(f'name = "{src.stem}"', f'name = "{out.stem}"'))
    return out


def test_a_file_that_takes_a_shipped_name_but_differs_is_warned(tmp_path: Path) -> None:
    shipped = available_targets()["loihi2"]
    same, mine = tmp_path / "same.toml", tmp_path / "mine.toml"
    same.write_text(shipped.read_text())
    text = shipped.read_text()
    assert "\nchips = 8 " in text
    mine.write_text(text.replace("\nchips = 8 ", "\nchips = 2 "))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_target(same).name == "loihi2"  # an identical copy is the shipped target
    with pytest.warns(LNMDeployWarning, match=r"calls itself 'loihi2'.*differs from it \(\[resources\]\)"):
        assert load_target(mine).resources.chips == 2


@pytest.mark.parametrize("name", ["loihi2", "loihi2-lif"])
@pytest.mark.parametrize("value", [-1, -99, 99])
def test_a_negative_or_huge_width_is_refused_as_out_of_range(name: str, value: int) -> None:
    """A width that other limits are derived from (decay_bits: the decays' unity; vth_shift: the
    threshold's range) is refused by its own range, not by a shift error in the derivation."""
    import re

    text = available_targets()[name].read_text()
    keys = re.findall(r"(?m)^(decay_bits|vth_shift|theta_shift)\s*=", text)
    assert keys
    matches = list(re.finditer(r"(?m)^(decay_bits|vth_shift|theta_shift)\s*=\s*-?\d+", text))
    for m in matches:  # each occurrence (one per section) in turn
        bad = text[: m.start()] + f"{m.group(1)} = {value}" + text[m.end():]
        with pytest.raises(UserInputError, match="out of range"):
            target_from_toml(bad, f"{name} with a bad width")
