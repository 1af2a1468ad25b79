"""The fit trainer's checkpoints: every array a run needs to continue, in one file per step.

``<model_dir>/checkpoints/ckpt-<step>.npz`` holds, by name,

* ``model/<i>``: ``model.variables`` in order (weights, BatchNorm statistics, the states of the
  layers' random seed generators);
* ``optimizer/<i>``: ``optimizer.variables`` (the iteration count the schedule reads, momenta,
  a loss scale);
* ``average/<i>``: the weight average, where the recipe keeps one;
* ``state``: JSON of the rest -- the step (which is also the data position: the batches are a
  pure function of the seed and the step, ``keras_preact.data.arrays``), the divergence
  monitor's recent losses, the training seconds so far, and the variable paths and shapes, so
  that a file of another model is refused by name rather than loaded into the wrong variables.

NumPy's own format, readable on every backend without TensorFlow. A checkpoint is written to a
temporary name, flushed to disk and renamed into place, so a run killed at any moment (even
``kill -9``) leaves either the whole file or none: a half-written file is never the latest.
Only the last ``keep`` files stay. Nothing non-finite is ever written (``save`` refuses it), so
the latest checkpoint of a diverged run is its last good state.
"""

from __future__ import annotations

import glob
import json
import os
import re

import numpy as np

from keras_preact.training.divergence import NonFiniteCheckpointError, non_finite

CHECKPOINT_DIR = "checkpoints"
_NAME = re.compile(r"^ckpt-(\d+)\.npz$")


class CheckpointMismatchError(ValueError):
    """A checkpoint holds the variables of another model (paths or shapes differ)."""


def checkpoint_path(directory: str, step: int) -> str:
    return os.path.join(directory, f"ckpt-{int(step):09d}.npz")


def list_checkpoints(directory: str) -> list:
    """``[(step, path)]`` of the complete checkpoints in ``directory``, oldest first."""
    found = []
    for path in glob.glob(os.path.join(directory, "ckpt-*.npz")):
        match = _NAME.match(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


class ArrayCheckpoints:
    """Numbered ``.npz`` checkpoints in ``directory``: atomic writes, the last ``keep`` kept."""

    def __init__(self, directory: str, keep: int = 3):
        if int(keep) < 1:
            raise ValueError(f"keep must be >= 1, got {keep}.")
        self.directory = directory
        self.keep = int(keep)

    def latest(self) -> str | None:
        """The newest complete checkpoint, or None."""
        found = list_checkpoints(self.directory)
        return found[-1][1] if found else None

    def save(self, step: int, arrays: dict, state: dict) -> str:
        """Write ``arrays`` (name -> array) and ``state`` (JSON-ready) as the checkpoint of ``step``.

        Raises ``NonFiniteCheckpointError`` (writing nothing) if a float array holds NaN or inf.
        """
        bad = non_finite(arrays.items())
        if bad:
            raise NonFiniteCheckpointError(
                f"step {step}: {len(bad)} array(s) hold NaN or inf values (e.g. {bad[0]}); not saved.",
                step=int(step), checkpoint=self.latest())
        os.makedirs(self.directory, exist_ok=True)
        path = checkpoint_path(self.directory, step)
        temporary = os.path.join(self.directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
        record = {name: np.asarray(value) for name, value in arrays.items()}
        record["state"] = np.frombuffer(json.dumps({**state, "step": int(step)}).encode(), np.uint8)
        with open(temporary, "wb") as handle:
            np.savez(handle, **record)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        _sync_directory(self.directory)
        for _, old in list_checkpoints(self.directory)[:-self.keep]:
            os.remove(old)
        return path

    @staticmethod
    def load(path: str) -> tuple:
        """``(arrays, state)`` of a checkpoint file."""
        with np.load(path, allow_pickle=False) as stored:
            arrays = {name: stored[name] for name in stored.files if name != "state"}
            state = json.loads(bytes(stored["state"]).decode())
        return arrays, state


def _sync_directory(directory: str) -> None:
    """Make the rename durable (a crash right after it keeps the new name)."""
    try:
        handle = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass
    finally:
        os.close(handle)


def variable_arrays(prefix: str, variables) -> tuple:
    """``({"<prefix>/<i>": array}, [[path, shape], ...])`` of Keras variables.

    A variable replicated over the devices of several processes is read from this process's
    own replica (every replica holds the same value)."""
    arrays, layout = {}, []
    for index, variable in enumerate(variables):
        arrays[f"{prefix}/{index}"] = host_array(variable.value)
        layout.append([variable.path, list(variable.shape)])
    return arrays, layout


def host_array(value) -> np.ndarray:
    """A backend tensor as a NumPy array; of a JAX array spanning several processes, the local
    replica."""
    if getattr(value, "is_fully_addressable", True) is False:
        value = value.addressable_data(0)
    if hasattr(value, "detach"):  # torch
        value = value.detach().cpu()
    return np.array(value)


def restore_variables(prefix: str, variables, arrays: dict, layout: list, what: str) -> None:
    """Assign ``arrays`` saved by :func:`variable_arrays` back, after checking the layout."""
    variables = list(variables)
    if len(layout) != len(variables):
        raise CheckpointMismatchError(
            f"the checkpoint holds {len(layout)} {what} variables, this run has {len(variables)}: "
            "it is another model's (use another --model_dir, or the same settings).")
    for index, (variable, (path, shape)) in enumerate(zip(variables, layout)):
        if list(variable.shape) != list(shape):
            raise CheckpointMismatchError(
                f"{what} variable {index} is {path} {tuple(shape)} in the checkpoint but "
                f"{variable.path} {tuple(variable.shape)} in this run: it is another model's "
                "(use another --model_dir, or the same settings).")
        variable.assign(arrays[f"{prefix}/{index}"])
