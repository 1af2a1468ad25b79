"""Atomic, resumable checkpoints of a training run.

A checkpoint holds the model's variables (weights and BN moving statistics), the optimizer's
slots and its iteration counter, each under its Keras variable path (``VariableSet``). The counter is the run's step; with the run's fixed steps per
epoch it also fixes the data position (epoch and batch within it) and the learning rate, so a
restart continues the schedule exactly. The batch order after a restart is a fresh shuffle
(checkpointing a shuffle buffer of decoded images would cost more than it saves).

Why a kill at any moment loses at most the work since the last checkpoint:
``tf.train.CheckpointManager.save`` writes the data and index files completely, then records
the new checkpoint in the ``checkpoint`` state file with an atomic rename
(``file_io.atomic_write_string_to_file``), and only then deletes checkpoints beyond
``max_to_keep``. A process killed mid-write leaves orphan files, never a state file naming a
partial checkpoint.

Multi-worker runs: every worker must take part in a save, but only the chief writes into
``model_dir``; the others write to a private temporary directory that is deleted right after.
All workers restore from the chief's directory, so ``model_dir`` must be on a shared filesystem.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import tensorflow as tf

from keras_preact.training import strategy as strategy_lib

CHECKPOINT_SUBDIR = "checkpoints"


class VariableSet(tf.Module):
    """Variables tracked by their Keras path, for ``tf.train.Checkpoint``.

    ``tf.train.Checkpoint(model=keras_model)`` follows TensorFlow's object graph of the model,
    which on Keras 3.15 misses layers held in Python lists inside custom layers (the BN moving
    statistics inside ``ResidualUnit`` were silently not saved). Naming every variable by its
    unique ``path`` saves exactly ``model.variables`` whatever the layer structure.
    """

    def __init__(self, variables, strip_prefix: str = ""):
        super().__init__(name=None)
        seen = set()
        for variable in variables:
            path = variable.path
            if strip_prefix and path.startswith(strip_prefix):
                path = path[len(strip_prefix):]
            key = path.replace("/", ".")
            if key in seen:
                raise ValueError(f"Two variables share the path {variable.path!r}; cannot checkpoint.")
            seen.add(key)
            setattr(self, key, variable.value)  # the tf.Variable (mirrored under a strategy)


class RunCheckpoints:
    """Save and restore the model and optimizer of one run under ``<model_dir>/checkpoints``."""

    def __init__(self, model_dir: str, *, model, optimizer, strategy, max_to_keep: int = 3):
        self.directory = os.path.join(model_dir, CHECKPOINT_SUBDIR)
        self.optimizer = optimizer
        self.chief = strategy_lib.is_chief(strategy)
        self.checkpoint = tf.train.Checkpoint(
            model=VariableSet(model.variables),
            # Optimizer paths start with its name, which Keras uniquifies per process (sgd_3/...).
            optimizer=VariableSet(optimizer.variables, strip_prefix=optimizer.name + "/"),
        )
        if self.chief:
            os.makedirs(self.directory, exist_ok=True)
            write_dir = self.directory
        else:
            write_dir = tempfile.mkdtemp(prefix=f"{strategy_lib.worker_id(strategy)}-ckpt-")
        self.write_dir = write_dir
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, write_dir, max_to_keep=max_to_keep, checkpoint_name="ckpt"
        )
        self.last_saved_step = None

    @property
    def latest(self) -> str | None:
        """Path prefix of the newest complete checkpoint in the run directory, or None."""
        return tf.train.latest_checkpoint(self.directory)

    def restore(self) -> int:
        """Restore the newest checkpoint if there is one; return the step it was taken at."""
        path = self.latest
        if path is None:
            return 0
        self.checkpoint.restore(path).assert_existing_objects_matched()
        step = int(self.optimizer.iterations.numpy())
        self.last_saved_step = step
        return step

    def save(self, step: int) -> str | None:
        """Write a checkpoint for ``step`` (every worker calls this; the chief's is kept)."""
        if self.last_saved_step == step:
            return self.latest
        path = self.manager.save(checkpoint_number=step)
        self.last_saved_step = step
        if not self.chief:
            # Non-chief copies exist only so that every worker takes part in the save.
            shutil.rmtree(self.write_dir, ignore_errors=True)
            os.makedirs(self.write_dir, exist_ok=True)
            return None
        return path
