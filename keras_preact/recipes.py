"""The training recipes as Keras objects, for ``model.compile`` / ``model.fit`` on any backend.

The recipes themselves (the paper's CIFAR and ImageNet settings, the ``fast`` recipe for short
budgets) are data in ``keras_preact.training.recipes``, the one place their numbers live; the
``tf.distribute`` trainer (``trainers/cifar.py``) runs them on TensorFlow. This module turns the
same data into what ``fit`` takes, so a JAX or PyTorch user reproduces a recipe with plain Keras:

    >>> import keras_preact
    >>> recipe = keras_preact.recipes.fast(steps=3 * 390, batch_size=128)
    >>> model = keras_preact.ResNet20()
    >>> recipe.compile(model)          # optimizer, loss, metrics
    >>> model.fit(train, epochs=3, callbacks=recipe.callbacks)

What each piece reproduces of the trainer (``keras_preact.training.Trainer``):

* :class:`RecipeSGD` -- SGD with momentum (Nesterov where the recipe says so), the recipe's
  learning-rate schedule (``StepDecay`` / ``CosineDecay``, warm-up included), and *coupled* L2
  weight decay: ``wd * w`` is added to the gradient before momentum (the paper's Torch code;
  Keras' own ``weight_decay`` is decoupled), on every parameter or, with ``decay_bn=False``
  (the ``fast`` recipe), on conv and dense kernels only.
* :class:`SparseCrossentropy` -- cross-entropy on integer labels with label smoothing (Keras'
  sparse cross-entropy has no smoothing).
* :class:`WeightAverageCallback` -- the exponential moving average of every weight (BatchNorm
  statistics included) with the trainer's warm-up of the decay; validation during ``fit``
  evaluates the averaged weights, and the model holds them when ``fit`` returns.
* :class:`DivergenceStop` -- stops ``fit`` when a step's loss is NaN, infinite, or more than
  ``factor`` times its recent average (``keras_preact.training.divergence.LossMonitor``).

Not reproduced: test-time augmentation (``eval_flip``; wrap the model with
``keras_preact.export.tta`` on TensorFlow, or average the logits of the image and its mirror),
and the trainer's checkpointing and exact resume: the fit trainer (``keras-preact-fit``,
``keras_preact.fit_loop``) adds those around the same objects.
"""

from __future__ import annotations

import dataclasses
import math

import keras
from keras import ops

from keras_preact.common import PACKAGE
from keras_preact.training.divergence import DEFAULT_FACTOR, DEFAULT_WINDOW, LossMonitor
from keras_preact.training.recipes import RECIPES, Recipe, decays, get_recipe
from keras_preact.training.schedules import build_schedule, resolve_boundaries, scale_learning_rate
from keras_preact.training.sgd import FusedSGD

__all__ = [
    "DivergenceStop",
    "FitRecipe",
    "RecipeSGD",
    "SparseCrossentropy",
    "WeightAverageCallback",
    "cifar",
    "fast",
    "from_recipe",
    "get",
    "imagenet",
]


# -- optimizer ---------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package=PACKAGE)
class RecipeSGD(FusedSGD):
    """SGD with momentum and coupled L2 weight decay (``wd * w`` added to the gradient).

    Args:
      learning_rate, momentum, nesterov: as ``keras.optimizers.SGD`` (the update is
        :class:`~keras_preact.training.sgd.FusedSGD`'s: TensorFlow's fused kernel on TensorFlow).
      l2: the decay ``wd``; the gradient of ``wd / 2 * |w|^2`` is added before momentum.
      decay_bn: also decay BatchNorm's gamma and beta and the classifier's bias (the paper's
        code decays every parameter); ``False`` decays conv and dense kernels only.
    """

    def __init__(self, learning_rate=0.1, momentum=0.9, nesterov=False, l2=1e-4,
                 decay_bn=True, name="recipe_sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, momentum=momentum, nesterov=nesterov,
                         name=name, **kwargs)
        if not (float(l2) >= 0 and math.isfinite(float(l2))):
            raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}.")
        self.l2 = float(l2)
        self.decay_bn = bool(decay_bn)

    def build(self, variables):
        super().build(variables)
        # Decided here, on the Keras variables: inside a TensorFlow update step the variable is
        # the backend's own (named "gamma:0"); its index is what both agree on.
        self._decayed = [decays(v, self.decay_bn) for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        if self.l2 and self._decayed[self._get_variable_index(variable)]:
            gradient = gradient + ops.cast(self.l2, gradient.dtype) * ops.cast(variable, gradient.dtype)
        super().update_step(gradient, variable, learning_rate)

    def get_config(self):
        return {**super().get_config(), "l2": self.l2, "decay_bn": self.decay_bn}


# -- loss --------------------------------------------------------------------------------------
@keras.saving.register_keras_serializable(package=PACKAGE)
class SparseCrossentropy(keras.losses.Loss):
    """Cross-entropy of logits against integer labels, with label smoothing.

    The same loss as the trainer's: ``categorical_crossentropy(one_hot(y), logits,
    label_smoothing=s)`` averaged over the batch.
    """

    def __init__(self, label_smoothing: float = 0.0, name="sparse_crossentropy", **kwargs):
        super().__init__(name=name, **kwargs)
        if not 0.0 <= float(label_smoothing) < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing!r}.")
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true, y_pred):
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        logits = ops.cast(y_pred, "float32")
        onehot = ops.one_hot(labels, ops.shape(logits)[-1], dtype="float32")
        return keras.losses.categorical_crossentropy(
            onehot, logits, from_logits=True, label_smoothing=self.label_smoothing
        )

    def get_config(self):
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


# -- callbacks ---------------------------------------------------------------------------------
def sync_variables(model) -> None:
    """Make the model's variables current: JAX's ``fit`` keeps them in its own state between
    steps and writes them back only when asked."""
    sync = getattr(model, "jax_state_sync", None)
    if sync is not None:
        sync()


class WeightAverageCallback(keras.callbacks.Callback):
    """An exponential moving average of the model's weights, as the trainer keeps it.

    After every step ``average <- average - (1 - d) * (average - w)`` with
    ``d = min(decay, (1 + t) / (10 + t))`` at step ``t`` (so the random initial weights do not
    dominate a short run), over every float variable: kernels, biases and the BatchNorm
    statistics. ``evaluate_average=True``: validation inside ``fit`` evaluates the averaged
    weights (the training weights are back afterwards). ``apply_at_end=True``: the model holds
    the averaged weights when ``fit`` returns (what the trainer evaluates and exports).
    """

    def __init__(self, decay: float = 0.999, evaluate_average: bool = True, apply_at_end: bool = True):
        super().__init__()
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"The weight-average decay must be in (0, 1), got {decay!r}.")
        self.decay = float(decay)
        self.evaluate_average = bool(evaluate_average)
        self.apply_at_end = bool(apply_at_end)
        self.averages = None
        self._variables = []
        self._saved = None
        self._training = False

    def _current(self) -> list:
        return [ops.copy(ops.stop_gradient(v.value)) for v in self._variables]

    def on_train_begin(self, logs=None):
        sync_variables(self.model)
        self._variables = [v for v in self.model.variables if "float" in str(v.dtype)]
        if self.averages is None:  # a second fit call continues the same average
            self.averages = self._current()
        self._training = True

    def on_train_batch_end(self, batch, logs=None):
        sync_variables(self.model)
        t = float(ops.convert_to_numpy(self.model.optimizer.iterations))
        keep = min(self.decay, (1.0 + t) / (10.0 + t))
        self.averages = [
            a - (1.0 - keep) * (a - ops.cast(ops.stop_gradient(v.value), a.dtype))
            for a, v in zip(self.averages, self._variables)
        ]

    def _load(self, values) -> None:
        # Copies: JAX's fit donates the buffers its variables hold to the next step.
        for variable, value in zip(self._variables, values):
            variable.assign(ops.copy(value))

    def on_test_begin(self, logs=None):
        if self._training and self.evaluate_average and self.averages is not None:
            sync_variables(self.model)
            self._saved = self._current()
            self._load(self.averages)

    def on_test_end(self, logs=None):
        if self._saved is not None:
            sync_variables(self.model)
            self._load(self._saved)
            self._saved = None

    def on_train_end(self, logs=None):
        self._training = False
        if self.apply_at_end and self.averages is not None:
            sync_variables(self.model)
            self._load(self.averages)


class DivergenceStop(keras.callbacks.Callback):
    """Stop ``fit`` when the training diverges: a step's loss is NaN or infinite, or more than
    ``factor`` times the mean of the last ``window`` step losses (``factor=0``: NaN/inf only).

    Keras reports the running mean of the epoch's loss after each batch; the step's own loss
    is recovered from two consecutive means (equal batches assumed, as ``fit`` makes them but
    for an epoch's last). ``stopped_at`` and ``reason`` say when and why it stopped.
    """

    def __init__(self, factor: float = DEFAULT_FACTOR, window: int = DEFAULT_WINDOW):
        super().__init__()
        self.monitor = LossMonitor(factor, window)
        self.stopped_at = None
        self.reason = None
        self._previous_mean = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._previous_mean = 0.0

    def on_train_batch_end(self, batch, logs=None):
        if not logs or "loss" not in logs:
            return
        mean = float(ops.convert_to_numpy(logs["loss"]))
        step_loss = (batch + 1) * mean - batch * self._previous_mean
        self._previous_mean = mean
        problem = self.monitor.problem(step_loss if math.isfinite(mean) else mean)
        if problem:
            self.stopped_at = int(ops.convert_to_numpy(self.model.optimizer.iterations))
            self.reason = problem
            self.model.stop_training = True
            print(f"\nDivergenceStop: training diverged at step {self.stopped_at}: {problem}; "
                  "fit stopped. Lower the learning rate or add warm-up steps.")


# -- recipes -----------------------------------------------------------------------------------
@dataclasses.dataclass
class FitRecipe:
    """A recipe as the objects ``compile`` and ``fit`` take (see the module docstring)."""

    recipe: Recipe
    total_steps: int
    batch_size: int
    optimizer: keras.optimizers.Optimizer
    loss: keras.losses.Loss
    metrics: list
    callbacks: list

    def compile(self, model, **kwargs) -> None:
        """``model.compile`` with the recipe's optimizer, loss and accuracy metric, and the
        optimizer's variables created now.

        Keras' TensorFlow ``fit`` without a distribution strategy creates them inside the first
        traced step, and a ``tf.function`` that creates variables is traced a second time: for
        ResNet-164 that was 38 s to the end of the first ``fit`` step instead of 17.5 s
        (docs/performance.md, "First training step").
        """
        model.compile(optimizer=self.optimizer, loss=self.loss, metrics=self.metrics, **kwargs)
        if model.built and not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)


def get(name: str, *, steps: int | None = None, batch_size: int | None = None,
        epochs: float | None = None, steps_per_epoch: int | None = None, **changes) -> FitRecipe:
    """The recipe ``name`` (``keras_preact.training.RECIPES``) as Keras objects.

    The run's length is ``steps`` iterations, or ``epochs`` of ``steps_per_epoch``; without
    either, the recipe's own length (``steps_per_epoch`` is still needed for a recipe given in
    epochs). ``batch_size`` defaults to the recipe's; a recipe whose rate is given for a
    reference batch (ImageNet) scales it linearly. ``changes`` override recipe fields
    (``base_lr=0.05``, ``weight_average=0``, ...), as the trainer's flags do.
    """
    recipe = get_recipe(name)
    if steps is not None:
        changes["train_steps"] = int(steps)
    elif epochs is not None:
        changes["epochs"] = float(epochs)
    return from_recipe(recipe.replace(**changes), batch_size=batch_size, steps_per_epoch=steps_per_epoch)


def from_recipe(recipe: Recipe, *, batch_size: int | None = None, steps_per_epoch: int | None = None,
                divergence_factor: float = DEFAULT_FACTOR, divergence_window: int = DEFAULT_WINDOW) -> FitRecipe:
    """A :class:`~keras_preact.training.recipes.Recipe` (a preset, or a run configuration's
    recipe section) as Keras objects; :func:`get` with the recipe given whole."""
    batch = int(batch_size or recipe.batch_size)
    if recipe.train_steps:
        total = int(recipe.train_steps)
    elif steps_per_epoch:
        total = recipe.total_steps(int(steps_per_epoch))
    else:
        raise ValueError(
            f"Recipe {recipe.name!r} runs for {recipe.epochs:g} epochs: pass steps_per_epoch "
            "(or the run's length as steps=...)."
        )
    boundaries = ()
    if recipe.schedule == "step":
        boundaries = resolve_boundaries(recipe.lr_boundaries, total, steps_per_epoch)
    schedule = build_schedule(
        recipe.schedule, base_lr=scale_learning_rate(recipe.base_lr, batch, recipe.lr_reference_batch),
        total_steps=total, boundaries=boundaries, decay_factor=recipe.decay_factor,
        warmup_steps=recipe.warmup_steps, warmup_lr=recipe.warmup_lr,
    )
    optimizer = RecipeSGD(schedule, momentum=recipe.momentum, nesterov=recipe.nesterov,
                          l2=recipe.weight_decay, decay_bn=recipe.decay_bn)
    callbacks = [DivergenceStop(divergence_factor, divergence_window)]
    if recipe.weight_average:
        callbacks.append(WeightAverageCallback(recipe.weight_average))
    return FitRecipe(
        recipe=recipe, total_steps=total, batch_size=batch, optimizer=optimizer,
        loss=SparseCrossentropy(recipe.label_smoothing),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
        callbacks=callbacks,
    )


def cifar(**kwargs) -> FitRecipe:
    """The paper's CIFAR recipe ([1] Sec. 4.2, paper appendix): ``get("cifar", ...)``."""
    return get("cifar", **kwargs)


def fast(**kwargs) -> FitRecipe:
    """The ``fast`` recipe for short budgets (Nesterov, cosine, label smoothing, kernel-only
    decay, weight average): ``get("fast", ...)``."""
    return get("fast", **kwargs)


def imagenet(**kwargs) -> FitRecipe:
    """The paper's ImageNet recipe (fb.resnet.torch's settings): ``get("imagenet", ...)``."""
    return get("imagenet", **kwargs)


NAMES = tuple(RECIPES)
