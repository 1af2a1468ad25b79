"""Shortcut-path building blocks: the zero-pad shortcut, the sigmoid gate, the combination.

The residual unit (``keras_preact.units.ResidualUnit``) composes these; they are public so a
user can reuse them, and they serialize on their own.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_preact import norm
from keras_preact.common import (
    LEGACY_DATA_FORMAT,
    PACKAGE,
    SHORTCUTS,
    channel_axis,
    check_choice,
    resolve_data_format,
    strided_shape,
)
from keras_preact.plan import UNIT_DEFAULTS, Combination


@keras.saving.register_keras_serializable(package=PACKAGE)
class ZeroPadShortcut(keras.layers.Layer):
    """Option-A shortcut of [1]: subsample spatially, then append zero channels.

    Parameter-free. fb.resnet.torch writes it as ``SpatialAveragePooling(1, 1, s, s)`` (a plain
    subsample) concatenated with a zeroed copy; the result is the input's channels followed by
    ``filters - in_channels`` zero channels. ``data_format`` (None:
    ``keras.config.image_data_format()``) says which axes are subsampled and which is padded.
    """

    def __init__(self, filters: int, strides: int = 1, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.strides = int(strides)
        self.data_format = resolve_data_format(data_format)

    def call(self, inputs):
        s = self.strides
        channels_first = self.data_format == "channels_first"
        if s > 1:
            x = inputs[:, :, ::s, ::s] if channels_first else inputs[:, ::s, ::s, :]
        else:
            x = inputs
        axis = channel_axis(self.data_format)
        extra = self.filters - x.shape[axis]
        if extra < 0:
            raise ValueError(
                f"ZeroPadShortcut cannot shrink channels: input has {x.shape[axis]}, "
                f"filters={self.filters}."
            )
        if extra == 0:
            return x
        widths = [[0, 0], [0, 0], [0, 0], [0, 0]]
        widths[axis] = [0, extra]
        return ops.pad(x, widths)

    def compute_output_shape(self, input_shape):
        return strided_shape(input_shape, self.strides, self.filters, self.data_format)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides,
                "data_format": self.data_format}

    @classmethod
    def from_config(cls, config):
        return super().from_config({"data_format": LEGACY_DATA_FORMAT, **config})


@keras.saving.register_keras_serializable(package=PACKAGE)
class ShortcutGate(keras.layers.Layer):
    """``g(x) = sigmoid(W_g x + b_g)`` with ``W_g`` a 1x1 convolution (paper Sec. 3.1).

    ``bias_init`` is the paper's ``b_g`` (default ``UNIT_DEFAULTS.gate_bias_init``, the best
    of Table 1): a strongly negative value starts the gate near 0, so ``1 - g(x)`` keeps the
    shortcut close to identity. ``data_format``: the layout of the images (None:
    ``keras.config.image_data_format()``).
    """

    def __init__(self, filters: int, strides: int = 1,
                 bias_init: float = UNIT_DEFAULTS.gate_bias_init, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.strides = int(strides)
        self.bias_init = float(bias_init)
        self.data_format = norm.runnable_data_format(data_format)
        # The paper code's He-initialised conv (a channels_first one adds its bias right on
        # TensorFlow: keras_preact.padding), with the gate's bias b_g.
        self.conv = norm.conv(
            self.filters,
            1,
            self.strides,
            name="gate_conv",
            use_bias=True,
            data_format=self.data_format,
            bias_initializer=keras.initializers.Constant(self.bias_init),
        )

    def build(self, input_shape):
        self.conv.build(input_shape)

    def call(self, inputs):
        return ops.sigmoid(self.conv(inputs))

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        return {
            **super().get_config(),
            "filters": self.filters,
            "strides": self.strides,
            "bias_init": self.bias_init,
            "data_format": self.data_format,
        }

    @classmethod
    def from_config(cls, config):
        return super().from_config({"data_format": LEGACY_DATA_FORMAT, **config})


@keras.saving.register_keras_serializable(package=PACKAGE)
class ShortcutCombine(keras.layers.Layer):
    """``keras_preact.plan.Combination`` as a layer: ``[h(x), F(x)]`` or ``[h(x), F(x), g(x)] -> y``.

    For graphs assembled op by op (the BN-folded export), where the combination must be a
    serializable layer; the formula itself is not repeated here.
    """

    def __init__(self, shortcut: str = UNIT_DEFAULTS.shortcut,
                 shortcut_scale: float = UNIT_DEFAULTS.shortcut_scale,
                 scale_residual: bool = UNIT_DEFAULTS.scale_residual, **kwargs):
        super().__init__(**kwargs)
        check_choice("shortcut", shortcut, SHORTCUTS)
        self.shortcut = shortcut
        self.shortcut_scale = float(shortcut_scale)
        self.scale_residual = bool(scale_residual)

    def call(self, inputs):
        shortcut, residual, *gate = inputs
        combination = Combination(self.shortcut, self.shortcut_scale, self.scale_residual)
        return combination(shortcut, residual, gate[0] if gate else None)

    def compute_output_shape(self, input_shapes):
        return tuple(input_shapes[1])

    def get_config(self):
        return {
            **super().get_config(),
            "shortcut": self.shortcut,
            "shortcut_scale": self.shortcut_scale,
            "scale_residual": self.scale_residual,
        }
