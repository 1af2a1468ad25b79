"""Torch-style symmetric padding for strided convolutions and pooling.

TensorFlow's ``padding="same"`` pads a stride-2 op on the bottom/right only (for an even input
and a 3x3 kernel: 0 rows above, 1 below), so output pixel ``i`` is centred on input pixel
``2i + 1``. Torch -- the paper's own code, fb.resnet.torch, timm -- pads ``(k - 1) // 2`` on
every side, centring it on ``2i``. The output shapes are the same; the values are not: a
network trained with one convention and evaluated with the other is a different function
(about 0.3-0.4 relative in the logits of a ResNet-20). These layers pad symmetrically, then
run the op with ``"valid"`` padding, which is what Torch computes. For stride 1 and odd
kernels both conventions already agree.

``PADDINGS``: ``"symmetric"`` (these layers) or ``"same"`` (TensorFlow's).

The package's Conv2D classes (:class:`SymmetricConv2D`, and :class:`ChannelsFirstConv2D`, an
NCHW convolution with a bias: the gate's, a BN-folded one) add an NCHW bias along the channel
axis by the backend's own broadcasting. Keras' Conv2D adds it with ``keras.ops.add``, which
Keras 3.15's TensorFlow backend turns into ``tf.nn.bias_add`` with the layout guessed from the
shapes, NHWC whenever the last axis has the bias' length: an NCHW output whose width equals its
channel count gets the bias added along its width (``tests/test_data_format.py`` has the case).
Both compute their convolution with ``keras_preact.convolution.convolution``, as the package's
plain ``Conv2D`` does.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_preact.common import PACKAGE, resolve_data_format, spatial_axes
from keras_preact.convolution import BackendConvolution

PADDINGS = ("symmetric", "same")
# The padding of files written before the option existed (keras_preact 0.1 built "same" nets):
# their configs carry no padding, and they load with this one. Not a default of new units.
LEGACY_PADDING = "same"


def _pad(x, kernel_size, data_format: str, value=0.0):
    """``(k - 1) // 2`` of ``value`` on both sides of each spatial axis (never the channels)."""
    (kh, kw) = kernel_size
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    if ph == 0 and pw == 0:
        return x
    widths = [[0, 0], [0, 0], [0, 0], [0, 0]]
    (h_axis, w_axis) = spatial_axes(data_format)
    widths[h_axis], widths[w_axis] = [ph, ph], [pw, pw]
    return ops.pad(x, widths, constant_values=value)


def _padded_shape(input_shape, kernel_size, data_format: str):
    shape = list(input_shape)
    for axis, k in zip(spatial_axes(data_format), kernel_size):
        shape[axis] = None if shape[axis] is None else shape[axis] + 2 * ((k - 1) // 2)
    return tuple(shape)


class ChannelAxisBias:
    """Mixin of a ``keras.layers.Conv2D`` subclass: an NCHW output's bias is added along the
    channel axis with the backend's broadcasting, not ``keras.ops.add`` (module docstring)."""

    def call(self, inputs):
        if not (self.use_bias and self.data_format == "channels_first"):
            return super().call(inputs)
        outputs = self.convolution_op(inputs, self.kernel)
        # The + of the backend's tensors (TensorFlow's is tf.math.add): a [1, C, 1, 1] bias
        # broadcasts along the channels, whatever the width.
        outputs = outputs + ops.reshape(self.bias, (1, self.filters, 1, 1))
        return outputs if self.activation is None else self.activation(outputs)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ChannelsFirstConv2D(ChannelAxisBias, BackendConvolution, keras.layers.Conv2D):
    """``keras.layers.Conv2D`` with the bias added along the channels of NCHW outputs: what
    ``keras_preact.norm.conv`` makes for a channels_first conv with a bias."""


@keras.saving.register_keras_serializable(package=PACKAGE)
class SymmetricConv2D(ChannelAxisBias, BackendConvolution, keras.layers.Conv2D):
    """``Conv2D`` with Torch's padding: ``(k - 1) // 2`` zeros on every side, then ``valid``.

    Same variables and config as ``Conv2D`` (its ``padding`` is always ``"valid"``); the
    padding goes on the spatial axes of its ``data_format``.
    """

    def __init__(self, filters, kernel_size, **kwargs):
        kwargs["padding"] = "valid"
        kwargs["data_format"] = resolve_data_format(kwargs.get("data_format"))
        super().__init__(filters, kernel_size, **kwargs)

    def call(self, inputs):
        return super().call(_pad(inputs, self.kernel_size, self.data_format))

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(
            _padded_shape(input_shape, self.kernel_size, self.data_format))


@keras.saving.register_keras_serializable(package=PACKAGE)
class SymmetricMaxPooling2D(keras.layers.MaxPooling2D):
    """``MaxPooling2D`` with Torch's padding: ``-inf`` on every side (padding never wins the
    max, as in ``torch.nn.MaxPool2d(padding=...)``), then ``valid``."""

    def __init__(self, pool_size=2, strides=None, **kwargs):
        kwargs["padding"] = "valid"
        kwargs["data_format"] = resolve_data_format(kwargs.get("data_format"))
        super().__init__(pool_size, strides, **kwargs)

    def call(self, inputs):
        return super().call(_pad(inputs, self.pool_size, self.data_format, value=float("-inf")))

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(
            _padded_shape(input_shape, self.pool_size, self.data_format))


def max_pool(pool_size: int, strides: int, padding: str, name=None, data_format=None):
    """A max pool with the given padding convention (``data_format``: Keras', None for
    ``keras.config.image_data_format()``)."""
    if padding == "symmetric":
        return SymmetricMaxPooling2D(pool_size, strides, name=name, data_format=data_format)
    return keras.layers.MaxPooling2D(pool_size, strides, padding="same", name=name,
                                     data_format=data_format)
