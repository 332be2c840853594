"""The Lava backend on artifacts of the real calibration pipeline: Lava (Loihi2SimCfg fixed_pt)
against fxsim, bit for bit, on every spike of every layer and every recorded state, on both
targets; feed-forward, recurrent, convolutional and snnTorch-exported networks.

Also: one compiled network reused across samples equals a fresh network per sample; the
shared-memory recorder equals Lava's own RingBuffer sink and Monitor; PolyNeuron's floating_pt
model stays close to the float executor on the dequantized graph; topologies Lava cannot map are
refused naming the node; the runtime is stopped on errors. Lava installs on Python 3.10 only.
"""

from __future__ import annotations

import sys
import warnings
from typing import Any

import numpy as np
import pytest

from lnm_deploy import ir
from lnm_deploy.calibrate import calibrate_network, load_recipe
from lnm_deploy.errors import LNMDeployWarning, UnsupportedError, UserInputError
from lnm_deploy.execute import run_float
from lnm_deploy.fixedpoint import FxConv2d, FxDense, FxGraph, FxLIF, FxPoly, fx_sequential
from lnm_deploy.fxsim import compare_runs, first_mismatch, run_fx
from lnm_deploy.targets import load_target

if sys.version_info[:2] != (3, 10):
    pytest.skip("lava-nc 0.10 installs on Python 3.10 only", allow_module_level=True)

from lnm_deploy.lava_backend import run_lava, run_lava_float, run_lava_timed

pytestmark = [pytest.mark.lava]

TARGETS = ("loihi2", "loihi2-lif")
SAMPLES, STEPS = 3, 30


# ------------------------------------------------------------------------------------------------
# Networks (float IR graphs), calibrated by the real pipeline


def _mlp(rng: np.random.Generator) -> ir.Graph:
    return ir.sequential([("fc1", ir.Affine(weight=rng.normal(0, 0.6, (16, 12)), bias=rng.normal(0, 0.05, 16))),
                       ("n1", ir.Neuron(shape=(16,), poly=[0.0, 0.9, 0.03], v_th=1.0)),
                       ("fc2", ir.Affine(weight=rng.normal(0, 0.7, (6, 16)))),
                       ("n2", ir.Neuron(shape=(6,), poly=[0.01, 0.85, 0.05], v_th=1.0))], (12,))


def _recurrent(rng: np.random.Generator) -> ir.Graph:
    nodes = {"input": ir.Input(shape=(10,)),
             "fc": ir.Affine(weight=rng.normal(0, 0.6, (12, 10))),
             "n": ir.Neuron(shape=(12,), poly=[0.0, 0.85, 0.02], v_th=1.0),
             "rec": ir.Affine(weight=rng.normal(0, 0.3, (12, 12))),
             "fc2": ir.Affine(weight=rng.normal(0.3, 0.8, (5, 12))),
             "n2": ir.Neuron(shape=(5,), poly=[0.0, 0.9, 0.02], v_th=1.0),
             "output": ir.Output()}
    edges = [("input", "fc"), ("fc", "n"), ("n", "rec"), ("rec", "n"), ("n", "fc2"), ("fc2", "n2"),
             ("n2", "output")]
    return ir.Graph(nodes=nodes, edges=edges)


def _conv(rng: np.random.Generator) -> ir.Graph:
    """Conv2d -> IF -> SumPool2d -> IF -> Flatten -> Affine -> IF. The middle IF subtracts the
    threshold on reset: on loihi2 it becomes a (W, H, C)-shaped PolyNeuron, the others stock LIFs."""
    return ir.sequential([("conv", ir.Conv2d(weight=rng.normal(0.1, 0.5, (4, 2, 3, 3)), padding=1)),
                       ("if1", ir.Neuron(shape=(4, 8, 8), poly=[0.0, 1.0], v_th=1.0)),
                       ("pool", ir.SumPool2d(kernel_size=2)),
                       ("if2", ir.Neuron(shape=(4, 4, 4), poly=[0.0, 1.0], v_th=1.0, reset="subtract")),
                       ("flat", ir.Flatten()),
                       ("fc", ir.Affine(weight=rng.normal(0.05, 0.4, (6, 64)))),
                       ("if3", ir.Neuron(shape=(6,), poly=[0.0, 1.0], v_th=1.0))], (2, 8, 8))


@pytest.fixture(scope="module")
def graphs() -> dict[str, ir.Graph]:
    import lnm_deploy

    rng = np.random.default_rng(0)
    out = {"mlp": _mlp(rng), "recurrent": _recurrent(rng), "conv": _conv(rng)}
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from test_calibrate import _imported_graphs

    imported = _imported_graphs()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("snn-leaky", "snn-conv"):
            out[name] = lnm_deploy.load(imported[name][0], producer="snntorch")
    return out


_cache: dict[tuple[str, str], Any] = {}


def _artifact(graphs: dict[str, ir.Graph], name: str, target: str) -> tuple[Any, np.ndarray]:
    """(CalibrationResult, test spikes) for a network on a target (cached per module run)."""
    if (name, target) not in _cache:
        g = graphs[name]
        sched = g.schedule()
        shape = sched.shapes[sched.input_node]
        x_cal = (np.random.default_rng(1).random((16, STEPS, *shape)) < 0.3).astype(np.uint8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", LNMDeployWarning)
            res = calibrate_network(g, x_cal, load_target(target), load_recipe("default"), progress=False)
        x = (np.random.default_rng(2).random((SAMPLES, STEPS, *shape)) < 0.3).astype(np.uint8)
        _cache[name, target] = (res, x)
    return _cache[name, target]


def assert_bit_exact(fx: FxGraph, ref: Any, got: Any, what: str) -> None:
    order = fx.neuron_names()
    assert set(got.spikes) == set(order)
    m = compare_runs(ref, got, order=order)
    assert m is None, f"{what}: fxsim vs Lava: {m}"
    for n in order:  # spelled out: the comparison is np.array_equal, nothing looser
        assert np.array_equal(ref.spikes[n], got.spikes[n]), n
        assert got.spikes[n].dtype == np.uint8
        for v, a in ref.states.get(n, {}).items():
            assert np.array_equal(a, got.states[n][v]), (n, v)
    assert np.array_equal(ref.output, got.output)


# ------------------------------------------------------------------------------------------------
# Lava == fxsim on calibrated artifacts


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("name", ["mlp", "recurrent", "conv", "snn-leaky", "snn-conv"])
def test_calibrated_artifacts_bit_exact(graphs: dict[str, ir.Graph], name: str, target: str) -> None:
    res, x = _artifact(graphs, name, target)
    fx = res.artifact.fx
    assert fx.target == target
    kinds = {n: type(fx.nodes[n]) for n in fx.neuron_names()}
    if target == "loihi2-lif":
        assert set(kinds.values()) == {FxLIF}
    elif name in ("mlp", "recurrent", "snn-leaky", "snn-conv"):
        assert set(kinds.values()) == {FxPoly}  # degree 2 / subtractive reset: the programmable neuron
    else:
        assert kinds == {"if1": FxLIF, "if2": FxPoly, "if3": FxLIF}  # stock LIF where it is exact
    if name == "recurrent":
        assert ("n", "rec") in fx.edges and ("rec", "n") in fx.edges
    if name in ("conv", "snn-conv"):
        assert any(isinstance(node, FxConv2d) for node in fx.nodes.values())
    if name == "conv":
        pool = fx.nodes["pool"]  # a lone SumPool2d: a depthwise unit-weight convolution
        assert isinstance(pool, FxConv2d) and pool.groups == pool.weight.shape[0]

    ref = run_fx(fx, x, record=True)
    for n, s in ref.spikes.items():
        assert s.sum() > 0, f"layer {n} never spikes: the comparison would prove little"
    got = run_lava(fx, x, record=True)
    assert_bit_exact(fx, ref, got, f"{name} on {target}")
    expected = {FxLIF: {"u", "v"}, FxPoly: {"v"}}
    for n, k in kinds.items():
        assert set(got.states[n]) == set(ref.states[n])
        assert set(got.states[n]) >= expected[k]
        assert got.states[n]["v"].dtype == np.int64


def test_first_mismatch_names_layer_timestep_and_neuron(graphs: dict[str, ir.Graph]) -> None:
    """The comparison is sensitive: one flipped spike is found, named and counted."""
    res, x = _artifact(graphs, "mlp", "loihi2")
    fx = res.artifact.fx
    got = run_lava(fx, x[:1])
    tampered = {k: v.copy() for k, v in got.spikes.items()}
    tampered["n2"][0, 7, 3] ^= 1
    m = first_mismatch(run_fx(fx, x[:1]).spikes, tampered, order=fx.neuron_names())
    assert m is not None and (m.layer, m.timestep, m.neuron, m.count) == ("n2", 7, (3,), 1)


# ------------------------------------------------------------------------------------------------
# One compiled network for all samples


def test_one_network_for_all_samples_equals_fresh_networks(graphs: dict[str, ir.Graph]) -> None:
    """Recurrent LIF (the self-loop buffer is cleared with Var.set at each sample's start step),
    poly and LIF layers at several depths: reusing one compiled network across samples gives the
    same bits as compiling a fresh network for every sample, and both equal fxsim."""
    for name, target in (("recurrent", "loihi2-lif"), ("conv", "loihi2")):
        res, x = _artifact(graphs, name, target)
        fx = res.artifact.fx
        ref = run_fx(fx, x, record=True)
        reused, t1 = run_lava_timed(fx, x, record=True)
        fresh, t2 = run_lava_timed(fx, x, record=True, samples_per_network=1)
        assert (t1.networks, t2.networks) == (1, SAMPLES)
        assert t1.steps == SAMPLES * (STEPS + max(_depths(fx).values()))
        assert_bit_exact(fx, ref, reused, f"{name} reused")
        assert_bit_exact(fx, ref, fresh, f"{name} fresh")
        if name == "recurrent":
            assert t1.pauses == SAMPLES  # one Var.set point per sample
        else:
            assert t1.pauses == 0  # LIFReset and PolyNeuron reset themselves


def _depths(fx: FxGraph) -> dict[str, int]:
    from lnm_deploy.lava_backend.runner import plan

    p = plan(fx)
    return {n: p.depth[n] for n in fx.neuron_names()}


def test_reuse_with_initial_states_recurrence_and_all_neuron_options() -> None:
    """Hand-made edge cases the calibrator does not emit: non-zero initial LIF states (plain LIF,
    u and v set at each sample's start), a recurrent LIF and a recurrent PolyNeuron with a synapse
    and initial states, 4 samples on one network."""
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from fx_nets import chain, poly, spikes

    rng = np.random.default_rng(7)
    lif0 = FxLIF(shape=(6,), du=3000, dv=200, vth=40, bias_mant=rng.integers(-200, 400, 6),
                 u_init=rng.integers(-5000, 5000, 6), v_init=rng.integers(-3000, 3000, 6))
    p1 = poly(rng, (5,), small=False)
    p1.syn_decay, p1.v_init, p1.c_init = np.full(5, 300), np.arange(5) * 7, np.arange(5) * -3
    g = chain([("d0", FxDense(weight=rng.integers(-60, 200, (6, 4)))), ("l0", lif0),
               ("d1", FxDense(weight=rng.integers(-100, 200, (5, 6)), weight_exp=6)), ("p1", p1)],
              (4,), {"l0": FxDense(weight=rng.integers(-100, 100, (6, 6))),
                     "p1": FxDense(weight=rng.integers(-100, 100, (5, 5)))})
    x = spikes(rng, 4, 12, (4,))
    ref = run_fx(g, x, record=True)
    assert ref.spikes["l0"].sum() > 0
    got, t = run_lava_timed(g, x, record=True)
    assert (t.networks, t.pauses) == (1, 4)  # one Var.set point per sample (l0 starts at step 1)
    assert_bit_exact(g, ref, got, "edge cases")


# ------------------------------------------------------------------------------------------------
# The recorder is what Lava's own probes see


def test_recorder_equals_lava_ringbuffer_sink_and_monitor(graphs: dict[str, ir.Graph], tmp_path: Any) -> None:
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.monitor.process import Monitor

    from lnm_deploy.lava_backend import runner

    res, x = _artifact(graphs, "conv", "loihi2")
    fx = res.artifact.fx
    p = runner.plan(fx)
    net = runner._Network(fx, p, x[:1], record=True, tag="fixed_pt", layers=fx.neuron_names(),
                          workdir=str(tmp_path))
    probes = {}
    for n in ("if1", "if2"):  # a LIFReset and a 3-d PolyNeuron
        sink = Sink(shape=net.procs[n].s_out.shape, buffer=net.total)
        net.procs[n].s_out.connect(sink.a_in)
        mon = Monitor()
        mon.probe(target=net.procs[n].v, num_steps=net.total)
        probes[n] = (sink, mon)
    assert not net.pauses
    try:
        net.source.run(condition=RunSteps(num_steps=net.total), run_cfg=Loihi2SimCfg(select_tag="fixed_pt"))
        spikes, states = net.read_sample()
        lava = {n: (np.asarray(s.data.get()), np.asarray(m.get_data()[n]["v"])) for n, (s, m) in probes.items()}
    finally:
        net.source.stop()
    for n, (sink_data, mon_v) in lava.items():
        d = p.depth[n]
        s = np.moveaxis(sink_data, -1, 0)[d : d + STEPS]
        v = mon_v[d : d + STEPS]
        assert np.array_equal(runner._from_lava_seq(np.rint(s).astype(np.uint8), 3), spikes[n])
        assert np.array_equal(runner._from_lava_seq(np.rint(v).astype(np.int64), 3), states[n]["v"])
    ref = run_fx(fx, x[:1], record=True)
    assert first_mismatch({k: v[0] for k, v in ref.spikes.items()}, spikes) is None


# ------------------------------------------------------------------------------------------------
# PolyNeuron's floating_pt model


@pytest.mark.parametrize("name", ["mlp", "recurrent", "conv"])
def test_float_model_is_close_to_the_float_executor(graphs: dict[str, ir.Graph], name: str) -> None:
    """``floating_pt`` (Lava's float Dense/Conv/LIF and PolyNeuron's float model) against the
    float IR executor on the artifact's dequantized graph: close, not equal (a different model
    from fixed_pt, like Lava's float LIF); and visibly not the fixed-point model."""
    res, x = _artifact(graphs, name, "loihi2")
    art = res.artifact
    got = run_lava_float(art.fx, x, record=True)
    ref = run_float(art.graph, x, record=True)
    fixed = run_fx(art.fx, x, record=True)
    poly_layers = [n for n in art.fx.neuron_names() if isinstance(art.fx.nodes[n], FxPoly)]
    assert poly_layers
    # (sample, step) pairs up to which every layer spiked alike: a membrane exactly at a threshold
    # may round either way in float, and a flipped spike changes everything downstream of it.
    differs = sum(np.any(got.spikes[n] != ref.spikes[n], axis=tuple(range(2, got.spikes[n].ndim)))
                  for n in art.fx.neuron_names())
    same = np.cumsum(differs, axis=1) == 0
    assert same.mean() > 0.25  # (the IF layers of "conv" sit on thresholds often)
    for n in art.fx.neuron_names():
        assert ref.spikes[n].sum() > 0
        agreement = float(np.mean(got.spikes[n] == ref.spikes[n]))
        assert agreement >= 0.99, (n, agreement)
        q = res.quantized.layers[n].q
        v_lava, v_ir = got.states[n]["v"] * q, ref.states[n]["v"]
        scale = max(1.0, float(np.max(np.abs(v_ir))))
        assert np.allclose(v_lava[same], v_ir[same], rtol=1e-9, atol=1e-9 * scale), n
    # The float model is not the chip: with a quadratic term its membranes leave the integer grid.
    # (An IF layer sums integers: there both models agree.)
    for n in poly_layers:
        if art.fx.nodes[n].degree >= 2:  # type: ignore[attr-defined]
            assert not np.array_equal(got.states[n]["v"], fixed.states[n]["v"].astype(np.float64))
            assert np.any(got.states[n]["v"] != np.rint(got.states[n]["v"]))


# ------------------------------------------------------------------------------------------------
# Errors, progress, stopping


def test_unsupported_topologies_are_refused_naming_the_node() -> None:
    lif = FxLIF(shape=(3,), du=4095, dv=0, vth=1)
    x = np.zeros((1, 2, 2), np.uint8)
    # A skip connection: l1 reads paths of depth 1 and 2. Lava delays the shorter one with a relay
    # (issue 14; tests/test_residual.py): runs bit-exact with fxsim.
    g = fx_sequential([("d0", FxDense(weight=np.ones((3, 2), int))), ("l0", lif),
                       ("d1", FxDense(weight=np.ones((3, 3), int))),
                       ("l1", FxLIF(shape=(3,), du=4095, dv=0, vth=1))], (2,))
    g.nodes["skip"] = FxDense(weight=np.ones((3, 2), int))
    g.edges += [("input", "skip"), ("skip", "l1")]
    xs = (np.random.default_rng(0).random((2, 5, 2)) < 0.5).astype(np.uint8)
    assert_bit_exact(g, run_fx(g, xs), run_lava(g, xs), "skip")
    # A cycle through two layers.
    g = fx_sequential([("d0", FxDense(weight=np.ones((3, 2), int))), ("l0", lif),
                       ("d1", FxDense(weight=np.ones((3, 3), int))),
                       ("l1", FxLIF(shape=(3,), du=4095, dv=0, vth=1))], (2,))
    g.nodes["back"] = FxDense(weight=np.ones((3, 3), int))
    g.edges += [("l1", "back"), ("back", "l0")]
    with pytest.raises(UnsupportedError, match=r"node 'l0'.*self-loop"):
        run_lava(g, x)
    # A convolution Lava's Conv cannot compute: negative exponent; float32 fan-in.
    for w, e, msg in ((np.ones((1, 1, 1, 1)), -1, "negative"), (np.full((1, 1, 2, 2), 2**10), 12, "float32")):
        g = fx_sequential([("c", FxConv2d(weight=w, weight_exp=e)), ("l", FxLIF(shape=(1, 2, 2) if w.shape[2] == 1
                                                                                 else (1, 1, 1)))], (1, 2, 2))
        with pytest.raises(UnsupportedError, match=rf"node 'c'.*{msg}"):
            run_lava(g, np.zeros((1, 2, 1, 2, 2), np.uint8))
    # A LIF with widths Lava's LIF does not have.
    g = fx_sequential([("d", FxDense(weight=np.ones((3, 2), int))),
                       ("l", FxLIF(shape=(3,), vth=1, state_bits=16))], (2,))
    with pytest.raises(UnsupportedError, match=r"node 'l'.*fixed widths"):
        run_lava(g, x)


def test_bad_input_empty_input_and_progress(graphs: dict[str, ir.Graph], capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    from lnm_deploy import progress as progress_mod

    monkeypatch.setattr(progress_mod, "is_terminal", lambda stream=None: True)  # a bar only at a terminal
    res, x = _artifact(graphs, "snn-leaky", "loihi2")
    fx = res.artifact.fx
    with pytest.raises(UserInputError, match="binary"):
        run_lava(fx, x * 2)
    with pytest.raises(UserInputError, match=r"\(samples, timesteps, 10\)"):
        run_lava(fx, x[..., :3])
    empty = run_lava(fx, x[:0], record=True)
    assert empty.output.shape == (0, STEPS, 6) and empty.states["1"]["v"].shape == (0, STEPS, 16)
    got = run_lava(fx, x[:2], progress=True)
    assert "lava" in capsys.readouterr().err
    assert first_mismatch(run_fx(fx, x[:2]).spikes, got.spikes) is None


def test_runtime_is_stopped_when_a_run_fails(graphs: dict[str, ir.Graph], monkeypatch: pytest.MonkeyPatch) -> None:
    """An error after the runtime started still stops it (else the interpreter hangs at exit),
    and the next run starts cleanly."""
    from lnm_deploy.lava_backend import runner

    res, x = _artifact(graphs, "snn-leaky", "loihi2-lif")
    fx = res.artifact.fx
    started: list[Any] = []
    real = runner._Network.read_sample

    def failing(self: Any) -> Any:
        started.append(self.source.runtime)
        raise RuntimeError("boom")

    monkeypatch.setattr(runner._Network, "read_sample", failing)
    with pytest.raises(RuntimeError, match="boom"):
        run_lava(fx, x)
    assert started and not started[0]._is_started  # stopped
    monkeypatch.setattr(runner._Network, "read_sample", real)
    assert first_mismatch(run_fx(fx, x).spikes, run_lava(fx, x).spikes) is None


def test_a_failing_stop_does_not_hide_the_interrupt(graphs: dict[str, ir.Graph],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Stopping right after an interrupted run can fail on the interrupted run's late reply (Lava
    0.10 raises "Runtime Received ..."); the caller still gets the interrupt, and a later run works."""
    from lava.magma.core.process.process import AbstractProcess

    from lnm_deploy.lava_backend import runner

    res, x = _artifact(graphs, "snn-leaky", "loihi2-lif")
    fx = res.artifact.fx
    real_read, real_stop = runner._Network.read_sample, AbstractProcess.stop

    def interrupted(self: Any) -> Any:
        raise KeyboardInterrupt

    def late_reply(self: Any) -> None:
        real_stop(self)
        raise RuntimeError("Runtime Received [0.]")

    monkeypatch.setattr(runner._Network, "read_sample", interrupted)
    monkeypatch.setattr(AbstractProcess, "stop", late_reply)
    with pytest.raises(KeyboardInterrupt):
        run_lava(fx, x)
    monkeypatch.setattr(runner._Network, "read_sample", real_read)
    with pytest.raises(RuntimeError, match="Runtime Received"):  # not hidden when nothing else failed
        run_lava(fx, x[:1])
    monkeypatch.setattr(AbstractProcess, "stop", real_stop)
    assert first_mismatch(run_fx(fx, x).spikes, run_lava(fx, x).spikes) is None


def test_ctrl_c_interrupts_and_stops(tmp_path: Any) -> None:
    """Ctrl-C reaches the whole process group. Lava's processes ignore it (they were forked while
    SIGINT only set a flag): the caller gets KeyboardInterrupt, the runtime stops, the
    interpreter exits instead of hanging."""
    import os
    import signal
    import subprocess

    script = tmp_path / "long_run.py"
    script.write_text(
        "import numpy as np\n"
        "from lnm_deploy.fixedpoint import FxDense, FxLIF, fx_sequential\n"
        "from lnm_deploy.lava_backend import run_lava\n"
        "g = fx_sequential([('d', FxDense(weight=np.ones((3, 2), int))), ('l', FxLIF(shape=(3,), vth=1))], (2,))\n"
        "print('start', flush=True)\n"
        "try:\n"
        "    run_lava(g, np.ones((5000, 20, 2), np.uint8))\n"
        "except KeyboardInterrupt:\n"
        "    print('interrupted', flush=True)\n")
    p = subprocess.Popen([sys.executable, str(script)], start_new_session=True, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "start"
        import time

        time.sleep(3.0)
        os.killpg(p.pid, signal.SIGINT)
        out, _ = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert "interrupted" in out and p.returncode == 0, out[-2000:]
