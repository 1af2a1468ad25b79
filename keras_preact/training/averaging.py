"""An exponential moving average of a model's weights, for evaluation and export.

Averaging the weights of the last few thousand steps (Polyak averaging; the EMA used by
airbench, timm's ``ModelEmaV2`` and Keras' ``use_ema``) gives a model that is better than the
latest one while the learning rate is still high, so a short run reaches a given test accuracy
sooner; at the end of a schedule that decays to zero it changes little. It never changes
training: the optimizer keeps updating the raw weights, and the average only follows them.

What is averaged: every model variable, the BatchNorm moving statistics included (as timm
does). The statistics of the averaged weights would differ slightly from the average of the
statistics, but with a horizon of a few hundred steps the two agree to within the noise of the
statistics themselves, and recomputing them would cost a pass over the training set per
evaluation.

The decay ramps up as ``min(decay, (1 + t) / (10 + t))`` at step ``t`` (TensorFlow's
``ExponentialMovingAverage`` with ``num_updates``), so the randomly initialised weights of step
0 do not dominate the average of a short run.

The shadows are checkpointed as a ``tf.Module`` (``WeightAverage.trackable``) whose attributes
are keyed like ``training.checkpoints.VariableSet`` keys the model: a checkpoint holds it under
``averaged``,
and restoring ``tf.train.Checkpoint(averaged=VariableSet(model.variables))`` loads the averaged
weights straight into a model (what ``python -m keras_preact.export --weights=averaged`` does).
"""

from __future__ import annotations

import contextlib

import tensorflow as tf


def variable_key(path: str) -> str:
    """The attribute name of a Keras variable path in a checkpointed ``tf.Module``."""
    return path.replace("/", ".")


class WeightAverage:
    """Shadow copies of ``variables`` that track their exponential moving average.

    Create it under the strategy's scope. The shadows are updated with
    ``ONLY_FIRST_REPLICA`` aggregation: the training loop keeps every replica's model
    identical, so replica 0's average is every replica's.
    """

    def __init__(self, variables, decay: float):
        if not 0.0 < float(decay) < 1.0:
            raise ValueError(f"The weight-average decay must be in (0, 1), got {decay}.")
        self.decay = float(decay)
        self.sources = list(variables)
        self.shadows = []
        self.trackable = tf.Module()  # only the shadows, by key: what a checkpoint saves
        for variable in self.sources:
            shadow = tf.Variable(
                variable.value.read_value() if hasattr(variable, "value") else variable.read_value(),
                trainable=False,
                name="average",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
            setattr(self.trackable, variable_key(variable.path), shadow)
            self.shadows.append(shadow)

    def update(self, step) -> None:
        """Move every shadow towards its variable (``step``: the iteration just taken)."""
        t = tf.cast(step, tf.float32)
        decay = tf.minimum(self.decay, (1.0 + t) / (10.0 + t))
        for shadow, variable in zip(self.shadows, self.sources):
            value = tf.cast(variable.value, shadow.dtype)
            shadow.assign_sub((1.0 - tf.cast(decay, shadow.dtype)) * (shadow - value))

    def copy_to_model(self) -> None:
        """Load the averaged weights into the model's own variables (cross-replica context)."""
        for shadow, variable in zip(self.shadows, self.sources):
            variable.assign(tf.cast(shadow.read_value(), variable.dtype))

    @contextlib.contextmanager
    def swapped_in(self):
        """The model holds the averaged weights inside the block and its own ones after."""
        saved = [tf.identity(variable.value) for variable in self.sources]
        self.copy_to_model()
        try:
            yield
        finally:
            for variable, value in zip(self.sources, saved):
                variable.assign(value)
