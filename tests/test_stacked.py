"""Stacked stages: the same network and the same numbers as unit-by-unit ResidualUnits."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_preact
from harness import assert_keras_round_trip
from keras_preact.diagnostics import propagation_norms
from keras_preact.export import fold_batch_norm
from keras_preact.model import unstack
from keras_preact import build_resnet
from keras_preact.stacked import StackedStage, canonical_unit_weights, transfer_weights

RNG = np.random.RandomState(0)


VARIANTS = [
    dict(),
    dict(unit="bottleneck"),
    dict(unit="single", order="original"),
    dict(order="bn_after_addition", shortcut="conv1x1"),
    dict(order="relu_only_preact", shortcut="exclusive_gating"),
    dict(order="relu_before_addition", shortcut="shortcut_only_gating"),
    dict(shortcut="constant_scaling", scale_residual=True),
]


@pytest.mark.parametrize("options", VARIANTS, ids=lambda o: "-".join(map(str, o.values())))
def test_stacked_build_equals_unrolled_build(options):
    """Same parameters, same outputs, same gradients and BN statistics, with recompute."""
    plain = build_resnet((3, 3), widths=(8, 16), input_shape=(16, 16, 3), fused_bn=False,
                         **options)
    fast = build_resnet((3, 3), widths=(8, 16), input_shape=(16, 16, 3),
                        stacked_stages=True, recompute=True, **options)
    assert any(isinstance(l, StackedStage) for l in fast.layers)
    assert plain.count_params() == fast.count_params()
    transfer_weights(plain, fast)
    x = RNG.rand(4, 16, 16, 3).astype("float32")
    np.testing.assert_allclose(fast(x, training=False), plain(x, training=False),
                               rtol=1e-4, atol=1e-5)
    with tf.GradientTape(persistent=True) as tape:
        loss_p = tf.reduce_sum(plain(x, training=True) ** 2)
        loss_f = tf.reduce_sum(fast(x, training=True) ** 2)
    np.testing.assert_allclose(float(loss_f), float(loss_p), rtol=1e-4)
    grads_p = tape.gradient(loss_p, plain.trainable_weights)
    grads_f = tape.gradient(loss_f, fast.trainable_weights)
    assert all(g is not None for g in grads_f)
    np.testing.assert_allclose(float(tf.linalg.global_norm(grads_f)),
                               float(tf.linalg.global_norm(grads_p)), rtol=1e-3)
    # One training call updated every BN moving statistic exactly once, in both builds.
    for a, b in zip(canonical_unit_weights(plain), canonical_unit_weights(fast)):
        for wa, wb in zip(a, b):
            np.testing.assert_allclose(wa, wb, rtol=1e-4, atol=1e-5)


def test_optimised_build_has_the_same_loss_trajectory():
    """SGD from the same initial weights: the plain and the optimised build follow one curve."""
    x = RNG.rand(16, 16, 16, 3).astype("float32")
    y = RNG.randint(0, 10, 16)
    curves = []
    plain = build_resnet((4, 4), widths=(8, 16), input_shape=(16, 16, 3), fused_bn=False)
    fast = build_resnet((4, 4), widths=(8, 16), input_shape=(16, 16, 3),
                        stacked_stages=True, recompute=True)
    transfer_weights(plain, fast)
    for model in (plain, fast):
        optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
        step_losses = []

        @tf.function
        def step():
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                    y, model(x, training=True), from_logits=True))
            optimizer.apply(tape.gradient(loss, model.trainable_weights),
                            model.trainable_weights)
            return loss

        for _ in range(8):
            step_losses.append(float(step()))
        curves.append(step_losses)
    assert curves[0][-1] < curves[0][0]  # it trains
    np.testing.assert_allclose(curves[1], curves[0], rtol=2e-3)


def test_stacked_model_round_trip(tmp_path):
    model = keras_preact.ResNet20(stacked_stages=True, recompute=True,
                                  shortcut="exclusive_gating")
    x = RNG.rand(2, 32, 32, 3).astype("float32")
    model(x, training=True)
    loaded = assert_keras_round_trip(model, x, tmp_path)
    stage = loaded.get_layer("stage2_units2to3")
    assert isinstance(stage, StackedStage) and stage.recompute and stage.num_units == 2


def test_resnet1001_stacked_keeps_the_parameter_count():
    model = keras_preact.ResNet1001(preact=True, stacked_stages=True, recompute=True)
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 10_327_706
    assert len(model.layers) < 20  # the graph no longer grows with depth


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: keras_preact.ResNet20(recompute=True), "stacked_stages"),
        (lambda: StackedStage(2, 8, shortcut="dropout"), "dropout"),
        (lambda: StackedStage(0, 8), "num_units"),
        (lambda: StackedStage(2, 8, order="nope"), "full_preact"),
        (lambda: StackedStage(2, 8)(np.zeros((1, 4, 4, 3), "float32")), "keep their shape"),
    ],
)
def test_stacked_stage_validation(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_transfer_weights_rejects_different_networks():
    with pytest.raises(ValueError, match="not builds of the same network"):
        transfer_weights(build_resnet((2, 2), widths=(8, 16), input_shape=(16, 16, 3)),
                         build_resnet((3, 3), widths=(8, 16), input_shape=(16, 16, 3),
                                      stacked_stages=True))


def test_stacked_model_tf_checkpoint_holds_every_variable(tmp_path):
    """The trainers checkpoint with tf.train.Checkpoint: no stacked variable may be missed."""
    model = build_resnet((3, 3), widths=(8, 16), input_shape=(16, 16, 3), stacked_stages=True)
    x = RNG.rand(2, 16, 16, 3).astype("float32")
    model(x, training=True)
    path = tf.train.Checkpoint(model=model).save(os.path.join(tmp_path, "ckpt"))
    restored = build_resnet((3, 3), widths=(8, 16), input_shape=(16, 16, 3),
                            stacked_stages=True)
    tf.train.Checkpoint(model=restored).restore(path).assert_existing_objects_matched()
    np.testing.assert_array_equal(restored(x, training=False), model(x, training=False))


def test_unstack_gives_the_unit_by_unit_network():
    fast = keras_preact.ResNet20(stacked_stages=True, recompute=True)
    x = RNG.rand(4, 32, 32, 3).astype("float32")
    fast(x, training=True)  # non-trivial BN statistics
    flat = unstack(fast)
    assert not any(isinstance(l, StackedStage) for l in flat.layers)
    assert [l.name for l in flat.layers if l.name.startswith("stage2")] == [
        "stage2_unit1", "stage2_unit2", "stage2_unit3"]
    np.testing.assert_allclose(flat(x, training=False), fast(x, training=False),
                               rtol=1e-5, atol=1e-5)
    # The tools that read units one by one accept stacked models.
    np.testing.assert_allclose(fold_batch_norm(fast)(x), fast(x, training=False),
                               rtol=1e-4, atol=1e-4)
    assert len(propagation_norms(fast, x, np.arange(4))["units"]) == 9


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_stacked_stages_under_mixed_precision(policy):
    """Half-precision activations, float32 stacked weights and BN statistics; the same network
    as the unit-by-unit build under the same policy, with recompute and under XLA."""
    plain = build_resnet((3, 3), widths=(8, 16), input_shape=(16, 16, 3), dtype_policy=policy)
    fast = build_resnet((3, 3), widths=(8, 16), input_shape=(16, 16, 3), dtype_policy=policy,
                        stacked_stages=True, recompute=True)
    transfer_weights(plain, fast)
    assert {v.dtype for v in fast.variables} == {"float32"}
    x = RNG.rand(4, 16, 16, 3).astype("float32")
    tolerance = 0.05 if policy == "mixed_bfloat16" else 5e-3

    def step(model):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_sum(logits ** 2)
        return logits, tape.gradient(loss, model.trainable_weights)

    logits_p, grads_p = step(plain)
    logits_f, grads_f = tf.function(step, jit_compile=True)(fast)
    assert logits_f.dtype == tf.float32 and all(g.dtype == tf.float32 for g in grads_f)
    np.testing.assert_allclose(logits_f, logits_p, rtol=tolerance, atol=tolerance)
    np.testing.assert_allclose(float(tf.linalg.global_norm(grads_f)),
                               float(tf.linalg.global_norm(grads_p)), rtol=2 * tolerance)
    for a, b in zip(canonical_unit_weights(plain), canonical_unit_weights(fast)):  # BN updates
        for wa, wb in zip(a, b):
            np.testing.assert_allclose(wa, wb, rtol=tolerance, atol=tolerance)
