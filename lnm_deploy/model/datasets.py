"""Readers for CIFAR-10 and N-MNIST from their original binary files, with numpy only, and the
step from their samples to the spike ``.npz`` files that ``calibrate`` / ``verify`` / ``run`` read.

Nothing here downloads anything, and nothing here unpickles: the CIFAR-10 "python version" (and
torchvision's ``CIFAR10`` class, which reads it) is a set of pickles, and unpickling a file runs
code named in it, so lnm-deploy reads the documented **binary version** instead
(``cifar-10-binary.tar.gz`` from https://www.cs.toronto.edu/~kriz/cifar.html, extracted). N-MNIST
is read from its original event files (https://www.garrickorchard.com/datasets/n-mnist) by the
same bit layout as the original authors' readers (and ``tonic.io.read_mnist_file``); ``tonic`` is
not needed.

CIFAR-10 binary version (``cifar-10-batches-bin/``): ``data_batch_1.bin`` .. ``data_batch_5.bin``
(training, 10000 images each) and ``test_batch.bin`` (10000). Each file is a sequence of records
of 3073 bytes: 1 label byte (0..9), then 3072 pixel bytes: the red 32x32 plane, then green, then
blue, each row-major (row 0 left to right, then row 1, ...).

N-MNIST (``Train/<digit>/<id>.bin``, ``Test/<digit>/<id>.bin``, digit 0..9): each file is a
sequence of 5-byte (40-bit) events, big-endian fields:

==========  ==================================================================================
byte 0      x, 8 bits (0..33)
byte 1      y, 8 bits (0..33)
byte 2      bit 7: polarity (1 = ON, brightness up; 0 = OFF); bits 6..0: timestamp bits 22..16
byte 3      timestamp bits 15..8
byte 4      timestamp bits 7..0 (timestamp: 23 bits, microseconds from the start of the recording)
==========  ==================================================================================

An event with ``y == 240`` is not a pixel but a timestamp-overflow marker: like the original
readers, it adds ``2**13`` microseconds to the timestamps of every later event and is dropped.
(An N-MNIST recording lasts about 300 ms, well below 2**23 us, so real files have none.)
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from lnm_deploy.errors import UserInputError

# ------------------------------------------------------------------------------------------------
# CIFAR-10 (binary version)

CIFAR10_SHAPE = (3, 32, 32)
CIFAR10_RECORD_BYTES = 1 + 3 * 32 * 32  # 3073
CIFAR10_DIR = "cifar-10-batches-bin"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
CIFAR10_TEST_FILES = ("test_batch.bin",)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"

Split = Literal["train", "test"]


def _no_download(download: bool, what: str, url: str) -> None:
    if download:
        raise UserInputError(f"{what}: lnm-deploy never downloads anything (download=True); fetch {url} yourself, "
                             "extract it and pass its folder")


def _split(split: str) -> str:
    if split not in ("train", "test"):
        raise UserInputError(f"split must be 'train' or 'test', got {split!r}")
    return split


def read_cifar10_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 binary batch file (records of 1 label byte + 3072 pixel bytes).

    Returns:
        ``(images, labels)``: images ``(N, 3, 32, 32)`` uint8 (channels R, G, B; rows, columns),
        labels ``(N,)`` int64 in 0..9.

    Raises:
        UserInputError: the file is missing, empty, not a whole number of 3073-byte records (a
            truncated file; the message gives its byte count), or holds a label above 9.
    """
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"CIFAR-10 batch file {p} does not exist")
    raw = np.fromfile(p, dtype=np.uint8)
    if raw.size == 0 or raw.size % CIFAR10_RECORD_BYTES:
        raise UserInputError(f"{p}: {raw.size} bytes is not a whole number of CIFAR-10 records of "
                             f"{CIFAR10_RECORD_BYTES} bytes (truncated, or not the binary version)")
    rec = raw.reshape(-1, CIFAR10_RECORD_BYTES)
    labels = rec[:, 0].astype(np.int64)
    if (bad := np.flatnonzero(labels > 9)).size:
        raise UserInputError(f"{p}: record {int(bad[0])} has label {int(labels[bad[0]])}, CIFAR-10 labels are 0..9 "
                             "(not a CIFAR-10 binary file: CIFAR-100's has two label bytes)")
    images = np.ascontiguousarray(rec[:, 1:].reshape(-1, *CIFAR10_SHAPE))
    return images, labels


def cifar10_dir(root: str | os.PathLike[str]) -> Path:
    """The ``cifar-10-batches-bin`` folder: ``root`` itself when it holds the batch files, else
    ``root / "cifar-10-batches-bin"``. ``UserInputError`` naming the expected path if neither."""
    r = Path(root)
    for d in (r, r / CIFAR10_DIR):
        if (d / CIFAR10_TEST_FILES[0]).is_file() or (d / CIFAR10_TRAIN_FILES[0]).is_file():
            return d
    raise UserInputError(f"no CIFAR-10 binary version under {r}: expected {r / CIFAR10_DIR / CIFAR10_TEST_FILES[0]} "
                         f"(and data_batch_1.bin .. data_batch_5.bin); download {CIFAR10_URL} and extract it there "
                         "(the python version is not read: it is pickled)")


def load_cifar10(root: str | os.PathLike[str], split: Split = "train", *,
                 download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10 from its binary version, read with numpy (never unpickled; torchvision's
    ``CIFAR10`` reads the pickled python version and is not used).

    Args:
        root: the folder holding ``cifar-10-batches-bin/`` (or that folder itself).
        split: ``"train"`` (``data_batch_1..5.bin``, 50000 images) or ``"test"``
            (``test_batch.bin``, 10000).
        download: must stay False: nothing is ever downloaded (True is a ``UserInputError`` that
            says where to get the files).

    Returns:
        ``(images, labels)``: ``(N, 3, 32, 32)`` uint8 and ``(N,)`` int64, in file order.

    Raises:
        UserInputError: a missing folder or batch file (naming the expected path), a truncated or
            malformed file (``read_cifar10_batch``), ``download=True``, an unknown split.
    """
    _no_download(download, "load_cifar10", CIFAR10_URL)
    names = CIFAR10_TRAIN_FILES if _split(split) == "train" else CIFAR10_TEST_FILES
    d = cifar10_dir(root)
    missing = [str(d / n) for n in names if not (d / n).is_file()]
    if missing:
        raise UserInputError(f"CIFAR-10 {split} split: missing {missing}; extract {CIFAR10_URL} into {d.parent}")
    parts = [read_cifar10_batch(d / n) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def rate_encode_images(images: np.ndarray, steps: int, *, max_rate: float = 1.0, pixel_max: float = 255.0,
                       seed: int = 0) -> np.ndarray:
    """Bernoulli spike trains from images: ``(N, *shape)`` -> ``(N, steps, *shape)`` uint8 0/1 with
    ``P(spike) = pixel / pixel_max * max_rate`` per step, from ``numpy.random.default_rng(seed)``.
    Pixels outside ``[0, pixel_max]`` (NaN included) or ``max_rate`` outside [0, 1] are a ``UserInputError``."""
    x = np.asarray(images, dtype=np.float64)
    if steps < 1:
        raise UserInputError(f"steps must be >= 1, got {steps}")
    if not 0.0 <= max_rate <= 1.0:
        raise UserInputError(f"max_rate is a per-step probability in [0, 1], got {max_rate}")
    if not (np.isfinite(pixel_max) and pixel_max > 0):
        raise UserInputError(f"pixel_max must be a positive number, got {pixel_max}")
    if x.ndim < 2 or (x.size and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= pixel_max)):
        raise UserInputError(f"images must be (N, *shape) with pixels in [0, {pixel_max:g}] (no NaN or inf), got "
                             f"shape {x.shape}")
    p = x / pixel_max * max_rate
    u = np.random.default_rng(seed).random((x.shape[0], steps, *x.shape[1:]))
    return (u < p[:, None]).astype(np.uint8)


# ------------------------------------------------------------------------------------------------
# N-MNIST (original event files)

NMNIST_SIZE = (34, 34)  # (height, width) = (y, x) of the sensor area N-MNIST uses
NMNIST_EVENT_BYTES = 5
NMNIST_OVERFLOW_Y = 240
NMNIST_OVERFLOW_US = 2**13
NMNIST_DIRS = {"train": "Train", "test": "Test"}
NMNIST_URL = "https://www.garrickorchard.com/datasets/n-mnist"
EVENT_DTYPE = np.dtype([("x", np.int16), ("y", np.int16), ("t", np.int64), ("p", np.uint8)])
"""Events as a structured array: ``x``, ``y`` (pixels), ``t`` (microseconds), ``p`` (1 ON, 0 OFF)."""


def read_nmnist_file(path: str | os.PathLike[str]) -> np.ndarray:
    """Read one N-MNIST event file (5-byte events, layout in the module docstring).

    Returns:
        a structured array of ``EVENT_DTYPE`` (``x``, ``y``, ``t`` in microseconds, ``p``), in file
        order, without the overflow markers (``y == 240``, each adding ``2**13`` us to later events).

    Raises:
        UserInputError: the file is missing, its size is not a multiple of 5 bytes (truncated; the
            message gives its byte count), or an event lies outside the 34x34 sensor.
    """
    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"N-MNIST event file {p} does not exist")
    raw = np.fromfile(p, dtype=np.uint8)
    if raw.size % NMNIST_EVENT_BYTES:
        raise UserInputError(f"{p}: {raw.size} bytes is not a whole number of {NMNIST_EVENT_BYTES}-byte N-MNIST "
                             "events (truncated, or not an N-MNIST file)")
    b = raw.reshape(-1, NMNIST_EVENT_BYTES).astype(np.int64)
    x, y = b[:, 0], b[:, 1]
    pol = b[:, 2] >> 7
    t = ((b[:, 2] & 0x7F) << 16) | (b[:, 3] << 8) | b[:, 4]
    overflow = y == NMNIST_OVERFLOW_Y
    t = t + NMNIST_OVERFLOW_US * np.cumsum(overflow)
    keep = ~overflow
    h, w = NMNIST_SIZE
    if (bad := np.flatnonzero(keep & ((x >= w) | (y >= h)))).size:
        i = int(bad[0])
        raise UserInputError(f"{p}: event {i} at x={int(x[i])}, y={int(y[i])} lies outside the {w}x{h} N-MNIST "
                             "sensor (not an N-MNIST file)")
    ev = np.empty(int(keep.sum()), dtype=EVENT_DTYPE)
    ev["x"], ev["y"], ev["t"], ev["p"] = x[keep], y[keep], t[keep], pol[keep]
    return ev


@dataclass(frozen=True)
class EventSamples:
    """N-MNIST samples: ``events[i]`` (structured ``EVENT_DTYPE`` array) of label ``labels[i]``
    (int64 0..9), read from ``paths[i]``."""

    events: list[np.ndarray]
    labels: np.ndarray
    paths: list[Path]


def load_nmnist(root: str | os.PathLike[str], split: Split = "train", *, max_per_class: int | None = None,
                download: bool = False) -> EventSamples:
    """N-MNIST event recordings from ``root/Train/<digit>/*.bin`` or ``root/Test/<digit>/*.bin``.

    Files are read in sorted order, digit 0 first; ``max_per_class`` keeps the first N of each
    digit. Read with numpy (``read_nmnist_file``); ``tonic`` is not used.

    Raises:
        UserInputError: the split folder is missing (naming the expected path), holds no ``.bin``
            file, a file is malformed; ``download=True`` (nothing is ever downloaded).
    """
    _no_download(download, "load_nmnist", NMNIST_URL)
    d = Path(root) / NMNIST_DIRS[_split(split)]
    if not d.is_dir():
        raise UserInputError(f"no N-MNIST {split} split under {root}: expected the folder {d} with 0/ .. 9/ of .bin "
                             f"event files (from {NMNIST_URL})")
    if max_per_class is not None and max_per_class < 1:
        raise UserInputError(f"max_per_class must be >= 1, got {max_per_class}")
    events: list[np.ndarray] = []
    labels: list[int] = []
    paths: list[Path] = []
    for digit in range(10):
        files = sorted((d / str(digit)).glob("*.bin")) if (d / str(digit)).is_dir() else []
        for f in files[:max_per_class]:
            events.append(read_nmnist_file(f))
            labels.append(digit)
            paths.append(f)
    if not paths:
        raise UserInputError(f"{d} holds no N-MNIST event files (expected {d}/<digit>/*.bin)")
    return EventSamples(events, np.asarray(labels, dtype=np.int64), paths)


FrameMode = Literal["binary", "count"]


def events_to_frames(events: np.ndarray, steps: int, duration_us: int, *, t_start: int = 0,
                     mode: FrameMode = "binary", size: tuple[int, int] = NMNIST_SIZE) -> np.ndarray:
    """Bin events into spike frames ``(steps, 2, H, W)`` uint8, indexed ``[step, polarity, y, x]``
    (channel 0 OFF, channel 1 ON).

    The window ``[t_start, t_start + duration_us)`` (microseconds) is cut into ``steps`` bins of
    equal length; an event at ``t`` falls in bin ``(t - t_start) * steps // duration_us`` (integer
    arithmetic, exact); events outside the window are dropped. ``mode="binary"`` (the default)
    writes 1 where a pixel has at least one event of that polarity in the bin: the binary spikes
    ``calibrate``, ``verify`` and ``run`` take. ``mode="count"`` writes the number of events,
    saturated at 255 (for a float model; fixed-point targets refuse values above 1).

    Raises:
        UserInputError: ``steps`` or ``duration_us`` below 1, an unknown mode, events of another
            dtype or outside ``size``.
    """
    if steps < 1 or duration_us < 1:
        raise UserInputError(f"steps and duration_us must be >= 1, got {steps} and {duration_us}")
    if mode not in ("binary", "count"):
        raise UserInputError(f"mode must be 'binary' or 'count', got {mode!r}")
    ev = np.asarray(events)
    if ev.dtype.names is None or not {"x", "y", "t", "p"} <= set(ev.dtype.names):
        raise UserInputError(f"events must be a structured array with fields x, y, t, p (EVENT_DTYPE), got {ev.dtype}")
    h, w = size
    x, y = ev["x"].astype(np.int64), ev["y"].astype(np.int64)
    pol, t = ev["p"].astype(np.int64), ev["t"].astype(np.int64)
    if ((x < 0) | (x >= w) | (y < 0) | (y >= h) | (pol < 0) | (pol > 1)).any():
        raise UserInputError(f"events outside the {w}x{h} sensor or with polarity other than 0/1")
    k = (t - t_start) * steps // duration_us
    inside = (t >= t_start) & (k < steps)
    counts = np.zeros((steps, 2, h, w), dtype=np.int64)
    np.add.at(counts, (k[inside], pol[inside], y[inside], x[inside]), 1)
    if mode == "binary":
        return (counts > 0).astype(np.uint8)
    return np.minimum(counts, 255).astype(np.uint8)


def nmnist_frames(samples: EventSamples, steps: int, duration_us: int = 300_000, *,
                  mode: FrameMode = "binary") -> tuple[np.ndarray, np.ndarray]:
    """All samples as frames: ``x`` ``(N, steps, 2, 34, 34)`` uint8 (``events_to_frames`` over
    ``[0, duration_us)``, default 300 ms, the length of N-MNIST's three saccades) and ``y``
    ``(N,)`` int64."""
    x = np.stack([events_to_frames(e, steps, duration_us, mode=mode) for e in samples.events])
    return x, samples.labels.copy()


def write_spike_npz(path: str | os.PathLike[str], x: np.ndarray, y: np.ndarray | None = None, *,
                    force: bool = False) -> Path:
    """Write ``x`` (samples, timesteps, *input_shape) and optional labels ``y`` (samples,) as the
    ``.npz`` that ``lnm-deploy calibrate/verify/run --data`` read (atomically, no pickle); returns
    the path. ``x`` must hold binary spikes (0/1; stored as uint8).

    Raises:
        UserInputError: ``x`` not at least 3-d or not 0/1, ``y`` of the wrong length or not
            integer class indices >= 0, an existing ``path`` with ``force=False``.
    """
    from lnm_deploy import validate
    from lnm_deploy.fileio import write_npz

    a = np.asarray(x)
    if a.ndim < 3:
        raise UserInputError(f"x must be (samples, timesteps, *input_shape), got shape {a.shape}")
    a = validate.spikes(a, tuple(a.shape[2:]), "x")
    arrays = {"x": a}
    if y is not None:
        arrays["y"] = validate.labels(np.asarray(y), a.shape[0], what="y")
    write_npz(path, arrays, force=force)
    return Path(path)


__all__ = [
    "CIFAR10_CLASSES",
    "EVENT_DTYPE",
    "EventSamples",
    "events_to_frames",
    "load_cifar10",
    "load_nmnist",
    "nmnist_frames",
    "rate_encode_images",
    "read_cifar10_batch",
    "read_nmnist_file",
    "write_spike_npz",
]
