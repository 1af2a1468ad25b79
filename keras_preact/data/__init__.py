"""Input pipelines: decoding, the paper's augmentation, evaluation preprocessing, sources.

    >>> from keras_preact import data
    >>> ds, info = data.build_dataset("cifar10_sample", "train", batch_size=128, training=True, seed=0)
    >>> info.num_classes, info.image_size
    (10, (32, 32))
"""

from keras_preact.data.augment import (
    AUGMENTATIONS,
    color_augment,
    inception_crop_window,
    preprocess_for_train,
    scale_crop_window,
)
from keras_preact.data.bad_files import BadFileLog
from keras_preact.data.decode import decode_crop, decode_image
from keras_preact.data.labels import LABEL_MAP_FILENAME, read_label_map, write_label_map
from keras_preact.data.pipeline import DatasetInfo, NotForMemory, build_dataset, load_pixels
from keras_preact.data.in_memory import InMemorySplit
from keras_preact.data.preprocess import (
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    PREPROCESSINGS,
    normalize,
    preprocess_for_eval,
)
from keras_preact.data.sample import cifar10_sample_dir
from keras_preact.data.sources import list_image_folder

__all__ = [
    "AUGMENTATIONS",
    "BadFileLog",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DatasetInfo",
    "InMemorySplit",
    "NotForMemory",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LABEL_MAP_FILENAME",
    "PREPROCESSINGS",
    "build_dataset",
    "cifar10_sample_dir",
    "color_augment",
    "decode_crop",
    "decode_image",
    "inception_crop_window",
    "list_image_folder",
    "load_pixels",
    "normalize",
    "preprocess_for_eval",
    "preprocess_for_train",
    "read_label_map",
    "scale_crop_window",
    "write_label_map",
]
