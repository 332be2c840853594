"""The non-spiking readout (``lnm_deploy.li_readout``, primitive ``li_readout``): its integer step
against the big-integer oracle, every backend bit-exact on the readout's membrane, calibration and
verification of Norse and snnTorch networks ending in a non-spiking readout (NIR ``LI``), and the
membrane classification rules ``verify`` offers.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterator

import nir
import numpy as np
import pytest
import torch
from conformance import _li_readout, check_backend
from fx_nets import chain, dense, lif, spikes
from fx_oracle import as_arrays, oracle

from lnm_deploy.artifact import Artifact
from lnm_deploy.backends import backend
from lnm_deploy.calibrate import calibrate_network, load_recipe
from lnm_deploy.calibrate.passes import fold
from lnm_deploy.errors import DependencyError, LNMDeployWarning, UnsupportedError, UserInputError
from lnm_deploy.execute import run_float
from lnm_deploy.fixedpoint.primitives import output_state, primitive
from lnm_deploy.fxsim import run_fx
from lnm_deploy.ir import Affine, Neuron, sequential
from lnm_deploy.li_readout import FxLIReadout, readout_params, readout_step
from lnm_deploy.nir_io import from_nir
from lnm_deploy.readout import MEMBRANE_READOUTS, membrane_check
from lnm_deploy.targets import Target, load_target
from lnm_deploy.verify import READOUTS, verify

H23 = 2**23


@pytest.fixture(autouse=True)
def _quiet() -> Iterator[None]:
    torch.manual_seed(7)
    with warnings.catch_warnings():  # nirtorch / torch deprecation noise, not ours
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


# ----------------------------------------------------------------------------- the integer step


def test_the_primitive_is_registered_as_a_readout() -> None:
    p = primitive("li_readout")
    assert p.node_type is FxLIReadout and p.output_state == "v" and p.role == "neuron"
    assert output_state(FxLIReadout(shape=(2,))) == "v"
    assert primitive("lif").output_state is None
    for t in ("loihi2", "loihi2-lif"):
        assert load_target(t).offers("li_readout")


def test_step_matches_the_oracle_at_the_edges() -> None:
    """Saturation of v at +-(2^23 - 1), the current's wrap (corr_N), large inputs: the contract
    step against the oracle (plain Python ints), and it never spikes."""
    n = 6
    node = FxLIReadout(shape=(n,), du=100, dv=3, bias_mant=np.array([4095, -4096, 0, 7, 0, -1]),
                       bias_exp=np.array([7, 7, 0, 2, 0, 0]),
                       u_init=np.array([H23, -H23 + 1, 0, 5, H23 - 5, 0]),
                       v_init=np.array([H23 - 1, -H23 + 1, 0, 0, 100, -5]))
    node.validate("r")
    rng = np.random.default_rng(3)
    a = np.concatenate([rng.integers(-(2**31), 2**31, (40, n)), rng.integers(-5000, 5000, (40, n))]).astype(np.int64)
    p = readout_params(node)
    state = {"u": node.u_init.copy(), "v": node.v_init.copy()}
    from fx_oracle import OLIReadout

    o = OLIReadout(node)
    for t in range(a.shape[0]):
        state, s = readout_step(p, state, a[t])
        o_s = o.step(a[t].tolist())
        assert not np.any(s) and o_s == [0] * n
        assert state["u"].tolist() == o.states()["u"] and state["v"].tolist() == o.states()["v"], t
    assert np.abs(state["v"]).max() <= H23 - 1


@pytest.mark.parametrize("name", ["fxsim", "onnx", "lava"])
def test_backends_output_the_membrane_bit_exact(name: str) -> None:
    """A spiking layer feeding a readout: every backend's output is the readout's membrane, equal to
    the oracle's ``v`` (``np.array_equal``), the readout absent from the spikes; fxsim in both
    configurations (numpy, numba)."""
    b = backend(name)
    rng = np.random.default_rng(11)
    for case in range(2 if name == "lava" else 4):
        r = _li_readout(rng, (5,))
        g = chain([("fc", dense(rng, 7, 6)), ("h", lif(rng, (7,))), ("fc2", dense(rng, 5, 7)), ("r", r)], (6,))
        x = spikes(rng, 2, 9, (6,))
        o_spk, o_sts = as_arrays(g, *oracle(g, x), 2, 9)
        for config in b.configs:
            try:
                check_backend(b, config, g, x, label=f"case {case}")
                res = b.run(g, x, record=False, progress=False, **dict(b.configs[config]))
            except DependencyError as e:
                pytest.skip(str(e))
            assert res.output.dtype == np.int64 and np.array_equal(res.output, o_sts["r"]["v"])
            assert "r" not in res.spikes and np.array_equal(res.spikes["h"], o_spk["h"])


# ------------------------------------------------------------------------------- calibration


def _graph(syn: bool = True, bias: bool = False) -> tuple[object, np.ndarray]:
    rng = np.random.default_rng(5)
    g = sequential([
        ("fc", Affine(weight=rng.normal(0.4, 0.5, (8, 6)))), ("h", Neuron(shape=(8,), poly=[0, 0.9], v_th=1.0)),
        ("fc2", Affine(weight=rng.normal(0, 0.5, (3, 8)), bias=rng.normal(0, 0.05, 3) if bias else None)),
        ("r", Neuron(shape=(3,), poly=[0, 0.85], v_th=None, syn_decay=np.full(3, 0.7) if syn else None))], (6,))
    x = (rng.random((12, 16, 6)) < 0.4).astype(np.uint8)
    return g, x


@pytest.mark.parametrize("target", ["loihi2", "loihi2-lif"])
@pytest.mark.parametrize("syn", [False, True], ids=["LI", "CubaLI"])
def test_calibrate_lowers_a_readout(target: str, syn: bool) -> None:
    g, x = _graph(syn)
    res = calibrate_network(g, x, load_target(target), load_recipe("default"), progress=False)
    fx, rec = res.artifact.fx, res.quantized.layers["r"]
    node = fx.nodes["r"]
    assert isinstance(node, FxLIReadout) and rec.primitive == "li_readout" and rec.proof["holds"]
    assert node.du < 4095 if syn else node.du == 4095
    assert not rec.approximations  # an LI / CubaLI with one decay per layer is exact
    fixed = run_fx(fx, x)
    assert "r" not in fixed.spikes and fixed.output.shape == (12, 16, 3) and fixed.output.dtype == np.int64
    # the dequantized float graph computes q * the integer membrane up to the rounding of the inputs:
    # close to the float membrane
    ref = run_float(g, x).output
    err = ref - fixed.output * rec.q
    assert np.sqrt(np.mean(err**2)) < 0.1 * np.abs(ref).max()


def test_a_non_spiking_layer_elsewhere_is_refused_and_a_target_without_the_section_says_so() -> None:
    rng = np.random.default_rng(0)
    mid = sequential([("fc", Affine(weight=rng.normal(0, 1, (4, 6)))), ("n", Neuron(shape=(4,), poly=[0, 0.9], v_th=None)),
                      ("fc2", Affine(weight=np.ones((2, 4)))), ("r", Neuron(shape=(2,), poly=[0, 0.9], v_th=None))],
                     (6,))
    with pytest.raises(UnsupportedError, match=r"'n'.*non-spiking.*only as the network's readout"):
        fold(mid)
    g, x = _graph()
    t = load_target("loihi2")
    no_readout = Target(t.info, t.sections, t.path, li_readout=None)
    with pytest.raises(UnsupportedError, match=r"'r'.*'li_readout'.*does not offer.*\[li_readout\] section"):
        calibrate_network(g, x, no_readout, load_recipe("default"), progress=False)


# ------------------------------------------------------------------- membrane classification


def test_membrane_rules_and_check() -> None:
    out = np.zeros((2, 3, 2))
    out[0, :, 0] = [5, 0, 0]  # neuron 0 peaks early
    out[0, :, 1] = [1, 2, 3]  # neuron 1 ends highest and sums highest
    out[1, :, 1] = [1, 1, 1]
    assert MEMBRANE_READOUTS["membrane-max"](out).tolist() == [0, 1]
    assert MEMBRANE_READOUTS["membrane-last"](out).tolist() == [1, 1]
    assert MEMBRANE_READOUTS["membrane-sum"](out).tolist() == [1, 1]
    assert {"count", "lzc", "membrane-max", "membrane-last"} <= set(READOUTS)
    fixed = np.array(out * 4, dtype=np.int64)
    fixed[0, 0, 0] += 1  # one LSB off: 0.25 in real units
    chk = membrane_check("r", 0.25, "membrane-max", out, fixed, {"b": fixed[:1], "c": fixed[:1] + 1},
                         y=np.array([0, 1]))
    assert chk.max_abs_error == 0.25 and np.isclose(chk.rms_error, np.sqrt(0.25**2 / out.size))
    assert chk.prediction_agreement == 1.0 and chk.float_accuracy == chk.fixed_accuracy == 1.0
    assert chk.backends["b"]["bit_exact"] and not chk.backends["c"]["bit_exact"]
    assert chk.backends["c"]["mismatches"] == 6
    with pytest.raises(UserInputError, match="membrane-max"):
        membrane_check("r", 1.0, "nope", out, fixed, {})


def _verify(art: Artifact, graph: object, x: np.ndarray, **kw: object) -> object:
    return verify(art, x, backends=("onnx", "lava"), float_graph=graph, backend_samples=2,  # type: ignore[arg-type]
                  progress=False, **kw)


def test_verify_compares_the_readout_membrane() -> None:
    g, x = _graph()
    art = calibrate_network(g, x, load_target("loihi2"), load_recipe("default"), progress=False).artifact
    for rule in ("membrane-max", "membrane-last"):
        r = _verify(art, g, x, readout=rule)
        m = r.membrane  # type: ignore[attr-defined]
        assert m is not None and m.layer == "r" and m.rule == rule
        assert all(b["bit_exact"] and b["compared"] == 2 * 16 * 3 for b in m.backends.values())
        assert all(c.bit_exact for c in r.backends.values())  # type: ignore[attr-defined]
        assert 0 < m.rms_error <= m.max_abs_error < m.float_range
        assert r.passed, r.reasons  # type: ignore[attr-defined]
        d = r.to_dict()  # type: ignore[attr-defined]
        assert d["membrane"]["rule"] == rule and d["criteria"]["readout"] == rule
        # the cost counts the readout's synaptic operations and updates; it sends no spikes
        cost = {ly["layer"]: ly for ly in d["resources"]["cost"]["fxsim"]["layers"]}
        assert cost["r"]["kind"] == "li_readout" and cost["r"]["spikes"] == 0 and cost["r"]["synops"] > 0
    # a spike output has no membrane rule
    spiking = sequential([("fc", Affine(weight=np.full((3, 6), 0.6))), ("n", Neuron(shape=(3,), poly=[0, 0.9], v_th=1.0))],
                         (6,))
    art2 = calibrate_network(spiking, x, load_target("loihi2"), load_recipe("default"), progress=False).artifact
    with pytest.raises(UserInputError, match=r"membrane-last.*reads spikes"):
        verify(art2, x, backends=(), float_graph=spiking, readout="membrane-last", progress=False)
    # and a membrane output has no LZC readout, which is what the refusal says (not "no labels")
    with pytest.raises(UserInputError, match=r"--readout lzc: .*membrane of a non-spiking readout layer \('r'\)"):
        verify(art, x, backends=(), float_graph=g, readout="lzc", progress=False)


# ------------------------------------------------------------------ frameworks: Norse, snnTorch


def _norse_net() -> list[torch.nn.Module]:
    from norse.torch.functional.leaky_integrator_box import LIBoxParameters
    from norse.torch.functional.lif_box import LIFBoxParameters
    from norse.torch.module.leaky_integrator_box import LIBoxCell
    from norse.torch.module.lif_box import LIFBoxCell

    z = {"dtype": torch.float64}
    lin1, lin2 = torch.nn.Linear(10, 12).double(), torch.nn.Linear(12, 4).double()
    with torch.no_grad():
        lin1.weight.mul_(40.0)
        lin2.weight.mul_(4.0)
    box = LIFBoxCell(LIFBoxParameters(tau_mem_inv=torch.rand(12, **z) * 200 + 50, v_th=torch.rand(12, **z) * 0.5 + 0.5,
                                      v_leak=torch.zeros(12, **z), v_reset=torch.zeros(12, **z), method="heaviside"))
    li = LIBoxCell(LIBoxParameters(tau_mem_inv=torch.full((4,), 120.0, **z), v_leak=torch.zeros(4, **z)))
    return [lin1, box, lin2, li]


def _run_torch(mods: list[torch.nn.Module], x: torch.Tensor, stateful: set[int]) -> np.ndarray:
    state: list[object] = [None] * len(mods)
    out = []
    with torch.no_grad():
        for t in range(x.shape[1]):
            h = x[:, t]
            for i, m in enumerate(mods):
                if i in stateful:
                    h, state[i] = m(h, state[i])
                else:
                    h = m(h)
            out.append(h.numpy().copy())
    return np.stack(out, axis=1)


def _deploy(graph: object, x: np.ndarray) -> None:
    """Calibrate for loihi2, then verify: the readout membrane bit-exact on fxsim, ONNX and Lava."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LNMDeployWarning)
        art = calibrate_network(graph, x, load_target("loihi2"), load_recipe("default"),  # type: ignore[arg-type]
                                progress=False).artifact
    assert isinstance(art.fx.nodes[art.fx.schedule().inputs[art.fx.schedule().output_node][0][0]], FxLIReadout)
    r = _verify(art, graph, x, readout="membrane-max")
    m = r.membrane  # type: ignore[attr-defined]
    assert set(m.backends) == {"onnx", "lava"} and all(b["bit_exact"] for b in m.backends.values()), m.backends
    assert m.rms_error < 0.1 * m.float_range
    assert r.passed, r.reasons  # type: ignore[attr-defined]


def test_norse_network_ending_in_an_li_readout() -> None:
    import norse.torch as norse

    mods = _norse_net()
    g = norse.to_nir(norse.SequentialState(*mods), torch.zeros(1, 10, dtype=torch.float64))
    assert isinstance(g.nodes["3"], nir.LI)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LNMDeployWarning)
        graph = from_nir(g, producer="norse")
    readout = graph.nodes["3"]
    assert isinstance(readout, Neuron) and not readout.spiking
    x = (torch.rand(16, 24, 10, dtype=torch.float64) < 0.3).double()
    ours = run_float(graph, x.numpy()).output
    np.testing.assert_allclose(ours, _run_torch(mods, x, {1, 3}), rtol=0, atol=1e-12)  # Norse's own membrane
    _deploy(graph, x.numpy().astype(np.uint8))


def test_snntorch_network_ending_in_a_non_spiking_readout() -> None:
    """snnTorch's exporter writes every ``Leaky`` as a LIF (it has no LI): the readout ``Leaky``
    (``reset_mechanism="none"``, read for its membrane) is replaced by the ``nir.LI`` of the same
    tau, r and v_leak, the one-line edit docs/nir.md describes."""
    import snntorch as snn
    from snntorch.export_nir import export_to_nir

    def heaviside(v: torch.Tensor) -> torch.Tensor:
        return (v > 0).to(v.dtype)

    lin1, lin2 = torch.nn.Linear(10, 12), torch.nn.Linear(12, 4)
    with torch.no_grad():
        lin1.weight.mul_(3.0)
    hidden = snn.Leaky(beta=torch.rand(12) * 0.5 + 0.45, threshold=torch.rand(12) * 0.5 + 0.5, spike_grad=heaviside,
                       init_hidden=True, reset_mechanism="zero", reset_delay=False)
    out = snn.Leaky(beta=torch.full((4,), 0.8), threshold=torch.full((4,), 1e6), spike_grad=heaviside,
                    init_hidden=True, reset_mechanism="none", output=True)
    net = torch.nn.Sequential(lin1, hidden, lin2, out).double()
    g = export_to_nir(net, torch.zeros(1, 10, dtype=torch.float64), ignore_dims=[0])
    lif_node = g.nodes["3"]
    assert isinstance(lif_node, nir.LIF)
    g.nodes["3"] = nir.LI(tau=lif_node.tau, r=lif_node.r, v_leak=lif_node.v_leak)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LNMDeployWarning)
        graph = from_nir(g, producer="snntorch")
    assert isinstance(graph.nodes["3"], Neuron) and not graph.nodes["3"].spiking
    x = (torch.rand(16, 24, 10, dtype=torch.float64) < 0.3).double()
    from test_readout_node import _membrane  # snnTorch's own membrane, step by step

    np.testing.assert_allclose(run_float(graph, x.numpy()).output, _membrane(net, x), rtol=0, atol=1e-9)
    _deploy(graph, x.numpy().astype(np.uint8))


def test_dequantized_readout_round_trips() -> None:
    """The artifact's dequantized readout is a non-spiking Neuron whose float run reproduces the
    integer membrane up to the rounding of the scale (the same integers times q)."""
    g, x = _graph(syn=False)
    res = calibrate_network(g, x, load_target("loihi2"), load_recipe("default"), progress=False)
    deq = res.artifact.graph.nodes["r"]
    assert isinstance(deq, Neuron) and not deq.spiking
    q = res.quantized.layers["r"].q
    f = run_float(res.artifact.graph, x).output
    fixed = run_fx(res.artifact.fx, x).output
    # LI without a current: v = (1 - dv/4096) v + bias + q * (a << 6) truncated: within a few LSBs
    assert np.max(np.abs(f / q - fixed)) < 64
    assert dataclasses.is_dataclass(res.quantized.layers["r"])


def test_cli_calibrates_and_verifies_a_readout_network(tmp_path: object, capsys: pytest.CaptureFixture[str]) -> None:
    """The CLI end to end on a Norse file ending in LI: calibrate, then verify with a membrane rule;
    the JSON carries the membrane check and the text names it."""
    import json
    from pathlib import Path

    import norse.torch as norse

    from lnm_deploy.cli import main

    d = Path(str(tmp_path))
    nir.write(d / "net.nir", norse.to_nir(norse.SequentialState(*_norse_net()), torch.zeros(1, 10, dtype=torch.float64)))
    rng = np.random.default_rng(0)
    np.savez(d / "data.npz", x=(rng.random((8, 16, 10)) < 0.3).astype(np.uint8))
    assert main(["calibrate", str(d / "net.nir"), "--target", "loihi2-lif", "--data", str(d / "data.npz"),
                 "--producer", "norse", "--out", str(d / "art.nir"), "--quiet"]) == 0
    assert main(["verify", str(d / "art.nir"), "--data", str(d / "data.npz"), "--backend", "onnx",
                 "--readout", "membrane-last", "--json", str(d / "v.json"), "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "readout '3' membrane (membrane-last)" in text and "onnx bit-exact" in text and "PASSED" in text
    doc = json.loads((d / "v.json").read_text())
    assert doc["membrane"]["backends"]["onnx"]["bit_exact"] and doc["criteria"]["readout"] == "membrane-last"
    with pytest.raises(SystemExit) as e:  # argparse's choices: the rules of MEMBRANE_READOUTS
        main(["verify", str(d / "art.nir"), "--data", str(d / "data.npz"), "--readout", "membrane-nope"])
    assert e.value.code == 2


def test_the_agreement_search_leaves_the_readout_synapse_at_its_calibrated_clip() -> None:
    """The search's objective compares spikes; a readout has none, so every factor would score the
    same and the first (0.5) would halve its weight clip for nothing: its synapse is not searched."""
    g, x = _graph()
    res = calibrate_network(g, x, load_target("loihi2"), load_recipe("agreement"), progress=False)
    factors = res.report["search"]["factors"]
    assert "fc" in factors and "fc2" not in factors


def test_a_nir_cubali_readout_deploys() -> None:
    """A NIR graph ending in CubaLI (a current state: the readout's ``du`` < 4095), read with the
    generic convention, calibrates and verifies with its membrane bit-exact on ONNX and Lava."""
    rng = np.random.default_rng(9)
    n_in, n_h, n_out = 10, 12, 4
    g = nir.NIRGraph(nodes={
        "input": nir.Input(input_type=np.array([n_in])),
        "fc": nir.Affine(weight=rng.normal(0.3, 1.0, (n_h, n_in)) * 400, bias=np.zeros(n_h)),
        "lif": nir.LIF(tau=np.full(n_h, 5e-3), r=np.ones(n_h), v_leak=np.zeros(n_h), v_threshold=np.ones(n_h)),
        "fc2": nir.Affine(weight=rng.normal(0, 1.0, (n_out, n_h)) * 50, bias=np.zeros(n_out)),
        "li": nir.CubaLI(tau_syn=np.full(n_out, 4e-3), tau_mem=np.full(n_out, 8e-3), r=np.ones(n_out),
                         v_leak=np.zeros(n_out)),
        "output": nir.Output(output_type=np.array([n_out]))},
        edges=[("input", "fc"), ("fc", "lif"), ("lif", "fc2"), ("fc2", "li"), ("li", "output")])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", LNMDeployWarning)
        graph = from_nir(g, dt=1e-3)
    node = graph.nodes["li"]
    assert isinstance(node, Neuron) and not node.spiking and node.syn_decay is not None
    x = (rng.random((12, 20, n_in)) < 0.3).astype(np.uint8)
    assert np.any(run_float(graph, x).spikes["lif"])
    _deploy(graph, x)
