"""The training loop under the default strategy: weight decay, resume, NaN stop, outputs."""

import io
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_preact
import training_worker
from keras_preact import training
from helpers import batch_norm_layers

BATCH = training_worker.GLOBAL_BATCH
STEPS_PER_EPOCH = training_worker.STEPS_PER_EPOCH


def tiny_model():
    keras.utils.set_random_seed(0)
    return keras_preact.build_resnet((1, 1, 1), widths=(4, 8, 8), input_shape=(8, 8, 3))


def dataset():
    images, labels = training_worker.make_data()
    return tf.data.Dataset.from_tensor_slices((images, labels)).batch(BATCH)


def make_trainer(model_dir, steps, **recipe_changes):
    recipe_changes.setdefault("lr_boundaries", ("0.5",))
    recipe = training.get_recipe("cifar").replace(train_steps=steps, **recipe_changes)
    return training.Trainer(
        tf.distribute.get_strategy(), tiny_model, recipe, steps_per_epoch=STEPS_PER_EPOCH,
        global_batch=BATCH, model_dir=str(model_dir), checkpoint_every=2, log_every=1,
        verbose=False,
    )


def weights(trainer):
    return [np.array(v.numpy()) for v in trainer.model.variables]


def test_weight_decay_is_coupled_l2_on_every_parameter(tmp_path):
    """One SGD step from zero momentum: w_wd - w_0 = -lr * wd * w (the L2 gradient wd * w)."""
    wd, lr = 0.05, 0.1
    runs = {}
    for name, changes in {
        "none": dict(weight_decay=0.0), "all": dict(weight_decay=wd),
        "no_bn": dict(weight_decay=wd, decay_bn=False),
    }.items():
        trainer = make_trainer(tmp_path / name, 1, base_lr=lr, **changes)
        before = {v.path: np.array(v.numpy()) for v in trainer.model.trainable_variables}
        trainer.fit(dataset())
        runs[name] = (before, {v.path: np.array(v.numpy()) for v in trainer.model.trainable_variables})
    before, plain = runs["none"]
    for path, w in before.items():
        decayed = runs["all"][1][path] - plain[path]
        np.testing.assert_allclose(decayed, -lr * wd * w, atol=1e-6, err_msg=path)
        excluded = runs["no_bn"][1][path] - plain[path]
        if path.endswith(("gamma", "beta", "bias")):
            np.testing.assert_allclose(excluded, 0.0, atol=1e-7, err_msg=path)
        else:
            np.testing.assert_allclose(excluded, -lr * wd * w, atol=1e-6, err_msg=path)


def test_resume_continues_from_the_saved_step(tmp_path):
    same_schedule = dict(lr_boundaries=("6",))  # in iterations, so a shorter first run shares it
    straight = make_trainer(tmp_path / "straight", 8, **same_schedule)
    straight.fit(dataset())
    first = make_trainer(tmp_path / "resumed", 4, **same_schedule)
    first.fit(dataset())
    assert first.step == 4
    second = make_trainer(tmp_path / "resumed", 8, **same_schedule)  # as a new process would
    assert second.checkpoints.restore() == 4
    second.fit(dataset())
    assert second.step == 8
    # Resumed at an epoch boundary: the same batches, so the same weights and moving statistics.
    for a, b in zip(weights(straight), weights(second)):
        np.testing.assert_allclose(a, b, atol=1e-5)
    steps = [int(r["step"]) for r in training.read_metrics(tmp_path / "resumed" / "metrics.csv") if r["train_loss"]]
    assert steps == list(range(1, 9))


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    # Two sane warm-up steps (checkpoint at 2), then a rate that overflows the weights.
    diverging = dict(warmup_steps=2, warmup_lr=0.1, base_lr=1e38)
    trainer = make_trainer(tmp_path, 8, **diverging)
    with pytest.raises(training.DivergenceError, match="at step [34].*last good checkpoint is .*ckpt-2"):
        trainer.fit(dataset())
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-2")
    restarted = make_trainer(tmp_path, 8, **diverging)
    assert restarted.checkpoints.restore() == 2
    assert all(np.all(np.isfinite(w)) for w in weights(restarted))


def tensorboard_scalars(directory) -> dict:
    """``{tag: {step: value}}`` of the event files under ``directory``."""
    scalars = {}
    for name in sorted(os.listdir(directory)):
        for event in tf.compat.v1.train.summary_iterator(os.path.join(directory, name)):
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = float(tf.make_ndarray(value.tensor))
    return scalars


def test_outputs_metrics_plot_tensorboard_and_evaluation(tmp_path):
    recipe = training.get_recipe("cifar").replace(train_steps=8, lr_boundaries=("0.5",), label_smoothing=0.1)
    stream = io.StringIO()
    trainer = training.Trainer(
        tf.distribute.get_strategy(), tiny_model, recipe, steps_per_epoch=STEPS_PER_EPOCH,
        global_batch=BATCH, model_dir=str(tmp_path), log_every=2, stream=stream,
    )
    test_set = dataset().take(2)
    results = trainer.fit(dataset(), {"test": test_set})
    assert set(results) == {"test"} and results["test"]["count"] == 2 * BATCH
    # The evaluation is the trained model's own: recompute it outside the loop (no smoothing).
    images, labels = (np.concatenate(parts) for parts in zip(*[(x.numpy(), y.numpy()) for x, y in test_set]))
    logits = trainer.model(images, training=False)
    loss = keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True).numpy().mean()
    error = np.mean(np.argmax(logits, -1) != labels)
    assert results["test"]["error"] == pytest.approx(error, abs=1e-6)
    assert results["test"]["loss"] == pytest.approx(loss, rel=1e-4)
    rows = training.read_metrics(tmp_path / "metrics.csv")
    train_rows = [r for r in rows if r["train_loss"]]
    test_rows = [r for r in rows if r["test_error"]]
    assert [r["step"] for r in train_rows] == ["2", "4", "6", "8"]
    assert [r["step"] for r in test_rows] == ["4", "8"]  # every epoch
    assert float(test_rows[-1]["test_error"]) == pytest.approx(error, abs=1e-5)
    assert [float(r["learning_rate"]) for r in train_rows] == pytest.approx([0.1, 0.1, 0.01, 0.01])
    curves = tf.io.decode_png((tmp_path / "curves.png").read_bytes())
    assert curves.shape[:2] == (450, 700)  # plot_curves' 7 x 4.5 in figure at 100 dpi
    # TensorBoard holds the same numbers as metrics.csv.
    train_board = tensorboard_scalars(tmp_path / "tensorboard" / "train")
    assert train_board["loss"] == pytest.approx({int(r["step"]): float(r["train_loss"]) for r in train_rows}, rel=1e-5)
    assert train_board["learning_rate"] == pytest.approx({2: 0.1, 4: 0.1, 6: 0.01, 8: 0.01})
    test_board = tensorboard_scalars(tmp_path / "tensorboard" / "test")
    assert test_board["error"] == pytest.approx({int(r["step"]): float(r["test_error"]) for r in test_rows}, rel=1e-5)
    text = stream.getvalue()
    assert "step 8/8" in text and "img/s" in text and "ETA" in text
    assert f"step 8: test error {100 * error:.2f}%" in text


def test_sync_bn_switches_every_batch_norm_layer():
    model = tiny_model()
    layers = batch_norm_layers(model)
    # stem, final, and in each of the 3 units its branch BN and (after the first) its preact BN.
    assert len(layers) == len([v for v in model.variables if v.path.endswith("/moving_mean")]) == 7
    assert not any(getattr(l, "synchronized", False) for l in layers)
    assert training.enable_sync_batch_norm(model) == len(layers)
    assert all(l.synchronized for l in layers)


def test_batch_not_divisible_is_refused_before_building(tmp_path):
    class TwoReplicas:
        num_replicas_in_sync = 2

    with pytest.raises(training.StrategyError, match="not divisible"):
        training.Trainer(TwoReplicas(), tiny_model, training.get_recipe("cifar"), steps_per_epoch=1,
                         global_batch=15, model_dir=str(tmp_path))
