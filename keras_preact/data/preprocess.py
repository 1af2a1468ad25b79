"""Evaluation preprocessing and normalisation: the code both evaluation and serving run.

A *preprocessing* (``"cifar"``, ``"imagenet_224"``, ``"imagenet_320"``) names an evaluation
protocol: the output size, how an image of any size is brought to it, and the normalisation
constants. (A *recipe* is something else: the optimisation settings of a training run,
``keras_preact.training.recipes``.) ``build_dataset(..., training=False)`` and the export
signatures both call :func:`preprocess_for_eval`, so a served model sees exactly the pixels the
evaluation saw. All functions are pure TensorFlow ops (usable in ``tf.function``/SavedModels).

Normalisation constants are per channel (R, G, B) in **0-255 units**: the model input is
``(pixel - MEAN) / STD`` with ``pixel`` in [0, 255]. They live in
:mod:`keras_preact.data.constants` (no TensorFlow there, so the NumPy pipeline shares them) and
are re-exported here: ``CIFAR_MEAN``/``CIFAR_STD`` (the CIFAR-10 training-set statistics of
fb.resnet.torch and the paper's CIFAR code) and ``IMAGENET_MEAN``/``IMAGENET_STD``.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from keras_preact.common import check_choice
from keras_preact.data.constants import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class Preprocessing:
    """An evaluation protocol: resize the shorter side to ``resize``, centre-crop ``crop``."""

    name: str
    resize: int
    crop: int
    mean: tuple
    std: tuple
    # The training crop size; None for protocols that are evaluation-only (paper Table 5).
    train_size: int | None


PREPROCESSINGS = {
    "cifar": Preprocessing("cifar", 32, 32, CIFAR_MEAN, CIFAR_STD, train_size=32),
    # ResNet paper [1]: shorter side 256, single centre 224 crop.
    "imagenet_224": Preprocessing("imagenet_224", 256, 224, IMAGENET_MEAN, IMAGENET_STD, train_size=224),
    # Identity-mappings paper, Table 5: shorter side 320, centre 320 crop, on nets trained at 224.
    "imagenet_320": Preprocessing("imagenet_320", 320, 320, IMAGENET_MEAN, IMAGENET_STD, train_size=None),
}


def get_preprocessing(name: str) -> Preprocessing:
    """The :class:`Preprocessing` called ``name``, or a ValueError listing the valid names."""
    check_choice("preprocessing", name, tuple(PREPROCESSINGS))
    return PREPROCESSINGS[name]


@functools.lru_cache(maxsize=32)
def _affine(mean: tuple, std: tuple, shape: tuple):
    """``scale, offset`` arrays of ``shape`` with ``x * scale + offset == (x - mean) / std``."""
    scale = 1.0 / np.asarray(std, np.float32)
    offset = -np.asarray(mean, np.float32) * scale
    return np.broadcast_to(scale, shape).copy(), np.broadcast_to(offset, shape).copy()


def normalize(image: tf.Tensor, preprocessing: str) -> tf.Tensor:
    """``(image - mean) / std`` per channel; ``image`` holds 0-255 values (any dtype)."""
    r = get_preprocessing(preprocessing)
    image = tf.cast(image, tf.float32)
    # Channel-wise broadcasting is slow in TensorFlow's CPU kernels (it was half the cost of a
    # whole ImageNet training example); a multiply-add with constants of the image's own
    # shape is not. Shapes unknown at trace time fall back to broadcasting.
    shape = tuple(image.shape.as_list()) if image.shape.is_fully_defined() else (3,)
    scale, offset = _affine(tuple(r.mean), tuple(r.std), shape)
    return image * tf.constant(scale) + tf.constant(offset)


def resize_shorter_side(image: tf.Tensor, size: int) -> tf.Tensor:
    """Resize so the shorter side is ``size``, keeping the aspect ratio; returns float32.

    The longer side is rounded to the nearest pixel. Bilinear with antialiasing, so large
    downscales do not alias; an image already at the target size is returned unchanged.
    """
    shape = tf.shape(image)
    h, w = shape[0], shape[1]
    short = tf.minimum(h, w)
    scale = tf.cast(size, tf.float64) / tf.cast(short, tf.float64)
    new_h = tf.cast(tf.round(tf.cast(h, tf.float64) * scale), tf.int32)
    new_w = tf.cast(tf.round(tf.cast(w, tf.float64) * scale), tf.int32)
    # Pin the shorter side exactly to ``size`` whatever the rounding did to the ratio.
    new_h = tf.where(h <= w, size, tf.maximum(new_h, size))
    new_w = tf.where(h <= w, tf.maximum(new_w, size), size)
    image = tf.cast(image, tf.float32)
    return tf.cond(
        tf.logical_and(tf.equal(new_h, h), tf.equal(new_w, w)),
        lambda: image,
        lambda: tf.image.resize(image, tf.stack([new_h, new_w]), method="bilinear", antialias=True),
    )


def center_crop(image: tf.Tensor, size: int) -> tf.Tensor:
    """The central ``size x size`` window (offsets rounded down); the image must be large enough."""
    shape = tf.shape(image)
    tf.debugging.assert_greater_equal(
        tf.minimum(shape[0], shape[1]), size, message=f"center_crop: image smaller than {size}"
    )
    y = (shape[0] - size) // 2
    x = (shape[1] - size) // 2
    crop = image[y : y + size, x : x + size, :]
    crop.set_shape([size, size, 3])
    return crop


def eval_pixels(image: tf.Tensor, preprocessing: str) -> tf.Tensor:
    """The evaluation window of one RGB ``[H, W, 3]`` image, before normalisation.

    Resize the shorter side to the preprocessing's ``resize`` and take the central ``crop x crop``
    window. Returns float32 ``[crop, crop, 3]`` in 0-255 units (what the in-memory pipeline
    stores, as ``uint8``, and normalises per batch).
    """
    r = get_preprocessing(preprocessing)
    image = tf.convert_to_tensor(image)
    if image.shape.rank != 3:
        raise ValueError(f"preprocess_for_eval expects one [H, W, 3] image, got shape {image.shape}.")
    image = resize_shorter_side(image, r.resize)
    return center_crop(image, r.crop)


def preprocess_for_eval(image: tf.Tensor, preprocessing: str) -> tf.Tensor:
    """Evaluation preprocessing of one RGB ``[H, W, 3]`` image (0-255, usually ``uint8``).

    Resize the shorter side to the preprocessing's ``resize``, take the central ``crop x crop``
    window, normalise. Returns float32 ``[crop, crop, 3]``. Preprocessings:
    ``"cifar"`` (32 -> 32: a 32x32 image only gets normalised), ``"imagenet_224"``
    (256 -> 224) and ``"imagenet_320"`` (320 -> 320).
    """
    return normalize(eval_pixels(image, preprocessing), preprocessing)
