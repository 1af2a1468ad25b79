"""Shortcut-path building blocks: the parameter-free zero-pad shortcut and the sigmoid gate.

The residual unit (``keras_preact.units.ResidualUnit``) composes these; they are public so a
user can reuse them, and they serialize on their own.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_preact.norm import conv_initializer

PACKAGE = "keras_preact"


def strided_shape(input_shape, strides: int, channels: int) -> tuple:
    """NHWC shape after a 'same'-padded op of the given stride and output channels."""
    n, h, w, _ = input_shape
    h = None if h is None else -(-h // strides)
    w = None if w is None else -(-w // strides)
    return (n, h, w, channels)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ZeroPadShortcut(keras.layers.Layer):
    """Option-A shortcut of [1]: subsample spatially, then append zero channels.

    Parameter-free. fb.resnet.torch writes it as ``SpatialAveragePooling(1, 1, s, s)`` (a plain
    subsample) concatenated with a zeroed copy; the result is the input's channels followed by
    ``filters - in_channels`` zero channels.
    """

    def __init__(self, filters: int, strides: int = 1, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.strides = int(strides)

    def call(self, inputs):
        x = inputs[:, :: self.strides, :: self.strides, :] if self.strides > 1 else inputs
        extra = self.filters - x.shape[-1]
        if extra < 0:
            raise ValueError(
                f"ZeroPadShortcut cannot shrink channels: input has {x.shape[-1]}, "
                f"filters={self.filters}."
            )
        if extra == 0:
            return x
        return ops.pad(x, [[0, 0], [0, 0], [0, 0], [0, extra]])

    def compute_output_shape(self, input_shape):
        return strided_shape(input_shape, self.strides, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters, "strides": self.strides}


@keras.saving.register_keras_serializable(package=PACKAGE)
class ShortcutGate(keras.layers.Layer):
    """``g(x) = sigmoid(W_g x + b_g)`` with ``W_g`` a 1x1 convolution (paper Sec. 3.1).

    ``bias_init`` is the paper's ``b_g``: strongly negative values (the paper's
    best is -6) start the gate near 0, so ``1 - g(x)`` keeps the shortcut close to identity.
    """

    def __init__(self, filters: int, strides: int = 1, bias_init: float = -6.0, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.strides = int(strides)
        self.bias_init = float(bias_init)
        self.conv = keras.layers.Conv2D(
            self.filters,
            1,
            strides=self.strides,
            padding="same",
            use_bias=True,
            kernel_initializer=conv_initializer(),
            bias_initializer=keras.initializers.Constant(self.bias_init),
            name="gate_conv",
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
        }
