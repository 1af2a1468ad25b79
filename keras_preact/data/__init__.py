"""Input pipelines: decoding, the paper's augmentation, evaluation preprocessing, sources.

    >>> from keras_preact import data
    >>> ds, info = data.build_dataset("cifar10_sample", "train", batch_size=128, training=True, seed=0)
    >>> info.num_classes, info.image_size
    (10, (32, 32))

Two pipelines share the sources, the class numbering and the normalisation constants:

* ``tf.data`` (``build_dataset``, ``InMemorySplit``; needs TensorFlow): streaming, any image
  size, the ImageNet augmentations, the ``tf.distribute`` trainers and the export signatures;
* NumPy (``ArraySplit``, :mod:`keras_preact.data.arrays`): CIFAR-sized splits held as arrays,
  batches a pure function of ``(seed, step)``, the input of ``model.fit`` on every backend.
  It imports no TensorFlow, so a JAX- or PyTorch-only install trains.

    >>> train = data.ArraySplit.load("cifar10_sample", "train")
    >>> images, labels = train.train_batch(0, 128, seed=0)   # float32 [128, 32, 32, 3], int32 [128]
"""

from keras_preact.common import lazy_exports

# Where each public name lives. They are imported on first use (PEP 562), so that importing
# the TensorFlow-free modules (arrays, folders, constants, sample, labels) never loads TensorFlow.
_EXPORTS = {
    "AUGMENTATIONS": "augment", "color_augment": "augment", "inception_crop_window": "augment",
    "preprocess_for_train": "augment", "scale_crop_window": "augment",
    "ArraySplit": "arrays", "DEFAULT_MAX_BYTES": "arrays", "EvalSequence": "arrays",
    "TrainSequence": "arrays",
    "BadFileLog": "bad_files",
    "CIFAR_MEAN": "constants", "CIFAR_STD": "constants", "IMAGENET_MEAN": "constants",
    "IMAGENET_STD": "constants",
    "decode_crop": "decode", "decode_image": "decode",
    "list_image_folder": "folders",
    "InMemorySplit": "in_memory",
    "LABEL_MAP_FILENAME": "labels", "read_label_map": "labels", "write_label_map": "labels",
    "DatasetInfo": "pipeline", "NotForMemory": "pipeline", "build_dataset": "pipeline",
    "load_pixels": "pipeline",
    "PREPROCESSINGS": "preprocess", "normalize": "preprocess", "preprocess_for_eval": "preprocess",
    "cifar10_sample_dir": "sample",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = [
    "AUGMENTATIONS",
    "ArraySplit",
    "BadFileLog",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DEFAULT_MAX_BYTES",
    "DatasetInfo",
    "EvalSequence",
    "InMemorySplit",
    "NotForMemory",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LABEL_MAP_FILENAME",
    "PREPROCESSINGS",
    "TrainSequence",
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
