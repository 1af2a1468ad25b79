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
"""

import os

# Before keras imports TensorFlow: its C++ start-up lines (CPU features, oneDNN) would come before
# a command's output or its one-line error. Warnings and errors still show; TF_CPP_MIN_LOG_LEVEL=0
# in the environment brings the start-up lines back.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
# TensorFlow turns its oneDNN kernels on by default only on CPUs with AVX-512 VNNI/BF16 or AMX;
# on the others (AVX2: many AMD EPYC and older Xeon machines) convolutions and their gradients
# run on Eigen, and ResNet-56 trained 1.9x faster with oneDNN on an AVX2-only AMD EPYC
# (docs/performance.md, "oneDNN on AVX2 CPUs"). Only before TensorFlow's first import;
# TF_ENABLE_ONEDNN_OPTS=0 in the environment keeps Eigen.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")


def _import_tensorflow_quietly() -> None:
    """Import TensorFlow (as Keras is about to) with its C++ start-up lines kept off stderr.

    TensorFlow logs some of them (oneDNN's "custom operations are on", twice) through absl before
    its log level applies, so TF_CPP_MIN_LOG_LEVEL cannot hide them: they would come before a
    command's output or its one-line error. Only file descriptor 2 during the import is
    silenced; an import error is still raised (and printed) after it is restored. Skipped if
    TensorFlow is already imported, if Keras runs on another backend, or with
    TF_CPP_MIN_LOG_LEVEL=0 (the start-up lines asked for).
    """
    import importlib.util
    import sys

    if ("tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0"
            or os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow"
            or importlib.util.find_spec("tensorflow") is None):
        return
    try:
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):  # no real stderr (embedded interpreters)
        return
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


_import_tensorflow_quietly()

from keras_preact.common import KINDS, ORDERS, SHORTCUTS  # noqa: E402
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

__version__ = "0.3.0"
