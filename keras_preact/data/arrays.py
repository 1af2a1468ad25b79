"""A CIFAR-sized split held as NumPy arrays, and training batches computed with NumPy.

This is the input pipeline of Keras' ``model.fit`` on every backend (TensorFlow, JAX, PyTorch).
:class:`ArraySplit` decodes a split once into ``uint8 [N, 32, 32, 3]`` pixels and ``int32 [N]``
labels (50,000 CIFAR images are 150 MB), and each training batch is then computed from those
arrays with NumPy. Why NumPy and not ``tf.data``:

* **a JAX- or PyTorch-only install trains**: image folders (and the CIFAR-10 sample shipped in
  the package) are read with Pillow and the standard library; importing this module never
  imports TensorFlow. Only TFDS datasets (``cifar10``, ``cifar100``) still need it, and are
  read through the ``tf.data`` pipeline (:func:`keras_preact.data.pipeline.load_pixels`).
* **the same batches on every backend**: nothing depends on the backend's random numbers or
  ops, so a seed gives bit-identical batches under TensorFlow, JAX and PyTorch.
* **exact resume**: a batch is a pure function of ``(seed, step)``. A run resumed at step ``s``
  sees exactly the batches the uninterrupted run saw from ``s`` on, with nothing to replay.

The batch of global step ``s`` (``P = steps_per_epoch(B) = N // B``; an epoch's last partial
batch is dropped, as in the streaming pipeline):

1. epoch ``e = s // P`` orders the examples by a permutation drawn from
   ``np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, SHUFFLE_STREAM, e])))``
   (what ``np.random.default_rng([seed, SHUFFLE_STREAM, e])`` builds today, with the bit
   generator named so that a change of NumPy's default cannot change the batches); the
   batch is slice ``s % P`` of that order;
2. the pixels are normalised, ``(x - CIFAR_MEAN) / CIFAR_STD`` in float32;
3. with ``augment=True``, the paper's CIFAR augmentation (He et al., "Identity Mappings in
   Deep Residual Networks", ECCV 2016, Sec. 4.1 and appendix, following the ResNet paper,
   CVPR 2016, Sec. 4.2): "4 pixels are padded on each side, and a 32x32 crop is randomly
   sampled from the padded image or its horizontal flip". The padding is zeros of the
   normalised image (the mean colour), as in fb.resnet.torch and the ``tf.data`` pipeline. Crop
   offsets (uniform in 0..8 per axis) and flips (probability 1/2) are drawn for the whole
   global batch from ``SeedSequence([seed, AUGMENT_STREAM, s])``, and one gather crops and
   mirrors the whole batch (no Python loop per image).

``shard=(index, count)`` returns rows ``[index * B/count, (index + 1) * B/count)`` of that global
batch, for multi-process data parallelism: each process builds only its part, and the parts
concatenate to the unsharded batch exactly (the random draws are made for the global batch
and then sliced, so sharding never changes a pixel).

For ``model.fit``, :meth:`ArraySplit.train_sequence` wraps a run of steps as a
``keras.utils.PyDataset`` (:class:`TrainSequence`); pass ``shuffle=False`` to ``fit``, or
Keras reorders the steps inside each of its epochs. :meth:`ArraySplit.eval_batches` is one
pass over the split in order (:class:`EvalSequence`, a PyDataset too, so it is both a plain
iterable and ``model.evaluate``/``predict`` input).

Decoding with Pillow on one core takes about 0.6 s for the 5,000 JPEGs of the shipped sample's
training split (100 us an image). A ``ThreadPoolExecutor`` of 2 or 4 threads was no faster on
2 cores (each 32x32 image is mostly Python-level work under the GIL), so files are decoded in
order, in one thread.
"""

from __future__ import annotations

import importlib
import operator
import os
from dataclasses import dataclass, field

import keras
import numpy as np
from PIL import Image

from keras_preact.data.bad_files import BadFileLog
from keras_preact.common import DATA_FORMATS
from keras_preact.data.constants import CIFAR_MEAN, CIFAR_STD
from keras_preact.data.folders import FOLDER_PREFIX, SAMPLE_SOURCE, list_image_folder
from keras_preact.data.sample import cifar10_sample_dir

# Splits above this decoded size are refused (the streaming tf.data pipeline reads them).
DEFAULT_MAX_BYTES = 4 * 2**30
IMAGE_SIZE = 32  # CIFAR-sized images only: the pipeline of the CIFAR recipes
CIFAR_PAD = 4  # pixels of zero padding on each side before the random 32x32 crop
# The two random streams of a seed (epoch orders, augmentation draws) kept apart.
SHUFFLE_STREAM, AUGMENT_STREAM = 1, 2
# TFDS datasets read through TensorFlow (the other TFDS source, imagenet2012, is not CIFAR-sized).
TFDS_SOURCES = ("cifar10", "cifar100")
_MEAN = np.asarray(CIFAR_MEAN, np.float32)
_STD = np.asarray(CIFAR_STD, np.float32)
# What Pillow raises on a file that is not an image, is truncated or corrupt, or declares a
# size beyond its decompression-bomb limit.
_UNDECODABLE = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


def random_generator(seed: int, stream: int, counter: int) -> np.random.Generator:
    """The NumPy generator of ``(seed, stream, counter)``: PCG64 seeded by a ``SeedSequence``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, stream, counter])))


def normalize_cifar(pixels: np.ndarray) -> np.ndarray:
    """``(pixels - CIFAR_MEAN) / CIFAR_STD`` per channel, float32; ``pixels`` in 0-255 units."""
    normalized = np.asarray(pixels).astype(np.float32)  # a new array: the in-place ops below are safe
    normalized -= _MEAN
    normalized /= _STD
    return normalized


def augmentation_draws(seed: int, step: int, batch_size: int):
    """Crop offsets ``int64 [B, 2]`` (row, column; each in ``0..2*CIFAR_PAD``) and flips ``bool [B]``
    of the global batch of ``step``."""
    generator = random_generator(seed, AUGMENT_STREAM, step)
    offsets = generator.integers(0, 2 * CIFAR_PAD + 1, size=(batch_size, 2))
    flips = generator.random(batch_size) < 0.5
    return offsets, flips


def pad_crop_flip(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """Zero-pad ``images [B, h, w, C]`` by ``CIFAR_PAD`` on each side, crop ``h x w`` at ``offsets``,
    and mirror the crops where ``flips``: one gather for the whole batch."""
    count, height, width, _ = images.shape
    padded = np.pad(images, ((0, 0), (CIFAR_PAD, CIFAR_PAD), (CIFAR_PAD, CIFAR_PAD), (0, 0)))
    rows = offsets[:, :1] + np.arange(height)  # [B, h]: the padded rows of each crop
    # A mirrored crop reads its window's columns right to left.
    columns = offsets[:, 1:] + np.where(flips[:, None], np.arange(width)[::-1], np.arange(width))
    return padded[np.arange(count)[:, None, None], rows[:, :, None], columns[:, None, :]]


def check_data_format(data_format: str) -> str:
    """``data_format`` if it is one of Keras' two names (a ValueError naming them otherwise)."""
    if data_format not in DATA_FORMATS:
        raise ValueError(f"data_format must be one of {', '.join(DATA_FORMATS)}, got {data_format!r}.")
    return data_format


def in_layout(images: np.ndarray, data_format: str) -> np.ndarray:
    """NHWC ``images`` as ``data_format`` says: themselves, or NCHW (contiguous) for a
    channels_first network."""
    if check_data_format(data_format) == "channels_first":
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    return images


def checked_pixels(images, labels) -> tuple:
    """``(images uint8 [N, h, w, 3], labels int32 [N])`` as arrays; a ValueError saying which
    does not have that form."""
    images, labels = np.asarray(images), np.asarray(labels)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be uint8 [N, h, w, 3], got {images.dtype} {images.shape}.")
    if labels.shape != (images.shape[0],):
        raise ValueError(f"labels must be [N] = [{images.shape[0]}], got {labels.shape}.")
    return images, labels.astype(np.int32)


def _check_shard(shard, batch_size: int) -> tuple:
    index, count = (operator.index(v) for v in shard)
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"shard must be (index, count) with 0 <= index < count, got {tuple(shard)}.")
    if batch_size % count:
        raise ValueError(f"batch_size {batch_size} is not divisible by the {count} shards.")
    return index, count


def _check_seed(seed) -> int:
    seed = operator.index(seed)
    if seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed}.")
    return seed


def _decode_image_file(path: str, strict: bool, bad_files: BadFileLog):
    """``uint8 [32, 32, 3]`` pixels of one file; None (recorded in ``bad_files``) if undecodable."""
    try:
        with Image.open(path) as image:
            size = image.size
            pixels = np.asarray(image.convert("RGB")) if size == (IMAGE_SIZE, IMAGE_SIZE) else None
    except _UNDECODABLE as error:
        if strict:
            raise ValueError(f"Cannot decode image file {path}: {error}") from error
        bad_files.record([path])
        return None
    if pixels is None:
        raise ValueError(
            f"{path} is {size[0]}x{size[1]} pixels (width x height); the NumPy pipeline takes "
            f"CIFAR-sized {IMAGE_SIZE}x{IMAGE_SIZE} images only (the tf.data pipeline reads other sizes)."
        )
    return pixels


@dataclass(eq=False, repr=False)
class ArraySplit:
    """One split as arrays: ``images`` uint8 ``[N, h, w, 3]`` (32x32 from :meth:`load`), ``labels``
    int32 ``[N]``, the ``class_names`` (label ``i`` is ``class_names[i]``), where it came from
    (``source``, ``split``), and the undecodable files skipped while loading (``bad_files``:
    ``count`` and ``files``)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list
    source: str = ""
    split: str = ""
    bad_files: BadFileLog = field(default_factory=BadFileLog)

    def __post_init__(self):
        self.images, self.labels = checked_pixels(self.images, self.labels)
        self.class_names = list(self.class_names)
        self._epoch_order_cache = None  # (seed, epoch, order): consecutive steps share an epoch

    @classmethod
    def load(cls, source, split: str, *, strict: bool = False, tfds_dir: str | None = None,
             max_bytes: int = DEFAULT_MAX_BYTES) -> ArraySplit:
        """Decode ``split`` of ``source`` into memory.

        ``source``: an image folder root (``<root>/<split>/<class>/<image>``, or
        ``"folder:<root>"``), ``"cifar10_sample"`` (the sample shipped in the package), or a
        TFDS name (``"cifar10"``, ``"cifar100"``; needs TensorFlow, ``tfds_dir`` is TFDS's
        data_dir). Folder images are decoded with Pillow and must all be 32x32 (a ValueError
        names the first that is not). An undecodable file is skipped, counted in ``bad_files``
        and logged once; with ``strict`` it is a ValueError naming it. A split whose decoded
        size would exceed ``max_bytes`` is refused (ValueError) before anything is decoded.
        """
        source = os.fspath(source)
        if source in TFDS_SOURCES:
            return cls._load_tfds(source, split, strict=strict, tfds_dir=tfds_dir, max_bytes=max_bytes)
        if source == SAMPLE_SOURCE:
            name, root = source, cifar10_sample_dir()
        elif source.startswith(FOLDER_PREFIX) or os.sep in source or os.path.isdir(source):
            root = source.removeprefix(FOLDER_PREFIX)
            name = FOLDER_PREFIX + root
        else:
            valid = ", ".join(repr(s) for s in TFDS_SOURCES + (SAMPLE_SOURCE,))
            raise ValueError(f"Unknown source {source!r} for the NumPy pipeline. Valid choices: {valid}, "
                             f"'folder:<root>' or a path to an image folder of {IMAGE_SIZE}x{IMAGE_SIZE} images.")
        paths, labels, class_names = list_image_folder(root, split)
        needed = len(paths) * IMAGE_SIZE * IMAGE_SIZE * 3
        if needed > max_bytes:
            raise ValueError(
                f"{name} {split}: {len(paths)} images of {IMAGE_SIZE}x{IMAGE_SIZE} need {needed / 2**20:.0f} MiB "
                f"in memory, above the limit of {max_bytes / 2**20:.0f} MiB."
            )
        bad_files = BadFileLog()
        images = np.empty((len(paths), IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        decoded = np.zeros(len(paths), bool)
        for i, path in enumerate(paths):
            pixels = _decode_image_file(path, strict, bad_files)
            if pixels is not None:
                images[i] = pixels
                decoded[i] = True
        if not decoded.any():
            raise ValueError(f"{name} {split}: no image could be decoded ({bad_files.count} undecodable files).")
        if not decoded.all():
            images = images[decoded]
        labels = np.asarray(labels, np.int32)[decoded]
        return cls(images, labels, class_names, source=name, split=split, bad_files=bad_files)

    @classmethod
    def _load_tfds(cls, source: str, split: str, *, strict: bool, tfds_dir, max_bytes: int) -> ArraySplit:
        """A TFDS split through the ``tf.data`` pipeline (the one path here that needs TensorFlow)."""
        try:
            importlib.import_module("tensorflow")
        except ImportError:
            raise ValueError(
                f"{source!r} is a TFDS dataset, and reading TFDS datasets needs TensorFlow "
                f'(pip install "keras_preact[tensorflow]"); or give an image folder of {IMAGE_SIZE}x{IMAGE_SIZE} '
                f"images (<root>/<split>/<class>/<image>)."
            ) from None
        from keras_preact.data.pipeline import load_pixels

        images, labels, info = load_pixels(source, split, data_dir=tfds_dir, strict=strict, max_bytes=max_bytes,
                                           only_preprocessing="cifar")
        return cls(images, labels, info.class_names, source=info.source, split=split, bad_files=info.bad_files)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        return (f"ArraySplit(source={self.source!r}, split={self.split!r}, images={self.images.shape}, "
                f"classes={self.num_classes}, bad_files={self.bad_files.count})")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def steps_per_epoch(self, batch_size: int) -> int:
        """Full batches in one pass: ``N // batch_size`` (the partial last batch is dropped)."""
        batch_size = operator.index(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        return len(self) // batch_size

    def epoch_order(self, epoch: int, *, seed: int = 0) -> np.ndarray:
        """The example indices in the order of ``epoch``: a permutation of ``range(N)``, int64."""
        seed, epoch = _check_seed(seed), operator.index(epoch)
        cached = self._epoch_order_cache
        if cached is not None and cached[0] == seed and cached[1] == epoch:
            return cached[2]
        order = random_generator(seed, SHUFFLE_STREAM, epoch).permutation(len(self))
        order.flags.writeable = False
        self._epoch_order_cache = (seed, epoch, order)
        return order

    def train_batch(self, step: int, batch_size: int, *, seed: int = 0, augment: bool = True,
                    shard: tuple = (0, 1), data_format: str = "channels_last"):
        """The training batch of global ``step``: ``(images float32 [B/count, h, w, 3], labels int32
        [B/count])``, normalised and (``augment``) padded, cropped and flipped; this process's
        ``shard=(index, count)`` of the global batch of ``batch_size``. A function of
        ``(seed, step)`` only (see the module docstring). ``data_format="channels_first"``:
        the same images as NCHW ``[B/count, 3, h, w]``, for a channels_first network."""
        index, count = _check_shard(shard, batch_size)
        step = operator.index(step)
        if step < 0:
            raise ValueError(f"step must be non-negative, got {step}.")
        per_epoch = self.steps_per_epoch(batch_size)
        if per_epoch < 1:
            raise ValueError(f"batch_size {batch_size} is larger than the {len(self)} examples.")
        epoch, position = divmod(step, per_epoch)
        order = self.epoch_order(epoch, seed=seed)
        rows = slice(index * batch_size // count, (index + 1) * batch_size // count)
        chosen = order[position * batch_size:(position + 1) * batch_size][rows]
        images = normalize_cifar(self.images[chosen])
        if augment:
            offsets, flips = augmentation_draws(seed, step, batch_size)
            images = pad_crop_flip(images, offsets[rows], flips[rows])
        return in_layout(images, data_format), self.labels[chosen]

    def train_sequence(self, batch_size: int, *, seed: int, first_step: int, steps: int, augment: bool = True,
                       shard: tuple = (0, 1), data_format: str = "channels_last") -> TrainSequence:
        """The training batches of steps ``first_step .. first_step + steps - 1`` as a PyDataset.

        Give it to ``model.fit(sequence, epochs=1, shuffle=False)``: without ``shuffle=False``
        Keras reorders the steps within each of its epochs.
        """
        return TrainSequence(self, batch_size, seed=seed, first_step=first_step, steps=steps, augment=augment,
                             shard=shard, data_format=data_format)

    def eval_batches(self, batch_size: int, *, flip: bool = False, data_format: str = "channels_last") -> EvalSequence:
        """One pass over the split in order, normalised, the last batch partial; ``flip`` mirrors
        every image horizontally (the test-time flip). An :class:`EvalSequence`: iterate it, or
        give it to ``model.evaluate``/``model.predict``."""
        return EvalSequence(self, batch_size, flip=flip, data_format=data_format)


class TrainSequence(keras.utils.PyDataset):
    """Item ``i`` is ``split.train_batch(first_step + i, batch_size, seed=..., augment=..., shard=...)``.

    ``len`` is ``steps``. Keras' default of one worker and no multiprocessing is kept: batches
    are computed in the training process, in order (each costs about a millisecond for 128
    CIFAR images).
    """

    def __init__(self, split: ArraySplit, batch_size: int, *, seed: int, first_step: int, steps: int,
                 augment: bool = True, shard: tuple = (0, 1), data_format: str = "channels_last"):
        super().__init__()
        self.data_format = check_data_format(data_format)
        self.split = split
        self.batch_size = operator.index(batch_size)
        self.seed = _check_seed(seed)
        self.first_step = operator.index(first_step)
        self.steps = operator.index(steps)
        self.augment = bool(augment)
        self.shard = _check_shard(shard, self.batch_size)
        if self.first_step < 0 or self.steps < 0:
            raise ValueError(f"first_step and steps must be non-negative, got {self.first_step} and {self.steps}.")
        if split.steps_per_epoch(self.batch_size) < 1:
            raise ValueError(f"batch_size {self.batch_size} is larger than the {len(split)} examples.")

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int):
        index = operator.index(index)
        if not 0 <= index < self.steps:
            raise IndexError(f"TrainSequence index {index} out of range (length {self.steps}).")
        return self.split.train_batch(self.first_step + index, self.batch_size, seed=self.seed,
                                      augment=self.augment, shard=self.shard, data_format=self.data_format)


class EvalSequence(keras.utils.PyDataset):
    """Batch ``i``: examples ``[i*B, (i+1)*B)`` of the split in order, normalised (``flip``:
    mirrored); the last batch holds the remainder."""

    def __init__(self, split: ArraySplit, batch_size: int, *, flip: bool = False,
                 data_format: str = "channels_last"):
        super().__init__()
        self.data_format = check_data_format(data_format)
        self.split = split
        self.batch_size = operator.index(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {self.batch_size}.")
        self.flip = bool(flip)

    def __len__(self) -> int:
        return -(-len(self.split) // self.batch_size)

    def __getitem__(self, index: int):
        index = operator.index(index)
        if not 0 <= index < len(self):
            raise IndexError(f"EvalSequence index {index} out of range (length {len(self)}).")
        rows = slice(index * self.batch_size, (index + 1) * self.batch_size)
        pixels = self.split.images[rows]
        if self.flip:
            pixels = pixels[:, :, ::-1]
        return in_layout(np.ascontiguousarray(normalize_cifar(pixels)), self.data_format), self.split.labels[rows]
