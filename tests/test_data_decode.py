"""decode_image / decode_crop: every format the pipelines accept comes out as RGB uint8."""

import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from keras_preact.data import decode_crop, decode_image


def gradient_image(h=24, w=40):
    """An RGB image whose colour changes along both axes, so crops and channels are visible."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 90)], axis=-1).astype(np.uint8)


def encode(array, fmt, mode=None, **kwargs):
    image = Image.fromarray(array)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kwargs)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "fmt, mode, tolerance",
    [
        ("PNG", None, 0),  # lossless: exact
        ("PNG", "RGBA", 0),  # alpha dropped
        ("BMP", None, 0),
        ("JPEG", None, 12),
        ("JPEG", "CMYK", 12),  # Adobe CMYK JPEG, as in a few ImageNet files
    ],
)
def test_colour_formats_decode_to_rgb(fmt, mode, tolerance):
    array = gradient_image()
    image = decode_image(tf.constant(encode(array, fmt, mode, **({"quality": 95} if fmt == "JPEG" else {}))))
    assert image.dtype == tf.uint8 and image.shape == (24, 40, 3)
    assert np.abs(image.numpy().astype(int) - array.astype(int)).max() <= tolerance


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_grayscale_becomes_three_equal_channels(fmt):
    gray = gradient_image()[..., 0]
    image = decode_image(tf.constant(encode(gray, fmt))).numpy()
    assert image.shape == (24, 40, 3)
    np.testing.assert_array_equal(image[..., 0], image[..., 1])
    np.testing.assert_array_equal(image[..., 0], image[..., 2])
    if fmt == "PNG":
        np.testing.assert_array_equal(image[..., 0], gray)


def test_decode_works_inside_tf_function_with_unknown_size():
    fn = tf.function(decode_image, input_signature=[tf.TensorSpec([], tf.string)])
    assert fn.get_concrete_function().structured_outputs.shape.as_list() == [None, None, 3]
    image = fn(tf.constant(encode(gradient_image(10, 12), "PNG")))
    assert image.shape == (10, 12, 3)


@pytest.mark.parametrize("name", ["text", "empty", "truncated_jpeg", "truncated_png"])
def test_undecodable_bytes_raise_invalid_argument(name):
    jpeg = encode(gradient_image(), "JPEG")
    png = encode(gradient_image(), "PNG")
    data = {"text": b"this is not an image", "empty": b"", "truncated_jpeg": jpeg[: len(jpeg) // 2],
            "truncated_png": png[: len(png) // 2]}[name]
    with pytest.raises(tf.errors.InvalidArgumentError):
        decode_image(tf.constant(data))


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_decode_crop_equals_crop_of_decoded_image(fmt):
    options = {"quality": 95} if fmt == "JPEG" else {}
    data = tf.constant(encode(gradient_image(48, 64), fmt, **options))
    def window(h, w):
        return tf.constant(8), tf.constant(16), h // 2, w // 4

    crop = decode_crop(data, window)
    full = decode_image(data)
    assert crop.shape == (24, 16, 3)
    # Chroma upsampling at a crop's edge may differ by a level or two from the full decode.
    tolerance = 3 if fmt == "JPEG" else 0
    assert np.abs(crop.numpy().astype(int) - full.numpy()[8:32, 16:32].astype(int)).max() <= tolerance
