"""The console commands (``[project.scripts]``): each prepares its process, then runs its command line.

    keras-preact-train            the CIFAR trainer (trainers/cifar.py), TensorFlow backend
    keras-preact-train-imagenet   the ImageNet trainer (trainers/imagenet.py)
    keras-preact-fit              model.fit on any Keras backend (trainers/fit.py)
    keras-preact-export           a checkpoint or .keras file -> SavedModel, TFLite, ONNX
    keras-preact-classify         image files through an exported model
    keras-preact-convert-weights  a timm / PyTorch / hub weights file -> a Keras file
    keras-preact-diagnose         signal propagation of a network (paper Sec. 3, Fig. 1)

This module sits outside the ``keras_preact`` package on purpose. ``import keras_preact``
imports Keras, and Keras on the TensorFlow backend imports TensorFlow, which reads its settings
from the environment once, at that import. A library must not change the process it is imported
into, so the package sets nothing; a command owns its process, so it may, and it has to before
that first import -- which is why its entry point cannot live inside the package.

What :func:`prepare_process` sets, each only where the environment does not already say:

* ``TF_CPP_MIN_LOG_LEVEL=1``: TensorFlow's C++ information lines (CPU features, oneDNN) stay off
  the command's output and its one-line errors. Warnings and errors still show;
  ``TF_CPP_MIN_LOG_LEVEL=0`` brings the start-up lines back.
* ``TF_ENABLE_ONEDNN_OPTS=1``: TensorFlow turns its oneDNN kernels on by default only on CPUs
  with AVX-512 VNNI/BF16 or AMX; on the others (AVX2: many AMD EPYC and older Xeon machines)
  convolutions run on Eigen, and ResNet-56 trained 1.9x faster with oneDNN on an AVX2-only AMD
  EPYC (docs/performance.md, "oneDNN on AVX2 CPUs"). ``TF_ENABLE_ONEDNN_OPTS=0`` keeps Eigen.
* While Keras and TensorFlow import and TensorFlow first lists its devices, file descriptor 2 is
  silenced: TensorFlow logs some start-up lines (oneDNN's "custom operations are on", twice;
  "failed call to cuInit" on a machine without a GPU) through absl before its log level applies,
  or as errors. An import error is still raised after stderr is restored.

A user's own process gets the same speed by setting ``TF_ENABLE_ONEDNN_OPTS=1`` before it
imports Keras (docs/performance.md). The trainer scripts (``trainers/*.py``), the benchmarks and
the test suite call :func:`prepare_process` too.
"""

from __future__ import annotations

import importlib.util
import os
import sys

ENVIRONMENT_DEFAULTS = {"TF_CPP_MIN_LOG_LEVEL": "1", "TF_ENABLE_ONEDNN_OPTS": "1"}


def set_environment_defaults() -> None:
    """The environment part of :func:`prepare_process` alone (for the benchmarks, which time
    Keras' import themselves)."""
    for name, value in ENVIRONMENT_DEFAULTS.items():
        os.environ.setdefault(name, value)


def prepare_process(tensorflow: bool = False) -> None:
    """Set the command defaults above and import Keras with TensorFlow's start-up lines silenced.

    ``tensorflow=True``: import TensorFlow as well, whatever Keras' backend, for commands that
    load it beside another backend (the fit trainer: Keras seeds TensorFlow's generator where it
    is installed), if it is installed. Call it first thing in
    a process the caller owns, before anything imports Keras or TensorFlow.
    """
    set_environment_defaults()
    modules = ["keras"]
    if tensorflow and importlib.util.find_spec("tensorflow") is not None:
        modules.append("tensorflow")
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        for module in modules:  # nothing to silence, or the start-up lines asked for
            __import__(module)
        return
    _import_silencing_stderr(modules)


def _import_silencing_stderr(modules) -> None:
    try:
        sys.stderr.flush()
        saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    except (OSError, ValueError, AttributeError):  # no real stderr (embedded interpreters)
        for module in modules:
            __import__(module)
        return
    try:
        os.dup2(devnull, 2)
        for module in modules:
            __import__(module)
        if "tensorflow" in sys.modules:
            # The first look for devices logs too: the `tensorflow` wheel (one wheel for CPUs and
            # NVIDIA GPUs) reports "failed call to cuInit" as an error on a machine without a GPU.
            # Listing the physical devices here leaves the runtime unconfigured (logical CPU
            # devices and memory growth can still be set) and keeps that line off the output.
            sys.modules["tensorflow"].config.list_physical_devices()
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _program() -> str:
    return os.path.basename(sys.argv[0]) or "keras-preact"


def _trainer(family: str) -> int:
    # Refuse another backend in one line before TensorFlow is imported (it may not be installed).
    from keras_preact.cli import require_tensorflow_backend

    require_tensorflow_backend(_program())
    from absl import flags

    from keras_preact.cli import train as train_cli

    train_cli.define_flags(family)
    flags.adopt_module_key_flags(train_cli)
    return train_cli.console_main(family, sys.argv)


def train() -> int:
    """``keras-preact-train``: the CIFAR trainer."""
    prepare_process()
    return _trainer("cifar")


def train_imagenet() -> int:
    """``keras-preact-train-imagenet``: the ImageNet trainer."""
    prepare_process()
    return _trainer("imagenet")


def fit() -> int:
    """``keras-preact-fit``: ``model.fit`` on the Keras backend of ``KERAS_BACKEND``."""
    # TensorFlow too where it is installed: Keras imports it on any backend (its random seed
    # seeds TensorFlow's, its .keras writer checks for tf.data), so it loads silenced here.
    prepare_process(tensorflow=True)
    from absl import flags

    from keras_preact.cli import fit as fit_cli
    from keras_preact.cli import run_flags

    fit_cli.define_flags()
    flags.adopt_module_key_flags(run_flags)
    return fit_cli.console_main(sys.argv)


def export() -> int:
    """``keras-preact-export``: a checkpoint or .keras file -> a versioned SavedModel and more."""
    prepare_process(tensorflow=True)
    from keras_preact.export.__main__ import main

    return main()


def classify() -> int:
    """``keras-preact-classify``: image files through an exported model."""
    prepare_process(tensorflow=True)
    from keras_preact.export.classify import command

    return command()


def convert_weights() -> int:
    """``keras-preact-convert-weights``: a timm / PyTorch / hub weights file -> a Keras file."""
    prepare_process()
    from keras_preact.cli.convert_weights import main

    return main()


def diagnose() -> int:
    """``keras-preact-diagnose``: signal propagation of a network (paper Sec. 3, Fig. 1)."""
    prepare_process(tensorflow=True)
    from keras_preact.diagnostics.__main__ import main

    return main()
