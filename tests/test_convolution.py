"""The backend kernels the layers call (``convolution.convolution``, ``norm.batch_norm_forward``)
compute what NumPy and Keras' own layers compute, forward and backward, on every backend.

On PyTorch both are PyTorch's own kernels called in its fast layout, on TensorFlow BN is the
fused kernel; these tests are what ties those fast paths to the plain math."""

import keras
import numpy as np
import pytest

from keras_preact import convolution, norm

RNG = np.random.RandomState(0)


def reference_conv(x, kernel, strides, padding, dilation):
    """NHWC convolution in NumPy (float64), TensorFlow's "same" padding."""
    n, h, w, _ = x.shape
    kh, kw, _, out = kernel.shape
    pads = []
    for size, k, s, d in ((h, kh, strides, dilation), (w, kw, strides, dilation)):
        if padding == "valid":
            pads.append((0, 0))
            continue
        total = max((-(-size // s) - 1) * s + (k - 1) * d + 1 - size, 0)
        pads.append((total // 2, total - total // 2))
    x = np.pad(x.astype(np.float64), ((0, 0), pads[0], pads[1], (0, 0)))
    out_h = (x.shape[1] - (kh - 1) * dilation - 1) // strides + 1
    out_w = (x.shape[2] - (kw - 1) * dilation - 1) // strides + 1
    y = np.zeros((n, out_h, out_w, out))
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i * dilation:i * dilation + (out_h - 1) * strides + 1:strides,
                      j * dilation:j * dilation + (out_w - 1) * strides + 1:strides, :]
            y += patch @ kernel[i, j].astype(np.float64)
    return y


def nchw(a):
    return np.ascontiguousarray(a.transpose(0, 3, 1, 2))


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
@pytest.mark.parametrize("size,k,strides,padding,dilation", [
    (8, 3, 1, "same", 1), (8, 3, 2, "same", 1),  # even input, stride 2: padding 0 above, 1 below
    (7, 3, 2, "same", 1), (8, 1, 2, "same", 1), (8, 1, 1, "valid", 1), (9, 3, 2, "valid", 1),
    (9, 3, 1, "same", 2),
])
def test_convolution_is_numpys_convolution(data_format, size, k, strides, padding, dilation):
    x = RNG.randn(2, size, size, 5).astype("float32")
    kernel = RNG.randn(k, k, 5, 6).astype("float32")
    expected = reference_conv(x, kernel, strides, padding, dilation)
    channels_first = data_format == "channels_first"
    y = convolution.convolution(nchw(x) if channels_first else x, kernel, strides, padding,
                                data_format, dilation)
    y = keras.ops.convert_to_numpy(y)
    np.testing.assert_allclose(y.transpose(0, 2, 3, 1) if channels_first else y, expected,
                               rtol=1e-4, atol=1e-4)


def small_net(conv_cls, bn_cls, data_format, policy="float32"):
    """conv -> BN -> ReLU -> strided conv -> BN -> pool -> dense, of the given layer classes."""
    keras.utils.set_random_seed(0)
    shape = (3, 8, 8) if data_format == "channels_first" else (8, 8, 3)
    axis = 1 if data_format == "channels_first" else -1
    options = dict(use_bias=False, data_format=data_format, dtype=policy)
    bn = dict(axis=axis, momentum=0.9, epsilon=1e-5, dtype=policy)
    return keras.Sequential([
        keras.Input(shape),
        conv_cls(8, 3, padding="same", **options), bn_cls(**bn), keras.layers.ReLU(dtype=policy),
        conv_cls(6, 3, strides=2, padding="same", **options), bn_cls(**bn),
        keras.layers.GlobalAveragePooling2D(data_format=data_format, dtype=policy),
        keras.layers.Dense(4, dtype=policy),
    ])


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_package_kernels_train_as_keras_layers_do(data_format):
    """The package's Conv2D and BN against Keras' own layers with the same weights: outputs,
    the weights after two SGD steps (so the gradients), and the moving statistics."""
    x = RNG.randn(8, 8, 8, 3).astype("float32")
    x = nchw(x) if data_format == "channels_first" else x
    y = RNG.randint(0, 4, 8)
    ours = small_net(convolution.Conv2D, norm.FusedBatchNormalization, data_format)
    keras_own = small_net(keras.layers.Conv2D, keras.layers.BatchNormalization, data_format)
    keras_own.set_weights(ours.get_weights())
    for model in (ours, keras_own):
        model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.train_on_batch(x, y)
        model.train_on_batch(x, y)
    for a, b in zip(ours.get_weights(), keras_own.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert not np.allclose(ours.layers[1].moving_mean, 0.0)  # the statistics were updated
    np.testing.assert_allclose(ours.predict(x, verbose=0), keras_own.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_package_kernels_under_mixed_bfloat16(data_format):
    """Half-precision activations through the package's kernels: bfloat16 outputs, float32
    weights and statistics, and Keras' float32 layers' numbers to bfloat16 rounding."""
    x = RNG.randn(8, 8, 8, 3).astype("float32")
    x = nchw(x) if data_format == "channels_first" else x
    ours = small_net(convolution.Conv2D, norm.FusedBatchNormalization, data_format,
                     "mixed_bfloat16")
    reference = small_net(keras.layers.Conv2D, keras.layers.BatchNormalization, data_format)
    reference.set_weights(ours.get_weights())
    hidden = keras.Sequential(ours.layers[:5])
    assert keras.backend.standardize_dtype(hidden(x, training=True).dtype) == "bfloat16"
    reference_hidden = keras.Sequential(reference.layers[:5])
    reference_hidden(x, training=True)
    assert {keras.backend.standardize_dtype(v.dtype) for v in ours.weights} == {"float32"}
    for a, b in ((ours.layers[1], reference.layers[1]), (ours.layers[4], reference.layers[4])):
        np.testing.assert_allclose(a.moving_mean, b.moving_mean, atol=0.02)
        np.testing.assert_allclose(a.moving_variance, b.moving_variance, rtol=0.05, atol=0.02)
    out = keras.ops.convert_to_numpy(keras.ops.cast(ours(x, training=False), "float32"))
    np.testing.assert_allclose(out, keras.ops.convert_to_numpy(reference(x, training=False)), atol=0.1)


def test_weight_files_cross_between_keras_conv2d_and_the_packages(tmp_path):
    """Weight files name a model's listed layers by class: the package's Conv2D keeps Keras'
    name, so files written with either class load into networks of the other."""
    assert keras.saving.get_registered_name(convolution.Conv2D) == "keras_preact>Conv2D"
    x = RNG.randn(2, 8, 8, 3).astype("float32")
    for source_cls, target_cls in ((convolution.Conv2D, keras.layers.Conv2D),
                                   (keras.layers.Conv2D, convolution.Conv2D)):
        source = small_net(source_cls, norm.FusedBatchNormalization, "channels_last")
        source.set_weights([w + RNG.rand(*w.shape).astype("float32") for w in source.get_weights()])
        path = str(tmp_path / f"{source_cls.__module__.split('.')[0]}.weights.h5")
        source.save_weights(path)
        target = small_net(target_cls, norm.FusedBatchNormalization, "channels_last")
        target.load_weights(path)
        np.testing.assert_allclose(target.predict(x, verbose=0), source.predict(x, verbose=0),
                                   rtol=1e-5, atol=1e-5)
