"""The model registry: names, aliases, resnet<depth>, errors, and every registered model built,
counted, serialized (.keras, safe_mode=True), reloaded and rebuilt from its config."""

import numpy as np
import pytest

import keras_preact
from harness import assert_keras_round_trip, assert_rebuilds_from_config
from keras_preact import registry
from keras_preact.units import ResidualUnit

# Parameter counts (trainable + BN moving statistics) as built by keras_preact 0.1.0.
EXPECTED_PARAMS = {
    "resnet20": 271_098,
    "resnet32": 466_426,
    "resnet44": 661_754,
    "resnet56": 857_082,
    "resnet110": 1_736_058,
    "resnet164": 1_727_482,
    "resnet1001": 10_476_922,
    "resnet1202": 19_510_906,
    "resnet18": 11_695_528,
    "resnet34": 21_811_112,
    "resnet50": 25_594_792,
    "resnet101": 44_639_144,
    "resnet152": 60_328_872,
    "resnet200": 64_834_472,
    "resnet110_1layer": 1_736_058,
}

# Trainable parameters: the paper's reference code (CIFAR bottleneck nets), fb.resnet.torch /
# keras.applications (ImageNet), or the paper's rounded figures (Table 3, [1] Table 6).
REFERENCE_TRAINABLE = {
    "resnet164": 1_703_258,
    "resnet1001": 10_327_706,
    "resnet50": 25_549_352,
    "resnet101": 44_541_480,
    "resnet152": 60_185_128,
    "resnet200": 64_666_152,
}
PAPER_TRAINABLE = {"resnet110": 1.7e6, "resnet110_1layer": 1.7e6, "resnet1202": 19.4e6}


def test_every_registered_name_has_an_expected_count():
    assert set(registry.list_models()) == set(EXPECTED_PARAMS)


# The deep nets take 10 s (ResNet-101, -164) to minutes (ResNet-1202) each to build and round-trip
# on a 2-core CPU: they are in the slow tier (`pytest -m slow`); the fast tier builds the rest.
DEEP_MODELS = ("resnet101", "resnet110_1layer", "resnet152", "resnet164", "resnet200", "resnet1001",
               "resnet1202")


@pytest.mark.parametrize("name", [
    pytest.param(name, marks=pytest.mark.slow) if name in DEEP_MODELS else name
    for name in registry.list_models()
])
def test_registered_model_builds_counts_serializes_and_rebuilds(name, tmp_path):
    model = keras_preact.get_model(name)
    spec = registry.resolve(name)
    assert isinstance(model, keras_preact.ResNet)
    assert model.name == spec.name == name
    assert model.count_params() == EXPECTED_PARAMS[name]
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    if name in REFERENCE_TRAINABLE:
        assert trainable == REFERENCE_TRAINABLE[name]
    if name in PAPER_TRAINABLE:
        assert abs(trainable / PAPER_TRAINABLE[name] - 1) < 0.02
    units = [l for l in model.layers if isinstance(l, ResidualUnit)]
    assert len(units) == sum(spec.units_per_stage)
    assert {u.kind for u in units} == {spec.unit}

    side = 32 if spec.family == "cifar" else 64  # ImageNet nets are fully convolutional
    x = np.random.RandomState(0).rand(2, side, side, 3).astype("float32")
    model(x, training=True)  # move BN statistics away from their initial values
    assert_rebuilds_from_config(model, x)
    loaded = assert_keras_round_trip(model, x, tmp_path)
    assert isinstance(loaded, keras_preact.ResNet) and loaded.name == name
    assert loaded.architecture == model.architecture


@pytest.mark.parametrize("name,canonical,unit,stages", [
    ("ResNet-164", "resnet164", "bottleneck", (18, 18, 18)),
    ("resnet_20", "resnet20", "basic", (3, 3, 3)),
    ("PreAct-ResNet-1001", "resnet1001", "bottleneck", (111, 111, 111)),
    ("resnet110-1layer", "resnet110_1layer", "single", (36, 36, 36)),
    ("resnet8", "resnet8", "basic", (1, 1, 1)),
    ("resnet302", "resnet302", "basic", (50, 50, 50)),
    ("resnet29", "resnet29", "basic", None),  # 29 = 9n+2: bottleneck only
    ("resnet50", "resnet50", "bottleneck", (3, 4, 6, 3)),
])
def test_resolve_names_aliases_and_depths(name, canonical, unit, stages):
    if stages is None:
        with pytest.raises(registry.ModelNameError, match="6n\\+2") as error:
            registry.resolve(name)
        assert error.value.argument == "name"
        spec = registry.resolve(name, unit="bottleneck")
        assert (spec.unit, spec.units_per_stage, spec.depth) == ("bottleneck", (3, 3, 3), 29)
        return
    spec = registry.resolve(name)
    assert (spec.name, spec.unit, spec.units_per_stage) == (canonical, unit, stages)
    assert spec.family == ("imagenet" if canonical == "resnet50" else "cifar")


def test_unit_option_changes_the_cifar_table_at_the_same_depth():
    spec = registry.resolve("resnet110", unit="single")
    assert (spec.name, spec.units_per_stage, spec.depth) == ("resnet110_1layer", (36, 36, 36), 110)
    model = keras_preact.cifar_resnet(20, unit="single", num_classes=7)
    assert model.architecture.units_per_stage == (6, 6, 6) and model.name == "resnet20_1layer"


@pytest.mark.parametrize("name,unit,argument,match", [
    ("resnet", None, "name", "Valid choices"),
    ("vgg16", None, "name", "resnet20"),
    ("resnet1000", None, "name", "resnet1001"),
    ("resnet100", "bottleneck", "name", "9n\\+2"),
    ("resnet50", "basic", "unit", "fixes its unit"),
    ("resnet20", "wide", "unit", "basic"),
    ("resnet110_1layer", "basic", "unit", "single"),
])
def test_bad_names_say_which_argument_and_the_valid_choices(name, unit, argument, match):
    with pytest.raises(registry.ModelNameError, match=match) as error:
        registry.resolve(name, unit=unit)
    assert error.value.argument == argument
    assert isinstance(error.value, ValueError)


def test_named_constructors_are_the_registry():
    assert keras_preact.ResNet20.__name__ == "ResNet20"
    assert "basic" in keras_preact.ResNet20.__doc__
    model = keras_preact.ResNet18(num_classes=5)
    assert model.architecture.family == "imagenet" and model.architecture.num_classes == 5
    assert keras_preact.get_model("resnet18").architecture.num_classes == 1000
    assert registry.model_family("ResNet-50") == "imagenet"
    assert registry.model_family("resnet8") == "cifar"
