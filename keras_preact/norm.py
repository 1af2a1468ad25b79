"""Normalisation and initialisation defaults shared by every layer of the package.

The paper's Torch code (and fb.resnet.torch) uses BatchNorm with running-average momentum 0.1
and eps 1e-5. Keras counts momentum the other way round (weight of the *old* statistic), so
the paper's setting is ``momentum=0.9`` here; Keras' own defaults (0.99, 1e-3) are not used.
"""

from __future__ import annotations

import keras
import tensorflow as tf

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def conv_initializer():
    """He (MSRA) initialisation as in the paper's code: N(0, sqrt(2 / (k*k*out_channels)))."""
    return keras.initializers.VarianceScaling(
        scale=2.0, mode="fan_out", distribution="untruncated_normal"
    )


@keras.saving.register_keras_serializable(package="keras_preact")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras BatchNormalization computed by TensorFlow's fused kernel.

    Keras 3 normalises with generic ops (moments, then a chain of element-wise ops); on CPU the
    fused kernel (one pass for the statistics, one for the output, and a fused gradient) is
    much faster: on the 2-core benchmark machine it is the largest single speed-up of
    ResNet training (see benchmarks/training_speed.py). The result is the same layer: same
    variables, same config, same normalisation, and the moving statistics are updated exactly
    as Keras does (biased batch variance). Anything the fused kernel cannot do (masks, other
    axes or ranks, non-float32 inputs, renorm, synchronized BN) falls back to Keras' own path.
    """

    def _fusable(self, inputs, mask):
        return (
            mask is None
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and inputs.dtype == tf.float32
            and self.scale
            and self.center
            and not self.renorm
            and not getattr(self, "synchronized", False)
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        if training and self.trainable:
            outputs, mean, variance = fused_batch_norm_train(
                inputs, self.gamma, self.beta, self.epsilon
            )
            m = self.momentum
            self.moving_mean.assign(self.moving_mean * m + mean * (1.0 - m))
            self.moving_variance.assign(self.moving_variance * m + variance * (1.0 - m))
            return outputs
        outputs, _, _ = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            self.gamma,
            self.beta,
            mean=self.moving_mean,
            variance=self.moving_variance,
            epsilon=self.epsilon,
            data_format="NHWC",
            is_training=False,
        )
        return outputs


def fused_batch_norm_train(inputs, gamma, beta, epsilon):
    """Training-mode fused BN: (normalised output, batch mean, *biased* batch variance).

    The fused kernel reports the Bessel-corrected variance; Keras (and this package) keep the
    biased one in the moving average, so it is converted back: var * (n - 1) / n.
    """
    outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        inputs, gamma, beta, epsilon=epsilon, data_format="NHWC", is_training=True
    )
    shape = tf.shape(inputs)
    n = tf.cast(shape[0] * shape[1] * shape[2], variance.dtype)
    return outputs, mean, variance * (n - 1.0) / tf.maximum(n, 2.0)


def batch_norm(
    momentum: float = BN_MOMENTUM, epsilon: float = BN_EPSILON, name=None, fused: bool = True
):
    """The BatchNorm every unit uses (channels-last); ``fused=False`` gives Keras' own layer."""
    cls = FusedBatchNormalization if fused else keras.layers.BatchNormalization
    return cls(axis=-1, momentum=momentum, epsilon=epsilon, name=name)


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
