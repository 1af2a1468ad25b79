"""The one image-safety guard: checks on encoded bytes *before* they are decoded.

Every image the package decodes (training and evaluation folders, the diagnostics batch, the
``classify`` tool and the serving signature) goes through :func:`checked_image_bytes` inside
:func:`keras_preact.data.decode_image`, so one set of limits holds everywhere.

Decoding blindly lets a 1 kB file that declares a 100,000 x 100,000 image allocate 30 GB (a
decompression bomb). These checks read only the header and fail with ``InvalidArgumentError``
on:

* empty bytes;
* bytes that are none of the supported formats, told by their signature: JPEG (``FF D8 FF``),
  PNG (the 8-byte PNG signature), GIF (``GIF87a`` / ``GIF89a``) and BMP (``BM``);
* a header that cannot be parsed (truncated or corrupt header);
* a declared size above ``max_pixels`` or a side above ``max_side``.

Where the size comes from: JPEG ``tf.image.extract_jpeg_shape`` (parses the markers up to the
frame header); PNG the width and height of the IHDR chunk; GIF the logical screen size (bytes
6-9, little-endian, which TensorFlow's GIF decoder allocates); BMP the ``BITMAPINFOHEADER``
width and height (bytes 18-25, little-endian, height negative for top-down files).

A body truncated after a valid header is then rejected by the decoder itself. Everything is
TensorFlow ops, so the checks run inside ``tf.data`` pipelines and travel inside exported
SavedModels. In an image-folder pipeline a refused file is skipped and counted like any
undecodable file (``BadFileLog``), or fails the run with ``strict=True`` (``--strict``).
"""

from __future__ import annotations

import tensorflow as tf

JPEG_MAGIC = b"\xff\xd8\xff"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GIF_MAGICS = (b"GIF87a", b"GIF89a")
BMP_MAGIC = b"BM"
FORMATS = ("JPEG", "PNG", "GIF", "BMP")
# Offset of the IHDR chunk type and of its width/height fields (PNG spec, section 5.3/11.2.2).
PNG_IHDR_TYPE_OFFSET = 12
PNG_IHDR_SIZE_OFFSET = 16
PNG_HEADER_BYTES = 24
GIF_SIZE_OFFSET, GIF_HEADER_BYTES = 6, 10
BMP_SIZE_OFFSET, BMP_HEADER_BYTES = 18, 26

# 4096 x 4096 RGB is 48 MB decoded: ample for any photo a classifier is sent, small enough that
# a batch of them cannot exhaust a serving host or a tf.data pipeline's parallel decoders.
DEFAULT_MAX_PIXELS = 4096 * 4096
DEFAULT_MAX_SIDE = 16384


def _assert_header_length(image_bytes, n, fmt):
    return tf.debugging.assert_greater_equal(
        tf.strings.length(image_bytes), n, message=f"{fmt} image truncated inside its header."
    )


def _integers(image_bytes, offset, count, width, big_endian):
    """``count`` unsigned integers of ``width`` bytes from ``offset``, as int64."""
    raw = tf.cast(tf.io.decode_raw(tf.strings.substr(image_bytes, offset, count * width), tf.uint8), tf.int64)
    raw = tf.reshape(raw, [count, width])
    weights = [1 << (8 * i) for i in range(width)]
    if big_endian:
        weights = weights[::-1]
    return tf.reduce_sum(raw * tf.constant(weights, tf.int64), axis=1)


def _png_size(image_bytes):
    """(height, width) from the IHDR chunk, which the PNG spec requires to come first."""
    checks = [_assert_header_length(image_bytes, PNG_HEADER_BYTES, "PNG")]
    with tf.control_dependencies(checks):
        chunk_type = tf.strings.substr(image_bytes, PNG_IHDR_TYPE_OFFSET, 4)
        checks.append(
            tf.debugging.Assert(
                tf.equal(chunk_type, b"IHDR"),
                [tf.constant("PNG image without an IHDR header chunk.")],
            )
        )
    with tf.control_dependencies(checks):
        width, height = tf.unstack(_integers(image_bytes, PNG_IHDR_SIZE_OFFSET, 2, 4, big_endian=True))
    return height, width


def _gif_size(image_bytes):
    with tf.control_dependencies([_assert_header_length(image_bytes, GIF_HEADER_BYTES, "GIF")]):
        width, height = tf.unstack(_integers(image_bytes, GIF_SIZE_OFFSET, 2, 2, big_endian=False))
    return height, width


def _bmp_size(image_bytes):
    with tf.control_dependencies([_assert_header_length(image_bytes, BMP_HEADER_BYTES, "BMP")]):
        width, height = tf.unstack(_integers(image_bytes, BMP_SIZE_OFFSET, 2, 4, big_endian=False))
    # Signed 32-bit fields: a negative height is a top-down bitmap.
    signed = lambda v: tf.where(v >= 1 << 31, v - (1 << 32), v)  # noqa: E731
    return tf.abs(signed(height)), signed(width)


def _jpeg_size(image_bytes):
    shape = tf.cast(tf.image.extract_jpeg_shape(image_bytes), tf.int64)
    return shape[0], shape[1]


def image_format(image_bytes):
    """int32 index into :data:`FORMATS` of the signature of ``image_bytes``, -1 if none."""
    head = tf.strings.substr(image_bytes, 0, len(PNG_MAGIC))
    tests = [
        tf.equal(tf.strings.substr(head, 0, len(JPEG_MAGIC)), JPEG_MAGIC),
        tf.equal(head, PNG_MAGIC),
        tf.reduce_any([tf.equal(tf.strings.substr(head, 0, 6), m) for m in GIF_MAGICS]),
        tf.equal(tf.strings.substr(head, 0, 2), BMP_MAGIC),
    ]
    index = tf.constant(-1, tf.int32)
    for i in reversed(range(len(tests))):
        index = tf.where(tests[i], i, index)
    return index


def checked_image_bytes(image_bytes, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int = DEFAULT_MAX_SIDE):
    """Return ``image_bytes`` (a scalar ``tf.string``) once its header passed the checks.

    The returned tensor carries explicit control dependencies on every check: inside a graph,
    the decoder would otherwise be free to start before (or in parallel with) the checks.
    """
    if max_pixels is None:
        max_pixels = DEFAULT_MAX_PIXELS
    if max_side is None:
        max_side = DEFAULT_MAX_SIDE
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    length = tf.strings.length(image_bytes)
    checks = [tf.debugging.assert_positive(length, message="Empty image bytes.")]
    fmt = image_format(image_bytes)
    checks.append(
        tf.debugging.Assert(
            fmt >= 0,
            [tf.constant(f"Image bytes are not {', '.join(FORMATS[:-1])} or {FORMATS[-1]} (unknown file signature).")],
        )
    )
    with tf.control_dependencies(checks):
        height, width = tf.switch_case(
            tf.maximum(fmt, 0),
            [lambda f=f: f(image_bytes) for f in (_jpeg_size, _png_size, _gif_size, _bmp_size)],
        )
    checks += [
        tf.debugging.assert_positive(tf.stack([height, width]), message="Image header declares an empty image."),
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
