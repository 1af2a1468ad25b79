"""Presets (keras_preact.presets) in keras-hub's layout, and keras-hub's ResNetV2 presets.

The keras-hub test builds keras-hub's own ResNetV2-50 backbone (random weights, trained-like
BatchNorm statistics), saves it with keras-hub's ``save_to_preset`` and checks that
keras_preact's ResNet50 built from that folder -- read without keras-hub -- gives the same
features. Only Keras and NumPy are used, so the file runs on every backend.
"""

import json
import os

import keras
import numpy as np
import pytest

import keras_preact
from keras_preact import registry

def run(model, x):
    """Eval-mode outputs as NumPy on any backend."""
    return keras.ops.convert_to_numpy(model(x, training=False))



def small_model(**kwargs):
    model = keras_preact.get_model("resnet8", num_classes=4, **kwargs)
    x = np.random.default_rng(3).random((4, 32, 32, 3)).astype(np.float32)
    model(x, training=True)  # non-trivial BN statistics
    return model, x


def test_save_to_preset_writes_keras_hubs_layout_and_round_trips(tmp_path):
    model, x = small_model(shortcut="exclusive_gating")
    preset = str(tmp_path / "preset")
    keras_preact.save_to_preset(model, preset)
    assert sorted(os.listdir(preset)) == ["config.json", "metadata.json", "model.weights.h5"]
    with open(os.path.join(preset, "config.json")) as handle:
        config = json.load(handle)
    assert config["registered_name"] == "keras_preact>ResNet"
    assert "build_config" not in config and "compile_config" not in config
    with open(os.path.join(preset, "metadata.json")) as handle:
        metadata = json.load(handle)
    assert metadata["keras_version"] == keras.version()
    assert metadata["parameter_count"] == model.count_params()
    assert {"keras_preact_version", "date_saved"} <= set(metadata)
    loaded = keras_preact.from_preset(preset)
    assert isinstance(loaded, keras_preact.ResNet)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(run(loaded, x), run(model, x))
    # Options that keep the weights valid: the backbone, a fresh classifier, stacked stages.
    features = keras_preact.from_preset(preset, include_top=False, pooling=None)
    assert run(features, x).shape == (4, 8, 8, 64)
    stacked = keras_preact.from_preset(preset, stacked_stages=True)
    np.testing.assert_allclose(run(stacked, x), run(model, x), rtol=1e-5, atol=1e-5)
    tuned = keras_preact.get_model("resnet8", weights=preset, num_classes=6, shortcut="exclusive_gating")
    np.testing.assert_array_equal(tuned.get_layer("stage3_unit1").get_weights()[0],
                                  model.get_layer("stage3_unit1").get_weights()[0])


def test_a_preset_of_another_class_is_refused_in_one_line(tmp_path):
    preset = tmp_path / "bert"
    preset.mkdir()
    (preset / "config.json").write_text(json.dumps(
        {"module": "keras_hub.src.models.bert.bert_backbone", "class_name": "BertBackbone",
         "config": {}, "registered_name": "keras_hub>BertBackbone"}))
    (preset / "model.weights.h5").write_bytes(b"")
    with pytest.raises(ValueError) as error:
        keras_preact.from_preset(str(preset))
    assert "keras_hub>BertBackbone" in str(error.value) and "\n" not in str(error.value)
    with pytest.raises(ValueError, match="BertBackbone"):
        keras_preact.ResNet50(weights=str(preset))


def test_another_network_is_refused_naming_the_first_difference(tmp_path):
    model, _ = small_model()
    keras_preact.save_to_preset(model, str(tmp_path / "r8"))
    with pytest.raises(ValueError, match="only the (model|preset) has 'stage1_unit2"):
        keras_preact.get_model("resnet14", num_classes=4, weights=str(tmp_path / "r8"))


def test_resnet56_cifar10_by_name(tmp_path, monkeypatch):
    # The shipped folder is tested below when it exists; here a preset built in tmp stands in.
    model, x = small_model()
    source = keras_preact.ResNet56()
    source(x, training=True)
    keras_preact.save_to_preset(source, str(tmp_path / "cifar10_resnet56"))
    monkeypatch.setitem(registry.PRETRAINED["resnet56"], "cifar10", str(tmp_path / "cifar10_resnet56"))
    loaded = keras_preact.ResNet56(weights="cifar10")
    np.testing.assert_array_equal(run(loaded, x), run(source, x))
    with pytest.raises(ValueError, match=r"No 'cifar10' weights for resnet20: only resnet56"):
        keras_preact.ResNet20(weights="cifar10")


SHIPPED = os.path.join(os.path.dirname(keras_preact.__file__), "pretrained", "cifar10_resnet56")


def test_the_shipped_cifar10_resnet56_preset_loads():
    """The preset ships inside the package (tools/make_pretrained.py wrote it from the shipped
    SavedModel and checked it bit for bit); a missing folder is a packaging error, not a skip."""
    assert os.path.isdir(SHIPPED), f"{SHIPPED} is missing from the package"
    model = keras_preact.ResNet56(weights="cifar10")
    assert model.architecture.num_classes == 10
    assert keras_preact.from_preset(SHIPPED).count_params() == model.count_params()


# -- keras-hub's ResNetV2 ------------------------------------------------------------------------
RESNET_V2_50 = dict(  # keras_hub/src/utils/timm/convert_resnet.py for "resnetv2_50"
    input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512],
    stackwise_num_blocks=[3, 4, 6, 3], stackwise_num_strides=[1, 2, 2, 2],
    block_type="bottleneck_block", use_pre_activation=True,
)


def randomise(model, seed=0):
    """Random weights at He scale and trained-like BN statistics in every BatchNormalization."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            k, _, _, cout = layer.kernel.shape
            layer.kernel.assign(rng.normal(0, np.sqrt(2.0 / (k * k * cout)), layer.kernel.shape).astype("float32"))
        elif isinstance(layer, keras.layers.BatchNormalization):
            c = layer.gamma.shape[0]
            layer.gamma.assign((0.5 + rng.random(c)).astype("float32"))
            layer.beta.assign((0.3 * rng.normal(size=c)).astype("float32"))
            layer.moving_mean.assign((0.3 * rng.normal(size=c)).astype("float32"))
            layer.moving_variance.assign((0.5 + 1.5 * rng.random(c)).astype("float32"))


def test_keras_hub_resnet_v2_50_preset_gives_keras_hubs_features(tmp_path):
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.ResNetBackbone(**RESNET_V2_50)
    randomise(backbone)
    preset = str(tmp_path / "resnet_v2_50")
    backbone.save_to_preset(preset)
    x = np.random.default_rng(1).normal(size=(2, 96, 96, 3)).astype(np.float32)
    expected = np.asarray(run(backbone, x))
    model = keras_preact.ResNet50(weights=preset, include_top=False, pooling=None)
    arch = model.architecture
    assert (arch.stem, arch.padding, arch.stride_at) == ("timm", "symmetric", "3x3")
    got = np.asarray(run(model, x))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    direct = keras_preact.from_preset(preset)  # keras-hub's backbone output: no pooling
    np.testing.assert_allclose(run(direct, x), expected, rtol=1e-4,
                               atol=1e-4 * np.abs(expected).max())
    with pytest.raises(ValueError, match="without a classifier"):
        keras_preact.ResNet50(weights=preset)
    with pytest.raises(ValueError, match="has no variable|has shape"):
        keras_preact.ResNet101(weights=preset, include_top=False)
