"""Regenerate ``assets/cifar10_sample.tar.gz`` from the JPEG copy of CIFAR-10.

    python -m keras_preact.data.make_sample --source ../shared/data/cifar10-jpeg

Reads ``cifar10-train.tar.gz`` and ``cifar10-test.tar.gz`` (layout ``<split>/<class>/<NNNN>.jpg``)
and keeps, for every class, ``--train-per-class`` training and ``--test-per-class`` test images
chosen by a seeded random draw over the sorted file names: class-balanced, deterministic, and
spread over the whole split rather than its first files. The archive is byte-reproducible
(sorted members, fixed owners and times, gzip time 0); the script prints its SHA256, which
must match ``SAMPLE_SHA256`` in :mod:`keras_preact.data.sample`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import random
import tarfile

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
SEED = 2016  # the paper's year; any fixed value gives a reproducible draw


def read_split(tar_path: str, split: str) -> dict:
    """``{(class, file name): bytes}`` for every JPEG of ``split`` in the tarball."""
    files = {}
    with tarfile.open(tar_path, "r:gz") as tar:
        for member in tar:
            parts = member.name.strip("./").split("/")
            if member.isfile() and len(parts) == 3 and parts[0] == split and parts[2].endswith(".jpg"):
                files[(parts[1], parts[2])] = tar.extractfile(member).read()
    return files


def choose(files: dict, per_class: int, rng: random.Random) -> list:
    chosen = []
    for cls in CLASSES:
        names = sorted(name for (c, name) in files if c == cls)
        if len(names) < per_class:
            raise ValueError(f"Class {cls} has {len(names)} images, fewer than {per_class}.")
        chosen.extend((cls, name) for name in sorted(rng.sample(names, per_class)))
    return chosen


def write_archive(out_path: str, members: list) -> str:
    """Write ``[(arcname, bytes)]`` as a reproducible tar.gz; return its SHA256."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for arcname, data in sorted(members):
            info = tarfile.TarInfo(arcname)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", compresslevel=9, mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    blob = packed.getvalue()
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(blob)
    os.replace(tmp, out_path)
    return hashlib.sha256(blob).hexdigest()


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--source", default="../shared/data/cifar10-jpeg", help="folder with cifar10-{train,test}.tar.gz"
    )
    parser.add_argument("--train-per-class", type=int, default=500)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument(
        "--out", default=os.path.join(os.path.dirname(__file__), "assets", "cifar10_sample.tar.gz")
    )
    args = parser.parse_args(argv)
    rng = random.Random(SEED)
    members = []
    for split, per_class in (("train", args.train_per_class), ("test", args.test_per_class)):
        files = read_split(os.path.join(args.source, f"cifar10-{split}.tar.gz"), split)
        for cls, name in choose(files, per_class, rng):
            members.append((f"{split}/{cls}/{name}", files[(cls, name)]))
        print(f"{split}: {per_class} per class, {per_class * len(CLASSES)} images")
    digest = write_archive(args.out, members)
    print(f"wrote {args.out} ({os.path.getsize(args.out):,} bytes)\nSHA256 {digest}")


if __name__ == "__main__":
    main()
