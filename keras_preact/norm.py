"""BatchNorm and convolution as the paper's code defines them: the one place for their math.

* ``batch_norm_forward`` is the BatchNorm normalisation, training and inference mode, used by
  :class:`FusedBatchNormalization` and by the stacked-stage executor alike. It is one function
  with one backend switch: on TensorFlow it calls TensorFlow's fused kernel (the fast path on
  CPU), on PyTorch PyTorch's own (eager PyTorch fuses nothing itself), on JAX it computes the
  same normalisation with ``keras.ops``, which XLA fuses.
  ``update_moving_average`` is the running-statistics update both apply; ``inference_affine``
  is the eval-mode BN written as a per-channel ``scale * x + offset`` (what BN folding needs).
* Every function and layer here takes NHWC or NCHW tensors (``data_format``, Keras' names; see
  :func:`runnable_data_format` for the one layout TensorFlow may refuse on a CPU).
* :class:`HeNormalFanOut` is the paper's initialisation (He et al. 2015, "MSRA", as in the
  paper's Torch code): ``N(0, sqrt(2 / (k * k * out_channels)))``. It reads the kernel's last
  four axes, so a stack of kernels ``[units, k, k, in, out]`` gets the same per-kernel scale.

The paper's Torch code (and fb.resnet.torch) uses BatchNorm with running-average momentum 0.1
and eps 1e-5. Keras counts momentum the other way round (weight of the *old* statistic), so
the paper's setting is ``momentum=0.9`` here; Keras' own defaults (0.99, 1e-3) are not used.
"""

from __future__ import annotations

import functools
import math

import keras
import numpy as np
from keras import ops

from keras_preact.common import PACKAGE, channel_axis, check_choice, resolve_data_format
from keras_preact.convolution import Conv2D
from keras_preact.padding import PADDINGS, ChannelsFirstConv2D, SymmetricConv2D

BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
# Input dtypes BatchNorm takes as they are (with float32 parameters and statistics): what
# TensorFlow's fused kernel accepts, and the half-precision dtypes of Keras' mixed policies.
FUSED_INPUT_DTYPES = ("float32", "float16", "bfloat16")


def uses_tensorflow_kernels() -> bool:
    """Whether Keras runs on TensorFlow, where the TensorFlow-only fast paths apply."""
    return keras.backend.backend() == "tensorflow"


# -- layouts --------------------------------------------------------------------------------
@functools.cache
def tensorflow_runs_channels_first() -> bool:
    """Whether TensorFlow runs an NCHW convolution on its default device, found by running one.

    Keras' TensorFlow backend hands a channels_first convolution to TensorFlow as NCHW (it
    transposes pooling to NHWC itself, not convolutions). TensorFlow's own CPU Conv2D kernel
    refuses NCHW ("The Conv2D op currently only supports the NHWC tensor format on the CPU");
    its oneDNN CPU kernels and its GPU kernels take it. oneDNN is on by default on CPUs with
    AVX-512 VNNI/BF16 or AMX, and wherever ``TF_ENABLE_ONEDNN_OPTS=1`` is set before TensorFlow
    loads (the package's commands and tests set it); ``TF_ENABLE_ONEDNN_OPTS=0`` turns it off.
    So the answer depends on the machine and the environment, and one 1x1 convolution finds it.
    """
    import tensorflow as tf  # TensorFlow backend only

    with tf.init_scope():  # eagerly, also when a layer is made inside a traced function
        try:
            tf.nn.conv2d(tf.zeros((1, 1, 1, 1)), tf.zeros((1, 1, 1, 1)), 1, "VALID",
                         data_format="NCHW")
        except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError):
            return False
    return True


def runnable_data_format(data_format) -> str:
    """``data_format`` resolved (``common.resolve_data_format``: None is Keras'
    ``image_data_format()``), or a ValueError where this backend cannot run it: channels_first
    on a TensorFlow that has no NCHW convolution (:func:`tensorflow_runs_channels_first`).
    Every layer with a convolution calls it when it is made, so a network that could not run
    fails at construction, with this message, not at its first call inside TensorFlow."""
    data_format = resolve_data_format(data_format)
    if (data_format == "channels_first" and uses_tensorflow_kernels()
            and not tensorflow_runs_channels_first()):
        raise ValueError(
            "data_format='channels_first' cannot run on this TensorFlow: without oneDNN "
            "(TF_ENABLE_ONEDNN_OPTS=0, or unset on a CPU without AVX-512 VNNI or AMX) and "
            "without a GPU, its convolutions take NHWC only. Set TF_ENABLE_ONEDNN_OPTS=1 "
            "before TensorFlow is imported, use the JAX or PyTorch backend, or build the "
            "network with data_format='channels_last': the weights are the same "
            "(ResNet.from_config({**config, 'data_format': 'channels_last'}), then load_weights)."
        )
    return data_format


# -- BatchNorm math -------------------------------------------------------------------------
def batch_norm_forward(x, gamma, beta, moving_mean, moving_variance, epsilon, training,
                       data_format: str = "channels_last"):
    """BatchNorm of an NHWC (or, with ``data_format="channels_first"``, NCHW) tensor:
    TensorFlow's fused kernel on TensorFlow, PyTorch's native kernel on PyTorch, ``keras.ops``
    elsewhere (JAX, whose compiler fuses the element-wise chain itself).

    ``x`` may be float32, float16 or bfloat16 (mixed precision); the parameters and statistics
    are float32 whatever ``x`` is. The statistics are computed in float32 and ``y`` is returned
    in ``x``'s dtype, so a half-precision network keeps float32 BN statistics.

    Returns ``(y, batch_mean, batch_variance)``; in training mode the statistics are the
    batch's (variance *biased*, as Keras and this package keep it in the moving average), in
    inference mode the moving ones are used and the two statistics returned are ``None``.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        return _fused_batch_norm(x, gamma, beta, moving_mean, moving_variance, epsilon, training,
                                 data_format)
    if backend == "torch":
        return _torch_batch_norm(x, gamma, beta, moving_mean, moving_variance, epsilon, training,
                                 data_format)
    channels_first = data_format == "channels_first"
    axes = (0, 2, 3) if channels_first else (0, 1, 2)  # every axis but the channels'
    # Per-channel values broadcast against the channel axis: trailing in NHWC as they are,
    # [C, 1, 1] in NCHW.
    per_channel = (lambda v: ops.reshape(v, (-1, 1, 1))) if channels_first else (lambda v: v)
    x32 = ops.cast(x, "float32")
    if training:
        mean = ops.mean(x32, axis=axes)
        # Two passes (mean, then the mean squared deviation): as exact as the fused kernel.
        variance = ops.mean(ops.square(x32 - per_channel(mean)), axis=axes)
    else:
        mean, variance = ops.cast(moving_mean, "float32"), ops.cast(moving_variance, "float32")
    scale = ops.cast(gamma, "float32") * ops.rsqrt(variance + epsilon)
    y = (x32 - per_channel(mean)) * per_channel(scale) + per_channel(ops.cast(beta, "float32"))
    y = ops.cast(y, x.dtype)
    return (y, mean, variance) if training else (y, None, None)


def _fused_batch_norm(x, gamma, beta, moving_mean, moving_variance, epsilon, training,
                      data_format):
    """``batch_norm_forward`` by TensorFlow's fused kernel (TensorFlow backend only).

    The kernel takes NCHW on the CPU as well as NHWC (its CPU version transposes internally);
    both give the NHWC numbers to float32 rounding (tests/test_data_format.py).
    """
    import tensorflow as tf  # only on the TensorFlow backend: the package never needs it elsewhere

    tf_format = "NCHW" if data_format == "channels_first" else "NHWC"
    if not training:
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(
            x, gamma, beta, mean=moving_mean, variance=moving_variance,
            epsilon=epsilon, data_format=tf_format, is_training=False,
        )
        return y, None, None
    y, mean, variance = tf.compat.v1.nn.fused_batch_norm(
        x, gamma, beta, epsilon=epsilon, data_format=tf_format, is_training=True
    )
    # The fused kernel reports the Bessel-corrected variance; convert back: var * (n - 1) / n,
    # n = batch x height x width (the values each channel's statistics are taken over).
    # With the batch shape known when the step is traced (the usual case), n is a Python number:
    # the same float32 multiply and divide, without the shape ops that would add to every BN of
    # the graph (a ResNet-164 step has 163 of them; tracing time grows with the op count).
    axes = (0, 2, 3) if data_format == "channels_first" else (0, 1, 2)
    static = [x.shape[axis] for axis in axes]
    if all(d is not None for d in static):
        n = float(static[0] * static[1] * static[2])
        return y, mean, variance * (n - 1.0) / max(n, 2.0)
    shape = tf.shape(x)
    n = tf.cast(shape[axes[0]] * shape[axes[1]] * shape[axes[2]], variance.dtype)
    return y, mean, variance * (n - 1.0) / tf.maximum(n, 2.0)


def _torch_batch_norm(x, gamma, beta, moving_mean, moving_variance, epsilon, training,
                      data_format):
    """``batch_norm_forward`` by PyTorch's own BatchNorm kernel (PyTorch backend only).

    Keras' generic path is a chain of about 15 element-wise ops per BN under PyTorch's eager
    autograd, each keeping its own activation-sized buffer for the backward pass; PyTorch's
    kernel is one pass for the statistics, one for the output and one fused backward. On a
    ResNet-164 step that chain was half the op time (benchmarks/training_speed.py
    --backend=torch --profile, docs/performance.md).

    The kernel wants the channels on axis 1. An NHWC tensor is handed over as its NCHW
    *view* (a permutation, no copy): PyTorch sees a channels_last tensor, which its CPU kernel
    normalises in that memory order, and the result permutes back to a contiguous NHWC tensor.
    Under a mixed policy ``x`` is bfloat16 or float16 with float32 parameters, which the kernel
    takes as they are (statistics accumulated in float32, ``y`` in ``x``'s dtype).

    The moving statistics are updated by the caller, from the batch statistics returned here:
    mean, and the *biased* variance recovered from the kernel's ``1 / sqrt(var + eps)``
    (PyTorch's own running update would use the unbiased variance, the TensorFlow and JAX
    paths the biased one, so the three backends keep the same moving averages).
    """
    import torch  # only on the PyTorch backend: the package never needs it elsewhere

    x = ops.convert_to_tensor(x)
    channels_last = data_format != "channels_first"
    nchw = x.permute(0, 3, 1, 2) if channels_last else x
    params = [ops.convert_to_tensor(v) for v in (gamma, beta)]
    if not training:
        stats = [ops.convert_to_tensor(v) for v in (moving_mean, moving_variance)]
        y = torch.nn.functional.batch_norm(nchw, *stats, *params, training=False, eps=epsilon)
        mean = variance = None
    else:
        y, mean, inverse_std = torch.native_batch_norm(nchw, *params, None, None, True, 0.0,
                                                       epsilon)
        variance = torch.reciprocal(torch.square(inverse_std.detach())) - epsilon
        mean = mean.detach()
    if channels_last:
        y = y.permute(0, 2, 3, 1)
    return y, mean, variance


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
    """``inference_affine`` of a Keras BatchNormalization layer (any subclass) over the channel
    axis of an image, NHWC or NCHW: its ``(scale, offset)`` apply along ``bn.axis``."""
    if bn.axis not in (-1, 3, 1, [-1], [3], [1]):
        raise ValueError(f"Only BatchNormalization over an image's channel axis (NHWC: -1 or 3, "
                         f"NCHW: 1) can be folded, got axis={bn.axis}.")
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
    of ResNet training (see benchmarks/training_speed.py). On PyTorch it is PyTorch's own
    kernel, for the same reason; on JAX the same normalisation in ``keras.ops`` (XLA fuses
    it). A model saved under one backend loads and computes the same numbers under another.
    The result is the same
    layer as Keras': same variables, same config, same normalisation, and the moving
    statistics are updated exactly as Keras does (biased batch variance). Under a
    mixed-precision policy (``mixed_float16``, ``mixed_bfloat16``) the inputs arrive in half
    precision and are normalised with the float32 gamma, beta and statistics. The channel axis
    is the last (NHWC, ``axis=-1``) or the second (NCHW, ``axis=1``). Anything else (masks,
    other axes or ranks, float64 inputs, renorm, synchronized BN) falls back to Keras' own path.
    """

    def _data_format(self) -> str | None:
        """The image layout this layer's axis is the channels of (4-D inputs), or None."""
        return {-1: "channels_last", 3: "channels_last", 1: "channels_first"}.get(self.axis)

    def _fusable(self, inputs, mask):
        return (
            mask is None
            and len(inputs.shape) == 4
            and self._data_format() is not None
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
            self.epsilon, training, self._data_format(),
        )
        if training:
            update_moving_average(self.moving_mean, mean, self.momentum)
            update_moving_average(self.moving_variance, variance, self.momentum)
        return outputs


def batch_norm(
    momentum: float = BN_MOMENTUM, epsilon: float = BN_EPSILON, name=None, fused: bool = True,
    data_format=None,
):
    """The BatchNorm every unit uses, over the channel axis of ``data_format`` (None:
    ``keras.config.image_data_format()``); ``fused=False`` gives Keras' own layer.

    ``fused=True`` (:class:`FusedBatchNormalization`) is TensorFlow's fused kernel on the
    TensorFlow backend, PyTorch's on PyTorch and the same math in ``keras.ops`` on JAX.
    """
    cls = FusedBatchNormalization if fused else keras.layers.BatchNormalization
    axis = channel_axis(resolve_data_format(data_format))
    return cls(axis=axis, momentum=momentum, epsilon=epsilon, name=name)


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
         padding: str = "same", data_format=None, **kwargs):
    """A He-initialised convolution (the paper's weight layer W), bias-free by default.

    ``padding="symmetric"`` pads as Torch does (``keras_preact.padding``); it only differs from
    TensorFlow's ``"same"`` for strided convolutions with kernels larger than 1, so those are
    the only ones that get a :class:`~keras_preact.padding.SymmetricConv2D`. ``data_format``:
    :func:`runnable_data_format`'s (None: ``keras.config.image_data_format()``). A
    channels_first conv with a bias (the gate's) is a
    :class:`~keras_preact.padding.ChannelsFirstConv2D`, which adds it along the channels on
    TensorFlow too; a bias-free one is the package's :class:`~keras_preact.convolution.Conv2D`
    in both layouts, because ``.keras`` and ``.weights.h5`` files name the weights of listed
    layers by class, and a file must load into either layout. All three compute the
    convolution with :func:`keras_preact.convolution.convolution` (PyTorch's kernel in its
    fast layout on the PyTorch backend).
    """
    check_choice("padding", padding, PADDINGS)
    data_format = runnable_data_format(data_format)
    options = dict(strides=strides, use_bias=use_bias, kernel_initializer=HeNormalFanOut(),
                   name=name, data_format=data_format, **kwargs)
    if padding == "symmetric" and strides > 1 and kernel_size > 1:
        return SymmetricConv2D(filters, kernel_size, **options)
    biased_nchw = use_bias and data_format == "channels_first"
    cls = ChannelsFirstConv2D if biased_nchw else Conv2D
    return cls(filters, kernel_size, padding="same", **options)
