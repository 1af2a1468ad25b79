"""The unit plan and its interpreter: which ops run where, and the shortcut formula."""

import numpy as np
import pytest

from keras_preact.common import ORDERS
from keras_preact.plan import Combination, UnitBackend, conv_specs, run_unit, unit_plan


def plan(**kwargs):
    options = dict(in_channels=16, filters=16, kind="basic", order="full_preact",
                   shortcut="identity", strides=1, downsample="projection", stride_at="first",
                   preactivation="branch", shortcut_scale=0.5, scale_residual=False,
                   dropout_rate=0.5)
    options.update(kwargs)
    return unit_plan(**options)


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
