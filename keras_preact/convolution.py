"""The convolution every package layer runs: one function, one backend switch.

:func:`convolution` is ``keras.ops.conv`` on TensorFlow and JAX. On PyTorch it calls
``torch.nn.functional.conv2d`` itself, in PyTorch's fastest CPU layout, because Keras' own
PyTorch convolution (Keras 3.15) copies every channels_last activation twice on the way in
(``permute(...).contiguous()`` to NCHW, then ``.contiguous(memory_format=channels_last)``)
and again in the backward pass: on a ResNet-164 training step those copies were 17 % of the
CPU time (benchmarks/training_speed.py --backend=torch, docs/performance.md). Here:

* an NHWC tensor is handed to PyTorch as its NCHW *view* (a permutation, no copy), which
  PyTorch sees as a ``channels_last`` tensor, the layout its oneDNN CPU kernels run fastest;
  the output permutes back to a contiguous NHWC tensor;
* an NCHW tensor is made ``channels_last`` in memory (a no-op after the first layer: the
  convolution, BatchNorm, ReLU and addition all keep the layout), as PyTorch's own
  ``model.to(memory_format=torch.channels_last)`` does.

The arithmetic is the same convolution (``tests/test_convolution.py`` compares it with a
NumPy convolution, and the layers with Keras' own, on every backend), and the weights are
Keras' ``[k, k, in, out]`` kernel.

:class:`Conv2D` is ``keras.layers.Conv2D`` computing its convolution with :func:`convolution`;
:class:`BackendConvolution` is that override as a mixin, for the package's other Conv2D
subclasses (``keras_preact.padding``).
"""

from __future__ import annotations

import keras
from keras import ops

from keras_preact.common import PACKAGE


def _same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple:
    """TensorFlow's ``"same"`` padding of one spatial axis, as ``(before, after)``."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _torch_convolution(x, kernel, strides, padding, data_format, dilation_rate):
    """:func:`convolution` on PyTorch (module docstring): ``x`` NHWC or NCHW, ``kernel``
    ``[kh, kw, in, out]``."""
    import torch  # only on the PyTorch backend: the package never needs it elsewhere

    x = ops.convert_to_tensor(x)
    channels_last = data_format == "channels_last"
    nchw = x.permute(0, 3, 1, 2) if channels_last else x.contiguous(memory_format=torch.channels_last)
    weight = ops.convert_to_tensor(kernel).permute(3, 2, 0, 1)  # [out, in, kh, kw], a view
    pad = 0
    if padding == "same":
        pairs = [_same_padding(nchw.shape[2 + i], weight.shape[2 + i], strides[i], dilation_rate[i])
                 for i in range(2)]
        if all(before == after for before, after in pairs):
            pad = [before for before, _ in pairs]  # symmetric: the kernel pads itself
        else:  # TensorFlow's bottom/right-heavy padding of a strided conv: pad, then "valid"
            (top, bottom), (left, right) = pairs
            nchw = torch.nn.functional.pad(nchw, (left, right, top, bottom))
    groups = nchw.shape[1] // weight.shape[1]
    y = torch.nn.functional.conv2d(nchw, weight, stride=tuple(strides), padding=pad,
                                   dilation=tuple(dilation_rate), groups=groups)
    return y.permute(0, 2, 3, 1) if channels_last else y


def convolution(x, kernel, strides=1, padding="valid", data_format="channels_last",
                dilation_rate=1):
    """A 2-D convolution of an NHWC (or NCHW) ``x`` with a ``[kh, kw, in, out]`` kernel, as
    ``keras.ops.conv`` computes it; PyTorch's kernels called directly on the PyTorch backend.

    ``strides`` and ``dilation_rate``: an int or a pair; ``padding``: ``"valid"`` or ``"same"``
    (TensorFlow's convention, as ``keras.ops.conv``).
    """
    if keras.backend.backend() != "torch":
        return ops.conv(x, kernel, strides=strides, padding=padding, data_format=data_format,
                        dilation_rate=dilation_rate)
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    return _torch_convolution(x, kernel, pair(strides), padding.lower(), data_format,
                              pair(dilation_rate))


class BackendConvolution:
    """Mixin of a ``keras.layers.Conv2D`` subclass: its convolution is :func:`convolution`.

    Only the op changes: variables, config, bias and activation are ``Conv2D``'s.
    """

    def convolution_op(self, inputs, kernel):
        return convolution(inputs, kernel, strides=self.strides, padding=self.padding,
                           data_format=self.data_format, dilation_rate=self.dilation_rate)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Conv2D(BackendConvolution, keras.layers.Conv2D):
    """``keras.layers.Conv2D`` with :func:`convolution` as its op (PyTorch's own kernel, in its
    fast layout, on the PyTorch backend).

    It keeps Keras' class name on purpose: ``.keras`` and ``.weights.h5`` files name the
    weights of a model's listed layers after their class (``conv2d``, ``conv2d_1``, ...), so
    files written with ``keras.layers.Conv2D`` load into networks built with this class, and
    the other way round. Its serialized name is ``keras_preact>Conv2D``.
    """
