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
"""

from __future__ import annotations

import keras
from keras import ops

from keras_preact.common import PACKAGE

PADDINGS = ("symmetric", "same")
# The padding of files written before the option existed (keras_preact 0.1 built "same" nets):
# their configs carry no padding, and they load with this one. Not a default of new units.
LEGACY_PADDING = "same"


def _pad(x, kernel_size, value=0.0):
    (kh, kw) = kernel_size
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    if ph == 0 and pw == 0:
        return x
    return ops.pad(x, [[0, 0], [ph, ph], [pw, pw], [0, 0]], constant_values=value)


def _padded_shape(input_shape, kernel_size):
    n, h, w, c = input_shape
    (kh, kw) = kernel_size
    h = None if h is None else h + 2 * ((kh - 1) // 2)
    w = None if w is None else w + 2 * ((kw - 1) // 2)
    return (n, h, w, c)


@keras.saving.register_keras_serializable(package=PACKAGE)
class SymmetricConv2D(keras.layers.Conv2D):
    """``Conv2D`` with Torch's padding: ``(k - 1) // 2`` zeros on every side, then ``valid``.

    Same variables and config as ``Conv2D`` (its ``padding`` is always ``"valid"``).
    """

    def __init__(self, filters, kernel_size, **kwargs):
        kwargs["padding"] = "valid"
        super().__init__(filters, kernel_size, **kwargs)

    def call(self, inputs):
        return super().call(_pad(inputs, self.kernel_size))

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(_padded_shape(input_shape, self.kernel_size))


@keras.saving.register_keras_serializable(package=PACKAGE)
class SymmetricMaxPooling2D(keras.layers.MaxPooling2D):
    """``MaxPooling2D`` with Torch's padding: ``-inf`` on every side (padding never wins the
    max, as in ``torch.nn.MaxPool2d(padding=...)``), then ``valid``."""

    def __init__(self, pool_size=2, strides=None, **kwargs):
        kwargs["padding"] = "valid"
        super().__init__(pool_size, strides, **kwargs)

    def call(self, inputs):
        return super().call(_pad(inputs, self.pool_size, value=float("-inf")))

    def compute_output_shape(self, input_shape):
        return super().compute_output_shape(_padded_shape(input_shape, self.pool_size))


def max_pool(pool_size: int, strides: int, padding: str, name=None):
    """A max pool with the given padding convention."""
    if padding == "symmetric":
        return SymmetricMaxPooling2D(pool_size, strides, name=name)
    return keras.layers.MaxPooling2D(pool_size, strides, padding="same", name=name)
