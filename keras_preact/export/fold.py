"""Batch-norm folding: an inference-only copy of a network with every foldable BN removed.

In eval mode a BatchNormalization is the per-channel affine map ``y = a * x + b`` with
``a = gamma / sqrt(moving_variance + eps)`` and ``b = beta - moving_mean * a``. Where it comes
right after a convolution it can be folded *exactly* into that convolution:
``conv(x, W) * a + b == conv(x, W * a) + b`` (scale the output channels of the kernel, add a
bias). A pre-activation unit is BN-ReLU-conv: the BN that follows a conv inside the residual
branch (conv -> BN -> ReLU -> conv) folds into the first conv, and so does the stem's
conv -> BN. The unit's leading BN cannot fold into anything: its input is the sum that also
feeds the shortcut, and the ReLU after it sits between it and the next conv. Those BNs (and
``final_bn``) become a :class:`ChannelAffine` multiply-add, which is all a BN costs at
inference anyway, without the rsqrt of the moving variance at run time.

``fold_batch_norm(model)`` returns a new functional Keras model built from the network's own
layers; the original model is left untouched. Each residual unit is rebuilt by the package's
one unit interpreter (``keras_preact.plan.run_unit``) with a backend that emits folded layers,
and the shortcut formula is the :class:`~keras_preact.shortcuts.ShortcutCombine` layer, so
nothing of the unit's math is written again here; the BN coefficients come from
``keras_preact.norm.inference_affine``.
``fold_report`` says how many BNs were folded and how many remain as multiply-adds.

Either layout folds: a conv's kernel is HWIO in both (its output channels last), and the copy
takes the same input layout as the network (the exporter hands it a channels_last one).
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
from keras import ops

from keras_preact.common import LEGACY_DATA_FORMAT, PACKAGE, channel_axis, resolve_data_format
from keras_preact.model import as_resnet, unstack
from keras_preact.norm import layer_affine
from keras_preact.padding import ChannelAxisBias, ChannelsFirstConv2D
from keras_preact.plan import UnitBackend, run_unit
from keras_preact.shortcuts import ShortcutCombine
from keras_preact.units import ResidualUnit


@keras.saving.register_keras_serializable(package=PACKAGE)
class ChannelAffine(keras.layers.Layer):
    """``y = x * scale + offset`` per channel (the last axis, or the second for
    ``data_format="channels_first"``): an eval-mode BN, precomputed."""

    def __init__(self, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.data_format = resolve_data_format(data_format)

    def build(self, input_shape):
        channels = input_shape[channel_axis(self.data_format)]
        if channels is None:
            raise ValueError("ChannelAffine needs a known number of input channels.")
        self.scale = self.add_weight(shape=(channels,), initializer="ones", name="scale")
        self.offset = self.add_weight(shape=(channels,), initializer="zeros", name="offset")

    def call(self, inputs):
        scale, offset = (ops.cast(v, inputs.dtype) for v in (self.scale, self.offset))
        if self.data_format == "channels_first":
            scale, offset = ops.reshape(scale, (-1, 1, 1)), ops.reshape(offset, (-1, 1, 1))
        return inputs * scale + offset

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "data_format": self.data_format}

    @classmethod
    def from_config(cls, config):
        return super().from_config({"data_format": LEGACY_DATA_FORMAT, **config})


@dataclasses.dataclass
class FoldReport:
    """What ``fold_batch_norm`` did: BNs folded into a conv, BNs kept as a multiply-add."""

    folded_into_conv: list = dataclasses.field(default_factory=list)
    kept_as_affine: list = dataclasses.field(default_factory=list)

    def as_dict(self) -> dict:
        return {
            "bn_folded_into_conv": len(self.folded_into_conv),
            "bn_kept_as_multiply_add": len(self.kept_as_affine),
            "folded": list(self.folded_into_conv),
            "kept": list(self.kept_as_affine),
        }


def _clone(layer, name: str):
    """A fresh, unbuilt copy of ``layer`` with the same config (weights are set after building)."""
    config = layer.get_config()
    config["name"] = name
    return type(layer).from_config(config)


def _folded_conv(conv: keras.layers.Conv2D, bn: keras.layers.BatchNormalization, name: str):
    """conv -> BN as one conv with bias: kernel * a (per output channel, the kernel's last axis
    in either layout), bias * a + b."""
    if conv.groups != 1:
        raise ValueError(f"Cannot fold BN into {conv.name}: only groups=1 convs.")
    if channel_axis(conv.data_format) != _channel_axis(bn):
        raise ValueError(f"Cannot fold {bn.name} into {conv.name}: it normalises another axis.")
    if conv.activation is not keras.activations.linear:
        raise ValueError(f"Cannot fold BN into {conv.name}: it has an activation before the BN.")
    scale, offset = layer_affine(bn)
    kernel = np.asarray(conv.kernel.numpy(), np.float64) * scale
    bias = np.asarray(conv.bias.numpy(), np.float64) if conv.use_bias else 0.0
    bias = bias * scale + offset
    # Same class (e.g. SymmetricConv2D keeps its padding), now with a bias; Keras' own Conv2D
    # would add an NCHW bias along the width on TensorFlow (keras_preact.padding).
    config = {**conv.get_config(), "use_bias": True, "name": name}
    config.pop("kernel_initializer", None)
    config.pop("bias_initializer", None)
    cls = type(conv)
    if conv.data_format == "channels_first" and not issubclass(cls, ChannelAxisBias):
        cls = ChannelsFirstConv2D
    folded = cls.from_config(config)
    return folded, [kernel.astype(np.float32), bias.astype(np.float32)]


def _channel_axis(bn: keras.layers.BatchNormalization) -> int:
    """``bn.axis`` as ``common.channel_axis`` writes it (-1 for NHWC, 1 for NCHW)."""
    return 1 if bn.axis in (1, [1]) else -1


def _affine_layer(bn: keras.layers.BatchNormalization, name: str):
    scale, offset = layer_affine(bn)  # refuses any axis but an image's channels
    layout = "channels_first" if _channel_axis(bn) == 1 else "channels_last"
    return ChannelAffine(layout, name=name), [
        scale.astype(np.float32),
        offset.astype(np.float32),
    ]


class _Folder:
    """Rebuilds a chain of layers as folded layers, applying them to a symbolic tensor."""

    def __init__(self):
        self.report = FoldReport()

    def _call(self, layer, weights, x):
        y = layer(x)
        if weights is not None:
            layer.set_weights(weights)
        return y

    def apply(self, layers, x, prefix: str):
        """Apply ``layers`` (a sequential list) to ``x`` with every conv -> BN folded.

        ``prefix`` (the unit's name) keeps layer names unique: every unit has a ``conv1``.
        """
        layers = list(layers)
        i = 0
        while i < len(layers):
            layer = layers[i]
            nxt = layers[i + 1] if i + 1 < len(layers) else None
            if isinstance(layer, keras.layers.Conv2D) and isinstance(
                nxt, keras.layers.BatchNormalization
            ):
                folded, weights = _folded_conv(
                    layer, nxt, f"{prefix}{layer.name}_{nxt.name}_folded"
                )
                x = self._call(folded, weights, x)
                self.report.folded_into_conv.append(f"{prefix}{nxt.name}")
                i += 2
                continue
            if isinstance(layer, keras.layers.BatchNormalization):
                affine, weights = _affine_layer(layer, f"{prefix}{layer.name}_affine")
                x = self._call(affine, weights, x)
                self.report.kept_as_affine.append(f"{prefix}{layer.name}")
            elif isinstance(layer, keras.layers.Dropout):
                pass  # identity at inference
            elif isinstance(layer, ResidualUnit):
                x = self.unit(layer, x)
            elif isinstance(layer, keras.layers.InputLayer):
                pass
            else:
                copy = _clone(layer, f"{prefix}{layer.name}")
                x = self._call(copy, layer.get_weights() if layer.weights else None, x)
            i += 1
        return x

    def unit(self, unit: ResidualUnit, x):
        """The eval-mode computation of ``unit``: its plan, run with folded sublayers."""
        return run_unit(unit.plan(x.shape[channel_axis(unit.data_format)]), x,
                        _FoldBackend(self, unit))


class _FoldBackend(UnitBackend):
    """Emits a unit's ops as folded inference layers on symbolic tensors."""

    def __init__(self, folder: _Folder, unit: ResidualUnit):
        self.folder = folder
        self.unit = unit
        self.prefix = unit.name + "_"

    def op(self, op, x):
        return self.sequence((op,), x)

    def sequence(self, op_list, x):
        # The whole sequence at once, so that a conv followed by its BN folds into one conv.
        return self.folder.apply([getattr(self.unit, op[1]) for op in op_list], x, self.prefix)

    def gate(self, x):
        gate = _clone(self.unit.gate, f"{self.prefix}{self.unit.gate.name}")
        return self.folder._call(gate, self.unit.gate.get_weights(), x)

    def combine(self, plan, shortcut, residual, gate):
        c = plan.combination
        layer = ShortcutCombine(c.shortcut, c.shortcut_scale, c.scale_residual,
                                name=f"{self.unit.name}_add")
        return layer([shortcut, residual] + ([gate] if gate is not None else []))


def fold_batch_norm(model: keras.Model, return_report: bool = False):
    """An inference-only copy of ``model`` with conv -> BN folded and other BNs as multiply-adds.

    The copy computes ``model(x, training=False)`` up to float rounding; it has no
    BatchNormalization or Dropout layers left, so it cannot be trained as the original.

    Args:
      model: a :class:`keras_preact.ResNet` (any order, unit kind or shortcut variant).
      return_report: also return a :class:`FoldReport`.
    """
    model = unstack(as_resnet(model, "fold_batch_norm"))  # stacked stages become units again
    layers = model.chain_layers()
    folder = _Folder()
    inputs = keras.Input(batch_shape=model.inputs[0].shape, name="image")
    outputs = folder.apply(layers, inputs, prefix="")
    folded = keras.Model(inputs, outputs, name=f"{model.name}_folded")
    return (folded, folder.report) if return_report else folded
