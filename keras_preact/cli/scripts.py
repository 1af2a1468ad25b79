"""The console commands ``pip install`` puts on the PATH (``[project.scripts]`` in pyproject.toml).

    keras-preact-train            the CIFAR trainer (trainers/cifar.py), TensorFlow backend
    keras-preact-train-imagenet   the ImageNet trainer (trainers/imagenet.py)
    keras-preact-fit              model.fit on any Keras backend (trainers/fit.py)
    keras-preact-export           python -m keras_preact.export
    keras-preact-classify         python -m keras_preact.export.classify
    keras-preact-convert-weights  python -m keras_preact.cli.convert_weights
    keras-preact-diagnose         python -m keras_preact.diagnostics

Each command imports its module only when it runs: ``keras-preact-fit`` must not import
TensorFlow (the other backends run without it), and the trainers refuse a non-TensorFlow
backend in one line before TensorFlow is imported.
"""

from __future__ import annotations

import os
import sys

from absl import flags

from keras_preact.cli import require_tensorflow_backend


def _trainer(family: str) -> int:
    require_tensorflow_backend(os.path.basename(sys.argv[0]))
    from keras_preact.cli import train as train_cli

    train_cli.define_flags(family)
    flags.adopt_module_key_flags(train_cli)  # --help lists the trainer flags, not only absl's
    return train_cli.console_main(family, sys.argv)


def train() -> int:
    """``keras-preact-train``: the CIFAR trainer."""
    return _trainer("cifar")


def train_imagenet() -> int:
    """``keras-preact-train-imagenet``: the ImageNet trainer."""
    return _trainer("imagenet")


def fit() -> int:
    """``keras-preact-fit``: ``model.fit`` on the Keras backend of ``KERAS_BACKEND``."""
    from keras_preact.cli import fit as fit_cli

    fit_cli.define_flags()
    flags.adopt_module_key_flags(fit_cli)
    return fit_cli.console_main(sys.argv)


def export() -> int:
    """``keras-preact-export``: a checkpoint or .keras file -> a versioned SavedModel and more."""
    from keras_preact.export.__main__ import main

    return main()


def classify() -> int:
    """``keras-preact-classify``: image files through an exported model."""
    from keras_preact.export.classify import command

    return command()


def convert_weights() -> int:
    """``keras-preact-convert-weights``: a timm / PyTorch weights file -> a Keras file."""
    from keras_preact.cli.convert_weights import main

    return main()


def diagnose() -> int:
    """``keras-preact-diagnose``: signal propagation of a network (paper Sec. 3, Fig. 1)."""
    from keras_preact.diagnostics.__main__ import main

    return main()
