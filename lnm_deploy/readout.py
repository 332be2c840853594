"""The Lempel-Ziv complexity (LZC) readout: classify samples by the temporal structure of the output
spike trains rather than by their spike counts (numpy only; definition in docs/readouts.md).

- ``lzc_features(spikes, axis)``: (samples, timesteps, *output_shape) spikes -> (samples, neurons)
  normalised LZC of each output neuron's spike train over time.
- ``NearestCentroid``: a nearest-centroid classifier on any (samples, features) array
  (``NearestCentroid.fit(features, labels)``, ``.predict(features)``), its state plain JSON-able
  data (``to_dict`` / ``from_dict``; never pickle).
- ``LZCReadout``: the two together, fitted on spikes and labels (e.g. the calibration set).
- ``MEMBRANE_READOUTS``: the classification rules of a membrane output (a non-spiking readout
  layer, ``lnm_deploy.li_readout``): ``membrane-max``, ``membrane-last``, ``membrane-sum``; and
  ``membrane_check`` / ``MembraneCheck``, the float-vs-fixed comparison of that membrane.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lnm_deploy import validate
from lnm_deploy.errors import UserInputError
from lnm_deploy.metrics import lempel_ziv_complexity

#: ``to_dict()["kind"]`` of each class (``from_dict`` refuses any other).
NEAREST_CENTROID_KIND = "nearest_centroid"
LZC_READOUT_KIND = "lzc_readout"

#: Where an artifact's record keeps the readouts ``calibrate`` fitted: ``record[READOUTS_KEY]["lzc"]``.
READOUTS_KEY = "readouts"

Array = np.ndarray


def lzc_features(spikes: Any, axis: int = 1, normalize: bool = True) -> np.ndarray:
    """Per-output-neuron LZC of the output spike trains: (samples, neurons) float64.

    ``spikes``: (samples, timesteps, *output_shape) binary (see ``metrics.lempel_ziv_complexity``),
    time on ``axis`` (default 1, never 0, the sample axis); the output axes are flattened in C order
    into neurons. Values: c(n) / (n / log2 n) (dimensionless) with ``normalize``, else the phrase
    count c(n). Raises ``UserInputError`` for fewer than two axes, ``axis`` 0, no samples and
    whatever ``lempel_ziv_complexity`` refuses.
    """
    try:
        shape = np.shape(spikes)
    except Exception as e:  # ragged nested lists
        raise UserInputError(f"lzc_features: spikes are not an array ({type(e).__name__}: {e})") from e
    if len(shape) < 2:
        raise UserInputError(f"lzc_features: spikes must be shaped (samples, timesteps, ...), got {shape}")
    if isinstance(axis, numbers.Integral) and not isinstance(axis, bool) and int(axis) % len(shape) == 0:
        raise UserInputError("lzc_features: axis 0 is the sample axis; pass the time axis (default 1)")
    if shape[0] == 0:
        raise UserInputError(f"lzc_features: no samples (shape {shape})")
    lz = lempel_ziv_complexity(spikes, axis, normalize)
    return lz.reshape(shape[0], math.prod(lz.shape[1:])).astype(np.float64)


def _features(x: Any, n_features: int | None, what: str) -> np.ndarray:
    """``x`` as float64 (samples >= 1, features >= 1): real and finite (``validate.values``), with
    ``n_features`` columns when given; else ``UserInputError``."""
    try:
        a = np.asarray(x)
    except Exception as e:  # ragged nested lists
        raise UserInputError(f"{what} is not an array ({type(e).__name__}: {e})") from e
    if a.ndim != 2:
        raise UserInputError(f"{what} must be shaped (samples, features), got {a.shape}")
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise UserInputError(f"{what} is empty: {a.shape} (need samples >= 1, features >= 1)")
    a = validate.values(a, (), what)  # dtype bool/int/float, no NaN or infinity
    if n_features is not None and a.shape[1] != n_features:
        raise UserInputError(f"{what} has {a.shape[1]} features per sample; the classifier was fitted "
                             f"on {n_features}: compute them from the same outputs")
    return a.astype(np.float64)


def _field(d: Any, key: str, what: str) -> Any:
    if not isinstance(d, dict):
        raise UserInputError(f"{what}: expected a dict (from to_dict), got {type(d).__name__}")
    if key not in d:
        raise UserInputError(f"{what}: missing key {key!r} (it has {sorted(d)})")
    return d[key]


def _kind(d: Any, kind: str, what: str) -> None:
    got = _field(d, "kind", what)
    if got != kind:
        raise UserInputError(f"{what}: kind {got!r} is not {kind!r}")


@dataclass(frozen=True)
class NearestCentroid:
    """Nearest-centroid classifier: a sample gets the class whose centroid (mean training feature
    vector) is nearest in Euclidean distance; ties go to the lowest class label.

    ``classes``: (n_classes,) int64, the distinct training labels in increasing order.
    ``centroids``: (n_classes, n_features) float64, row j the mean of the features of class
    ``classes[j]`` (in the features' units).
    """

    classes: np.ndarray
    centroids: np.ndarray

    def __post_init__(self) -> None:
        classes = np.asarray(self.classes)
        centroids = np.asarray(self.centroids)
        if classes.ndim != 1 or classes.size == 0 or classes.dtype.kind not in "iu":
            raise UserInputError(f"NearestCentroid: classes must be a non-empty 1-D integer array, "
                                 f"got shape {classes.shape} of {classes.dtype}")
        if classes.min() < 0 or np.any(np.diff(classes) <= 0):
            raise UserInputError("NearestCentroid: classes must be distinct labels >= 0 in increasing "
                                 f"order, got {classes.tolist()}")
        if centroids.ndim != 2 or centroids.shape[0] != classes.size or centroids.shape[1] == 0:
            raise UserInputError(f"NearestCentroid: centroids must be shaped ({classes.size}, features >= 1) "
                                 f"(one row per class), got {centroids.shape}")
        if centroids.dtype.kind not in "biuf" or not np.all(np.isfinite(centroids)):
            raise UserInputError("NearestCentroid: centroids must be finite real numbers")
        object.__setattr__(self, "classes", classes.astype(np.int64))
        object.__setattr__(self, "centroids", centroids.astype(np.float64))

    @property
    def n_features(self) -> int:
        return int(self.centroids.shape[1])

    @classmethod
    def fit(cls, features: Any, labels: Any) -> NearestCentroid:
        """Fit on ``features`` (samples, n_features) real, finite and ``labels`` (samples,) integer
        class labels >= 0 (``validate.labels``); the classes are the labels present. Raises
        ``UserInputError`` for bad shapes or values."""
        x = _features(features, None, "features")
        y = validate.labels(labels, x.shape[0], None, "labels")
        classes, inverse = np.unique(y, return_inverse=True)
        sums = np.zeros((classes.size, x.shape[1]), dtype=np.float64)
        np.add.at(sums, inverse, x)
        counts = np.bincount(inverse, minlength=classes.size).astype(np.float64)
        return cls(classes=classes, centroids=sums / counts[:, None])

    def distances(self, features: Any) -> np.ndarray:
        """Euclidean distance of each sample to each centroid: (samples, n_classes) float64."""
        x = _features(features, self.n_features, "features")
        return np.sqrt(((x[:, None, :] - self.centroids[None, :, :]) ** 2).sum(axis=2))

    def predict(self, features: Any) -> np.ndarray:
        """The label of the nearest centroid per sample: (samples,) int64."""
        return self.classes[np.argmin(self.distances(features), axis=1)]

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (``json.dumps`` keeps every float exactly; never pickle)."""
        return {"kind": NEAREST_CENTROID_KIND, "metric": "euclidean",
                "classes": [int(c) for c in self.classes],
                "centroids": [[float(v) for v in row] for row in self.centroids]}

    @classmethod
    def from_dict(cls, d: Any) -> NearestCentroid:
        """The classifier ``to_dict`` described; ``UserInputError`` for anything malformed."""
        what = "NearestCentroid.from_dict"
        _kind(d, NEAREST_CENTROID_KIND, what)
        metric = _field(d, "metric", what)
        if metric != "euclidean":
            raise UserInputError(f"{what}: metric {metric!r} is not 'euclidean'")
        classes, centroids = _field(d, "classes", what), _field(d, "centroids", what)
        if not isinstance(classes, list) or not all(
                isinstance(c, int) and not isinstance(c, bool) for c in classes):
            raise UserInputError(f"{what}: 'classes' must be a list of integers")
        if not isinstance(centroids, list) or not all(
                isinstance(row, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              for v in row) for row in centroids):
            raise UserInputError(f"{what}: 'centroids' must be a list of lists of numbers")
        if len({len(row) for row in centroids}) > 1:
            raise UserInputError(f"{what}: 'centroids' rows differ in length")
        try:
            classes_a = np.array(classes, dtype=np.int64)
        except OverflowError:
            raise UserInputError(f"{what}: 'classes' holds a label beyond int64") from None
        return cls(classes=classes_a, centroids=np.array(centroids, dtype=np.float64))


@dataclass(frozen=True)
class LZCReadout:
    """Classify samples by the LZC of their output spike trains (``lzc_features``) with a
    ``NearestCentroid`` fitted on labelled spikes, e.g. a network's outputs on the calibration set.

    ``classifier``: fitted on (samples, neurons) features; ``normalize``: whether the features are
    normalised LZC (c(n) / (n / log2 n)) or phrase counts; ``timesteps``: n of the training spikes
    (normalised LZC of different n are comparable only roughly, raw counts not at all, so
    ``predict`` refuses spikes of another length).
    """

    classifier: NearestCentroid
    normalize: bool = True
    timesteps: int | None = None

    @classmethod
    def fit(cls, spikes: Any, labels: Any, *, axis: int = 1, normalize: bool = True) -> LZCReadout:
        """Fit on ``spikes`` (samples, timesteps, *output_shape) binary, time on ``axis``, and
        ``labels`` (samples,) integer labels >= 0. Raises ``UserInputError``."""
        x = lzc_features(spikes, axis, normalize)
        n = int(np.shape(spikes)[axis])
        return cls(classifier=NearestCentroid.fit(x, labels), normalize=bool(normalize), timesteps=n)

    def features(self, spikes: Any, *, axis: int = 1) -> np.ndarray:
        """``lzc_features`` of ``spikes`` as fitted: (samples, neurons) float64."""
        x = lzc_features(spikes, axis, self.normalize)  # checks spikes and axis
        n = int(np.shape(spikes)[axis])
        if self.timesteps is not None and n != self.timesteps:
            raise UserInputError(f"LZCReadout: spikes have {n} timesteps on axis {axis}; the readout "
                                 f"was fitted on {self.timesteps}: use runs of that length")
        return x

    def predict(self, spikes: Any, *, axis: int = 1) -> np.ndarray:
        """The class label per sample: (samples,) int64."""
        return self.classifier.predict(self.features(spikes, axis=axis))

    def accuracy(self, spikes: Any, labels: Any, *, axis: int = 1) -> float:
        """Fraction of samples whose ``predict`` equals ``labels`` (integer labels, ``validate.labels``)."""
        pred = self.predict(spikes, axis=axis)
        y = validate.labels(labels, pred.shape[0], None, "labels")
        return float(np.mean(pred == y))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (never pickle)."""
        return {"kind": LZC_READOUT_KIND, "normalize": bool(self.normalize),
                "timesteps": self.timesteps, "classifier": self.classifier.to_dict()}

    @classmethod
    def from_dict(cls, d: Any) -> LZCReadout:
        """The readout ``to_dict`` described; ``UserInputError`` for anything malformed."""
        what = "LZCReadout.from_dict"
        _kind(d, LZC_READOUT_KIND, what)
        normalize, timesteps = _field(d, "normalize", what), _field(d, "timesteps", what)
        if not isinstance(normalize, bool):
            raise UserInputError(f"{what}: 'normalize' must be true or false, got {normalize!r}")
        if timesteps is not None:
            timesteps = validate.positive_int(timesteps, f"{what}: 'timesteps'")
        return cls(classifier=NearestCentroid.from_dict(_field(d, "classifier", what)),
                   normalize=normalize, timesteps=timesteps)


# ------------------------------------------------- the membrane of a non-spiking readout (li_readout)


def _flat(output: Array) -> Array:
    a = np.asarray(output)
    if a.ndim < 2 or a.shape[0] == 0 or a.shape[1] == 0:
        raise UserInputError(f"a membrane output must be shaped (samples, timesteps >= 1, ...), got {a.shape}")
    return a.reshape(a.shape[0], a.shape[1], -1)


def membrane_max(output: Array) -> Array:
    """Class per sample: the arg-max over neurons of the membrane's maximum over time; (samples,)."""
    return np.argmax(_flat(output).max(axis=1), axis=1)


def membrane_last(output: Array) -> Array:
    """Class per sample: the arg-max over neurons of the membrane at the last step; (samples,)."""
    return np.argmax(_flat(output)[:, -1], axis=1)


def membrane_sum(output: Array) -> Array:
    """Class per sample: the arg-max over neurons of the membrane summed over time (the ``count``
    readout's rule, ``metrics.predictions``); (samples,)."""
    return np.argmax(_flat(output).sum(axis=1), axis=1)


#: The classification rules of a membrane output (``verify(readout=...)``, CLI ``--readout``):
#: rule name -> ``(samples, timesteps, *shape) -> (samples,)`` class indices (ties: lowest index).
#: The rules are invariant under a positive scale, so integer (LSB) and real membranes classify alike.
MEMBRANE_READOUTS: dict[str, Callable[[Array], Array]] = {
    "membrane-max": membrane_max, "membrane-last": membrane_last, "membrane-sum": membrane_sum}


@dataclass
class MembraneCheck:
    """The readout part of ``verify`` when the Output reads a non-spiking readout layer.

    ``layer``: the readout layer; ``q``: its scale (real membrane per LSB). ``rule``: the
    classification rule (``MEMBRANE_READOUTS``). ``rms_error`` / ``max_abs_error``: the
    dequantized fixed-point membrane (``q * v``) against the float membrane, over every (sample,
    step, neuron), in the membrane's real units; ``float_range``: max |float membrane|.
    ``prediction_agreement``: fraction of samples that ``rule`` gives float and fixed the same class;
    ``float_accuracy`` / ``fixed_accuracy``: with labels. ``backends``: per backend, whether its
    integer membrane equals fxsim's exactly (``np.array_equal``) on its samples, and
    ``mismatches`` (entries that differ)."""

    layer: str
    q: float
    rule: str
    rms_error: float
    max_abs_error: float
    float_range: float
    prediction_agreement: float
    float_accuracy: float | None = None
    fixed_accuracy: float | None = None
    backends: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "q": self.q, "rule": self.rule, "rms_error": self.rms_error,
                "max_abs_error": self.max_abs_error, "float_range": self.float_range,
                "prediction_agreement": self.prediction_agreement, "float_accuracy": self.float_accuracy,
                "fixed_accuracy": self.fixed_accuracy, "backends": {k: dict(v) for k, v in self.backends.items()}}


def membrane_check(layer: str, q: float, rule: str, float_out: Array, fixed_out: Array,
                   backends: dict[str, Array], y: Array | None = None) -> MembraneCheck:
    """The ``MembraneCheck`` of a readout ``layer`` with scale ``q``: ``float_out`` (samples,
    timesteps, *shape) real, ``fixed_out`` the same shape int64 (fxsim), ``backends`` each
    backend's int64 output (its first samples), ``y`` optional labels (samples,).

    Raises:
        UserInputError: ``rule`` is not in ``MEMBRANE_READOUTS``; the outputs are not shaped alike.
    """
    if rule not in MEMBRANE_READOUTS:
        raise UserInputError(f"readout rule must be one of {sorted(MEMBRANE_READOUTS)}, got {rule!r}")
    fixed = np.asarray(fixed_out)
    ref = np.asarray(float_out, dtype=np.float64).reshape(fixed.shape)
    err = ref - fixed.astype(np.float64) * q
    classify = MEMBRANE_READOUTS[rule]
    f_pred, q_pred = classify(ref), classify(fixed)
    out = MembraneCheck(layer=layer, q=float(q), rule=rule,
                        rms_error=float(math.sqrt(float(np.mean(err * err)))) if err.size else 0.0,
                        max_abs_error=float(np.max(np.abs(err))) if err.size else 0.0,
                        float_range=float(np.max(np.abs(ref))) if ref.size else 0.0,
                        prediction_agreement=float(np.mean(f_pred == q_pred)))
    if y is not None:
        out.float_accuracy = float(np.mean(f_pred == y))
        out.fixed_accuracy = float(np.mean(q_pred == y))
    for name, got in backends.items():
        g = np.asarray(got)
        want = fixed[: g.shape[0]]
        same = g.shape == want.shape and g.shape[0] > 0
        out.backends[name] = {"bit_exact": bool(same and np.array_equal(g, want)),
                              "mismatches": int(np.sum(g != want)) if same else None,
                              "compared": int(want.size) if same else 0}
    return out
