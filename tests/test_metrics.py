"""The Lempel-Ziv complexity (``metrics.lempel_ziv_complexity``), the LZC drift and the LZC readout
(``lnm_deploy.readout``), checked against a plain-Python LZ76 parser written here independently of
the package (a direct exhaustive-history parse, not Kaspar & Schuster's pointer algorithm)."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from lnm_deploy.errors import LNMDeployError, UserInputError
from lnm_deploy.metrics import LZCDrift, lempel_ziv_complexity, lzc_drift
from lnm_deploy.readout import LZCReadout, NearestCentroid, lzc_features

# ------------------------------------------------------------------------------------------------
# Reference: LZ76 exhaustive parsing, straight from the definition


def lz76_phrases(bits: str) -> list[str]:
    """The exhaustive-history parsing of Lempel & Ziv (1976): from position p, the phrase is the
    shortest s[p:p+L] that is not a substring of s[0:p+L-1] (the sequence so far, its last symbol
    removed: copies may overlap the phrase itself); at the end of the sequence the rest is the last
    phrase even when it could be copied."""
    phrases, p, n = [], 0, len(bits)
    while p < n:
        length = 1
        while p + length <= n and bits[p:p + length] in bits[:p + length - 1]:
            length += 1
        phrases.append(bits[p:p + length])
        p += length
    return phrases


def lz76(bits: str) -> int:
    return len(lz76_phrases(bits))


def as_bits(seq: np.ndarray) -> str:
    return "".join("1" if v else "0" for v in np.asarray(seq).ravel())


def lzc_one(bits: str) -> int:
    return int(lempel_ziv_complexity(np.array([int(b) for b in bits], dtype=np.uint8), normalize=False))


# ------------------------------------------------------------------------------------------------
# Hand-worked examples


def test_reference_parses_the_published_example() -> None:
    # Lempel & Ziv (1976) and Kaspar & Schuster (1987): 0.001.10.100.1000.101, c = 6.
    assert lz76_phrases("0001101001000101") == ["0", "001", "10", "100", "1000", "101"]


@pytest.mark.parametrize(("bits", "c"), [
    ("0001101001000101", 6),  # the published example
    ("", 0),
    ("0", 1), ("1", 1),
    ("00", 2), ("01", 2), ("10", 2),
    ("0000000000", 2),  # constant: 0 . 000000000 (a copy to the end)
    ("1111111111", 2),
    ("0101010101", 3),  # 0 . 1 . 01010101
    ("010", 3),  # 0 . 1 . 0
    ("0110", 3),  # 0 . 1 . 10
    ("01101", 4),  # 0 . 1 . 10 . 1 (the last phrase a copy)
    ("011010", 4),  # 0 . 1 . 10 . 10
    ("1001111011000010", 6),  # 1 . 0 . 01 . 1110 . 1100 . 0010
])
def test_hand_worked_counts(bits: str, c: int) -> None:
    assert lz76(bits) == c
    assert lzc_one(bits) == c


def test_hand_worked_parse_of_a_second_example() -> None:
    assert lz76_phrases("1001111011000010") == ["1", "0", "01", "1110", "1100", "0010"]


def test_normalised_value_of_the_published_example() -> None:
    x = np.array([int(b) for b in "0001101001000101"])
    assert lempel_ziv_complexity(x) == 6 * math.log2(16) / 16  # 1.5


# ------------------------------------------------------------------------------------------------
# Against the reference


@given(st.lists(st.integers(0, 1), max_size=80))
def test_counts_equal_the_reference(seq: list[int]) -> None:
    assert lzc_one("".join(map(str, seq))) == lz76("".join(map(str, seq)))


@given(st.lists(st.sampled_from(["0", "1", "01", "001", "0001", "0110", "1" * 5, "0" * 7]), max_size=25))
def test_counts_equal_the_reference_on_repetitive_sequences(parts: list[str]) -> None:
    # Concatenated motifs give long copies and overlaps, the cases the pointer algorithm is subtle in.
    bits = "".join(parts)
    assert lzc_one(bits) == lz76(bits)


@pytest.mark.parametrize("n", range(13))
def test_every_sequence_up_to_length_12(n: int) -> None:
    seqs = np.array(list(itertools.product([0, 1], repeat=n)), dtype=np.uint8).reshape(2 ** n, n)
    got = lempel_ziv_complexity(seqs, axis=1, normalize=False)
    assert got.shape == (2 ** n,)
    assert got.tolist() == [lz76(as_bits(s)) for s in seqs]


@settings(max_examples=60)
@given(hnp.arrays(np.bool_, hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=9)),
       st.data())
def test_vectorised_equals_per_sequence(x: np.ndarray, data: st.DataObject) -> None:
    axis = data.draw(st.integers(-x.ndim, x.ndim - 1))
    got = lempel_ziv_complexity(x, axis=axis, normalize=False)
    seqs = np.moveaxis(x, axis, -1)
    assert got.shape == seqs.shape[:-1]
    assert got.dtype == np.int64
    flat = seqs.reshape(math.prod(seqs.shape[:-1]), x.shape[axis])
    want = np.array([lz76(as_bits(s)) for s in flat],
                    dtype=np.int64).reshape(seqs.shape[:-1])
    assert np.array_equal(got, want)
    for idx in itertools.islice(np.ndindex(*seqs.shape[:-1]), 5):  # one sequence at a time
        assert int(lempel_ziv_complexity(seqs[idx], normalize=False)) == want[idx]
    if x.shape[axis] >= 2:
        n = x.shape[axis]
        assert np.array_equal(lempel_ziv_complexity(x, axis=axis), want * math.log2(n) / n)


def test_spikes_shaped_samples_timesteps_neurons() -> None:
    rng = np.random.default_rng(3)
    x = (rng.random((6, 40, 5)) < 0.3).astype(np.uint8)
    got = lempel_ziv_complexity(x, axis=1)
    assert got.shape == (6, 5) and got.dtype == np.float64
    for s, j in np.ndindex(6, 5):
        assert got[s, j] == lz76(as_bits(x[s, :, j])) * math.log2(40) / 40


def test_dtypes_agree() -> None:
    x = np.random.default_rng(4).random((4, 30)) < 0.5
    want = lempel_ziv_complexity(x, normalize=False)
    for dt in (np.uint8, np.int32, np.int64, np.float32, np.float64):
        assert np.array_equal(lempel_ziv_complexity(x.astype(dt), normalize=False), want)
    assert np.array_equal(lempel_ziv_complexity(x.tolist(), normalize=False), want)


def test_edge_cases() -> None:
    assert lempel_ziv_complexity(np.zeros((3, 0)), normalize=False).tolist() == [0, 0, 0]
    assert lempel_ziv_complexity(np.ones((3, 1)), normalize=False).tolist() == [1, 1, 1]
    empty = lempel_ziv_complexity(np.zeros((0, 7, 2)), axis=1)
    assert empty.shape == (0, 2)
    for n in (2, 3, 17, 100):  # constant sequences: c = 2, normalised 2 log2(n) / n
        z = np.zeros((2, n), dtype=np.uint8)
        z[1] = 1
        assert lempel_ziv_complexity(z, normalize=False).tolist() == [2, 2]
        assert np.array_equal(lempel_ziv_complexity(z), np.full(2, 2 * math.log2(n) / n))


# ------------------------------------------------------------------------------------------------
# Bad inputs


@pytest.mark.parametrize("bad", [
    np.array([0, 1, 2]), np.array([0.0, 0.5, 1.0]), np.array([0.0, np.nan]), np.array([0, -1]),
    np.array([1 + 0j, 0j]), np.array(["0", "1"]), np.array([0, 1], dtype=object), 1, [[0, 1], [1]],
])
def test_non_binary_input_is_refused(bad: object) -> None:
    with pytest.raises(UserInputError):
        lempel_ziv_complexity(bad, normalize=False)


def test_bad_options_are_refused() -> None:
    x = np.zeros((2, 5), dtype=np.uint8)
    for axis in (2, -3, 1.0, True, "1", None):
        with pytest.raises(UserInputError, match="axis"):
            lempel_ziv_complexity(x, axis=axis)  # type: ignore[arg-type]
    with pytest.raises(UserInputError, match="normalize"):
        lempel_ziv_complexity(x, normalize=1)  # type: ignore[arg-type]
    for n in (0, 1):
        with pytest.raises(UserInputError, match="normalize=False"):
            lempel_ziv_complexity(np.zeros((2, n)))
    with pytest.raises(LNMDeployError):  # the one hierarchy: a CLI would print it and exit 2
        lempel_ziv_complexity(np.full(3, 2))


# ------------------------------------------------------------------------------------------------
# LZC drift


def test_drift_is_zero_for_identical_runs() -> None:
    x = (np.random.default_rng(5).random((8, 50, 3)) < 0.3).astype(np.uint8)
    d = lzc_drift(x, x.astype(np.float32))
    assert isinstance(d, LZCDrift)
    assert np.array_equal(d.mean_abs_diff, np.zeros(3)) and d.max == 0.0
    assert np.array_equal(d.reference_mean, d.test_mean)
    json.dumps(d.to_dict())


def test_drift_per_neuron_on_a_crafted_pair() -> None:
    ref = np.zeros((2, 16, 3), dtype=np.uint8)  # every train constant: c = 2
    test = ref.copy()
    test[0, :, 1] = [int(b) for b in "0001101001000101"]  # c = 6 in sample 0, neuron 1 only
    d = lzc_drift(ref, test, normalize=False)
    assert d.mean_abs_diff.tolist() == [0.0, (6 - 2) / 2, 0.0]
    assert d.reference_mean.tolist() == [2.0, 2.0, 2.0]
    assert d.test_mean.tolist() == [2.0, 4.0, 2.0]
    assert d.max == 2.0
    dn = lzc_drift(ref, test)  # normalised: the same in units of n / log2 n = 4
    assert dn.mean_abs_diff.tolist() == [0.0, 2.0 / 4, 0.0]
    # the time axis elsewhere
    dt = lzc_drift(np.swapaxes(ref, 1, 2), np.swapaxes(test, 1, 2), axis=2, normalize=False)
    assert np.array_equal(dt.mean_abs_diff, d.mean_abs_diff)


def test_drift_bad_inputs() -> None:
    x = np.zeros((2, 10, 3), dtype=np.uint8)
    with pytest.raises(UserInputError, match="same shape"):
        lzc_drift(x, x[:, :, :2])
    with pytest.raises(UserInputError, match="sample axis"):
        lzc_drift(x, x, axis=0)
    with pytest.raises(UserInputError, match="no samples"):
        lzc_drift(x[:0], x[:0])
    with pytest.raises(UserInputError):
        lzc_drift(x, x + 2)
    with pytest.raises(UserInputError):
        lzc_drift(np.zeros(5), np.zeros(5))


# ------------------------------------------------------------------------------------------------
# Readout


def two_classes(rng: np.random.Generator, samples: int, timesteps: int = 100, neurons: int = 4,
                period: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Class 0: regular trains (one spike every ``period`` steps, random phase); class 1: the same
    number of spikes at random times. Equal spike counts, so a count readout cannot tell them apart."""
    y = rng.integers(0, 2, samples)
    x = np.zeros((samples, timesteps, neurons), dtype=np.uint8)
    k = timesteps // period
    for s, j in np.ndindex(samples, neurons):
        if y[s] == 0:
            x[s, rng.integers(period)::period, j] = 1
        else:
            x[s, rng.choice(timesteps, k, replace=False), j] = 1
    assert np.all(x.sum(axis=1) == k)
    return x, y


def test_readout_separates_regular_from_random_trains_of_equal_rate() -> None:
    rng = np.random.default_rng(12)
    x_train, y_train = two_classes(rng, 60)
    x_test, y_test = two_classes(rng, 200)
    readout = LZCReadout.fit(x_train, y_train)
    feats = lzc_features(x_test)
    assert feats.shape == (200, 4)
    # regular trains have the lower complexity
    assert feats[y_test == 0].max() < feats[y_test == 1].min()
    assert readout.accuracy(x_test, y_test) == 1.0
    assert readout.classifier.classes.tolist() == [0, 1]
    c0, c1 = readout.classifier.centroids
    assert np.all(c0 < c1)


def test_round_trip_through_json_predicts_identically() -> None:
    rng = np.random.default_rng(13)
    x, y = two_classes(rng, 40)
    y = np.where(y == 1, 7, 3)  # labels need not be 0..k-1
    readout = LZCReadout.fit(x, y)
    text = json.dumps(readout.to_dict())
    back = LZCReadout.from_dict(json.loads(text))
    assert np.array_equal(back.classifier.centroids, readout.classifier.centroids)
    assert np.array_equal(back.classifier.classes, readout.classifier.classes)
    assert back.normalize == readout.normalize and back.timesteps == readout.timesteps == 100
    x_test, _ = two_classes(rng, 100)
    assert set(readout.predict(x_test).tolist()) <= {3, 7}
    assert np.array_equal(back.predict(x_test), readout.predict(x_test))
    clf = NearestCentroid.from_dict(json.loads(json.dumps(readout.classifier.to_dict())))
    f = lzc_features(x_test)
    assert np.array_equal(clf.predict(f), readout.classifier.predict(f))


def test_nearest_centroid_on_crafted_features() -> None:
    f = np.array([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [12.0, 10.0]])
    clf = NearestCentroid.fit(f, [1, 1, 4, 4])
    assert clf.centroids.tolist() == [[1.0, 0.0], [11.0, 10.0]]
    assert clf.predict([[0.0, 1.0], [9.0, 9.0], [6.0, 5.0]]).tolist() == [1, 4, 1]  # a tie: lowest


def test_readout_bad_inputs() -> None:
    f = np.zeros((4, 2))
    with pytest.raises(UserInputError, match="labels"):
        NearestCentroid.fit(f, [0, 1, 0])
    with pytest.raises(UserInputError, match="labels"):
        NearestCentroid.fit(f, [0, 1, -1, 0])
    with pytest.raises(UserInputError, match=r"\(samples, features\)"):
        NearestCentroid.fit(np.zeros(4), [0, 1, 0, 1])
    with pytest.raises(UserInputError, match="empty"):
        NearestCentroid.fit(np.zeros((0, 2)), [])
    with pytest.raises(UserInputError, match="NaN"):
        NearestCentroid.fit(np.array([[0.0, np.nan]]), [0])
    clf = NearestCentroid.fit(f, [0, 1, 0, 1])
    with pytest.raises(UserInputError, match="fitted on 2"):
        clf.predict(np.zeros((1, 3)))
    for d in ({}, {"kind": "pickle"}, {**clf.to_dict(), "centroids": [[0.0, 0.0], [1.0]]},
              {**clf.to_dict(), "centroids": [[0.0, float("nan")], [1.0, 1.0]]},
              {**clf.to_dict(), "classes": [1, 0]}, {**clf.to_dict(), "classes": [0, "1"]},
              {**clf.to_dict(), "metric": "cosine"}, [1, 2]):
        with pytest.raises(UserInputError):
            NearestCentroid.from_dict(d)
    x = np.zeros((4, 20, 2), dtype=np.uint8)
    x[:2, ::3] = 1
    readout = LZCReadout.fit(x, [0, 0, 1, 1])
    with pytest.raises(UserInputError, match="fitted on 20"):
        readout.predict(np.zeros((1, 30, 2)))
    with pytest.raises(UserInputError, match="sample axis"):
        lzc_features(x, axis=0)
    with pytest.raises(UserInputError):
        LZCReadout.fit(x * 3, [0, 0, 1, 1])
    with pytest.raises(UserInputError):
        LZCReadout.from_dict({**readout.to_dict(), "normalize": "yes"})
