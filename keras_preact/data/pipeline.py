"""``build_dataset``: batches of ``(images float32 [B, h, w, 3], labels int32 [B])`` from any source.

Order of the stages and why:

1. list the source (fails fast on missing folders, empty splits or classes);
2. shuffle (training): the whole file list for folders (paths are cheap), a buffer of encoded
   records for TFDS;
3. zip in one random seed per example (training), drawn from ``tf.data.Dataset.random``
   seeded by ``seed``, so stateless augmentation is reproducible whatever the parallelism;
4. decode + augment/preprocess in parallel (``AUTOTUNE``), order-preserving when seeded;
5. batch, prefetch. Nothing repeats: the trainer decides how many epochs.

Every image passes the shared image-safety guard (:mod:`keras_preact.data.guard`: declared size
and pixel limits read from the header before decoding) inside ``decode_image``. Files that are
refused or cannot be decoded (image folders) are dropped by ``ignore_errors`` and named from
the gap they leave in the numbered stream (:func:`_decode_files_naming_failures`), so a corrupt
JPEG is skipped, counted and logged once (or, with ``strict=True``, fails with its name), at
no measurable cost per example.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import numpy as np
import tensorflow as tf

from keras_preact.data import sources
from keras_preact.data.augment import check_augment, preprocess_for_train
from keras_preact.data.bad_files import BadFileLog
from keras_preact.data.decode import decode_image
from keras_preact.data.folders import FOLDER_PREFIX, SAMPLE_SOURCE
from keras_preact.data.preprocess import eval_pixels, get_preprocessing, preprocess_for_eval
from keras_preact.data.sample import cifar10_sample_dir

logger = logging.getLogger("keras_preact.data")

DEFAULT_TFDS_SHUFFLE_BUFFER = 10_000  # encoded records; ImageNet JPEGs average ~110 kB
_HISTORY = 32  # preceding file names each element carries, to name dropped files


class NotForMemory(ValueError):
    """A split that ``load_pixels`` refuses to hold in memory (too large, or not that preprocessing's)."""


@dataclass
class DatasetInfo:
    """What a trainer or exporter needs to know about a dataset built by :func:`build_dataset`."""

    num_classes: int
    class_names: list
    num_examples: int  # examples listed in the split (before any undecodable file is skipped)
    image_size: tuple  # (height, width) of the images in the batches
    preprocessing: str
    augment: str  # the augmentation applied ("none" when training=False)
    source: str
    split: str
    bad_files: BadFileLog = field(default_factory=BadFileLog)  # files skipped so far (folders)


def _default_preprocessing(source: str, raw: sources.RawSource) -> str:
    if source in ("cifar10", "cifar100", SAMPLE_SOURCE):
        return "cifar"
    if source == "imagenet2012":
        return "imagenet_224"
    # An image folder: small images are CIFAR-like, anything else is treated like ImageNet.
    first_path = next(iter(raw.dataset.take(1)))[0]
    try:
        shape = decode_image(tf.io.read_file(first_path)).shape
    except tf.errors.InvalidArgumentError:
        return "imagenet_224"
    preprocessing = "cifar" if max(shape[0], shape[1]) <= 64 else "imagenet_224"
    logger.info("Image folder %s: first image is %dx%d, using preprocessing %r.", source, shape[0], shape[1],
                preprocessing)
    return preprocessing


def _dataset_info(name, split, raw, preprocessing, augment, size) -> DatasetInfo:
    return DatasetInfo(
        num_classes=len(raw.class_names),
        class_names=list(raw.class_names),
        num_examples=raw.num_examples,
        image_size=(size, size),
        preprocessing=preprocessing,
        augment=augment,
        source=name,
        split=split,
    )


def _resolve_source(source, split, data_dir, manual_dir, training, seed) -> tuple:
    """``(canonical source name, RawSource)``; the folder and sample sources list files."""
    source = os.fspath(source)
    if source == SAMPLE_SOURCE:
        return source, sources.folder_source(cifar10_sample_dir(), split)
    if source in sources.TFDS_SOURCES:
        raw = sources.tfds_source(
            source, split, data_dir=data_dir, manual_dir=manual_dir, shuffle_files=training, seed=seed
        )
        return source, raw
    root = source[len(FOLDER_PREFIX) :] if source.startswith(FOLDER_PREFIX) else source
    if source.startswith(FOLDER_PREFIX) or os.sep in source or os.path.isdir(source):
        return FOLDER_PREFIX + root, sources.folder_source(root, split)
    valid = ", ".join(repr(s) for s in sources.TFDS_SOURCES + (SAMPLE_SOURCE,))
    raise ValueError(
        f"Unknown source {source!r}. Valid choices: {valid}, 'folder:<root>' or a path to an image folder."
    )


def _decode_files_naming_failures(ds, transform, bad_files: BadFileLog, strict: bool, image_shape):
    """Map ``(path, label, seed)`` to ``(image, label)``, skipping (or failing on) undecodable files.

    ``ignore_errors`` drops a failed element without saying which it was, so each element is
    numbered and carries the paths of the ``_HISTORY`` elements before it; after the drop, a
    gap in the numbers names the missing files from the next survivor's history. An end
    marker after the last file makes trailing failures visible too. Order is kept (the gap
    test needs it), which costs nothing measurable next to decoding.
    """
    end = tf.data.Dataset.from_tensors((tf.constant(""), tf.constant(-1, tf.int32), tf.zeros([2], tf.int64)))
    ds = ds.concatenate(end).enumerate()

    def remember(history, element):
        index, (path, label, seed) = element
        return tf.concat([history[1:], [path]], 0), (index, path, label, seed, history)

    ds = ds.scan(tf.fill([_HISTORY], ""), remember)

    def load(index, path, label, seed, history):
        is_end = tf.equal(label, -1)
        image = tf.cond(
            is_end,
            lambda: tf.zeros(image_shape, tf.float32),
            lambda: tf.ensure_shape(transform(tf.io.read_file(path), seed), image_shape),
        )
        return index, image, label, history

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).ignore_errors()

    def record(names, unnamed):
        bad_files.record(names.numpy().tolist())
        if int(unnamed):
            bad_files.record_unnamed(int(unnamed))
        return tf.constant(0, tf.int32)

    def report(last_index, index, history):
        missing = tf.range(last_index + 1, index)  # numbers of the dropped elements
        back = index - missing  # 1 = the element just before this one
        named = back <= _HISTORY
        names = tf.gather(history, _HISTORY - tf.boolean_mask(back, named))
        unnamed = tf.reduce_sum(tf.cast(tf.logical_not(named), tf.int32))
        if strict:
            failed = tf.debugging.Assert(
                False,
                ["keras_preact: cannot decode image file(s) (not an image, truncated, corrupt or above the image-size limits):", names,
                 "Remove them, or pass strict=False to skip such files."],
                summarize=_HISTORY,
            )
            with tf.control_dependencies([failed]):
                return tf.constant(0, tf.int32)
        return tf.py_function(record, [names, unnamed], tf.int32)

    def check(last_index, element):
        index, image, label, history = element
        # Only a gap (rare) pays for naming; the common path is one comparison.
        done = tf.cond(
            index > last_index + 1,
            lambda: report(last_index, index, history),
            lambda: tf.constant(0, tf.int32),
        )
        with tf.control_dependencies([done]):
            index = tf.identity(index)
        return index, (image, label)

    ds = ds.scan(tf.constant(-1, tf.int64), check)
    return ds.filter(lambda image, label: label >= 0)


def build_dataset(
    source,
    split: str,
    *,
    batch_size: int,
    training: bool,
    preprocessing: str | None = None,
    augment: str = "auto",
    color: bool = False,
    seed: int | None = None,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    shuffle_buffer: int | None = None,
    drop_remainder: bool | None = None,
    strict: bool = False,
):
    """Build an input pipeline; returns ``(tf.data.Dataset, DatasetInfo)``.

    The dataset yields ``(images float32 [B, h, w, 3], labels int32 [B])``, normalised
    (see :mod:`keras_preact.data.preprocess`), and is finite: one pass over the split.

    Args:
      source: ``"cifar10"``, ``"cifar100"``, ``"imagenet2012"`` (TFDS), ``"cifar10_sample"``
        (the CIFAR-10 sample inside the package), or ``"folder:<root>"`` / a path to an image
        folder ``root/<split>/<class>/<image>`` (class names sorted give the labels).
      split: e.g. ``"train"``, ``"test"``, ``"validation"`` (TFDS split syntax works for TFDS).
      batch_size: examples per batch.
      training: True shuffles and augments; False is the deterministic evaluation
        preprocessing (:func:`preprocess_for_eval`), in file/record order.
      preprocessing: ``"cifar"``, ``"imagenet_224"`` or ``"imagenet_320"`` (evaluation only);
        default: ``"cifar"`` for CIFAR sources, ``"imagenet_224"`` for ImageNet, and for a
        folder, ``"cifar"`` if its first image is at most 64 pixels on a side.
      augment: ``"cifar"``, ``"scale"``, ``"inception"`` or ``"none"``
        (:mod:`keras_preact.data.augment`); ``"auto"``: ``"cifar"`` for the CIFAR preprocessing,
        ``"scale"`` (the paper's) for ImageNet. Ignored when ``training`` is False.
      color: add colour and lighting augmentation (training only).
      seed: makes shuffling and augmentation reproducible (same seed, same batches).
      data_dir: TFDS data directory. manual_dir: where the ILSVRC2012 tar files are.
      shuffle_buffer: examples in the shuffle buffer; default: the whole file list for
        folders, ``min(num_examples, 10000)`` encoded records for TFDS.
      drop_remainder: drop the last partial batch; default True when training, else False.
      strict: fail on the first undecodable file (naming it) instead of skipping it.
    """
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
    if preprocessing is not None:
        get_preprocessing(preprocessing)  # validate before listing anything
    name, raw = _resolve_source(source, split, data_dir, manual_dir, training, seed)
    preprocessing = preprocessing or _default_preprocessing(name, raw)
    if training:
        if augment == "auto":
            augment = "cifar" if preprocessing == "cifar" else "scale"
        check_augment(augment, preprocessing)
        size = get_preprocessing(preprocessing).train_size
    else:
        augment = "none"
        size = get_preprocessing(preprocessing).crop
    if drop_remainder is None:
        drop_remainder = training
    info = _dataset_info(name, split, raw, preprocessing, augment, size)

    def transform(image_bytes, seed_pair):
        if training:
            return preprocess_for_train(image_bytes, seed_pair, preprocessing, augment, color)
        return preprocess_for_eval(decode_image(image_bytes), preprocessing)

    ds = raw.dataset
    if training:
        if shuffle_buffer is None:
            shuffle_buffer = raw.num_examples if raw.from_files else min(raw.num_examples, DEFAULT_TFDS_SHUFFLE_BUFFER)
        ds = ds.shuffle(max(1, shuffle_buffer), seed=seed, reshuffle_each_iteration=True)
        # One [2] seed per example; a new stream each epoch, the same streams on every run.
        seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    else:
        seeds = tf.data.Dataset.from_tensors(tf.zeros([2], tf.int64)).repeat()
    ds = tf.data.Dataset.zip((ds, seeds)).map(lambda xy, s: (xy[0], xy[1], s))
    # Order is kept unless the user asked for randomness without a seed.
    deterministic = None if (training and seed is None) else True
    if raw.from_files:
        ds = _decode_files_naming_failures(ds, transform, info.bad_files, strict, (size, size, 3))
    else:
        ds = ds.map(
            lambda x, label, s: (transform(x, s), label),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=deterministic,
        )
        if not strict:  # a record refused by the image guard or the decoder is skipped, logged
            ds = ds.ignore_errors(log_warning=True)
    ds = ds.batch(batch_size, drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
    return ds, info


def load_pixels(
    source,
    split: str,
    *,
    preprocessing: str | None = None,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    strict: bool = False,
    max_bytes: int | None = None,
    only_preprocessing: str | None = None,
):
    """Decode a whole split once: ``(images uint8 [N, crop, crop, 3], labels int32 [N], info)``.

    Every image goes through the same guard, decoder and evaluation window
    (:func:`~keras_preact.data.preprocess.eval_pixels`) as :func:`build_dataset`, and bad
    files are skipped and counted (or, with ``strict``, fail) the same way; the pixels are
    kept unnormalised as ``uint8`` (a quarter of the float32 size: 150 MB for CIFAR-10's
    training split). ``max_bytes``: refuse, before decoding anything, a split whose decoded
    size would exceed it (``NotForMemory``, a ``ValueError`` saying how large it is).
    ``only_preprocessing``: likewise refuse a split whose (default) preprocessing is another one.
    """
    if preprocessing is not None:
        get_preprocessing(preprocessing)
    name, raw = _resolve_source(source, split, data_dir, manual_dir, False, None)
    preprocessing = preprocessing or _default_preprocessing(name, raw)
    if only_preprocessing is not None and preprocessing != only_preprocessing:
        raise NotForMemory(f"{name} {split}: its images call for the {preprocessing!r} preprocessing, "
                           f"not {only_preprocessing!r}.")
    size = get_preprocessing(preprocessing).crop
    needed = raw.num_examples * size * size * 3
    if max_bytes is not None and needed > max_bytes:
        raise NotForMemory(
            f"{name} {split}: {raw.num_examples} images of {size}x{size} need {needed / 2**20:.0f} MiB "
            f"in memory, above the limit of {max_bytes / 2**20:.0f} MiB; stream it instead."
        )
    info = _dataset_info(name, split, raw, preprocessing, "none", size)

    def transform(image_bytes, seed_pair):
        del seed_pair
        return eval_pixels(decode_image(image_bytes), preprocessing)

    seeds = tf.data.Dataset.from_tensors(tf.zeros([2], tf.int64)).repeat()
    ds = tf.data.Dataset.zip((raw.dataset, seeds)).map(lambda xy, s: (xy[0], xy[1], s))
    if raw.from_files:
        ds = _decode_files_naming_failures(ds, transform, info.bad_files, strict, (size, size, 3))
    else:
        ds = ds.map(lambda x, label, s: (transform(x, s), label), num_parallel_calls=tf.data.AUTOTUNE)
        if not strict:
            ds = ds.ignore_errors(log_warning=True)
    ds = ds.map(lambda image, label: (tf.cast(tf.round(image), tf.uint8), label))
    images, labels = [], []
    for image_batch, label_batch in ds.batch(1024).prefetch(2):
        images.append(image_batch.numpy())
        labels.append(label_batch.numpy())
    if not images:
        raise ValueError(f"{name} {split}: no image could be decoded.")
    return np.concatenate(images), np.concatenate(labels).astype(np.int32), info
