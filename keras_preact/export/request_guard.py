"""Checks on an encoded image *before* it is decoded, so a bad request cannot hurt the server.

A serving endpoint receives bytes from anyone. Decoding them blindly lets a 1 kB file that
declares a 100,000 x 100,000 image allocate 30 GB (a decompression bomb). These checks read
only the header (JPEG: ``tf.image.extract_jpeg_shape``, which parses the markers up to the
frame header; PNG: the width and height fields of the IHDR chunk) and fail with
``InvalidArgumentError`` on:

* empty bytes;
* bytes that are neither JPEG (``FF D8 FF``) nor PNG (the 8-byte PNG signature);
* a header that cannot be parsed (truncated or corrupt header);
* a declared size above ``max_pixels`` or a side above ``max_side``.

A body truncated after a valid header is then rejected by the decoder itself (libjpeg and
libpng report the premature end as ``InvalidArgumentError``). Everything here is TensorFlow
ops, so the checks travel inside the exported SavedModel.
"""

from __future__ import annotations

import tensorflow as tf

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Offset of the IHDR chunk type and of its width/height fields (PNG spec, section 5.3/11.2.2).
PNG_IHDR_TYPE_OFFSET = 12
PNG_IHDR_SIZE_OFFSET = 16
PNG_HEADER_BYTES = 24

# 4096 x 4096 RGB is 48 MB decoded: ample for any photo a classifier is sent, small enough that
# a batch of them cannot exhaust a serving host.
DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_SIDE = 16384


def _png_size(image_bytes):
    """(height, width) from the IHDR chunk, which the PNG spec requires to come first."""
    checks = [
        tf.debugging.assert_greater_equal(
            tf.strings.length(image_bytes),
            PNG_HEADER_BYTES,
            message="PNG image truncated inside its header.",
        )
    ]
    with tf.control_dependencies(checks):
        chunk_type = tf.strings.substr(image_bytes, PNG_IHDR_TYPE_OFFSET, 4)
        checks.append(
            tf.debugging.Assert(
                tf.equal(chunk_type, b"IHDR"),
                [tf.constant("PNG image without an IHDR header chunk.")],
            )
        )
    with tf.control_dependencies(checks):
        size_field = tf.strings.substr(image_bytes, PNG_IHDR_SIZE_OFFSET, 8)
    fields = tf.io.decode_raw(size_field, tf.uint8)
    fields = tf.cast(fields, tf.int64)
    big_endian = tf.constant([1 << 24, 1 << 16, 1 << 8, 1], tf.int64)
    width = tf.reduce_sum(fields[0:4] * big_endian)
    height = tf.reduce_sum(fields[4:8] * big_endian)
    return height, width


def _jpeg_size(image_bytes):
    shape = tf.cast(tf.image.extract_jpeg_shape(image_bytes), tf.int64)
    return shape[0], shape[1]


def checked_image_bytes(
    image_bytes, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int = DEFAULT_MAX_SIDE
):
    """Return ``image_bytes`` (a scalar ``tf.string``) once its header passed the checks.

    The returned tensor carries explicit control dependencies on every check: inside a graph,
    the decoder would otherwise be free to start before (or in parallel with) the checks.
    """
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    length = tf.strings.length(image_bytes)
    checks = [tf.debugging.assert_positive(length, message="Empty image bytes.")]
    head = tf.strings.substr(image_bytes, 0, len(PNG_MAGIC))
    is_jpeg = tf.equal(tf.strings.substr(head, 0, len(JPEG_MAGIC)), JPEG_MAGIC)
    is_png = tf.equal(head, PNG_MAGIC)
    checks.append(
        tf.debugging.Assert(
            tf.logical_or(is_jpeg, is_png),
            [tf.constant("Image bytes are neither JPEG nor PNG (unknown file signature).")],
        )
    )
    with tf.control_dependencies(checks):
        height, width = tf.cond(
            is_jpeg, lambda: _jpeg_size(image_bytes), lambda: _png_size(image_bytes)
        )
    checks += [
        tf.debugging.assert_positive(
            tf.stack([height, width]), message="Image header declares an empty image."
        ),
        tf.debugging.Assert(
            tf.logical_and(height <= max_side, width <= max_side),
            [tf.constant(f"Image side above the limit of {max_side} pixels:"), height, width],
        ),
        tf.debugging.Assert(
            height * width <= max_pixels,
            [tf.constant(f"Image above the limit of {max_pixels} pixels:"), height, width],
        ),
    ]
    with tf.control_dependencies([c for c in checks if c is not None]):
        return tf.identity(image_bytes)
