"""ResNetConfig: defaults per family, validation, the per-unit layout, dict round trip."""

import pytest

from keras_preact.config import ResNetConfig, resolve_order


def test_defaults_follow_the_family():
    cifar = ResNetConfig((3, 3, 3))
    assert (cifar.widths, cifar.stem, cifar.downsample, cifar.stride_at, cifar.input_shape) == (
        (16, 32, 64), "cifar", "zero_pad", "first", (32, 32, 3))
    bottleneck = ResNetConfig((2, 2, 2), unit="bottleneck")
    assert bottleneck.downsample == "projection"
    imagenet = ResNetConfig((2, 2, 2, 2), family="imagenet")
    assert (imagenet.widths, imagenet.stem, imagenet.downsample, imagenet.stride_at) == (
        (64, 128, 256, 512), "imagenet", "projection", "3x3")
    assert imagenet.input_shape == (None, None, 3)


def test_layout_applies_the_first_unit_rules():
    slots = ResNetConfig((2, 2), widths=(8, 16)).layout()
    assert [(s.name, s.strides, s.preactivation) for s in slots] == [
        ("stage1_unit1", 1, "none"), ("stage1_unit2", 1, "branch"),
        ("stage2_unit1", 2, "shared"), ("stage2_unit2", 1, "branch")]
    post = ResNetConfig((2, 1, 1), order="original").layout()
    assert {s.preactivation for s in post} == {"branch"}
    stacked = ResNetConfig((3, 1, 4), stacked_stages=True).layout()
    assert [(s.name, s.count, s.stacked) for s in stacked] == [
        ("stage1_unit1", 1, False), ("stage1_units2to3", 2, True), ("stage2_unit1", 1, False),
        ("stage3_unit1", 1, False), ("stage3_units2to4", 3, True)]


def test_dict_round_trip_and_replace():
    config = ResNetConfig.create((1, 2), preact=False, widths=(8, 16), shortcut="conv1x1",
                                 input_shape=(16, 16, 3), num_classes=4)
    data = config.to_dict()
    assert data["units_per_stage"] == [1, 2] and data["order"] == "original"
    assert ResNetConfig.from_dict(data) == config
    assert config.replace(stacked_stages=True).stacked_stages is True
    with pytest.raises(ValueError, match="Unknown architecture argument"):
        ResNetConfig.from_dict({**data, "depth": 20})


@pytest.mark.parametrize("kwargs,match", [
    (dict(units_per_stage=()), "at least one unit"),
    (dict(units_per_stage=(1, 0)), "at least one unit"),
    (dict(units_per_stage=(1, 1), widths=(8,)), "one width per stage"),
    (dict(units_per_stage=("a",)), "integers"),
    (dict(units_per_stage=(1,), widths=(0,)), "positive"),
    (dict(units_per_stage=(1,), recompute=True), "stacked_stages"),
    (dict(units_per_stage=(1,), stacked_stages=True, shortcut="dropout"), "dropout"),
    (dict(units_per_stage=(1,), stem="vgg"), "stem"),
    (dict(units_per_stage=(1, 1, 1), stem="timm", order="original"), "pre-activation"),
    (dict(units_per_stage=(1, 1, 1), padding="reflect"), "padding"),
    (dict(units_per_stage=(1, 1, 1), stem_width=0), "stem_width"),
    (dict(units_per_stage=(1,), family="svhn"), "family"),
    (dict(units_per_stage=(1, 1, 1), dropout_rate=1.0), "dropout_rate"),
    (dict(units_per_stage=(1, 1, 1), num_classes=True), "num_classes"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ResNetConfig(**kwargs)


def test_preact_shorthand():
    assert resolve_order(None, None) == "full_preact"
    assert resolve_order(False, None) == "original"
    assert resolve_order(True, "relu_only_preact") == "relu_only_preact"
    with pytest.raises(ValueError, match="contradicts"):
        resolve_order(False, "full_preact")
