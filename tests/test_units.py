"""ResidualUnit: layer order of each variant (paper Fig. 4, Table 2), shortcut behaviour
(Fig. 2, Table 1, Sec. 3.1), serialization, padding and configs of earlier versions."""

import keras
import numpy as np
import pytest

from harness import assert_config_round_trip, assert_keras_round_trip
from keras_preact import ResidualUnit, ShortcutGate, ZeroPadShortcut
from keras_preact.common import KINDS, ORDERS, SHORTCUTS
from keras_preact.config import ResNetConfig

RNG = np.random.RandomState(0)


def built_unit(in_channels=8, spatial=8, **kwargs):
    unit = ResidualUnit(**{"filters": 8, **kwargs})
    unit.build((None, spatial, spatial, in_channels))
    return unit


def paper_string(names):
    """['W3x3', 'BN', 'ReLU'] -> 'W-BN-ReLU' (the notation of the paper's Fig. 4)."""
    return "-".join("W" if n.startswith("W") else n for n in names)


# Paper Fig. 4 (a)-(e): F branch and what follows the addition, for the basic (two-conv) unit.
FIG4_TABLE = {
    "original": ("W-BN-ReLU-W-BN", "ReLU"),
    "bn_after_addition": ("W-BN-ReLU-W", "BN-ReLU"),
    "relu_before_addition": ("W-BN-ReLU-W-BN-ReLU", ""),
    "relu_only_preact": ("ReLU-W-BN-ReLU-W-BN", ""),
    "full_preact": ("BN-ReLU-W-BN-ReLU-W", ""),
}


@pytest.mark.parametrize("order", ORDERS)
def test_basic_unit_layer_order_matches_fig4(order):
    seq = built_unit(order=order).layer_sequence()
    residual, after = FIG4_TABLE[order]
    assert paper_string(seq["residual"]) == residual
    assert paper_string(seq["after_addition"]) == after
    assert seq["shortcut"] == [] and seq["shared"] == []


def test_bottleneck_full_preact_sequence_and_expansion():
    unit = built_unit(in_channels=32, kind="bottleneck")
    seq = unit.layer_sequence()
    assert seq["residual"] == [
        "BN", "ReLU", "W1x1", "BN", "ReLU", "W3x3", "BN", "ReLU", "W1x1"
    ]
    assert unit.out_channels == 32
    assert unit.compute_output_shape((None, 8, 8, 32)) == (None, 8, 8, 32)


@pytest.mark.parametrize(
    "order,residual,after",
    [("full_preact", "BN-ReLU-W", ""), ("original", "W-BN", "ReLU")],
)
def test_single_layer_unit(order, residual, after):
    seq = built_unit(kind="single", order=order).layer_sequence()
    assert paper_string(seq["residual"]) == residual
    assert paper_string(seq["after_addition"]) == after
    assert seq["residual"].count("W3x3") == 1


@pytest.mark.parametrize("order", ORDERS)
def test_order_semantics_on_outputs(order):
    """What each order does after the addition, checked on real outputs (not names)."""
    unit = built_unit(order=order)
    x = RNG.randn(4, 8, 8, 8).astype("float32")
    y = np.asarray(unit(x, training=True))
    residual = y - x
    if order == "original":
        assert y.min() >= 0.0  # ReLU after the addition
    elif order == "bn_after_addition":
        assert y.min() >= 0.0
        # BN with batch statistics after the addition: pre-ReLU mean ~0 per channel, so
        # roughly half of the outputs are zeroed.
        assert 0.3 < (y == 0).mean() < 0.7
    elif order == "relu_before_addition":
        assert residual.min() >= -1e-5  # F ends in ReLU, f is identity: y - x >= 0
    else:
        assert y.min() < 0.0  # nothing after the addition: negative values pass through
        assert residual.min() < 0.0  # F ends in a conv (full) or a BN (relu-only)


def test_stride_placement():
    first = built_unit(in_channels=16, kind="bottleneck", strides=2, stride_at="first")
    mid = built_unit(in_channels=16, kind="bottleneck", strides=2, stride_at="3x3")
    convs = lambda u: [l for l in u.branch_layers if isinstance(l, keras.layers.Conv2D)]  # noqa
    assert [c.strides for c in convs(first)] == [(2, 2), (1, 1), (1, 1)]
    assert [c.strides for c in convs(mid)] == [(1, 1), (2, 2), (1, 1)]
    basic = built_unit(in_channels=4, strides=2, stride_at="3x3")
    assert [c.strides for c in convs(basic)] == [(2, 2), (1, 1)]
    assert first.compute_output_shape((None, 8, 8, 16)) == (None, 4, 4, 32)
    assert tuple(first(np.zeros((1, 8, 8, 16), "float32")).shape) == (1, 4, 4, 32)


def test_bn_and_init_defaults_follow_the_paper_code():
    unit = built_unit()
    bns = [l for l in unit.branch_layers + unit.preact_layers
           if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(b.momentum == 0.9 and b.epsilon == 1e-5 for b in bns)
    custom = built_unit(bn_momentum=0.99, bn_epsilon=1e-3)
    assert all(
        b.momentum == 0.99 and b.epsilon == 1e-3
        for b in custom.branch_layers if isinstance(b, keras.layers.BatchNormalization)
    )
    # He (fan_out) init: std = sqrt(2 / (k * k * out_channels)).
    big = ResidualUnit(256)
    big.build((None, 8, 8, 256))
    kernel = np.asarray(big.branch_layers[0].kernel)
    assert kernel.shape == (3, 3, 256, 256)
    assert kernel.std() == pytest.approx(np.sqrt(2.0 / (9 * 256)), rel=0.02)
    assert all(not conv.use_bias for conv in big.branch_layers
               if isinstance(conv, keras.layers.Conv2D))


# --- shortcuts ------------------------------------------------------------------------------

def twin_units(shortcut, **kwargs):
    """A unit with `shortcut` and an identity-shortcut unit sharing all branch weights."""
    ref = built_unit(**kwargs)
    unit = built_unit(shortcut=shortcut, **kwargs)
    for a, b in zip(ref.branch_layers + ref.preact_layers, unit.branch_layers + unit.preact_layers):
        b.set_weights(a.get_weights())
    return ref, unit


def residual_of(ref, x):
    """F(x) from an identity-shortcut unit: y - x."""
    return np.asarray(ref(x, training=False)) - x


@pytest.mark.parametrize("scale_residual", [False, True])
def test_constant_scaling(scale_residual):
    ref, unit = twin_units("constant_scaling", shortcut_scale=0.3, scale_residual=scale_residual)
    x = RNG.randn(2, 8, 8, 8).astype("float32")
    f = residual_of(ref, x)
    expected = 0.3 * x + (0.7 * f if scale_residual else f)
    np.testing.assert_allclose(unit(x, training=False), expected, rtol=1e-5, atol=1e-5)


def test_constant_scaling_with_zero_residual_is_lambda_times_x():
    unit = built_unit(shortcut="constant_scaling")
    last_conv = [l for l in unit.branch_layers if isinstance(l, keras.layers.Conv2D)][-1]
    last_conv.kernel.assign(np.zeros(last_conv.kernel.shape, "float32"))
    x = RNG.randn(2, 8, 8, 8).astype("float32")
    np.testing.assert_allclose(unit(x, training=False), 0.5 * x, rtol=1e-6)


@pytest.mark.parametrize("shortcut", ["exclusive_gating", "shortcut_only_gating"])
def test_gating_equals_formula_for_known_weights(shortcut):
    ref, unit = twin_units(shortcut, gate_bias_init=-2.0)
    w = RNG.randn(1, 1, 8, 8).astype("float32") * 0.3
    b = RNG.randn(8).astype("float32")
    unit.gate.conv.set_weights([w, b])
    x = RNG.randn(2, 8, 8, 8).astype("float32")
    g = 1.0 / (1.0 + np.exp(-(np.einsum("nhwc,cd->nhwd", x, w[0, 0]) + b)))
    f = residual_of(ref, x)
    expected = (1 - g) * x + (g * f if shortcut == "exclusive_gating" else f)
    np.testing.assert_allclose(unit(x, training=False), expected, rtol=1e-4, atol=1e-5)


def test_gate_bias_initialisation():
    unit = built_unit(shortcut="exclusive_gating", gate_bias_init=-6.0)
    np.testing.assert_array_equal(np.asarray(unit.gate.conv.bias), np.full(8, -6.0))
    assert unit.layer_sequence()["shortcut"] == ["Gate"]
    gate = ShortcutGate(4, bias_init=-6.0)
    g = np.asarray(gate(np.zeros((1, 2, 2, 3), "float32")))
    np.testing.assert_allclose(g, 1 / (1 + np.exp(6.0)), rtol=1e-5)


def test_conv1x1_shortcut():
    ref, unit = twin_units("conv1x1")
    assert unit.layer_sequence()["shortcut"] == ["W1x1"]  # pre-activation: no BN on it
    x = RNG.randn(2, 8, 8, 8).astype("float32")
    w = np.asarray(unit.shortcut_layers[0].kernel)[0, 0]
    expected = np.einsum("nhwc,cd->nhwd", x, w) + residual_of(ref, x)
    np.testing.assert_allclose(unit(x, training=False), expected, rtol=1e-4, atol=1e-5)
    post = built_unit(shortcut="conv1x1", order="original")
    assert post.layer_sequence()["shortcut"] == ["W1x1", "BN"]  # [1]'s projection: conv + BN


def test_dropout_shortcut():
    ref, unit = twin_units("dropout")
    x = np.abs(RNG.randn(2, 8, 8, 8).astype("float32")) + 0.1
    f = residual_of(ref, x)
    np.testing.assert_allclose(unit(x, training=False), x + f, rtol=1e-5, atol=1e-5)
    f_train = np.asarray(ref(x, training=True)) - x  # BN uses batch statistics here
    h = np.asarray(unit(x, training=True)) - f_train
    # Training: each shortcut element is dropped or scaled by 1 / (1 - 0.5) (inverted dropout).
    dropped = np.isclose(h, 0.0, atol=1e-4)
    kept = np.isclose(h, 2.0 * x, rtol=1e-4, atol=1e-4)
    assert np.all(dropped | kept)
    assert 0.4 < dropped.mean() < 0.6


def test_zero_pad_shortcut_subsamples_and_appends_zero_channels():
    layer = ZeroPadShortcut(8, strides=2)
    x = RNG.randn(2, 6, 6, 3).astype("float32")
    y = np.asarray(layer(x))
    assert y.shape == (2, 3, 3, 8)
    np.testing.assert_array_equal(y[..., :3], x[:, ::2, ::2, :])
    np.testing.assert_array_equal(y[..., 3:], 0.0)
    unit = built_unit(in_channels=4, strides=2, downsample="zero_pad")
    assert unit.layer_sequence()["shortcut"] == ["ZeroPad"]
    assert not any("shortcut" in w.path for w in unit.weights)  # parameter-free


def test_projection_takes_the_preactivated_input_when_shared():
    unit = built_unit(in_channels=4, strides=2, preactivation="shared")
    seq = unit.layer_sequence()
    assert seq["shared"] == ["BN", "ReLU"] and seq["shortcut"] == ["W1x1"]
    assert seq["residual"][0] == "W3x3"  # the branch starts at its weight layer
    last_conv = [l for l in unit.branch_layers if isinstance(l, keras.layers.Conv2D)][-1]
    last_conv.kernel.assign(np.zeros(last_conv.kernel.shape, "float32"))
    x = RNG.randn(2, 8, 8, 4).astype("float32")
    # Fresh BN in inference mode: (x - 0) / sqrt(1 + eps); then ReLU; then the strided 1x1 conv.
    pre = np.maximum(x / np.sqrt(1 + 1e-5), 0.0)[:, ::2, ::2, :]
    w = np.asarray(unit.shortcut_layers[0].kernel)[0, 0]
    np.testing.assert_allclose(
        unit(x, training=False), np.einsum("nhwc,cd->nhwd", pre, w), rtol=1e-4, atol=1e-5
    )


def test_preactivation_none_has_no_leading_activation():
    unit = built_unit(preactivation="none")
    assert unit.layer_sequence()["residual"][0] == "W3x3"
    assert unit.preact_layers == []


# --- validation -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "kwargs,named",
    [
        (dict(order="post_act"), "full_preact"),
        (dict(shortcut="gated"), "exclusive_gating"),
        (dict(kind="wide"), "bottleneck"),
        (dict(downsample="pool"), "zero_pad"),
        (dict(stride_at="last"), "3x3"),
        (dict(preactivation="both"), "shared"),
    ],
)
def test_unknown_option_names_the_valid_choices(kwargs, named):
    with pytest.raises(ValueError, match=named):
        ResidualUnit(8, **kwargs)


@pytest.mark.parametrize("kwargs", [dict(filters=0), dict(strides=3), dict(dropout_rate=1.0)])
def test_bad_numbers_raise(kwargs):
    with pytest.raises(ValueError):
        ResidualUnit(**{"filters": 8, **kwargs})


def test_zero_pad_cannot_shrink_channels():
    with pytest.raises(ValueError, match="cannot shrink"):
        ZeroPadShortcut(2)(np.zeros((1, 4, 4, 3), "float32"))


# --- serialization --------------------------------------------------------------------------

def randomize(model):
    """Random values in every variable (moving statistics too), so a load that misses any
    variable shows up as a different output."""
    for w in model.weights:
        value = RNG.uniform(0.5, 1.5, w.shape) if "variance" in w.path else RNG.randn(*w.shape)
        w.assign((0.3 * value if "kernel" in w.path else value).astype("float32"))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("order", ORDERS)
def test_keras_round_trip_every_kind_order_and_shortcut(kind, order, tmp_path):
    """Each model holds, per shortcut, a dimension-changing unit and an identity-shaped one."""
    inputs = keras.Input((8, 8, 4))
    outputs = []
    for shortcut in SHORTCUTS:
        x = ResidualUnit(4, kind=kind, order=order, shortcut=shortcut, strides=2,
                         preactivation="shared" if "preact" in order else "branch",
                         name=f"{shortcut}_down")(inputs)
        x = ResidualUnit(4, kind=kind, order=order, shortcut=shortcut,
                         name=f"{shortcut}_same")(x)
        outputs.append(x)
    model = keras.Model(inputs, outputs)
    randomize(model)
    x = RNG.randn(2, 8, 8, 4).astype("float32")
    assert_keras_round_trip(model, x, tmp_path, names=list(SHORTCUTS))


def test_unit_config_round_trip():
    unit = ResidualUnit(16, kind="bottleneck", order="relu_only_preact",
                        shortcut="constant_scaling", shortcut_scale=0.25, scale_residual=True,
                        strides=2, downsample="zero_pad", stride_at="3x3", name="u")
    restored = assert_config_round_trip(unit)
    assert restored.shortcut_scale == 0.25 and restored.options == unit.options


# --- padding, and configs written by earlier versions ---------------------------------------

# The config of a unit of keras_preact 0.1 (tests/fixtures/legacy_tiny.keras, stage2_unit1):
# written before the padding option existed, by a unit that padded as TensorFlow does.
LEGACY_UNIT_CONFIG = {
    "name": "stage2_unit1", "trainable": True, "dtype": "float32", "filters": 8,
    "kind": "basic", "order": "full_preact", "shortcut": "exclusive_gating", "strides": 2,
    "downsample": "zero_pad", "stride_at": "first", "preactivation": "shared",
    "shortcut_scale": 0.5, "scale_residual": False, "gate_bias_init": -6.0,
    "dropout_rate": 0.5, "bn_momentum": 0.9, "bn_epsilon": 1e-05, "fused_bn": True,
}
# The config the unit above writes since the padding option exists (every key; same values).
UNIT_CONFIG_WITH_PADDING = {**LEGACY_UNIT_CONFIG, "padding": "same"}


def test_padding_default_agrees_with_the_network():
    assert ResidualUnit(8).padding == ResNetConfig((1, 1, 1)).padding == "symmetric"
    assert ResidualUnit(8).get_config()["padding"] == "symmetric"
    symmetric = built_unit(strides=2)
    assert [type(l).__name__ for l in symmetric.branch_layers if "conv" in l.name][0] == "SymmetricConv2D"


@pytest.mark.parametrize("config,padding", [
    (LEGACY_UNIT_CONFIG, "same"),  # no padding in the config: the padding it was built with
    (UNIT_CONFIG_WITH_PADDING, "same"),
    ({**LEGACY_UNIT_CONFIG, "padding": "symmetric"}, "symmetric"),
])
def test_saved_unit_configs_keep_their_padding(config, padding):
    unit = ResidualUnit.from_config(config)
    assert unit.padding == padding
    restored = keras.saving.deserialize_keras_object(
        {"module": "keras_preact.units", "class_name": "ResidualUnit", "config": config,
         "registered_name": "keras_preact>ResidualUnit"})
    assert restored.padding == padding
    # Everything a config of before this change says comes back unchanged.
    written = unit.get_config()
    assert {k: written[k] for k in config if k != "dtype"} == {
        k: v for k, v in config.items() if k != "dtype"}
    assert set(written) == set(UNIT_CONFIG_WITH_PADDING) | {"data_format"}
    assert written["data_format"] == "channels_last"  # saved before the option: built NHWC
    # The padding is the one computed: the strided conv of a 'same' unit is Keras' Conv2D,
    # and its outputs differ from a symmetric unit's with the same weights.
    x = RNG.randn(2, 8, 8, 4).astype("float32")
    unit(x)
    other = ResidualUnit.from_config({**config, "padding": "symmetric" if padding == "same" else "same"})
    other(x)
    other.set_weights(unit.get_weights())
    assert np.abs(np.asarray(unit(x, training=False)) - np.asarray(other(x, training=False))).max() > 1e-4
