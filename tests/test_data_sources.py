"""``data/sources.py``: TFDS sources end to end under tfds.testing.mock_data (no download), and
the ImageNet manual dir. Image-folder sources: test_data_pipeline.py."""

import numpy as np
import pytest
import tensorflow_datasets as tfds

from keras_preact.data import build_dataset, decode_image, preprocess_for_eval


def mocked(num_examples):
    # USE_CODE: random examples generated from the real builder's features (encoded images,
    # int64 labels), so no metadata or download is needed.
    return tfds.testing.mock_data(num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE)


@pytest.mark.parametrize("name, fixed_size", [("cifar10", True), ("imagenet2012", False)])
def test_mock_yields_what_the_real_builder_yields(name, fixed_size):
    with mocked(4):
        examples = list(tfds.load(name, split="train"))
    for example in examples:
        assert example["image"].dtype.name == "uint8" and example["image"].shape[-1] == 3
        assert example["label"].dtype.name == "int64"
        if fixed_size:
            assert tuple(example["image"].shape) == (32, 32, 3)
    if not fixed_size:  # ImageNet images come in many sizes; so does the mock
        assert len({tuple(e["image"].shape) for e in examples}) > 1


@pytest.mark.parametrize("name, classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_tfds_end_to_end(name, classes):
    with mocked(20):
        train, info = build_dataset(name, "train", batch_size=8, training=True, seed=0)
        x, y = next(iter(train))
        test, test_info = build_dataset(name, "test", batch_size=8, training=False)
        batches = [(bx.numpy(), by.numpy()) for bx, by in test]
        raw = list(tfds.load(name, split="test"))  # the same mocked records, decoded by TFDS
    assert info.num_classes == classes and len(info.class_names) == classes and info.num_examples == 20
    assert info.preprocessing == "cifar" and info.augment == "cifar"
    assert x.shape == (8, 32, 32, 3) and x.dtype.name == "float32" and y.dtype.name == "int32"
    assert all(0 <= v < classes for v in y.numpy())
    assert [len(by) for _, by in batches] == [8, 8, 4]
    assert test_info.augment == "none"
    # Evaluation batches are the records in order, each with its own label, preprocessed as
    # preprocess_for_eval does: our decoding of the encoded bytes matches TFDS's.
    images = np.concatenate([bx for bx, _ in batches])
    labels = np.concatenate([by for _, by in batches])
    np.testing.assert_array_equal(labels, [int(example["label"]) for example in raw])
    expected = np.stack([preprocess_for_eval(example["image"], "cifar").numpy() for example in raw])
    np.testing.assert_allclose(images, expected, atol=1e-5)


def manual_dir_with_tars(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    # Under mock_data, download_and_prepare is a no-op, so placeholders suffice for the check.
    for name in ("ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"):
        (manual / name).write_bytes(b"")
    return manual


def test_imagenet2012_end_to_end(tmp_path):
    manual = manual_dir_with_tars(tmp_path)
    with mocked(6):
        train, info = build_dataset(
            "imagenet2012", "train", batch_size=3, training=True, augment="inception", seed=0, manual_dir=str(manual)
        )
        x, y = next(iter(train))
        val, val_info = build_dataset(
            "imagenet2012", "validation", batch_size=3, training=False, manual_dir=str(manual)
        )
        vx, vy = next(iter(val))
        # The mock's encoded bytes are not an encoding of its decoded images: compare with ours.
        raw = list(tfds.load("imagenet2012", split="validation",
                             decoders={"image": tfds.decode.SkipDecoding()}).take(3))
    assert info.num_classes == 1000 and info.class_names[0] == "n01440764" and info.preprocessing == "imagenet_224"
    assert x.shape == (3, 224, 224, 3) and y.dtype.name == "int32"
    assert vx.shape == (3, 224, 224, 3) and val_info.augment == "none"
    # Images of several sizes, each resized (shorter side 256) and centre-cropped to 224.
    np.testing.assert_array_equal(vy.numpy(), [int(example["label"]) for example in raw])
    assert len({tuple(decode_image(example["image"]).shape) for example in raw}) > 1
    expected = np.stack([preprocess_for_eval(decode_image(example["image"]), "imagenet_224").numpy()
                         for example in raw])
    np.testing.assert_allclose(vx.numpy(), expected, atol=1e-4)


def test_imagenet2012_without_tars_says_which_files_go_where(tmp_path):
    manual = tmp_path / "manual"
    manual.mkdir()
    (manual / "ILSVRC2012_img_val.tar").write_bytes(b"")
    with mocked(2), pytest.raises(FileNotFoundError) as error:
        build_dataset("imagenet2012", "train", batch_size=2, training=True, manual_dir=str(manual))
    message = str(error.value)
    assert str(manual / "ILSVRC2012_img_train.tar") in message
    assert str(manual / "ILSVRC2012_img_val.tar") in message
    assert "Missing: ILSVRC2012_img_train.tar." in message


def test_tfds_training_batches_are_reproducible_with_a_seed():
    def run(seed):
        with mocked(16):
            ds, _ = build_dataset("cifar10", "train", batch_size=8, training=True, seed=seed)
            return [(x.numpy(), y.numpy()) for x, y in ds]

    a, b, c = run(1), run(1), run(2)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not all(np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a, c))
