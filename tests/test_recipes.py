"""keras_preact.recipes: the training recipes as Keras objects, and ``fit`` on any backend.

Runs under whichever Keras backend is set (``.ci/run`` runs it under TensorFlow, JAX and
PyTorch). The trainer's numbers are the reference: coupled L2 decay before momentum, the
kernel-only decay of the fast recipe, label smoothing, the weight average's warm-up.
"""

from __future__ import annotations

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_preact
from keras_preact import recipes
from keras_preact.training.recipes import RECIPES

BACKEND = keras.backend.backend()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


# -- the objects --------------------------------------------------------------------------------
def test_fast_recipe_objects_carry_the_recipe_numbers():
    fit = recipes.fast(steps=100, batch_size=64)
    assert fit.total_steps == 100 and fit.batch_size == 64
    opt = fit.optimizer
    assert isinstance(opt, recipes.RecipeSGD)
    assert (opt.momentum, opt.nesterov, opt.l2, opt.decay_bn) == (0.9, True, 5e-4, False)
    schedule = opt._learning_rate
    assert isinstance(schedule, keras_preact.training.CosineDecay)
    assert float(schedule(0)) == pytest.approx(0.1) and float(schedule(100)) == pytest.approx(0.0, abs=1e-7)
    assert fit.loss.label_smoothing == 0.1
    kinds = {type(c) for c in fit.callbacks}
    assert kinds == {recipes.DivergenceStop, recipes.WeightAverageCallback}
    average = next(c for c in fit.callbacks if isinstance(c, recipes.WeightAverageCallback))
    assert average.decay == RECIPES["fast"].weight_average


def test_paper_cifar_recipe_steps_at_half_and_three_quarters_of_a_shortened_run():
    fit = recipes.cifar(steps=400)
    schedule = fit.optimizer._learning_rate
    rates = [float(schedule(s)) for s in (199, 200, 299, 300)]
    np.testing.assert_allclose(rates, [0.1, 0.01, 0.01, 0.001], rtol=1e-6)
    assert fit.optimizer.l2 == 1e-4 and fit.optimizer.decay_bn and not fit.optimizer.nesterov
    assert not any(isinstance(c, recipes.WeightAverageCallback) for c in fit.callbacks)


def test_imagenet_recipe_scales_the_rate_with_the_batch_and_needs_a_length():
    with pytest.raises(ValueError, match="steps_per_epoch"):
        recipes.imagenet(batch_size=512)
    fit = recipes.imagenet(batch_size=512, steps_per_epoch=10)
    assert fit.total_steps == 900
    assert float(fit.optimizer._learning_rate(0)) == pytest.approx(0.2)
    assert [float(fit.optimizer._learning_rate(s)) for s in (300, 600)] == pytest.approx([0.02, 0.002])


def test_recipe_changes_override_fields_and_unknown_recipes_are_named():
    fit = recipes.get("fast", steps=10, base_lr=0.05, weight_average=0)
    assert float(fit.optimizer._learning_rate(0)) == pytest.approx(0.05)
    assert not any(isinstance(c, recipes.WeightAverageCallback) for c in fit.callbacks)
    with pytest.raises(ValueError, match="Unknown recipe 'fastest'"):
        recipes.get("fastest", steps=10)


def _one_step(optimizer, variable, gradient):
    optimizer.build([variable])
    optimizer.apply([keras.ops.convert_to_tensor(gradient)], [variable])
    return to_numpy(variable.value)


@pytest.mark.parametrize("nesterov", [False, True])
def test_coupled_decay_is_added_to_the_gradient_before_momentum(nesterov):
    w0, g = np.array([1.0, -2.0], "float32"), np.array([0.5, 0.25], "float32")
    lr, m, wd = 0.1, 0.9, 0.01
    w = keras.Variable(w0, name="kernel")
    got = []
    opt = recipes.RecipeSGD(lr, momentum=m, nesterov=nesterov, l2=wd)
    for _ in range(2):
        got.append(_one_step(opt, w, g))
    # The reference: SGD with momentum on g + wd * w (Keras' momentum convention).
    ref, velocity = w0.astype("float64"), np.zeros(2)
    for step in range(2):
        grad = g + wd * ref
        velocity = m * velocity - lr * grad
        ref = ref + (m * velocity - lr * grad if nesterov else velocity)
        np.testing.assert_allclose(got[step], ref, rtol=1e-6)


def test_kernel_only_decay_leaves_bn_and_biases_alone():
    g = np.zeros(2, "float32")
    values = {}
    for name in ("kernel", "gamma", "beta", "bias", "stage_units2to3_preact_bn_gamma"):
        v = keras.Variable(np.ones(2, "float32"), name=name)
        values[name] = _one_step(recipes.RecipeSGD(1.0, momentum=0.0, l2=0.5, decay_bn=False), v, g)
    np.testing.assert_allclose(values["kernel"], [0.5, 0.5])
    for name in ("gamma", "beta", "bias", "stage_units2to3_preact_bn_gamma"):
        np.testing.assert_allclose(values[name], [1.0, 1.0])


def test_sparse_crossentropy_is_the_smoothed_categorical_one():
    logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]], "float32")
    labels = np.array([0, 2])
    got = float(recipes.SparseCrossentropy(0.1)(labels, logits))
    onehot = np.eye(3)[labels] * 0.9 + 0.1 / 3
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert got == pytest.approx(float(-(onehot * logp).sum(-1).mean()), rel=1e-5)
    with pytest.raises(ValueError, match="label_smoothing"):
        recipes.SparseCrossentropy(1.5)


def test_optimizer_and_loss_serialize():
    fit = recipes.fast(steps=50)
    for obj in (fit.optimizer, fit.loss):
        copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(obj))
        assert type(copy) is type(obj) and copy.get_config() == obj.get_config()


# -- fit ------------------------------------------------------------------------------------------
def learnable_data(n: int, seed: int = 0):
    """Images whose first channel's mean encodes the class: a net learns it in a few steps."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = 0.5 * rng.normal(size=(n, 32, 32, 3)).astype("float32")
    x[..., 0] += (y[:, None, None] / 4.5 - 1.0).astype("float32")
    return x, y


class StepLosses(keras.callbacks.Callback):
    """Each step's own loss, recovered from Keras' running mean."""

    def __init__(self):
        super().__init__()
        self.losses, self._mean = [], 0.0

    def on_train_batch_end(self, batch, logs=None):
        mean = float(to_numpy(logs["loss"]))
        self.losses.append((batch + 1) * mean - batch * self._mean)
        self._mean = mean


def test_fast_recipe_fit_of_resnet8_for_20_steps_lowers_the_loss():
    x, y = learnable_data(20 * 32)
    fit = recipes.fast(steps=20, batch_size=32)
    model = keras_preact.get_model("resnet8")
    fit.compile(model)
    steps = StepLosses()
    model.fit(x, y, batch_size=32, epochs=1, shuffle=False, verbose=0, callbacks=[*fit.callbacks, steps])
    assert len(steps.losses) == 20 and all(np.isfinite(steps.losses))
    assert np.mean(steps.losses[-5:]) < np.mean(steps.losses[:5]) - 0.2
    stop = next(c for c in fit.callbacks if isinstance(c, recipes.DivergenceStop))
    assert stop.stopped_at is None


def test_compile_builds_the_optimizer_so_tensorflow_traces_the_fit_step_once():
    """Slots made before fit: TensorFlow's fit would create them inside its first traced step
    and then trace the step a second time."""
    fit = recipes.fast(steps=2, batch_size=4)
    model = keras_preact.get_model("resnet8")
    fit.compile(model)
    assert model.optimizer.built
    slots = [v for v in model.optimizer.variables if "momentum" in v.path]
    assert len(slots) == len(model.trainable_variables)
    if keras.backend.backend() == "tensorflow":  # there train_step runs once per trace
        traces = []
        train_step = model.train_step
        model.train_step = lambda data: traces.append(1) or train_step(data)
        x, y = learnable_data(12)
        model.fit(x, y, batch_size=4, epochs=1, verbose=0)
        assert len(traces) == 1


def test_weight_average_follows_the_trainers_formula_and_is_in_the_model_after_fit():
    x, y = learnable_data(6 * 16, seed=1)
    model = keras_preact.get_model("resnet8")
    model.compile(optimizer=keras.optimizers.SGD(0.05), loss=recipes.SparseCrossentropy())
    average = recipes.WeightAverageCallback(0.5)
    snapshots = []

    class Snapshot(keras.callbacks.Callback):  # the raw weights after every step
        def on_train_batch_end(self, batch, logs=None):
            recipes.sync_variables(self.model)
            snapshots.append([to_numpy(v.value).copy() for v in average._variables])

    before = [to_numpy(v.value).copy() for v in model.variables if "float" in str(v.dtype)]
    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[average, Snapshot()])
    expected = before
    for t, raw in enumerate(snapshots, start=1):
        keep = min(0.5, (1.0 + t) / (10.0 + t))
        expected = [e - (1 - keep) * (e - r) for e, r in zip(expected, raw)]
    final = [to_numpy(v.value) for v in average._variables]
    for got, want in zip(final, expected):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert any(not np.allclose(f, s) for f, s in zip(final, snapshots[-1]))  # not the raw weights


def test_validation_inside_fit_evaluates_the_average_and_training_continues_from_raw_weights():
    x, y = learnable_data(8 * 16, seed=2)
    model = keras_preact.get_model("resnet8")
    fit = recipes.fast(steps=8, batch_size=16)
    fit.compile(model)
    average = next(c for c in fit.callbacks if isinstance(c, recipes.WeightAverageCallback))
    history = model.fit(x, y, batch_size=16, epochs=2, steps_per_epoch=4, shuffle=False, verbose=0,
                        validation_data=(x[:32], y[:32]), callbacks=fit.callbacks)
    # After fit the model holds the average, so evaluate() repeats the last validation.
    loss, accuracy = model.evaluate(x[:32], y[:32], verbose=0)
    assert accuracy == pytest.approx(history.history["val_accuracy"][-1])
    assert loss == pytest.approx(history.history["val_loss"][-1], rel=1e-4)
    assert average.averages is not None


def test_divergence_stop_ends_fit_at_the_exploding_step():
    x, y = learnable_data(30 * 16, seed=3)
    model = keras_preact.get_model("resnet8")
    fit = recipes.get("cifar", steps=30, base_lr=1e4)
    fit.compile(model)
    history = model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=fit.callbacks)
    stop = fit.callbacks[0]
    assert isinstance(stop, recipes.DivergenceStop)
    assert stop.stopped_at is not None and stop.stopped_at < 30, history.history
    assert "training loss" in stop.reason


def test_fit_takes_the_packages_tf_data_pipeline(tmp_path):
    """``InMemorySplit`` batches (tf.data) feed ``fit`` on every backend."""
    pytest.importorskip("tensorflow")  # the input pipeline is tf.data (a dependency of the package)
    from PIL import Image

    from keras_preact.data import InMemorySplit

    x, y = learnable_data(40, seed=4)
    for split in ("train", "test"):
        for i in range(40 if split == "train" else 10):
            folder = tmp_path / split / f"class{y[i]}"
            folder.mkdir(parents=True, exist_ok=True)
            pixels = np.clip(128 + 60 * x[i], 0, 255).astype("uint8")
            Image.fromarray(pixels).save(folder / f"{i}.png")
    train = InMemorySplit.load(str(tmp_path), "train")
    fit = recipes.fast(steps=4, batch_size=8)
    model = keras_preact.get_model("resnet8", num_classes=train.info.num_classes)
    fit.compile(model)
    history = model.fit(train.train_batches(8, seed=0)(0), steps_per_epoch=4, epochs=1, verbose=0,
                        callbacks=fit.callbacks)
    assert np.isfinite(history.history["loss"][-1])
    test = InMemorySplit.load(str(tmp_path), "test")
    assert model.predict(test.eval_batches(8), verbose=0).shape == (len(test), train.info.num_classes)
