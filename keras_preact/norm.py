"""Normalisation and initialisation defaults shared by every layer of the package.

The paper's Torch code (and fb.resnet.torch) uses BatchNorm with running-average momentum 0.1
and eps 1e-5. Keras counts momentum the other way round (weight of the *old* statistic), so
the paper's setting is ``momentum=0.9`` here; Keras' own defaults (0.99, 1e-3) are not used.
"""

from __future__ import annotations

import keras

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def conv_initializer():
    """He (MSRA) initialisation as in the paper's code: N(0, sqrt(2 / (k*k*out_channels)))."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )


def batch_norm(momentum: float = BN_MOMENTUM, epsilon: float = BN_EPSILON, name=None):
    """The BatchNorm every unit uses (channels-last)."""
    return keras.layers.BatchNormalization(
        axis=-1, momentum=momentum, epsilon=epsilon, name=name
    )


def conv(filters: int, kernel_size: int, strides: int = 1, name=None, use_bias=False):
    """A bias-free 'same'-padded convolution, He-initialised (the paper's weight layer W)."""
    return keras.layers.Conv2D(
        filters,
        kernel_size,
        strides=strides,
        padding="same",
        use_bias=use_bias,
        kernel_initializer=conv_initializer(),
        name=name,
    )
