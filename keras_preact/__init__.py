"""keras_preact: pre-activation residual networks (He et al., ECCV 2016) for Keras 3.

    >>> import keras_preact
    >>> model = keras_preact.ResNet1001(preact=True)
"""

from keras_preact.presets import (
    MODEL_NAMES,
    ResNet18,
    ResNet20,
    ResNet32,
    ResNet34,
    ResNet44,
    ResNet50,
    ResNet56,
    ResNet101,
    ResNet110,
    ResNet152,
    ResNet164,
    ResNet200,
    ResNet1001,
    ResNet1202,
    cifar_resnet,
    get_model,
)
from keras_preact.resnet import build_resnet
from keras_preact.shortcuts import ShortcutGate, ZeroPadShortcut
from keras_preact.units import KINDS, ORDERS, SHORTCUTS, ResidualUnit

__version__ = "0.1.0"
