"""Calibration statistics: the mergeable histogram, per-tensor statistics and ``collect_stats`` on
small IR graphs, checked against the raw recorded states and an independent simulation."""

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lnm_deploy.calibrate import CalibrationStats, Histogram, TensorStats, collect_stats
from lnm_deploy.errors import UnsupportedError, UserInputError
from lnm_deploy.execute import run_float
from lnm_deploy.ir import Affine, Conv2d, Flatten, Graph, Input, Neuron, Output, sequential

QS = [0.0, 0.1, 1.0, 25.0, 50.0, 90.0, 99.0, 99.9, 99.99, 100.0]


def _datasets():
    rng = np.random.default_rng(0)
    gaps = np.concatenate([rng.normal(size=500), rng.normal(size=20) + 40.0, [-3.0] * 7])
    return {
        "normal": rng.normal(size=20_000),
        "laplace": rng.laplace(size=20_000) * 3.0,
        "student_t": rng.standard_t(2, size=20_000),
        "positive": rng.exponential(size=5_000),
        "gaps": gaps,  # empty stretches: np.percentile interpolates across them
        "integers": rng.integers(-5, 6, size=3_000).astype(float),
        "tiny": rng.normal(size=1_000) * 1e-9,
        "two": np.array([-1.0, 1.0]),
    }


@pytest.mark.parametrize("name", list(_datasets()))
def test_percentiles_within_one_bin_of_numpy(name):
    x = _datasets()[name]
    for bins in (64, 4096):
        h = Histogram.from_array(x, bins)
        w = h.width
        assert h.n == x.size and h.minimum == x.min() and h.maximum == x.max()
        assert h.range / 2 <= np.abs(x).max() < h.range  # the documented range rule
        for q in QS:
            assert abs(h.percentile(q) - np.percentile(x, q)) <= w * (1 + 1e-9), (q, bins)
            assert abs(h.abs_percentile(q) - np.percentile(np.abs(x), q)) <= w * (1 + 1e-9), (q, bins)
        assert h.percentile(100.0) == x.max() and h.percentile(0.0) == x.min()
        assert h.abs_percentile(100.0) == np.abs(x).max()
        assert h.abs_percentiles(QS) == [h.abs_percentile(q) for q in QS]  # the same values, one cumsum


def test_nonzero_bins_are_a_weighted_sample():
    x = _datasets()["laplace"]
    h = Histogram.from_array(x, 1024)
    centres, counts = h.nonzero_bins()
    assert counts.sum() == x.size
    assert x.min() <= centres.min() <= x.min() + h.width / 2
    assert x.max() - h.width / 2 <= centres.max() <= x.max()
    assert abs(np.average(centres, weights=counts) - x.mean()) <= h.width / 2
    assert abs(np.average(centres**2, weights=counts) - np.mean(x**2)) <= h.width * np.abs(x).max()


def test_fraction_above_matches_raw_data():
    x = _datasets()["laplace"]
    h = Histogram.from_array(x, 1024)
    for clip in (0.0, 0.5, 3.0, 10.0, 20.0, np.abs(x).max()):
        exact = np.mean(np.abs(x) > clip)
        # Linear inside the bin holding the clip: off by at most that bin's share.
        k = int(clip // h.width)
        share = h.abs_counts()[k] / h.n if k < h.bins_per_side else 0.0
        assert abs(h.fraction_above(clip) - exact) <= share + 1e-12
    assert h.fraction_above(np.abs(x).max()) == 0.0


@settings(max_examples=60)
@given(
    chunks=st.lists(
        st.lists(st.floats(-1e6, 1e6, allow_nan=False, allow_subnormal=False), min_size=0, max_size=40),
        min_size=1, max_size=6,
    ),
    bins=st.sampled_from([2, 8, 256]),
)
def test_histogram_chunks_and_merge_equal_one_histogram(chunks, bins):
    whole = Histogram.from_array(np.array([v for c in chunks for v in c]), bins)
    added = Histogram(bins)
    merged = Histogram(bins)
    for c in chunks:
        added.add(np.array(c))
        merged.merge(Histogram.from_array(np.array(c), bins))
    for h in (added, merged):
        assert h.n == whole.n and h.range == whole.range
        assert np.array_equal(h.counts, whole.counts)
        assert h.minimum == whole.minimum and h.maximum == whole.maximum


def test_histogram_grows_exactly_and_round_trips():
    rng = np.random.default_rng(3)
    small, large = rng.normal(size=1000) * 1e-3, rng.normal(size=1000) * 1e3
    h = Histogram(1024)
    h.add(np.zeros(5))  # an all-zero start: the minimal range, then ~20 doublings
    h.add(small)
    h.add(large)
    ref = Histogram.from_array(np.concatenate([np.zeros(5), small, large]), 1024)
    assert np.array_equal(h.counts, ref.counts) and h.range == ref.range
    back = Histogram.from_dict(json.loads(json.dumps(h.to_dict())))
    assert np.array_equal(back.counts, h.counts) and back.range == h.range and back.n == h.n
    with pytest.raises(UserInputError, match="power of two"):
        Histogram(100)


def test_tensor_stats_merge_equals_one_batch():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(10, 6, 5, 3))  # (B, T, C, ...)
    whole = TensorStats.empty(512)
    whole.update(x, 2)
    parts = TensorStats.empty(512)
    for b in range(0, 10, 3):
        part = TensorStats.empty(512)
        part.update(x[b : b + 3], 2)
        parts.merge(part)
    assert np.array_equal(parts.hist.counts, whole.hist.counts)
    assert np.array_equal(parts.channel_min, x.min(axis=(0, 1, 3)))
    assert np.array_equal(parts.channel_max, whole.channel_max)
    assert parts.mean == pytest.approx(x.mean()) and parts.std == pytest.approx(x.std())


# ----------------------------------------------------------------------------------------------
# collect_stats


def _ff_graph(seed=0):
    rng = np.random.default_rng(seed)
    return sequential(
        [
            ("fc1", Affine(weight=rng.normal(size=(16, 12)) * 0.6, bias=rng.normal(size=16) * 0.1)),
            ("n1", Neuron(shape=(16,), poly=[0.0, 0.9, 0.05], v_th=1.0, v_reset=-0.2, syn_decay=0.6,
                          syn_gain=0.8, in_gain=1.1)),
            ("fc2", Affine(weight=rng.normal(size=(5, 16)))),
            ("n2", Neuron(shape=(5,), poly=[0.01, 0.8], v_th=1.0, reset="subtract")),
        ],
        (12,),
    )


def _spike_input(n=40, t=15, d=12, seed=1):
    return (np.random.default_rng(seed).random((n, t, d)) < 0.3).astype(np.float64)


def _simulate(node, x_in):
    """An independent loop over time (same equations as docs/ir.md): v' and c per step."""
    b, steps = x_in.shape[:2]
    v = np.zeros((b, *node.shape))
    c = np.zeros_like(v)
    v_pre, cs = np.zeros(x_in.shape), np.zeros(x_in.shape)
    for t in range(steps):
        if node.syn_decay is not None:
            c = node.syn_decay * c + node.syn_gain * x_in[:, t]
        else:
            c = x_in[:, t]
        p = sum(node.poly[k] * v**k for k in range(node.poly.shape[0]))
        vp = p + node.in_gain * c
        s = vp > node.v_th
        v = np.where(s, node.v_reset if node.reset == "value" else vp - node.v_th, vp)
        v_pre[:, t], cs[:, t] = vp, c
    return v_pre, cs


def test_collect_stats_matches_executor_and_raw_states():
    g = _ff_graph()
    x = _spike_input()
    stats = collect_stats(g, x, batch_size=7, progress=False, seed=None)
    # The same batches through the executor (BLAS may round differently for other batch sizes).
    runs = [run_float(g, x[b : b + 7], record=True) for b in range(0, 40, 7)]
    r = run_float(g, x[:1], record=True)
    r.spikes = {n: np.concatenate([q.spikes[n] for q in runs]) for n in r.spikes}
    r.states = {n: {k: np.concatenate([q.states[n][k] for q in runs]) for k in r.states[n]}
                for n in r.states}
    assert stats.samples == 40 and stats.timesteps == 15
    assert list(stats.spikes) == ["n1", "n2"]
    for n in ("n1", "n2"):
        sp = stats.spikes[n]
        assert sp.mean_rate == pytest.approx(r.spikes[n].mean(), abs=1e-15)
        assert np.allclose(sp.rate, r.spikes[n].mean(axis=(0, 1)))
        v = stats.neurons[n].v
        assert v.minimum == r.states[n]["v"].min() and v.maximum == r.states[n]["v"].max()
        assert np.array_equal(v.channel_max, r.states[n]["v"].max(axis=(0, 1)))
        assert v.n == r.states[n]["v"].size
    c = stats.neurons["n1"].c
    assert c.minimum == r.states["n1"]["c"].min() and c.maximum == r.states["n1"]["c"].max()
    assert stats.neurons["n2"].c is None

    # Synapse outputs and neuron inputs: the affine map of the recorded spikes.
    fc1, fc2 = g.nodes["fc1"], g.nodes["fc2"]
    i1 = x @ fc1.weight.T + fc1.bias
    i2 = r.spikes["n1"].astype(float) @ fc2.weight.T
    for name, ref in (("fc1", i1), ("fc2", i2)):
        out = stats.synapses[name].output
        assert out.minimum == pytest.approx(ref.min()) and out.maximum == pytest.approx(ref.max())
    assert stats.neurons["n1"].input.maximum == pytest.approx(i1.max())
    w = stats.synapses["fc1"].weight
    assert w.maximum == fc1.weight.max() and np.array_equal(w.channel_max, fc1.weight.max(axis=1))
    assert stats.synapses["fc1"].bias.abs_max == np.abs(fc1.bias).max()

    # v' (before the spike test) from an independent simulation; it exceeds v_th exactly where
    # the executor spiked.
    for name, drive in (("n1", i1), ("n2", i2)):
        v_pre, cs = _simulate(g.nodes[name], drive)
        assert np.array_equal(v_pre > 1.0, r.spikes[name].astype(bool))
        vp = stats.neurons[name].v_pre
        assert vp.minimum == pytest.approx(v_pre.min(), abs=1e-12)
        assert vp.maximum == pytest.approx(v_pre.max(), abs=1e-12)
        assert vp.maximum > 1.0 >= r.states[name]["v"][r.spikes[name] == 0].max()
        assert np.allclose(cs, r.states[name].get("c", cs))


def test_statistics_are_the_float_runs_own_values():
    # One recorded float run per batch is the only computation: each tensor's statistics equal
    # those of the values the run itself produced (synapse outputs, neuron inputs, v, v_pre, c),
    # the batches cover every sample once, and each batch's run reaches on_batch.
    rng = np.random.default_rng(2)
    g = Graph(nodes={"in": Input(shape=(12,)), "fc1": Affine(weight=rng.normal(size=(8, 12)), bias=np.full(8, 0.1)),
                     "n1": Neuron(shape=(8,), poly=[0.0, 0.9, 0.05], v_th=1.0, syn_decay=0.5),
                     "rec": Affine(weight=rng.normal(size=(8, 8)) * 0.3),
                     "fc2": Affine(weight=rng.normal(size=(3, 8))), "n2": Neuron(shape=(3,), poly=[0.0, 0.8], v_th=1.0),
                     "out": Output()},
              edges=[("in", "fc1"), ("fc1", "n1"), ("n1", "rec"), ("rec", "n1"), ("n1", "fc2"), ("fc2", "n2"),
                     ("n2", "out")])
    x = _spike_input(n=12)
    seen: list[np.ndarray] = []
    stats = collect_stats(g, x, batch_size=5, progress=False, seed=4,
                          on_batch=lambda idx, res: seen.append(idx.copy()))
    order = np.concatenate(seen)
    assert np.array_equal(np.sort(order), np.arange(12)) and len(seen) == 3
    syn = [n for n in stats.synapses]
    neu = [n for n in stats.neurons]
    runs = [run_float(g, x[idx], record=True, keep_outputs=syn, keep_inputs=neu) for idx in seen]
    for name in syn:
        ref = TensorStats.empty()
        for r in runs:
            ref.update(r.values[name], 2)
        got = stats.synapses[name].output
        assert np.array_equal(got.hist.counts, ref.hist.counts) and got.total == ref.total, name
    for name in neu:
        for tensor, arrays in (("input", [r.inputs[name] for r in runs]),
                               ("v", [r.states[name]["v"] for r in runs]),
                               ("v_pre", [r.states[name]["v_pre"] for r in runs])):
            ref = TensorStats.empty()
            for arr in arrays:
                ref.update(arr, 2)
            got = getattr(stats.neurons[name], tensor)
            assert np.array_equal(got.hist.counts, ref.hist.counts), (name, tensor)
            assert (got.minimum, got.maximum, got.total, got.total_sq) == (
                ref.minimum, ref.maximum, ref.total, ref.total_sq), (name, tensor)
            assert np.array_equal(got.channel_max, ref.channel_max), (name, tensor)


def test_collect_stats_batching_and_serialisation():
    g = _ff_graph()
    x = _spike_input()
    small = collect_stats(g, x, batch_size=4, progress=False)
    big = collect_stats(g, x, batch_size=100, progress=False)
    for a, b in zip(small.tensors(), big.tensors(), strict=True):
        assert (a.layer, a.tensor) == (b.layer, b.tensor)
        # Histograms do not depend on batching (exact up to BLAS rounding of the replayed synapses).
        assert np.abs(a.stats.hist.counts - b.stats.hist.counts).sum() <= 2, (a.layer, a.tensor)
        assert a.stats.abs_max == pytest.approx(b.stats.abs_max, rel=1e-12)
    # One trace point per batch; the stability report needs at least two in the last half.
    trace = small.neurons["n1"].v.trace
    assert trace.samples == [4 * (i + 1) for i in range(10)]
    assert trace.absmax == sorted(trace.absmax)  # a running max never decreases
    assert trace.absmax[-1] == small.neurons["n1"].v.abs_max
    stab = small.stability()
    assert stab["n1.v"].points == 6 and 0.0 <= stab["n1.v"].absmax_change < 1.0
    assert big.stability()["n1.v"].absmax_change is None  # one batch: not measurable

    d = small.to_dict()
    text = json.dumps(d, allow_nan=False)
    back = CalibrationStats.from_dict(json.loads(text))
    assert back.to_dict() == d
    compact = json.dumps(small.to_dict(histograms=False), allow_nan=False)
    assert len(compact) < len(text) / 5


def test_max_samples_and_seed():
    g = _ff_graph()
    x = _spike_input(n=30)
    s1 = collect_stats(g, x, batch_size=8, progress=False, max_samples=12, seed=5)
    s2 = collect_stats(g, x, batch_size=8, progress=False, max_samples=12, seed=5)
    assert s1.samples == 12 and s1.to_dict() == s2.to_dict()
    idx = np.random.default_rng(5).permutation(30)[:12]
    r = run_float(g, x[idx])
    assert s1.spikes["n2"].mean_rate == pytest.approx(r.spikes["n2"].mean())


def test_recurrent_input_includes_previous_step():
    w_rec = np.array([[0.0, 0.7], [-0.4, 0.0]])
    g = Graph(
        nodes={
            "in": Input(shape=(3,)),
            "fc": Affine(weight=np.array([[1.0, 0.5, 0.0], [0.0, 0.5, 1.0]])),
            "n": Neuron(shape=(2,), poly=[0.0, 0.7], v_th=0.9),
            "rec": Affine(weight=w_rec, bias=np.array([0.1, 0.05])),
            "out": Output(),
        },
        edges=[("in", "fc"), ("fc", "n"), ("n", "rec"), ("rec", "n"), ("n", "out")],
    )
    x = _spike_input(n=6, t=12, d=3, seed=2)
    stats = collect_stats(g, x, batch_size=4, progress=False)
    r = run_float(g, x, record=True)
    s = r.spikes["n"].astype(float)
    prev = np.concatenate([np.zeros_like(s[:, :1]), s[:, :-1]], axis=1)
    drive = x @ g.nodes["fc"].weight.T + prev @ w_rec.T + np.array([0.1, 0.05])  # bias from t = 0
    inp = stats.neurons["n"].input
    assert inp.minimum == pytest.approx(drive.min()) and inp.maximum == pytest.approx(drive.max())
    v_pre, _ = _simulate(g.nodes["n"], drive)
    assert np.array_equal(v_pre > 0.9, s.astype(bool))
    assert stats.neurons["n"].v_pre.maximum == pytest.approx(v_pre.max())


def test_conv_graph_per_channel_stats():
    rng = np.random.default_rng(6)
    conv = Conv2d(weight=rng.normal(size=(4, 2, 3, 3)), bias=rng.normal(size=4) * 0.1, padding=1)
    g = sequential(
        [("conv", conv), ("n", Neuron(shape=(4, 5, 5), poly=[0.0, 0.8], v_th=1.0)),
         ("flat", Flatten()), ("fc", Affine(weight=rng.normal(size=(3, 100)) * 0.2)),
         ("out_n", Neuron(shape=(3,), poly=[0.0, 1.0], v_th=None))],
        (2, 5, 5),
    )
    x = (rng.random((5, 6, 2, 5, 5)) < 0.4).astype(float)
    stats = collect_stats(g, x, batch_size=2, progress=False)
    r = run_float(g, x, record=True)
    assert stats.synapses["conv"].weight.channel_max.shape == (4,)
    assert np.array_equal(stats.neurons["n"].v.channel_max, r.states["n"]["v"].max(axis=(0, 1, 3, 4)))
    assert "out_n" not in stats.spikes  # a non-spiking readout: v' = v
    ro = stats.neurons["out_n"]
    assert ro.v_pre.minimum == r.states["out_n"]["v"].min() == ro.v.minimum
    assert stats.input.channel_max.shape == (2,)


def test_bad_calibration_input():
    g = _ff_graph()
    with pytest.raises(UserInputError, match="non-empty"):
        collect_stats(g, np.zeros((0, 5, 12)), progress=False)
    with pytest.raises(UserInputError, match="input must be shaped"):
        collect_stats(g, np.zeros((3, 5, 11)), progress=False)
    with pytest.raises(UserInputError, match="batch_size"):
        collect_stats(g, _spike_input(), batch_size=0, progress=False)
    with pytest.raises(UserInputError, match="max_samples"):
        collect_stats(g, _spike_input(), max_samples=0, progress=False)
    loop = Graph(
        nodes={"in": Input(shape=(2,)), "a": Affine(weight=np.eye(2) * 0.5), "out": Output()},
        edges=[("in", "a"), ("a", "a"), ("a", "out")],
    )
    with pytest.raises(UnsupportedError, match="recurrent loop without a neuron"):
        collect_stats(loop, np.ones((1, 3, 2)), progress=False)


def test_progress_bar_shows_eta(capsys, monkeypatch):
    from lnm_deploy import progress as progress_mod

    monkeypatch.setattr(progress_mod, "is_terminal", lambda stream=None: True)  # a bar only at a terminal
    collect_stats(_ff_graph(), _spike_input(n=10), batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert "calibrate" in err and "sample" in err and "<" in err  # tqdm's "elapsed<remaining"


def test_progress_writes_nothing_off_a_terminal(capsys):
    collect_stats(_ff_graph(), _spike_input(n=10), batch_size=2, progress=True)
    assert capsys.readouterr().err == ""


def test_compiled_and_numpy_statistics_are_identical(monkeypatch):
    """The compiled binning / min-max (numba, optional) and the numpy path give the same statistics,
    bit for bit, including signed zeros and a value on a bin edge."""
    from lnm_deploy.calibrate import stats as st

    g, x = _ff_graph(), _spike_input(n=24)
    st._kernels()
    if st._KERNELS[0] is None:
        pytest.skip("numba is not installed: only the numpy path exists")
    compiled = collect_stats(g, x, batch_size=5, progress=False, seed=3).to_dict()
    a = np.array([[-0.0, 0.0, 0.25, -0.5], [1.0, -1.0, 0.125, 3.0]])
    t1 = TensorStats.empty()
    t1.update(a, 0)
    monkeypatch.setattr(st, "_KERNELS", [None])
    plain = collect_stats(g, x, batch_size=5, progress=False, seed=3).to_dict()
    assert json.dumps(compiled, sort_keys=True) == json.dumps(plain, sort_keys=True)
    t2 = TensorStats.empty()
    t2.update(a, 0)
    assert json.dumps(t1.to_dict(), sort_keys=True) == json.dumps(t2.to_dict(), sort_keys=True)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("compiled", [True, False])
def test_nan_or_inf_is_refused_on_both_paths(monkeypatch, bad, compiled):
    """The compiled path screens values by their sum (a NaN or inf never reaches its loops); both
    paths refuse them with NumericError, per-channel or not, and keep nothing of the tensor."""
    from lnm_deploy.calibrate import stats as st
    from lnm_deploy.errors import NumericError

    if not compiled:
        monkeypatch.setattr(st, "_KERNELS", [None])
    x = np.linspace(-1.0, 1.0, 2 * 3 * 5).reshape(2, 3, 5)
    x[1, 2, 3] = bad
    for axis in (1, None):
        t = TensorStats.empty()
        with pytest.raises(NumericError, match="NaN or inf"):
            t.update(x, axis)
        assert t.n == 0 and t.total == 0.0 and t.channel_min is None


@pytest.mark.parametrize("compiled", [True, False])
def test_a_zero_min_or_max_is_positive_zero(monkeypatch, compiled):
    """The sign of a zero min / max would depend on the reduction order: both paths write +0.0."""
    from lnm_deploy.calibrate import stats as st

    if not compiled:
        monkeypatch.setattr(st, "_KERNELS", [None])
    t = TensorStats.empty()
    t.update(np.array([[-0.0, 0.5], [-0.0, -0.0], [0.0, -0.25]]), 0)
    zeros = [v for v in (*t.channel_min, *t.channel_max) if v == 0.0]
    assert len(zeros) == 4 and all(math.copysign(1.0, v) == 1.0 for v in zeros)
    assert list(t.channel_min) == [0.0, 0.0, -0.25] and list(t.channel_max) == [0.5, 0.0, 0.0]
    assert math.copysign(1.0, TensorStats.from_array(np.array([-0.0, 1.0]), channel_axis=None).minimum) == 1.0


def test_statistics_do_not_depend_on_the_update_threads(monkeypatch):
    """Each tensor is updated by one thread in the same order as alone: one or two threads give
    the same statistics, bit for bit."""
    from lnm_deploy.calibrate import stats as st

    g, x = _ff_graph(), _spike_input(n=24)
    monkeypatch.setattr(st, "STATS_THREADS", 1)
    one = collect_stats(g, x, batch_size=5, progress=False, seed=3).to_dict()
    monkeypatch.setattr(st, "STATS_THREADS", 2)
    two = collect_stats(g, x, batch_size=5, progress=False, seed=3).to_dict()
    assert json.dumps(one, sort_keys=True) == json.dumps(two, sort_keys=True)


@pytest.mark.parametrize("cap", [1, 3, None])
def test_saturation_is_the_layers_cap_at_every_step(cap):
    """A neuron is saturated when it sends its layer's ``max_spikes`` at every step (one for a
    binary layer); an unbounded graded layer has no cap, so none is. The cap survives the record."""
    from lnm_deploy.calibrate import SpikeStats

    # neuron 0: 1 spike every step, neurons 1 and 2: 3 every step, neuron 3: silent
    s = SpikeStats("n", np.zeros(4, np.int64), max_spikes=cap)
    s.update(np.broadcast_to(np.array([1, 3, 3, 0]), (2, 5, 4)))
    assert s.saturated_fraction == {1: 0.25, 3: 0.5, None: 0.0}[cap]
    assert s.silent_fraction == 0.25
    back = SpikeStats.from_dict(json.loads(json.dumps(s.to_dict())))
    assert back.max_spikes == cap and back.saturated_fraction == s.saturated_fraction
    assert ("max_spikes" in s.to_dict()) == (cap != 1)  # a binary layer's record is as before
    g = sequential([("fc", Affine(weight=np.full((2, 4), 3.0))),
                    ("n", Neuron(shape=(2,), poly=[0.0, 1.0], v_th=1.0, reset="subtract", max_spikes=cap))], (4,))
    assert collect_stats(g, _spike_input(n=2, d=4), progress=False).spikes["n"].max_spikes == cap
