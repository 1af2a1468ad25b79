"""``data/guard.py``, the one image-safety guard: every bad image is an InvalidArgumentError
before decoding, in the serving signature (``keras_preact.export`` imports it) and in every
``decode_image`` of the input pipelines."""

import io
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf

from keras_preact.data import decode_image
from keras_preact.data.guard import checked_image_bytes
from keras_preact import export

RNG = np.random.RandomState(0)
PIXELS = RNG.randint(0, 256, size=(40, 30, 3), dtype=np.uint8)
JPEG = tf.io.encode_jpeg(PIXELS).numpy()
PNG = tf.io.encode_png(PIXELS).numpy()


def png_with_size(width, height):
    """A PNG whose IHDR declares width x height, followed by a tiny real image's data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return b"\x89PNG\r\n\x1a\n" + chunk + PNG[33:]


def jpeg_with_size(width, height):
    """The JPEG above with its SOF0 frame header patched to declare width x height."""
    data = bytearray(JPEG)
    sof = data.find(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def encode_pil(fmt):
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(PIXELS).save(buffer, fmt)
    return buffer.getvalue()


GIF = encode_pil("GIF")
BMP = encode_pil("BMP")


def gif_with_size(width, height):
    return GIF[:6] + struct.pack("<HH", width, height) + GIF[10:]


def bmp_with_size(width, height):
    return BMP[:18] + struct.pack("<ii", width, height) + BMP[26:]


def test_valid_jpeg_png_gif_and_bmp_pass_unchanged():
    for data in (JPEG, PNG, GIF, BMP):
        assert checked_image_bytes(tf.constant(data)).numpy() == data


def test_gif_and_bmp_sizes_are_read_from_their_headers():
    """GIF: logical screen (LE 16-bit); BMP: BITMAPINFOHEADER (LE 32-bit, negative = top-down)."""
    for data in (gif_with_size(100, 100), bmp_with_size(100, -100)):
        assert checked_image_bytes(data, max_pixels=10_000).numpy() == data
    for data in (gif_with_size(101, 100), bmp_with_size(100, -101)):
        with pytest.raises(tf.errors.InvalidArgumentError, match="above the limit of 10000"):
            checked_image_bytes(data, max_pixels=10_000)


def test_decode_image_applies_the_guard_and_serving_uses_the_same_function():
    """The pipelines' decoder and the serving signature share one guard (data layer)."""
    assert export.checked_image_bytes is checked_image_bytes
    assert decode_image(tf.constant(BMP)).shape == (40, 30, 3)
    assert decode_image(tf.constant(GIF)).shape == (40, 30, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="above the limit"):
        decode_image(tf.constant(png_with_size(20_000, 20_000)))
    assert decode_image(tf.constant(PNG), max_pixels=40 * 30).shape == (40, 30, 3)
    with pytest.raises(tf.errors.InvalidArgumentError, match="above the limit of 1199"):
        decode_image(tf.constant(PNG), max_pixels=40 * 30 - 1)


def test_declared_size_is_read_from_the_header_not_decoded():
    # Exactly at the limit passes; one pixel more fails: the limit applies to the header's size.
    at_limit = png_with_size(100, 100)
    assert checked_image_bytes(at_limit, max_pixels=10_000).numpy() == at_limit
    with pytest.raises(tf.errors.InvalidArgumentError, match="above the limit"):
        checked_image_bytes(png_with_size(101, 100), max_pixels=10_000)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "Empty image bytes"),
        (b"hello, this is not an image", "unknown file signature"),
        (b"GIF89a\x00", "GIF image truncated"),
        (b"BM" + b"\0" * 10, "BMP image truncated"),
        (gif_with_size(60_000, 60_000), "limit"),
        (bmp_with_size(20_000, -20_000), "limit"),
        (JPEG[:12], None),  # header cut short: extract_jpeg_shape fails
        (PNG[:20], "truncated inside its header"),
        (PNG[:8] + b"\0\0\0\rJUNK" + PNG[16:], "IHDR"),
        (png_with_size(100_000, 100_000), "limit"),
        (jpeg_with_size(60_000, 60_000), "limit"),
        (png_with_size(20_000, 10), "side above the limit"),
        (png_with_size(0, 10), "empty image"),
    ],
    ids=["empty", "text", "gif-header-cut", "bmp-header-cut", "gif-bomb", "bmp-bomb", "jpeg-header-cut", "png-header-cut", "png-no-ihdr",
         "png-bomb", "jpeg-bomb", "png-too-wide", "png-zero-width"],
)
def test_bad_bytes_raise_invalid_argument(data, message):
    with pytest.raises(tf.errors.InvalidArgumentError, match=message):
        checked_image_bytes(tf.constant(data))


def test_checks_run_before_decoding_inside_a_graph():
    """In a tf.function the decoder must not start on a bomb: the checks gate its input."""

    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def decode(data):
        return tf.shape(tf.io.decode_image(checked_image_bytes(data), channels=3, expand_animations=False))

    assert decode(tf.constant(JPEG)).numpy().tolist() == [40, 30, 3]
    with pytest.raises(tf.errors.InvalidArgumentError, match="limit"):
        decode(tf.constant(jpeg_with_size(60_000, 60_000)))
    graph = decode.get_concrete_function().graph
    decode_op = [op for op in graph.get_operations() if op.type == "DecodeImage"][0]
    identity = decode_op.inputs[0].op
    assert identity.type == "Identity" and identity.control_inputs, "decoder input not gated"
