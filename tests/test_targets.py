"""Target files: shipped registry, strict loading, design-rule checks; FxGraph metadata encoding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from fx_nets import random_conv_net, random_dense_net, spikes
from hypothesis import given, settings
from hypothesis import strategies as st

from lnm_deploy.errors import GraphError, UnsupportedError, UserInputError
from lnm_deploy.fixedpoint import (
    FxDense,
    FxLIF,
    FxPoly,
    decode_fxgraph,
    dense_effective_weight,
    dense_weight_grid,
    encode_fxgraph,
    fx_sequential,
)
from lnm_deploy.fxsim import compare_runs, run_fx
from lnm_deploy.targets import (
    available_targets,
    check_graph,
    list_targets,
    load_target,
    shipped_targets_dir,
)

LOIHI2 = (shipped_targets_dir() / "loihi2.toml").read_text()


def test_registry_scans_the_shipped_directory() -> None:
    names = available_targets()
    assert {"loihi2", "loihi2-lif"} <= set(names)
    assert set(names) == {p.stem for p in shipped_targets_dir().glob("*.toml")}
    for t in list_targets():
        assert t.summary().startswith(t.name + ":")
    assert load_target("loihi2").poly is not None and load_target("loihi2").lif is not None
    assert load_target("loihi2-lif").poly is None


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
        (lambda s: s.replace("acc_bits = 32", "acc_bits = 48"), r"neurons\.poly\.acc_bits' = 48 is out of range"),
        (lambda s: s.replace("state_bits = 24                              # u wraps", "state_bits = 40 # u"), r"neurons\.lif\.state_bits' = 40"),
        (lambda s: s.replace("weight_bits = 8 ", "weight_bits = 12 "), r"dense\.weight_bits' = 12"),
        (lambda s: s.replace('rounding = ["nearest", "floor", "trunc"]', 'rounding = ["stochastic"]'), r"rounding.*stochastic"),
        (lambda s: s.replace("du = [0, 4095]", "du = [0, 9000]"), r"neurons\.lif\.du.*exceeds"),
        (lambda s: s.replace("du = [0, 4095]", "du = 7"), r"neurons\.lif\.du' must be a range"),
        (lambda s: s.replace("[sumpool]", "[maxpool]"), r"unknown section.*maxpool"),
        (lambda s: s.replace('u_overflow = "wrap"', 'u_overflow = "saturate"'), r"u_overflow"),
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
    with pytest.raises(UnsupportedError, match=r"node 'p'.*no programmable neuron"):
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
