"""Horizontal-flip test-time augmentation (TTA) as a plain Keras model, for the exporter.

``flip_averaged(model)`` wraps a classifier that outputs logits into a functional model with
the same input and output shapes whose logits are the mean of ``model(x)`` and
``model(flip(x))``, the flip mirroring each image left-right (axis 2, the width of NHWC).

Why: a CIFAR/ImageNet classifier is trained with random horizontal flips, so the mirror image
is an equally valid view of the same object; averaging the two views' logits is the standard,
cheap form of test-time augmentation (the trainer's ``--eval_flip`` computes the same mean, and
``docs/serving.md`` gives what it measured). It costs a second forward pass per image.

The wrapper is built from serializable layers only (:class:`HorizontalFlip` and
``keras.layers.Average``, no ``Lambda``), so it round-trips through a ``.keras`` file with
``safe_mode=True``, and it converts to SavedModel, TFLite (builtin ops) and ONNX like the bare
network. The mean is taken in float32 whatever the wrapped model's dtype policy.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_preact.common import PACKAGE

TTA_CHOICES = ("none", "flip")
WIDTH_AXIS = 2  # NHWC


def check_tta(tta) -> str:
    """``tta`` if it is one of :data:`TTA_CHOICES`, else a ValueError naming them."""
    if tta not in TTA_CHOICES:
        raise ValueError(
            f"Unknown test-time augmentation tta={tta!r}. Valid choices: "
            f"{', '.join(map(repr, TTA_CHOICES))}."
        )
    return tta


@keras.saving.register_keras_serializable(package=PACKAGE)
class HorizontalFlip(keras.layers.Layer):
    """Mirror NHWC images left-right (reverse the width axis), deterministically.

    Unlike ``keras.layers.RandomFlip`` it flips every image, in training and inference alike,
    and has no random state to export.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True

    def call(self, inputs):
        if len(inputs.shape) != 4:
            raise ValueError(f"HorizontalFlip expects [batch, H, W, C] images, got shape {inputs.shape}.")
        return ops.flip(inputs, axis=WIDTH_AXIS)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return super().get_config()  # no arguments of its own: the axis is always the width


def flip_averaged(model: keras.Model, name: str | None = None) -> keras.Model:
    """A functional model computing ``mean(model(x), model(mirror(x)))`` (logits), in float32.

    Args:
      model: a single-input ``[batch, H, W, C]``, single-output ``[batch, classes]`` Keras
        classifier that outputs logits (averaging probabilities would be another function).
        It is shared, not copied: the wrapper's weights are ``model``'s.
      name: the wrapper's name; default ``"<model.name>_flip_tta"`` (``model`` keeps its own
        name as the wrapper's inner layer).
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError("flip_averaged wraps single-input, single-output classifiers only.")
    spec = model.inputs[0]
    if len(spec.shape) != 4:
        raise ValueError(f"flip_averaged needs [batch, H, W, C] images, the model takes {tuple(spec.shape)}.")
    inputs = keras.Input(batch_shape=spec.shape, dtype=spec.dtype, name=spec.name or "image")
    # The flip only moves values: it keeps the input's dtype, whatever the global policy.
    mirrored = HorizontalFlip(name="horizontal_flip", dtype=spec.dtype)(inputs)
    # float32 mean: Average casts its inputs to its own (float32) dtype, so a mixed-precision
    # model's half-precision logits are not averaged in half precision.
    outputs = keras.layers.Average(name="flip_mean", dtype="float32")([model(inputs), model(mirrored)])
    return keras.Model(inputs, outputs, name=name or f"{model.name}_flip_tta")


def apply_tta(model: keras.Model, tta: str) -> keras.Model:
    """``model`` itself for ``tta="none"``, ``flip_averaged(model)`` for ``"flip"``."""
    return flip_averaged(model) if check_tta(tta) == "flip" else model
