"""The unit plan and its interpreter: which ops run where, and the shortcut formula."""

import numpy as np
import pytest

from keras_preact.common import ORDERS
from keras_preact.plan import (
    UNIT_DEFAULTS,
    Combination,
    UnitBackend,
    UnitOptions,
    conv_specs,
    run_unit,
    unit_plan,
)


def plan(**kwargs):
    placement = dict(in_channels=16, filters=16, strides=1, preactivation="branch")
    placement.update({k: kwargs.pop(k) for k in list(kwargs) if k in placement})
    options = UnitOptions(kind="basic", order="full_preact", shortcut="identity",
                          downsample="projection", stride_at="first", shortcut_scale=0.5,
                          scale_residual=False, dropout_rate=0.5).replace(**kwargs)
    return unit_plan(options, **placement)


class Recorder(UnitBackend):
    """Values are strings: each op appends its name, so the result spells the data flow."""

    def op(self, op, x):
        return f"{op[1]}({x})"

    def gate(self, x):
        return f"gate({x})"

    def combine(self, plan, shortcut, residual, gate):
        return f"[{shortcut} + {residual}" + (f" | {gate}]" if gate else "]")


@pytest.mark.parametrize("preactivation,expected", [
    ("branch", "[x + conv2(relu2(bn2(conv1(preact_relu(preact_bn(x))))))]"),
    ("shared", "[preact_relu(preact_bn(x)) + conv2(relu2(bn2(conv1(preact_relu(preact_bn(x))))))]"),
    ("none", "[x + conv2(relu2(bn2(conv1(x))))]"),
])
def test_preactivation_placement(preactivation, expected):
    assert run_unit(plan(preactivation=preactivation), "x", Recorder()) == expected


def test_post_activation_and_gate_and_projection():
    p = plan(order="bn_after_addition", shortcut="exclusive_gating", strides=2, in_channels=8)
    out = run_unit(p, "x", Recorder())
    # Post-activation orders: [1]'s projection shortcut is conv + BN.
    assert out == ("post_relu(post_bn([shortcut_bn(shortcut_conv(x)) + "
                   "conv2(relu1(bn1(conv1(x)))) | gate(x)]))")
    assert p.gate == (16, 2)
    assert p.bn_names() == ["bn1", "shortcut_bn", "post_bn"]


def test_zero_pad_and_dropout_shortcut_ops():
    p = plan(downsample="zero_pad", in_channels=8, strides=2, shortcut="dropout", dropout_rate=0.3)
    assert p.shortcut == (("zero_pad", "shortcut_zero_pad", 16, 2),
                          ("dropout", "shortcut_dropout", 0.3))
    # conv1x1 replaces the zero-pad, and post-activation projections carry a BN ([1]).
    assert plan(order="original", shortcut="conv1x1").shortcut == (
        ("conv", "shortcut_conv", 1, 16, 1), ("bn", "shortcut_bn"))


@pytest.mark.parametrize("kind,stride_at,expected", [
    ("bottleneck", "first", [(1, 4, 2), (3, 4, 1), (1, 16, 1)]),
    ("bottleneck", "3x3", [(1, 4, 1), (3, 4, 2), (1, 16, 1)]),
    ("basic", "3x3", [(3, 4, 2), (3, 4, 1)]),
    ("single", "first", [(3, 4, 2)]),
])
def test_conv_specs_place_the_stride(kind, stride_at, expected):
    assert conv_specs(kind, 4, 2, stride_at) == expected


@pytest.mark.parametrize("order", ORDERS)
def test_every_order_has_one_conv_per_weight_layer(order):
    p = plan(order=order, kind="bottleneck", in_channels=64)
    assert [op[2] for op in p.branch if op[0] == "conv"] == [1, 3, 1]


@pytest.mark.parametrize("shortcut,scale_residual,expected", [
    ("identity", False, lambda h, f, g: h + f),
    ("conv1x1", False, lambda h, f, g: h + f),
    ("dropout", False, lambda h, f, g: h + f),
    ("constant_scaling", False, lambda h, f, g: 0.25 * h + f),
    ("constant_scaling", True, lambda h, f, g: 0.25 * h + 0.75 * f),
    ("exclusive_gating", False, lambda h, f, g: (1 - g) * h + g * f),
    ("shortcut_only_gating", False, lambda h, f, g: (1 - g) * h + f),
])
def test_combination_formula(shortcut, scale_residual, expected):
    rng = np.random.RandomState(0)
    h, f, g = rng.randn(3, 2, 4).astype("float32")
    got = np.asarray(Combination(shortcut, 0.25, scale_residual)(h, f, g))
    np.testing.assert_allclose(got, expected(h, f, g), rtol=1e-6)


# --- the unit options: one value, every default written once ------------------------------

def test_unit_options_check_and_normalise_their_values():
    options = UnitOptions(shortcut_scale=1, gate_bias_init=-3, scale_residual=1, fused_bn=0)
    assert (options.shortcut_scale, options.gate_bias_init) == (1.0, -3.0)
    assert isinstance(options.gate_bias_init, float) and options.scale_residual is True
    assert options.fused_bn is False
    for bad, match in [(dict(kind="wide"), "Unknown unit kind"), (dict(order="preact"), "order"),
                       (dict(shortcut="gate"), "shortcut"), (dict(padding="reflect"), "padding"),
                       (dict(downsample="pool"), "downsample"), (dict(stride_at="last"), "stride_at"),
                       (dict(dropout_rate=1.0), "dropout_rate"), (dict(dropout_rate=-0.1), "dropout_rate")]:
        with pytest.raises(ValueError, match=match):
            UnitOptions(**bad)


def test_every_user_of_the_unit_options_takes_the_defaults_from_one_value():
    """The signature and field defaults of the unit, the stacked stage, the network config,
    the shortcut layers and the diagnostics command line are UNIT_DEFAULTS' (paper Table 1:
    lambda 0.5, b_g -6, dropout 0.5; the paper code's Torch padding)."""
    import dataclasses
    import inspect

    from keras_preact.config import UNIT_FIELDS, ResNetConfig
    from keras_preact.diagnostics.__main__ import make_parser
    from keras_preact.shortcuts import ShortcutCombine, ShortcutGate
    from keras_preact.stacked import STACKED_OPTIONS, StackedStage
    from keras_preact.units import PLACEMENT, ResidualUnit

    assert (UNIT_DEFAULTS.shortcut_scale, UNIT_DEFAULTS.gate_bias_init, UNIT_DEFAULTS.dropout_rate,
            UNIT_DEFAULTS.padding) == (0.5, -6.0, 0.5, "symmetric")

    def defaults(cls):
        return {name: p.default for name, p in inspect.signature(cls.__init__).parameters.items()
                if p.default is not inspect.Parameter.empty}

    unit = defaults(ResidualUnit)
    assert set(unit) == set(UnitOptions.names()) | set(PLACEMENT) - {"filters"}
    assert {k: unit[k] for k in UnitOptions.names()} == UNIT_DEFAULTS.to_dict()
    stage = defaults(StackedStage)
    assert set(stage) == set(STACKED_OPTIONS) | {"recompute", "data_format"}
    assert {k: stage[k] for k in STACKED_OPTIONS} == {k: getattr(UNIT_DEFAULTS, k) for k in STACKED_OPTIONS}
    fields = {f.name: f.default for f in dataclasses.fields(ResNetConfig)}
    for name in UnitOptions.names():
        if name not in ("downsample", "stride_at"):  # the family's, resolved by the config
            assert fields[UNIT_FIELDS.get(name, name)] == getattr(UNIT_DEFAULTS, name), name
    assert ResNetConfig((1, 1, 1)).unit_options().replace(downsample="projection") == UNIT_DEFAULTS
    assert defaults(ShortcutGate)["bias_init"] == UNIT_DEFAULTS.gate_bias_init
    combine = defaults(ShortcutCombine)
    assert Combination(**combine) == Combination() == Combination(
        UNIT_DEFAULTS.shortcut, UNIT_DEFAULTS.shortcut_scale, UNIT_DEFAULTS.scale_residual)
    args = make_parser().parse_args([])
    assert (args.shortcut_scale, args.gate_bias_init) == (
        UNIT_DEFAULTS.shortcut_scale, UNIT_DEFAULTS.gate_bias_init)
