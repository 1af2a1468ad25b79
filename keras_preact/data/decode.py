"""Decoding encoded image bytes to RGB ``uint8`` tensors, whole or only a crop window.

Every image that enters the package (image folders, TFDS records, export signatures) goes
through :func:`decode_image`, so JPEG, PNG, GIF, BMP, grayscale, RGBA and CMYK JPEG all come
out as ``[H, W, 3]`` RGB, and every one first passes the image-safety guard
(:func:`keras_preact.data.guard.checked_image_bytes`: declared size and pixel limits read from
the header, so a decompression bomb is refused before any pixel buffer is allocated). TensorFlow's JPEG decoder converts CMYK and YCCK JPEGs (such as the
22 CMYK files in the ImageNet training set) to RGB itself, so no re-encoding step is needed.
"""

from __future__ import annotations

from typing import Callable

import tensorflow as tf

from keras_preact.data.guard import checked_image_bytes

# A crop window in pixels: (offset_y, offset_x, height, width), each an int32 scalar tensor.
Window = tuple


def decode_image(image_bytes: tf.Tensor, max_pixels: int | None = None, max_side: int | None = None) -> tf.Tensor:
    """Decode one encoded image (scalar string tensor) to an RGB ``uint8`` ``[H, W, 3]`` tensor.

    Works eagerly and inside ``tf.function`` / ``tf.data``. Undecodable bytes (truncated,
    corrupt or not an image) and images whose header declares more than ``max_pixels`` pixels
    or a side above ``max_side`` (default: ``guard.DEFAULT_MAX_PIXELS`` / ``DEFAULT_MAX_SIDE``)
    raise ``tf.errors.InvalidArgumentError``.
    """
    image_bytes = checked_image_bytes(image_bytes, max_pixels, max_side)
    # channels=3 turns grayscale into RGB, drops alpha and asks libjpeg for RGB output from
    # CMYK; expand_animations=False keeps the rank at 3 for GIFs (first frame).
    image = tf.io.decode_image(image_bytes, channels=3, dtype=tf.uint8, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def decode_crop(image_bytes: tf.Tensor, window_fn: Callable[[tf.Tensor, tf.Tensor], Window]) -> tf.Tensor:
    """Decode only the window ``window_fn(height, width)`` of an encoded image.

    For JPEG the image size is read from the header and only the window's DCT blocks are
    decoded (``tf.image.decode_and_crop_jpeg``), which is what makes the training crops of
    large images cheap. Other formats are decoded whole and then sliced, so PNG and friends
    take the same path with the same window.
    """

    image_bytes = checked_image_bytes(image_bytes)

    def jpeg_window():
        shape = tf.image.extract_jpeg_shape(image_bytes, output_type=tf.int32)
        y, x, h, w = window_fn(shape[0], shape[1])
        crop = tf.image.decode_and_crop_jpeg(image_bytes, tf.stack([y, x, h, w]), channels=3)
        return crop

    def any_window():
        image = decode_image(image_bytes)
        shape = tf.shape(image, out_type=tf.int32)
        y, x, h, w = window_fn(shape[0], shape[1])
        return image[y : y + h, x : x + w, :]

    image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg_window, any_window)
    image.set_shape([None, None, 3])
    return image
