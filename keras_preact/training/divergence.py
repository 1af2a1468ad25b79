"""Divergence: what counts as a diverged run, and the errors that stop one.

A diverging run rarely jumps straight to NaN: with ``--lr=1e6`` the loss of the embedded sample
reached 5e9 by step 12 and only became NaN at step 28, and on the way the BN moving variances
overflowed to ``inf`` while the training loss (computed on batch statistics) was still finite.
So a run is stopped as soon as either

* the mean training loss of a step is NaN or infinite, or
* it is more than ``factor`` times its recent average (the mean of the last ``window`` finite
  step losses, floored at ``floor`` nats so that a well-fitted model's small losses do not make
  an ordinary bad batch look like an explosion); ``factor=0`` turns this test off;

and, independently of the loss, no checkpoint is written unless every variable of the model and
the optimizer is finite (``RunCheckpoints.save``). The cross-entropy of a model predicting
uniformly over C classes is ln C (2.3 for CIFAR-10, 6.9 for ImageNet); a step loss above
``factor * max(recent average, floor)`` (10 nats with the defaults) means the network puts on
average less than e^-10 of its probability on the right class: an explosion, not noise.
"""

from __future__ import annotations

import collections
import math

import numpy as np

DEFAULT_FACTOR = 10.0
DEFAULT_WINDOW = 20
DEFAULT_FLOOR = 1.0


class DivergenceError(RuntimeError):
    """The training loss exploded or became NaN/inf; the run stopped without saving that state.

    ``checkpoint``: the last known-good checkpoint (prefix) the run directory now resumes from,
    or None if none was written yet. ``step``: the step whose loss or state showed it.
    """

    def __init__(self, message: str, *, step: int | None = None, checkpoint: str | None = None):
        super().__init__(message)
        self.step = step
        self.checkpoint = checkpoint


class NonFiniteCheckpointError(DivergenceError):
    """A checkpoint holds NaN or infinite values (it was written after a run diverged)."""


def check_settings(factor: float, window: int) -> None:
    if not (factor == 0 or factor > 1) or not math.isfinite(factor):
        raise ValueError(f"divergence factor must be 0 (off) or > 1, got {factor}.")
    if int(window) < 1:
        raise ValueError(f"divergence window must be >= 1, got {window}.")


class LossMonitor:
    """Judges each step's mean training loss; :meth:`problem` says why it is diverged, or None."""

    def __init__(self, factor: float = DEFAULT_FACTOR, window: int = DEFAULT_WINDOW, floor: float = DEFAULT_FLOOR):
        check_settings(factor, window)
        self.factor = float(factor)
        self.floor = float(floor)
        self.recent = collections.deque(maxlen=int(window))

    @property
    def reference(self) -> float | None:
        """The recent average loss (None before the first step)."""
        return sum(self.recent) / len(self.recent) if self.recent else None

    def problem(self, loss: float) -> str | None:
        """None if ``loss`` is healthy (and remembered), else a phrase saying what is wrong."""
        if not math.isfinite(loss):
            return f"the training loss is {loss}"
        reference = self.reference
        if self.factor and reference is not None and loss > self.factor * max(reference, self.floor):
            return (f"the training loss is {loss:.4g}, more than {self.factor:g}x its recent average "
                    f"{reference:.4g} (--divergence_factor)")
        self.recent.append(loss)
        return None


def non_finite(named_arrays) -> list:
    """Names of the float arrays in ``(name, array)`` pairs holding any NaN or infinite value."""
    bad = []
    for name, array in named_arrays:
        array = np.asarray(array)
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            bad.append(name)
    return bad
