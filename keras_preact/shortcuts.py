"""Shortcut-path building blocks: the zero-pad shortcut, the sigmoid gate, the combination.

The residual unit (``keras_preact.units.ResidualUnit``) composes these; they are public so a
user can reuse them, and they serialize on their own.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_preact.common import PACKAGE, SHORTCUTS, check_choice, strided_shape
from keras_preact.norm import HeNormalFanOut
from keras_preact.plan import UNIT_DEFAULTS, Combination


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

    ``bias_init`` is the paper's ``b_g`` (default ``UNIT_DEFAULTS.gate_bias_init``, the best
    of Table 1): a strongly negative value starts the gate near 0, so ``1 - g(x)`` keeps the
    shortcut close to identity.
    """

    def __init__(self, filters: int, strides: int = 1,
                 bias_init: float = UNIT_DEFAULTS.gate_bias_init, **kwargs):
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
            kernel_initializer=HeNormalFanOut(),
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
