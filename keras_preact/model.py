"""The network: :class:`ResNet`, a Keras model built from a :class:`~keras_preact.config.ResNetConfig`.

Stem, stages of residual units, the final activation of the pre-activation orders, head. The
architecture rules follow the paper's appendix and its reference code (the paper's Torch code
for CIFAR, fb.resnet.torch for ImageNet):

* CIFAR stem: one 3x3 conv, ``widths[0]`` channels. ImageNet stem: 7x7/2 conv, 64 channels,
  3x3/2 max pool. With pre-activation the stem's BN-ReLU is the first unit's pre-activation
  (appendix), so the stem is ``conv -> BN -> ReLU`` (ReLU only for ``relu_only_preact``) and
  fb.resnet.torch's max pool comes after it; the post-activation orders use the same stem, as [1].
  ``stem="timm"`` is timm's ResNetV2 stem (conv, pool; the first unit applies the BN-ReLU).
* Padding: ``"symmetric"`` (the default) pads strided convs and the stem pool as the paper's
  Torch code does; ``"same"`` is TensorFlow's (``keras_preact.padding``).
* The units and their pre-activation placement: ``ResNetConfig.layout``.
* Last unit: the pre-activation orders end with an extra BN-ReLU (ReLU only for
  ``relu_only_preact``) after the last addition, before pooling; the others end at the unit.
* Layout: ``data_format`` (NHWC or NCHW) is passed to every layer that has one (the stem's
  conv, BN and pool, each unit, the final BN, the global pooling); the weights are the same in
  both, so :func:`with_data_format` moves a trained network to the other layout.

Like keras-hub's backbones, the model is a functional Keras model whose ``get_config`` is its
architecture arguments, so ``ResNet.from_config(model.get_config())`` and ``.keras`` files rebuild
the same network; ``model.architecture`` is the config. The network is a single chain of layers
(each feeds the next), which :meth:`ResNet.chain_layers` hands to the tools that walk it.
"""

from __future__ import annotations

from typing import Sequence

import keras

from keras_preact import norm
from keras_preact.common import DATA_FORMATS, LEGACY_DATA_FORMAT, PACKAGE, check_choice
from keras_preact.config import ResNetConfig
from keras_preact.padding import LEGACY_PADDING, max_pool
from keras_preact.stacked import StackedStage, stacked_options, transfer_weights
from keras_preact.units import ResidualUnit


def _graph(config: ResNetConfig):
    """(inputs, outputs) of the functional graph of ``config``."""

    # Checked before any layer is made: one error where the backend cannot run the layout.
    layout = norm.runnable_data_format(config.data_format)

    def bn(name):
        return norm.batch_norm(config.bn_momentum, config.bn_epsilon, name=name,
                               fused=config.fused_bn, data_format=layout)

    inputs = keras.Input(shape=config.image_shape, name="image")
    if config.stem == "cifar":
        x = norm.conv(config.stem_width, 3, 1, name="stem_conv", data_format=layout)(inputs)
    else:
        x = norm.conv(config.stem_width, 7, 2, name="stem_conv", padding=config.padding,
                      data_format=layout)(inputs)
    if config.stem != "timm":
        if config.order != "relu_only_preact":
            x = bn("stem_bn")(x)
        x = keras.layers.ReLU(name="stem_relu")(x)
    if config.stem != "cifar":
        x = max_pool(3, 2, config.padding, name="stem_pool", data_format=layout)(x)

    options = config.unit_options()
    for slot in config.layout():
        if slot.stacked:
            x = StackedStage(slot.count, slot.filters, recompute=config.recompute,
                             data_format=layout, name=slot.name, **stacked_options(options))(x)
        else:
            x = ResidualUnit(slot.filters, strides=slot.strides, preactivation=slot.preactivation,
                             data_format=layout, name=slot.name, **options.to_dict())(x)

    # Last unit: the extra activation after its addition (pre-activation orders only).
    if config.order == "full_preact":
        x = bn("final_bn")(x)
    if config.is_preact:
        x = keras.layers.ReLU(name="final_relu")(x)

    if config.include_top:
        # The head runs in float32 under any policy: float32 logits (and loss) in mixed precision.
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool", dtype="float32",
                                                data_format=layout)(x)
        x = keras.layers.Dense(
            config.num_classes, activation=config.classifier_activation, name="predictions",
            dtype="float32",
        )(x)
    elif config.pooling == "avg":
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool", data_format=layout)(x)
    elif config.pooling == "max":
        x = keras.layers.GlobalMaxPooling2D(name="max_pool", data_format=layout)(x)
    return inputs, x


def _graph_in_policy(config: ResNetConfig):
    """``_graph(config)`` with every layer made under ``config.dtype_policy``."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(config.dtype_policy)
    try:
        return _graph(config)
    finally:
        keras.config.set_dtype_policy(previous)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResNet(keras.Model):
    """A residual network of the paper (any unit, order, shortcut and stage table).

    Args:
      units_per_stage: number of residual units in each stage.
      family: ``"cifar"`` (3x3 stem, no pooling in the stem) or ``"imagenet"`` (7x7/2 stem and
        3x3/2 max pool). Each stage after the first halves the resolution.
      unit: ``"basic"``, ``"bottleneck"`` or ``"single"``.
      widths: width of each stage's 3x3 convs (default CIFAR 16/32/64, ImageNet
        64/128/256/512). Bottleneck stages output 4x this.
      stem: ``"cifar"``, ``"imagenet"`` (default: the family's) or ``"timm"`` (timm's
        ResNetV2: no BN-ReLU in the stem; the first unit applies it before its split).
      stem_width: channels of the stem conv (default: ``widths[0]`` for CIFAR, 64 otherwise).
      preact / order: ``preact=True`` is ``order="full_preact"`` (the default), ``False`` is
        ``"original"``; ``order`` selects any of ``keras_preact.common.ORDERS`` (paper Fig. 4).
      shortcut, shortcut_scale, scale_residual, gate_bias_init, dropout_rate, padding,
        bn_momentum, bn_epsilon, fused_bn: the options every unit shares, the fields of
        ``keras_preact.plan.UnitOptions`` (its defaults; ``ResidualUnit`` says what each
        does). ``padding`` also applies to the ImageNet stem's strided conv and max pool;
        ``"same"`` is the padding networks of keras_preact 0.1 were built with.
      downsample: dimension-matching shortcut, ``"projection"`` or ``"zero_pad"``. Default:
        zero-pad for CIFAR basic and single units (as [1]), projection otherwise.
      stride_at: conv that carries a unit's stride, ``"first"`` or ``"3x3"``. Default: ``"first"``
        for CIFAR (the paper's code), ``"3x3"`` for ImageNet (fb.resnet.torch).
      num_classes, include_top, pooling: as in ``keras.applications``. The classifier outputs
        logits unless ``classifier_activation`` is set (e.g. ``"softmax"``).
      input_shape: (height, width, channels), for either data format. Default (32, 32, 3)
        for CIFAR and (None, None, 3) for ImageNet: the network is fully convolutional, so one
        model evaluates 224 and 320 crops.
      data_format: ``"channels_last"`` (NHWC images, ``[batch, height, width, channels]``) or
        ``"channels_first"`` (NCHW, ``[batch, channels, height, width]``: PyTorch's layout);
        None (the default) is ``keras.config.image_data_format()`` when the model is built,
        and ``get_config`` saves the resolved value, so a saved model keeps its layout (one
        saved before the option existed loads NHWC). The weights are the same in both layouts
        (:func:`with_data_format`). On a TensorFlow whose CPU convolutions take NHWC only (no
        oneDNN, no GPU) channels_first raises a ValueError here
        (``keras_preact.norm.runnable_data_format``).
      stacked_stages: run the units after the first of each stage as one loop over stacked
        weights (``keras_preact.stacked.StackedStage``): same parameters and results, a graph
        whose size does not grow with depth. For very deep nets (ResNet-1001).
      recompute: with ``stacked_stages``, recompute each unit in the backward pass instead of
        storing its intermediates (gradient checkpointing): far less memory, a little slower.
      dtype_policy: ``"float32"``, ``"mixed_float16"`` or ``"mixed_bfloat16"`` (default: Keras'
        global policy when the model is built). Mixed policies keep float32 weights and BN
        statistics, compute convs and activations in half precision, and the head (pooling and
        the classifier) in float32, so the logits are float32.
      name: the model's name (default ``"resnet"``).
    """

    def __init__(self, units_per_stage: Sequence[int], *, preact: bool | None = None,
                 order: str | None = None, name: str | None = None, trainable: bool = True,
                 **architecture):
        config = ResNetConfig.create(units_per_stage, preact=preact, order=order, **architecture)
        inputs, outputs = _graph_in_policy(config)
        super().__init__(inputs=inputs, outputs=outputs, name=name or "resnet", trainable=trainable)
        self.architecture = config

    @classmethod
    def from_architecture(cls, config: ResNetConfig, name: str | None = None) -> "ResNet":
        """The network of a :class:`ResNetConfig` (fresh weights)."""
        values = config.to_dict()
        return cls(values.pop("units_per_stage"), name=name, **values)

    def get_config(self) -> dict:
        return {"name": self.name, "trainable": self.trainable, **self.architecture.to_dict()}

    @classmethod
    def from_config(cls, config: dict, custom_objects=None) -> "ResNet":
        config = dict(config)
        # A network saved before the padding option existed was built with TensorFlow's
        # padding, and one saved before the data_format option existed, NHWC.
        config.setdefault("padding", LEGACY_PADDING)
        config.setdefault("data_format", LEGACY_DATA_FORMAT)
        name = config.pop("name", None)
        trainable = config.pop("trainable", True)
        architecture = ResNetConfig.from_dict(config)
        model = cls.from_architecture(architecture, name=name)
        model.trainable = trainable
        return model

    def chain_layers(self) -> list:
        """The layers in call order (the input layer left out): a ResNet is one chain."""
        return [layer for layer in self.layers if not isinstance(layer, keras.layers.InputLayer)]

    def rebuild(self, **changes) -> "ResNet":
        """The same network with some architecture arguments changed, weights carried over.

        Only changes that keep the weights valid make sense (``stacked_stages``,
        ``recompute``, ``fused_bn``, ``dtype_policy``, ``data_format``); for example
        ``model.rebuild(stacked_stages=False)`` expands stacked stages into ResidualUnits.
        """
        target = ResNet.from_architecture(self.architecture.replace(**changes), name=self.name)
        transfer_weights(self, target)
        return target


def build_resnet(units_per_stage: Sequence[int], **kwargs) -> ResNet:
    """Build a residual network from a stage table: ``ResNet(units_per_stage, **kwargs)``.

    The arguments are :class:`ResNet`'s (``help(keras_preact.ResNet)`` lists them).
    """
    return ResNet(units_per_stage, **kwargs)


def all_layers(model: keras.Model) -> list:
    """Every layer of ``model``, in order, each ``ResidualUnit`` followed by its sublayers (its
    op layers, then its gate and the gate's conv) and each nested model by its own layers.

    Read from public lists only (``model.layers``, ``ResidualUnit.op_layers``), for tools that
    look for, e.g., every BatchNormalization layer. A ``StackedStage`` holds its units' weights
    itself and has no sublayers.
    """
    found = []
    for layer in model.layers:
        found.append(layer)
        if isinstance(layer, ResidualUnit):
            found += layer.op_layers()
            if layer.gate is not None:
                found += [layer.gate, layer.gate.conv]
        elif isinstance(layer, keras.Model):
            found += all_layers(layer)
    return found


def as_resnet(model, purpose: str = "this tool") -> ResNet:
    """``model`` if it is a :class:`ResNet`, else a ValueError saying how to convert it."""
    if isinstance(model, ResNet):
        return model
    raise ValueError(
        f"{purpose} needs a keras_preact ResNet (built by keras_preact.get_model, build_resnet "
        f"or ResNet), got {type(model).__name__} {getattr(model, 'name', '')!r}. A model saved "
        "by keras_preact 0.1 loads as a plain functional model: rebuild the same architecture "
        "and copy its weights, e.g. new = keras_preact.get_model('resnet20'); "
        "new.set_weights(old.get_weights()) (see docs/migration.md)."
    )


def unstack(model: ResNet) -> ResNet:
    """The same network with every StackedStage expanded into ResidualUnits (weights copied).

    Tools that read units one by one (BN folding for export, propagation diagnostics) call
    this; a model without stacked stages is returned as is.
    """
    model = as_resnet(model, "unstack")
    if not model.architecture.stacked_stages:
        return model
    return model.rebuild(stacked_stages=False, recompute=False)


def through_units(model: ResNet, assign):
    """``assign(model)``; for a model with stacked stages, ``assign`` its unit-by-unit twin, then
    stack the result back into ``model``. Every weight mapping (timm, PyTorch, presets) names
    ResidualUnit paths, so each is written once, for the unit-by-unit build. Returns what
    ``assign`` returns."""
    if not model.architecture.stacked_stages:
        return assign(model)
    flat = unstack(model)
    result = assign(flat)
    transfer_weights(flat, model)
    return result


def with_data_format(model: ResNet, data_format: str) -> ResNet:
    """The same network taking ``data_format`` images: ``model`` itself when it already does,
    else a rebuild in that layout with the weights copied (they are layout-free: Keras keeps
    conv kernels HWIO in both). It computes what ``model`` computes on transposed images.

    A file saved in one layout loads into the other the same way, or without building the
    saved layout at all: ``ResNet.from_config({**config, "data_format": ...})``, then
    ``load_weights(path)`` (``.keras`` or ``.weights.h5``).
    """
    model = as_resnet(model, "with_data_format")
    check_choice("data_format", data_format, DATA_FORMATS)
    if model.architecture.data_format == data_format:
        return model
    return model.rebuild(data_format=data_format)


def float32_model(model: ResNet) -> ResNet:
    """The same network computing in float32: ``model`` itself, or a mixed-precision model
    rebuilt with ``dtype_policy="float32"`` and its (already float32) weights copied.

    Export calls this, so a model trained under ``mixed_float16`` / ``mixed_bfloat16`` serves
    the same float32 signatures and TFLite files as one trained in float32.
    """
    model = as_resnet(model, "float32_model")
    if model.architecture.dtype_policy == "float32":
        return model
    return model.rebuild(dtype_policy="float32")
