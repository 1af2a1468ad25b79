"""Weight import: timm ResNetV2 and PyTorch state dicts, checked against logits PyTorch computed.

The fixtures in tests/fixtures/torch/ were made once by tools/make_torch_fixtures.py with torch
and timm installed; these tests need neither (the .pth files go through the package's own
restricted reader when torch is absent).
"""

import os
import pickle
import zipfile

import numpy as np
import pytest

import keras_preact
from keras_preact import weights

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "torch")
IO = np.load(os.path.join(FIXTURES, "io.npz"))


def fixture(name):
    return os.path.join(FIXTURES, name)


def assert_logits(model, key, tolerance=1e-5):
    got = np.asarray(model(IO[f"{key}_x"], training=False))
    expected = IO[f"{key}_logits"]
    assert np.abs(got - expected).max() <= tolerance * np.abs(expected).max()


@pytest.mark.parametrize("file,unit", [("timm_bottleneck.safetensors", "bottleneck"),
                                       ("timm_basic.pth", "basic")])
def test_timm_file_builds_the_architecture_it_fixes_and_gives_timms_logits(file, unit):
    model = weights.model_from_file(fixture(file))
    arch = model.architecture
    assert (arch.stem, arch.padding, arch.unit, arch.stem_width) == ("timm", "symmetric", unit, 8)
    assert_logits(model, file.split(".")[0])


def test_timm_file_into_a_model_with_the_paper_stem_is_refused_naming_the_tensor():
    model = keras_preact.build_resnet((1, 1, 1), family="imagenet", unit="bottleneck",
                                      widths=(8, 16, 32), num_classes=5, stem_width=8)
    with pytest.raises(ValueError, match="no tensor for 'stem_bn/gamma'"):
        weights.load_weights(model, fixture("timm_bottleneck.safetensors"))


def test_mismatched_architecture_names_the_first_mismatching_tensor():
    deeper = keras_preact.ResNet(
        (1, 2, 1), family="imagenet", unit="bottleneck", widths=(8, 16, 32), stem="timm",
        stem_width=8, num_classes=5)
    with pytest.raises(ValueError, match=r"no tensor 'stages\.1\.blocks\.1\.norm1\.weight'"):
        weights.load_weights(deeper, fixture("timm_bottleneck.safetensors"))
    wider = keras_preact.ResNet(
        (1, 1, 1), family="imagenet", unit="bottleneck", widths=(8, 16, 64), stem="timm",
        stem_width=8, num_classes=5)
    with pytest.raises(ValueError, match=r"'stages\.2\.blocks\.0\.conv1\.weight' has shape"):
        weights.load_weights(wider, fixture("timm_bottleneck.safetensors"))
    shallower = keras_preact.ResNet(
        (1, 1), family="imagenet", unit="bottleneck", widths=(8, 16), stem="timm", stem_width=8,
        include_top=False)
    with pytest.raises(ValueError, match=r"'norm\.weight' has shape \(128,\)"):
        weights.load_weights(shallower, fixture("timm_bottleneck.safetensors"))
    headless = keras_preact.ResNet(
        (1, 1, 1), family="imagenet", unit="bottleneck", widths=(8, 16, 32), stem="timm",
        stem_width=8, include_top=False)
    with pytest.raises(ValueError, match=r"no variable for tensor 'head\.fc\.(weight|bias)'"):
        weights.load_weights(headless, fixture("timm_bottleneck.safetensors"))
    weights.load_weights(headless, fixture("timm_bottleneck.safetensors"), skip_head=True)


@pytest.mark.parametrize("file,kwargs", [
    ("cifar_basic.pth", dict(widths=(8, 16, 32))),
    ("cifar_bottleneck_3x3.pth", dict(widths=(4, 8, 16), unit="bottleneck", stride_at="3x3")),
])
def test_independent_torch_build_matches_with_symmetric_padding_only(file, kwargs):
    key = file.split(".")[0]
    exact = keras_preact.build_resnet((1, 1, 1), num_classes=3, **kwargs)
    weights.load_weights(exact, fixture(file))
    assert_logits(exact, key)
    tf_padded = keras_preact.build_resnet((1, 1, 1), num_classes=3, padding="same", **kwargs)
    weights.load_weights(tf_padded, fixture(file))
    got, expected = np.asarray(tf_padded(IO[f"{key}_x"], training=False)), IO[f"{key}_logits"]
    assert np.abs(got - expected).max() > 1e-3 * np.abs(expected).max()


def test_stacked_models_load_unit_by_unit():
    model = keras_preact.build_resnet((1, 1, 1), num_classes=3, widths=(8, 16, 32),
                                      stacked_stages=True)
    weights.load_weights(model, fixture("cifar_basic.pth"))
    assert_logits(model, "cifar_basic")


def test_named_constructor_takes_weights_and_the_options_the_file_fixes(tmp_path):
    # A reduced timm file is not resnet50: the first mismatching tensor is named.
    with pytest.raises(ValueError, match=r"'stages\.0\.blocks\.0\.conv1\.weight' has shape"):
        keras_preact.ResNet50(weights=fixture("timm_bottleneck.safetensors"))
    with pytest.raises(ValueError, match="fixes stem='timm'"):
        keras_preact.ResNet50(weights=fixture("timm_bottleneck.safetensors"), stem="imagenet")


def test_skip_head_keeps_the_backbone_for_a_new_class_count():
    model = keras_preact.ResNet((1, 1, 1), family="imagenet", unit="bottleneck",
                                widths=(8, 16, 32), stem="timm", stem_width=8, num_classes=7)
    head = [np.array(w) for w in model.get_layer("predictions").get_weights()]
    weights.load_weights(model, fixture("timm_bottleneck.safetensors"), skip_head=True)
    reference = weights.model_from_file(fixture("timm_bottleneck.safetensors"))
    np.testing.assert_array_equal(model.get_layer("stage3_unit1").get_weights()[0],
                                  reference.get_layer("stage3_unit1").get_weights()[0])
    for before, after in zip(head, model.get_layer("predictions").get_weights()):
        np.testing.assert_array_equal(before, after)


def test_keras_files_round_trip(tmp_path):
    model = weights.model_from_file(fixture("timm_basic.pth"))
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    fresh = keras_preact.ResNet.from_architecture(model.architecture)
    weights.load_weights(fresh, path)
    assert_logits(fresh, "timm_basic")


def test_restricted_reader_equals_safetensors_and_refuses_code(tmp_path):
    # The reader used when PyTorch is not installed (CI installs it for the backend runs).
    tensors = weights.read_torch_archive(fixture("cifar_basic.pth"))
    assert tensors["stem_conv.weight"].shape == (8, 3, 3, 3)
    assert tensors["stem_bn.num_batches_tracked"].dtype == np.int64
    # A pickle that calls anything but the tensor rebuilders is refused, not run.
    evil = str(tmp_path / "evil.pth")
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("archive/data.pkl", pickle.dumps(os.system))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        weights.read_torch_archive(evil)


@pytest.mark.parametrize("name,match", [("missing.safetensors", "No weights file"),
                                        ("weights.npy", "Cannot tell the format")])
def test_unknown_files(tmp_path, name, match):
    path = tmp_path / name
    if name.endswith(".npy"):
        path.write_bytes(b"0")
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        weights.read_tensors(str(path))


def test_torch_layout_round_trip_through_safetensors_and_the_registry(tmp_path):
    source = keras_preact.get_model("resnet8", shortcut="exclusive_gating", num_classes=4)
    x = np.random.RandomState(3).rand(2, 32, 32, 3).astype("float32")
    source(x, training=True)  # non-trivial BN statistics
    path = str(tmp_path / "resnet8.safetensors")
    weights.write_safetensors(weights.torch_tensors(source), path)
    assert weights.read_tensors(path)["stem_conv.weight"].shape == (16, 3, 3, 3)
    copy = keras_preact.get_model("resnet8", shortcut="exclusive_gating", num_classes=4,
                                  weights=path)
    np.testing.assert_array_equal(copy(x, training=False), source(x, training=False))
    with pytest.raises(ValueError, match="gate"):  # a file without the gates
        keras_preact.get_model("resnet8", num_classes=4, weights=path)


def test_another_class_count_takes_the_backbone_and_a_fresh_head(tmp_path):
    source = keras_preact.get_model("resnet8", num_classes=4)
    path = str(tmp_path / "r8.safetensors")
    weights.write_safetensors(weights.torch_tensors(source), path)
    tuned = keras_preact.get_model("resnet8", num_classes=6, weights=path)
    assert tuned.get_layer("predictions").kernel.shape == (64, 6)
    np.testing.assert_array_equal(tuned.get_layer("stage3_unit1").get_weights()[0],
                                  source.get_layer("stage3_unit1").get_weights()[0])


def test_safetensors_bfloat16_tensors_read_as_float32(tmp_path):
    # safetensors.numpy cannot hold bfloat16; the reader widens its raw bytes (exactly).
    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file

    source = {"w": torch.randn(3, 5).bfloat16(), "b": torch.randn(5), "n": torch.tensor(7)}
    path = str(tmp_path / "bf16.safetensors")
    save_file(source, path)
    tensors = weights.read_safetensors(path)
    assert tensors["w"].dtype == np.float32 and tensors["n"].dtype == np.int64
    for name, value in source.items():
        np.testing.assert_array_equal(tensors[name], value.float().numpy() if value.is_floating_point()
                                      else value.numpy())
