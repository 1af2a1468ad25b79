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

A non-finite or exploding loss (``divergence.LossMonitor``) stops the run with
``DivergenceError`` before anything is saved; no checkpoint with a non-finite variable is ever
written; the run directory is rewound to its last known-good checkpoint (``RunCheckpoints``),
which the error names and a restart resumes from.

Speed levers (each keeps the numbers of the plain loop; see docs/training.md):

* Mixed precision is the model's (``dtype_policy`` of ``keras_preact.ResNet``): float32 weights,
  half-precision convs, float32 logits and loss. A model computing in float16 trains with
  dynamic loss scaling (Keras' ``LossScaleOptimizer``): the loss is multiplied by the scale,
  the gradients divided by it, and a step whose gradients overflow is skipped and the scale
  halved. Under several replicas the overflow verdict is all-reduced first, so every replica
  skips the same steps (a replica's own check would let another's infinite gradient through
  the sum, or deadlock a collective). A skipped step still counts as an iteration, so the
  schedule, checkpoints and resume count steps as the loop does.
* ``jit_compile=True`` compiles each replica's forward and backward pass (and the evaluation
  forward pass) with XLA; the optimizer update and the cross-replica sums stay outside, so it
  works under every strategy.
* ``steps_per_loop=N`` runs up to N steps in one ``tf.function`` call (``strategy.run`` in a
  ``tf.range`` loop over the distributed iterator) and returns their summed metrics: one host
  round-trip per N steps. A loop never crosses a step where something is due (a log row, an
  evaluation, a checkpoint, an epoch end, the last step), so logs, evaluations and checkpoints
  fall on the same steps as with N=1, and the numbers are the same. The divergence check then
  sees the mean loss of each loop.

Recipe levers for short runs (``Recipe.weight_average``, ``Recipe.eval_flip``,
``Recipe.eval_translate``; see the ``fast`` recipe):

* an exponential moving average of the weights (``averaging.WeightAverage``), updated after
  every step, checkpointed with the run, used for every evaluation and for the exported model;
* test-time augmentation by horizontal flip (and, optionally, one-pixel translations): the
  evaluation logits are the mean over the views of ``keras_preact.tta``, the same
  views the exporter's ``tta`` option computes.

A lost worker: under ``MultiWorkerMirroredStrategy`` a worker whose peer died (killed,
preempted, its machine gone) fails in its next collective, at once if the peer's connection
drops, else after the strategy's ``worker_timeout``; ``fit`` turns that into
``WorkerLostError`` naming the step and the newest checkpoint. Nothing is written after it;
restarting every worker with the same command resumes from that checkpoint (at most one
checkpoint interval lost), which is what a cluster manager's restart policy does.

Exact resume: ``fit`` also takes the training input as a function of the first step,
``train_batches(step) -> tf.data.Dataset`` (``keras_preact.data.InMemorySplit.train_batches``
makes every batch a pure function of the seed and the step). A run resumed from step ``s``
then sees the same batches from ``s`` on as the uninterrupted run, and ends with bit-identical
weights (``tests/test_training_loop.py``, and the kill -9 test of ``tests/test_cli_train.py``).

The defaults of the loop's settings (``checkpoint_every``, ``log_every``, ...) are those of the
run configuration's fields (``run_config.CheckpointSettings``, ``run_config.RunSettings``).
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Callable, Mapping

import keras
import tensorflow as tf

from keras_preact.tta import tta_logits
from keras_preact.training import strategy as strategy_lib
from keras_preact.training.averaging import WeightAverage
from keras_preact.training.checkpoints import DEFAULT_CONFIRM_STEPS, RunCheckpoints
from keras_preact.training.divergence import (
    DivergenceError,
    LossMonitor,
    NonFiniteCheckpointError,
)
from keras_preact.training.observe import MetricsLog, ProgressBar, TensorBoardLog, plot_curves
from keras_preact.training.recipes import Recipe, decays, has_short_name
from keras_preact.training.run_config import CheckpointSettings, RunSettings, check_jit_sync_bn
from keras_preact.training.schedules import build_schedule, resolve_boundaries, scale_learning_rate
from keras_preact.training.sgd import FusedSGD

BN_STATISTIC_NAMES = ("moving_mean", "moving_variance")


# What a collective raises when another worker is gone (connection lost, collective timed out,
# or aborted by the coordination service after the peer's heartbeats stopped).
LOST_WORKER_ERRORS = (
    tf.errors.UnavailableError,
    tf.errors.DeadlineExceededError,
    tf.errors.AbortedError,
    tf.errors.CancelledError,
    tf.errors.InternalError,
)


class WorkerLostError(RuntimeError):
    """Another worker of a multi-worker run stopped answering; ``checkpoint`` is where to resume."""

    def __init__(self, message: str, step: int, checkpoint: str | None):
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


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
      keep_checkpoints: how many recent checkpoints to keep (plus the last known-good one).
      divergence_factor: stop when a step's loss exceeds this many times its recent average
        (0: only NaN/inf stop the run); divergence_window: steps in that average.
      confirm_steps: healthy steps after a checkpoint before it counts as known good.
      verbose: show the progress bar and messages (chief only).
      jit_compile: compile each replica's forward and backward pass with XLA.
      steps_per_loop: run up to this many steps per ``tf.function`` call (one host sync).

    The recipe's ``weight_average`` (decay of an exponential moving average of the weights,
    0: off), ``eval_flip`` and ``eval_translate`` (test-time augmentation) apply to every
    evaluation.
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
        checkpoint_every: int = CheckpointSettings.checkpoint_every,
        eval_every: int = RunSettings.eval_every,
        log_every: int = RunSettings.log_every,
        keep_checkpoints: int = CheckpointSettings.keep_checkpoints,
        divergence_factor: float = RunSettings.divergence_factor,
        divergence_window: int = RunSettings.divergence_window,
        confirm_steps: int = DEFAULT_CONFIRM_STEPS,
        verbose: bool = True,
        stream=None,
        jit_compile: bool = False,
        steps_per_loop: int = 1,
    ):
        if steps_per_epoch < 1:
            raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}.")
        if int(steps_per_loop) < 1:
            raise ValueError(f"steps_per_loop must be >= 1, got {steps_per_loop}.")
        check_jit_sync_bn(jit_compile, sync_bn)
        self.jit_compile = bool(jit_compile)
        self.steps_per_loop = int(steps_per_loop)
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
        self.divergence = (float(divergence_factor), int(divergence_window))
        LossMonitor(*self.divergence)  # validate before building anything
        self.chief = strategy_lib.is_chief(strategy)
        self.workers = strategy_lib.worker_count(strategy)
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
            self.optimizer = FusedSGD(
                learning_rate=self.schedule, momentum=recipe.momentum, nesterov=recipe.nesterov
            )
            self.loss_scaling = computes_in_float16(self.model)
            if self.loss_scaling:  # dynamic loss scaling (initial 2**15, x2 after 2000 good steps)
                self.optimizer = keras.optimizers.LossScaleOptimizer(self.optimizer)
            # Slots must exist before the first tf.function trace under a strategy.
            self.optimizer.build(self.model.trainable_variables)
            self.average = None
            if recipe.weight_average:
                self.average = WeightAverage(
                    [v for v in self.model.variables if v.dtype.startswith("float")],
                    recipe.weight_average,
                )
        self.decayed_variables = [v for v in self.model.trainable_variables if decays(v, recipe.decay_bn)]
        self.bn_statistics = [
            v for v in self.model.non_trainable_variables if has_short_name(v, BN_STATISTIC_NAMES)
        ]
        self.checkpoints = RunCheckpoints(
            model_dir,
            model=self.model,
            optimizer=self.optimizer,
            strategy=strategy,
            max_to_keep=keep_checkpoints,
            confirm_steps=confirm_steps,
            averaged=self.average,
        )
        self._train_step = None
        self._eval_step = None
        self.train_seconds = 0.0  # time in training steps, over every process of the run
        self.exact_input = False  # whether fit's batches are a function of the step (exact resume)

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

    def _replica_gradients(self, images, labels):
        """Forward and backward pass of one replica (what ``jit_compile`` compiles)."""
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        weight_decay = self.recipe.weight_decay
        variables = self.model.trainable_variables
        with tf.GradientTape() as tape:
            logits = tf.cast(self.model(images, training=True), tf.float32)
            loss_sum, correct, count = self._losses(labels, logits, self.recipe.label_smoothing)
            loss = loss_sum / self.global_batch
            if weight_decay:
                l2 = tf.add_n([tf.reduce_sum(tf.square(v.value)) for v in self.decayed_variables])
                loss = loss + 0.5 * weight_decay * l2 / replicas
            if self.loss_scaling:
                loss = self.optimizer.scale_loss(loss)
        return tape.gradient(loss, variables), loss_sum, correct, count

    def _replica_train_step(self, images, labels):
        replicas = tf.distribute.get_replica_context().num_replicas_in_sync
        variables = self.model.trainable_variables
        gradients, loss_sum, correct, count = self._gradients(images, labels)
        if self.loss_scaling:
            gradients, finite = _agreed_finite(gradients, replicas)
        self.optimizer.apply_gradients(zip(gradients, variables))
        if self.loss_scaling:  # a skipped step is still an iteration (schedule, resume)
            iterations = self.optimizer.iterations
            iterations.assign_add(tf.cast(tf.logical_not(finite), iterations.dtype))
        if replicas > 1 and self.bn_statistics:
            context = tf.distribute.get_replica_context()
            # tf.identity: an all-reduce of the raw variable reads fails under
            # MultiWorkerMirroredStrategy ("destinations can not be empty").
            means = context.all_reduce(
                tf.distribute.ReduceOp.MEAN, [tf.identity(v.value) for v in self.bn_statistics]
            )
            for variable, mean in zip(self.bn_statistics, means):
                variable.assign(mean)
        if self.average is not None:
            self.average.update(self.optimizer.iterations)
        return _all_sum([loss_sum, correct, count])

    def _replica_eval_step(self, images, labels):
        logits = tf.cast(self._eval_logits(images), tf.float32)
        return _all_sum(list(self._losses(labels, logits, 0.0)))

    def _replica_logits(self, images):
        # The mean logits over the recipe's test-time views (the image alone without TTA).
        return tta_logits(lambda views: self.model(views, training=False), images, self.recipe.eval_tta)

    def _reduce(self, values):
        # Every replica holds the same all-reduced sums; take this worker's first.
        return [self.strategy.experimental_local_results(v)[0] for v in values]

    def _compile(self):
        self._gradients, self._eval_logits = self._replica_gradients, self._replica_logits
        if self.jit_compile:
            self._gradients = tf.function(self._replica_gradients, jit_compile=True)
            self._eval_logits = tf.function(self._replica_logits, jit_compile=True)

        @tf.function
        def train_step(iterator, steps):
            """``steps`` training steps; the sums of (loss, correct, count) over them."""
            totals = [tf.zeros((), tf.float32) for _ in range(3)]
            for _ in tf.range(steps):
                values = self._reduce(self.strategy.run(self._replica_train_step, args=next(iterator)))
                totals = [t + v for t, v in zip(totals, values)]
            return totals

        @tf.function
        def eval_step(batch):
            return self._reduce(self.strategy.run(self._replica_eval_step, args=batch))

        self._train_step, self._eval_step = train_step, eval_step

    # ------------------------------------------------------------------------ evaluation
    def evaluate(self, dataset: tf.data.Dataset) -> dict:
        """Mean loss, error rate and example count over a finite dataset of global batches.

        With a weight average, the averaged weights are evaluated (the model's own are back
        in place afterwards).
        """
        if self._eval_step is None:
            self._compile()
        totals = [0.0, 0.0, 0.0]
        averaged = self.average.swapped_in() if self.average is not None else contextlib.nullcontext()
        with averaged:
            for batch in self.strategy.experimental_distribute_dataset(dataset):
                for i, value in enumerate(self._eval_step(batch)):
                    totals[i] += float(value)
        loss_sum, correct, count = totals
        if count == 0:
            raise ValueError("The evaluation dataset is empty.")
        return {"loss": loss_sum / count, "error": 1.0 - correct / count, "count": int(count)}

    # -------------------------------------------------------------------------- training
    def use_averaged_weights(self) -> keras.Model:
        """Load the weight average (if the recipe keeps one) into the model; return the model.

        For export at the end of a run: the average is what every evaluation measured.
        """
        if self.average is not None:
            self.average.copy_to_model()
        return self.model

    def fit(
        self,
        train_dataset: tf.data.Dataset | Callable[[int], tf.data.Dataset],
        eval_datasets: Mapping[str, tf.data.Dataset] | None = None,
    ) -> dict:
        """Train to ``total_steps`` (resuming from ``model_dir``); return the final evaluations.

        ``train_dataset`` yields (images, labels) global batches; it is repeated, so one pass
        may be finite. Or it is a function ``first_step -> dataset`` of the batches from that
        step on (at least to the end of the run): then a resumed run continues exactly where
        the interrupted one stopped. Returns ``{eval name: {"loss", "error", "count"}}`` at the
        last step.
        """
        eval_datasets = dict(eval_datasets or {})
        start = self.checkpoints.restore()
        observe = self.chief
        metrics = MetricsLog(os.path.join(self.model_dir, "metrics.csv"), start) if observe else None
        board = TensorBoardLog(os.path.join(self.model_dir, "tensorboard")) if observe else None
        bar = ProgressBar(self.total_steps, start, stream=self.stream, print_every=self.log_every)
        say = bar.message if self.verbose else (lambda text: None)
        for path in self.checkpoints.removed_temporaries:
            say(f"Removed {path}, left by a process killed while saving.")
        if start:
            epoch, batch = divmod(start, self.steps_per_epoch)
            say(f"Resumed from {self.checkpoints.latest} at step {start} (epoch {epoch}, batch {batch}).")
        if self._train_step is None:
            self._compile()
        results = {}
        step = start
        # Training time excludes evaluations and checkpoints, and adds up over resumes.
        self.train_seconds = metrics.last_value("train_seconds") if observe else 0.0
        self.exact_input = callable(train_dataset)
        if step < self.total_steps:
            batches = train_dataset(step) if self.exact_input else train_dataset.repeat()
            iterator = iter(self.strategy.experimental_distribute_dataset(batches))
            window = _Window()
            monitor = LossMonitor(*self.divergence)
            while step < self.total_steps:
                steps = self._loop_length(step)
                started = time.monotonic()
                with self._worker_failures(step):
                    loss_sum, correct, count = (
                        float(v) for v in self._train_step(iterator, tf.constant(steps, tf.int32))
                    )
                self.train_seconds += time.monotonic() - started
                step += steps
                problem = monitor.problem(loss_sum / max(count, 1.0))
                if problem:
                    self._diverged(step, problem)
                self.checkpoints.confirm(step)
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
                    with self._worker_failures(step):
                        results = self._evaluate_all(eval_datasets, step, metrics, board, say)
                if epoch_end or last or (self.checkpoint_every and step % self.checkpoint_every == 0):
                    try:
                        with self._worker_failures(step):
                            self.checkpoints.save(step)
                    except NonFiniteCheckpointError as error:
                        self._diverged(step, str(error).rstrip("."))
        else:
            say(f"Already trained to step {step}; evaluating only.")
        if eval_datasets and not results:
            results = self._evaluate_all(eval_datasets, step, metrics, board, say)
        if observe:
            board.close()
        bar.close()
        self.checkpoints.finish()
        return results

    @contextlib.contextmanager
    def _worker_failures(self, step: int):
        """Under several workers, a failed collective becomes ``WorkerLostError``."""
        if self.workers < 2:
            yield
            return
        try:
            yield
        except LOST_WORKER_ERRORS as error:
            latest = self.checkpoints.latest
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise WorkerLostError(
                f"Lost contact with another worker after step {step} ({type(error).__name__}: "
                f"{first_line[:300]}). Nothing after that was saved; restart every worker with "
                f"the same command to resume from {latest or 'the start (no checkpoint yet)'}.",
                step=step, checkpoint=latest,
            ) from None

    def _diverged(self, step: int, problem: str):
        """Rewind the run directory to its last known-good checkpoint; raise DivergenceError."""
        known = self.checkpoints.rewind()
        if known:
            kept = (f"the last known-good checkpoint is {known}; resuming this run directory "
                    "starts from it")
        else:
            kept = "no known-good checkpoint exists yet, so a restart begins from scratch"
        raise DivergenceError(
            f"Training diverged at step {step}: {problem}. Nothing from this state was saved; "
            f"{kept}. Lower --lr or use --warmup_steps.",
            step=step, checkpoint=known,
        )

    def _loop_length(self, step: int) -> int:
        """Steps of the next loop from ``step``: at most ``steps_per_loop``, ending at or before
        the next step where a log row, evaluation, checkpoint or epoch end is due."""
        every = [self.log_every, self.steps_per_epoch]
        every += [n for n in (self.eval_every, self.checkpoint_every) if n]
        ends = [self.total_steps] + [(step // n + 1) * n for n in every]
        return max(1, min(self.steps_per_loop, min(ends) - step))

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
            train_seconds=self.train_seconds,
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
                    train_seconds=self.train_seconds,
                )
                board.scalars(name, step, {"loss": result["loss"], "error": result["error"]})
        if metrics is not None:
            plot_curves(
                metrics.path,
                os.path.join(self.model_dir, "curves.png"),
                title=f"{self.model.name}: {self.recipe.name} recipe",
            )
        return results


def computes_in_float16(model: keras.Model) -> bool:
    """Whether any layer of ``model`` computes in float16 (then the loss needs scaling)."""
    return any(
        getattr(layer, "compute_dtype", None) == "float16"
        for layer in model._flatten_layers(include_self=True, recursive=True)
    )


def _agreed_finite(gradients, replicas: int):
    """``(gradients, finite)`` with ``finite`` the same verdict on every replica.

    ``LossScaleOptimizer`` checks the gradients it is given, which in a custom loop are the
    replica's own (the sum over replicas happens later, inside the optimizer). If any replica
    overflowed, every replica's gradients are made NaN so that all of them skip the step.
    """
    finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients])
    if replicas > 1:
        overflowed = tf.distribute.get_replica_context().all_reduce(
            tf.distribute.ReduceOp.SUM, 1.0 - tf.cast(finite, tf.float32)
        )
        finite = tf.equal(overflowed, 0.0)
        factor = tf.where(finite, 1.0, float("nan"))
        gradients = [g * tf.cast(factor, g.dtype) for g in gradients]
    return gradients, finite


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
