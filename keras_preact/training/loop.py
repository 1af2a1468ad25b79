"""The one training loop every strategy uses.

``Trainer`` runs ``strategy.run(step)`` inside a ``tf.function`` for ``default``, ``one_device``,
``mirrored``, ``multi_worker_mirrored`` and ``tpu`` alike (``model.fit`` fails under
``MultiWorkerMirroredStrategy`` on TensorFlow 2.21 / Keras 3.15). In each replica step:

* the loss is the per-example cross-entropy *summed* over the replica's examples and divided
  by the *global* batch, so the strategy's sum of replica gradients is the gradient of the
  global batch mean whatever the number of replicas;
* L2 weight decay ``wd/2 * |w|^2`` joins the loss divided by the number of replicas (the sum
  over replicas then adds ``wd * w`` once to every gradient, before momentum: the paper's
  coupled decay, see ``recipes``);
* Keras 3 ``BatchNormalization`` updates its moving statistics per replica (its variables are
  created with aggregation NONE), so replicas drift apart; the step averages them across
  replicas after every update, which keeps every replica (and the checkpoint, which saves
  replica 0) identical. ``sync_bn=True`` also synchronises the batch statistics themselves.

A non-finite loss stops the run with ``DivergenceError`` before anything is saved, so the last
checkpoint on disk is the last good state.
"""

from __future__ import annotations

import math
import os
import sys
import time
from typing import Callable, Mapping

import keras
import tensorflow as tf

from keras_preact.training import strategy as strategy_lib
from keras_preact.training.checkpoints import RunCheckpoints
from keras_preact.training.observe import MetricsLog, ProgressBar, TensorBoardLog, plot_curves
from keras_preact.training.recipes import Recipe
from keras_preact.training.schedules import build_schedule, resolve_boundaries, scale_learning_rate

# Variables the ``decay_bn=False`` switch leaves out of weight decay (Keras' short names).
NO_DECAY_NAMES = ("gamma", "beta", "bias")
BN_STATISTIC_NAMES = ("moving_mean", "moving_variance")


def has_short_name(variable, names) -> bool:
    """Keras layers name a BN scale ``gamma``; a StackedStage names it ``<op>_gamma``."""
    return any(variable.name == n or variable.name.endswith("_" + n) for n in names)


class DivergenceError(RuntimeError):
    """The training loss became NaN or infinite; the run stopped without saving that state."""


def batch_norm_layers(model: keras.Model) -> list:
    """Every BatchNormalization layer of ``model``, including those nested in ResidualUnits."""
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, keras.layers.BatchNormalization)
    ]


def enable_sync_batch_norm(model: keras.Model) -> int:
    """Make every BN layer use the global batch's statistics (read at call time, TF backend)."""
    layers = batch_norm_layers(model)
    for layer in layers:
        layer.synchronized = True
    return len(layers)


class Trainer:
    """Model, optimizer, checkpoints and compiled steps of one run under one strategy.

    Args:
      strategy: a ``tf.distribute.Strategy`` (see ``keras_preact.training.build_strategy``).
      build_model: called inside ``strategy.scope()``; returns a model that outputs logits.
      recipe: the optimisation settings (``keras_preact.training.Recipe``).
      steps_per_epoch: iterations per pass over the training set.
      global_batch: examples per iteration over all replicas.
      model_dir: where checkpoints, ``metrics.csv``, TensorBoard logs and the plot go.
      sync_bn: synchronise BN batch statistics across replicas.
      checkpoint_every: also checkpoint every this many steps (0: only at epoch ends and the end).
      eval_every: evaluate every this many steps (0: at each epoch end); always at the end.
      log_every: a ``metrics.csv`` / TensorBoard row every this many steps.
      keep_checkpoints: how many recent checkpoints to keep.
      verbose: show the progress bar and messages (chief only).
    """

    def __init__(
        self,
        strategy: tf.distribute.Strategy,
        build_model: Callable[[], keras.Model],
        recipe: Recipe,
        *,
        steps_per_epoch: int,
        global_batch: int,
        model_dir: str,
        sync_bn: bool = False,
        checkpoint_every: int = 1000,
        eval_every: int = 0,
        log_every: int = 50,
        keep_checkpoints: int = 3,
        verbose: bool = True,
        stream=None,
    ):
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}.")
        strategy_lib.per_replica_batch(global_batch, strategy)
        self.strategy = strategy
        self.recipe = recipe
        self.steps_per_epoch = int(steps_per_epoch)
        self.global_batch = int(global_batch)
        self.total_steps = recipe.total_steps(self.steps_per_epoch)
        self.model_dir = model_dir
        self.checkpoint_every = int(checkpoint_every)
        self.eval_every = int(eval_every)
        self.log_every = max(1, int(log_every))
        self.chief = strategy_lib.is_chief(strategy)
        self.verbose = verbose and self.chief
        self.stream = stream or sys.stdout
        self.base_lr = scale_learning_rate(
            recipe.base_lr, self.global_batch, recipe.lr_reference_batch
        )
        self.boundaries = (
            resolve_boundaries(recipe.lr_boundaries, self.total_steps, self.steps_per_epoch)
            if recipe.schedule == "step"
            else ()
        )
        self.schedule = build_schedule(
            recipe.schedule,
            base_lr=self.base_lr,
            total_steps=self.total_steps,
            boundaries=self.boundaries,
            decay_factor=recipe.decay_factor,
            warmup_steps=recipe.warmup_steps,
            warmup_lr=recipe.warmup_lr,
        )
        with strategy.scope():
            self.model = build_model()
            if sync_bn:
                enable_sync_batch_norm(self.model)
            self.optimizer = keras.optimizers.SGD(
                learning_rate=self.schedule, momentum=recipe.momentum, nesterov=recipe.nesterov
            )
            # Slots must exist before the first tf.function trace under a strategy.
            self.optimizer.build(self.model.trainable_variables)
        self.decayed_variables = [
            v
            for v in self.model.trainable_variables
            if recipe.decay_bn or not has_short_name(v, NO_DECAY_NAMES)
        ]
        self.bn_statistics = [
            v for v in self.model.non_trainable_variables if has_short_name(v, BN_STATISTIC_NAMES)
        ]
        self.checkpoints = RunCheckpoints(
            model_dir,
            model=self.model,
            optimizer=self.optimizer,
            strategy=strategy,
            max_to_keep=keep_checkpoints,
        )
        self._train_step = None
        self._eval_step = None

    # ----------------------------------------------------------------------------- steps
    @property
    def step(self) -> int:
        return int(self.optimizer.iterations.numpy())

    def _losses(self, labels, logits, label_smoothing):
        labels = tf.cast(labels, tf.int32)
        onehot = tf.one_hot(labels, tf.shape(logits)[-1])
        per_example = keras.losses.categorical_crossentropy(
            onehot, logits, from_logits=True, label_smoothing=label_smoothing
        )
        correct = tf.reduce_sum(
            tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), labels), tf.float32)
        )
        return tf.reduce_sum(per_example), correct, tf.cast(tf.shape(labels)[0], tf.float32)

    def _replica_train_step(self, images, labels):
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        weight_decay = self.recipe.weight_decay
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            loss_sum, correct, count = self._losses(labels, logits, self.recipe.label_smoothing)
            loss = loss_sum / self.global_batch
            if weight_decay:
                l2 = tf.add_n([tf.reduce_sum(tf.square(v.value)) for v in self.decayed_variables])
                loss = loss + 0.5 * weight_decay * l2 / replicas
        gradients = tape.gradient(loss, variables)
        self.optimizer.apply_gradients(zip(gradients, variables))
        if replicas > 1 and self.bn_statistics:
            context = tf.distribute.get_replica_context()
            # tf.identity: an all-reduce of the raw variable reads fails under
            # MultiWorkerMirroredStrategy ("destinations can not be empty").
            means = context.all_reduce(
                tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in self.bn_statistics]
            )
            for variable, mean in zip(self.bn_statistics, means):
                variable.assign(mean)
        return _all_sum([loss_sum, correct, count])

    def _replica_eval_step(self, images, labels):
        logits = self.model(images, training=False)
        return _all_sum(list(self._losses(labels, logits, 0.0)))

    def _reduce(self, values):
        # Every replica holds the same all-reduced sums; take this worker's first.
        return [self.strategy.experimental_local_results(v)[0] for v in values]

    def _compile(self):
        @tf.function
        def train_step(iterator):
            return self._reduce(self.strategy.run(self._replica_train_step, args=next(iterator)))

        @tf.function
        def eval_step(batch):
            return self._reduce(self.strategy.run(self._replica_eval_step, args=batch))

        self._train_step, self._eval_step = train_step, eval_step

    # ------------------------------------------------------------------------ evaluation
    def evaluate(self, dataset: tf.data.Dataset) -> dict:
        """Mean loss, error rate and example count over a finite dataset of global batches."""
        if self._eval_step is None:
            self._compile()
        totals = [0.0, 0.0, 0.0]
        for batch in self.strategy.experimental_distribute_dataset(dataset):
            for i, value in enumerate(self._eval_step(batch)):
                totals[i] += float(value)
        loss_sum, correct, count = totals
        if count == 0:
            raise ValueError("The evaluation dataset is empty.")
        return {"loss": loss_sum / count, "error": 1.0 - correct / count, "count": int(count)}

    # -------------------------------------------------------------------------- training
    def fit(
        self,
        train_dataset: tf.data.Dataset,
        eval_datasets: Mapping[str, tf.data.Dataset] | None = None,
    ) -> dict:
        """Train to ``total_steps`` (resuming from ``model_dir``); return the final evaluations.

        ``train_dataset`` yields (images, labels) global batches; it is repeated, so one pass
        may be finite. Returns ``{eval name: {"loss", "error", "count"}}`` at the last step.
        """
        eval_datasets = dict(eval_datasets or {})
        start = self.checkpoints.restore()
        observe = self.chief
        metrics = MetricsLog(os.path.join(self.model_dir, "metrics.csv"), start) if observe else None
        board = TensorBoardLog(os.path.join(self.model_dir, "tensorboard")) if observe else None
        bar = ProgressBar(self.total_steps, start, stream=self.stream, print_every=self.log_every)
        say = bar.message if self.verbose else (lambda text: None)
        if start:
            epoch, batch = divmod(start, self.steps_per_epoch)
            say(f"Resumed from {self.checkpoints.latest} at step {start} (epoch {epoch}, batch {batch}).")
        if self._train_step is None:
            self._compile()
        results = {}
        step = start
        if step < self.total_steps:
            iterator = iter(self.strategy.experimental_distribute_dataset(train_dataset.repeat()))
            window = _Window()
            while step < self.total_steps:
                loss_sum, correct, count = (float(v) for v in self._train_step(iterator))
                step += 1
                if not math.isfinite(loss_sum):
                    latest = self.checkpoints.latest
                    kept = f"the last good checkpoint is {latest}" if latest else "no checkpoint was written yet"
                    raise DivergenceError(
                        f"Training loss is {loss_sum / max(count, 1.0)} at step {step}: the run "
                        f"diverged and stopped; nothing from this state was saved, {kept}. "
                        "Lower --lr or use --warmup_steps."
                    )
                window.add(loss_sum, correct, count)
                if self.verbose:
                    bar.update(step, loss_sum / count, correct / count, window.rate())
                epoch_end = step % self.steps_per_epoch == 0
                last = step == self.total_steps
                if observe and (step % self.log_every == 0 or last):
                    self._log_train(metrics, board, step, window)
                    window = _Window()
                due_eval = (epoch_end if self.eval_every == 0 else step % self.eval_every == 0)
                if eval_datasets and (due_eval or last):
                    results = self._evaluate_all(eval_datasets, step, metrics, board, say)
                if epoch_end or last or (self.checkpoint_every and step % self.checkpoint_every == 0):
                    self.checkpoints.save(step)
        else:
            say(f"Already trained to step {step}; evaluating only.")
        if eval_datasets and not results:
            results = self._evaluate_all(eval_datasets, step, metrics, board, say)
        if observe:
            board.close()
        return results

    def _log_train(self, metrics, board, step, window):
        lr = float(self.schedule(step - 1))
        loss, error = window.loss(), 1.0 - window.accuracy()
        rate = window.rate()
        metrics.append(
            step=step,
            epoch=step / self.steps_per_epoch,
            learning_rate=lr,
            train_loss=loss,
            train_error=error,
            images_per_sec=rate,
        )
        board.scalars("train", step, {"loss": loss, "error": error, "learning_rate": lr, "images_per_sec": rate})

    def _evaluate_all(self, eval_datasets, step, metrics, board, say):
        results = {}
        for name, dataset in eval_datasets.items():
            result = self.evaluate(dataset)
            results[name] = result
            say(
                f"step {step}: {name} error {100 * result['error']:.2f}% "
                f"(accuracy {100 * (1 - result['error']):.2f}%, loss {result['loss']:.4f}, "
                f"{result['count']} images)"
            )
            if metrics is not None:
                metrics.append(
                    step=step,
                    epoch=step / self.steps_per_epoch,
                    eval_name=name,
                    test_loss=result["loss"],
                    test_error=result["error"],
                )
                board.scalars(name, step, {"loss": result["loss"], "error": result["error"]})
        if metrics is not None:
            plot_curves(
                metrics.path,
                os.path.join(self.model_dir, "curves.png"),
                title=f"{self.model.name}: {self.recipe.name} recipe",
            )
        return results


def _all_sum(values):
    """Sum over all replicas, in replica context: the same collective under every strategy.

    (``strategy.reduce`` in cross-replica context fails inside a ``tf.function`` under
    MultiWorkerMirroredStrategy on TF 2.21: "destinations can not be empty".)
    """
    return tf.distribute.get_replica_context().all_reduce(tf.distribute.ReduceOp.SUM, values)


class _Window:
    """Sums of the steps since the last log row, and the images/s over them."""

    def __init__(self):
        self.loss_sum = self.correct = self.count = 0.0
        self.started = time.monotonic()

    def add(self, loss_sum, correct, count):
        self.loss_sum += loss_sum
        self.correct += correct
        self.count += count

    def loss(self):
        return self.loss_sum / max(self.count, 1.0)

    def accuracy(self):
        return self.correct / max(self.count, 1.0)

    def rate(self):
        """Images per second since the window opened."""
        elapsed = time.monotonic() - self.started
        return self.count / elapsed if elapsed > 0 else 0.0
