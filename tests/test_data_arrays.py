"""The NumPy pipeline (keras_preact.data.arrays): splits as arrays, batches a function of (seed, step).

Synthetic image folders are written as PNG, so the decoded pixels are exactly the ones written.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from PIL import Image

from keras_preact.data import arrays
from keras_preact.data.arrays import ArraySplit, TrainSequence, normalize_cifar
from keras_preact.data.constants import CIFAR_MEAN, CIFAR_STD
from keras_preact.data.folders import list_image_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_png_folder(root, per_class, split="train", size=(32, 32), seed=0):
    """``root/<split>/<class>/<i>.png`` of random pixels; returns ``{path: pixels}``."""
    rng = np.random.default_rng(seed)
    written = {}
    for name, count in per_class.items():
        folder = os.path.join(root, split, name)
        os.makedirs(folder, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
            path = os.path.join(folder, f"{i:03d}.png")
            Image.fromarray(pixels).save(path)
            written[path] = pixels
    return written


def indexed_split(count=10, seed=0):
    """A split of ``count`` random images whose label is the example's index (to see the order)."""
    images = np.random.default_rng(seed).integers(0, 256, (count, 32, 32, 3), dtype=np.uint8)
    return ArraySplit(images, np.arange(count), [str(i) for i in range(count)])


def crops_of(image):
    """Every pad-4 crop of a normalised ``[32, 32, 3]`` image and of its mirror image."""
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    for y in range(9):
        for x in range(9):
            crop = padded[y:y + 32, x:x + 32]
            yield crop
            yield crop[:, ::-1]


@pytest.fixture(scope="module")
def sample_test_split():
    return ArraySplit.load("cifar10_sample", "test")


def test_folder_labels_and_pixels_are_those_of_the_shared_listing(tmp_path, caplog):
    written = write_png_folder(tmp_path, {"ship": 2, "cat": 3, "dog": 1})
    (tmp_path / "train" / "cat" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / "cat" / ".hidden.png").write_bytes(b"ignored")
    (tmp_path / "train" / ".cache").mkdir()
    split = ArraySplit.load(str(tmp_path), "train")
    paths, labels, class_names = list_image_folder(str(tmp_path), "train")
    assert split.class_names == class_names == ["cat", "dog", "ship"] and split.num_classes == 3
    assert split.labels.dtype == np.int32 and split.labels.tolist() == labels
    assert split.images.dtype == np.uint8 and split.images.shape == (6, 32, 32, 3)
    np.testing.assert_array_equal(split.images, np.stack([written[p] for p in paths]))
    assert split.bad_files.count == 0 and split.split == "train"
    assert split.source == f"folder:{tmp_path}"
    assert ArraySplit.load(f"folder:{tmp_path}", "train").labels.tolist() == labels


def test_the_shipped_sample_loads(sample_test_split):
    train = ArraySplit.load("cifar10_sample", "train")
    assert train.images.shape == (5000, 32, 32, 3) and len(sample_test_split) == 1000
    assert train.num_classes == sample_test_split.num_classes == 10
    assert np.bincount(train.labels).tolist() == [500] * 10
    assert np.bincount(sample_test_split.labels).tolist() == [100] * 10
    assert train.class_names[0] == "airplane" and train.bad_files.count == 0


def test_batches_are_a_function_of_seed_and_step():
    split = indexed_split(40)
    again = indexed_split(40)  # a fresh object: nothing cached is shared
    first = split.train_batch(3, 8, seed=5)
    np.testing.assert_array_equal(first[0], again.train_batch(3, 8, seed=5)[0])
    np.testing.assert_array_equal(first[1], again.train_batch(3, 8, seed=5)[1])
    assert first[0].dtype == np.float32 and first[0].shape == (8, 32, 32, 3)
    assert first[1].dtype == np.int32 and first[1].shape == (8,)
    assert not np.array_equal(first[0], split.train_batch(3, 8, seed=6)[0])
    assert not np.array_equal(first[0], split.train_batch(4, 8, seed=5)[0])
    # Resumed at step 7 (inside the second epoch of 5 steps): the tail of the run from step 0.
    whole = split.train_sequence(8, seed=5, first_step=0, steps=12)
    resumed = again.train_sequence(8, seed=5, first_step=7, steps=5)
    assert isinstance(resumed, TrainSequence) and len(resumed) == 5
    for i in range(5):
        for a, b in zip(whole[7 + i], resumed[i]):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(IndexError):
        resumed[5]


def test_shards_concatenate_to_the_global_batch():
    split = indexed_split(50)
    for step in (0, 4, 9):
        images, labels = split.train_batch(step, 12, seed=2)
        for count in (2, 3, 4):
            parts = [split.train_batch(step, 12, seed=2, shard=(i, count)) for i in range(count)]
            assert parts[0][0].shape == (12 // count, 32, 32, 3)
            np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), images)
            np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), labels)
    sequence = split.train_sequence(12, seed=2, first_step=4, steps=1, shard=(1, 3))
    np.testing.assert_array_equal(sequence[0][0], split.train_batch(4, 12, seed=2)[0][4:8])
    with pytest.raises(ValueError, match="not divisible by the 5 shards"):
        split.train_batch(0, 12, shard=(0, 5))
    with pytest.raises(ValueError, match="0 <= index < count"):
        split.train_batch(0, 12, shard=(2, 2))


def test_augmentation_is_a_zero_padded_crop_of_4_pixels_and_a_flip():
    colour = np.array([200, 10, 90], np.uint8)
    constant = ArraySplit(np.broadcast_to(colour, (64, 32, 32, 3)).copy(), np.zeros(64), ["c"])
    normalised_colour = (colour.astype(np.float32) - np.float32(CIFAR_MEAN)) / np.float32(CIFAR_STD)
    images, _ = constant.train_batch(0, 64, seed=3)
    borders = set()
    for image in images:
        np.testing.assert_array_equal(image[4:28, 4:28], np.broadcast_to(normalised_colour, (24, 24, 3)))
        padding = np.all(image == 0, axis=-1)
        assert np.array_equal(padding | np.all(image == normalised_colour, axis=-1), np.ones((32, 32), bool))
        rows, columns = np.all(padding, axis=1), np.all(padding, axis=0)
        assert np.array_equal(padding, rows[:, None] | columns[None, :])  # whole rows and columns only
        top, bottom = rows[:4].sum(), rows[28:].sum()
        assert rows[4:28].sum() == 0 and top * bottom == 0 and top + bottom <= 4
        assert columns[4:28].sum() == 0 and columns[:4].sum() * columns[28:].sum() == 0
        borders.add((int(top) - int(bottom), int(columns[:4].sum()) - int(columns[28:].sum())))
    assert len(borders) > 10  # the offsets vary over the batch
    # Real pixels: each augmented image is one crop of its padded image or of the mirror image.
    split = indexed_split(16)
    images, labels = split.train_batch(1, 16, seed=0)
    offsets, flips = arrays.augmentation_draws(0, 1, 16)
    assert 0 < flips.sum() < 16
    for image, label, (y, x), flip in zip(images, labels, offsets, flips):
        original = normalize_cifar(split.images[label])
        padded = np.pad(original, ((4, 4), (4, 4), (0, 0)))
        expected = padded[y:y + 32, x:x + 32]
        np.testing.assert_array_equal(image, expected[:, ::-1] if flip else expected)
        assert sum(np.array_equal(image, crop) for crop in crops_of(original)) >= 1


def test_without_augmentation_a_batch_is_the_normalised_images_in_epoch_order():
    split = indexed_split(10)
    order = split.epoch_order(1, seed=4)
    images, labels = split.train_batch(4, 3, seed=4, augment=False)  # 3 steps an epoch: epoch 1, batch 1
    np.testing.assert_array_equal(labels, order[3:6])
    expected = (split.images[order[3:6]].astype(np.float32) - np.float32(CIFAR_MEAN)) / np.float32(CIFAR_STD)
    np.testing.assert_array_equal(images, expected)


def test_each_epoch_is_a_permutation_without_the_partial_batch():
    split = indexed_split(10)
    assert split.steps_per_epoch(3) == 3
    epochs = []
    for epoch in range(3):
        seen = np.concatenate([split.train_batch(epoch * 3 + b, 3, seed=1)[1] for b in range(3)])
        assert len(set(seen.tolist())) == 9
        np.testing.assert_array_equal(seen, split.epoch_order(epoch, seed=1)[:9])
        assert sorted(split.epoch_order(epoch, seed=1).tolist()) == list(range(10))
        epochs.append(seen.tolist())
    assert epochs[0] != epochs[1] != epochs[2]
    with pytest.raises(ValueError, match="larger than the 10 examples"):
        split.train_batch(0, 11)


def test_undecodable_files_are_skipped_and_counted_or_fail_when_strict(tmp_path, caplog):
    write_png_folder(tmp_path, {"cat": 2, "dog": 2})
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"not an image")
    good = (tmp_path / "train" / "dog" / "000.png").read_bytes()
    (tmp_path / "train" / "dog" / "truncated.png").write_bytes(good[: len(good) // 2])
    with caplog.at_level(logging.WARNING, logger="keras_preact.data"):
        split = ArraySplit.load(str(tmp_path), "train")
    assert len(split) == 4 and split.labels.tolist() == [0, 0, 1, 1]
    assert split.bad_files.count == 2
    assert [os.path.basename(f) for f in split.bad_files.files] == ["broken.png", "truncated.png"]
    assert sum("broken.png" in r.getMessage() for r in caplog.records) == 1
    with pytest.raises(ValueError, match="Cannot decode image file .*broken.png"):
        ArraySplit.load(str(tmp_path), "train", strict=True)


def test_images_other_than_32x32_are_refused(tmp_path):
    write_png_folder(tmp_path, {"cat": 2})
    write_png_folder(tmp_path / "big", {"cat": 1}, size=(33, 32))
    os.replace(tmp_path / "big" / "train" / "cat" / "000.png", tmp_path / "train" / "cat" / "wide.png")
    with pytest.raises(ValueError, match=r"wide.png is 33x32 pixels .*32x32 images only"):
        ArraySplit.load(str(tmp_path), "train")


def test_a_split_above_max_bytes_is_refused_before_decoding(tmp_path, monkeypatch):
    write_png_folder(tmp_path, {"cat": 3})

    def no_decoding(*args):
        raise AssertionError("decoded before checking the size")

    monkeypatch.setattr(arrays, "_decode_image_file", no_decoding)
    with pytest.raises(ValueError, match=r"3 images of 32x32 need 0 MiB in memory, above the limit of 0 MiB"):
        ArraySplit.load(str(tmp_path), "train", max_bytes=3 * 32 * 32 * 3 - 1)
    with pytest.raises(ValueError, match="Unknown source 'imagenet2012'"):
        ArraySplit.load("imagenet2012", "train")


def test_tfds_names_without_tensorflow_say_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # `import tensorflow` fails
    with pytest.raises(ValueError) as error:
        ArraySplit.load("cifar10", "train")
    message = str(error.value)
    assert "\n" not in message and "TFDS datasets needs TensorFlow" in message
    assert 'pip install "keras_preact[tensorflow]"' in message and "image folder" in message


def test_tfds_names_are_read_through_tensorflow_when_it_is_installed():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
        split = ArraySplit.load("cifar10", "test")
        raw = list(tfds.load("cifar10", split="test"))  # the same mocked records, decoded by TFDS
    assert split.images.shape == (12, 32, 32, 3) and split.num_classes == 10
    assert (split.source, split.split, split.bad_files.count) == ("cifar10", "test", 0)
    np.testing.assert_array_equal(split.images, np.stack([example["image"].numpy() for example in raw]))
    np.testing.assert_array_equal(split.labels, [int(example["label"]) for example in raw])


def batch_digest(split):
    digest = hashlib.sha256()
    for shard in ((0, 1), (1, 2)):
        for array in split.train_batch(7, 4, seed=11, shard=shard):
            digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="needs JAX ([jax] extra)")
def test_jax_imports_and_builds_batches_without_tensorflow_and_gets_the_same_batches(tmp_path):
    write_png_folder(tmp_path, {"cat": 3, "dog": 3})
    code = f"""
import sys
import hashlib
import numpy as np
import keras_preact.data.arrays
from keras_preact.data import ArraySplit, list_image_folder
{inspect.getsource(batch_digest)}
split = ArraySplit.load({str(tmp_path)!r}, "train")
print("tensorflow" in sys.modules, batch_digest(split))
"""
    environment = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    environment.update(KERAS_BACKEND="jax", PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, "-c", code], env=environment, cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["False", batch_digest(ArraySplit.load(str(tmp_path), "train"))]


def test_eval_batches_are_the_split_in_order_the_last_one_partial(sample_test_split):
    batches = sample_test_split.eval_batches(300)
    assert len(batches) == 4
    images = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    assert [b[1].shape[0] for b in batches] == [300, 300, 300, 100]
    np.testing.assert_array_equal(labels, sample_test_split.labels)
    np.testing.assert_array_equal(images, normalize_cifar(sample_test_split.images))
    flipped = sample_test_split.eval_batches(300, flip=True)[3][0]
    np.testing.assert_array_equal(flipped, images[900:, :, ::-1])
    assert flipped.flags.c_contiguous


def test_model_fit_takes_the_training_sequence(sample_test_split):
    model = keras.Sequential([keras.Input((32, 32, 3)), keras.layers.Flatten(), keras.layers.Dense(10)])
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    sequence = sample_test_split.train_sequence(16, seed=0, first_step=0, steps=2)
    history = model.fit(sequence, epochs=1, shuffle=False, verbose=0)
    assert len(history.history["loss"]) == 1 and np.isfinite(history.history["loss"][0])
    loss, accuracy = model.evaluate(sample_test_split.eval_batches(500), verbose=0)
    assert np.isfinite(loss) and 0 <= accuracy <= 1
