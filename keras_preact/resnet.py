"""The network builder: stem, stages of residual units, final activation, head.

``build_resnet`` assembles a Keras functional model from a stage table. The architecture rules
follow the reference code (SPEC section 5):

* CIFAR stem: one 3x3 conv, 16 channels. ImageNet stem: 7x7/2 conv, 64 channels, 3x3/2 max pool.
* First unit (paper appendix): in the pre-activation orders the first unit's activation comes
  right after the stem conv, before the split into the two paths, so the stem is
  ``conv -> BN -> ReLU`` and the first unit starts at its first weight layer
  (``preactivation="none"``). fb.resnet.torch puts the ImageNet max pool after that BN-ReLU;
  so do we.
* The first unit of every later stage changes dimensions; its pre-activation is applied before
  the split, so the projection (or zero-pad) shortcut takes the pre-activated input
  (``preactivation="shared"``). All other units pre-activate the residual branch only.
* Last unit: the pre-activation orders end with an extra BN-ReLU after the last addition
  (ReLU only for ``relu_only_preact``), before pooling.
* Post-activation orders (``original``, ``bn_after_addition``, ``relu_before_addition``) use
  the stem ``conv -> BN -> ReLU`` of [1] and nothing after the last unit.
"""

from __future__ import annotations

from typing import Sequence

import keras

from keras_preact import norm
from keras_preact.stacked import StackedStage
from keras_preact.units import (
    DOWNSAMPLES,
    KINDS,
    ORDERS,
    PREACT_ORDERS,
    SHORTCUTS,
    STRIDE_AT,
    ResidualUnit,
    check_choice,
)

FAMILIES = ("cifar", "imagenet")
POOLINGS = ("avg", "max", None)
# Smallest input side each family accepts: every stride must still see at least one pixel.
MIN_SIDE = {"cifar": 8, "imagenet": 32}


def resolve_order(preact, order) -> str:
    """``preact=True|False`` is shorthand for ``order="full_preact"|"original"``."""
    if order is None:
        return "original" if preact is False else "full_preact"
    check_choice("order", order, ORDERS)
    if preact is not None and (order in PREACT_ORDERS) != bool(preact):
        raise ValueError(
            f"preact={preact} contradicts order={order!r}; pass one of them. "
            f"Pre-activation orders: {', '.join(PREACT_ORDERS)}."
        )
    return order


def check_input_shape(input_shape, family: str):
    """Validate and normalise ``input_shape`` (height, width, channels)."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if shape is None or len(shape) != 3:
        raise ValueError(
            f"input_shape must be (height, width, channels), got {input_shape!r}."
        )
    h, w, c = shape
    if not isinstance(c, int) or c < 1:
        raise ValueError(f"input_shape channels must be a positive integer, got {input_shape!r}.")
    lo = MIN_SIDE[family]
    for side in (h, w):
        if side is not None and (not isinstance(side, int) or side < lo):
            raise ValueError(
                f"input_shape {input_shape!r}: height and width must be None or integers "
                f">= {lo} for {family} networks."
            )
    return shape


def build_resnet(
    units_per_stage: Sequence[int],
    *,
    family: str = "cifar",
    unit: str = "basic",
    widths: Sequence[int] | None = None,
    preact: bool | None = None,
    order: str | None = None,
    shortcut: str = "identity",
    downsample: str | None = None,
    stride_at: str | None = None,
    num_classes: int = 10,
    input_shape=None,
    include_top: bool = True,
    pooling: str | None = "avg",
    classifier_activation: str | None = None,
    shortcut_scale: float = 0.5,
    scale_residual: bool = False,
    gate_bias_init: float = -6.0,
    dropout_rate: float = 0.5,
    bn_momentum: float = norm.BN_MOMENTUM,
    bn_epsilon: float = norm.BN_EPSILON,
    fused_bn: bool = True,
    stacked_stages: bool = False,
    recompute: bool = False,
    name: str | None = None,
) -> keras.Model:
    """Build a residual network from a stage table.

    Args:
      units_per_stage: number of residual units in each stage.
      family: ``"cifar"`` (3x3 stem, no pooling in the stem) or ``"imagenet"`` (7x7/2 stem and
        3x3/2 max pool). Each stage after the first halves the resolution.
      unit: ``"basic"``, ``"bottleneck"`` or ``"single"``.
      widths: width of each stage's 3x3 convs (default CIFAR 16/32/64, ImageNet
        64/128/256/512). Bottleneck stages output 4x this.
      preact / order: ``preact=True`` is ``order="full_preact"`` (the default), ``False`` is
        ``"original"``; ``order`` selects any of ``keras_preact.units.ORDERS``.
      shortcut: a name from ``keras_preact.units.SHORTCUTS``, applied to every unit.
      downsample: dimension-matching shortcut, ``"projection"`` or ``"zero_pad"``. Default:
        zero-pad for CIFAR basic and single units (as [1]), projection otherwise.
      stride_at: conv that carries a unit's stride, ``"first"`` or ``"3x3"``. Default: ``"first"``
        for CIFAR (the paper's code), ``"3x3"`` for ImageNet (fb.resnet.torch).
      num_classes, include_top, pooling: as in ``keras.applications``. The classifier outputs
        logits unless ``classifier_activation`` is set (e.g. ``"softmax"``).
      input_shape: (height, width, channels). Default (32, 32, 3) for CIFAR and
        (None, None, 3) for ImageNet: the network is fully convolutional, so one model
        evaluates 224 and 320 crops.
      shortcut_scale, scale_residual, gate_bias_init, dropout_rate: shortcut variant options
        (see ``ResidualUnit``).
      bn_momentum, bn_epsilon: BatchNorm settings, default the paper code's 0.9 / 1e-5.
      fused_bn: TensorFlow's fused BatchNorm kernel (same numbers, faster on CPU).
      stacked_stages: run the units after the first of each stage as one loop over stacked
        weights (``keras_preact.stacked.StackedStage``): same parameters and results, a graph
        whose size does not grow with depth. For very deep nets (ResNet-1001).
      recompute: with ``stacked_stages``, recompute each unit in the backward pass instead of
        storing its intermediates (gradient checkpointing): far less memory, a little slower.
    """
    check_choice("family", family, FAMILIES)
    check_choice("unit kind", unit, KINDS)
    check_choice("shortcut", shortcut, SHORTCUTS)
    check_choice("pooling", pooling, POOLINGS)
    order = resolve_order(preact, order)
    if recompute and not stacked_stages:
        raise ValueError("recompute=True needs stacked_stages=True.")
    if downsample is None:
        downsample = "zero_pad" if family == "cifar" and unit != "bottleneck" else "projection"
    check_choice("downsample", downsample, DOWNSAMPLES)
    if stride_at is None:
        stride_at = "first" if family == "cifar" else "3x3"
    check_choice("stride_at", stride_at, STRIDE_AT)
    if widths is None:
        widths = (16, 32, 64) if family == "cifar" else (64, 128, 256, 512)
    widths = tuple(int(w) for w in widths)
    units_per_stage = tuple(int(n) for n in units_per_stage)
    if len(widths) != len(units_per_stage):
        raise ValueError(
            f"{len(units_per_stage)} stages but {len(widths)} widths: give one width per stage."
        )
    if not units_per_stage or min(units_per_stage) < 1:
        raise ValueError(f"Every stage needs at least one unit, got {units_per_stage}.")
    if include_top and (not isinstance(num_classes, int) or num_classes < 1):
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}.")
    if input_shape is None:
        input_shape = (32, 32, 3) if family == "cifar" else (None, None, 3)
    input_shape = check_input_shape(input_shape, family)

    is_preact = order in PREACT_ORDERS
    unit_options = dict(
        kind=unit,
        order=order,
        shortcut=shortcut,
        downsample=downsample,
        stride_at=stride_at,
        shortcut_scale=shortcut_scale,
        scale_residual=scale_residual,
        gate_bias_init=gate_bias_init,
        dropout_rate=dropout_rate,
        bn_momentum=bn_momentum,
        bn_epsilon=bn_epsilon,
    )

    def bn(layer_name):
        return norm.batch_norm(bn_momentum, bn_epsilon, name=layer_name, fused=fused_bn)

    inputs = keras.Input(shape=input_shape, name="image")
    # Stem. With pre-activation, its BN-ReLU is the first unit's pre-activation (appendix).
    if family == "cifar":
        x = norm.conv(widths[0], 3, 1, name="stem_conv")(inputs)
    else:
        x = norm.conv(64, 7, 2, name="stem_conv")(inputs)
    if order != "relu_only_preact":
        x = bn("stem_bn")(x)
    x = keras.layers.ReLU(name="stem_relu")(x)
    if family == "imagenet":
        x = keras.layers.MaxPooling2D(3, 2, padding="same", name="stem_pool")(x)

    for s, (n, width) in enumerate(zip(units_per_stage, widths), start=1):
        if stacked_stages:
            x = ResidualUnit(
                width,
                strides=1 if s == 1 else 2,
                preactivation="branch" if not is_preact else ("none" if s == 1 else "shared"),
                fused_bn=fused_bn,
                name=f"stage{s}_unit1",
                **unit_options,
            )(x)
            if n > 1:
                stack_options = {
                    k: v for k, v in unit_options.items()
                    if k not in ("downsample", "stride_at", "dropout_rate")
                }
                x = StackedStage(
                    n - 1, width, recompute=recompute, name=f"stage{s}_units2to{n}",
                    **stack_options,
                )(x)
            continue
        for u in range(1, n + 1):
            if not is_preact:
                preactivation = "branch"  # unused by post-activation units
            elif s == 1 and u == 1:
                preactivation = "none"  # the stem applied it
            elif u == 1:
                preactivation = "shared"  # dimension-changing unit: shortcut sees BN-ReLU(x)
            else:
                preactivation = "branch"
            x = ResidualUnit(
                width,
                strides=2 if (u == 1 and s > 1) else 1,
                preactivation=preactivation,
                fused_bn=fused_bn,
                name=f"stage{s}_unit{u}",
                **unit_options,
            )(x)

    # Last unit: the extra activation after its addition (pre-activation orders only).
    if order == "full_preact":
        x = bn("final_bn")(x)
    if is_preact:
        x = keras.layers.ReLU(name="final_relu")(x)

    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dense(
            num_classes, activation=classifier_activation, name="predictions"
        )(x)
    elif pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool")(x)
    return keras.Model(inputs, x, name=name or "resnet")



def chain_layers(model: keras.Model, purpose: str = "this tool") -> list:
    """The model's layers in call order, checking that it is a single chain.

    ``build_resnet`` makes chain models (each layer feeds the next), which is what the tools
    that walk a network layer by layer (BN folding, propagation diagnostics, unstacking)
    need; any other model gets a ValueError naming the layer that breaks the chain.
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"{purpose} needs a model with one input and one output.")
    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    previous = model.inputs[0]
    for layer in layers:
        if len(layer._inbound_nodes) != 1 or layer.input is not previous:
            raise ValueError(
                f"{purpose} supports chain models (each layer feeds the next, as build_resnet "
                f"makes them); layer {layer.name!r} breaks the chain."
            )
        previous = layer.output
    return layers
