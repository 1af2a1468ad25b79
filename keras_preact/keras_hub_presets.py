"""keras-hub's ResNetV2 presets read without keras-hub: ``ResNetBackbone(use_pre_activation=True)``.

keras-hub publishes timm's BatchNorm ResNetV2 checkpoints (``resnet_v2_50_imagenet``,
``resnet_v2_101_imagenet``: ``kaggle://keras/resnetv2/keras/...``) converted to its
``ResNetBackbone`` (keras_hub/src/models/resnet/resnet_backbone.py, converter
keras_hub/src/utils/timm/convert_resnet.py). Its v2 network is this package's
``stem="timm"`` network, op for op:

* stem: ``ZeroPadding2D(3)`` + 7x7/2 ``"valid"`` conv (``conv1_conv``), no BN-ReLU (as timm's), a
  pad of -inf + 3x3/2 max pool -- Torch's symmetric padding, our ``padding="symmetric"``;
* unit ``stack<s>_block<u>``: ``_pre_activation_bn`` + ReLU; the first unit of a stage takes its
  1x1 projection (``_0_conv``, stride on it) from the pre-activated input (our "shared"
  pre-activation); ``_1_conv`` 1x1, ``_1_bn``-ReLU, ``_2_conv`` 3x3 carrying the stride
  (``ZeroPadding2D(1)`` + "valid": symmetric; our ``stride_at="3x3"``), ``_2_bn``-ReLU,
  ``_3_conv`` 1x1, add. The basic block is the same with ``_1_conv``, ``_1_bn``, ``_2_conv``;
* ``post_bn`` + ReLU after the last unit (our ``final_bn``); BN epsilon 1e-5 everywhere, as ours.

The backbone holds no rescaling or normalisation: keras-hub's ``ResNetImageConverter`` does
that (ImageNet mean and std, as timm's), so the backbone's features equal this package's
``include_top=False, pooling=None`` network's on the same input. The presets have no
classifier (keras-hub's ``task.weights.h5`` is not read): use ``include_top=False`` or a new
``num_classes``.

keras-hub's backbone honours a ``data_format``, as this package does; its weights do not depend
on it, so the skeleton below is always built NHWC, and the network keeps the preset's layout
unless the caller asks for another (``from_preset(..., data_format=...)``).

A preset folder holds ``config.json`` (the serialized backbone: its ``stackwise_*`` lists fix
the stage table and widths) and ``model.weights.h5``. Keras 3 names the variables in that file
by layer class and position (``layers/conv2d_12/vars/0``), not by layer name; so the file is
loaded, by Keras, into a skeleton of keras-hub's graph built here from plain Keras layers in
keras-hub's order, and copied from its named layers. keras-hub is never imported.
"""

from __future__ import annotations

import json
import os

import keras
import numpy as np
from keras import layers

from keras_preact.common import LEGACY_DATA_FORMAT
from keras_preact.model import ResNet, as_resnet, through_units

CLASS_NAME = "ResNetBackbone"
BLOCKS = {"bottleneck_block": "bottleneck", "basic_block": "basic"}
WEIGHTS_FILE = "model.weights.h5"


def is_keras_hub_resnet(config: dict) -> bool:
    """Whether a preset's ``config.json`` is keras-hub's ``ResNetBackbone``."""
    return config.get("class_name") == CLASS_NAME or config.get("registered_name") == f"keras_hub>{CLASS_NAME}"


def architecture(config: dict) -> dict:
    """:class:`keras_preact.ResNet` arguments of a keras-hub ResNetV2 backbone's ``config.json``.

    Raises ValueError for the ResNets keras_preact has no equivalent of (post-activation v1,
    ResNet-vd, several stem convs, other strides).
    """
    args = config.get("config", {})
    block = args.get("block_type")
    if not args.get("use_pre_activation"):
        raise ValueError("This keras-hub ResNetBackbone is a post-activation ResNet (v1, "
                         "use_pre_activation=false); only its ResNetV2 presets are pre-activation nets.")
    if block not in BLOCKS:
        raise ValueError(f"keras-hub block_type {block!r} has no keras_preact equivalent "
                         f"(supported: {', '.join(BLOCKS)}).")
    if list(args.get("input_conv_kernel_sizes", [])) != [7] or len(args.get("input_conv_filters", [])) != 1:
        raise ValueError("Only keras-hub's one-conv 7x7 stem (input_conv_kernel_sizes=[7]) matches "
                         f"keras_preact's; got {args.get('input_conv_kernel_sizes')!r}.")
    stages = tuple(int(n) for n in args["stackwise_num_blocks"])
    strides = [int(s) for s in args["stackwise_num_strides"]]
    if strides != [1] + [2] * (len(stages) - 1):
        raise ValueError(f"keras-hub stackwise_num_strides {strides} differ from keras_preact's "
                         "(1 for the first stage, 2 for the others).")
    return dict(
        family="imagenet", stem="timm", padding="symmetric", order="full_preact",
        stride_at="3x3", downsample="projection", unit=BLOCKS[block], units_per_stage=stages,
        widths=tuple(int(w) for w in args["stackwise_num_filters"]),
        stem_width=int(args["input_conv_filters"][0]), input_shape=_input_shape(args),
        include_top=False, data_format=args.get("data_format") or LEGACY_DATA_FORMAT,
    )


def _input_shape(args: dict) -> tuple:
    """(height, width, channels) of a backbone's ``image_shape``, which keras-hub writes in the
    backbone's own layout ((channels, height, width) for channels_first)."""
    shape = tuple(args.get("image_shape") or (None, None, 3))
    if args.get("data_format") == "channels_first":
        c, h, w = shape
        return (h, w, c)
    return shape


def _keras_hub_name(path: str) -> str | None:
    """keras-hub's ``layer/variable`` for one of our variable paths (None: keras-hub has none)."""
    parts = path.split("/")
    if parts[0] == "stem_conv":
        return f"conv1_conv/{parts[-1]}"
    if parts[0] == "final_bn":
        return f"post_bn/{parts[-1]}"
    if len(parts) != 3 or not parts[0].startswith("stage"):
        return None
    stage, unit = parts[0][len("stage"):].split("_unit")
    block = f"stack{int(stage) - 1}_block{int(unit) - 1}"
    layer = {"preact_bn": "pre_activation_bn", "shortcut_conv": "0_conv"}.get(parts[1])
    if layer is None and parts[1].startswith("conv"):
        layer = f"{parts[1][len('conv'):]}_conv"
    elif layer is None and parts[1].startswith("bn"):
        layer = f"{int(parts[1][len('bn'):]) - 1}_bn"
    return f"{block}_{layer}/{parts[-1]}" if layer else None


def load_weights(model: ResNet, directory: str, skip_head: bool = False) -> None:
    """Assign a keras-hub ResNetV2 preset's weights to ``model`` (built with
    :func:`architecture`'s arguments); ``skip_head`` leaves the model's classifier as it is.

    Raises ValueError naming the first variable without a match (another architecture).
    """
    model = as_resnet(model, "keras_hub_presets.load_weights")
    if model.architecture.stacked_stages:
        return through_units(model, lambda flat: load_weights(flat, directory, skip_head))
    config = read_config(directory)
    skeleton = _skeleton(config)
    skeleton.load_weights(os.path.join(directory, WEIGHTS_FILE))
    source = {v.path: v for v in skeleton.weights}
    used, assignments = set(), []
    for variable in model.weights:
        if variable.path.startswith("predictions/"):
            if skip_head:
                continue
            raise ValueError("keras-hub's ResNetV2 presets hold a backbone without a classifier: "
                             "build the model with include_top=False, or a num_classes to train.")
        name = _keras_hub_name(variable.path)
        if name not in source:
            raise ValueError(f"The keras-hub preset has no variable for {variable.path!r}: a "
                             "different architecture (keras_preact.keras_hub_presets.architecture).")
        value = np.asarray(source[name])
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(f"keras-hub's {name!r} has shape {value.shape}, but {variable.path!r} "
                             f"needs {tuple(variable.shape)}: a different architecture.")
        used.add(name)
        assignments.append((variable, value))
    unused = sorted(set(source) - used)
    if unused:
        raise ValueError(f"The model has no variable for keras-hub's {unused[0]!r} "
                         f"({len(unused)} unused): a different architecture.")
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))


def read_config(directory: str) -> dict:
    with open(os.path.join(directory, "config.json"), encoding="utf-8") as handle:
        return json.load(handle)


# -- keras-hub's graph from plain Keras layers (resnet_backbone.py, use_pre_activation=True) ----
# Built NHWC whatever keras.config.image_data_format() says: it only holds the file's weights,
# which are the same in both layouts.
NHWC = "channels_last"


def _bn(name):
    return layers.BatchNormalization(axis=-1, epsilon=1e-5, momentum=0.9, name=name)


def _conv(filters, kernel, stride, padding, name):
    return layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=False,
                         data_format=NHWC, name=name)


def _block(x, filters, stride, conv_shortcut, bottleneck, name):
    """keras-hub's ``apply_bottleneck_block`` / ``apply_basic_block`` with pre-activation."""
    preact = layers.Activation("relu", name=f"{name}_pre_activation_relu")(
        _bn(f"{name}_pre_activation_bn")(x))
    expansion = 4 if bottleneck else 1
    shortcut = _conv(expansion * filters, 1, stride, "valid", f"{name}_0_conv")(preact) if conv_shortcut else x
    x = preact
    if bottleneck:
        x = _conv(filters, 1, 1, "valid", f"{name}_1_conv")(x)
        x = layers.Activation("relu", name=f"{name}_1_relu")(_bn(f"{name}_1_bn")(x))
    if stride > 1:
        x = layers.ZeroPadding2D(1, data_format=NHWC, name=f"{name}_{2 if bottleneck else 1}_pad")(x)
    padding = "valid" if stride > 1 else "same"
    if bottleneck:
        x = _conv(filters, 3, stride, padding, f"{name}_2_conv")(x)
        x = layers.Activation("relu", name=f"{name}_2_relu")(_bn(f"{name}_2_bn")(x))
        x = _conv(4 * filters, 1, 1, "valid", f"{name}_3_conv")(x)
    else:
        x = _conv(filters, 3, stride, padding, f"{name}_1_conv")(x)
        x = layers.Activation("relu", name=f"{name}_1_relu")(_bn(f"{name}_1_bn")(x))
        x = _conv(filters, 3, 1, "same", f"{name}_2_conv")(x)
    return layers.Add(name=f"{name}_out")([shortcut, x])


def _skeleton(config: dict) -> keras.Model:
    """A functional model with keras-hub's layers, names and graph order, to load its file."""
    args = config["config"]
    bottleneck = args["block_type"] == "bottleneck_block"
    image = layers.Input(shape=_input_shape(args))
    kernel = args["input_conv_kernel_sizes"][0]
    x = layers.ZeroPadding2D((kernel - 1) // 2, data_format=NHWC, name="conv1_pad")(image)
    x = _conv(args["input_conv_filters"][0], kernel, 2, "valid", "conv1_conv")(x)
    x = keras.ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]], constant_values=float("-inf"))
    x = layers.MaxPooling2D(3, strides=2, data_format=NHWC, name="pool1_pool")(x)
    for s, (filters, blocks, stride) in enumerate(zip(args["stackwise_num_filters"],
                                                      args["stackwise_num_blocks"],
                                                      args["stackwise_num_strides"])):
        for b in range(blocks):
            x = _block(x, filters, stride if b == 0 else 1,
                       conv_shortcut=b == 0 and (bottleneck or s > 0), bottleneck=bottleneck,
                       name=f"stack{s}_block{b}")
    x = layers.Activation("relu", name="post_relu")(_bn("post_bn")(x))
    return keras.Model(image, x, name="keras_hub_resnet_skeleton")
