"""Regenerate data/embedded/ from the offline mirror, checking every checksum.

Usage: python data/make_embedded.py [MIRROR_DIR] [--out DIR] [--train N] [--test N]
(MIRROR_DIR defaults to $FATLIB_DATA_DIR; --out to data/embedded/ next to this file.)

Writes:
  mnist/*-ubyte.gz                    the mirror's four MNIST files, byte-identical copies
  cifar10/cifar10-jpg-subset.tar.gz   the first N train / N test images of the CIFAR-10
                                      JPEG mirror in fatlib.data's class-interleaved order
                                      (the i-th file by name of every class, i < N/10),
                                      original JPEG bytes, same train|test/<class>/<file>
                                      layout; tar and gzip headers are deterministic
                                      (mtime 0, uid 0, sorted names)
  SHA256SUMS                          sha256 of the files above
Then checks that fatlib.data reads the embedded CIFAR-10 subset as exactly the
mirror's prefix, and prints the sha256 lines for the table in fatlib/data.py.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import shutil
import sys
import tarfile
from pathlib import Path

import torch

from fatlib import data

MNIST_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
               "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
CIFAR_MIRROR = "cifar10/cifar10-jpg.tar.gz"
CIFAR_SUBSET = "cifar10/cifar10-jpg-subset.tar.gz"


def sha256(path: Path) -> str:
    """sha256 hex digest of a file."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def check_mirror(mirror: Path) -> None:
    """Verify the mirror files against its SHA256SUMS and fatlib.data's table."""
    sums = data._read_sums(mirror)
    for rel in [f"mnist/{f}" for f in MNIST_FILES] + [CIFAR_MIRROR]:
        got = sha256(mirror / rel)
        for origin, want in (("SHA256SUMS", sums.get(rel)), ("fatlib.data", data._KNOWN_SHA256[rel])):
            if want != got:
                sys.exit(f"{mirror / rel}: sha256 {got} does not match {origin} ({want})")


def write_subset_tar(mirror_tar: Path, out: Path, counts: dict[str, int]) -> None:
    """Write the first counts[split] images of each split (interleaved order) as a tar.gz."""
    classes = data.DATASETS["cifar10"].classes
    members = data._read_jpeg_tar_members(mirror_tar, classes)
    chosen = []
    for split, n in counts.items():
        if n % len(classes) or n > len(members[split]):
            sys.exit(f"--{split} must be a multiple of 10 and <= {len(members[split])}, got {n}")
        chosen += [(f"{split}/{classes[c]}/{file}", blob) for c, file, blob in members[split][:n]]
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw,
                                               compresslevel=9, mtime=0) as gz, \
            tarfile.open(fileobj=gz, mode="w", format=tarfile.USTAR_FORMAT) as tf:
        for name, blob in sorted(chosen):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(blob), 0o644  # mtime 0, uid 0: deterministic
            tf.addfile(info, io.BytesIO(blob))
    os.replace(tmp, out)


def check_prefix(mirror: Path, out_dir: Path, counts: dict[str, int]) -> None:
    """The embedded subset must decode to exactly the mirror's first images."""
    for split, n in counts.items():
        os.environ["FATLIB_DATA_DIR"] = str(mirror)
        x_m, y_m, src_m = data.load_with_source("cifar10", split, n)
        found = next(f for f in data._jpeg_tar_layouts(out_dir, split, data.DATASETS["cifar10"])
                     if f.subset)
        x_e, y_e = data._read_found(found, out_dir)
        if not (torch.equal(x_m, x_e) and torch.equal(y_m, y_e)):
            sys.exit(f"embedded {split} subset differs from the mirror prefix ({src_m})")
        per_class = torch.bincount(y_e, minlength=10).tolist()
        print(f"  {split}: {n} images identical to the mirror prefix, per class {per_class}")


def main(argv: list[str] | None = None) -> None:
    """Command line entry point (see the module docstring)."""
    here = Path(__file__).resolve().parent
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mirror", nargs="?", default=os.environ.get("FATLIB_DATA_DIR"))
    p.add_argument("--out", default=str(here / "embedded"))
    p.add_argument("--train", type=int, default=10000)
    p.add_argument("--test", type=int, default=2000)
    args = p.parse_args(argv)
    if not args.mirror:
        sys.exit("give the mirror folder as argument or set FATLIB_DATA_DIR")
    mirror, out = Path(args.mirror), Path(args.out)
    counts = {"train": args.train, "test": args.test}
    check_mirror(mirror)
    (out / "mnist").mkdir(parents=True, exist_ok=True)
    (out / "cifar10").mkdir(parents=True, exist_ok=True)
    for f in MNIST_FILES:
        shutil.copyfile(mirror / "mnist" / f, out / "mnist" / f)
    write_subset_tar(mirror / CIFAR_MIRROR, out / CIFAR_SUBSET, counts)
    rels = [f"mnist/{f}" for f in MNIST_FILES] + [CIFAR_SUBSET]
    lines = [f"{sha256(out / rel)}  {rel}" for rel in rels]
    (out / "SHA256SUMS").write_text("\n".join(lines) + "\n")
    check_prefix(mirror, out, counts)
    print(f"wrote {out}:")
    for rel, line in zip(rels, lines):
        print(f"  {(out / rel).stat().st_size:>10,d} bytes  {line}")


if __name__ == "__main__":
    main()
