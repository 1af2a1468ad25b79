"""BatchNorm math (fused kernel, moving averages, eval-mode affine) and He initialisation."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_preact import norm
from keras_preact.norm import FusedBatchNormalization, batch_norm

RNG = np.random.RandomState(0)


def test_fused_batch_norm_matches_keras():
    x = (RNG.randn(8, 6, 6, 5) * 3 + 1).astype("float32")
    fused, plain = batch_norm(fused=True), batch_norm(fused=False)
    assert isinstance(fused, FusedBatchNormalization)
    assert type(plain) is keras.layers.BatchNormalization
    for layer in (fused, plain):
        layer.build(x.shape)
        layer.gamma.assign(np.linspace(0.5, 2, 5).astype("float32"))
        layer.beta.assign(np.linspace(-1, 1, 5).astype("float32"))
    for training in (True, True, False):
        with tf.GradientTape(persistent=True) as tape:
            xt = tf.constant(x)
            tape.watch(xt)
            out_f, out_p = fused(xt, training=training), plain(xt, training=training)
            loss_f, loss_p = tf.reduce_sum(out_f ** 3), tf.reduce_sum(out_p ** 3)
        np.testing.assert_allclose(out_f, out_p, atol=2e-6)
        np.testing.assert_allclose(fused.moving_mean, plain.moving_mean, atol=1e-6)
        np.testing.assert_allclose(fused.moving_variance, plain.moving_variance, rtol=1e-6)
        np.testing.assert_allclose(tape.gradient(loss_f, xt), tape.gradient(loss_p, xt),
                                   rtol=1e-4, atol=1e-4)
    assert not np.allclose(fused.moving_mean, 0.0)  # the updates did happen


def test_fused_batch_norm_falls_back_for_other_ranks():
    layer = FusedBatchNormalization()
    x = RNG.randn(4, 3).astype("float32")
    ref = keras.layers.BatchNormalization()
    np.testing.assert_allclose(layer(x, training=True), ref(x, training=True), atol=1e-5)


def test_batch_norm_forward_training_and_inference():
    x = (RNG.randn(4, 5, 5, 3) * 2 + 0.5).astype("float32")
    gamma, beta = np.array([1.0, 2.0, 0.5], "float32"), np.array([0.0, -1.0, 1.0], "float32")
    y, mean, var = norm.batch_norm_forward(x, gamma, beta, None, None, 1e-5, training=True)
    np.testing.assert_allclose(mean, x.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(var, x.var(axis=(0, 1, 2)), rtol=1e-4)  # biased, as Keras keeps it
    expected = (x - x.mean(axis=(0, 1, 2))) / np.sqrt(x.var(axis=(0, 1, 2)) + 1e-5) * gamma + beta
    np.testing.assert_allclose(y, expected, rtol=1e-4, atol=1e-5)
    moving_mean, moving_var = np.array([0.1, 0.2, 0.3], "float32"), np.array([1.0, 4.0, 0.25], "float32")
    y, mean, var = norm.batch_norm_forward(x, gamma, beta, moving_mean, moving_var, 1e-5, training=False)
    assert mean is None and var is None
    scale, offset = norm.inference_affine(gamma, beta, moving_mean, moving_var, 1e-5)
    np.testing.assert_allclose(y, x * scale + offset, rtol=1e-5, atol=1e-5)


def test_layer_affine_reads_any_batch_norm_class():
    for layer in (batch_norm(fused=True), batch_norm(fused=False)):
        layer.build((None, 4, 4, 3))
        layer.set_weights([np.array(v, "float32") for v in
                           ([1.5, 0.5, 2.0], [0.1, 0.2, 0.3], [1.0, -1.0, 0.0], [0.5, 2.0, 1.0])])
        x = RNG.randn(2, 4, 4, 3).astype("float32")
        scale, offset = norm.layer_affine(layer)
        np.testing.assert_allclose(layer(x, training=False), x * scale + offset, rtol=1e-5, atol=1e-6)


def test_update_moving_average_uses_the_keras_convention():
    variable = tf.Variable([1.0, 2.0])
    norm.update_moving_average(variable, tf.constant([3.0, 0.0]), 0.9)
    np.testing.assert_allclose(variable.numpy(), [1.2, 1.8], rtol=1e-6)


@pytest.mark.parametrize("shape", [(3, 3, 64, 256), (6, 3, 3, 64, 256), (1, 1, 128, 512)])
def test_he_fan_out_initialisation_for_one_kernel_or_a_stack(shape):
    values = np.asarray(norm.HeNormalFanOut()(shape))
    k, out = shape[-4], shape[-1]
    assert values.shape == shape
    assert values.std() == pytest.approx(np.sqrt(2.0 / (k * k * out)), rel=0.02)
    assert abs(values.mean()) < 0.05 * values.std()
    assert norm.he_std(shape) == pytest.approx(np.sqrt(2.0 / (k * k * out)))


def test_conv_layer_serializes_its_initializer():
    layer = norm.conv(8, 3, 2, name="c")
    config = keras.layers.serialize(layer)
    clone = keras.layers.deserialize(config)
    assert isinstance(clone.kernel_initializer, norm.HeNormalFanOut)
    assert clone.strides == (2, 2) and not clone.use_bias and clone.padding == "same"


@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_fused_batch_norm_runs_the_fused_kernel_on_half_inputs(policy, monkeypatch):
    """Mixed precision: half-precision inputs go through the fused kernel (never Keras' slow
    path) with float32 gamma, beta and statistics, and give Keras' float32 BN up to rounding."""
    x = (RNG.randn(8, 6, 6, 5) * 3 + 1).astype("float32")
    fused = FusedBatchNormalization(momentum=0.9, epsilon=1e-5, dtype=policy)
    reference = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    for layer in (fused, reference):
        layer.build(x.shape)
    fallbacks = []
    original = keras.layers.BatchNormalization.call
    monkeypatch.setattr(keras.layers.BatchNormalization, "call",
                        lambda self, *a, **k: fallbacks.append(self) or original(self, *a, **k))
    half = fused.compute_dtype
    with tf.GradientTape() as tape:
        xt = tf.cast(x, half)
        tape.watch(xt)
        y = fused(xt, training=True)
        loss = tf.reduce_sum(tf.cast(y, "float32") ** 2)
    gradients = tape.gradient(loss, [xt, fused.gamma, fused.beta])
    assert fallbacks == [] and y.dtype == half
    assert [g.dtype for g in gradients] == [half, tf.float32, tf.float32]
    assert {v.dtype for v in fused.weights} == {"float32"}
    expected = original(reference, tf.constant(x), training=True)
    tolerance = 0.05 if half == "bfloat16" else 5e-3  # 8 / 11 significant bits
    np.testing.assert_allclose(tf.cast(y, "float32"), expected, atol=tolerance * 4)
    # Statistics computed in float32 from the half inputs: as close as the inputs are.
    np.testing.assert_allclose(fused.moving_mean, reference.moving_mean, atol=tolerance)
    np.testing.assert_allclose(fused.moving_variance, reference.moving_variance, rtol=tolerance)
    y_eval = fused(xt, training=False)
    assert y_eval.dtype == half and fallbacks == []
