"""The batch the diagnostic measures on: real images, evaluation preprocessing.

The images are picked evenly across an image folder's sorted file list (so every class is
represented, unlike the first batch of a split, which holds one class) and preprocessed as for
evaluation: the measurement is deterministic and reflects the data the net is trained on.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_preact.data import (
    cifar10_sample_dir,
    decode_image,
    list_image_folder,
    preprocess_for_eval,
)

SMALL_IMAGE_SIDE = 64  # folders of images at most this large use the CIFAR recipe


def load_batch(data_dir: str | None, split: str, batch_size: int, recipe: str = "auto") -> dict:
    """``batch_size`` images of ``data_dir/<split>/<class>/`` (default: the CIFAR-10 sample).

    Returns a dict with ``images`` (float32 ``[B, h, w, 3]``), ``labels`` (int32 ``[B]``),
    ``num_classes``, ``recipe``, ``root`` and ``files``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}.")
    root = data_dir or cifar10_sample_dir()
    paths, labels, class_names = list_image_folder(root, split)
    if batch_size > len(paths):
        raise ValueError(
            f"batch_size {batch_size} exceeds the {len(paths)} images of {root}/{split}.")
    picks = np.unique(np.linspace(0, len(paths) - 1, batch_size).round().astype(int))
    decoded = [decode_image(tf.io.read_file(paths[i])) for i in picks]
    if recipe == "auto":
        side = max(decoded[0].shape[0], decoded[0].shape[1])
        recipe = "cifar" if side <= SMALL_IMAGE_SIDE else "imagenet_224"
    images = tf.stack([preprocess_for_eval(image, recipe) for image in decoded])
    return {
        "images": images.numpy(),
        "labels": np.array([labels[i] for i in picks], np.int32),
        "num_classes": len(class_names),
        "recipe": recipe,
        "root": root,
        "files": [paths[i] for i in picks],
    }
