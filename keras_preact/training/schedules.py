"""Learning-rate schedules of the paper's recipes, as Keras ``LearningRateSchedule`` objects.

* ``StepDecay``: the base rate divided by ``1 / decay_factor`` at each boundary (CIFAR: 0.1,
  /10 at 32k and 48k iterations; ImageNet: /10 at epochs 30 and 60).
* ``CosineDecay``: half a cosine from the base rate to zero over the run.
* Both take the paper's optional warm-up: a *constant* low rate (0.01) for the first iterations
  (400 on CIFAR), then the base rate (paper appendix, following [1] section 4.2); not a
  linear ramp.

Boundaries can be written in three units (``resolve_boundaries``) so a short run keeps the
shape of the long one: ``"32000"`` (an iteration), ``"0.5"`` (a fraction of the run),
``"30ep"`` (an epoch). When a run's length is set (``Recipe.replace(train_steps=...)`` or
``epochs=...``), a recipe's absolute boundaries move to the same fractions of the new run
(``relative_boundaries``); an iteration or epoch boundary at or after the end of the run is an
error in the trainer (``within_run``), never a decay that silently does not happen.
"""

from __future__ import annotations

import math
from typing import Sequence

import keras
from keras import ops

from keras_preact.common import PACKAGE

SCHEDULES = ("step", "cosine")


def resolve_boundaries(
    specs: Sequence, total_steps: int, steps_per_epoch: int | None = None, *,
    within_run: bool = False,
) -> tuple:
    """Turn boundary specs into sorted iteration numbers.

    Each spec is an int or a string: ``"32000"`` (iteration), ``"0.5"`` (fraction of
    ``total_steps``, strictly between 0 and 1) or ``"30ep"`` (epoch, needs ``steps_per_epoch``).
    ``within_run=True``: an iteration or epoch boundary at or after ``total_steps`` is an error
    (the trainer's check of explicit boundaries; a library run may stop early on purpose and
    be resumed into a longer one).
    """
    steps = []
    for spec in specs:
        text = str(spec).strip().lower()
        try:
            if text.endswith("ep"):
                if not steps_per_epoch:
                    raise ValueError("epoch boundaries need steps_per_epoch")
                step = round(float(text[:-2]) * steps_per_epoch)
            elif _is_fraction(text):
                fraction = float(text)
                if not 0.0 < fraction < 1.0:
                    raise ValueError("a fraction must be strictly between 0 and 1")
                step = max(1, round(fraction * total_steps))  # a tiny run still decays
            else:
                step = int(text)
        except ValueError as error:
            raise ValueError(
                f"Bad learning-rate boundary {spec!r} ({error}). Write an iteration ('32000'), "
                "a fraction of the run ('0.5') or an epoch ('30ep')."
            ) from None
        if step < 1:
            raise ValueError(f"Learning-rate boundary {spec!r} falls at step {step}; must be >= 1.")
        if within_run and step >= total_steps and not _is_fraction(text):
            raise ValueError(
                f"Learning-rate boundary {spec!r} falls at step {step}, after the end of the run "
                f"({total_steps} steps): it would never decay the rate. Write it as a fraction of "
                "the run ('0.5') or lengthen the run."
            )
        steps.append(step)
    # Equal steps are allowed (fractions of a very short run can coincide: both decays apply).
    if steps != sorted(steps):
        raise ValueError(f"Learning-rate boundaries must increase, got {list(specs)} -> {steps}.")
    return tuple(steps)


def _is_fraction(text: str) -> bool:
    return not text.endswith("ep") and ("." in text or "e-" in text)


def relative_boundaries(specs: Sequence, train_steps: int | None = None,
                        epochs: float | None = None) -> tuple:
    """The same boundaries as fractions of a run of ``train_steps`` iterations or ``epochs``.

    Iteration boundaries of a run given in iterations (the paper's 32k and 48k of 64k, [1]
    section 4.2) become ``"0.5"`` and ``"0.75"``; epoch boundaries of a run given in epochs
    (ImageNet's 30 and 60 of 90) become ``"0.333..."`` and ``"0.666..."``. A recipe's schedule
    then keeps its shape when a run is made shorter or longer. Fractions, and boundaries whose
    unit differs from the run's (or that fall at or after its end), are kept as they are.
    """
    out = []
    for spec in specs:
        text = str(spec).strip().lower()
        length, value = None, None
        if not _is_fraction(text):
            try:
                if text.endswith("ep"):
                    length, value = epochs, float(text[:-2])
                else:
                    length, value = train_steps, float(int(text))
            except ValueError:
                length = None
        if length and 0 < value < length:
            out.append(repr(value / length))
        else:
            out.append(spec)
    return tuple(out)


def scale_learning_rate(base_lr: float, global_batch: int, reference_batch: int | None) -> float:
    """Linear scaling (Goyal et al.): ``base_lr`` is for ``reference_batch``; None keeps it."""
    if not reference_batch:
        return float(base_lr)
    return float(base_lr) * global_batch / reference_batch


class _WarmupSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A schedule with the paper's constant warm-up in front of the subclass's ``decayed(step)``."""

    def __init__(self, base_lr: float, warmup_steps: int = 0, warmup_lr: float = 0.01):
        if base_lr <= 0:
            raise ValueError(f"base_lr must be positive, got {base_lr}.")
        if warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}.")
        self.base_lr = float(base_lr)
        self.warmup_steps = int(warmup_steps)
        self.warmup_lr = float(warmup_lr)

    def __call__(self, step):
        step = ops.cast(step, "float32")
        lr = self.decayed(step)
        if self.warmup_steps:
            lr = ops.where(step < self.warmup_steps, ops.cast(self.warmup_lr, "float32"), lr)
        return lr

    def get_config(self):
        return {
            "base_lr": self.base_lr,
            "warmup_steps": self.warmup_steps,
            "warmup_lr": self.warmup_lr,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class StepDecay(_WarmupSchedule):
    """``base_lr * decay_factor ** (number of boundaries passed)``, boundaries in iterations."""

    def __init__(
        self,
        base_lr: float,
        boundaries: Sequence[int],
        decay_factor: float = 0.1,
        warmup_steps: int = 0,
        warmup_lr: float = 0.01,
    ):
        super().__init__(base_lr, warmup_steps, warmup_lr)
        self.boundaries = tuple(int(b) for b in boundaries)
        if list(self.boundaries) != sorted(self.boundaries):
            raise ValueError(f"boundaries must increase, got {self.boundaries}.")
        self.decay_factor = float(decay_factor)

    def decayed(self, step):
        passed = ops.zeros((), "float32")
        for boundary in self.boundaries:
            passed = passed + ops.cast(step >= boundary, "float32")
        return self.base_lr * ops.power(ops.cast(self.decay_factor, "float32"), passed)

    def get_config(self):
        return {
            **super().get_config(),
            "boundaries": list(self.boundaries),
            "decay_factor": self.decay_factor,
        }


@keras.saving.register_keras_serializable(package=PACKAGE)
class CosineDecay(_WarmupSchedule):
    """``base_lr * (1 + cos(pi * t)) / 2`` with ``t`` going from 0 after warm-up to 1 at the end."""

    def __init__(
        self, base_lr: float, total_steps: int, warmup_steps: int = 0, warmup_lr: float = 0.01
    ):
        super().__init__(base_lr, warmup_steps, warmup_lr)
        if total_steps <= warmup_steps:
            raise ValueError(
                f"total_steps ({total_steps}) must exceed warmup_steps ({warmup_steps})."
            )
        self.total_steps = int(total_steps)

    def decayed(self, step):
        span = float(self.total_steps - self.warmup_steps)
        t = ops.clip((step - self.warmup_steps) / span, 0.0, 1.0)
        return self.base_lr * 0.5 * (1.0 + ops.cos(math.pi * t))

    def get_config(self):
        return {**super().get_config(), "total_steps": self.total_steps}


def build_schedule(
    kind: str,
    *,
    base_lr: float,
    total_steps: int,
    boundaries: Sequence[int] = (),
    decay_factor: float = 0.1,
    warmup_steps: int = 0,
    warmup_lr: float = 0.01,
) -> keras.optimizers.schedules.LearningRateSchedule:
    """The schedule named ``kind`` (``"step"`` or ``"cosine"``)."""
    if kind == "step":
        return StepDecay(base_lr, boundaries, decay_factor, warmup_steps, warmup_lr)
    if kind == "cosine":
        return CosineDecay(base_lr, total_steps, warmup_steps, warmup_lr)
    raise ValueError(
        f"Unknown learning-rate schedule {kind!r}. Valid choices: {', '.join(map(repr, SCHEDULES))}."
    )
