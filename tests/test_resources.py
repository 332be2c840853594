"""Resource mapping (``lnm_deploy.resources``) and the cost model (``lnm_deploy.cost``): the
target sections, the greedy mapper, the calibrate refusal, synaptic operations counted by hand,
per-primitive update costs, messages, and the reports of the demo and a VGG-style network."""

from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from fx_nets import adaptive, chain, dense, lif, poly, random_conv_net, random_dense_net, spikes

import lnm_deploy.fixedpoint as fx
from lnm_deploy.calibrate import calibrate_network, load_recipe
from lnm_deploy.cost import count_cost, resources_report
from lnm_deploy.errors import GraphError, LNMDeployWarning, UnsupportedError, UserInputError
from lnm_deploy.fxsim import run_fx
from lnm_deploy.ir import Affine, Neuron, sequential
from lnm_deploy.resources import MEMORY, NEURONS, check_fits, map_network, signed_bits
from lnm_deploy.targets import load_target, parse_target, shipped_targets_dir
from lnm_deploy.targets.spec import Target

LOIHI2 = load_target("loihi2")
LIF_ONLY = load_target("loihi2-lif")
ROOT = Path(__file__).resolve().parent.parent


def target_with(tmp_path: Path, base: str = "loihi2", **values: object) -> Target:
    """A copy of a shipped target with ``key = value`` lines of [resources]/[energy] replaced."""
    text = (shipped_targets_dir() / f"{base}.toml").read_text(encoding="utf-8")
    for key, v in values.items():
        text, n = re.subn(rf"(?m)^{key} = [^#\n]*", f"{key} = {v} ", text)
        assert n == 1, key
    path = tmp_path / f"{base}-small.toml"
    path.write_text(text, encoding="utf-8")
    return parse_target(path)


def without_chip_sections(tmp_path: Path) -> Target:
    text = (shipped_targets_dir() / "loihi2.toml").read_text(encoding="utf-8")
    path = tmp_path / "bare.toml"
    path.write_text(text.split("\n[resources]")[0], encoding="utf-8")
    return parse_target(path)


# ------------------------------------------------------------------------------ target sections


def test_shipped_targets_declare_sourced_resources_and_energy() -> None:
    for t in (LOIHI2, LIF_ONLY):
        r, e = t.resources, t.energy
        assert r is not None and e is not None
        assert (r.cores_per_chip, r.neurons_per_core, r.synaptic_memory_bits) == (128, 8192, 192 * 1024 * 8)
        assert "Loihi 2" in r.source and "Davies" in e.source
        assert e.synop_pj == 23.6 and e.neuron_update_pj == 52.0 and e.message_pj == 1.7
    text = (shipped_targets_dir() / "loihi2.toml").read_text(encoding="utf-8")
    body = text[text.index("[resources]"):]
    for line in body.splitlines():  # every value carries its source or says it is an assumption
        if re.match(r"^[a-z_]+ = ", line) and not line.startswith("source"):
            assert "#" in line and re.search(r"\[[BODK]\]|ASSUMPTION|operations|multiply|threshold", line), line
    from lnm_deploy.fixedpoint.primitives import primitives

    for t in (LOIHI2, LIF_ONLY):  # every neuron primitive a target offers has its update cost
        offered = {k for k in t.sections if primitives()[k].role == "neuron"}
        assert offered and set(t.energy.neuron_ops) == offered, t.name  # type: ignore[union-attr]


def test_a_target_without_resources_maps_nothing_and_says_so(tmp_path: Path) -> None:
    bare = without_chip_sections(tmp_path)
    assert bare.resources is None and bare.energy is None
    g = random_dense_net(np.random.default_rng(0), recurrent=False)
    assert check_fits(g, bare) is None
    with pytest.raises(UnsupportedError, match=r"declares no \[resources\]"):
        map_network(g, bare)
    x = spikes(np.random.default_rng(1), 2, 4, g.schedule().shapes["input"])
    rep = resources_report(g, bare, x, {"fxsim": run_fx(g, x)})
    assert rep["mapping"] is None and any("declares no [resources]" in n for n in rep["notes"])
    cost = rep["cost"]["fxsim"]
    assert cost["per_inference"]["energy_pj"] is None and cost["per_inference"]["synops"] >= 0
    assert any("no [energy]" in n for n in cost["notes"])


@pytest.mark.parametrize(("key", "value", "match"), [
    ("chips", "0", r"resources.chips"),
    ("weight_storage", '"sparse"', r"resources.weight_storage"),
    ("synop_pj", "-1.0", r"energy.synop_pj"),
])
def test_bad_chip_sections_are_refused_naming_the_key(tmp_path: Path, key: str, value: str, match: str) -> None:
    with pytest.raises(UserInputError, match=match):
        target_with(tmp_path, **{key: value})


def test_energy_prices_only_offered_neurons(tmp_path: Path) -> None:
    text = (shipped_targets_dir() / "loihi2-lif.toml").read_text(encoding="utf-8")
    path = tmp_path / "t.toml"
    path.write_text(text + "poly = { base = 1, per_state = 1, per_degree = 1 }\n", encoding="utf-8")
    with pytest.raises(UserInputError, match="not a neuron primitive this target offers"):
        parse_target(path)


def test_signed_bits() -> None:
    assert signed_bits(-256, 255) == 9 and signed_bits(-1, 0) == 1 and signed_bits(0, 1) == 2
    assert signed_bits(-(2**15), 2**15 - 1) == 16


# ------------------------------------------------------------------------------------ mapping


def two_layer(n_in: int = 20, n_hidden: int = 40, n_out: int = 10) -> fx.FxGraph:
    rng = np.random.default_rng(3)
    return chain([("syn0", dense(rng, n_hidden, n_in, wild=False, sign_modes=False)), ("n0", lif(rng, (n_hidden,))),
                  ("syn1", dense(rng, n_out, n_hidden, wild=False, sign_modes=False)), ("n1", lif(rng, (n_out,)))],
                 (n_in,))


def test_layers_split_by_neurons_per_core(tmp_path: Path) -> None:
    t = target_with(tmp_path, neurons_per_core=16)
    m = map_network(two_layer(), t)
    assert [len(m.layers[n].cores) for n in ("n0", "n1")] == [3, 1]
    assert [(c.layer, c.start, c.stop) for c in m.cores] == [("n0", 0, 16), ("n0", 16, 32), ("n0", 32, 40),
                                                             ("n1", 0, 10)]
    assert m.layers["n0"].limit == NEURONS and m.layers["n1"].limit == "none"
    assert m.cores_used == 4 and m.chips_used == 1 and m.fits and m.limiting_resource == NEURONS
    bits = two_layer().nodes["syn0"].num_weight_bits  # type: ignore[attr-defined]
    assert m.layers["n0"].synapses == 40 * 20 and m.layers["n0"].synaptic_bits == 40 * 20 * bits
    assert list(m.core_of("n0")) == [0] * 16 + [1] * 16 + [2] * 8


def test_layers_split_by_synaptic_memory(tmp_path: Path) -> None:
    g = two_layer()
    bits = g.nodes["syn0"].num_weight_bits  # type: ignore[attr-defined]
    t = target_with(tmp_path, synaptic_memory_bits=20 * bits * 7)  # 7 neurons of n0 per core
    m = map_network(g, t)
    assert [c.neurons for c in m.cores if c.layer == "n0"] == [7, 7, 7, 7, 7, 5]
    assert all(c.synaptic_bits <= t.resources.synaptic_memory_bits for c in m.cores)  # type: ignore[union-attr]
    assert m.layers["n0"].limit == MEMORY and m.limiting_resource == MEMORY
    d = m.to_dict()
    assert d["per_core"]["synaptic_bits_max"] == 20 * bits * 7 and d["ignored"]
    with pytest.raises(GraphError, match=r"node 'n0'.*one neuron .* synaptic memory"):
        map_network(g, target_with(tmp_path, synaptic_memory_bits=20 * bits - 1))


def test_a_network_too_big_for_the_system_is_refused_naming_layer_and_resource(tmp_path: Path) -> None:
    t = target_with(tmp_path, chips=1, cores_per_chip=2, neurons_per_core=16)
    with pytest.raises(GraphError, match=r"node 'n0'.*needs at least 4 cores.*1 chip\(s\) x 2 cores.*neurons per core"):
        check_fits(two_layer(), t)


def test_calibrate_refuses_a_network_too_big_for_one_chip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    g = sequential([("fc0", Affine(weight=rng.normal(0.3, 0.3, (40, 20)))),
                    ("lnm0", Neuron(shape=(40,), poly=[0.0, 0.9, 0.0], v_th=1.0)),
                    ("fc1", Affine(weight=rng.normal(0.1, 0.3, (10, 40)))),
                    ("lnm1", Neuron(shape=(10,), poly=[0.0, 0.9, 0.0], v_th=1.0))], (20,))
    x = (rng.random((8, 6, 20)) < 0.3).astype(np.uint8)
    small = target_with(tmp_path, chips=1, cores_per_chip=2, neurons_per_core=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LNMDeployWarning)
        with pytest.raises(GraphError, match=r"node 'lnm0': does not fit .*neurons per core") as e:
            calibrate_network(g, x, small, load_recipe("default"), progress=False)
        assert e.value.node == "lnm0"
        ok = calibrate_network(g, x, target_with(tmp_path, chips=1, cores_per_chip=4, neurons_per_core=16),
                               load_recipe("default"), progress=False)
    assert ok.report["resources"]["cores_used"] == 4 and ok.report["resources"]["fits"]


# ------------------------------------------------------------------------- synaptic operations


def hand_synops(g: fx.FxGraph, x: np.ndarray, spikes_of: dict[str, np.ndarray]) -> dict[str, int]:
    """Per neuron layer, over all samples: every spike of every source times the synapses it has
    into the layer, with explicit loops over the connectivity (independent of lnm_deploy.resources)."""
    sched = g.schedule()
    out: dict[str, int] = {}
    for layer in sched.order:
        if g.nodes[layer].role != "neuron":
            continue
        total = 0
        for syn, _ in sched.inputs[layer]:
            feed = sched.inputs[syn][0][0]
            src = feed
            while g.nodes[src].role == "reshape":
                src = sched.inputs[src][0][0]
            s = x if src == sched.input_node else spikes_of[src]
            counts = s.astype(np.int64).sum(axis=(0, 1)).reshape(sched.shapes[feed])
            node = g.nodes[syn]
            if node.kind == "dense":
                n_out, n_in = node.weight.shape  # type: ignore[attr-defined]
                for i in range(n_in):  # each input spike reaches every stored synapse of its column
                    total += int(counts[i]) * n_out
            else:
                w = node.weight  # type: ignore[attr-defined]
                cout, cin_g, kh, kw = w.shape
                (s0, s1), (p0, p1), (d0, d1) = node.stride, node.padding, node.dilation  # type: ignore[attr-defined]
                _, oh, ow = sched.shapes[syn]
                _, hh, ww = counts.shape
                per_group = cout // node.groups  # type: ignore[attr-defined]
                for co in range(cout):
                    grp = co // per_group
                    for r in range(oh):
                        for c in range(ow):
                            for ci in range(cin_g):
                                for i in range(kh):
                                    for j in range(kw):
                                        h, v = r * s0 - p0 + i * d0, c * s1 - p1 + j * d1
                                        if 0 <= h < hh and 0 <= v < ww:
                                            total += int(counts[grp * cin_g + ci, h, v])
        out[layer] = total
    return out


def check_synops(g: fx.FxGraph, x: np.ndarray, target: Target = LOIHI2) -> None:
    res = run_fx(g, x)
    cost = count_cost(g, x, res, target, map_network(g, target))
    hand = hand_synops(g, x, res.spikes)
    assert any(v > 0 for v in hand.values())
    got = {c.layer: c.synops * x.shape[0] for c in cost.layers}
    assert {k: round(v) for k, v in got.items()} == hand
    assert all(float(v).is_integer() for v in got.values())


@pytest.mark.parametrize("seed", range(6))
def test_synops_equal_the_hand_count_on_dense_nets_with_recurrence(seed: int) -> None:
    rng = np.random.default_rng(seed)
    g = random_dense_net(rng, recurrent=True, wild=False)
    check_synops(g, spikes(rng, 3, 7, g.schedule().shapes["input"]))


@pytest.mark.parametrize("seed", range(6))
def test_synops_equal_the_hand_count_on_conv_nets(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    g = random_conv_net(rng)
    check_synops(g, spikes(rng, 3, 5, g.schedule().shapes["input"]))


def test_synops_with_padding_stride_dilation_and_groups() -> None:
    rng = np.random.default_rng(7)
    conv = fx.FxConv2d(weight=rng.integers(-256, 256, (4, 1, 3, 2)), stride=(2, 1), padding=(2, 1),
                       dilation=(1, 2), groups=2)
    shape = conv.output_shape("conv", (2, 6, 5))
    g = chain([("conv", conv), ("n0", lif(rng, shape, edges=False)), ("flat", fx.FxFlatten()),
               ("fc", dense(rng, 3, int(np.prod(shape)), wild=False, sign_modes=False)), ("n1", lif(rng, (3,)))],
              (2, 6, 5))
    x = spikes(rng, 2, 6, (2, 6, 5))
    check_synops(g, x)
    # every input spike counted once per output neuron it reaches: here by hand for one spike
    one = np.zeros((1, 1, 2, 6, 5), dtype=np.uint8)
    one[0, 0, 0, 0, 0] = 1  # a corner: the padding leaves it few outputs
    res = run_fx(g, one)
    cost = count_cost(g, one, res, LOIHI2)
    assert cost.layers[0].synops == len(hand_reach(conv, (0, 0, 0), (2, 6, 5)))


def hand_reach(conv: fx.FxConv2d, at: tuple[int, int, int], in_shape: tuple[int, int, int]) -> set[tuple[int, int, int]]:
    cout, cin_g, kh, kw = conv.weight.shape
    _, oh, ow = conv.output_shape("c", in_shape)
    reach = set()
    for co in range(cout):
        grp = co // (cout // conv.groups)
        for r in range(oh):
            for c in range(ow):
                for i in range(kh):
                    for j in range(kw):
                        h = r * conv.stride[0] - conv.padding[0] + i * conv.dilation[0]
                        w = c * conv.stride[1] - conv.padding[1] + j * conv.dilation[1]
                        if (grp * cin_g <= at[0] < (grp + 1) * cin_g) and (h, w) == at[1:]:
                            reach.add((co, r, c))
    return reach


# --------------------------------------------------------------- neuron updates and messages


def test_update_cost_is_per_primitive_and_grows_with_degree_and_threshold() -> None:
    rng = np.random.default_rng(4)
    nets = {kind: chain([("syn", dense(rng, 6, 5, wild=False, sign_modes=False)), ("n", make(rng, (6,)))], (5,))
            for kind, make in (("lif", lif), ("poly", poly), ("adaptive_poly", adaptive))}
    x = spikes(rng, 2, 5, (5,))
    ops = {}
    for kind, g in nets.items():
        c = count_cost(g, x, run_fx(g, x), LOIHI2)
        layer = c.layers[0]
        assert layer.kind == kind and layer.updates == 6 * 5
        node = g.nodes["n"]
        spec = LOIHI2.energy.neuron_ops[kind]  # type: ignore[union-attr]
        assert layer.ops_per_update == spec.base + spec.per_state * len(node.state_names()) + \
            spec.per_degree * int(getattr(node, "degree", 0))
        ops[kind] = layer.ops_per_update
        e = LOIHI2.energy
        assert layer.energy_pj["neuron"] == pytest.approx(  # type: ignore[index]
            30 * layer.ops_per_update * e.neuron_update_pj / e.reference_ops)  # type: ignore[union-attr]
    assert ops["lif"] == LOIHI2.energy.reference_ops  # type: ignore[union-attr]
    assert ops["lif"] < ops["poly"] and ops["lif"] < ops["adaptive_poly"]
    # the threshold register costs more than the same membrane without it
    ad = nets["adaptive_poly"].nodes["n"]
    price = LOIHI2.energy.ops_of  # type: ignore[union-attr]
    states, degree = len(ad.state_names()), int(ad.degree)  # type: ignore[attr-defined]
    assert price("adaptive_poly").ops(states, degree) > price("poly").ops(states - 1, degree)
    # a polynomial of higher degree costs more
    hi = poly(rng, (6,))
    assert hi.degree >= 1
    lo = fx.FxPoly(shape=(6,), coef=hi.coef[:1], shifts=(), vth=hi.vth, syn_decay=hi.syn_decay)
    assert price("poly").ops(len(lo.state_names()), lo.degree) < price("poly").ops(len(hi.state_names()), hi.degree)
    # a kind the target does not offer at all: no price could be added (the network cannot run there)
    with pytest.raises(UnsupportedError, match=r"does not offer neuron kind 'poly' \(it offers \[.*'lif'.*\]\)"):
        count_cost(nets["poly"], x, run_fx(nets["poly"], x), LIF_ONLY)


def test_messages_by_hand(tmp_path: Path) -> None:
    t = target_with(tmp_path, neurons_per_core=16)
    g = two_layer()
    m = map_network(g, t)  # n0 on cores 0-2, n1 on core 3
    x = spikes(np.random.default_rng(5), 3, 6, (20,))
    res = run_fx(g, x)
    c = count_cost(g, x, res, t, m)
    assert c.input_messages == pytest.approx(x.sum() * 3 / 3)  # every input spike to n0's three cores
    assert c.layers[0].messages == pytest.approx(res.spikes["n0"].sum() / 3)  # each n0 spike to n1's core
    assert c.layers[1].messages == 0.0  # the output layer projects to no core
    e = c.energy_pj
    assert e is not None and e["total"] == pytest.approx(e["synaptic"] + e["neuron"] + e["messages"])
    assert e["synaptic"] == pytest.approx(c.synops * 23.6)
    assert c.latency_us is not None and c.latency_us > 0


def test_self_recurrent_spikes_to_their_own_core_are_not_messages(tmp_path: Path) -> None:
    rng = np.random.default_rng(6)
    g = chain([("syn0", dense(rng, 20, 4, wild=False, sign_modes=False)), ("n0", lif(rng, (20,)))], (4,),
              {"n0": dense(rng, 20, 20, wild=False, sign_modes=False)})
    t = target_with(tmp_path, neurons_per_core=16)
    m = map_network(g, t)  # n0 on cores 0 (16) and 1 (4)
    x = spikes(rng, 2, 8, (4,))
    res = run_fx(g, x)
    c = count_cost(g, x, res, t, m)
    # each n0 spike reaches both of n0's cores through the back edge; one of them is its own
    assert c.layers[0].messages == pytest.approx(res.spikes["n0"].sum() * 1 / 2)
    check_synops(g, x, t)


def test_float_spikes_are_counted_the_same_way() -> None:
    rng = np.random.default_rng(8)
    g = random_dense_net(rng, recurrent=False, wild=False)
    x = spikes(rng, 3, 5, g.schedule().shapes["input"])
    res = run_fx(g, x)
    flipped = type(res)(output=res.output, spikes={k: (1 - v).astype(np.float32) for k, v in res.spikes.items()})
    a = count_cost(g, x, flipped, LOIHI2, run_name="float")
    assert a.run == "float"
    assert {c.layer: c.synops * 3 for c in a.layers} == pytest.approx(
        {k: float(v) for k, v in hand_synops(g, x, {k: 1 - v for k, v in res.spikes.items()}).items()})
    with pytest.raises(UserInputError, match="no spikes for layers"):
        count_cost(g, x, type(res)(output=res.output, spikes={}), LOIHI2)


# ----------------------------------------------------------------- the demo and a VGG network


def assert_reports_cost(rep: dict[str, object]) -> None:
    m = rep["mapping"]
    assert isinstance(m, dict) and m["fits"] and m["cores_used"] >= len(m["layers"])
    assert m["per_core"]["synaptic_bits_max"] > 0 and m["per_core"]["neurons_max"] > 0
    assert "Loihi 2" in m["system"]["source"]
    cost = rep["cost"]["fxsim"]  # type: ignore[index]
    per = cost["per_inference"]
    assert per["synops"] > 0 and per["energy_pj"]["total"] > 0 and per["latency_us"] > 0
    assert "Davies" in cost["estimates"]["source"] and "estimates" in cost["estimates"]["note"]


def test_vgg_network_reports_cores_memory_synops_and_energy() -> None:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from calibrate_vgg import build
    finally:
        sys.path.pop(0)
    graph, x = build()
    x = x[:3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LNMDeployWarning)
        res = calibrate_network(graph, x, LOIHI2, load_recipe("default"), progress=False)
    rep = resources_report(res.artifact.fx, LOIHI2, x, {"fxsim": res.fixed_run, "float": res.float_run})
    assert_reports_cost(rep)
    assert rep["mapping"]["limiting_resource"] == MEMORY and rep["mapping"]["cores_used"] > 7
    assert res.report["resources"] == rep["mapping"]
    assert rep["cost"]["float"]["per_inference"]["synops"] > 0


@pytest.mark.slow
def test_demo_artifact_reports_cores_memory_synops_and_energy(tmp_path: Path) -> None:
    import lnm_deploy
    from lnm_deploy.demo import run_demo

    run_demo(tmp_path, progress=False, log=lambda *_: None, calibrate_targets=(), verify_backends=())
    graph = lnm_deploy.load(tmp_path / "model.nir")
    xc, xt = np.load(tmp_path / "calib.npz")["x"], np.load(tmp_path / "test.npz")["x"][:20]
    rows = {}
    for t in (LOIHI2, LIF_ONLY):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LNMDeployWarning)
            res = calibrate_network(graph, xc, t, load_recipe("default"), progress=False)
        rep = resources_report(res.artifact.fx, t, xt, {"fxsim": run_fx(res.artifact.fx, xt)})
        assert_reports_cost(rep)
        rows[t.name] = rep["cost"]["fxsim"]["per_inference"]
    # the polynomial neuron's update costs more operations than the stock LIF fitted to it
    assert rows["loihi2"]["neuron_update_ops"] > rows["loihi2-lif"]["neuron_update_ops"]


# ------------------------------------------------------------- inspect --resources and verify


@pytest.fixture(scope="module")
def two_artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    from lnm_deploy.artifact import write_artifact

    rng = np.random.default_rng(11)
    g = sequential([("fc0", Affine(weight=rng.normal(0.3, 0.3, (24, 12)))),
                    ("lnm0", Neuron(shape=(24,), poly=[0.0, 0.85, 0.05], v_th=1.0)),
                    ("fc1", Affine(weight=rng.normal(0.1, 0.4, (4, 24)))),
                    ("lnm1", Neuron(shape=(4,), poly=[0.0, 0.85, 0.05], v_th=1.0))], (12,))
    x = (rng.random((16, 8, 12)) < 0.4).astype(np.uint8)
    y = rng.integers(0, 4, 16)
    d = tmp_path_factory.mktemp("arts")
    paths = {}
    for t in (LOIHI2, LIF_ONLY):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LNMDeployWarning)
            res = calibrate_network(g, x, t, load_recipe("default"), y=y, progress=False)  # labels: an LZC readout
        paths[t.name] = write_artifact(res.artifact, d / f"m.{t.name}.nir")
    np.savez(d / "data.npz", x=x, y=y)
    return {"graph": g, "x": x, "y": y, "paths": paths, "data": d / "data.npz", "dir": d}


def test_inspect_resources_prints_mapping_cost_and_sources(two_artifacts: dict, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from lnm_deploy.cli import main

    art = str(two_artifacts["paths"]["loihi2"])
    assert main(["inspect", art, "--resources"]) == 0
    out = capsys.readouterr().out
    assert "2 cores on 1 chip(s)" in out and "lnm0" in out and "pass data" in out
    assert main(["inspect", art, "--resources", "--data", str(two_artifacts["data"])]) == 0
    out = capsys.readouterr().out
    assert "synaptic operations" in out and "energy ESTIMATE" in out and "Davies" in out and "Loihi 2 brief" in out
    assert main(["inspect", art, "--resources", "--data", str(two_artifacts["data"]), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["mapping"]["cores_used"] == 2 and doc["cost"]["fxsim"]["per_inference"]["synops"] > 0
    from lnm_deploy.nir_io import write_nir

    plain = two_artifacts["dir"] / "float.nir"
    write_nir(two_artifacts["graph"], plain)
    assert main(["inspect", str(plain), "--resources"]) == 2
    assert "not a calibrated artifact" in capsys.readouterr().err


def test_verify_reports_resources_and_compares_lnm_with_lif(two_artifacts: dict) -> None:
    from lnm_deploy.report.html import render_verify_page
    from lnm_deploy.verify import verify

    paths, x, y = two_artifacts["paths"], two_artifacts["x"], two_artifacts["y"]
    res = verify(paths["loihi2"], x, y, backends=("onnx",), float_graph=two_artifacts["graph"], progress=False,
                 compare=paths["loihi2-lif"])
    r = res.to_dict()["resources"]
    assert r["mapping"]["cores_used"] == 2
    assert set(r["cost"]) == {"fxsim", "float"}
    rows = r["comparison"]["rows"]
    assert [row["target"] for row in rows] == ["loihi2", "loihi2-lif"]
    assert rows[0]["accuracy"] == res.fixed_accuracy
    assert rows[0]["neuron_update_ops"] > rows[1]["neuron_update_ops"]  # the polynomial costs more per update
    assert all(row["synops"] > 0 and row["energy_pj"] > 0 for row in rows)
    page = render_verify_page(res, two_artifacts["graph"], res_artifact(paths["loihi2"]))
    assert "Resources and cost" in page and "Accuracy against cost" in page and "Davies" in page
    plain = verify(paths["loihi2"], x, y, backends=("onnx",), float_graph=two_artifacts["graph"], progress=False)
    assert "comparison" not in plain.to_dict()["resources"]


def res_artifact(path: object) -> object:
    from lnm_deploy.artifact import read_artifact

    return read_artifact(path)  # type: ignore[arg-type]


def test_an_unknown_synapse_kind_is_named_and_calibrate_only_warns(monkeypatch: pytest.MonkeyPatch) -> None:
    from lnm_deploy import resources

    g = two_layer()
    monkeypatch.delitem(resources.CONNECTIVITY, "dense")
    with pytest.raises(UnsupportedError, match=r"no implementation for kind 'dense'; known: \['conv2d'\]"):
        map_network(g, LOIHI2)
    with pytest.warns(LNMDeployWarning, match="resources not checked"):
        assert check_fits(g, LOIHI2) is None


# ------------------------------------------------- refusals and wording (tester's findings)


def _calibrated(tmp_path: Path, g: object, x: np.ndarray, target: Target, name: str) -> Path:
    from lnm_deploy.artifact import write_artifact

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LNMDeployWarning)
        res = calibrate_network(g, x, target, load_recipe("default"), progress=False)  # type: ignore[arg-type]
    return Path(write_artifact(res.artifact, tmp_path / name))


def _net(n_in: int, hidden: list[tuple[str, int]], n_out: int, seed: int = 2) -> object:
    rng = np.random.default_rng(seed)
    nodes, prev = [], n_in
    for i, (name, n) in enumerate([*hidden, (f"lnm{len(hidden)}", n_out)]):
        nodes += [(f"fc{i}", Affine(weight=rng.normal(0.3, 0.3, (n, prev)))),
                  (name, Neuron(shape=(n,), poly=[0.0, 0.85, 0.05], v_th=1.0))]
        prev = n
    return sequential(nodes, (n_in,))


@pytest.mark.parametrize(("n_in", "hidden", "n_out", "what"), [
    (12, [("lnm0", 24)], 6, r"output shape: \(4,\) in \S+m.loihi2.nir, \(6,\) in \S+other.nir"),
    (12, [("lnm0", 20)], 4, r"neuron layers: \[lnm0 \(24,\), lnm1 \(4,\)\] in \S+, \[lnm0 \(20,\), lnm1 \(4,\)\] in"),
    (12, [("hid", 24)], 4, r"neuron layers: \[lnm0 \(24,\), lnm1 \(4,\)\] in \S+, \[hid \(24,\), lnm1 \(4,\)\] in"),
    (10, [("lnm0", 24)], 4, r"input shape: \(12,\) in \S+, \(10,\) in"),
])
def test_verify_compare_refuses_another_network_naming_both_files(
        two_artifacts: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        n_in: int, hidden: list[tuple[str, int]], n_out: int, what: str) -> None:
    from lnm_deploy.cli import main
    from lnm_deploy.verify import verify

    rng = np.random.default_rng(4)
    other = _calibrated(tmp_path, _net(n_in, hidden, n_out), (rng.random((8, 6, n_in)) < 0.4).astype(np.uint8),
                        LIF_ONLY, "other.nir")
    art = str(two_artifacts["paths"]["loihi2"])
    code = main(["verify", art, "--data", str(two_artifacts["data"]), "--backend", "onnx", "--quiet",
                 "--compare", str(other)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "--compare" in err and str(other) in err and art in err and re.search(what, err), err
    with pytest.raises(UserInputError, match=what):
        verify(art, two_artifacts["x"], two_artifacts["y"], backends=("onnx",), progress=False, compare=other)


def test_verify_compare_rows_use_the_readout_verify_was_given(two_artifacts: dict) -> None:
    from lnm_deploy.artifact import read_artifact
    from lnm_deploy.fxsim import run_fx
    from lnm_deploy.verify import artifact_lzc_readout, readout_accuracy, verify

    paths, x, y = two_artifacts["paths"], two_artifacts["x"], two_artifacts["y"]
    res = verify(paths["loihi2"], x, y, backends=("onnx",), float_graph=two_artifacts["graph"], progress=False,
                 compare=paths["loihi2-lif"], readout="lzc")
    comp = res.to_dict()["resources"]["comparison"]
    assert comp["readout"] == "lzc" and "LZC readout" in comp["note"]
    assert res.lzc.fixed_accuracy is not None and comp["rows"][0]["accuracy"] == res.lzc.fixed_accuracy
    other = read_artifact(paths["loihi2-lif"])
    lzc, _ = artifact_lzc_readout(other)  # the other artifact's own readout, fitted at its calibration
    assert lzc is not None
    assert comp["rows"][1]["accuracy"] == lzc.accuracy(run_fx(other.fx, x).output, y)
    # a spiking output has no membrane rule: no accuracy, and the row's note says why
    acc, why = readout_accuracy(other, run_fx(other.fx, x).output, y, "membrane-max")
    assert acc is None and "not a membrane" in why


def test_verify_compare_labels_rows_by_file_and_keeps_the_other_path(two_artifacts: dict, tmp_path: Path) -> None:
    import shutil

    from lnm_deploy.cost import summary_lines
    from lnm_deploy.verify import verify

    paths, x, y = two_artifacts["paths"], two_artifacts["x"], two_artifacts["y"]
    twin = tmp_path / "twin.loihi2.nir"  # the same target twice: only the file names tell the rows apart
    shutil.copy(paths["loihi2"], twin)
    res = verify(paths["loihi2"], x, y, backends=("onnx",), float_graph=two_artifacts["graph"], progress=False,
                 compare=twin)
    comp = res.to_dict()["resources"]["comparison"]
    assert [(r["label"], r["target"]) for r in comp["rows"]] == [("m.loihi2.nir", "loihi2"),
                                                                 ("twin.loihi2.nir", "loihi2")]
    assert comp["other"]["path"] == str(twin)
    lines = summary_lines(res.resources)
    assert any(line.strip().startswith("m.loihi2.nir (target loihi2)") for line in lines), lines
    assert any(line.strip().startswith("twin.loihi2.nir (target loihi2)") for line in lines), lines


def test_compare_messages_name_the_option(two_artifacts: dict, tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    from lnm_deploy.cli import main
    from lnm_deploy.nir_io import write_nir

    plain = tmp_path / "model.nir"
    write_nir(two_artifacts["graph"], plain)
    art = str(two_artifacts["paths"]["loihi2"])
    for other, what in ((plain, "is a float graph, not a calibrated artifact"), (tmp_path, "is not a file"),
                        (tmp_path / "missing.nir", "does not exist")):
        code = main(["verify", art, "--data", str(two_artifacts["data"]), "--backend", "onnx", "--quiet",
                     "--compare", str(other)])
        err = capsys.readouterr().err
        assert code == 2 and "--compare" in err and str(other) in err and what in err, err


def _equal_paths_target(tmp_path: Path) -> Target:
    text = (shipped_targets_dir() / "loihi2.toml").read_text(encoding="utf-8")
    assert 'path_delays = "relay"' in text
    path = tmp_path / "eqpaths.toml"
    path.write_text(text.replace('name = "loihi2"', 'name = "eqpaths"')
                    .replace('path_delays = "relay"', 'path_delays = "equal"'), encoding="utf-8")
    return parse_target(path)


def _mlp_skip() -> object:
    rng = np.random.default_rng(5)
    n = lambda: Neuron(shape=(8,), poly=[0.0, 0.9], v_th=0.5)  # noqa: E731
    from lnm_deploy import ir

    nodes = {"input": ir.Input(shape=(6,)), "a0": Affine(weight=rng.normal(0.3, 0.6, (8, 6))), "l0": n(),
             "a1": Affine(weight=rng.normal(0.2, 0.6, (8, 8))), "l1": n(),
             "a2": Affine(weight=rng.normal(0.0, 0.5, (8, 8))), "l2": n(), "output": ir.Output()}
    edges = [("input", "a0"), ("a0", "l0"), ("l0", "a1"), ("a1", "l1"), ("l1", "a2"), ("a2", "l2"), ("l0", "l2"),
             ("l2", "output")]
    return ir.Graph(nodes=nodes, edges=edges)


def test_inspect_resources_on_another_target_runs_its_design_rules_first(
        two_artifacts: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from lnm_deploy.cli import main

    art = str(two_artifacts["paths"]["loihi2"])  # polynomial neurons, 8-bit weights
    assert main(["inspect", art, "--resources", "--target", "loihi2-lif"]) == 4
    err = capsys.readouterr().err
    assert "--target loihi2-lif" in err and "node 'lnm0'" in err and "loihi2-lif" in err, err
    assert "fits" not in err and "add a line" not in err
    four = tmp_path / "four"
    four.mkdir()
    t4 = target_with(four, weight_bits=4, num_weight_bits="[1, 4]")
    code = main(["inspect", art, "--resources", "--target", str(t4.path)])
    err = capsys.readouterr().err
    assert code == 3 and "node 'fc0'" in err and "--target" in err, err
    # a residual network calibrated where Lava delays the shorter path, inspected on a target that cannot
    x = (np.random.default_rng(1).random((6, 5, 6)) < 0.4).astype(np.uint8)
    res_art = str(_calibrated(tmp_path, _mlp_skip(), x, LOIHI2, "skip.nir"))
    eq = _equal_paths_target(tmp_path)
    assert main(["inspect", res_art, "--resources", "--target", str(eq.path)]) == 4
    err = capsys.readouterr().err
    assert "node 'l2'" in err and "path_delays" in err, err
    # the artifact's own target and a compatible one still map
    assert main(["inspect", art, "--resources", "--target", "loihi2"]) == 0
    assert "fits: 2 cores" in capsys.readouterr().out


def test_relay_neurons_of_unequal_paths_are_listed_as_ignored() -> None:
    x = (np.random.default_rng(1).random((6, 5, 6)) < 0.4).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LNMDeployWarning)
        fxg = calibrate_network(_mlp_skip(), x, LOIHI2, load_recipe("default"), progress=False).artifact.fx
    m = map_network(fxg, LOIHI2)
    relay = [i for i in m.ignored if "relay neurons" in i]
    assert len(relay) == 1 and "'l2'" in relay[0] and "Lava" in relay[0]
    assert relay[0] in m.to_dict()["ignored"] and relay[0] in m.to_text()
    assert not any("relay" in i for i in map_network(two_layer(), LOIHI2).ignored)  # equal paths: nothing to add


def test_inspect_data_and_target_need_resources(two_artifacts: dict, capsys: pytest.CaptureFixture[str]) -> None:
    from lnm_deploy.cli import main

    art = str(two_artifacts["paths"]["loihi2"])
    assert main(["inspect", art, "--data", "/nonexistent/d.npz"]) == 2
    err = capsys.readouterr().err
    assert "--data needs --resources" in err and len(err.strip().splitlines()) == 1, err
    assert main(["inspect", art, "--data", str(two_artifacts["data"]), "--target", "loihi2", "--json"]) == 2
    assert "--data and --target need --resources" in capsys.readouterr().err
    assert main(["inspect", art, "--json"]) == 0  # --json alone is inspect's own option


def test_cores_running_out_is_named_and_splitting_only_when_split(tmp_path: Path) -> None:
    from lnm_deploy.resources import SYSTEM_CORES

    t = target_with(tmp_path, chips=1, cores_per_chip=1)  # n0 (40 neurons) takes the only core; n1 (10) none
    m = map_network(two_layer(), t)
    assert not m.fits and m.limiting_resource == SYSTEM_CORES == "cores of the system"
    text = m.to_text()
    assert "DOES NOT FIT: needs 2 cores" in text and "the system has 1 x 1 = 1" in text
    assert "limiting resource: cores of the system" in text and "limiting resource: none" not in text
    # one core holds all 50 neurons if layers share it: the greedy mapping's overflow is a warning
    with pytest.warns(LNMDeployWarning, match=r"layer 'n1'.*conservative mapping.*needs 2 cores.*least any mapping "
                                              r"needs is 1.*may not fit"):
        got = check_fits(two_layer(), t)
    assert got is not None and not got.fits
    split = target_with(tmp_path, chips=1, cores_per_chip=2, neurons_per_core=16)
    with pytest.raises(GraphError, match=r"node 'n0'.*at least 4 cores.*40 neurons .* need 3, limited by neurons "
                                         r"per core \(16\)"):
        check_fits(two_layer(), split)


def test_the_refusal_is_a_lower_bound_convolutions_share_their_weights(tmp_path: Path) -> None:
    """A convolution's kernel counts once in the lower bound (weight sharing), per neuron in the
    greedy mapping: a system between the two gets a warning and the mapping, not a refusal."""
    from lnm_deploy.resources import connectivity, lower_bound

    rng = np.random.default_rng(0)
    conv = fx.FxConv2d(weight=rng.integers(-100, 100, (8, 4, 3, 3)), padding=(1, 1))
    g = chain([("c", conv), ("n", poly(rng, (8, 6, 6)))], (4, 6, 6))
    w_bits = connectivity(conv, "c").weight_bits(conv, LOIHI2)
    bits, per_neuron = 8 * 4 * 3 * 3 * w_bits, 4 * 3 * 3 * w_bits
    t = target_with(tmp_path, chips=1, cores_per_chip=2, synaptic_memory_bits=per_neuron * 100)
    assert connectivity(conv, "c").weight_bits(conv, t) == w_bits
    assert lower_bound(g, t) == (1, [("n", 288, bits)])
    m = map_network(g, t)
    assert not m.fits and m.cores_used == 3  # 288 neurons, 100 per core
    with pytest.warns(LNMDeployWarning, match="may not fit"):
        assert check_fits(g, t) is not None
    with pytest.raises(GraphError, match=r"node 'n'.*at least 2 cores.*synaptic memory per core"):
        check_fits(g, target_with(tmp_path, chips=1, cores_per_chip=1, synaptic_memory_bits=bits // 2 + per_neuron))


def test_a_neuron_kind_the_target_does_not_offer_is_not_told_to_add_a_price() -> None:
    rng = np.random.default_rng(0)
    g = chain([("syn0", dense(rng, 8, 6, wild=False, sign_modes=False)), ("p0", poly(rng, (8,)))], (6,))
    x = spikes(np.random.default_rng(1), 2, 4, (6,))
    with pytest.raises(UnsupportedError, match=r"node 'p0'.*does not offer neuron kind 'poly'") as e:
        count_cost(g, x, run_fx(g, x), LIF_ONLY)
    assert "add a line" not in str(e.value)
    rep = resources_report(g, LIF_ONLY, x, {"fxsim": run_fx(g, x)})
    assert any("does not offer neuron kind 'poly'" in n for n in rep["notes"])
    assert not any("add a line" in n for n in rep["notes"])


def test_verify_compare_refuses_a_same_shaped_network_from_another_float_graph(tmp_path: Path) -> None:
    """Two float graphs with the same layers but other weights: structure alone cannot tell them
    apart, the SHA-256 of the recorded source graph does."""
    from lnm_deploy.artifact import write_artifact
    from lnm_deploy.nir_io import write_nir
    from lnm_deploy.verify import compared_artifact

    x = (np.random.default_rng(0).random((8, 6, 12)) < 0.4).astype(np.uint8)
    arts = []
    for seed in (2, 3):
        src = tmp_path / f"g{seed}.nir"
        write_nir(_net(12, [("lnm0", 24)], 4, seed=seed), src)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LNMDeployWarning)
            res = calibrate_network(_net(12, [("lnm0", 24)], 4, seed=seed), x, LOIHI2, load_recipe("default"),
                                    source=src, progress=False)
        arts.append(Path(write_artifact(res.artifact, tmp_path / f"a{seed}.nir")))
    from lnm_deploy.artifact import read_artifact

    with pytest.raises(UserInputError, match=r"--compare: .*float graph \(SHA-256\)"):
        compared_artifact(read_artifact(arts[0]), arts[0], arts[1])
    assert compared_artifact(read_artifact(arts[0]), arts[0], arts[0])[0] is not None  # itself: the same
