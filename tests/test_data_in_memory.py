"""Splits decoded into memory: the same pixels as the streaming pipeline, limits checked first."""

import numpy as np
import pytest
import tensorflow as tf

import trainer_runs
from keras_preact.data import InMemorySplit, build_dataset, load_pixels


def test_eval_batches_equal_the_streaming_evaluation_pipeline():
    split = InMemorySplit.load("cifar10_sample", "test")
    assert split.images.dtype == np.uint8 and split.images.shape == (1000, 32, 32, 3) and len(split) == 1000
    streamed, _ = build_dataset("cifar10_sample", "test", batch_size=100, training=False)
    for (a, la), (b, lb) in zip(split.eval_batches(100), streamed):
        np.testing.assert_array_equal(la.numpy(), lb.numpy())
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-5)
    assert split.info.preprocessing == "cifar" and split.info.num_classes == 10


def test_train_batches_are_normalised_augmented_and_checked():
    split = InMemorySplit.load("cifar10_sample", "test")
    batches = split.train_batches(50, seed=1)
    images, labels = next(iter(batches(0)))
    assert images.shape == (50, 32, 32, 3) and labels.dtype == tf.int32
    assert abs(float(tf.reduce_mean(images))) < 0.3  # normalised (zero padding pulls towards 0)
    assert split.steps_per_epoch(50) == 20
    with pytest.raises(ValueError, match="larger than the 1000 examples"):
        split.train_batches(1001)
    with pytest.raises(ValueError, match="augmentation"):
        split.train_batches(10, augment="inception")


def test_limits_are_checked_before_decoding(tmp_path):
    with pytest.raises(ValueError, match=r"1000 images of 32x32 need 3 MiB in memory, above the limit of 0 MiB"):
        load_pixels("cifar10_sample", "test", max_bytes=1000)
    folder = trainer_runs.make_image_folder(tmp_path, {"train": 2}, size=100)
    with pytest.raises(ValueError, match="call for the 'imagenet_224' preprocessing, not 'cifar'"):
        load_pixels(folder, "train", only_preprocessing="cifar")


def test_bad_files_are_skipped_and_counted(tmp_path):
    folder = trainer_runs.make_image_folder(tmp_path, {"train": 3})
    (tmp_path / "train" / "cat" / "broken.jpg").write_bytes(b"not an image")
    split = InMemorySplit.load(folder, "train")
    assert len(split) == 9 and split.info.bad_files.count == 1
    assert split.info.bad_files.files[0].endswith("broken.jpg")
    with pytest.raises(tf.errors.InvalidArgumentError, match="broken.jpg"):
        InMemorySplit.load(folder, "train", strict=True)


def test_constructor_checks_shapes():
    info = InMemorySplit.load("cifar10_sample", "test").info
    with pytest.raises(ValueError, match="uint8"):
        InMemorySplit(np.zeros((2, 32, 32, 3), np.float32), np.zeros(2), info)
    with pytest.raises(ValueError, match="labels"):
        InMemorySplit(np.zeros((2, 32, 32, 3), np.uint8), np.zeros(3), info)
