"""``data_format``: every layer and network in NHWC and NCHW, the same function for the same weights.

channels_last (NHWC) and channels_first (NCHW) builds of one network hold the same weights
(Keras keeps conv kernels HWIO in both), so each test builds a network or unit in both layouts,
gives them one set of weights and compares outputs on transposed inputs. Then: the resolved
layout in every config, Keras' global default, ``.keras`` and ``.weights.h5`` files moving
between layouts, the weight importers into channels_first models, the export (which serves
NHWC) and TensorFlow's CPU, which runs NCHW convolutions only with oneDNN
(``keras_preact.norm.tensorflow_runs_channels_first``). Runs under every Keras backend; the
export cases need TensorFlow.
"""

import os

import keras
import numpy as np
import pytest

import keras_preact
from backend_cases import seeded_weights
from harness import assert_keras_round_trip, to_numpy
from keras_preact import ResidualUnit, ResNet, ShortcutGate, StackedStage, ZeroPadShortcut
from keras_preact import norm, presets, weights
from keras_preact.common import KINDS, ORDERS, SHORTCUTS
from keras_preact.config import ResNetConfig
from keras_preact.model import with_data_format
from keras_preact.padding import SymmetricConv2D, SymmetricMaxPooling2D
from keras_preact.tta import translate, tta_logits, view_of

CL, CF = "channels_last", "channels_first"
TENSORFLOW = keras.backend.backend() == "tensorflow"
FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")

needs_nchw = pytest.mark.skipif(
    TENSORFLOW and not norm.tensorflow_runs_channels_first(),
    reason="this TensorFlow has no NCHW convolution on its CPU (oneDNN off, no GPU), so "
    "channels_first networks refuse to build here (the refusal is tested below)",
)
needs_tensorflow = pytest.mark.skipif(not TENSORFLOW, reason="the export is TensorFlow's")


def nchw(x):
    return np.transpose(x, (0, 3, 1, 2))


def nhwc(x):
    return np.transpose(x, (0, 2, 3, 1))


def images(batch, side, channels=3, seed=0):
    return np.random.default_rng(seed).normal(size=(batch, side, side, channels)).astype("float32")


def assert_close(got, expected, tolerance=1e-5):
    """``max |got - expected| <= tolerance * max |expected|``: the error relative to the
    output's scale (a deep net's logits at random weights reach 1e10)."""
    got, expected = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    assert got.shape == expected.shape
    scale = max(np.abs(expected).max(), 1e-30)
    assert np.abs(got - expected).max() <= tolerance * scale, np.abs(got - expected).max() / scale


@pytest.fixture
def channels_first_default():
    """Keras' global image_data_format set to channels_first for one test, then restored."""
    previous = keras.config.image_data_format()
    keras.config.set_image_data_format(CF)
    try:
        yield
    finally:
        keras.config.set_image_data_format(previous)


# -- networks ----------------------------------------------------------------------------------
NETWORKS = {  # name -> (model name, options, input side, batch)
    "resnet20": ("resnet20", {}, 32, 4),
    "resnet164": ("resnet164", {}, 32, 2),
    "resnet50_64px": ("resnet50", {"num_classes": 10}, 64, 2),
    "resnet20_stacked": ("resnet20", {"stacked_stages": True}, 32, 4),
}


@needs_nchw
@pytest.mark.parametrize("case", sorted(NETWORKS))
def test_networks_compute_the_same_logits_in_both_layouts(case):
    name, options, side, batch = NETWORKS[case]
    last = keras_preact.get_model(name, data_format=CL, **options)
    seeded_weights(last, seed=1)
    first = with_data_format(last, CF)
    assert first.architecture.data_format == CF
    assert first.architecture.replace(data_format=CL) == last.architecture
    spatial = None if name == "resnet50" else side  # ImageNet nets take any size
    assert tuple(first.inputs[0].shape) == (None, 3, spatial, spatial)
    x = images(batch, side)
    assert_close(to_numpy(first(nchw(x), training=False)), to_numpy(last(x, training=False)))
    if case == "resnet20":  # training mode: batch statistics, the fused kernel's NCHW path
        assert_close(to_numpy(first(nchw(x), training=True)), to_numpy(last(x, training=True)))
    assert with_data_format(first, CF) is first
    assert_close(to_numpy(with_data_format(first, CL)(x, training=False)),
                 to_numpy(last(x, training=False)))


# -- every unit option -------------------------------------------------------------------------
UNIT_CASES = (
    [dict(kind=kind, order=order, strides=2) for kind in KINDS for order in ORDERS]
    + [dict(shortcut=shortcut, strides=2) for shortcut in SHORTCUTS]
    + [dict(shortcut=shortcut, in_channels=4) for shortcut in SHORTCUTS]  # h keeps the shape
    + [dict(kind="bottleneck", in_channels=16), dict(kind="single", in_channels=4),
       dict(downsample="zero_pad", strides=2, in_channels=2),
       dict(downsample="zero_pad", kind="bottleneck", strides=2, in_channels=2),
       dict(kind="bottleneck", stride_at="3x3", strides=2), dict(padding="same", strides=2),
       dict(fused_bn=False, strides=2), dict(preactivation="shared", strides=2),
       dict(preactivation="none", in_channels=4), dict(shortcut="constant_scaling", scale_residual=True),
       dict(shortcut="exclusive_gating", kind="bottleneck", stride_at="3x3", strides=2)]
)


def case_id(case):
    return "-".join(f"{k}={v}" for k, v in case.items())


def unit_pair(in_channels, side, **options):
    """The same unit built NHWC and NCHW, with the NHWC one's (seeded) weights in both."""
    last = ResidualUnit(4, data_format=CL, **options)
    last.build((None, side, side, in_channels))
    seeded_weights(last, seed=2)
    first = ResidualUnit(4, data_format=CF, **options)
    first.build((None, in_channels, side, side))
    first.set_weights(last.get_weights())
    return last, first


@needs_nchw
@pytest.mark.parametrize("case", UNIT_CASES, ids=case_id)
def test_every_unit_option_is_the_same_function_in_both_layouts(case):
    options = dict(case)
    in_channels = options.pop("in_channels", 6)
    last, first = unit_pair(in_channels, 8, **options)
    x = images(3, 8, in_channels, seed=3)
    expected = to_numpy(last(x, training=False))
    got = to_numpy(first(nchw(x), training=False))
    assert got.shape == nchw(expected).shape
    assert first.compute_output_shape((None, in_channels, 8, 8)) == (None, *got.shape[1:])
    assert_close(nhwc(got), expected)
    if options.get("shortcut") != "dropout":  # its training-mode mask is random
        assert_close(nhwc(to_numpy(first(nchw(x), training=True))), to_numpy(last(x, training=True)))
    assert [l.name for l in first.op_layers()] == [l.name for l in last.op_layers()]


@needs_nchw
@pytest.mark.parametrize("kind", ["basic", "bottleneck"])
def test_stacked_stage_is_the_same_loop_in_both_layouts(kind):
    options = dict(kind=kind, shortcut="exclusive_gating", gate_bias_init=0.0)  # the gate's bias
    channels = 4 * (4 if kind == "bottleneck" else 1)
    last = StackedStage(3, 4, data_format=CL, **options)
    last.build((None, 8, 8, channels))
    seeded_weights(last, seed=4)
    first = StackedStage(3, 4, data_format=CF, **options)
    first.build((None, channels, 8, 8))
    first.set_weights(last.get_weights())
    x = images(2, 8, channels, seed=5)
    for training in (False, True):
        assert_close(nhwc(to_numpy(first(nchw(x), training=training))),
                     to_numpy(last(x, training=training)))
    # The moving statistics are updated alike (per channel, from NCHW batch statistics).
    for a, b in zip(first.weights, last.weights):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-5, atol=1e-6)


@needs_nchw
def test_padding_shortcut_and_norm_layers_act_on_the_spatial_and_channel_axes():
    x = images(2, 9, 5, seed=6)
    for make in (lambda f: SymmetricConv2D(3, 3, strides=2, data_format=f),
                 lambda f: SymmetricMaxPooling2D(3, 2, data_format=f),
                 lambda f: ZeroPadShortcut(8, 2, data_format=f),
                 lambda f: ShortcutGate(5, 2, 0.5, data_format=f)):  # NCHW out: width = channels
        last, first = make(CL), make(CF)
        last.build(x.shape)
        first.build(nchw(x).shape)
        seeded_weights(last, seed=7)  # the gate's bias too: a constant one would hide its axis
        first.set_weights(last.get_weights())
        got = to_numpy(first(nchw(x)))
        assert tuple(first.compute_output_shape(nchw(x).shape)) == got.shape
        np.testing.assert_allclose(nhwc(got), to_numpy(last(x)), rtol=1e-5, atol=1e-6)
    # BatchNorm over the channel axis: the shared math, and the fused layer against Keras' own.
    gamma, beta = np.array([1.0, 2.0, 0.5, 1.5, 1.0], "float32"), np.linspace(-1, 1, 5).astype("float32")
    mean, variance = np.linspace(0, 0.4, 5).astype("float32"), np.linspace(0.5, 2, 5).astype("float32")
    for training in (False, True):
        y_last, *stats_last = norm.batch_norm_forward(x, gamma, beta, mean, variance, 1e-5, training)
        y_first, *stats_first = norm.batch_norm_forward(nchw(x), gamma, beta, mean, variance, 1e-5,
                                                        training, CF)
        np.testing.assert_allclose(nhwc(to_numpy(y_first)), to_numpy(y_last), rtol=1e-5, atol=1e-5)
        for a, b in zip(stats_first, stats_last):
            if b is not None:
                np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-5, atol=1e-6)
    fused, reference = norm.batch_norm(data_format=CF), keras.layers.BatchNormalization(
        axis=1, momentum=norm.BN_MOMENTUM, epsilon=norm.BN_EPSILON)
    assert fused.axis == 1
    for layer in (fused, reference):
        layer.build(nchw(x).shape)
    np.testing.assert_allclose(to_numpy(fused(nchw(x), training=True)),
                               to_numpy(reference(nchw(x), training=True)), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(to_numpy(fused.moving_variance), to_numpy(reference.moving_variance),
                               rtol=1e-5)


# -- configs, the global default, bad values ---------------------------------------------------
@needs_nchw
def test_configs_hold_the_resolved_data_format():
    model = keras_preact.ResNet20(data_format=CF, stacked_stages=True)
    assert model.get_config()["data_format"] == CF
    assert model.architecture.to_dict()["data_format"] == CF
    assert ResNet.from_config(model.get_config()).architecture.data_format == CF
    assert model.architecture.image_shape == (3, 32, 32) and model.architecture.input_shape == (32, 32, 3)
    layers = [model.get_layer("stage1_unit1"), model.get_layer("stage1_units2to3"),
              ZeroPadShortcut(8, data_format=CF), ShortcutGate(8, data_format=CF),
              SymmetricConv2D(4, 3, data_format=CF), SymmetricMaxPooling2D(3, 2, data_format=CF)]
    for layer in layers:
        config = layer.get_config()
        assert config["data_format"] == CF, type(layer).__name__
        assert type(layer).from_config(config).data_format == CF
    # None is Keras' global setting when the layer is made (channels_last unless changed).
    default = keras.config.image_data_format()
    assert ResidualUnit(4).get_config()["data_format"] == default
    assert keras_preact.ResNet20().get_config()["data_format"] == default


@needs_nchw
def test_keras_global_image_data_format_is_the_default(channels_first_default):
    model = keras_preact.ResNet20()
    assert model.architecture.data_format == CF and tuple(model.inputs[0].shape) == (None, 3, 32, 32)
    assert keras_preact.get_model("resnet8").architecture.data_format == CF
    assert all(unit.data_format == CF for unit in model.layers if isinstance(unit, ResidualUnit))
    assert ResidualUnit(4).data_format == CF and ZeroPadShortcut(4).data_format == CF
    # A model that names its layout keeps it; so does a file written before the option existed
    # (every earlier version built NHWC), whatever the global setting.
    assert keras_preact.ResNet20(data_format=CL).architecture.data_format == CL
    io = np.load(os.path.join(FIXTURES, "v0_2_io.npz"))
    old = keras.saving.load_model(os.path.join(FIXTURES, "v0_2_tiny.keras"), safe_mode=True)
    assert old.architecture.data_format == CL and tuple(old.inputs[0].shape) == (None, 8, 8, 3)
    np.testing.assert_allclose(to_numpy(old(io["x"], training=False)), io["v0_2_tiny"], rtol=1e-6, atol=1e-6)
    legacy_unit = {k: v for k, v in ResidualUnit(4, data_format=CL).get_config().items() if k != "data_format"}
    assert ResidualUnit.from_config(legacy_unit).data_format == CL


def test_the_global_default_is_read_when_a_model_is_made_not_later(channels_first_default):
    config = ResNetConfig.create((1, 1, 1))
    keras.config.set_image_data_format(CL)
    assert config.data_format == CF  # resolved once, when made
    assert ResNetConfig.create((1, 1, 1)).data_format == CL


@pytest.mark.parametrize("make", [
    lambda: keras_preact.ResNet20(data_format="NCHW"),
    lambda: keras_preact.get_model("resnet50", data_format="channels-first"),
    lambda: keras_preact.build_resnet((1, 1), widths=(4, 8), data_format="nchw"),
    lambda: ResNetConfig.create((1, 1, 1), data_format="first"),
    lambda: ResidualUnit(4, data_format="NHWC"),
    lambda: StackedStage(2, 4, data_format="NHWC"),
    lambda: ZeroPadShortcut(4, data_format="NHWC"),
    lambda: ShortcutGate(4, data_format="NHWC"),
    lambda: SymmetricConv2D(4, 3, data_format="NHWC"),
    lambda: SymmetricMaxPooling2D(3, 2, data_format="NHWC"),
    lambda: norm.batch_norm(data_format="NHWC"),
    lambda: with_data_format(keras_preact.ResNet20(data_format=CL), "NCHW"),
    lambda: translate(np.zeros((1, 4, 4, 1)), 1, 0, "NHWC"),
])
def test_a_bad_data_format_is_a_value_error_naming_the_argument_and_the_choices(make):
    with pytest.raises(ValueError, match=r"data_format .*Valid choices: 'channels_last', 'channels_first'"):
        make()


def test_channels_first_is_refused_at_construction_where_tensorflow_cannot_run_it(monkeypatch):
    """What a TensorFlow without NCHW convolutions on its CPU does (oneDNN off, no GPU; the
    probe's answer is forced here): one ValueError, before any layer is made, saying what to do."""
    monkeypatch.setattr(norm, "uses_tensorflow_kernels", lambda: True)
    monkeypatch.setattr(norm, "tensorflow_runs_channels_first", lambda: False)
    for make in (lambda: keras_preact.ResNet20(data_format=CF), lambda: ResidualUnit(4, data_format=CF),
                 lambda: StackedStage(2, 4, data_format=CF), lambda: ShortcutGate(4, data_format=CF)):
        with pytest.raises(ValueError, match="channels_first.*TF_ENABLE_ONEDNN_OPTS=1.*channels_last"):
            make()
    assert keras_preact.ResNet20(data_format=CL).architecture.data_format == CL


@pytest.mark.skipif(not TENSORFLOW, reason="the probe is TensorFlow's")
def test_the_tensorflow_probe_says_what_keras_conv2d_does():
    """``tensorflow_runs_channels_first`` (one 1x1 NCHW convolution) against a Keras
    channels_first Conv2D on this machine: it runs exactly where the probe says it does."""
    import tensorflow as tf

    layer = keras.layers.Conv2D(2, 3, data_format=CF)
    try:
        layer(np.zeros((1, 3, 8, 8), "float32"))
        ran = True
    except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError):
        ran = False
    assert ran is norm.tensorflow_runs_channels_first()
    if not ran:
        with pytest.raises(ValueError, match="TF_ENABLE_ONEDNN_OPTS=1"):
            keras_preact.ResNet20(data_format=CF)


def tiny(data_format, **options):
    model = keras_preact.build_resnet((1, 2), widths=(4, 8), input_shape=(16, 16, 3), num_classes=3,
                                      shortcut="exclusive_gating", data_format=data_format, **options)
    seeded_weights(model, seed=8)
    return model


@needs_nchw
def test_a_training_step_updates_the_same_weights_in_both_layouts():
    """One SGD step by ``train_on_batch`` (the backend's compiled step: gradients through the
    NCHW convolutions, BatchNorm's batch statistics and the stacked loop) in each layout."""
    last = tiny(CL, stacked_stages=True)
    first = with_data_format(last, CF)
    x, y = images(4, 16, seed=19), np.array([0, 1, 2, 1])
    for model, inputs in ((last, x), (first, nchw(x))):
        model.compile(optimizer=keras.optimizers.SGD(0.1),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.train_on_batch(inputs, y)
    for a, b in zip(first.weights, last.weights):
        np.testing.assert_allclose(to_numpy(a), to_numpy(b), rtol=1e-4, atol=1e-5, err_msg=a.path)


# -- files and weights -------------------------------------------------------------------------


@needs_nchw
def test_keras_round_trip_keeps_the_layout(tmp_path):
    model = tiny(CF, stacked_stages=True)
    loaded = assert_keras_round_trip(model, nchw(images(2, 16)), tmp_path)
    assert loaded.architecture.data_format == CF and tuple(loaded.inputs[0].shape) == (None, 3, 16, 16)


@needs_nchw
def test_files_saved_in_one_layout_load_into_the_other(tmp_path):
    last = tiny(CL)
    x = images(2, 16, seed=9)
    expected = to_numpy(last(x, training=False))
    last.save(str(tmp_path / "last.keras"))
    last.save_weights(str(tmp_path / "last.weights.h5"))
    for path in ("last.keras", "last.weights.h5"):
        first = ResNet.from_config({**last.get_config(), "data_format": CF})
        first.load_weights(str(tmp_path / path))
        assert_close(to_numpy(first(nchw(x), training=False)), expected)
    # The registry's weights= takes the file into the layout asked for, and back.
    net = keras_preact.ResNet20(data_format=CL)
    seeded_weights(net, seed=10)
    net.save(str(tmp_path / "resnet20.keras"))
    first = keras_preact.ResNet20(weights=str(tmp_path / "resnet20.keras"), data_format=CF)
    assert first.architecture.data_format == CF
    y = images(2, 32, seed=11)
    assert_close(to_numpy(first(nchw(y), training=False)), to_numpy(net(y, training=False)))
    # Saved NCHW, loaded NHWC: the file's own layout comes back with load_model.
    first.save(str(tmp_path / "first.keras"))
    assert keras.saving.load_model(str(tmp_path / "first.keras")).architecture.data_format == CF
    back = keras_preact.ResNet20(weights=str(tmp_path / "first.keras"), data_format=CL)
    assert_close(to_numpy(back(y, training=False)), to_numpy(net(y, training=False)))


@needs_nchw
@pytest.mark.parametrize("file,key", [("timm_bottleneck.safetensors", "timm_bottleneck"),
                                      ("timm_basic.pth", "timm_basic")])
def test_timm_files_load_into_channels_first_models_with_pytorchs_logits(file, key):
    io = np.load(os.path.join(FIXTURES, "torch", "io.npz"))
    model = weights.model_from_file(os.path.join(FIXTURES, "torch", file), data_format=CF)
    assert model.architecture.data_format == CF
    assert_close(to_numpy(model(nchw(io[f"{key}_x"]), training=False)), io[f"{key}_logits"])


@needs_nchw
def test_torch_state_dicts_and_presets_load_into_channels_first_models(tmp_path):
    io = np.load(os.path.join(FIXTURES, "torch", "io.npz"))
    model = keras_preact.build_resnet((1, 1, 1), num_classes=3, widths=(8, 16, 32), data_format=CF,
                                      stacked_stages=True)
    weights.load_weights(model, os.path.join(FIXTURES, "torch", "cifar_basic.pth"))
    assert_close(to_numpy(model(nchw(io["cifar_basic_x"]), training=False)), io["cifar_basic_logits"])
    # The torch layout written from a channels_first model is the channels_last one's.
    last = with_data_format(model, CL)
    tensors = weights.torch_tensors(model)
    assert all(np.array_equal(tensors[k], v) for k, v in weights.torch_tensors(last).items())
    # Presets: saved NHWC, loaded NCHW (by from_preset and the registry), and the reverse.
    x = images(2, 16, seed=12)
    saved = tiny(CL)
    presets.save_to_preset(saved, str(tmp_path / "preset"))
    expected = to_numpy(saved(x, training=False))
    loaded = keras_preact.from_preset(str(tmp_path / "preset"), data_format=CF)
    assert loaded.architecture.data_format == CF
    assert_close(to_numpy(loaded(nchw(x), training=False)), expected)
    assert keras_preact.from_preset(str(tmp_path / "preset")).architecture.data_format == CL
    presets.save_to_preset(loaded, str(tmp_path / "preset_nchw"))
    for again in (keras_preact.from_preset(str(tmp_path / "preset_nchw")),
                  keras_preact.from_preset(str(tmp_path / "preset_nchw"), num_classes=3)):
        assert again.architecture.data_format == CF  # the preset's layout, with or without options
        assert_close(to_numpy(again(nchw(x), training=False)), expected)
    back = keras_preact.from_preset(str(tmp_path / "preset_nchw"), data_format=CL)
    assert_close(to_numpy(back(x, training=False)), expected)


@needs_nchw
def test_keras_hub_presets_load_into_either_layout(tmp_path, channels_first_default):
    """keras-hub's NHWC preset under a channels_first global default: the skeleton that reads
    its weights stays NHWC, the network keeps keras-hub's layout unless asked for another."""
    keras_hub = pytest.importorskip("keras_hub")
    backbone = keras_hub.models.ResNetBackbone(
        input_conv_filters=[8], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 8],
        stackwise_num_blocks=[1, 2], stackwise_num_strides=[1, 2], block_type="bottleneck_block",
        use_pre_activation=True, data_format=CL)
    seeded_weights(backbone, seed=13)
    backbone.save_to_preset(str(tmp_path / "hub"))
    x = images(2, 32, seed=14)
    expected = to_numpy(backbone(x, training=False))
    same = keras_preact.from_preset(str(tmp_path / "hub"))
    assert same.architecture.data_format == CL
    assert_close(to_numpy(same(x, training=False)), expected)
    first = keras_preact.from_preset(str(tmp_path / "hub"), data_format=CF)
    assert_close(nhwc(to_numpy(first(nchw(x), training=False))), expected)


# -- test-time augmentation and the export ------------------------------------------------------
def test_tta_views_move_the_spatial_axes_of_either_layout():
    x = images(2, 6, 3, seed=15)
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        np.testing.assert_array_equal(nhwc(to_numpy(translate(nchw(x), dy, dx, CF))),
                                      to_numpy(translate(x, dy, dx)))
        np.testing.assert_array_equal(nhwc(to_numpy(view_of(nchw(x), dy, dx, True, CF))),
                                      to_numpy(view_of(x, dy, dx, True)))
    np.testing.assert_array_equal(to_numpy(view_of(x, 0, 0, True))[:, :, ::-1], x)  # width, not height

    def pixels(batch):  # a "model" whose output says where each value sits (NHWC order)
        return keras.ops.reshape(batch, (batch.shape[0], -1))

    def pixels_of_nchw(batch):
        return pixels(keras.ops.transpose(batch, (0, 2, 3, 1)))

    for tta in ("flip", "flip_translate"):
        np.testing.assert_allclose(to_numpy(tta_logits(pixels_of_nchw, nchw(x), tta, CF)),
                                   to_numpy(tta_logits(pixels, x, tta)), rtol=1e-6, atol=1e-6)


@needs_nchw
@needs_tensorflow
def test_fold_and_tta_wrappers_follow_a_channels_first_model(tmp_path):
    from keras_preact.export import fold_batch_norm, tta_averaged

    first = with_data_format(tiny(CL, order="original"), CF)
    first_stacked = with_data_format(tiny(CL, stacked_stages=True), CF)
    x = nchw(images(2, 16, seed=16))
    for model in (first, first_stacked):
        folded = fold_batch_norm(model)
        assert_close(to_numpy(folded(x)), to_numpy(model(x, training=False)))
        wrapped = tta_averaged(model, "flip_translate")
        expected = tta_logits(lambda b, net=model: net(b, training=False), x, "flip_translate", CF)
        assert_close(to_numpy(wrapped(x)), to_numpy(expected))
    assert_keras_round_trip(tta_averaged(first, "flip"), x, tmp_path, atol=1e-6)


@needs_nchw
@needs_tensorflow
def test_export_of_a_channels_first_model_serves_nhwc_images(tmp_path):
    """The exporter rebuilds a channels_first ResNet NHWC with the same weights: every
    signature and TFLite file takes NHWC images and computes the NCHW model's logits."""
    import tensorflow as tf

    from keras_preact.export import TFLiteRunner, export_model
    from keras_preact.export.exporter import EXTRA_DIR, TFLITE_DIR, prepare_model, synthetic_images

    first = with_data_format(keras_preact.build_resnet((1, 1, 1), widths=(8, 16, 16), name="tiny_nchw"), CF)
    seeded_weights(first, seed=17)
    network, served = prepare_model(first, "flip")
    assert network.architecture.data_format == CL and tuple(network.inputs[0].shape) == (None, 32, 32, 3)
    x = images(3, 32, seed=18)
    expected_flip = tta_logits(lambda b: first(b, training=False), nchw(x), "flip", CF)
    assert_close(to_numpy(served(x)), to_numpy(expected_flip))

    path = export_model(first, str(tmp_path), name="nchw", preprocessing="cifar",
                        class_names=[str(i) for i in range(10)], tflite_variants=("float32",),
                        eval_images=synthetic_images(32, 8), verbose=False)
    expected = to_numpy(first(nchw(x), training=False))
    out = tf.saved_model.load(path).signatures["predict_images"](images=tf.constant(x))
    assert_close(out["logits"].numpy(), expected, 1e-4)
    with open(os.path.join(path, EXTRA_DIR, TFLITE_DIR, "float32.tflite"), "rb") as handle:
        tflite = TFLiteRunner(handle.read())
    assert_close(tflite.logits(x), expected, 1e-4)
