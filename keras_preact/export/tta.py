"""Test-time augmentation in the exported artefacts: the views as a plain Keras model.

The views themselves (which shifts and mirrors each choice averages, how pixels move) are
:mod:`keras_preact.tta`'s, shared with the trainer's evaluation. This module wraps a classifier
that outputs logits into a functional model with the same input and output shapes, for the
exporter: ``tta_averaged(model, tta)`` stacks the views of :func:`keras_preact.tta.tta_views`
along the batch, calls the network once, and takes the mean over the views (:class:`ViewMean`);
``flip_averaged(model)`` is its ``"flip"`` case.

The views move pixels along the spatial axes of the wrapped model's input layout
(``data_format``: NHWC, or NCHW for a channels_first network). The exporter always wraps NHWC
networks (it rebuilds a channels_first ResNet channels_last first), so its signatures take NHWC.

The wrapper is built from serializable layers only (:class:`HorizontalFlip`, :class:`Translate`,
``keras.layers.Concatenate`` and :class:`ViewMean`, no ``Lambda``), so it round-trips through a
``.keras`` file with ``safe_mode=True``, and it converts to SavedModel, TFLite (builtin ops) and
ONNX like the bare network. The mean is taken in float32 whatever the wrapped model's dtype policy.
"""

from __future__ import annotations

import keras
from keras import ops

from keras_preact.common import LEGACY_DATA_FORMAT, PACKAGE, resolve_data_format, spatial_axes
from keras_preact.model import ResNet
from keras_preact.tta import check_tta, translate, tta_views


@keras.saving.register_keras_serializable(package=PACKAGE)
class HorizontalFlip(keras.layers.Layer):
    """Mirror images left-right (reverse the width axis of ``data_format``: NHWC or NCHW; None
    is ``keras.config.image_data_format()``), deterministically.

    Unlike ``keras.layers.RandomFlip`` it flips every image, in training and inference alike,
    and has no random state to export.
    """

    def __init__(self, data_format=None, **kwargs):
        super().__init__(**kwargs)
        self.data_format = resolve_data_format(data_format)
        self.supports_masking = True

    def call(self, inputs):
        if len(inputs.shape) != 4:
            raise ValueError(f"HorizontalFlip expects 4-D image batches, got shape {inputs.shape}.")
        return ops.flip(inputs, axis=spatial_axes(self.data_format)[1])

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "data_format": self.data_format}

    @classmethod
    def from_config(cls, config):
        return super().from_config({"data_format": LEGACY_DATA_FORMAT, **config})


@keras.saving.register_keras_serializable(package=PACKAGE)
class Translate(keras.layers.Layer):
    """Move images (NHWC or NCHW, ``data_format``) ``dy`` rows down and ``dx`` columns right,
    filling with zeros (:func:`translate`), deterministically, in training and inference alike."""

    def __init__(self, dy: int = 0, dx: int = 0, data_format=None, **kwargs):
        super().__init__(**kwargs)
        if int(dy) != dy or int(dx) != dx:
            raise ValueError(f"Translate shifts whole pixels, got dy={dy!r}, dx={dx!r}.")
        self.dy, self.dx = int(dy), int(dx)
        self.data_format = resolve_data_format(data_format)
        self.supports_masking = True

    def call(self, inputs):
        if len(inputs.shape) != 4:
            raise ValueError(f"Translate expects 4-D image batches, got shape {inputs.shape}.")
        return translate(inputs, self.dy, self.dx, self.data_format)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        return {**super().get_config(), "dy": self.dy, "dx": self.dx, "data_format": self.data_format}

    @classmethod
    def from_config(cls, config):
        return super().from_config({"data_format": LEGACY_DATA_FORMAT, **config})


@keras.saving.register_keras_serializable(package=PACKAGE)
class ViewMean(keras.layers.Layer):
    """The float32 mean over ``views`` blocks of a view-major batch: ``[views * batch, ...]``
    (view 0's batch, then view 1's, ...) to ``[batch, ...]``.

    Its dtype is float32 whatever the global policy, and it casts its input first, so a
    mixed-precision model's half-precision logits are not averaged in half precision.
    """

    def __init__(self, views: int, **kwargs):
        kwargs["dtype"] = "float32"
        super().__init__(**kwargs)
        if int(views) != views or views < 1:
            raise ValueError(f"ViewMean needs a positive whole number of views, got {views!r}.")
        self.views = int(views)

    def call(self, inputs):
        blocks = ops.reshape(ops.cast(inputs, "float32"), (self.views, -1) + tuple(inputs.shape[1:]))
        return ops.mean(blocks, axis=0)

    def compute_output_shape(self, input_shape):
        batch = input_shape[0]
        return (None if batch is None else batch // self.views, *input_shape[1:])

    def get_config(self) -> dict:
        return {**super().get_config(), "views": self.views}


def tta_averaged(model: keras.Model, tta: str, name: str | None = None,
                 data_format: str | None = None) -> keras.Model:
    """A functional model computing the float32 mean of ``model``'s logits over the views of
    ``tta`` (:func:`tta_views`): for ``"flip"``, ``mean(model(x), model(mirror(x)))``.

    Args:
      model: a single-input image (``[batch, H, W, C]``, or ``[batch, C, H, W]``),
        single-output ``[batch, classes]`` Keras classifier that outputs logits (averaging
        probabilities would be another function). It is shared, not copied: the wrapper's
        weights are ``model``'s.
      tta: ``"flip"``, ``"translate"`` or ``"flip_translate"`` (``"none"`` has nothing to
        wrap: use ``model``).
      name: the wrapper's name; default ``"<model.name>_<tta>_tta"`` (``model`` keeps its own
        name as the wrapper's inner layer).
      data_format: the layout of ``model``'s input; None: a ResNet's own
        (``model.architecture.data_format``), channels_last for any other model.
    """
    if check_tta(tta) == "none":
        raise ValueError('tta="none" has no views to average: use the model itself (apply_tta does).')
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError(f"{tta} test-time augmentation wraps single-input, single-output classifiers only.")
    spec = model.inputs[0]
    if len(spec.shape) != 4:
        raise ValueError(f"{tta} test-time augmentation needs 4-D image batches, the model takes "
                         f"{tuple(spec.shape)}.")
    if data_format is None:
        data_format = model.architecture.data_format if isinstance(model, ResNet) else "channels_last"
    data_format = resolve_data_format(data_format)
    inputs = keras.Input(batch_shape=spec.shape, dtype=spec.dtype, name=spec.name or "image")
    views, moved = [], {}
    for dy, dx, mirrored in tta_views(tta):
        # The views only move values: they keep the input's dtype, whatever the global policy.
        suffix = "" if (dy, dx) == (0, 0) else f"_{dy}_{dx}".replace("-", "m")
        if (dy, dx) not in moved:  # one Translate per shift, shared by the view and its mirror
            moved[dy, dx] = inputs if not suffix else Translate(
                dy, dx, data_format, name="translate" + suffix, dtype=spec.dtype)(inputs)
        view = moved[dy, dx]
        if mirrored:
            view = HorizontalFlip(data_format, name="horizontal_flip" + suffix,
                                  dtype=spec.dtype)(view)
        views.append(view)
    # One call of the network on the views stacked along the batch, not one call per view: the
    # exported graphs then hold the network once (a per-view call repeats it in every SavedModel
    # function and TFLite subgraph: 6.0 MB of saved_model.pb for ten views of ResNet-56 against
    # 1.8 MB for two), and the convolutions run on one larger batch.
    stacked = keras.layers.Concatenate(axis=0, name="views", dtype=spec.dtype)(views)
    mean = ViewMean(len(views), name=f"{tta}_mean")(model(stacked))
    return keras.Model(inputs, mean, name=name or f"{model.name}_{tta}_tta")


def flip_averaged(model: keras.Model, name: str | None = None) -> keras.Model:
    """``tta_averaged(model, "flip")``: the mean of the logits of each image and its mirror image."""
    return tta_averaged(model, "flip", name)


def apply_tta(model: keras.Model, tta: str) -> keras.Model:
    """``model`` itself for ``tta="none"``, else ``tta_averaged(model, tta)``."""
    return model if check_tta(tta) == "none" else tta_averaged(model, tta)
