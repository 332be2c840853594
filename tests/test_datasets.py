"""CIFAR-10 (binary version) and N-MNIST (event files) readers, on small files written here by the
documented formats (https://www.cs.toronto.edu/~kriz/cifar.html; N-MNIST: 5-byte events, x, y,
polarity bit + 23-bit microsecond timestamp), and the spike .npz they feed to the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

from lnm_deploy.errors import UserInputError
from lnm_deploy.fileio import read_dataset
from lnm_deploy.model import datasets

# ------------------------------------------------------------------------------------------------
# Writers by the documented formats, independent of the package


def cifar_records(labels: list[int], seed: int) -> tuple[bytes, np.ndarray]:
    """CIFAR-10 binary records, built pixel by pixel: label byte, then R, G, B planes row-major.
    Returns the bytes and the images (N, 3, 32, 32) they encode."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (len(labels), 3, 32, 32), dtype=np.uint8)
    out = bytearray()
    for lab, img in zip(labels, images, strict=True):
        out.append(lab)
        for c in range(3):
            for r in range(32):
                for col in range(32):
                    out.append(int(img[c, r, col]))
    return bytes(out), images


def nmnist_bytes(events: list[tuple[int, int, int, int]]) -> bytes:
    """(x, y, polarity, t_us) -> 5 bytes each: x, y, p<<7 | t[22:16], t[15:8], t[7:0]."""
    out = bytearray()
    for x, y, p, t in events:
        assert 0 <= t < 2**23
        out += bytes([x, y, (p << 7) | (t >> 16), (t >> 8) & 0xFF, t & 0xFF])
    return bytes(out)


# ------------------------------------------------------------------------------------------------
# CIFAR-10


def write_cifar(root: Path, per_file: int = 3) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    d = root / "cifar-10-batches-bin"
    d.mkdir(parents=True)
    images, labels = {}, {}
    for i, name in enumerate([f"data_batch_{k}.bin" for k in range(1, 6)] + ["test_batch.bin"]):
        labs = [(i + 3 * j) % 10 for j in range(per_file)]
        data, imgs = cifar_records(labs, seed=i)
        (d / name).write_bytes(data)
        images[name], labels[name] = imgs, np.asarray(labs)
    return images, labels


def test_cifar_batch_reads_the_documented_layout(tmp_path: Path) -> None:
    data, imgs = cifar_records([7, 0, 9], seed=1)
    f = tmp_path / "b.bin"
    f.write_bytes(data)
    x, y = datasets.read_cifar10_batch(f)
    assert x.dtype == np.uint8 and x.shape == (3, 3, 32, 32)
    assert y.dtype == np.int64 and y.tolist() == [7, 0, 9]
    assert np.array_equal(x, imgs)
    # pixel (row 1, column 2) of the green plane of the second image: byte 1 + 1024 + 32 + 2 of its record
    assert x[1, 1, 1, 2] == data[3073 + 1 + 1024 + 32 + 2]


def test_load_cifar10_splits_in_file_order(tmp_path: Path) -> None:
    images, labels = write_cifar(tmp_path)
    x, y = datasets.load_cifar10(tmp_path, "train")
    names = [f"data_batch_{k}.bin" for k in range(1, 6)]
    assert x.shape == (15, 3, 32, 32)
    assert np.array_equal(x, np.concatenate([images[n] for n in names]))
    assert np.array_equal(y, np.concatenate([labels[n] for n in names]))
    xt, yt = datasets.load_cifar10(tmp_path / "cifar-10-batches-bin", split="test")  # the folder itself works too
    assert np.array_equal(xt, images["test_batch.bin"]) and np.array_equal(yt, labels["test_batch.bin"])


def test_cifar_truncated_garbage_and_missing_are_refused(tmp_path: Path) -> None:
    data, _ = cifar_records([1, 2], seed=0)
    f = tmp_path / "trunc.bin"
    f.write_bytes(data[:-5])
    with pytest.raises(UserInputError, match=rf"trunc\.bin: {len(data) - 5} bytes"):
        datasets.read_cifar10_batch(f)
    f.write_bytes(b"")
    with pytest.raises(UserInputError, match="0 bytes"):
        datasets.read_cifar10_batch(f)
    bad = bytearray(data)
    bad[3073] = 57  # the second record's label
    f.write_bytes(bytes(bad))
    with pytest.raises(UserInputError, match="record 1 has label 57"):
        datasets.read_cifar10_batch(f)
    with pytest.raises(UserInputError, match="cifar-10-batches-bin"):
        datasets.load_cifar10(tmp_path / "nowhere")
    write_cifar(tmp_path / "c")
    (tmp_path / "c" / "cifar-10-batches-bin" / "data_batch_4.bin").unlink()
    with pytest.raises(UserInputError, match=r"data_batch_4\.bin"):
        datasets.load_cifar10(tmp_path / "c", "train")
    with pytest.raises(UserInputError, match="never downloads"):
        datasets.load_cifar10(tmp_path / "c", "test", download=True)
    with pytest.raises(UserInputError, match="split"):
        datasets.load_cifar10(tmp_path / "c", "valid")  # type: ignore[arg-type]


def test_rate_encode_images() -> None:
    img = np.array([[[[0, 255], [128, 255]]]], dtype=np.uint8)  # (1, 1, 2, 2)
    s = datasets.rate_encode_images(img, 200, seed=3)
    assert s.shape == (1, 200, 1, 2, 2) and s.dtype == np.uint8
    assert s[0, :, 0, 0, 0].sum() == 0 and s[0, :, 0, 0, 1].sum() == 200
    assert 60 < s[0, :, 0, 1, 0].sum() < 140
    assert np.array_equal(s, datasets.rate_encode_images(img, 200, seed=3))
    with pytest.raises(UserInputError):
        datasets.rate_encode_images(img.astype(np.int64) + 1, 4)
    for bad in (np.nan, np.inf):  # NaN once passed the range test and gave silence
        with pytest.raises(UserInputError, match="no NaN"):
            datasets.rate_encode_images(np.full((1, 1, 2, 2), bad), 3)
    with pytest.raises(UserInputError, match="pixel_max"):
        datasets.rate_encode_images(img, 3, pixel_max=0.0)


# ------------------------------------------------------------------------------------------------
# N-MNIST

EVENTS = [(0, 0, 1, 0), (33, 5, 0, 70_000), (12, 33, 1, 150_000), (5, 6, 0, 2**23 - 1), (5, 6, 1, 299_999)]


def test_nmnist_file_reads_the_documented_bit_layout(tmp_path: Path) -> None:
    f = tmp_path / "00001.bin"
    f.write_bytes(nmnist_bytes(EVENTS))
    ev = datasets.read_nmnist_file(f)
    assert ev.dtype == datasets.EVENT_DTYPE and len(ev) == len(EVENTS)
    assert ev["x"].tolist() == [e[0] for e in EVENTS]
    assert ev["y"].tolist() == [e[1] for e in EVENTS]
    assert ev["p"].tolist() == [e[2] for e in EVENTS]
    assert ev["t"].tolist() == [e[3] for e in EVENTS]
    f.write_bytes(b"")
    assert len(datasets.read_nmnist_file(f)) == 0


def test_nmnist_overflow_marker_shifts_later_timestamps(tmp_path: Path) -> None:
    f = tmp_path / "o.bin"
    f.write_bytes(nmnist_bytes([(1, 1, 1, 10), (0, 240, 0, 0), (2, 2, 0, 20), (0, 240, 0, 0), (3, 3, 1, 30)]))
    ev = datasets.read_nmnist_file(f)
    assert ev["x"].tolist() == [1, 2, 3]
    assert ev["t"].tolist() == [10, 20 + 2**13, 30 + 2 * 2**13]


def test_nmnist_truncated_and_garbage_are_refused(tmp_path: Path) -> None:
    f = tmp_path / "t.bin"
    f.write_bytes(nmnist_bytes(EVENTS)[:-2])
    with pytest.raises(UserInputError, match=rf"t\.bin: {5 * len(EVENTS) - 2} bytes"):
        datasets.read_nmnist_file(f)
    f.write_bytes(nmnist_bytes([(1, 1, 0, 5), (34, 2, 1, 9)]))
    with pytest.raises(UserInputError, match="event 1 at x=34, y=2 lies outside"):
        datasets.read_nmnist_file(f)
    with pytest.raises(UserInputError, match="does not exist"):
        datasets.read_nmnist_file(tmp_path / "none.bin")


def test_events_to_frames_bins_exactly() -> None:
    ev = np.array([(0, 0, 0, 1), (33, 5, 70_000, 0), (33, 5, 70_001, 0), (12, 33, 150_000, 1),
                   (5, 6, 299_999, 1), (5, 6, 300_000, 1)], dtype=datasets.EVENT_DTYPE)
    fr = datasets.events_to_frames(ev, 3, 300_000)  # bins of 100 ms
    assert fr.shape == (3, 2, 34, 34) and fr.dtype == np.uint8
    want = np.zeros((3, 2, 34, 34), dtype=np.uint8)
    want[0, 1, 0, 0] = 1  # [step, polarity, y, x]
    want[0, 0, 5, 33] = 1  # two events, binary
    want[1, 1, 33, 12] = 1
    want[2, 1, 6, 5] = 1  # 299_999 in the last bin, 300_000 outside the window
    assert np.array_equal(fr, want)
    counts = datasets.events_to_frames(ev, 3, 300_000, mode="count")
    want[0, 0, 5, 33] = 2
    assert np.array_equal(counts, want)
    shifted = datasets.events_to_frames(ev, 2, 100_000, t_start=50_000)  # [50, 100) ms and [100, 150) ms
    assert shifted.sum() == 1 and shifted[0, 0, 5, 33] == 1  # 150_000 ends the window
    with pytest.raises(UserInputError):
        datasets.events_to_frames(ev, 0, 100)
    with pytest.raises(UserInputError):
        datasets.events_to_frames(ev, 2, 100, mode="rate")  # type: ignore[arg-type]
    with pytest.raises(UserInputError):
        datasets.events_to_frames(np.zeros(3), 2, 100)


def write_nmnist(root: Path, split: str, per_digit: int) -> dict[Path, list[tuple[int, int, int, int]]]:
    rng = np.random.default_rng(len(split))
    written = {}
    for digit in (0, 3, 9):
        (root / split / str(digit)).mkdir(parents=True)
        for k in range(per_digit):
            n = int(rng.integers(1, 30))
            evs = sorted(((int(rng.integers(0, 34)), int(rng.integers(0, 34)), int(rng.integers(0, 2)),
                           int(rng.integers(0, 300_000))) for _ in range(n)), key=lambda e: e[3])
            f = root / split / str(digit) / f"{k:05d}.bin"
            f.write_bytes(nmnist_bytes(evs))
            written[f] = evs
    return written


def test_load_nmnist_and_frames_feed_the_cli_npz(tmp_path: Path) -> None:
    written = write_nmnist(tmp_path, "Train", 3)
    s = datasets.load_nmnist(tmp_path, "train")
    assert s.labels.tolist() == [0, 0, 0, 3, 3, 3, 9, 9, 9]
    assert s.paths == sorted(written)
    for ev, p in zip(s.events, s.paths, strict=True):
        assert ev["t"].tolist() == [e[3] for e in written[p]] and ev["x"].tolist() == [e[0] for e in written[p]]
    assert datasets.load_nmnist(tmp_path, "train", max_per_class=1).labels.tolist() == [0, 3, 9]
    x, y = datasets.nmnist_frames(s, steps=5)
    assert x.shape == (9, 5, 2, 34, 34) and x.dtype == np.uint8
    for i, p in enumerate(s.paths):  # every event lands in its 60 ms bin
        want = np.zeros((5, 2, 34, 34), dtype=np.uint8)
        for ex, ey, ep, et in written[p]:
            want[et // 60_000, ep, ey, ex] = 1
        assert np.array_equal(x[i], want)
    path = datasets.write_spike_npz(tmp_path / "calib.npz", x, y)
    xr, yr = read_dataset(path)
    assert np.array_equal(xr, x) and yr is not None and np.array_equal(yr, y)
    with pytest.raises(UserInputError, match="binary spikes"):
        datasets.write_spike_npz(tmp_path / "bad.npz", x * 2, y)
    with pytest.raises(UserInputError):
        datasets.write_spike_npz(tmp_path / "bad.npz", x, y[:3])
    assert not (tmp_path / "bad.npz").exists()


def test_load_nmnist_missing_split_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(UserInputError, match=r"Test"):
        datasets.load_nmnist(tmp_path, "test")
    (tmp_path / "Test" / "4").mkdir(parents=True)
    with pytest.raises(UserInputError, match="no N-MNIST event files"):
        datasets.load_nmnist(tmp_path, "test")
    with pytest.raises(UserInputError, match="never downloads"):
        datasets.load_nmnist(tmp_path, "test", download=True)


@pytest.mark.slow
def test_nmnist_frames_calibrate_and_run_the_paper_cnn_through_the_cli(tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """Generated N-MNIST recordings -> frames -> ``datasets.write_spike_npz`` -> ``lnm-deploy calibrate`` of
    the NIR paper's N-MNIST CNN (input 2x34x34) and ``run`` on fxsim."""
    from lnm_deploy.cli import main

    rng = np.random.default_rng(7)
    for digit in range(3):
        (tmp_path / "Test" / str(digit)).mkdir(parents=True)
        for k in range(2):
            n = 3000
            t = np.sort(rng.integers(0, 300_000, n))
            evs = [(int(rng.integers(0, 34)), int(rng.integers(0, 34)), int(rng.integers(0, 2)), int(ti)) for ti in t]
            (tmp_path / "Test" / str(digit) / f"{k:05d}.bin").write_bytes(nmnist_bytes(evs))
    x, y = datasets.nmnist_frames(datasets.load_nmnist(tmp_path, "test"), steps=12)
    assert x.shape == (6, 12, 2, 34, 34) and 0 < x.mean() < 0.5
    data = datasets.write_spike_npz(tmp_path / "calib.npz", x, y)
    net = Path(__file__).parent / "data" / "cnn_sinabs.nir"
    art, out = tmp_path / "cnn.nir", tmp_path / "out.npz"
    assert main(["calibrate", str(net), "--producer", "sinabs", "--threshold", ">", "--spikes", "single",
                 "--data", str(data), "--target", "loihi2", "--out", str(art), "--quiet"]) == 0
    assert main(["run", str(art), "--data", str(data), "--backend", "fxsim", "--out", str(out), "--quiet"]) == 0
    with np.load(out, allow_pickle=False) as z:
        assert z["output"].shape[:2] == (6, 12)
    capsys.readouterr()
