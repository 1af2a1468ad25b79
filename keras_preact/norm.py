"""BatchNorm and convolution as the paper's code defines them: the one place for their math.

* ``batch_norm_forward`` is the BatchNorm normalisation, training and inference mode, used by
  :class:`FusedBatchNormalization` and by the stacked-stage executor alike. It is one function
  with one backend switch: on TensorFlow it calls TensorFlow's fused kernel (the fast path on
  CPU), on every other Keras backend (JAX, PyTorch) it computes the same normalisation with
  ``keras.ops``, which those backends' compilers fuse themselves.
  ``update_moving_average`` is the running-statistics update both apply; ``inference_affine``
  is the eval-mode BN written as a per-channel ``scale * x + offset`` (what BN folding needs).
* :class:`HeNormalFanOut` is the paper's initialisation (He et al. 2015, "MSRA", as in the
  paper's Torch code): ``N(0, sqrt(2 / (k * k * out_channels)))``. It reads the kernel's last
  four axes, so a stack of kernels ``[units, k, k, in, out]`` gets the same per-kernel scale.

The paper's Torch code (and fb.resnet.torch) uses BatchNorm with running-average momentum 0.1
and eps 1e-5. Keras counts momentum the other way round (weight of the *old* statistic), so
the paper's setting is ``momentum=0.9`` here; Keras' own defaults (0.99, 1e-3) are not used.
"""

from __future__ import annotations

import math

import keras
import numpy as np
from keras import ops

from keras_preact.common import PACKAGE, check_choice
from keras_preact.padding import PADDINGS, SymmetricConv2D

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
# Input dtypes BatchNorm takes as they are (with float32 parameters and statistics): what
# TensorFlow's fused kernel accepts, and the half-precision dtypes of Keras' mixed policies.
FUSED_INPUT_DTYPES = ("float32", "float16", "bfloat16")


def uses_tensorflow_kernels() -> bool:
    """Whether Keras runs on TensorFlow, where the TensorFlow-only fast paths apply."""
    return keras.backend.backend() == "tensorflow"


# -- BatchNorm math -------------------------------------------------------------------------
def batch_norm_forward(x, gamma, beta, moving_mean, moving_variance, epsilon, training):
    """BatchNorm of an NHWC tensor: TensorFlow's fused kernel on TensorFlow, ``keras.ops`` elsewhere.

    ``x`` may be float32, float16 or bfloat16 (mixed precision); the parameters and statistics
    are float32 whatever ``x`` is. The statistics are computed in float32 and ``y`` is returned
    in ``x``'s dtype, so a half-precision network keeps float32 BN statistics.

    Returns ``(y, batch_mean, batch_variance)``; in training mode the statistics are the
    batch's (variance *biased*, as Keras and this package keep it in the moving average), in
    inference mode the moving ones are used and the two statistics returned are ``None``.
    """
    if uses_tensorflow_kernels():
        return _fused_batch_norm(x, gamma, beta, moving_mean, moving_variance, epsilon, training)
    x32 = ops.cast(x, "float32")
    if training:
        mean = ops.mean(x32, axis=(0, 1, 2))
        # Two passes (mean, then the mean squared deviation): as exact as the fused kernel.
        variance = ops.mean(ops.square(x32 - mean), axis=(0, 1, 2))
    else:
        mean, variance = ops.cast(moving_mean, "float32"), ops.cast(moving_variance, "float32")
    scale = ops.cast(gamma, "float32") * ops.rsqrt(variance + epsilon)
    y = ops.cast((x32 - mean) * scale + ops.cast(beta, "float32"), x.dtype)
    return (y, mean, variance) if training else (y, None, None)


def _fused_batch_norm(x, gamma, beta, moving_mean, moving_variance, epsilon, training):
    """``batch_norm_forward`` by TensorFlow's fused kernel (TensorFlow backend only)."""
    import tensorflow as tf  # only on the TensorFlow backend: the package never needs it elsewhere

    if not training:
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, mean=moving_mean, variance=moving_variance,
            epsilon=epsilon, data_format="NHWC", is_training=False,
        )
        return y, None, None
    y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        x, gamma, beta, epsilon=epsilon, data_format="NHWC", is_training=True
    )
    # The fused kernel reports the Bessel-corrected variance; convert back: var * (n - 1) / n.
    # With the batch shape known when the step is traced (the usual case), n is a Python number:
    # the same float32 multiply and divide, without the shape ops that would add to every BN of
    # the graph (a ResNet-164 step has 163 of them; tracing time grows with the op count).
    static = x.shape[:3]
    if all(d is not None for d in static):
        n = float(static[0] * static[1] * static[2])
        return y, mean, variance * (n - 1.0) / max(n, 2.0)
    shape = tf.shape(x)
    n = tf.cast(shape[0] * shape[1] * shape[2], variance.dtype)
    return y, mean, variance * (n - 1.0) / tf.maximum(n, 2.0)


def update_moving_average(variable, value, momentum: float) -> None:
    """``variable <- momentum * variable + (1 - momentum) * value`` (Keras' convention).

    No gradient flows into a statistic (``value`` is a batch statistic of the forward pass).
    """
    variable.assign(variable * momentum + ops.stop_gradient(value) * (1.0 - momentum))


def inference_affine(gamma, beta, moving_mean, moving_variance, epsilon):
    """The eval-mode BN as ``(scale, offset)`` with ``bn(x) = scale * x + offset``, in float64.

    Float64 so that folding the BN into a convolution adds no rounding of its own.
    """
    gamma, beta, mean, var = (np.asarray(a, np.float64) for a in (gamma, beta, moving_mean, moving_variance))
    scale = gamma / np.sqrt(var + epsilon)
    return scale, beta - mean * scale


def layer_affine(bn: keras.layers.BatchNormalization):
    """``inference_affine`` of a channels-last Keras BatchNormalization layer (any subclass)."""
    if bn.axis not in (-1, 3, [-1], [3]):
        raise ValueError(f"Only channels-last BatchNormalization can be folded, got axis={bn.axis}.")
    mean = np.asarray(bn.moving_mean)
    gamma = np.asarray(bn.gamma) if bn.scale else np.ones_like(mean)
    beta = np.asarray(bn.beta) if bn.center else np.zeros_like(mean)
    return inference_affine(gamma, beta, mean, np.asarray(bn.moving_variance), bn.epsilon)


@keras.saving.register_keras_serializable(package=PACKAGE)
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras BatchNormalization computed by :func:`batch_norm_forward`.

    Keras 3 normalises with generic ops (moments, then a chain of element-wise ops); on CPU
    TensorFlow's fused kernel (one pass for the statistics, one for the output, and a fused
    gradient) is much faster: on the 2-core benchmark machine it is the largest single speed-up
    of ResNet training (see benchmarks/training_speed.py). On JAX and PyTorch the layer runs
    the same normalisation in ``keras.ops`` (their compilers fuse it), so a model saved under
    one backend loads and computes the same numbers under another. The result is the same
    layer as Keras': same variables, same config, same normalisation, and the moving
    statistics are updated exactly as Keras does (biased batch variance). Under a
    mixed-precision policy (``mixed_float16``, ``mixed_bfloat16``) the inputs arrive in half
    precision and are normalised with the float32 gamma, beta and statistics. Anything else
    (masks, other axes or ranks, float64 inputs, renorm, synchronized BN) falls back to Keras'
    own path.
    """

    def _fusable(self, inputs, mask):
        return (
            mask is None
            and len(inputs.shape) == 4
            and self.axis in (-1, 3)
            and keras.backend.standardize_dtype(inputs.dtype) in FUSED_INPUT_DTYPES
            and self.scale
            and self.center
            and keras.backend.standardize_dtype(self.gamma.dtype) == "float32"
            and not self.renorm
            and not getattr(self, "synchronized", False)
        )

    def call(self, inputs, training=None, mask=None):
        if not self._fusable(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        training = bool(training and self.trainable)
        outputs, mean, variance = batch_norm_forward(
            inputs, self.gamma, self.beta, self.moving_mean, self.moving_variance,
            self.epsilon, training,
        )
        if training:
            update_moving_average(self.moving_mean, mean, self.momentum)
            update_moving_average(self.moving_variance, variance, self.momentum)
        return outputs


def batch_norm(
    momentum: float = BN_MOMENTUM, epsilon: float = BN_EPSILON, name=None, fused: bool = True
):
    """The BatchNorm every unit uses (channels-last); ``fused=False`` gives Keras' own layer.

    ``fused=True`` (:class:`FusedBatchNormalization`) is TensorFlow's fused kernel on the
    TensorFlow backend and the same math in ``keras.ops`` on the others.
    """
    cls = FusedBatchNormalization if fused else keras.layers.BatchNormalization
    return cls(axis=-1, momentum=momentum, epsilon=epsilon, name=name)


# -- initialisation and convolution -----------------------------------------------------------
def he_std(kernel_shape) -> float:
    """He (fan-out) standard deviation of a ``[..., k, k, in, out]`` kernel: sqrt(2 / (k*k*out))."""
    kh, kw, _, out = kernel_shape[-4:]
    return math.sqrt(2.0 / (kh * kw * out))


@keras.saving.register_keras_serializable(package=PACKAGE)
class HeNormalFanOut(keras.initializers.Initializer):
    """The paper code's conv initialisation, ``N(0, he_std(shape))``, for one kernel or a stack."""

    def __init__(self, seed=None):
        self.seed = seed
        self._normal = keras.initializers.RandomNormal(0.0, 1.0, seed=seed)

    def __call__(self, shape, dtype=None):
        return self._normal(shape, dtype=dtype) * he_std(shape)

    def get_config(self):
        return {"seed": self.seed}


def conv(filters: int, kernel_size: int, strides: int = 1, name=None, use_bias=False,
         padding: str = "same", **kwargs):
    """A He-initialised convolution (the paper's weight layer W), bias-free by default.

    ``padding="symmetric"`` pads as Torch does (``keras_preact.padding``); it only differs from
    TensorFlow's ``"same"`` for strided convolutions with kernels larger than 1, so those are
    the only ones that get a :class:`~keras_preact.padding.SymmetricConv2D`.
    """
    check_choice("padding", padding, PADDINGS)
    options = dict(strides=strides, use_bias=use_bias, kernel_initializer=HeNormalFanOut(),
                   name=name, **kwargs)
    if padding == "symmetric" and strides > 1 and kernel_size > 1:
        return SymmetricConv2D(filters, kernel_size, **options)
    return keras.layers.Conv2D(filters, kernel_size, padding="same", **options)
