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

Divergence (see ``divergence``): ``save`` refuses to write a state holding any NaN or infinite
variable (``NonFiniteCheckpointError``). A checkpoint taken at step k is only *known good* once
the run went on healthily for ``confirm_steps`` more steps (the loss of step k+1 is the first
judgement of the weights saved at k). The newest known-good checkpoint is pinned: hard-linked
into ``checkpoints/known_good/``, so ``max_to_keep`` rotation cannot delete it until a newer
one is known good. On divergence ``rewind`` drops the unconfirmed checkpoints and points the
run's state file back at the known-good one, which a restart then resumes from. ``restore``
refuses a checkpoint with non-finite values. ``ckpt-N_temp/`` folders left by a process killed
inside a save are removed when a run starts; ``pending/`` is removed when a run ends cleanly
(``finish``).
"""

from __future__ import annotations

import glob
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from keras_preact.training import strategy as strategy_lib
from keras_preact.training.averaging import variable_key
from keras_preact.training.divergence import NonFiniteCheckpointError, non_finite

CHECKPOINT_SUBDIR = "checkpoints"
KNOWN_GOOD_SUBDIR = "known_good"
PENDING_SUBDIR = "pending"  # links to checkpoints not yet known good, safe from rotation
DEFAULT_CONFIRM_STEPS = 5


def checkpoint_files(prefix: str) -> list:
    """The files of one checkpoint: ``<prefix>.index`` and its ``.data-*`` shards."""
    return sorted(glob.glob(glob.escape(prefix) + ".index") + glob.glob(glob.escape(prefix) + ".data-*"))


def non_finite_tensors(prefix: str) -> list:
    """Names of the float tensors of checkpoint ``prefix`` holding a NaN or infinite value."""
    reader = tf.train.load_checkpoint(prefix)
    names = [n for n, dtype in reader.get_variable_to_dtype_map().items() if dtype.is_floating]
    return non_finite((name, reader.get_tensor(name)) for name in sorted(names))


def check_finite_checkpoint(prefix: str) -> None:
    """``NonFiniteCheckpointError`` if checkpoint ``prefix`` holds any NaN or infinite value."""
    bad = non_finite_tensors(prefix)
    if bad:
        raise NonFiniteCheckpointError(
            f"Checkpoint {prefix} holds non-finite values in {len(bad)} tensor(s) (e.g. {bad[0]}): "
            "it was written after the run diverged and cannot be used. Use an earlier checkpoint "
            f"(a run keeps its last known-good one under {KNOWN_GOOD_SUBDIR}/) or start afresh.",
            checkpoint=prefix,
        )


def link_checkpoint(prefix: str, directory: str) -> str:
    """Hard-link (copy where links fail) the files of checkpoint ``prefix`` into ``directory``."""
    os.makedirs(directory, exist_ok=True)
    for file in checkpoint_files(prefix):
        target = os.path.join(directory, os.path.basename(file))
        if os.path.exists(target):
            continue
        try:
            os.link(file, target)
        except OSError:
            shutil.copy2(file, target)
    return os.path.join(directory, os.path.basename(prefix))


def remove_checkpoint(prefix: str) -> None:
    for file in checkpoint_files(prefix):
        os.remove(file)


def write_state(directory: str, prefixes) -> None:
    """Atomically (re)write ``<directory>/checkpoint``, the state file naming ``prefixes`` (newest last)."""
    names = [os.path.basename(p) for p in prefixes]
    lines = [f'model_checkpoint_path: "{names[-1]}"'] + [f'all_model_checkpoint_paths: "{n}"' for n in names]
    path = os.path.join(directory, "checkpoint")
    with open(path + ".tmp", "w") as handle:
        handle.write("\n".join(lines) + "\n")
    os.replace(path + ".tmp", path)


def remove_orphan_temporaries(directory: str) -> list:
    """Delete ``ckpt-N_temp/`` folders (and files) a kill during a save left; return them."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(directory), "*_temp*")):
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
        removed.append(path)
    return removed


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
            key = variable_key(path)
            if key in seen:
                raise ValueError(f"Two variables share the path {variable.path!r}; cannot checkpoint.")
            seen.add(key)
            setattr(self, key, variable.value)  # the tf.Variable (mirrored under a strategy)


class RunCheckpoints:
    """Save and restore the model and optimizer of one run under ``<model_dir>/checkpoints``."""

    def __init__(self, model_dir: str, *, model, optimizer, strategy, max_to_keep: int = 3,
                 confirm_steps: int = DEFAULT_CONFIRM_STEPS, averaged=None):
        """``averaged``: a ``WeightAverage`` saved with the run (key ``averaged``), or None."""
        self.directory = os.path.join(model_dir, CHECKPOINT_SUBDIR)
        self.known_good_dir = os.path.join(self.directory, KNOWN_GOOD_SUBDIR)
        self.pending_dir = os.path.join(self.directory, PENDING_SUBDIR)
        self.optimizer = optimizer
        self.chief = strategy_lib.is_chief(strategy)
        self.confirm_steps = int(confirm_steps)
        self._named_variables = [(v.path, v) for v in list(model.variables) + list(optimizer.variables)]
        if averaged is not None:
            self._named_variables += [
                ("averaged/" + v.path, shadow) for v, shadow in zip(averaged.sources, averaged.shadows)
            ]
        self.unconfirmed = []  # (step, prefix) of checkpoints not yet known good, oldest first
        self.removed_temporaries = []
        self.checkpoint = tf.train.Checkpoint(
            model=VariableSet(model.variables),
            # Optimizer paths start with its name, which Keras uniquifies per process (sgd_3/...).
            optimizer=VariableSet(optimizer.variables, strip_prefix=optimizer.name + "/"),
            **({"averaged": averaged.trackable} if averaged is not None else {}),
        )
        if self.chief:
            os.makedirs(self.directory, exist_ok=True)
            self.removed_temporaries = remove_orphan_temporaries(self.directory)
            shutil.rmtree(self.pending_dir, ignore_errors=True)  # a previous process's judgements
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

    @property
    def known_good(self) -> str | None:
        """The pinned known-good checkpoint (its prefix in the run directory if still there)."""
        pinned = tf.train.latest_checkpoint(self.known_good_dir) if os.path.isdir(self.known_good_dir) else None
        if pinned is None:
            return None
        in_run = os.path.join(self.directory, os.path.basename(pinned))
        return in_run if checkpoint_files(in_run) else pinned

    def non_finite_variables(self) -> list:
        """Paths of the model and optimizer variables holding a NaN or infinite value."""
        return non_finite((name, np.asarray(v.numpy())) for name, v in self._named_variables)

    def restore(self) -> int:
        """Restore the newest checkpoint if there is one; return the step it was taken at.

        ``NonFiniteCheckpointError`` if it holds NaN or infinite values (before this check
        existed, a diverging run could write one).
        """
        path = self.latest
        if path is None:
            return 0
        check_finite_checkpoint(path)
        self.checkpoint.restore(path).assert_existing_objects_matched()
        step = int(self.optimizer.iterations.numpy())
        self.last_saved_step = step
        known = self.known_good
        if self.chief and (known is None or os.path.basename(known) != os.path.basename(path)):
            self.unconfirmed = [(step, link_checkpoint(path, self.pending_dir))]
        return step

    def save(self, step: int) -> str | None:
        """Write a checkpoint for ``step`` (every worker calls this; the chief's is kept).

        ``NonFiniteCheckpointError`` instead, writing nothing, if any variable is not finite.
        """
        if self.last_saved_step == step:
            return self.latest
        bad = self.non_finite_variables()
        if bad:
            raise NonFiniteCheckpointError(
                f"{len(bad)} of the {len(self._named_variables)} model and optimizer variables are "
                f"not finite at step {step} (e.g. {bad[0]}); that state was not saved.",
                step=step,
            )
        path = self.manager.save(checkpoint_number=step)
        self.last_saved_step = step
        if not self.chief:
            # Non-chief copies exist only so that every worker takes part in the save.
            shutil.rmtree(self.write_dir, ignore_errors=True)
            os.makedirs(self.write_dir, exist_ok=True)
            return None
        # A link in pending/ keeps it whole through max_to_keep rotation until it is judged.
        self.unconfirmed.append((step, link_checkpoint(path, self.pending_dir)))
        return path

    def confirm(self, step: int) -> str | None:
        """The run is healthy at ``step``: pin the newest checkpoint ``confirm_steps`` behind it."""
        confirmed = [(s, p) for s, p in self.unconfirmed if step - s >= self.confirm_steps]
        if not confirmed:
            return None
        self.unconfirmed = [(s, p) for s, p in self.unconfirmed if step - s < self.confirm_steps]
        if not self.chief:
            return None
        _, prefix = confirmed[-1]
        self._pin(prefix)
        for _, pending in confirmed:
            remove_checkpoint(pending)
        return os.path.join(self.directory, os.path.basename(prefix))

    def finish(self) -> None:
        """The run ended cleanly: drop ``pending/``, the links that kept the last checkpoints
        whole through rotation until judged. Nothing will rotate them any more, and the next
        process on this run directory judges afresh (it clears ``pending/`` when it starts and
        links the checkpoint it resumes from), so the checkpoints themselves stay as they are."""
        self.unconfirmed = []
        if self.chief:
            shutil.rmtree(self.pending_dir, ignore_errors=True)

    def _pin(self, prefix: str) -> None:
        """Hard-link (or copy) checkpoint ``prefix`` into ``known_good/``, replacing the old pin."""
        staging = self.known_good_dir + ".new"
        shutil.rmtree(staging, ignore_errors=True)
        write_state(staging, [link_checkpoint(prefix, staging)])
        old = self.known_good_dir + ".old"
        shutil.rmtree(old, ignore_errors=True)
        if os.path.isdir(self.known_good_dir):
            os.replace(self.known_good_dir, old)
        os.replace(staging, self.known_good_dir)
        shutil.rmtree(old, ignore_errors=True)

    def rewind(self) -> str | None:
        """After a divergence: make the known-good checkpoint the run's newest; return its prefix.

        Checkpoints not yet known good are deleted (they were written within ``confirm_steps``
        of the divergence), a pinned one rotated out of the run directory is linked back, and
        the state file is rewritten, so a restart resumes from the returned checkpoint.
        """
        if not self.chief:
            return None
        known = self.known_good
        keep_step = None if known is None else int(known.rsplit("-", 1)[1])
        for step, pending in self.unconfirmed:
            remove_checkpoint(pending)
            if keep_step is None or step > keep_step:
                remove_checkpoint(os.path.join(self.directory, os.path.basename(pending)))
        self.unconfirmed = []
        remaining = [p for p in self.manager.checkpoints if checkpoint_files(p)]
        if known is not None and os.path.dirname(known) != os.path.normpath(self.directory):
            known = link_checkpoint(known, self.directory)
        if known is not None and known not in remaining:
            remaining.append(known)
        remaining.sort(key=lambda p: int(p.rsplit("-", 1)[1]))
        state = os.path.join(self.directory, "checkpoint")
        if remaining:
            write_state(self.directory, remaining)
        elif os.path.exists(state):
            os.remove(state)
        return known
