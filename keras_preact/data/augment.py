"""Training augmentation: the paper's CIFAR and ImageNet recipes, per example and seeded.

Every random choice is a *stateless* op driven by a per-example ``seed`` (shape ``[2]``,
int32/int64), so a pipeline built with the same seed yields the same batches on any run.

Augmentations (``augment=`` of :func:`keras_preact.data.build_dataset`):

- ``"cifar"``: pad 4 pixels on each side, random 32x32 crop, horizontal flip ([1], and the
  paper's Sec. 6). Padding happens *after* normalisation, so padded pixels are zeros of the
  normalised input (the mean colour), as in fb.resnet.torch.
- ``"scale"``: the ResNet paper's scale augmentation: shorter side uniform in [256, 480],
  random 224x224 crop, flip. Implemented as the equivalent window on the original image
  (side ``224 * short / S``), decoding only that window and resizing it to 224, instead of
  resizing the whole image first: same distribution of crops, far less work.
- ``"inception"``: Inception-style scale and aspect-ratio crops (area 8%-100% of the image,
  aspect ratio width/height in [3/4, 4/3], ``sample_distorted_bounding_box``, only the
  window decoded); when no window is found in 10 attempts, a centre crop with the aspect
  ratio clamped into range. Resized to the preprocessing's training size, flipped.
- ``"none"``: the evaluation preprocessing (no randomness).

``color=True`` adds the fb.resnet.torch colour augmentation: brightness, contrast and
saturation factors uniform in [0.6, 1.4], then AlexNet-style PCA lighting noise (std 0.1).
"""

from __future__ import annotations

import tensorflow as tf

from keras_preact.data.decode import decode_crop, decode_image
from keras_preact.data.preprocess import get_preprocessing, normalize, preprocess_for_eval, resize_shorter_side
from keras_preact.common import check_choice

AUGMENTATIONS = ("cifar", "scale", "inception", "none")

CIFAR_PAD = 4
SCALE_SHORTER_SIDE = (256, 480)  # the ResNet paper's range, inclusive
INCEPTION_AREA = (0.08, 1.0)
INCEPTION_ASPECT = (3 / 4, 4 / 3)
INCEPTION_ATTEMPTS = 10
COLOR_STRENGTH = 0.4
LIGHTING_STD = 0.1
# PCA of ImageNet RGB pixels (0-1 units), as published with AlexNet and used by fb.resnet.torch.
LIGHTING_EIGVAL = (0.2175, 0.0188, 0.0045)
LIGHTING_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R 601 luma


def _split(seed, n: int):
    """``n`` independent seeds derived from one."""
    return tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), num=n)


def _uniform_int(seed, low, high_inclusive):
    return tf.random.stateless_uniform(
        [], seed, minval=tf.cast(low, tf.int32), maxval=tf.cast(high_inclusive, tf.int32) + 1, dtype=tf.int32
    )


def flip(image: tf.Tensor, seed) -> tf.Tensor:
    """Mirror left-right with probability 1/2."""
    return tf.image.stateless_random_flip_left_right(image, seed)


def cifar_augment(image: tf.Tensor, seed) -> tf.Tensor:
    """Normalised 32x32 image, zero-padded by 4, randomly cropped back to 32x32, maybe flipped.

    ``image``: float32 ``[32, 32, 3]`` in 0-255 units (use :func:`to_cifar_size` first for
    images of other sizes). Returns the normalised float32 ``[32, 32, 3]`` crop.
    """
    s = _split(seed, 2)
    image = normalize(image, "cifar")
    padded = tf.pad(image, [[CIFAR_PAD, CIFAR_PAD], [CIFAR_PAD, CIFAR_PAD], [0, 0]])
    offset = tf.random.stateless_uniform([2], s[0], minval=0, maxval=2 * CIFAR_PAD + 1, dtype=tf.int32)
    crop = padded[offset[0] : offset[0] + 32, offset[1] : offset[1] + 32, :]
    crop.set_shape([32, 32, 3])
    return flip(crop, s[1])


def cifar_augment_batch(images: tf.Tensor, seed) -> tf.Tensor:
    """:func:`cifar_augment` for a whole normalised batch ``[B, 32, 32, 3]`` in a few ops.

    The same distribution as the per-example version (zero padding of the normalised image by
    4, a uniform 32x32 window, a flip with probability 1/2), drawn from one ``[2]`` seed for
    the batch. Per-example augmentation costs about 0.5 ms of CPU per CIFAR image, as much as
    a third of a ResNet-20 training step on 2 cores; gathering the windows of the whole batch
    costs a few percent of that.
    """
    images = tf.convert_to_tensor(images)
    size = images.shape[1]
    s = _split(seed, 2)
    batch = tf.shape(images)[0]
    padded = tf.pad(images, [[0, 0], [CIFAR_PAD, CIFAR_PAD], [CIFAR_PAD, CIFAR_PAD], [0, 0]])
    offsets = tf.random.stateless_uniform([batch, 2], s[0], minval=0, maxval=2 * CIFAR_PAD + 1, dtype=tf.int32)
    window = tf.range(size)
    rows = offsets[:, :1] + window  # [B, size]: the rows of each example's window
    cols = offsets[:, 1:] + window
    crops = tf.gather(tf.gather(padded, rows, axis=1, batch_dims=1), cols, axis=2, batch_dims=1)
    flips = tf.random.stateless_uniform([batch], s[1]) < 0.5
    return tf.where(flips[:, None, None, None], tf.reverse(crops, axis=[2]), crops)


def scale_crop_window(height, width, seed, crop: int = 224, shorter_side=SCALE_SHORTER_SIDE):
    """The window of the original image that the ResNet scale augmentation crops.

    Resizing the shorter side to ``S`` (uniform integer in ``shorter_side``) and cropping
    ``crop x crop`` at a uniform position equals cropping a square of side
    ``round(crop * short / S)`` at a uniform position of the original and resizing it to
    ``crop``. Returns ``(offset_y, offset_x, side, side)`` as int32 scalars.
    """
    s = _split(seed, 3)
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    short = tf.minimum(height, width)
    target = _uniform_int(s[0], shorter_side[0], shorter_side[1])
    side = tf.cast(tf.round(crop * tf.cast(short, tf.float32) / tf.cast(target, tf.float32)), tf.int32)
    side = tf.clip_by_value(side, 1, short)
    y = _uniform_int(s[1], 0, height - side)
    x = _uniform_int(s[2], 0, width - side)
    return y, x, side, side


def inception_crop_window(
    height,
    width,
    seed,
    area_range=INCEPTION_AREA,
    aspect_range=INCEPTION_ASPECT,
    max_attempts: int = INCEPTION_ATTEMPTS,
):
    """A random window covering ``area_range`` of the image with width/height in ``aspect_range``.

    Sampled by ``tf.image.stateless_sample_distorted_bounding_box``; when it finds no window
    it returns the whole image, and we take instead the largest centred window whose aspect
    ratio is the image's clamped into ``aspect_range``. Returns ``(y, x, h, w)`` int32 scalars.
    """
    height = tf.cast(height, tf.int32)
    width = tf.cast(width, tf.int32)
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.stack([height, width, 3]),
        bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=aspect_range,
        area_range=area_range,
        max_attempts=max_attempts,
        use_image_if_no_bounding_boxes=True,
    )
    found = tf.logical_not(tf.logical_and(tf.equal(size[0], height), tf.equal(size[1], width)))

    def centre():
        h = tf.cast(height, tf.float32)
        w = tf.cast(width, tf.float32)
        ratio = tf.clip_by_value(w / h, aspect_range[0], aspect_range[1])
        # The largest window of that ratio inside the image.
        crop_w = tf.minimum(w, h * ratio)
        crop_h = tf.minimum(h, crop_w / ratio)
        ch = tf.clip_by_value(tf.cast(tf.round(crop_h), tf.int32), 1, height)
        cw = tf.clip_by_value(tf.cast(tf.round(crop_w), tf.int32), 1, width)
        return tf.stack([(height - ch) // 2, (width - cw) // 2, ch, cw])

    window = tf.cond(found, lambda: tf.stack([begin[0], begin[1], size[0], size[1]]), centre)
    return window[0], window[1], window[2], window[3]


def color_augment(image: tf.Tensor, seed, strength: float = COLOR_STRENGTH, lighting_std: float = LIGHTING_STD):
    """Colour jitter then PCA lighting noise on a float32 0-255 RGB image; clipped to [0, 255]."""
    s = _split(seed, 2)
    image = tf.cast(image, tf.float32)
    f = tf.random.stateless_uniform([3], s[0], minval=1.0 - strength, maxval=1.0 + strength)
    weights = tf.constant(_GRAY_WEIGHTS, tf.float32)
    image = image * f[0]  # brightness: blend with black
    gray_mean = tf.reduce_mean(tf.reduce_sum(image * weights, axis=-1))
    image = gray_mean + f[1] * (image - gray_mean)  # contrast: blend with the mean gray
    gray = tf.reduce_sum(image * weights, axis=-1, keepdims=True)
    image = gray + f[2] * (image - gray)  # saturation: blend with the grayscale image
    alpha = tf.random.stateless_normal([3], s[1], stddev=lighting_std)
    shift = tf.linalg.matvec(tf.constant(LIGHTING_EIGVEC, tf.float32), alpha * tf.constant(LIGHTING_EIGVAL))
    image = image + 255.0 * shift
    return tf.clip_by_value(image, 0.0, 255.0)


def to_cifar_size(image: tf.Tensor) -> tf.Tensor:
    """Float32 32x32 image: a 32x32 input is only cast; others are resized and centre-cropped."""
    image = resize_shorter_side(image, 32)
    shape = tf.shape(image)
    y = (shape[0] - 32) // 2
    x = (shape[1] - 32) // 2
    image = image[y : y + 32, x : x + 32, :]
    image.set_shape([32, 32, 3])
    return image


def resize_crop(crop: tf.Tensor, size: int) -> tf.Tensor:
    """Resize a training crop to ``size x size`` (bilinear), float32.

    Antialiasing costs several times the rest of the augmentation, and the crops of
    ImageNet-sized images shrink by less than 2x, where plain bilinear barely aliases; so it
    is used only for larger reductions (a user's multi-megapixel photos).
    """
    shape = tf.shape(crop)
    shrink = tf.cast(tf.minimum(shape[0], shape[1]), tf.float32) / float(size)
    image = tf.cond(
        shrink > 2.0,
        lambda: tf.image.resize(crop, [size, size], method="bilinear", antialias=True),
        lambda: tf.image.resize(crop, [size, size], method="bilinear"),
    )
    image.set_shape([size, size, 3])
    return image


def check_augment(augment: str, preprocessing: str) -> None:
    """ValueError when ``augment`` is unknown or does not fit ``preprocessing``."""
    check_choice("augmentation", augment, AUGMENTATIONS)
    r = get_preprocessing(preprocessing)
    if r.train_size is None:
        raise ValueError(
            f"Preprocessing {preprocessing!r} is an evaluation protocol (paper Table 5: networks trained on "
            f"224 crops, tested on 320 crops); train with preprocessing='imagenet_224'."
        )
    if augment == "cifar" and preprocessing != "cifar":
        raise ValueError(f"augment='cifar' needs preprocessing='cifar', not {preprocessing!r}; "
                         "use 'scale' or 'inception'.")
    if augment == "scale" and preprocessing == "cifar":
        raise ValueError("augment='scale' is the ImageNet augmentation (shorter side 256-480); "
                         "for CIFAR use 'cifar'.")


def preprocess_for_train(image_bytes: tf.Tensor, seed, preprocessing: str, augment: str,
                         color: bool = False) -> tf.Tensor:
    """Decode and augment one encoded image; returns normalised float32 ``[s, s, 3]``.

    ``s`` is the preprocessing's training size (32 for ``"cifar"``, 224 for ``"imagenet_224"``).
    """
    check_augment(augment, preprocessing)
    size = get_preprocessing(preprocessing).train_size
    s = _split(seed, 3)
    if augment == "none":
        return preprocess_for_eval(decode_image(image_bytes), preprocessing)
    if augment == "cifar":
        image = to_cifar_size(decode_image(image_bytes))
        if color:
            image = color_augment(image, s[2])
        return cifar_augment(image, s[0])
    if augment == "scale":
        window_fn = lambda h, w: scale_crop_window(h, w, s[0], crop=size)  # noqa: E731
    else:
        window_fn = lambda h, w: inception_crop_window(h, w, s[0])  # noqa: E731
    crop = decode_crop(image_bytes, window_fn)
    image = resize_crop(flip(crop, s[1]), size)  # flipping the uint8 crop is cheaper
    if color:
        image = color_augment(image, s[2])
    image.set_shape([size, size, 3])
    return normalize(image, preprocessing)
