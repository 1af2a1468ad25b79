"""``data/pipeline.py``: build_dataset on image folders (batches, determinism, bad input).

TFDS sources: test_data_sources.py; the packaged sample: test_data_sample.py."""

import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_preact.data import build_dataset, pipeline

CLASSES = ("cat", "dog", "emu")


def write_folder(root, split="train", per_class=6, size=(32, 32), fmt="jpg"):
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        os.makedirs(root / split / name, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
            pixels[..., c] = 250  # a class colour, so labels can be checked from pixels
            Image.fromarray(pixels).save(root / split / name / f"{i:03d}.{fmt}", quality=95)
    return root


@pytest.fixture
def folder(tmp_path):
    return write_folder(tmp_path / "data")


def batches(ds):
    return [(x.numpy(), y.numpy()) for x, y in ds]


def class_colour(images):
    """The channel each image is brightest in on average: its label in ``write_folder``."""
    return images.mean(axis=(1, 2)).argmax(axis=1)


def test_folder_training_batches(folder):
    ds, info = build_dataset(f"folder:{folder}", "train", batch_size=4, training=True, seed=1)
    assert info.class_names == list(CLASSES) and info.num_classes == 3 and info.num_examples == 18
    assert info.preprocessing == "cifar" and info.augment == "cifar" and info.image_size == (32, 32)
    out = batches(ds)
    assert len(out) == 4  # 18 // 4, remainder dropped when training
    for x, y in out:
        assert x.shape == (4, 32, 32, 3) and x.dtype == np.float32
        assert y.shape == (4,) and y.dtype == np.int32
        assert np.abs(x).max() < 3.0
        # Shuffled and augmented, each image keeps its label: its class colour is its brightest.
        np.testing.assert_array_equal(class_colour(x), y)


def test_same_seed_same_batches_other_seed_other_batches(folder):
    def run(seed):
        return batches(build_dataset(str(folder), "train", batch_size=6, training=True, seed=seed)[0])

    a, b, c = run(3), run(3), run(4)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not all(np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))


def test_epochs_differ_but_are_reproducible(folder):
    def two_epochs():
        ds = build_dataset(folder, "train", batch_size=18, training=True, seed=0)[0]
        return [next(iter(ds))[0].numpy() for _ in range(2)]

    first, second = two_epochs(), two_epochs()
    assert not np.array_equal(first[0], first[1])
    np.testing.assert_array_equal(first[1], second[1])


def test_eval_is_in_file_order_with_exact_labels(folder):
    ds, info = build_dataset(folder, "train", batch_size=5, training=False)
    out = batches(ds)
    assert [len(y) for _, y in out] == [5, 5, 5, 3]  # remainder kept for evaluation
    labels = np.concatenate([y for _, y in out])
    np.testing.assert_array_equal(labels, np.repeat([0, 1, 2], 6))
    images = np.concatenate([x for x, _ in out])
    # The class colour channel is the brightest on average: labels match images.
    np.testing.assert_array_equal(class_colour(images), labels)
    again = np.concatenate([x for x, _ in build_dataset(folder, "train", batch_size=5, training=False)[0]])
    np.testing.assert_array_equal(images, again)


def test_imagenet_style_folder_with_png_and_inception_crops(tmp_path):
    root = write_folder(tmp_path / "big", per_class=2, size=(90, 120), fmt="png")
    ds, info = build_dataset(root, "train", batch_size=3, training=True, augment="inception", seed=0)
    assert info.preprocessing == "imagenet_224" and info.image_size == (224, 224)
    x, y = next(iter(ds))
    assert x.shape == (3, 224, 224, 3)
    np.testing.assert_array_equal(class_colour(x.numpy()), y.numpy())
    ds, info = build_dataset(root, "train", batch_size=6, training=False, preprocessing="imagenet_320")
    x, y = next(iter(ds))
    assert x.shape == (6, 320, 320, 3) and info.augment == "none"
    np.testing.assert_array_equal(y.numpy(), [0, 0, 1, 1, 2, 2])
    np.testing.assert_array_equal(class_colour(x.numpy()), y.numpy())


def add_bad_files(folder):
    (folder / "train" / "dog" / "notes.jpg").write_text("not an image at all")
    good = (folder / "train" / "cat" / "000.jpg").read_bytes()
    (folder / "train" / "cat" / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "train" / "emu" / "README.txt").write_text("ignored: no image extension")


def test_bad_files_are_skipped_counted_and_logged_once(folder, caplog):
    add_bad_files(folder)
    ds, info = build_dataset(folder, "train", batch_size=4, training=True, seed=0, drop_remainder=False)
    assert info.num_examples == 20  # listed; README.txt is not an image file
    with caplog.at_level(logging.WARNING, logger="keras_preact.data"):
        for _ in range(2):  # two epochs: each bad file is met twice but logged once
            assert sum(len(y) for _, y in batches(ds)) == 18
    assert info.bad_files.count == 2 and info.bad_files.skips == 4
    assert sorted(os.path.basename(f) for f in info.bad_files.files) == ["notes.jpg", "truncated.jpg"]
    logged = [r.getMessage() for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(logged) == 2 and any("notes.jpg" in m for m in logged)


def test_bad_files_at_either_end_and_in_long_runs_are_caught(folder, monkeypatch):
    monkeypatch.setattr(pipeline, "_HISTORY", 2)  # so a run of 3 bad files overflows the history
    (folder / "train" / "cat" / "0_first.jpg").write_bytes(b"bad")  # first file in order
    for i in range(3):
        (folder / "train" / "emu" / f"zz{i}.jpg").write_bytes(b"bad")  # the last three files
    ds, info = build_dataset(folder, "train", batch_size=32, training=False)
    labels = np.concatenate([y for _, y in batches(ds)])
    np.testing.assert_array_equal(labels, np.repeat([0, 1, 2], 6))
    assert sorted(os.path.basename(f) for f in info.bad_files.files) == ["0_first.jpg", "zz1.jpg", "zz2.jpg"]
    assert info.bad_files.unnamed == 1 and info.bad_files.skips == 4


def test_strict_mode_fails_with_the_file_name(folder):
    add_bad_files(folder)
    ds, _ = build_dataset(folder, "train", batch_size=4, training=False, strict=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"notes\.jpg|truncated\.jpg"):
        batches(ds)


def test_missing_root_split_and_empty_inputs_fail_fast(tmp_path, folder):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_dataset(tmp_path / "nowhere", "train", batch_size=2, training=True)
    with pytest.raises(FileNotFoundError, match="Splits found under .*: train"):
        build_dataset(folder, "validation", batch_size=2, training=True)
    (folder / "empty_split").mkdir()
    with pytest.raises(ValueError, match="Split 'empty_split' is empty"):
        build_dataset(folder, "empty_split", batch_size=2, training=True)
    (folder / "train" / "yak").mkdir()
    (folder / "train" / "yak" / "list.csv").write_text("a,b")
    with pytest.raises(ValueError, match="Empty class folder.*yak"):
        build_dataset(folder, "train", batch_size=2, training=True)


def test_bad_arguments_name_the_choices(folder):
    with pytest.raises(ValueError, match="Valid choices: 'cifar10'"):
        build_dataset("cifar11", "train", batch_size=2, training=True)
    with pytest.raises(ValueError, match="Valid choices"):
        build_dataset(folder, "train", batch_size=2, training=True, preprocessing="imagenet")
    with pytest.raises(ValueError, match="batch_size"):
        build_dataset(folder, "train", batch_size=0, training=True)


# --- the image-safety guard in the training pipeline --------------------------------


def write_bomb_png(path, side=16000):
    """A real, valid PNG of ``side x side`` black RGB pixels (768 MB decoded), under 1 MB on disk.

    Written row by row through one zlib stream, so making it needs no big buffer either.
    """
    import struct
    import zlib

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    row = b"\0" * (1 + 3 * side)  # filter byte + pixels
    body = b"".join(compressor.compress(row) for _ in range(side)) + compressor.flush()
    with open(path, "wb") as handle:
        handle.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))


BOMB_PROBE = r"""
import json, resource, sys
from keras_preact import data
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
ds, info = data.build_dataset(sys.argv[1], "train", batch_size=4, training=True, seed=0)
labels = [int(l) for _, batch in ds for l in batch.numpy()]
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"rise_mb": (after - before) / 1024, "images": len(labels), "bad": info.bad_files.files,
                  "skips": info.bad_files.skips}))
"""


@pytest.mark.slow
def test_a_decompression_bomb_in_a_training_folder_is_skipped_and_counted(tmp_path):
    """16000x16000 declared, < 1 MB on disk: refused from its header, memory barely moves."""
    import json
    import subprocess
    import sys

    import trainer_runs

    root = trainer_runs.make_image_folder(tmp_path, {"train": 4}, classes=("cat", "dog"))
    bomb = tmp_path / "train" / "cat" / "0002_bomb.png"
    write_bomb_png(bomb)
    assert bomb.stat().st_size < 1_000_000
    done = subprocess.run([sys.executable, "-c", BOMB_PROBE, root], capture_output=True, text=True,
                          env=trainer_runs.env(), cwd=trainer_runs.ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["images"] == 8 and result["skips"] == 1  # 9 files, the bomb dropped
    assert [os.path.basename(f) for f in result["bad"]] == ["0002_bomb.png"]
    assert result["rise_mb"] < 200, result


def test_strict_fails_on_a_bomb_naming_it(tmp_path):
    import trainer_runs

    root = trainer_runs.make_image_folder(tmp_path, {"train": 2}, classes=("cat", "dog"))
    bomb = tmp_path / "train" / "dog" / "bomb.png"
    write_bomb_png(bomb, side=5000)  # 25 M pixels declared: above the 16.8 M serving limit
    ds, _ = build_dataset(root, "train", batch_size=2, training=True, seed=0, strict=True)
    with pytest.raises(tf.errors.InvalidArgumentError, match="bomb.png"):
        for _ in ds:
            pass
