"""Datasets as uint8 tensors from the first source that holds them, and batches.

Sources, in order (shared/DESIGN.md, section "Data"):

1. ``$FATLIB_DATA_DIR``, if set, in torchvision's official layouts
   (``MNIST/raw/*-ubyte[.gz]``, ``cifar-10-batches-py/``, ``cifar-100-python/``,
   ``train_32x32.mat`` / ``test_32x32.mat``) or the offline mirror's layouts
   (``mnist/*-ubyte.gz``; ``cifar10/cifar10-jpg.tar.gz`` holding
   ``train|test/<class>/*.jpg``).
2. The repository's ``data/`` folder (``$FATLIB_REPO_DATA`` overrides where it
   is): torchvision downloads kept in ``data/cache/``, then the subsets
   committed in ``data/embedded/`` (full MNIST; the first 10,000 train and
   2,000 test images of the CIFAR-10 JPEG mirror).
3. A torchvision download into ``data/cache/`` (allowed unless
   ``FATLIB_NO_DOWNLOAD=1``; failures, e.g. offline, are reported, not raised).

The first source holding at least ``n`` examples of the split is used
(``n=None``: the whole split, from a source that is not a subset). Asking for
more than every source holds raises FileNotFoundError naming each source;
other data is never substituted. Every file read is checked against a
checksum (a ``SHA256SUMS`` file in the data root, else the table below); a
mismatch raises ValueError. Decoded JPEGs and checksums are cached in
``data/cache/`` (git-ignored), so each file is decoded and hashed once.

Order: the first ``n`` examples of a split are the same whatever the source
of one kind. MNIST, CIFAR-100, SVHN and official CIFAR-10 keep the official
order. The CIFAR-10 JPEG mirror keeps no official order; it is read in a
deterministic class-interleaved order (example ``i*10 + c`` is the ``i``-th file,
by name, of class ``c``), so every prefix is class-balanced, and the embedded
CIFAR-10 subset is exactly that prefix. Official CIFAR-10 and the JPEG mirror
differ (order, and pixels: the mirror is JPEG re-encoded at quality ~75);
the source string says which one was read, e.g.
"CIFAR-10 (JPEG mirror) from $FATLIB_DATA_DIR, test split, 1000 of 10000".
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import operator
import os
import pickle
import tarfile
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from types import MappingProxyType
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "DatasetInfo", "DATASETS", "load", "load_with_source", "to_float",
    "augment_crop_flip", "batches", "repo_data_dir",
]

SPLITS = ("train", "test")


@dataclass(frozen=True)
class DatasetInfo:
    """What a data set is: classes, image shape, normalisation, official sizes.

    Args:
        name: key in DATASETS ('mnist', 'cifar10', 'cifar100', 'svhn').
        num_classes: number of labels.
        shape: (C, H, W) of one image.
        mean, std: per-channel statistics of the training images in [0, 1]
            (for `models.Normalize`).
        classes: class names, index = label.
        title: display name, e.g. "CIFAR-10".
        split_sizes: official (train, test) sizes.
    """

    name: str
    num_classes: int
    shape: tuple[int, int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    classes: tuple[str, ...]
    title: str = ""
    split_sizes: tuple[int, int] = (0, 0)

    def size(self, split: str) -> int:
        """Official number of examples in `split` ('train' or 'test')."""
        return self.split_sizes[SPLITS.index(split)]


_DIGITS = tuple(str(i) for i in range(10))
_CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                    "dog", "frog", "horse", "ship", "truck")
_CIFAR100_CLASSES = tuple("""
apple aquarium_fish baby bear beaver bed bee beetle bicycle bottle bowl boy
bridge bus butterfly camel can castle caterpillar cattle chair chimpanzee clock
cloud cockroach couch crab crocodile cup dinosaur dolphin elephant flatfish
forest fox girl hamster house kangaroo keyboard lamp lawn_mower leopard lion
lizard lobster man maple_tree motorcycle mountain mouse mushroom oak_tree orange
orchid otter palm_tree pear pickup_truck pine_tree plain plate poppy porcupine
possum rabbit raccoon ray road rocket rose sea seal shark shrew skunk skyscraper
snail snake spider squirrel streetcar sunflower sweet_pepper table tank
telephone television tiger tractor train trout tulip turtle wardrobe whale
willow_tree wolf woman worm""".split())

DATASETS = MappingProxyType({
    "mnist": DatasetInfo("mnist", 10, (1, 28, 28), (0.1307,), (0.3081,),
                         _DIGITS, "MNIST", (60000, 10000)),
    "cifar10": DatasetInfo("cifar10", 10, (3, 32, 32), (0.4914, 0.4822, 0.4465),
                           (0.2471, 0.2435, 0.2616), _CIFAR10_CLASSES,
                           "CIFAR-10", (50000, 10000)),
    "cifar100": DatasetInfo("cifar100", 100, (3, 32, 32), (0.5071, 0.4865, 0.4409),
                            (0.2673, 0.2564, 0.2762), _CIFAR100_CLASSES,
                            "CIFAR-100", (50000, 10000)),
    "svhn": DatasetInfo("svhn", 10, (3, 32, 32), (0.4377, 0.4438, 0.4728),
                        (0.198, 0.201, 0.197), _DIGITS, "SVHN", (73257, 26032)),
})

# ---------------------------------------------------------------- checksums

# sha256 of the offline mirror's files (shared/data/SHA256SUMS) and of the
# embedded files (data/embedded/SHA256SUMS), by path relative to the data root.
_KNOWN_SHA256 = {
    "mnist/train-images-idx3-ubyte.gz": "db8f937d487057fb14a9f0fbe97f0bc8d311ab41b750d41e1ff37c43b9e55e19",
    "mnist/train-labels-idx1-ubyte.gz": "51fc562b6747b666fbf6e84ce29d43c3cb5f9c388c664d43b33f02095313405a",
    "mnist/t10k-images-idx3-ubyte.gz": "cfeddb84311ecf044fc6a5b0f6ee8a24d265d4e83e388400186eb114082f4209",
    "mnist/t10k-labels-idx1-ubyte.gz": "e41c74e484045d39b462a7790a4af51301bd9b0b24f0154798d713ec68c45920",
    "cifar10/cifar10-jpg.tar.gz": "d34c68f61cca57aa9144c8f25bda427abb9921bd642d5857a2fc1a6b4416f965",
    "cifar10/cifar10-jpg-subset.tar.gz": "99fbcbd6f4bd37ce96c87617aa174a70bef6f9aa50a13dd1212362124549b737",
}
# md5 of torchvision's official files (as torchvision itself checks them).
_OFFICIAL_MD5 = {
    "MNIST/raw/train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "MNIST/raw/train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
    "MNIST/raw/t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
    "MNIST/raw/t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    "cifar-10-batches-py/data_batch_1": "c99cafc152244af753f735de768cd75f",
    "cifar-10-batches-py/data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
    "cifar-10-batches-py/data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
    "cifar-10-batches-py/data_batch_4": "634d18415352ddfa80567beed471001a",
    "cifar-10-batches-py/data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
    "cifar-10-batches-py/test_batch": "40351d587109b95175f43aff81a1287e",
    "cifar-100-python/train": "16019d7e3df5f24257cddd939b257f8d",
    "cifar-100-python/test": "f0ef6b0ae62326f3e7ffdfab6717acfc",
    "train_32x32.mat": "e26dedcc434d2e4c54c9b2d4a06d8373",
    "test_32x32.mat": "eb5a983be6a315427106f1b164d9cef3",
}
# md5 of the decompressed official MNIST IDX files, whatever their compression.
_MNIST_CONTENT_MD5 = {
    "train-images-idx3-ubyte": "6bbc9ace898e44ae57da46a324031adb",
    "train-labels-idx1-ubyte": "a25bea736e30d166cdddb491f175f624",
    "t10k-images-idx3-ubyte": "2646ac647ad5339dbf082846283269ea",
    "t10k-labels-idx1-ubyte": "27ae3e4e09519cfbb04c329615203637",
}


@dataclass(frozen=True)
class _Digest:
    alg: str              # hashlib name: 'sha256' or 'md5'
    hex: str
    content: bool = False  # over the gunzipped content instead of the file


def _builtin_digests(rel: str) -> tuple[_Digest, ...]:
    """Checksums this module knows for a file at `rel` inside a data root."""
    name = PurePosixPath(rel).name
    found = []
    if rel in _KNOWN_SHA256:
        found.append(_Digest("sha256", _KNOWN_SHA256[rel]))
    md5 = _OFFICIAL_MD5.get(rel) or _OFFICIAL_MD5.get(name)
    if md5:
        found.append(_Digest("md5", md5))
    if name.removesuffix(".gz") in _MNIST_CONTENT_MD5:
        found.append(_Digest("md5", _MNIST_CONTENT_MD5[name.removesuffix(".gz")], content=True))
    return tuple(found)


def _hash_file(path: Path, alg: str, content: bool) -> str:
    h = hashlib.new(alg)
    opener = gzip.open if content and path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _digest(path: Path, alg: str, content: bool = False) -> str:
    """Hash of a file, cached in data/cache/checksums.json by (size, mtime)."""
    st = path.stat()
    key = f"{path.resolve()}|{alg}|{'content' if content else 'file'}"
    stamp = [st.st_size, st.st_mtime_ns]
    store = _cache_dir() / "checksums.json"
    try:
        table = json.loads(store.read_text())
    except (OSError, ValueError):
        table = {}
    if table.get(key, [None])[:2] == stamp:
        return table[key][2]
    value = _hash_file(path, alg, content)
    table[key] = stamp + [value]
    _atomic_write(store, lambda tmp: tmp.write_text(json.dumps(table, indent=1, sort_keys=True)))
    return value


def _read_sums(root: Path) -> dict[str, str]:
    """Entries of root/SHA256SUMS (sha256sum format) as {relative path: hex}."""
    try:
        lines = (root / "SHA256SUMS").read_text().splitlines()
    except OSError:
        return {}
    sums = {}
    for line in lines:
        parts = line.strip().split(maxsplit=1)
        if len(parts) == 2:
            sums[parts[1].lstrip("*").removeprefix("./")] = parts[0].lower()
    return sums


def _verify(path: Path, root: Path) -> None:
    """Raise ValueError unless `path` matches its checksum.

    The checksum comes from root/SHA256SUMS if that lists the file, else from
    the tables in this module.
    """
    rel = path.relative_to(root).as_posix()
    listed = _read_sums(root).get(rel)
    if listed is not None:
        expected, origin = (_Digest("sha256", listed),), f"{root / 'SHA256SUMS'}"
    else:
        expected, origin = _builtin_digests(rel), "the checksum table in fatlib/data.py"
    if not expected:
        raise ValueError(f"no checksum is known for data file {path}; list its sha256 "
                         f"in {root / 'SHA256SUMS'} (sha256sum format) to use it")
    got = []
    for d in expected:
        value = _digest(path, d.alg, d.content)
        if value == d.hex:
            return
        got.append(f"{d.alg}{' of the gunzipped content' if d.content else ''} is "
                   f"{value}, expected {d.hex}")
    raise ValueError(
        f"checksum mismatch for data file {path}: {'; '.join(got)} (from {origin}). "
        f"The file is damaged or a different version: replace it with a good copy "
        f"(delete it to let torchvision download it again), or, if it is a "
        f"deliberately different copy, list its sha256 in {root / 'SHA256SUMS'}.")


# ---------------------------------------------------------------- disk places

def repo_data_dir() -> Path:
    """The repository's data/ folder ($FATLIB_REPO_DATA overrides it)."""
    env = os.environ.get("FATLIB_REPO_DATA")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "data"


def _cache_dir() -> Path:
    return repo_data_dir() / "cache"


def _prepare_cache() -> Path:
    """Create data/cache/ with a .gitignore that keeps it out of git."""
    cache = _cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    ignore = cache / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# fatlib data cache (decoded data, checksums, downloads): never committed\n*\n")
    return cache


def _atomic_write(path: Path, write: Callable[[Path], object]) -> bool:
    """Write a cache file via a temporary file + os.replace; False if not writable."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        _prepare_cache()
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
        return True
    except OSError:
        tmp.unlink(missing_ok=True)
        return False


# ---------------------------------------------------------------- readers

def _read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST's format), gzip-compressed or not, as a uint8 array."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
        raw = f.read()
    ndim = raw[3] if len(raw) > 4 else 0
    if raw[:3] != b"\x00\x00\x08" or ndim < 1:
        raise ValueError(f"{path} is not an IDX file of unsigned bytes")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _read_mnist(images: Path, labels: Path) -> tuple[torch.Tensor, torch.Tensor]:
    x = _read_idx(images)
    return torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(_read_idx(labels).astype(np.int64))


def _read_cifar_pickles(paths: list[Path], label_key: bytes) -> tuple[torch.Tensor, torch.Tensor]:
    """CIFAR python pickles (official format: b'data' [N, 3072], labels list)."""
    xs, ys = [], []
    for p in paths:
        with open(p, "rb") as f:
            d = pickle.load(f, encoding="bytes")  # official format; file checksum verified first
        xs.append(np.asarray(d[b"data"], np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(d[label_key], np.int64))
    return torch.from_numpy(np.concatenate(xs)), torch.from_numpy(np.concatenate(ys))


def _read_svhn(path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """SVHN .mat (X [32, 32, 3, N], y [N, 1] with label 10 for digit 0)."""
    import scipy.io  # lazy: only SVHN needs it

    mat = scipy.io.loadmat(str(path))
    x = np.ascontiguousarray(np.transpose(mat["X"], (3, 2, 0, 1)).astype(np.uint8))
    y = mat["y"].astype(np.int64).reshape(-1) % 10
    return torch.from_numpy(x), torch.from_numpy(y)


def _parse_member(name: str, classes: tuple[str, ...]) -> tuple[str, int, str] | None:
    """(split, class index, file name) of a tar member `.../split/class/file.jpg`."""
    parts = PurePosixPath(name).parts
    if len(parts) < 3 or not parts[-1].lower().endswith((".jpg", ".jpeg")):
        return None
    split, cls, file = parts[-3:]
    if split not in SPLITS:
        return None
    if cls not in classes:
        raise ValueError(f"unknown class folder {cls!r} in tar member {name!r}")
    return split, classes.index(cls), file


def _interleaved_order(labels: list[int], names: list[str]) -> list[int]:
    """Class-interleaved order: example i*K + c is the i-th file (by name) of class c."""
    rank = [0] * len(labels)
    for c in set(labels):
        members = sorted((names[i], i) for i in range(len(labels)) if labels[i] == c)
        for r, (_, i) in enumerate(members):
            rank[i] = r
    return sorted(range(len(labels)), key=lambda i: (rank[i], labels[i]))


def _decode_jpegs(blobs: list[bytes]) -> torch.Tensor:
    """Decode JPEG bytes to uint8 RGB [N, 3, H, W] (libjpeg-turbo via torchvision, else PIL)."""
    if not blobs:
        return torch.empty(0, 3, 32, 32, dtype=torch.uint8)
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:  # torchvision.io's codecs are deprecated from 0.29 on
        return torch.stack([_decode_pil(b) for b in blobs])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The image decoding", DeprecationWarning)
        data = [torch.frombuffer(bytearray(b), dtype=torch.uint8) for b in blobs]
        return torch.stack(decode_jpeg(data, mode=ImageReadMode.RGB))


def _decode_pil(blob: bytes) -> torch.Tensor:
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as im:
        return torch.from_numpy(np.array(im.convert("RGB"))).permute(2, 0, 1).contiguous()


def _read_jpeg_tar_members(path: Path, classes: tuple[str, ...]) -> dict[str, list[tuple[int, str, bytes]]]:
    """Stream a JPEG tar: per split, (class index, file name, JPEG bytes) in class-interleaved order."""
    found: dict[str, list[tuple[int, str, bytes]]] = {s: [] for s in SPLITS}
    with tarfile.open(path, "r|gz") as tf:
        for member in tf:
            parsed = _parse_member(member.name, classes) if member.isfile() else None
            if parsed:
                split, c, file = parsed
                found[split].append((c, file, tf.extractfile(member).read()))
    for split, items in found.items():
        order = _interleaved_order([c for c, _, _ in items], [f for _, f, _ in items])
        found[split] = [items[i] for i in order]
    return found


def _read_jpeg_tar(path: Path, split: str, classes: tuple[str, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode a JPEG tar's split in class-interleaved order, cached in data/cache/decoded/."""
    key = _digest(path, "sha256")[:16]
    cached = {s: _cache_dir() / "decoded" / f"jpeg-{key}-{s}.pt" for s in SPLITS}
    try:
        d = torch.load(cached[split], weights_only=True)
        return d["images"], d["labels"]
    except (OSError, RuntimeError, KeyError, EOFError, pickle.UnpicklingError):
        pass
    out = {}
    for s, items in _read_jpeg_tar_members(path, classes).items():
        out[s] = {"images": _decode_jpegs([b for _, _, b in items]),
                  "labels": torch.tensor([c for c, _, _ in items], dtype=torch.int64)}
        _atomic_write(cached[s], lambda tmp, d=out[s]: torch.save(d, tmp))
    return out[split]["images"], out[split]["labels"]


# ---------------------------------------------------------------- layouts

@dataclass(frozen=True)
class _Found:
    """One copy of a split in a data root."""

    desc: str                      # e.g. "CIFAR-10 (JPEG mirror)"
    files: tuple[Path, ...]
    reader: Callable[[], tuple[torch.Tensor, torch.Tensor]]
    subset: bool = False           # a known prefix of the split, not all of it


def _mnist_layouts(root: Path, split: str, info: DatasetInfo) -> list[_Found]:
    prefix = "train" if split == "train" else "t10k"
    found = []
    for folder in ("MNIST/raw", "mnist"):
        for ext in ("", ".gz"):
            x, y = (root / folder / f"{prefix}-{k}-ubyte{ext}" for k in ("images-idx3", "labels-idx1"))
            if x.is_file() and y.is_file():
                found.append(_Found(info.title, (x, y), lambda x=x, y=y: _read_mnist(x, y)))
                break
    return found


_CIFAR_PICKLES = {  # name: (folder, files per split, label key) in torchvision's layout
    "cifar10": ("cifar-10-batches-py", {"train": [f"data_batch_{i}" for i in range(1, 6)],
                                        "test": ["test_batch"]}, b"labels"),
    "cifar100": ("cifar-100-python", {"train": ["train"], "test": ["test"]}, b"fine_labels"),
}


def _cifar_pickle_layouts(root: Path, split: str, info: DatasetInfo) -> list[_Found]:
    folder, files, key = _CIFAR_PICKLES[info.name]
    paths = [root / folder / f for f in files[split]]
    if not all(p.is_file() for p in paths):
        return []
    return [_Found(info.title, tuple(paths), lambda: _read_cifar_pickles(paths, key))]


def _jpeg_tar_layouts(root: Path, split: str, info: DatasetInfo) -> list[_Found]:
    tars = (("cifar10-jpg.tar.gz", "CIFAR-10 (JPEG mirror)", False),
            ("cifar10-jpg-subset.tar.gz", "CIFAR-10 (JPEG mirror, embedded subset)", True))
    return [_Found(desc, (tar,), lambda tar=tar: _read_jpeg_tar(tar, split, info.classes), subset)
            for file, desc, subset in tars for tar in [root / "cifar10" / file] if tar.is_file()]


def _svhn_layouts(root: Path, split: str, info: DatasetInfo) -> list[_Found]:
    paths = [root / f"{split}_32x32.mat", root / "svhn" / f"{split}_32x32.mat"]
    return [_Found(info.title, (p,), lambda p=p: _read_svhn(p)) for p in paths if p.is_file()]


_LAYOUTS = {"mnist": (_mnist_layouts,), "cifar10": (_cifar_pickle_layouts, _jpeg_tar_layouts),
            "cifar100": (_cifar_pickle_layouts,), "svhn": (_svhn_layouts,)}


def _copies(info: DatasetInfo, split: str, root: Path) -> list[_Found]:
    """Every copy of the split in `root`, official layouts first."""
    return [found for layout in _LAYOUTS[info.name] for found in layout(root, split, info)]


_LAYOUT_HINTS = {
    "mnist": "MNIST/raw/*-ubyte[.gz] (torchvision) or mnist/*-ubyte.gz (mirror)",
    "cifar10": "cifar-10-batches-py/ (torchvision) or cifar10/cifar10-jpg.tar.gz (mirror)",
    "cifar100": "cifar-100-python/ (torchvision)",
    "svhn": "train_32x32.mat and test_32x32.mat (torchvision)",
}
_TORCHVISION = {"mnist": "MNIST", "cifar10": "CIFAR10", "cifar100": "CIFAR100", "svhn": "SVHN"}


def _read_found(found: _Found, root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    for f in found.files:
        _verify(f, root)
    return found.reader()


def _download(name: str, split: str, root: Path) -> None:
    """torchvision download of the official files into `root`."""
    import torchvision.datasets as tvd

    _prepare_cache()
    cls = getattr(tvd, _TORCHVISION[name])
    if name == "svhn":
        cls(str(root), split=split, download=True)
    else:
        cls(str(root), train=split == "train", download=True)


def _download_disabled() -> bool:
    return os.environ.get("FATLIB_NO_DOWNLOAD", "").strip().lower() not in ("", "0", "false", "no")


# ---------------------------------------------------------------- public API

def _check_request(name: str, split: str, n) -> tuple[DatasetInfo, int | None]:
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; known: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r} (data set {name!r})")
    if n is None:
        return DATASETS[name], None
    if isinstance(n, bool):
        raise ValueError(f"n must be a positive int or None, got {n!r}")
    try:
        n = operator.index(n)
    except TypeError:
        raise ValueError(f"n must be a positive int or None, got {n!r}") from None
    if n <= 0:
        raise ValueError(f"n must be a positive int or None (all), got {n} "
                         f"for {name} {split}")
    return DATASETS[name], n


def _take(found: _Found, images: torch.Tensor, labels: torch.Tensor, n: int | None):
    """The first n examples if this copy holds them (n=None: all, unless a subset), else None."""
    count = len(labels)
    if (n is None and found.subset) or (n is not None and n > count):
        return None
    if n is None or n == count:
        return images, labels
    return images[:n].clone(), labels[:n].clone()


def _roots() -> list[tuple[str, Path | None]]:
    """Data roots in the order they are searched: (name for messages, folder or None)."""
    env = os.environ.get("FATLIB_DATA_DIR")
    return [("$FATLIB_DATA_DIR", Path(env) if env else None),
            ("data/cache", _cache_dir()), ("data/embedded", repo_data_dir() / "embedded")]


def _try_download(name: str, split: str, n: int | None) -> str | None:
    """Download the official split into data/cache; None if done, else why not."""
    info = DATASETS[name]
    if _download_disabled():
        return "disabled (FATLIB_NO_DOWNLOAD=1)"
    if n is not None and n > info.size(split):
        return f"not tried: the official {split} split has {info.size(split)} examples"
    try:
        _download(name, split, _cache_dir())
    except Exception as e:  # offline, server down, disk full: report it, don't crash
        return f"failed ({type(e).__name__}: {' '.join(str(e).split())[:200]})"
    return None


def _search(info: DatasetInfo, split: str, n: int | None, where: str, root: Path | None,
            report: list[str]) -> tuple[torch.Tensor, torch.Tensor, str] | None:
    """(images, labels, source) from the first copy in `root` holding the request;
    else None, with a line per copy (or its absence) appended to `report`."""
    if root is None:
        report.append(f"{where}: not set")
        return None
    copies = _copies(info, split, root)
    if not copies:
        report.append(f"{where} ({root}): not present")
    for found in copies:
        images, labels = _read_found(found, root)
        taken = _take(found, images, labels, n)
        if taken is not None:
            source = f"{found.desc} from {where}, {split} split, {len(taken[1])} of {len(labels)}"
            return (*taken, source)
        report.append(f"{where} ({root}): {found.desc}, {len(labels)} examples"
                      f"{' (a subset of the split)' if found.subset else ''}")
    return None


def load_with_source(name: str, split: str, n: int | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """The first `n` examples of a split, and a human string saying where they came from.

    Args:
        name: 'mnist', 'cifar10', 'cifar100' or 'svhn'.
        split: 'train' or 'test'.
        n: number of examples (the first n, see the module docstring for the
            order), or None for the whole split.
    Returns:
        images uint8 [n, C, H, W], labels int64 [n], source str such as
        "CIFAR-10 (JPEG mirror) from $FATLIB_DATA_DIR, test split, 1000 of 10000".
    Raises:
        ValueError: unknown name, bad split, n <= 0, checksum mismatch.
        FileNotFoundError: no source holds n examples; the message lists
            what each source holds and how to get more.
    """
    info, n = _check_request(name, split, n)
    report: list[str] = []
    for where, root in _roots():
        found = _search(info, split, n, where, root, report)
        if found:
            return found
    failure = _try_download(name, split, n)
    if failure:
        report.append(f"torchvision download: {failure}")
    else:
        found = _search(info, split, n, "torchvision download", _cache_dir(), report)
        if found:
            return found
    asked = "the whole split (n=None)" if n is None else f"{n} examples"
    raise FileNotFoundError(
        f"cannot load {asked} of the {info.title} ({name!r}) {split} split. "
        f"Sources, in order:\n  " + "\n  ".join(report)
        + f"\nTo get more: set FATLIB_DATA_DIR to a folder with the official or mirror "
        f"layout ({_LAYOUT_HINTS[name]}), or allow the torchvision download "
        f"(unset FATLIB_NO_DOWNLOAD; needs a network); or ask for fewer examples.")


def load(name: str, split: str, n: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `n` examples of a split as uint8 images and int64 labels.

    Args:
        name: 'mnist', 'cifar10', 'cifar100' or 'svhn'.
        split: 'train' or 'test'.
        n: number of examples, or None for the whole split.
    Returns:
        images uint8 [n, C, H, W], labels int64 [n]. Use `load_with_source`
        to learn which source (and which CIFAR-10: official or JPEG mirror) was read.
    """
    images, labels, _ = load_with_source(name, split, n)
    return images, labels


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to float32 in [0, 1].

    Args:
        images: uint8 tensor, any shape (e.g. [N, C, H, W]).
    Returns:
        float32 tensor of the same shape, images / 255.
    """
    if images.dtype != torch.uint8:
        raise ValueError(f"to_float expects uint8 images, got {images.dtype}")
    return images.to(torch.float32).div_(255)


def augment_crop_flip(x: torch.Tensor, generator: torch.Generator | None = None,
                      padding: int = 4) -> torch.Tensor:
    """Random crop after zero padding, and random horizontal flip, per example.

    The standard CIFAR augmentation of the papers (4-pixel zero padding, crop
    back to H x W, flip with probability 1/2), vectorised: one gather.
    Args:
        x: images [B, C, H, W], uint8 or float.
        generator: torch.Generator on the CPU (None: torch's global RNG).
        padding: zero padding in pixels on each side (the crop offset is
            uniform in [0, 2*padding]).
    Returns:
        images of the same shape, dtype and device as x.
    """
    if x.dim() != 4:
        raise ValueError(f"augment_crop_flip expects [B, C, H, W], got shape {tuple(x.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    b, c, h, w = x.shape
    wp = w + 2 * padding
    dy = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * padding + 1, (b,), generator=generator)
    flip = torch.randint(0, 2, (b,), generator=generator).bool()
    cols = dx[:, None] + torch.arange(w)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    rows = dy[:, None] + torch.arange(h)
    index = (rows[:, :, None] * wp + cols[:, None, :]).reshape(b, 1, h * w).to(x.device)
    padded = F.pad(x, (padding,) * 4) if padding else x
    out = padded.reshape(b, c, -1).gather(2, index.expand(b, c, h * w))
    return out.reshape(b, c, h, w)


def _batch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator seeded from (seed, epoch), distinct for every pair."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(1, np.uint64)[0]
    return torch.Generator().manual_seed(int(state))


def batches(images: torch.Tensor, labels: torch.Tensor, batch_size: int, *,
            shuffle: bool = True, seed: int = 0, epoch: int = 0, augment: bool = False,
            drop_last: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Minibatches of an in-memory data set, deterministic given (seed, epoch).

    Args:
        images: uint8 [N, C, H, W] (or float in [0, 1]).
        labels: [N] integer labels.
        batch_size: examples per batch.
        shuffle: a random permutation per (seed, epoch), else the stored order.
        seed, epoch: non-negative ints fixing the permutation and augmentation.
        augment: random crop (4-pixel zero padding) + horizontal flip
            (`augment_crop_flip`), for CIFAR-style data.
        drop_last: drop the last batch if smaller than batch_size.
    Returns:
        iterator of (x float32 [B, C, H, W] in [0, 1], y int64 [B]).
    """
    if images.dim() != 4 or len(images) != len(labels):
        raise ValueError(f"need images [N, C, H, W] and labels [N], got shapes "
                         f"{tuple(images.shape)} and {tuple(labels.shape)}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if seed < 0 or epoch < 0:
        raise ValueError(f"seed and epoch must be >= 0, got seed={seed}, epoch={epoch}")
    return _iterate(images, labels, batch_size, shuffle, _batch_generator(seed, epoch),
                    augment, drop_last)


def _iterate(images, labels, batch_size, shuffle, generator, augment, drop_last):
    n = len(labels)
    order = torch.randperm(n, generator=generator) if shuffle else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            x, y = images[start:start + batch_size], labels[start:start + batch_size]
        else:
            idx = order[start:start + batch_size]
            x, y = images[idx], labels[idx]
        if augment:
            x = augment_crop_flip(x, generator=generator)
        x = to_float(x) if x.dtype == torch.uint8 else x.to(torch.float32)
        yield x, y.to(torch.int64)
