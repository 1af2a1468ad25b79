"""Per-channel normalisation statistics, in plain Python (no TensorFlow), for every pipeline.

Constants are per channel (R, G, B) in **0-255 units**: the model input is
``(pixel - MEAN) / STD`` with ``pixel`` in [0, 255]. The ``tf.data`` pipeline
(:mod:`keras_preact.data.preprocess`) and the NumPy one (:mod:`keras_preact.data.arrays`)
both read them from here.

- ``CIFAR_MEAN``/``CIFAR_STD``: the CIFAR-10 training-set statistics used by fb.resnet.torch
  and the paper's CIFAR code (mean 125.3, 123.0, 113.9; std 63.0, 62.1, 66.7). The same
  constants serve CIFAR-100 (its own statistics differ by under 4 units per channel).
- ``IMAGENET_MEAN``/``IMAGENET_STD``: the ImageNet statistics used by fb.resnet.torch
  (mean 0.485, 0.456, 0.406; std 0.229, 0.224, 0.225 in 0-1 units), times 255.
"""

CIFAR_MEAN = (125.3, 123.0, 113.9)
CIFAR_STD = (63.0, 62.1, 66.7)
IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)
