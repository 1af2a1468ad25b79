"""Where examples come from: TFDS builders and image folders, checked before any heavy work.

Each source yields ``(encoded image bytes or file path, int32 label)`` plus its class names;
decoding and augmentation happen later, in :mod:`keras_preact.data.pipeline`, so every source
shares them (and JPEG crops can be decoded without decoding the whole image).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import tensorflow as tf

# The listing is TensorFlow-free (the NumPy pipeline shares it); re-exported here.
from keras_preact.data.folders import IMAGE_EXTENSIONS, list_image_folder  # noqa: F401

TFDS_SOURCES = ("cifar10", "cifar100", "imagenet2012")
IMAGENET_MANUAL_FILES = {
    "train": "ILSVRC2012_img_train.tar",
    "validation": "ILSVRC2012_img_val.tar",
}


@dataclass
class RawSource:
    """Undecoded examples of one split.

    ``dataset`` yields ``(x, label)`` where ``x`` is a file path when ``from_files`` is true
    and encoded image bytes otherwise.
    """

    dataset: tf.data.Dataset
    class_names: list
    num_examples: int
    from_files: bool


def folder_source(root: str, split: str) -> RawSource:
    """An image folder split as a :class:`RawSource` of file paths."""
    paths, labels, class_names = list_image_folder(root, split)
    ds = tf.data.Dataset.from_tensor_slices((tf.constant(paths), tf.constant(labels, tf.int32)))
    return RawSource(ds, class_names, len(paths), from_files=True)


def check_imagenet_manual_dir(manual_dir: str, split: str) -> None:
    """FileNotFoundError saying which ILSVRC2012 tar files go where, if any is missing.

    TFDS builds both splits at once, so both tars are needed whatever ``split`` is asked for.
    """
    missing = [f for f in IMAGENET_MANUAL_FILES.values() if not os.path.isfile(os.path.join(manual_dir, f))]
    if missing:
        lines = "\n".join(f"  {os.path.join(manual_dir, f)}" for f in IMAGENET_MANUAL_FILES.values())
        raise FileNotFoundError(
            f"imagenet2012 (split {split!r}) is not prepared yet and cannot be downloaded automatically. "
            f"Download from https://image-net.org (ILSVRC2012, after accepting its terms) and place the tar "
            f"files, unextracted, at:\n{lines}\nMissing: {', '.join(missing)}. Then run again; TFDS will "
            f"extract them into its data_dir (about 150 GB). Pass manual_dir=... to use another folder."
        )


def tfds_source(
    name: str,
    split: str,
    *,
    data_dir: str | None = None,
    manual_dir: str | None = None,
    shuffle_files: bool = False,
    seed: int | None = None,
) -> RawSource:
    """A TFDS split as a :class:`RawSource` of encoded image bytes.

    Prepares the dataset on first use with TFDS's own download code (``cifar10``,
    ``cifar100``); ``imagenet2012`` needs the ILSVRC tar files in ``manual_dir`` (default
    ``<data_dir>/downloads/manual``), checked before TFDS starts.
    """
    import tensorflow_datasets as tfds  # heavy import, only for TFDS sources

    if name not in TFDS_SOURCES:
        raise ValueError(f"Unknown TFDS source {name!r}. Valid choices: {', '.join(TFDS_SOURCES)}.")
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        config = None
        if name == "imagenet2012":
            manual_dir = manual_dir or os.path.join(str(builder.data_dir_root), "downloads", "manual")
            check_imagenet_manual_dir(manual_dir, split)
            config = tfds.download.DownloadConfig(manual_dir=manual_dir)
        builder.download_and_prepare(download_config=config)
    # The image stays encoded: decoding happens in our pipeline, so crops decode only their window.
    ds = builder.as_dataset(
        split=split,
        shuffle_files=shuffle_files,
        decoders={"image": tfds.decode.SkipDecoding()},
        read_config=tfds.ReadConfig(shuffle_seed=seed),
        as_supervised=True,
    )
    ds = ds.map(lambda image, label: (image, tf.cast(label, tf.int32)))
    class_names = list(builder.info.features["label"].names)
    num_examples = int(ds.cardinality())
    if num_examples < 0:
        num_examples = builder.info.splits[split].num_examples
    if num_examples == 0:
        raise ValueError(f"TFDS split {name}/{split} is empty.")
    return RawSource(ds, class_names, num_examples, from_files=False)
