"""``data/sample.py``: the CIFAR-10 sample shipped in the package, checked and extracted once."""

import os

import numpy as np
import pytest

from keras_preact.data import build_dataset, cifar10_sample_dir
from keras_preact.data import sample as sample_lib


def test_packaged_sample_is_checked_extracted_once_and_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_PREACT_CACHE", str(tmp_path / "cache"))
    assert sample_lib.sha256_of(sample_lib.SAMPLE_ARCHIVE) == sample_lib.SAMPLE_SHA256
    root = cifar10_sample_dir()
    assert cifar10_sample_dir() == root
    for split, count in sample_lib.SAMPLE_SPLITS.items():
        classes = sorted(os.listdir(os.path.join(root, split)))
        assert len(classes) == 10
        sizes = {len(os.listdir(os.path.join(root, split, c))) for c in classes}
        assert sizes == {count // 10}  # class-balanced
    assert [n for n in os.listdir(tmp_path / "cache") if n.startswith(".")] == []  # no staging left
    ds, info = build_dataset("cifar10_sample", "test", batch_size=250, training=False)
    assert info.num_examples == 1000 and info.class_names[0] == "airplane" and info.class_names[-1] == "truck"
    x, y = next(iter(ds))
    assert x.shape == (250, 32, 32, 3)
    # File order: the first 250 test images are the 100 airplanes, 100 automobiles, 50 birds.
    np.testing.assert_array_equal(y.numpy(), np.repeat([0, 1, 2], [100, 100, 50]))


def test_corrupt_sample_archive_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_PREACT_CACHE", str(tmp_path / "cache"))
    fake = tmp_path / "sample.tar.gz"
    fake.write_bytes(b"tampered")
    monkeypatch.setattr(sample_lib, "SAMPLE_ARCHIVE", str(fake))
    with pytest.raises(OSError, match="corrupt"):
        cifar10_sample_dir()
