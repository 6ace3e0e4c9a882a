"""Tests of fatlib.data: sources, order, checksums, errors, batches, augmentation.

Tests marked `needs_mirror` run where FATLIB_DATA_DIR points at the offline
mirror (CI sets it to ../shared/data); the others use the embedded subsets or
small synthetic files written in torchvision's formats.
"""

import gzip
import hashlib
import io
import os
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from fatlib import data

MIRROR = Path(os.environ.get("FATLIB_DATA_DIR") or "/nonexistent")
HAS_MIRROR = all((MIRROR / f).is_file() for f in (
    "mnist/train-images-idx3-ubyte.gz", "mnist/t10k-labels-idx1-ubyte.gz",
    "cifar10/cifar10-jpg.tar.gz"))
needs_mirror = pytest.mark.skipif(not HAS_MIRROR, reason="FATLIB_DATA_DIR does not hold the mirror")
EMBEDDED = data.repo_data_dir() / "embedded"

# official MNIST class counts
MNIST_COUNTS = {"train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
                "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]}


@pytest.fixture(scope="session")
def fresh_clone_data(tmp_path_factory):
    """A repo data folder as on a fresh clone: the embedded files, an empty cache."""
    root = tmp_path_factory.mktemp("repo_data")
    (root / "embedded").symlink_to(EMBEDDED.resolve(), target_is_directory=True)
    return root


@pytest.fixture
def offline(monkeypatch, fresh_clone_data):
    """No $FATLIB_DATA_DIR, no download: only the embedded data."""
    monkeypatch.delenv("FATLIB_DATA_DIR", raising=False)
    monkeypatch.setenv("FATLIB_NO_DOWNLOAD", "1")
    monkeypatch.setenv("FATLIB_REPO_DATA", str(fresh_clone_data))


@pytest.fixture
def mirror(monkeypatch):
    """The offline mirror as $FATLIB_DATA_DIR (the repo cache keeps its decoded copy)."""
    monkeypatch.setenv("FATLIB_DATA_DIR", str(MIRROR))
    monkeypatch.setenv("FATLIB_NO_DOWNLOAD", "1")


@pytest.fixture
def data_dir(monkeypatch, tmp_path):
    """An empty $FATLIB_DATA_DIR and repo data folder in tmp_path, no download."""
    monkeypatch.setenv("FATLIB_DATA_DIR", str(tmp_path / "datadir"))
    monkeypatch.setenv("FATLIB_REPO_DATA", str(tmp_path / "repo"))
    monkeypatch.setenv("FATLIB_NO_DOWNLOAD", "1")
    (tmp_path / "datadir").mkdir()
    return tmp_path / "datadir"


def write_sums(root: Path) -> None:
    """A SHA256SUMS in root listing every other file below it."""
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root).as_posix()}"
             for p in sorted(root.rglob("*")) if p.is_file() and p.name != "SHA256SUMS"]
    (root / "SHA256SUMS").write_text("\n".join(lines) + "\n")


def class_counts(y, k=10):
    return torch.bincount(y, minlength=k).tolist()


# ---------------------------------------------------------------- table and bad input

def test_datasets_table():
    assert set(data.DATASETS) == {"mnist", "cifar10", "cifar100", "svhn"}
    for name, info in data.DATASETS.items():
        assert info.name == name
        assert len(info.classes) == info.num_classes == len(set(info.classes))
        assert len(info.mean) == len(info.std) == info.shape[0]
    assert data.DATASETS["mnist"].mean == (0.1307,) and data.DATASETS["mnist"].std == (0.3081,)
    assert data.DATASETS["cifar10"].classes[0] == "airplane"
    assert data.DATASETS["cifar100"].num_classes == 100


@pytest.mark.parametrize("name, split, n, match", [
    ("imagenet", "train", 10, "unknown data set 'imagenet'"),
    ("cifar10", "val", 10, "split must be 'train' or 'test', got 'val'"),
    ("cifar10", "test", 0, "n must be a positive int"),
    ("cifar10", "test", -5, "n must be a positive int"),
    ("cifar10", "test", 2.5, "n must be a positive int"),
    ("cifar10", "test", True, "n must be a positive int"),
])
def test_bad_request(name, split, n, match):
    with pytest.raises(ValueError, match=match):
        data.load(name, split, n)


# ---------------------------------------------------------------- embedded data (offline)

def test_embedded_mnist(offline):
    for split, size in (("train", 60000), ("test", 10000)):
        x, y, source = data.load_with_source("mnist", split)
        assert x.shape == (size, 1, 28, 28) and x.dtype == torch.uint8
        assert y.shape == (size,) and y.dtype == torch.int64
        assert class_counts(y) == MNIST_COUNTS[split]
        assert source == f"MNIST from data/embedded, {split} split, {size} of {size}"
    assert 0 < x.float().mean() / 255 < 0.2  # dark background


def test_embedded_cifar10(offline):
    x, y, source = data.load_with_source("cifar10", "train", 10000)
    assert x.shape == (10000, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert class_counts(y) == [1000] * 10
    assert torch.equal(y[:20], torch.arange(20) % 10)  # class-interleaved prefix
    assert "CIFAR-10 (JPEG mirror" in source and "data/embedded" in source
    assert 0.3 < data.to_float(x).mean() < 0.6 and x.float().std() > 30
    xt, yt = data.load("cifar10", "test", 2000)
    assert class_counts(yt) == [200] * 10
    x5, y5 = data.load("cifar10", "test", 5)
    assert torch.equal(x5, xt[:5]) and torch.equal(y5, yt[:5])


def test_embedded_too_few_is_a_clear_error(offline):
    with pytest.raises(FileNotFoundError) as err:
        data.load("cifar10", "train", 50000)
    msg = str(err.value)
    for part in ("50000 examples", "train split", "$FATLIB_DATA_DIR: not set", "data/cache",
                 "data/embedded", "10000 examples", "download: disabled",
                 "set FATLIB_DATA_DIR", "cifar10/cifar10-jpg.tar.gz"):
        assert part in msg, part
    with pytest.raises(FileNotFoundError, match="whole split"):
        data.load("cifar10", "train")  # the embedded subset is not the whole split
    with pytest.raises(FileNotFoundError, match="not present"):
        data.load("svhn", "test", 10)


def test_download_failure_is_reported(offline, monkeypatch):
    def fail(*args):
        raise OSError("network unreachable")

    monkeypatch.delenv("FATLIB_NO_DOWNLOAD")
    monkeypatch.setattr(data, "_download", fail)
    with pytest.raises(FileNotFoundError, match=r"download: failed \(OSError: network unreachable\)"):
        data.load("cifar100", "test", 10)
    with pytest.raises(FileNotFoundError, match="official test split has 10000"):
        data.load("cifar10", "test", 20000)


# ---------------------------------------------------------------- the mirror

@needs_mirror
def test_mirror_mnist(mirror):
    for split, size in (("train", 60000), ("test", 10000)):
        x, y, source = data.load_with_source("mnist", split)
        assert x.shape == (size, 1, 28, 28) and class_counts(y) == MNIST_COUNTS[split]
        assert source.startswith("MNIST from $FATLIB_DATA_DIR")


@needs_mirror
def test_mirror_cifar10(mirror):
    x, y, source = data.load_with_source("cifar10", "train")
    assert x.shape == (50000, 3, 32, 32) and x.dtype == torch.uint8
    assert class_counts(y) == [5000] * 10
    assert source == "CIFAR-10 (JPEG mirror) from $FATLIB_DATA_DIR, train split, 50000 of 50000"
    xt, yt, source = data.load_with_source("cifar10", "test", 1000)
    assert class_counts(yt) == [100] * 10
    assert source == "CIFAR-10 (JPEG mirror) from $FATLIB_DATA_DIR, test split, 1000 of 10000"
    assert class_counts(data.load("cifar10", "test")[1]) == [1000] * 10


@needs_mirror
def test_embedded_is_the_mirror_prefix(mirror, monkeypatch, fresh_clone_data):
    from_mirror = {s: data.load("cifar10", s, 1000) for s in ("train", "test")}
    mnist_mirror = data.load("mnist", "test", 1000)
    monkeypatch.delenv("FATLIB_DATA_DIR")
    monkeypatch.setenv("FATLIB_REPO_DATA", str(fresh_clone_data))
    for split, (x, y) in from_mirror.items():
        xe, ye, source = data.load_with_source("cifar10", split, 1000)
        assert "data/embedded" in source
        assert torch.equal(x, xe) and torch.equal(y, ye)
    assert all(torch.equal(a, b) for a, b in zip(mnist_mirror, data.load("mnist", "test", 1000)))


# ---------------------------------------------------------------- checksums

def test_checksum_mismatch_is_an_error(data_dir):
    (data_dir / "mnist").mkdir()
    for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (data_dir / "mnist" / f).write_bytes((EMBEDDED / "mnist" / f).read_bytes())
    assert data.load("mnist", "test", 3)[0].shape == (3, 1, 28, 28)
    labels = data_dir / "mnist" / "t10k-labels-idx1-ubyte.gz"
    raw = bytearray(gzip.decompress(labels.read_bytes()))
    raw[100] = (raw[100] + 1) % 10
    labels.write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(ValueError, match="checksum mismatch .*t10k-labels"):
        data.load("mnist", "test", 3)
    # a recompressed official file is accepted: the check is on the content
    official = gzip.decompress((EMBEDDED / "mnist" / labels.name).read_bytes())
    labels.write_bytes(gzip.compress(official, compresslevel=1))
    assert data.load("mnist", "test", 3)[1].tolist() == [7, 2, 1]


def test_checksum_is_cached(data_dir, monkeypatch):
    (data_dir / "mnist").mkdir()
    for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (data_dir / "mnist" / f).write_bytes((EMBEDDED / "mnist" / f).read_bytes())
    data.load("mnist", "test", 1)

    def no_hashing(*args):
        raise AssertionError("re-hashed a verified file")

    monkeypatch.setattr(data, "_hash_file", no_hashing)
    data.load("mnist", "test", 1)


# ---------------------------------------------------------------- synthetic official layouts

def test_cifar100_pickles(data_dir):
    rng = np.random.default_rng(0)
    folder = data_dir / "cifar-100-python"
    folder.mkdir()
    arrays = {}
    for split, n in (("train", 30), ("test", 20)):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = rng.integers(0, 100, n).tolist()
        arrays[split] = (x, y)
        with open(folder / split, "wb") as f:
            pickle.dump({b"data": x, b"fine_labels": y, b"coarse_labels": [0] * n}, f)
    with pytest.raises(ValueError, match="checksum mismatch"):  # not torchvision's files
        data.load("cifar100", "train", 5)
    write_sums(data_dir)
    x, y, source = data.load_with_source("cifar100", "test")
    assert source == "CIFAR-100 from $FATLIB_DATA_DIR, test split, 20 of 20"
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert torch.equal(x.reshape(20, -1), torch.from_numpy(arrays["test"][0]))
    assert y.tolist() == arrays["test"][1]
    assert torch.equal(data.load("cifar100", "train", 7)[0].reshape(7, -1),
                       torch.from_numpy(arrays["train"][0][:7]))
    with pytest.raises(FileNotFoundError, match="CIFAR-100, 30 examples"):
        data.load("cifar100", "train", 31)


def test_svhn_mat(data_dir):
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(1)
    X = rng.integers(0, 256, (32, 32, 3, 12), dtype=np.uint8)
    y = np.array([10, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 1], dtype=np.uint8).reshape(-1, 1)
    for split in ("train", "test"):
        scipy_io.savemat(data_dir / f"{split}_32x32.mat", {"X": X, "y": y})
    write_sums(data_dir)
    x, labels, source = data.load_with_source("svhn", "train")
    assert source == "SVHN from $FATLIB_DATA_DIR, train split, 12 of 12"
    assert labels.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]  # label 10 is digit 0
    assert x.shape == (12, 3, 32, 32) and x.dtype == torch.uint8
    assert x[4, 2, 5, 7] == X[5, 7, 2, 4]  # [H, W, C, N] -> [N, C, H, W]
    assert torch.equal(data.load("svhn", "test", 3)[0], x[:3])


def test_official_cifar10_layout_and_order(data_dir):
    rng = np.random.default_rng(2)
    folder = data_dir / "cifar-10-batches-py"
    folder.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batches[name] = (rng.integers(0, 256, (4, 3072), dtype=np.uint8), rng.integers(0, 10, 4).tolist())
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": batches[name][0], b"labels": batches[name][1]}, f)
    write_sums(data_dir)
    x, y, source = data.load_with_source("cifar10", "train")
    assert source == "CIFAR-10 from $FATLIB_DATA_DIR, train split, 20 of 20"  # official, not "JPEG mirror"
    assert y.tolist() == sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert torch.equal(x[4:8].reshape(4, -1), torch.from_numpy(batches["data_batch_2"][0]))


@pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")
def test_jpeg_tar_is_class_interleaved(data_dir):
    from torchvision.io import encode_jpeg

    classes = data.DATASETS["cifar10"].classes
    (data_dir / "cifar10").mkdir()
    buf = io.BytesIO()
    expected = []
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for c in reversed(range(10)):  # tar order must not matter
            for file in ("0002.jpg", "0000.jpg", "0001.jpg"):
                value = 20 * c + int(file[:4])  # flat images: the value identifies the file
                blob = encode_jpeg(torch.full((3, 32, 32), value, dtype=torch.uint8), quality=95).numpy().tobytes()
                info = tarfile.TarInfo(f"test/{classes[c]}/{file}")
                info.size = len(blob)
                tf.addfile(info, io.BytesIO(blob))
                expected.append((int(file[:4]), c, value))
    (data_dir / "cifar10" / "cifar10-jpg.tar.gz").write_bytes(buf.getvalue())
    write_sums(data_dir)
    x, y, source = data.load_with_source("cifar10", "test")
    assert source == "CIFAR-10 (JPEG mirror) from $FATLIB_DATA_DIR, test split, 30 of 30"
    expected.sort()
    assert y.tolist() == [c for _, c, _ in expected]  # example i*10 + c: i-th file of class c
    assert (x.float().mean((1, 2, 3)) - torch.tensor([v for *_, v in expected], dtype=torch.float)).abs().max() < 2


# ---------------------------------------------------------------- to_float, batches, augmentation

def test_to_float():
    x = torch.tensor([0, 128, 255], dtype=torch.uint8)
    assert torch.allclose(data.to_float(x), torch.tensor([0.0, 128 / 255, 1.0]))
    assert data.to_float(x).dtype == torch.float32
    with pytest.raises(ValueError, match="uint8"):
        data.to_float(x.float())


def _toy(n=50):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g), torch.arange(n) % 10


def test_batches_determinism_and_coverage():
    images, labels = _toy()
    run = lambda **kw: list(data.batches(images, labels, 16, **kw))  # noqa: E731
    a, b = run(seed=3, epoch=1), run(seed=3, epoch=1)
    assert all(torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert [len(y) for _, y in a] == [16, 16, 16, 2]
    assert sorted(torch.cat([y for _, y in a]).tolist()) == sorted(labels.tolist())
    order = lambda bs: torch.cat([y for _, y in bs])  # noqa: E731
    assert not torch.equal(order(a), order(run(seed=3, epoch=2)))
    assert not torch.equal(order(a), order(run(seed=4, epoch=1)))
    x, y = a[0]
    assert x.dtype == torch.float32 and y.dtype == torch.int64 and 0 <= x.min() and x.max() <= 1
    plain = run(shuffle=False, drop_last=True)
    assert [len(y) for _, y in plain] == [16, 16, 16]
    assert torch.equal(plain[1][0], data.to_float(images[16:32]))
    with pytest.raises(ValueError, match="batch_size"):
        data.batches(images, labels, 0)


def test_batches_augment_keeps_labels():
    images, labels = _toy()
    plain = list(data.batches(images, labels, 16, seed=1, epoch=5))
    aug = list(data.batches(images, labels, 16, seed=1, epoch=5, augment=True))
    assert all(torch.equal(ya, yp) for (_, ya), (_, yp) in zip(aug, plain))
    x = aug[0][0]
    assert x.shape == plain[0][0].shape and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert not torch.equal(x, plain[0][0])


def _reference_crops(image, padding):
    """Every crop (after zero padding) and its flip, by plain slicing."""
    c, h, w = image.shape
    padded = torch.zeros(c, h + 2 * padding, w + 2 * padding, dtype=image.dtype)
    padded[:, padding:padding + h, padding:padding + w] = image
    return {(dy, dx, flip): (crop.flip(-1) if flip else crop)
            for dy in range(2 * padding + 1) for dx in range(2 * padding + 1) for flip in (0, 1)
            for crop in [padded[:, dy:dy + h, dx:dx + w]]}


def test_augment_matches_reference_crops_and_flips():
    h = w = 32
    pattern = (torch.arange(h * w, dtype=torch.float32).reshape(1, h, w) + 1) / (h * w)
    x = torch.cat([pattern, 1 - pattern + 1 / (h * w)]).unsqueeze(0).repeat(1000, 1, 1, 1)
    out = data.augment_crop_flip(x, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    reference = {ref.numpy().tobytes(): key for key, ref in _reference_crops(x[0], 4).items()}
    assert len(reference) == 9 * 9 * 2  # the pattern makes every crop and flip distinct
    seen = [reference[img.numpy().tobytes()] for img in out]  # KeyError: not a crop+flip
    assert {(dy, dx) for dy, dx, _ in seen} == {(dy, dx) for dy in range(9) for dx in range(9)}
    assert 400 < sum(flip for *_, flip in seen) < 600
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        data.augment_crop_flip(x[0])


def test_augment_uint8_generator_and_padding0():
    images, _ = _toy(64)
    a = data.augment_crop_flip(images, generator=torch.Generator().manual_seed(7))
    b = data.augment_crop_flip(images, generator=torch.Generator().manual_seed(7))
    assert a.dtype == torch.uint8 and torch.equal(a, b)
    torch.manual_seed(0)
    c = data.augment_crop_flip(images)
    torch.manual_seed(0)
    assert torch.equal(c, data.augment_crop_flip(images))
    flipped = data.augment_crop_flip(images, padding=0)
    assert all(torch.equal(f, i) or torch.equal(f, i.flip(-1)) for f, i in zip(flipped, images))
