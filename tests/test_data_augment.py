"""Training augmentation: crop statistics, flips, determinism under a seed."""

import numpy as np
import pytest
import tensorflow as tf

from keras_preact.data import CIFAR_MEAN, CIFAR_STD, color_augment, inception_crop_window, preprocess_for_train
from keras_preact.data import scale_crop_window
from keras_preact.data.augment import check_augment, cifar_augment, cifar_augment_batch, flip

N = 2000


def sample(fn, n=N):
    """Run ``fn(seed)`` for ``n`` different seeds, batched through tf.data (fast)."""
    ds = tf.data.Dataset.range(n).map(lambda i: fn(tf.stack([i, tf.constant(7, tf.int64)])))
    return tf.nest.map_structure(lambda t: t.numpy(), ds.batch(n).get_single_element())


def test_inception_crops_cover_the_area_and_aspect_ranges():
    h, w = 300, 400
    y, x, ch, cw = (np.asarray(v) for v in sample(lambda s: tf.stack(inception_crop_window(h, w, s))).T)
    assert (y >= 0).all() and (x >= 0).all() and (y + ch <= h).all() and (x + cw <= w).all()
    area = ch * cw / (h * w)
    aspect = cw / ch
    # Windows are whole pixels, so allow one pixel of rounding on each side.
    assert area.min() >= 0.08 * 0.97 and area.max() <= 1.0
    assert aspect.min() >= 0.75 * 0.98 and aspect.max() <= (4 / 3) * 1.02
    # ...and the whole ranges are used, not a corner of them.
    assert area.min() < 0.12 and area.max() > 0.85
    assert aspect.min() < 0.78 and aspect.max() > 1.28
    assert np.mean(aspect < 1) > 0.3 and np.mean(aspect > 1) > 0.3


def test_inception_crop_falls_back_to_a_centre_crop():
    # A 10x1000 strip has no window with area >= 8% and aspect <= 4/3.
    window = [int(v) for v in inception_crop_window(10, 1000, tf.constant([1, 2]))]
    assert window == [0, 493, 10, 13]


def test_scale_crops_match_shorter_side_256_to_480():
    h, w = 300, 400
    y, x, ch, cw = (np.asarray(v) for v in sample(lambda s: tf.stack(scale_crop_window(h, w, s))).T)
    assert (ch == cw).all()
    assert (y >= 0).all() and (x >= 0).all() and (y + ch <= h).all() and (x + cw <= w).all()
    implied_shorter_side = 224 * 300 / ch
    assert implied_shorter_side.min() >= 256 * 0.99 and implied_shorter_side.max() <= 480 * 1.01
    assert implied_shorter_side.min() < 265 and implied_shorter_side.max() > 465
    # Positions are spread over the image, not fixed.
    assert len(np.unique(x)) > 50 and len(np.unique(y)) > 30


def test_flips_happen_about_half_the_time():
    image = tf.reshape(tf.range(6, dtype=tf.float32), [1, 6, 1])
    flipped = sample(lambda s: flip(image, s)[0, 0, 0] != 0.0)
    assert 0.45 < flipped.mean() < 0.55


def test_cifar_augment_is_a_shifted_maybe_flipped_padded_image():
    image = np.random.default_rng(0).uniform(0, 255, (32, 32, 3)).astype(np.float32)
    normalised = (image - np.asarray(CIFAR_MEAN, np.float32)) / np.asarray(CIFAR_STD, np.float32)
    padded = np.pad(normalised, [(4, 4), (4, 4), (0, 0)])
    keys, candidates = [], []
    for dy in range(9):
        for dx in range(9):
            crop = padded[dy : dy + 32, dx : dx + 32]
            keys += [(dy, dx, False), (dy, dx, True)]
            candidates += [crop, crop[:, ::-1]]
    candidates = np.stack(candidates)
    outs = sample(lambda s: cifar_augment(tf.constant(image), s), n=200)
    assert outs.shape == (200, 32, 32, 3) and outs.dtype == np.float32
    seen = set()
    for out in outs:
        distance = np.abs(candidates - out).max(axis=(1, 2, 3))
        assert distance.min() < 1e-5, "output is not a pad-4 crop of the normalised image"
        seen.add(keys[int(distance.argmin())])
    offsets = {(dy, dx) for dy, dx, _ in seen}
    assert len(offsets) > 40  # of 81 possible
    assert {f for _, _, f in seen} == {True, False}


def encoded(fmt, h=120, w=160):
    image = tf.cast(tf.random.stateless_uniform([h, w, 3], [3, 4], maxval=256, dtype=tf.int32), tf.uint8)
    return tf.io.encode_jpeg(image) if fmt == "jpeg" else tf.io.encode_png(image)


@pytest.mark.parametrize("augment", ["scale", "inception", "none"])
@pytest.mark.parametrize("fmt", ["jpeg", "png"])
def test_imagenet_train_preprocessing_shape_and_determinism(augment, fmt):
    data = encoded(fmt)
    a = preprocess_for_train(data, tf.constant([5, 6]), "imagenet_224", augment)
    b = preprocess_for_train(data, tf.constant([5, 6]), "imagenet_224", augment)
    c = preprocess_for_train(data, tf.constant([9, 6]), "imagenet_224", augment)
    assert a.shape == (224, 224, 3) and a.dtype == tf.float32
    assert np.isfinite(a.numpy()).all() and -3.0 < a.numpy().min() and a.numpy().max() < 3.0
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    if augment != "none":
        assert not np.array_equal(a.numpy(), c.numpy())


def test_color_augment_changes_colours_within_range_deterministically():
    image = tf.random.stateless_uniform([16, 16, 3], [1, 1], maxval=255.0)
    a = color_augment(image, tf.constant([1, 2])).numpy()
    assert a.min() >= 0.0 and a.max() <= 255.0
    np.testing.assert_array_equal(a, color_augment(image, tf.constant([1, 2])).numpy())
    assert np.abs(a - image.numpy()).mean() > 1.0
    out = preprocess_for_train(encoded("jpeg"), tf.constant([1, 2]), "imagenet_224", "inception", color=True)
    assert out.shape == (224, 224, 3)


@pytest.mark.parametrize(
    "augment, preprocessing, message",
    [
        ("cifar", "imagenet_224", "needs preprocessing='cifar'"),
        ("scale", "cifar", "ImageNet augmentation"),
        ("inception", "imagenet_320", "evaluation protocol"),
        ("mixup", "cifar", "Valid choices"),
    ],
)
def test_bad_augmentation_choices_are_explained(augment, preprocessing, message):
    with pytest.raises(ValueError, match=message):
        check_augment(augment, preprocessing)


def test_cifar_augment_batch_draws_every_window_and_flip_per_example():
    """The whole-batch version: each example a pad-4 window of itself, maybe mirrored, with its own
    offset and flip, the same for the same seed."""
    rng = np.random.default_rng(1)
    batch = rng.normal(size=(256, 32, 32, 3)).astype(np.float32)
    out = cifar_augment_batch(tf.constant(batch), tf.constant([3, 4], tf.int64)).numpy()
    assert out.shape == batch.shape and out.dtype == np.float32
    seen = set()
    for example, result in zip(batch, out):
        padded = np.pad(example, [(4, 4), (4, 4), (0, 0)])
        found = [(dy, dx, f) for dy in range(9) for dx in range(9) for f in (False, True)
                 if np.array_equal(padded[dy:dy + 32, dx:dx + 32][:, ::-1] if f else padded[dy:dy + 32, dx:dx + 32], result)]
        assert found, "output is not a pad-4 window of its own image"
        seen.add(found[0])
    assert len({(dy, dx) for dy, dx, _ in seen}) > 60  # of 81
    flips = [f for _, _, f in seen]
    assert 0.3 < np.mean(flips) < 0.7
    again = cifar_augment_batch(tf.constant(batch), tf.constant([3, 4], tf.int64)).numpy()
    other = cifar_augment_batch(tf.constant(batch), tf.constant([3, 5], tf.int64)).numpy()
    assert np.array_equal(out, again) and not np.array_equal(out, other)
