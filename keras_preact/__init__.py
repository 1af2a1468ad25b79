"""keras_preact: pre-activation residual networks (He et al., ECCV 2016) for Keras 3.

    >>> import keras_preact
    >>> model = keras_preact.ResNet1001(preact=True)

The layers of the package (each imports only the ones above it):

    common       choices, the serialization package name, check_choice
    norm         BatchNorm math and layer, He initialisation, conv
    plan         the residual unit as data and its one interpreter (run_unit)
    shortcuts    zero-pad shortcut, gate, combination layer
    units        ResidualUnit (Keras-layer backend of the plan)
    stacked      StackedStage (while-loop backend of the plan)
    config       ResNetConfig (every architecture argument)
    model        ResNet (the Keras model built from a config)
    registry     model names -> ResNet
    recipes      the training recipes as Keras objects, for compile/fit on any backend
    data, training, export, diagnostics, cli   (see docs/architecture.md)

Importing the package changes nothing in the process: no environment variable, no file
descriptor. The commands set TensorFlow's quiet start-up and oneDNN default themselves, before
TensorFlow loads (``keras_preact_commands``, outside the package); a process of your own gets
the same speed with ``TF_ENABLE_ONEDNN_OPTS=1`` set before Keras is imported
(docs/performance.md).
"""

from keras_preact.common import KINDS, ORDERS, SHORTCUTS
from keras_preact.config import ResNetConfig
from keras_preact.model import ResNet, build_resnet
from keras_preact.registry import (
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
    list_models,
)
from keras_preact import recipes
from keras_preact.shortcuts import ShortcutCombine, ShortcutGate, ZeroPadShortcut
from keras_preact.stacked import StackedStage
from keras_preact.units import ResidualUnit
from keras_preact.hub import WeightsUnavailableError
from keras_preact.presets import from_preset, save_to_preset

__version__ = "0.5.0"
