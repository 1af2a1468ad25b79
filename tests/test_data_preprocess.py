"""preprocess_for_eval: exact crops, sizes, normalisation, usable in a serving signature."""

import numpy as np
import pytest
import tensorflow as tf

from keras_preact.data import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, decode_image, preprocess_for_eval
from keras_preact.data import preprocess
from keras_preact.data.preprocess import PREPROCESSINGS, get_preprocessing, resize_shorter_side


def coordinate_image(h, w):
    """uint8 image whose R channel encodes the row and G the column (mod 256)."""
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([y % 256, x % 256, np.zeros_like(x)], axis=-1).astype(np.uint8)


def unnormalize(out, mean, std):
    return out * np.asarray(std, np.float32) + np.asarray(mean, np.float32)


def test_imagenet_224_crop_is_exact_when_shorter_side_is_256():
    image = coordinate_image(256, 300)  # no resize needed: the crop must be the exact centre
    out = preprocess_for_eval(image, "imagenet_224").numpy()
    assert out.shape == (224, 224, 3) and out.dtype == np.float32
    pixels = np.round(unnormalize(out, IMAGENET_MEAN, IMAGENET_STD), 3)
    np.testing.assert_allclose(pixels, image[16:240, 38:262].astype(np.float32), atol=1e-3)


def test_imagenet_320_crop_is_exact_for_portrait_images():
    image = coordinate_image(331, 320)  # odd margin: offset rounds down to 5
    out = preprocess_for_eval(image, "imagenet_320").numpy()
    assert out.shape == (320, 320, 3)
    pixels = unnormalize(out, IMAGENET_MEAN, IMAGENET_STD)
    np.testing.assert_allclose(pixels, image[5:325, :].astype(np.float32), atol=1e-3)


def test_resized_eval_crop_is_the_centre_of_the_resized_image():
    image = np.random.default_rng(0).integers(0, 256, (512, 700, 3), dtype=np.uint8)
    resized = resize_shorter_side(image, 256).numpy()
    assert resized.shape == (256, 350, 3)  # 700 * 256 / 512
    out = preprocess_for_eval(image, "imagenet_224").numpy()
    np.testing.assert_allclose(unnormalize(out, IMAGENET_MEAN, IMAGENET_STD), resized[16:240, 63:287], atol=1e-3)


def test_resize_shorter_side_rounds_the_longer_side():
    assert resize_shorter_side(np.zeros((480, 641, 3), np.uint8), 256).shape == (256, 342, 3)  # 341.87
    assert resize_shorter_side(np.zeros((100, 50, 3), np.uint8), 320).shape == (640, 320, 3)


def test_cifar_preprocessing_only_normalises_32x32_images():
    image = np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    out = preprocess_for_eval(image, "cifar").numpy()
    expected = (image.astype(np.float32) - np.asarray(CIFAR_MEAN, np.float32)) / np.asarray(CIFAR_STD, np.float32)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_cifar_preprocessing_brings_other_sizes_to_32():
    """Shorter side to 32 (64x80 -> 32x40), then the centre 32x32 window (columns 4-35)."""
    image = np.random.default_rng(2).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    out = preprocess_for_eval(image, "cifar").numpy()
    assert out.shape == (32, 32, 3)
    resized = resize_shorter_side(image, 32).numpy()
    assert resized.shape == (32, 40, 3)
    np.testing.assert_allclose(unnormalize(out, CIFAR_MEAN, CIFAR_STD), resized[:, 4:36], atol=1e-3)


def test_constants_are_in_0_255_units():
    assert all(100 < m < 130 for m in CIFAR_MEAN) and all(60 < s < 70 for s in CIFAR_STD)
    np.testing.assert_allclose(IMAGENET_MEAN, (123.675, 116.28, 103.53))
    np.testing.assert_allclose(IMAGENET_STD, (58.395, 57.12, 57.375))


def test_unknown_preprocessing_names_valid_choices():
    with pytest.raises(ValueError, match="Unknown preprocessing 'imagenet'. Valid choices: 'cifar', 'imagenet_224'"):
        preprocess_for_eval(np.zeros((32, 32, 3), np.uint8), "imagenet")


def test_the_preprocessings_and_their_windows():
    """One word, one meaning: ``preprocessing`` is the evaluation protocol, ``recipe`` the training one."""
    assert tuple(PREPROCESSINGS) == ("cifar", "imagenet_224", "imagenet_320")
    assert [(p.resize, p.crop, p.train_size) for p in PREPROCESSINGS.values()] == [
        (32, 32, 32), (256, 224, 224), (320, 320, None)]
    assert get_preprocessing("imagenet_320") is PREPROCESSINGS["imagenet_320"]
    assert not hasattr(preprocess, "Recipe") and not hasattr(preprocess, "get_recipe")


def test_eval_preprocessing_in_a_serving_signature():
    """What an exporter does: bytes of any size in, fixed-size normalised batch out."""
    @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
    def serve(images):
        return tf.map_fn(
            lambda b: preprocess_for_eval(decode_image(b), "imagenet_224"),
            images,
            fn_output_signature=tf.TensorSpec([224, 224, 3], tf.float32),
        )

    png = tf.io.encode_png(coordinate_image(256, 300))
    out = serve(tf.stack([png, png]))
    assert out.shape == (2, 224, 224, 3)
    np.testing.assert_allclose(
        out[0].numpy(), preprocess_for_eval(coordinate_image(256, 300), "imagenet_224").numpy(), atol=1e-6
    )
