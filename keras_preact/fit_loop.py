"""The fit trainer's loop: Keras' ``model.fit`` on any backend, with the run's checkpoints and logs.

The tf.distribute trainer (``keras_preact.training.loop``) owns its step; this engine leaves the
step to Keras (``model.fit``, so JAX, PyTorch and TensorFlow each run their own compiled step)
and adds around it what a run needs to survive and to be read:

* **Exact resume.** Batches are a pure function of ``(seed, step)`` (``keras_preact.data.arrays``),
  so the data position is the step. A checkpoint (``fit_checkpoints``) holds every model,
  optimizer and weight-average array, the divergence monitor and the clock; a run restarted
  with the same command loads the newest one and feeds ``fit`` the batches from that step on.
  Every ``checkpoint_every`` steps, at each epoch end and at the last step.
* **One ``fit`` call per epoch** (the first one shorter when resuming mid-epoch): Keras reports
  the running mean of an epoch's loss, from which each step's own loss is recovered for the
  divergence check (``divergence.LossMonitor``), and an epoch end is where evaluation falls.
* **Divergence.** A step whose loss is NaN, infinite or explodes stops the run before its state is
  saved, and so does a state holding NaN or inf (BatchNorm statistics overflow before the loss
  does); :class:`~keras_preact.training.divergence.DivergenceError` names the last good
  checkpoint, which the directory resumes from.
* **Outputs**, as the tf.distribute trainer writes them: ``metrics.csv`` and TensorBoard scalars
  every ``log_every`` steps and at each evaluation, a progress bar with ETA, ``curves.png``.
* **Several JAX processes** (``keras.distribution``): every process runs this loop on its own
  shard of each batch; the arrays are the same in every process, process 0 alone writes.

Evaluation is the tf.distribute trainer's: top-1 error and cross-entropy on the evaluation
split, of the weight average where the recipe keeps one, over the recipe's test-time views.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time

import keras
import numpy as np
from keras import ops

from keras_preact.recipes import FitRecipe, WeightAverageCallback, sync_variables
from keras_preact.training.divergence import DivergenceError, LossMonitor, NonFiniteCheckpointError, non_finite
from keras_preact.training.fit_checkpoints import (CHECKPOINT_DIR, ArrayCheckpoints, host_array,
                                                   restore_variables, variable_arrays)
from keras_preact.training.observe import MetricsLog, ProgressBar, TensorBoardLog, plot_curves
from keras_preact.tta import tta_logits


class FitRun:
    """One run of the fit engine (see the module docstring).

    ``train`` and ``evaluation`` are ``keras_preact.data.arrays.ArraySplit``s; ``shard`` is
    ``(process index, process count)``: this process feeds its part of every global batch.
    ``chief``: this process writes the run directory and prints.
    """

    def __init__(self, model: keras.Model, recipe: FitRecipe, train, evaluation, *, model_dir: str,
                 steps_per_epoch: int, seed: int = 0, checkpoint_every: int = 1000, keep_checkpoints: int = 3,
                 log_every: int = 50, eval_every: int = 0, eval_name: str = "test", shard=(0, 1),
                 chief: bool = True, stream=None, data_format: str = "channels_last"):
        self.model = model
        self.recipe = recipe
        self.train = train
        self.evaluation = evaluation
        self.model_dir = model_dir
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_steps = int(recipe.total_steps)
        self.batch_size = int(recipe.batch_size)
        self.seed = int(seed)
        self.checkpoint_every = int(checkpoint_every)
        self.log_every = int(log_every)
        self.eval_every = int(eval_every)
        self.eval_name = eval_name
        self.shard = tuple(shard)
        self.data_format = data_format  # the network's layout; the batches are made in it
        self.chief = chief
        self.stream = stream or sys.stdout
        self.checkpoints = ArrayCheckpoints(os.path.join(model_dir, CHECKPOINT_DIR), keep=keep_checkpoints)
        divergence = next(c for c in recipe.callbacks if hasattr(c, "monitor"))
        self.monitor: LossMonitor = divergence.monitor
        self.average = None
        if recipe.recipe.weight_average:
            # Kept by this loop across its fit calls: applied for evaluation and at the end only.
            self.average = WeightAverageCallback(recipe.recipe.weight_average, evaluate_average=False,
                                                 apply_at_end=False)
        self.step = 0
        self.train_seconds = 0.0  # in training steps, over every process of a resumed run
        self.restored_from = None
        self.diverged = None
        self.last_evaluation = None
        self._after_first_step = [0.0, 0]  # seconds, steps: this process's steps after its first

    # -- checkpoints ---------------------------------------------------------------------------
    def _build_state(self) -> None:
        """Create the optimizer's variables now (``fit`` would on its first step), so a checkpoint
        can fill them before training starts."""
        if not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)

    def _float_variables(self) -> list:
        return [v for v in self.model.variables if "float" in str(v.dtype)]

    def restore(self) -> int:
        """Load the newest checkpoint of the run directory, if any; returns the step to start at."""
        self._build_state()
        path = self.checkpoints.latest()
        if path is None:
            return 0
        arrays, state = ArrayCheckpoints.load(path)
        model_vars, optimizer_vars = self.model.variables, self.model.optimizer.variables
        if "average" in state:
            if self.average is None:
                raise ValueError(f"{path} holds a weight average, which this run's recipe does not keep "
                                 "(--weight_average): resume with the recipe it was written with.")
            # The averages are made the way the callback makes them (copies of variables), so
            # they live where the variables live (replicated over the processes' devices).
            floats = self._float_variables()
            restore_variables("average", floats, arrays, state["average"], "weight-average")
            self.average.averages = [ops.copy(v.value) for v in floats]
        restore_variables("model", model_vars, arrays, state["model"], "model")
        restore_variables("optimizer", optimizer_vars, arrays, state["optimizer"], "optimizer")
        self.monitor.recent.clear()
        self.monitor.recent.extend(state["recent_losses"])
        self.step = int(state["step"])
        self.train_seconds = float(state["train_seconds"])
        self.restored_from = path
        return self.step

    def save(self) -> str | None:
        """Checkpoint the current state (every process checks it is finite; the chief writes)."""
        sync_variables(self.model)
        arrays, state = {}, {"recent_losses": list(self.monitor.recent), "train_seconds": self.train_seconds}
        for prefix, variables in (("model", self.model.variables), ("optimizer", self.model.optimizer.variables)):
            saved, state[prefix] = variable_arrays(prefix, variables)
            arrays.update(saved)
        if self.average is not None and self.average.averages is not None:
            floats = self._float_variables()
            for index, value in enumerate(self.average.averages):
                arrays[f"average/{index}"] = host_array(value)
            state["average"] = [[v.path, list(v.shape)] for v in floats]
        if not self.chief:
            bad = non_finite(arrays.items())
            if bad:
                raise NonFiniteCheckpointError(f"step {self.step}: {bad[0]} holds NaN or inf.", step=self.step)
            return None
        return self.checkpoints.save(self.step, arrays, state)

    # -- evaluation ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def averaged_weights(self):
        """The weight average in the model for the duration (the training weights after)."""
        if self.average is None or self.average.averages is None:
            yield
            return
        variables = self._float_variables()
        kept = [ops.copy(v.value) for v in variables]
        for variable, value in zip(variables, self.average.averages):
            variable.assign(ops.copy(value))
        try:
            yield
        finally:
            for variable, value in zip(variables, kept):
                variable.assign(value)

    def evaluate(self) -> dict:
        """``{"error", "loss", "count"}`` on the evaluation split (see the module docstring)."""
        errors = losses = 0.0
        count = 0
        index, processes = self.shard
        tta = self.recipe.recipe.eval_tta
        sync_variables(self.model)
        with self.averaged_weights():
            batches = self.evaluation.eval_batches(self.batch_size, data_format=self.data_format)
            for position in range(len(batches)):
                images, labels = batches[position]
                rows = len(labels)
                if processes > 1:  # pad to a multiple of the processes; each takes its rows
                    per = -(-rows // processes)
                    pad = per * processes - rows
                    if pad:
                        images = np.concatenate([images, np.repeat(images[-1:], pad, 0)])
                        labels = np.concatenate([labels, np.repeat(labels[-1:], pad, 0)])
                    valid = np.arange(per * processes)[index * per:(index + 1) * per] < rows
                    images, labels = images[index * per:(index + 1) * per], labels[index * per:(index + 1) * per]
                else:
                    valid = np.ones(rows, bool)
                logits = host_array(tta_logits(self.model.predict_on_batch, images, tta,
                                           data_format=self.data_format)).astype(np.float64)
                shifted = logits - logits.max(-1, keepdims=True)
                log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
                errors += float(np.sum((np.argmax(logits, -1) != labels) & valid))
                losses += float(-np.sum(log_probs[np.arange(len(labels)), labels] * valid))
                count += int(valid.sum())
        if processes > 1:
            from jax.experimental import multihost_utils

            totals = multihost_utils.process_allgather(np.array([errors, losses, count], np.float64))
            errors, losses, count = (float(v) for v in np.asarray(totals).reshape(processes, 3).sum(0))
            count = int(count)
        return {"error": errors / count, "loss": losses / count, "count": count}

    # -- the run -------------------------------------------------------------------------------
    def fit(self) -> dict:
        """Train from the restored step to the end; returns the final evaluation
        ``{eval name: {error, loss, count}}``. Raises ``DivergenceError`` if the run diverges."""
        start = self.step
        observer = _Observer(self)
        callbacks = ([self.average] if self.average is not None else []) + [observer]
        observer.open(start)
        try:
            while self.step < self.total_steps and self.diverged is None:
                epoch_end = (self.step // self.steps_per_epoch + 1) * self.steps_per_epoch
                steps = min(epoch_end, self.total_steps) - self.step
                batches = self.train.train_sequence(self.batch_size, seed=self.seed, first_step=self.step,
                                                    steps=steps, shard=self.shard, data_format=self.data_format)
                self.model.fit(batches, epochs=1, verbose=0, shuffle=False, callbacks=callbacks)
        finally:
            observer.close()
        if self.diverged is not None:
            step, reason = self.diverged
            latest = self.checkpoints.latest()
            where = (f"the last good checkpoint is {latest}, which re-running this command resumes from"
                     if latest else "no checkpoint was written before it")
            raise DivergenceError(f"training diverged at step {step}: {reason}; {where}. Lower --lr "
                                  "or add --warmup_steps.", step=step, checkpoint=latest)
        result = self.last_evaluation
        if result is None or result[0] != self.step:  # a run resumed at its very end
            result = (self.step, self.evaluate())
        if self.average is not None and self.average.averages is not None:
            # The model ends holding what was evaluated, and what is saved and exported.
            for variable, value in zip(self._float_variables(), self.average.averages):
                variable.assign(ops.copy(value))
        return {self.eval_name: result[1]}

    def images_per_sec_after_first_step(self) -> float | None:
        """Training images per second in this process, over the training steps after its first
        (which holds the compilation); evaluation, logging and checkpoint writes excluded."""
        seconds, steps = self._after_first_step
        return round(steps * self.batch_size / seconds, 1) if steps and seconds > 0 else None


class _Observer(keras.callbacks.Callback):
    """What happens after each step: the step's loss and accuracy, the divergence check, logs,
    evaluation and checkpoints. Every process runs it (so all stop together); the chief writes."""

    def __init__(self, run: FitRun):
        super().__init__()
        self.run = run
        self._step_started = None
        self._previous = (0.0, 0.0)
        self._interval = []  # (loss, accuracy, seconds) of the steps since the last log row
        self._first_step_in_process = True

    def open(self, start: int):
        run = self.run
        self.metrics = self.board = self.bar = None
        if run.chief:
            self.metrics = MetricsLog(os.path.join(run.model_dir, "metrics.csv"), resume_step=start)
            self.board = TensorBoardLog(os.path.join(run.model_dir, "tensorboard"))
            self.bar = ProgressBar(run.total_steps, start, stream=run.stream, print_every=run.log_every)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.board is not None:
            self.board.close()

    def say(self, text: str):
        if self.bar is not None:
            self.bar.message(text)

    def on_epoch_begin(self, epoch, logs=None):
        self._previous = (0.0, 0.0)  # Keras' running means restart with each fit call

    def on_train_batch_begin(self, batch, logs=None):
        self._step_started = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        run = self.run
        loss_mean = float(ops.convert_to_numpy(logs["loss"]))
        accuracy_mean = float(ops.convert_to_numpy(logs.get("accuracy", 0.0)))
        seconds = time.monotonic() - self._step_started
        run.step += 1
        run.train_seconds += seconds
        if self._first_step_in_process:
            self._first_step_in_process = False
        else:
            run._after_first_step[0] += seconds
            run._after_first_step[1] += 1
        # Keras reports the mean over the fit call's steps; the step's own values follow from two.
        previous_loss, previous_accuracy = self._previous
        loss = (batch + 1) * loss_mean - batch * previous_loss if math.isfinite(loss_mean) else loss_mean
        accuracy = (batch + 1) * accuracy_mean - batch * previous_accuracy
        self._previous = (loss_mean, accuracy_mean)
        problem = run.monitor.problem(loss)
        if problem:
            self._stop(problem)
            return
        self._interval.append((loss, accuracy, seconds))
        if self.bar is not None:
            rate = run.batch_size / seconds if seconds > 0 else 0.0
            self.bar.update(run.step, loss, accuracy, rate)
        if run.step % run.log_every == 0 or run.step == run.total_steps:
            self._log_training()
        epoch_end = run.step % run.steps_per_epoch == 0
        if ((run.eval_every and run.step % run.eval_every == 0) or (not run.eval_every and epoch_end)
                or run.step == run.total_steps):
            self._evaluate()
        if ((run.checkpoint_every and run.step % run.checkpoint_every == 0) or epoch_end
                or run.step == run.total_steps):
            try:
                run.save()
            except NonFiniteCheckpointError as error:
                self._stop(f"the model's state holds NaN or inf values ({error})")

    def _stop(self, reason: str):
        self.run.diverged = (self.run.step, reason)
        self.model.stop_training = True

    def _log_training(self):
        run = self.run
        if not self._interval or self.metrics is None:
            self._interval = []
            return
        losses, accuracies, seconds = zip(*self._interval)
        row = dict(
            step=run.step, epoch=round(run.step / run.steps_per_epoch, 4),
            learning_rate=_learning_rate(self.model.optimizer, run.step - 1),
            train_loss=float(np.mean(losses)), train_error=1.0 - float(np.mean(accuracies)),
            images_per_sec=len(seconds) * run.batch_size / max(sum(seconds), 1e-9),
            train_seconds=round(run.train_seconds, 3),
        )
        self.metrics.append(**row)
        self.board.scalars("train", run.step, {
            "loss": row["train_loss"], "error": row["train_error"], "learning_rate": row["learning_rate"],
            "images_per_sec": row["images_per_sec"]})
        self._interval = []

    def _evaluate(self):
        run = self.run
        result = run.evaluate()
        run.last_evaluation = (run.step, result)
        if self.metrics is not None:
            self.metrics.append(step=run.step, epoch=round(run.step / run.steps_per_epoch, 4),
                                eval_name=run.eval_name, test_loss=result["loss"], test_error=result["error"],
                                train_seconds=round(run.train_seconds, 3))
            self.board.scalars(run.eval_name, run.step, {"loss": result["loss"], "error": result["error"]})
            self.say(f"step {run.step}: {run.eval_name} error {100 * result['error']:.2f}% "
                     f"(loss {result['loss']:.4f}, {result['count']} images)")
            try:
                plot_curves(os.path.join(run.model_dir, "metrics.csv"), os.path.join(run.model_dir, "curves.png"),
                            title=run.model.name)
            except ImportError:  # matplotlib: in the backend extras; a bare install logs without it
                pass


def join_jax_processes(coordinator_address=None, num_processes=None, process_id=None, *,
                       find_peers: bool = False) -> tuple:
    """Start JAX's multi-process runtime (``keras.distribution.initialize``) where asked, before
    anything looks at a device; returns ``(process index, process count)``.

    Given a coordinator or a process count, the processes meet there; with ``find_peers``
    alone, JAX looks for a TPU slice, SLURM or Open MPI launch and stays a single process
    without one. Cross-process collectives of XLA:CPU go over gloo (GPUs and TPUs use theirs).
    """
    import jax  # the JAX backend's own library (this runs only there)

    if num_processes or coordinator_address:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        keras.distribution.initialize(coordinator_address, num_processes, process_id)
    elif find_peers:
        try:
            jax.distributed.initialize()
        except (ValueError, RuntimeError):
            pass  # none to find: this process alone, over its local devices
    return jax.process_index(), jax.process_count()


def wait_for_all_processes(name: str) -> None:
    """A barrier of every JAX process of the run (``name`` must be the same in all)."""
    from jax.experimental import multihost_utils

    multihost_utils.sync_global_devices(name)


def _learning_rate(optimizer, step: int) -> float:
    """The rate the optimizer used at ``step`` (0-based), from its schedule when it has one."""
    rate = optimizer._learning_rate
    if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
        rate = rate(step)
    return float(host_array(ops.convert_to_tensor(rate)))

