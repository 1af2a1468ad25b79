"""Torch-style symmetric padding: where it differs from TensorFlow's "same", and where not."""

import keras
import numpy as np
import pytest

import keras_preact
from harness import assert_keras_round_trip
from keras_preact import norm
from keras_preact.convolution import Conv2D
from keras_preact.padding import SymmetricConv2D, SymmetricMaxPooling2D, max_pool

RNG = np.random.RandomState(0)


def reference_conv(x, kernel, stride, pad):
    """Direct NHWC convolution with explicit zero padding (what Torch computes)."""
    x = np.pad(x, [(0, 0), (pad, pad), (pad, pad), (0, 0)])
    k = kernel.shape[0]
    out_h = (x.shape[1] - k) // stride + 1
    out_w = (x.shape[2] - k) // stride + 1
    y = np.zeros((x.shape[0], out_h, out_w, kernel.shape[-1]))
    for i in range(out_h):
        for j in range(out_w):
            patch = x[:, i * stride:i * stride + k, j * stride:j * stride + k, :]
            y[:, i, j, :] = np.tensordot(patch, kernel, axes=([1, 2, 3], [0, 1, 2]))
    return y


@pytest.mark.parametrize("side", [8, 9])
@pytest.mark.parametrize("kernel_size,stride", [(3, 2), (7, 2), (3, 1)])
def test_symmetric_conv_equals_explicit_padding(side, kernel_size, stride):
    x = RNG.randn(2, side, side, 3).astype("float32")
    layer = norm.conv(4, kernel_size, stride, padding="symmetric")
    y = np.asarray(layer(x))
    expected = reference_conv(x, np.asarray(layer.kernel), stride, (kernel_size - 1) // 2)
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    same = keras.layers.Conv2D(4, kernel_size, stride, padding="same", use_bias=False)
    same.build(x.shape)
    same.kernel.assign(layer.kernel)
    assert same(x).shape == y.shape  # same shapes as TensorFlow's "same" ...
    if stride > 1 and side % 2 == 0:  # ... different values for strided ops on even inputs
        assert np.abs(np.asarray(same(x)) - y).max() > 1e-2


def test_only_strided_wide_convs_get_the_symmetric_layer():
    assert isinstance(norm.conv(4, 3, 2, padding="symmetric"), SymmetricConv2D)
    assert type(norm.conv(4, 3, 1, padding="symmetric")) is Conv2D
    assert type(norm.conv(4, 1, 2, padding="symmetric")) is Conv2D
    with pytest.raises(ValueError, match="symmetric"):
        norm.conv(4, 3, 2, padding="reflect")


def test_symmetric_max_pool_pads_with_minus_infinity():
    x = -np.abs(RNG.randn(1, 4, 4, 1)).astype("float32")  # all negative: zero padding would win
    y = np.asarray(SymmetricMaxPooling2D(3, 2)(x))
    assert y.shape == (1, 2, 2, 1)
    assert y[0, 0, 0, 0] == x[0, :2, :2, 0].max()  # window rows/cols -1..1, padding ignored
    assert isinstance(max_pool(3, 2, "symmetric"), SymmetricMaxPooling2D)


def test_networks_default_to_symmetric_and_keep_their_parameter_count():
    sym, same = keras_preact.ResNet18(), keras_preact.ResNet18(padding="same")
    assert sym.architecture.padding == "symmetric"
    assert isinstance(sym.get_layer("stem_conv"), SymmetricConv2D)
    assert isinstance(sym.get_layer("stem_pool"), SymmetricMaxPooling2D)
    assert sym.count_params() == same.count_params()
    convs = [l for l in sym.get_layer("stage2_unit1").op_layers() if isinstance(l, SymmetricConv2D)]
    assert [c.name for c in convs] == ["conv1"]  # the strided 3x3 of the basic unit
    x = RNG.rand(1, 64, 64, 3).astype("float32")
    same.set_weights(sym.get_weights())
    assert np.abs(np.asarray(sym(x)) - np.asarray(same(x))).max() > 1e-3


def test_symmetric_network_round_trips_and_folds(tmp_path):
    from keras_preact.export import fold_batch_norm

    model = keras_preact.build_resnet((1, 1), widths=(8, 16), input_shape=(16, 16, 3),
                                      unit="bottleneck", stride_at="3x3")
    x = RNG.rand(2, 16, 16, 3).astype("float32")
    model(x, training=True)
    assert_keras_round_trip(model, x, tmp_path)
    folded = fold_batch_norm(model)
    assert any(isinstance(l, SymmetricConv2D) for l in folded.layers)
    np.testing.assert_allclose(folded(x), model(x, training=False), rtol=1e-4, atol=1e-5)
