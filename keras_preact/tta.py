"""Test-time augmentation (TTA) views: flip and one-pixel translations of image batches.

A TTA choice names a set of *views* of each image; the logits of the views are averaged.

* ``"flip"``: the image and its mirror image (left-right: the width axis, 2 in NHWC, 3 in NCHW
  batches, ``data_format="channels_first"``): two forward passes.
* ``"translate"``: the image and its copies shifted by one pixel up, down, left and right with
  zero fill (:data:`TRANSLATE_SHIFTS`): five forward passes.
* ``"flip_translate"``: the five translated views and their mirror images: ten forward passes.

Why: a CIFAR/ImageNet classifier is trained with random horizontal flips and, on CIFAR, with
random translations of up to 4 pixels (zero padding and a random 32x32 crop, the augmentation
of He et al., "Deep Residual Learning", Sec. 4.2, which the paper follows); the mirror image and
slightly shifted copies are equally valid views of the same object, and the mean of their
logits depends less on where the object happens to sit in the frame than any one view does.
Zero fill is the training augmentation's: the views are taken of the *normalised* image, whose
padding is zero.

This module sits below both the trainer and the exporter (``docs/architecture.md``): the
trainer's evaluation (``--eval_flip`` / ``--eval_translate``) averages with :func:`tta_logits`,
and the exporter's wrapper model (``keras_preact.export.tta.tta_averaged``) builds its views
from :func:`tta_views` and moves pixels with :func:`translate`, so the two cannot disagree.
Only ``keras.ops``: it runs on every Keras backend. ``docs/training.md`` and
``docs/serving.md`` give what each choice measured.
"""

from __future__ import annotations

from keras import ops

from keras_preact.common import DATA_FORMATS, check_choice, spatial_axes

TTA_CHOICES = ("none", "flip", "translate", "flip_translate")
# (rows down, columns right) of the translated views: one pixel each way. Chosen by measurement
# on the 110-minute ResNet-56 run's weights against diagonal shifts, 2-pixel shifts and the full
# 3x3 and 5x5 grids (docs/training.md, "Test-time translation").
TRANSLATE_SHIFTS = ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))


def tta_name(flip: bool, translate: bool) -> str:
    """The TTA choice of the trainer's ``--eval_flip`` / ``--eval_translate`` pair."""
    return {(False, False): "none", (True, False): "flip", (False, True): "translate",
            (True, True): "flip_translate"}[(bool(flip), bool(translate))]


def tta_views(tta) -> tuple[tuple[int, int, bool], ...]:
    """The views a TTA choice averages, as ``(rows down, columns right, mirrored)`` triples."""
    shifts = TRANSLATE_SHIFTS if check_tta(tta) in ("translate", "flip_translate") else ((0, 0),)
    mirrors = (False, True) if tta in ("flip", "flip_translate") else (False,)
    return tuple((dy, dx, mirror) for dy, dx in shifts for mirror in mirrors)


def translate(images, dy: int, dx: int, data_format: str = "channels_last"):
    """``images`` (NHWC, or NCHW for ``data_format="channels_first"``) moved ``dy`` rows down
    and ``dx`` columns right, vacated pixels zero.

    A static pad-and-slice (TFLite PAD + STRIDED_SLICE, ONNX Pad + Slice): the content that
    leaves the frame is dropped, as in the training crop of a zero-padded image.
    """
    check_choice("data_format", data_format, DATA_FORMATS)
    if dy == 0 and dx == 0:
        return images
    h_axis, w_axis = spatial_axes(data_format)
    height, width = images.shape[h_axis], images.shape[w_axis]
    if height is None or width is None:
        raise ValueError(f"translate needs a static image size, got shape {images.shape}.")
    if abs(dy) >= height or abs(dx) >= width:
        raise ValueError(f"Shift ({dy}, {dx}) moves a {height}x{width} image out of its frame.")
    widths = [[0, 0], [0, 0], [0, 0], [0, 0]]
    widths[h_axis], widths[w_axis] = [max(dy, 0), max(-dy, 0)], [max(dx, 0), max(-dx, 0)]
    padded = ops.pad(images, widths)
    top, left = max(-dy, 0), max(-dx, 0)
    window = [slice(None)] * 4
    window[h_axis], window[w_axis] = slice(top, top + height), slice(left, left + width)
    return padded[tuple(window)]


def view_of(images, dy: int, dx: int, mirrored: bool, data_format: str = "channels_last"):
    """One view of a batch: shifted, then mirrored (the view set is symmetric, so the order of
    the two does not change the set)."""
    moved = translate(images, dy, dx, data_format)
    return ops.flip(moved, axis=spatial_axes(data_format)[1]) if mirrored else moved


def tta_logits(model, images, tta, data_format: str = "channels_last"):
    """The float32 mean of ``model``'s logits over the views of ``tta`` (``model(images)``
    itself for ``"none"``). ``model`` is any callable taking the batch ``images``, NHWC or,
    with ``data_format="channels_first"``, NCHW (a channels_first ResNet's input)."""
    views = tta_views(tta)
    if len(views) == 1:
        return model(images)
    total = None
    for dy, dx, mirrored in views:
        logits = ops.cast(model(view_of(images, dy, dx, mirrored, data_format)), "float32")
        total = logits if total is None else total + logits
    return total / float(len(views))


def check_tta(tta) -> str:
    """``tta`` if it is one of :data:`TTA_CHOICES`, else a ValueError naming them."""
    if tta not in TTA_CHOICES:
        raise ValueError(
            f"Unknown test-time augmentation tta={tta!r}. Valid choices: "
            f"{', '.join(map(repr, TTA_CHOICES))}."
        )
    return tta
