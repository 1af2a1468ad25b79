"""The network (keras_preact.model.ResNet): parameter counts (paper Table 3 and [1]'s tables),
first/last unit rules (paper appendix), propagation (Sec. 2-3, Eqn 4-8), input shapes,
validation, the config round trip, serialization, files from the previous version."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_preact
import keras_preact.model
from harness import assert_keras_round_trip, assert_rebuilds_from_config
from keras_preact import ResidualUnit, build_resnet
from keras_preact.diagnostics import propagation_norms

RNG = np.random.RandomState(0)


def trainable_params(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def units_of(model):
    return [layer for layer in model.layers if isinstance(layer, ResidualUnit)]


def zero_residual_branches(model):
    """Zero the last weight layer of every F: with pre-activation, F then outputs exactly 0."""
    for unit in units_of(model):
        last = [l for l in unit.branch_layers if isinstance(l, keras.layers.Conv2D)][-1]
        last.kernel.assign(np.zeros(last.kernel.shape, "float32"))


# --- parameter counts -----------------------------------------------------------------------

@pytest.mark.slow
def test_head_size_enters_the_parameter_count():
    # Counts of every named net are checked in test_registry.py; the head adds 64*4 + 1 per class.
    assert trainable_params(keras_preact.ResNet164(num_classes=100)) == 1_726_388
    original = [trainable_params(keras_preact.ResNet164(num_classes=n, preact=False)) for n in (10, 100)]
    assert original[1] - original[0] == 90 * (256 + 1)


def test_resnet110_one_layer_units():
    model = keras_preact.ResNet110(unit="single")
    units = units_of(model)
    assert len(units) == 108 and all(u.kind == "single" for u in units)
    assert sum(u.name.startswith("stage1_") for u in units) == 36


@pytest.mark.parametrize(
    "name,units,kind",
    [("resnet20", 9, "basic"), ("resnet56", 27, "basic"), ("resnet164", 54, "bottleneck"),
     ("resnet18", 8, "basic"), ("resnet34", 16, "basic"),
     pytest.param("resnet200", 66, "bottleneck", marks=pytest.mark.slow)],  # 15 s to build
)
def test_model_table(name, units, kind):
    model = keras_preact.get_model(name)
    assert len(units_of(model)) == units
    assert {u.kind for u in units_of(model)} == {kind}


# --- first and last unit (paper appendix) ---------------------------------------------------

def test_preact_cifar_structure_first_and_last_unit():
    model = keras_preact.ResNet164()
    names = [l.name for l in model.layers]
    assert names[:4] == ["image", "stem_conv", "stem_bn", "stem_relu"]
    assert names[-4:] == ["final_bn", "final_relu", "avg_pool", "predictions"]
    units = units_of(model)
    # First unit: the stem's BN-ReLU is its pre-activation, before the split.
    assert units[0].preactivation == "none"
    assert units[0].layer_sequence()["shortcut"] == ["W1x1"]
    assert units[0].layer_sequence()["residual"][0] == "W1x1"
    # Every later stage starts with a dimension-changing unit whose projection shortcut takes
    # the pre-activated input; the rest pre-activate their branch only.
    starts = [u for u in units if u.name.endswith("_unit1")]
    assert [u.preactivation for u in starts] == ["none", "shared", "shared"]
    assert {u.preactivation for u in units if u not in starts} == {"branch"}
    assert all(u.layer_sequence()["shared"] == ["BN", "ReLU"] for u in starts[1:])
    # The paper's CIFAR code strides the first 1x1 of the bottleneck.
    assert starts[1].branch_layers[0].strides == (2, 2)


def test_first_unit_shortcut_sees_the_activated_stem_output():
    model = build_resnet((2,), widths=(8,), input_shape=(8, 8, 3))
    zero_residual_branches(model)
    x = RNG.randn(2, 8, 8, 3).astype("float32")
    stem = keras.Model(model.input, model.get_layer("stem_relu").output)
    last = keras.Model(model.input, model.get_layer("stage1_unit2").output)
    np.testing.assert_allclose(last(x, training=False), stem(x, training=False), rtol=1e-6)


def test_imagenet_stem_and_downsampling():
    model = keras_preact.ResNet50()
    names = [l.name for l in model.layers]
    assert names[1:5] == ["stem_conv", "stem_bn", "stem_relu", "stem_pool"]
    assert model.get_layer("stem_conv").kernel_size == (7, 7)
    assert model.get_layer("stem_conv").strides == (2, 2)
    # fb.resnet.torch: the stride sits on the 3x3 of the bottleneck.
    convs = [l for l in model.get_layer("stage2_unit1").branch_layers
             if isinstance(l, keras.layers.Conv2D)]
    assert [c.strides for c in convs] == [(1, 1), (2, 2), (1, 1)]


def test_original_order_has_post_activation_stem_and_no_final_bn():
    model = keras_preact.ResNet20(preact=False)
    names = [l.name for l in model.layers]
    assert "final_bn" not in names and "final_relu" not in names
    assert names[1:4] == ["stem_conv", "stem_bn", "stem_relu"]
    assert {u.order for u in units_of(model)} == {"original"}
    # CIFAR basic nets of [1]: parameter-free zero-pad shortcuts where dimensions change.
    assert units_of(model)[3].layer_sequence()["shortcut"] == ["ZeroPad"]


def test_order_and_shortcut_options_reach_every_unit():
    model = keras_preact.ResNet20(order="relu_only_preact", shortcut="shortcut_only_gating",
                                  gate_bias_init=-3.0)
    assert {(u.order, u.shortcut, u.gate_bias_init) for u in units_of(model)} == {
        ("relu_only_preact", "shortcut_only_gating", -3.0)
    }
    assert "stem_bn" not in [l.name for l in model.layers]  # its pre-activation is ReLU only
    assert model.layers[-3].name == "final_relu"


# --- propagation (paper Sec. 2-3) ------------------------------------------------------------

def test_zero_residual_preact_net_is_identity_between_first_and_last_unit():
    model = build_resnet((60,), widths=(8,), input_shape=(8, 8, 3))
    zero_residual_branches(model)
    first_in = keras.Model(model.input, model.get_layer("stage1_unit1").input)
    last_out = keras.Model(model.input, model.get_layer("stage1_unit60").output)
    x = RNG.randn(3, 8, 8, 3).astype("float32")
    for training in (False, True):
        np.testing.assert_array_equal(last_out(x, training=training),
                                      first_in(x, training=training))


@pytest.mark.slow
@pytest.mark.parametrize("shortcut,expected_ratio", [("identity", 1.0),
                                                    ("constant_scaling", 0.5 ** 99)])
def test_shortcut_term_of_the_gradient_follows_eqn5_and_eqn8(shortcut, expected_ratio):
    """With F = 0 only the shortcut term of Eqn 5 / Eqn 8 is left: dE/dx_l = dE/dx_L * prod h'."""
    model = build_resnet((100,), widths=(8,), shortcut=shortcut, input_shape=(8, 8, 3))
    zero_residual_branches(model)
    x = RNG.rand(8, 8, 8, 3).astype("float32")
    norms = propagation_norms(model, x, np.arange(8) % 10)
    ratio = norms["backward"][0] / norms["backward"][-1]
    assert ratio == pytest.approx(expected_ratio, rel=1e-3)


@pytest.mark.slow
def test_gradient_at_initialisation_identity_vs_constant_scaling():
    """Real initialisation (He init, BN on batch statistics), 150 units = 300 weight layers.

    Identity shortcuts: the first unit's gradient does not vanish, and the scale-free product
    ||x_l|| * ||dE/dx_l|| (BN makes the net invariant to the scale of x_l) stays within a small
    factor across all units. A 0.5-scaled shortcut breaks this by many orders of magnitude: the
    shortcut term 0.5^l vanishes, and the BN-normalised branches, no longer diluted by a
    growing identity path, multiply the gradient at every unit instead (measured: ~1e17).
    """
    x = RNG.rand(16, 8, 8, 3).astype("float32")
    y = np.arange(16) % 10
    spread = {}
    for shortcut in ("identity", "constant_scaling"):
        keras.utils.set_random_seed(0)
        model = build_resnet((150,), widths=(8,), shortcut=shortcut, input_shape=(8, 8, 3))
        norms = propagation_norms(model, x, y)
        product = norms["forward"] * norms["backward"]
        spread[shortcut] = product.max() / product.min()
        if shortcut == "identity":
            assert norms["backward"][0] >= norms["backward"][-1]
    assert spread["identity"] < 50
    assert spread["constant_scaling"] > 1e6 * spread["identity"]


# --- inputs, heads, validation --------------------------------------------------------------

def test_imagenet_nets_are_fully_convolutional():
    model = keras_preact.ResNet18()
    for side in (224, 320):
        assert tuple(model(np.zeros((1, side, side, 3), "float32")).shape) == (1, 1000)


@pytest.mark.parametrize(
    "kwargs,shape",
    [(dict(include_top=False, pooling=None), (2, 8, 8, 64)),
     (dict(include_top=False, pooling="avg"), (2, 64)),
     (dict(include_top=False, pooling="max"), (2, 64)),
     (dict(num_classes=100), (2, 100))],
)
def test_heads(kwargs, shape):
    model = keras_preact.ResNet20(**kwargs)
    assert tuple(model(np.zeros((2, 32, 32, 3), "float32")).shape) == shape


def test_softmax_head_option():
    model = keras_preact.ResNet20(classifier_activation="softmax")
    p = np.asarray(model(RNG.rand(2, 32, 32, 3).astype("float32")))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: keras_preact.cifar_resnet(100), "6n\\+2"),
        (lambda: keras_preact.cifar_resnet(100, unit="bottleneck"), "9n\\+2"),
        (lambda: keras_preact.get_model("resnet1000"), "resnet1001"),
        (lambda: keras_preact.ResNet20(order="preact"), "full_preact"),
        (lambda: keras_preact.ResNet20(shortcut="gate"), "exclusive_gating"),
        (lambda: keras_preact.ResNet20(input_shape=(32, 32)), "height, width, channels"),
        (lambda: keras_preact.ResNet20(input_shape=(4, 4, 3)), ">= 8"),
        (lambda: keras_preact.ResNet50(input_shape=(16, 16, 3)), ">= 32"),
        (lambda: keras_preact.ResNet20(input_shape=(32, 32, 0)), "channels"),
        (lambda: keras_preact.ResNet20(preact=True, order="original"), "contradicts"),
        (lambda: keras_preact.ResNet20(pooling="sum", include_top=False), "avg"),
        (lambda: keras_preact.ResNet20(num_classes=0), "num_classes"),
        (lambda: keras_preact.ResNet50(unit="basic"), "fixes its unit"),
    ],
)
def test_bad_arguments_raise_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_preact_flag():
    assert {u.order for u in units_of(keras_preact.ResNet20(preact=True))} == {"full_preact"}
    assert {u.order for u in units_of(keras_preact.ResNet20(preact=False))} == {"original"}
    assert {u.order for u in units_of(keras_preact.ResNet20())} == {"full_preact"}


def test_named_model_round_trip_safe_mode(tmp_path):
    model = keras_preact.ResNet20(shortcut="exclusive_gating")
    x = RNG.rand(2, 32, 32, 3).astype("float32")
    model(x, training=True)  # move the BN statistics away from their initial values
    loaded = assert_keras_round_trip(model, x, tmp_path)
    assert loaded.name == "resnet20"


# --- the model class and its config ---------------------------------------------------------

def test_get_config_carries_the_architecture_by_its_arguments():
    model = keras_preact.ResNet164(order="relu_only_preact", shortcut="constant_scaling",
                                   shortcut_scale=0.7, num_classes=100, stacked_stages=True)
    config = model.get_config()
    assert isinstance(model, keras_preact.ResNet)
    assert config["units_per_stage"] == [18, 18, 18] and config["unit"] == "bottleneck"
    assert (config["order"], config["shortcut"], config["shortcut_scale"]) == (
        "relu_only_preact", "constant_scaling", 0.7)
    assert config["num_classes"] == 100 and config["stacked_stages"] is True
    assert config["downsample"] == "projection" and config["stride_at"] == "first"
    assert config["name"] == "resnet164"
    assert "layers" not in config  # arguments, not a layer graph
    assert model.architecture == keras_preact.ResNetConfig.from_dict(
        {k: v for k, v in config.items() if k not in ("name", "trainable")})


def test_from_config_rebuilds_the_same_network():
    model = build_resnet((2, 1), widths=(8, 16), input_shape=(16, 16, 3), order="original",
                         shortcut="exclusive_gating", num_classes=5)
    x = RNG.rand(3, 16, 16, 3).astype("float32")
    model(x, training=True)
    assert_rebuilds_from_config(model, x)


def test_rebuild_converts_between_stacked_and_unrolled_by_config():
    fast = build_resnet((3, 3), widths=(8, 16), input_shape=(16, 16, 3), stacked_stages=True)
    x = RNG.rand(2, 16, 16, 3).astype("float32")
    fast(x, training=True)
    flat = fast.rebuild(stacked_stages=False)
    assert flat.architecture == fast.architecture.replace(stacked_stages=False)
    assert [l.name for l in flat.chain_layers() if isinstance(l, ResidualUnit)][:3] == [
        "stage1_unit1", "stage1_unit2", "stage1_unit3"]
    np.testing.assert_allclose(flat(x, training=False), fast(x, training=False), rtol=1e-5, atol=1e-6)
    again = flat.rebuild(stacked_stages=True, recompute=True)
    np.testing.assert_allclose(again(x, training=False), fast(x, training=False), rtol=1e-5, atol=1e-6)


def test_chain_layers_follow_the_call_order():
    model = keras_preact.ResNet20()
    x = model.inputs[0]
    for layer in model.chain_layers():
        assert layer.input is x
        x = layer.output
    assert x is model.outputs[0]


def test_as_resnet_explains_how_to_convert_other_models():
    inputs = keras.Input((8, 8, 3))
    plain = keras.Model(inputs, keras.layers.Conv2D(2, 3)(inputs))
    with pytest.raises(ValueError, match="set_weights"):
        keras_preact.model.as_resnet(plain)


# --- files written by keras_preact 0.1 (tests/fixtures, see its README) ---------------------

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")


@pytest.mark.parametrize("name,rebuild", [
    ("legacy_tiny", lambda: build_resnet((1, 2), widths=(4, 8), input_shape=(8, 8, 3),
                                         num_classes=3, shortcut="exclusive_gating",
                                         padding="same")),
    ("legacy_tiny_stacked", lambda: build_resnet((1, 3), widths=(4, 8), input_shape=(8, 8, 3),
                                                 num_classes=3, unit="bottleneck",
                                                 stacked_stages=True, padding="same")),
])
def test_files_of_the_previous_version_load_and_convert(name, rebuild):
    io = np.load(os.path.join(FIXTURES, "legacy_io.npz"))
    old = keras.saving.load_model(os.path.join(FIXTURES, f"{name}.keras"), safe_mode=True)
    np.testing.assert_allclose(old(io["x"], training=False), io[name], rtol=1e-6, atol=1e-6)
    # The conversion of docs/migration.md: rebuild the architecture, copy the weights.
    new = rebuild()
    new.set_weights(old.get_weights())
    np.testing.assert_allclose(new(io["x"], training=False), io[name], rtol=1e-6, atol=1e-6)


# The config of a ResNet as keras_preact 0.2.0 wrote it (before the unit options became one
# value); the file of the same network is tests/fixtures/v0_2_tiny.keras.
V0_2_CONFIG = {
    "name": "v0_2_tiny", "trainable": True, "units_per_stage": [1, 2], "family": "cifar",
    "unit": "basic", "widths": [4, 8], "stem": "cifar", "stem_width": 4, "padding": "symmetric",
    "order": "full_preact", "shortcut": "exclusive_gating", "downsample": "zero_pad",
    "stride_at": "first", "num_classes": 3, "input_shape": [8, 8, 3], "include_top": True,
    "pooling": "avg", "classifier_activation": None, "shortcut_scale": 0.5,
    "scale_residual": False, "gate_bias_init": -6.0, "dropout_rate": 0.5, "bn_momentum": 0.9,
    "bn_epsilon": 1e-05, "fused_bn": True, "stacked_stages": True, "recompute": False,
    "dtype_policy": "float32",
}


def test_configs_and_files_of_version_0_2_load_to_the_same_network(tmp_path):
    # The same arguments, written back unchanged, and the layout it was built in (NHWC: the
    # data_format option came later).
    written = {**V0_2_CONFIG, "data_format": "channels_last"}
    model = keras_preact.ResNet.from_config(V0_2_CONFIG)
    assert model.get_config() == written
    io = np.load(os.path.join(FIXTURES, "v0_2_io.npz"))
    old = keras.saving.load_model(os.path.join(FIXTURES, "v0_2_tiny.keras"), safe_mode=True)
    assert isinstance(old, keras_preact.ResNet) and old.get_config() == written
    np.testing.assert_allclose(old(io["x"], training=False), io["v0_2_tiny"], rtol=1e-6, atol=1e-6)
    # Its layers write the configs they were read from (the units' padding included).
    unit = old.get_layer("stage2_unit1")
    assert (unit.padding, unit.gate_bias_init, unit.strides) == ("symmetric", -6.0, 2)
    # Written again by this version, it loads to the same network once more.
    assert_keras_round_trip(old, io["x"], tmp_path)


def test_a_network_config_without_padding_is_tensorflows_padding():
    """Configs written before the padding option existed describe "same"-padded networks."""
    config = {k: v for k, v in V0_2_CONFIG.items() if k != "padding"}
    model = keras_preact.ResNet.from_config(config)
    assert model.architecture.padding == "same"
    assert {u.padding for u in units_of(model)} == {"same"}
    # Built from arguments, the network and its units agree on the symmetric default.
    fresh = build_resnet((1, 2), widths=(4, 8), input_shape=(8, 8, 3))
    assert fresh.architecture.padding == "symmetric" and {u.padding for u in units_of(fresh)} == {"symmetric"}


def test_all_layers_lists_every_sublayer_from_public_lists():
    model = build_resnet((1, 2), widths=(4, 8), input_shape=(8, 8, 3), num_classes=3,
                         shortcut="exclusive_gating")
    layers = keras_preact.model.all_layers(model)
    assert len({id(l) for l in layers}) == len(layers)
    bn = [l for l in layers if isinstance(l, keras.layers.BatchNormalization)]
    # stem_bn + final_bn + the BN ops of every unit's plan.
    expected = 2 + sum(len(u._plan.bn_names()) for u in units_of(model))
    assert len(bn) == expected == 2 + 1 + 2 + 2
    assert sum(type(l).__name__ == "ShortcutGate" for l in layers) == 3
    # The weights of the layers found are every weight of the model, once.
    found = {id(w) for l in layers if not isinstance(l, ResidualUnit) for w in l.weights}
    assert found == {id(w) for w in model.weights}


@pytest.mark.slow
def test_package_imports_under_python_OO():
    """``python -OO`` strips docstrings; nothing may build on them at import time."""
    result = subprocess.run(
        [sys.executable, "-OO", "-c", "import keras_preact, keras_preact.diagnostics.__main__"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"},
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_dtype_policy_option_and_float32_copy():
    """``dtype_policy`` is an architecture argument: every layer but the float32 head computes
    in half precision, weights stay float32, the config round-trips, and ``float32_model``
    (what export uses) is the same network computing in float32."""
    import numpy as np
    import tensorflow as tf

    from keras_preact.model import ResNet, float32_model

    model = ResNet((1, 1, 1), widths=(4, 8, 8), input_shape=(8, 8, 3), dtype_policy="mixed_bfloat16")
    assert model.architecture.dtype_policy == "mixed_bfloat16"
    assert model.get_layer("stem_conv").compute_dtype == "bfloat16"
    assert model.get_layer("predictions").compute_dtype == "float32"
    assert {v.dtype for v in model.variables} == {"float32"}
    assert ResNet.from_config(model.get_config()).get_layer("stem_conv").compute_dtype == "bfloat16"
    x = np.random.RandomState(0).rand(2, 8, 8, 3).astype("float32")
    assert model(x).dtype == tf.float32
    plain = float32_model(model)
    assert plain.architecture.dtype_policy == "float32"
    assert plain.get_layer("stem_conv").compute_dtype == "float32"
    for a, b in zip(model.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(plain(x), model(x), atol=0.05)
    assert float32_model(plain) is plain
    with pytest.raises(ValueError, match="dtype_policy"):
        ResNet((1, 1, 1), dtype_policy="float64")
