"""A small split held decoded in memory, and training batches that are a pure function of the step.

For CIFAR-sized data (50,000 images of 32x32 are 150 MB as ``uint8``) decoding every JPEG
again each epoch is wasted work: on 2 CPU cores the per-example pipeline costs about 0.5 ms
per image, a third of a ResNet-20 training step. :class:`InMemorySplit` decodes a split once
(through the same image guard, decoder and evaluation window as
:func:`~keras_preact.data.build_dataset`) and then builds each training batch from the stored
pixels with whole-batch ops (:func:`~keras_preact.data.augment.cifar_augment_batch`).

Each training batch is a function of ``(seed, step)`` only:

* the order of epoch ``e`` is a stateless shuffle of the example indices seeded by
  ``(seed, e)``; batch ``b`` of the epoch is its ``b``-th slice (the last partial batch of an
  epoch is dropped, as in the streaming pipeline);
* the crops and flips of step ``s`` are drawn from a stateless seed folded from ``(seed, s)``.

So ``train_batches(first_step)`` starts anywhere with nothing to replay, and a run resumed at
step ``s`` sees exactly the batches the uninterrupted run saw from ``s`` on (exact resume).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_preact.data.arrays import DEFAULT_MAX_BYTES, checked_pixels  # above it, a split is streamed
from keras_preact.data.augment import cifar_augment_batch
from keras_preact.data.pipeline import DatasetInfo, load_pixels
from keras_preact.data.preprocess import normalize

AUGMENTATIONS = ("cifar", "none")
_SHUFFLE_STREAM, _AUGMENT_STREAM = 1, 2  # keep the two random streams of a seed apart


class InMemorySplit:
    """Decoded pixels ``uint8 [N, h, w, 3]`` and labels ``int32 [N]`` of one split, with ``info``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, info: DatasetInfo):
        self.images, self.labels = checked_pixels(images, labels)
        self.info = info

    @classmethod
    def load(cls, source, split: str, *, preprocessing: str | None = None, data_dir=None, manual_dir=None,
             strict: bool = False, max_bytes: int = DEFAULT_MAX_BYTES,
             only_preprocessing: str | None = None) -> "InMemorySplit":
        """Decode ``split`` of ``source`` (any source :func:`build_dataset` reads) into memory.

        A ``ValueError`` before decoding anything if the split would take more than
        ``max_bytes`` or (given ``only_preprocessing``) its images call for another preprocessing.
        """
        images, labels, info = load_pixels(
            source, split, preprocessing=preprocessing, data_dir=data_dir, manual_dir=manual_dir,
            strict=strict, max_bytes=max_bytes, only_preprocessing=only_preprocessing,
        )
        return cls(images, labels, info)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def steps_per_epoch(self, batch_size: int) -> int:
        return len(self) // batch_size

    def train_batches(self, batch_size: int, *, seed: int = 0, augment: str = "cifar"):
        """A function ``first_step -> tf.data.Dataset`` of the training batches from that step on.

        Batches are ``(images float32 [B, h, w, 3] normalised, labels int32 [B])``, endless
        (the trainer decides when to stop); pass the function to ``Trainer.fit``.
        """
        if augment not in AUGMENTATIONS:
            raise ValueError(f"In-memory augmentation must be one of {AUGMENTATIONS}, got {augment!r}.")
        if augment == "cifar" and self.images.shape[1:3] != (32, 32):
            raise ValueError(f"The 'cifar' augmentation needs 32x32 images, got {self.images.shape[1:3]}.")
        per_epoch = self.steps_per_epoch(batch_size)
        if per_epoch < 1:
            raise ValueError(f"batch_size {batch_size} is larger than the {len(self)} examples.")
        images, labels = tf.constant(self.images), tf.constant(self.labels)
        preprocessing = self.info.preprocessing
        indices = tf.range(len(self), dtype=tf.int32)

        def batch_at(step):
            epoch, position = step // per_epoch, step % per_epoch
            order_seed = tf.random.experimental.stateless_fold_in(
                tf.constant([seed, _SHUFFLE_STREAM], tf.int64), epoch)
            order = tf.random.experimental.stateless_shuffle(indices, order_seed)
            chosen = order[position * batch_size:(position + 1) * batch_size]
            batch = normalize(tf.gather(images, chosen), preprocessing)
            if augment == "cifar":
                batch = cifar_augment_batch(batch, tf.random.experimental.stateless_fold_in(
                    tf.constant([seed, _AUGMENT_STREAM], tf.int64), step))
            batch.set_shape([batch_size, *self.images.shape[1:]])
            return batch, tf.gather(labels, chosen)

        def batches(first_step: int = 0) -> tf.data.Dataset:
            steps = tf.data.Dataset.range(int(first_step), np.iinfo(np.int64).max)
            return steps.map(batch_at, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).prefetch(
                tf.data.AUTOTUNE)

        return batches

    def eval_batches(self, batch_size: int) -> tf.data.Dataset:
        """One pass in order, normalised, the last batch partial: what ``build_dataset`` gives."""
        preprocessing = self.info.preprocessing
        ds = tf.data.Dataset.from_tensor_slices((self.images, self.labels)).batch(batch_size)
        return ds.map(lambda x, y: (normalize(x, preprocessing), y), num_parallel_calls=tf.data.AUTOTUNE).prefetch(
            tf.data.AUTOTUNE)
