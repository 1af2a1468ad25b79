"""The lowest layer of the package: its serialization name, the architecture choices, checks.

Every other module may import this one; it imports nothing from the package. The choice
tuples name the options of the paper's ablations (Fig. 2, Fig. 4, Table 1, Table 2) and of the
reference code; ``check_choice`` is the one place that turns a bad choice into an error naming
the valid ones. The command-line helpers at the end are shared by every tool of the package
(trainers, exporter, diagnostics), which may all import this layer.
"""

from __future__ import annotations

import argparse
import os

# Registered package name of every serializable class (``.keras`` files store it).
PACKAGE = "keras_preact"

FAMILIES = ("cifar", "imagenet")
# The tf.distribute strategies of the TensorFlow trainer (keras_preact.training.strategy), here so
# that the run configuration reads without TensorFlow.
STRATEGIES = ("default", "one_device", "mirrored", "multi_worker_mirrored", "tpu")
DEFAULT_WORKER_TIMEOUT = 600.0  # seconds; longer than any step, evaluation or checkpoint save
# The fit trainer's Keras distribution (JAX): auto = DataParallel over every device when there
# is more than one (several local devices, or several processes), none = one device.
KERAS_DISTRIBUTIONS = ("auto", "none", "data_parallel")

# Weight layers of the residual function F.
KINDS = ("basic", "bottleneck", "single")
EXPANSION = {"basic": 1, "bottleneck": 4, "single": 1}
LAYERS_PER_UNIT = {"basic": 2, "bottleneck": 3, "single": 1}

# Where BN and ReLU sit (paper Fig. 4, Table 2).
ORDERS = (
    "original",
    "bn_after_addition",
    "relu_before_addition",
    "relu_only_preact",
    "full_preact",
)
PREACT_ORDERS = ("relu_only_preact", "full_preact")

# The shortcut h and how it is combined with F (paper Fig. 2, Table 1).
SHORTCUTS = (
    "identity",
    "constant_scaling",
    "exclusive_gating",
    "shortcut_only_gating",
    "conv1x1",
    "dropout",
)
GATED_SHORTCUTS = ("exclusive_gating", "shortcut_only_gating")
# The options of the shortcuts (Table 1's rows differ in them) and the shortcuts that use each.
SHORTCUT_OPTIONS = {
    "shortcut_scale": ("constant_scaling",),  # lambda on the shortcut (Table 1: 0.5)
    "scale_residual": ("constant_scaling",),  # also scale F by 1 - lambda (Table 1's 0.5 / 0.5 row)
    "gate_bias_init": GATED_SHORTCUTS,  # b_g of g(x) = sigmoid(W_g x + b_g) (Table 1's gating rows)
    "dropout_rate": ("dropout",),  # rate of the dropout shortcut (Table 1: 0.5)
}
DOWNSAMPLES = ("projection", "zero_pad")
STRIDE_AT = ("first", "3x3")
PREACTIVATIONS = ("branch", "shared", "none")
POOLINGS = ("avg", "max", None)
# Keras dtype policies a network can be built with (float32 weights in every case).
DTYPE_POLICIES = ("float32", "mixed_float16", "mixed_bfloat16")
# Memory layouts of image tensors, by Keras' names: "channels_last" is NHWC (what TensorFlow's
# CPU kernels take), "channels_first" NCHW (PyTorch's native layout). The weights are the same
# in both (Keras keeps conv kernels HWIO either way), so a network moves between them.
DATA_FORMATS = ("channels_last", "channels_first")
# The layout of files written before the option existed (every earlier version built NHWC only):
# their configs carry no data_format and load with this one, whatever Keras' global
# image_data_format says. Not the default of new layers (None: the global setting).
LEGACY_DATA_FORMAT = "channels_last"


def check_choice(name: str, value, choices) -> None:
    """Raise a ValueError naming the valid choices when ``value`` is not one of them."""
    if value not in choices:
        raise ValueError(
            f"Unknown {name} {value!r}. Valid choices: {', '.join(map(repr, choices))}."
        )


def lazy_exports(module_name: str, exports: dict) -> tuple:
    """``(__getattr__, __dir__)`` for a package whose public names (``exports``: name -> submodule)
    are imported on first use (PEP 562), so that its TensorFlow-free parts import without
    TensorFlow (``keras_preact.data``, ``keras_preact.training``)."""
    import importlib

    def getattr_(name):
        if name not in exports:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        return getattr(importlib.import_module(f"{module_name}.{exports[name]}"), name)

    def dir_():
        return sorted(set(vars(importlib.import_module(module_name))) | set(exports))

    return getattr_, dir_


def resolve_data_format(data_format) -> str:
    """``data_format`` itself, or Keras' ``keras.config.image_data_format()`` for None (read
    now: a layer resolves it once, when it is made, and saves the result); a ValueError naming
    the choices for anything else."""
    check_choice("data_format", data_format, DATA_FORMATS + (None,))
    if data_format is None:
        import keras  # the one helper here that needs Keras; the others are plain Python

        data_format = keras.config.image_data_format()
    return data_format


def channel_axis(data_format: str) -> int:
    """The channel axis of an image tensor: 1 (NCHW) or -1 (NHWC)."""
    return 1 if data_format == "channels_first" else -1


def spatial_axes(data_format: str) -> tuple:
    """(height axis, width axis) of a 4-D image tensor."""
    return (2, 3) if data_format == "channels_first" else (1, 2)


def strided_shape(input_shape, strides: int, channels: int,
                  data_format: str = "channels_last") -> tuple:
    """Shape after a 'same'-padded op of the given stride and output channels (NHWC, or NCHW
    for ``data_format="channels_first"``)."""
    if data_format == "channels_first":
        n, _, h, w = input_shape
    else:
        n, h, w, _ = input_shape
    h = None if h is None else -(-h // strides)
    w = None if w is None else -(-w // strides)
    return (n, channels, h, w) if data_format == "channels_first" else (n, h, w, channels)


# What every command does to its own process before TensorFlow loads (keras_preact_commands),
# for --help: `import keras_preact` does none of it.
COMMAND_ENVIRONMENT = (
    "Run as a command (keras-preact-*, trainers/*.py), it sets TF_CPP_MIN_LOG_LEVEL=1 and "
    "TF_ENABLE_ONEDNN_OPTS=1 before TensorFlow loads, unless the environment sets them, and keeps "
    "TensorFlow's start-up lines off stderr (TF_CPP_MIN_LOG_LEVEL=0 shows them)."
)


def program_name(module: str) -> str:
    """The command as the user typed it, for usage lines: ``keras-preact-export`` when run as the
    console command, ``python -m keras_preact.export`` when run with ``-m`` (whose ``argv[0]`` is
    the module's file path, which the user never typed)."""
    import sys

    typed = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if not typed or typed.endswith(".py") or typed == "-m":
        return f"python -m {module}"
    return typed


class OneLineArgumentParser(argparse.ArgumentParser):
    """``argparse`` for the package's tools: a usage error is ONE line on stderr, exit status 2.

    Plain argparse prints the whole usage block first; the line that matters is then easy to
    miss. ``--help`` still prints the full help and exits 0.
    """

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())}\n")


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


class FlagValueError(ValueError):
    """A bad value of one command-line flag: ``flag`` names it (no dashes), ``message`` says
    what is wrong, and ``str()`` is ``--flag: message``, the tools' one-line error."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"--{flag}: {message}")
        self.flag = flag
        self.message = message


def check_writable_dir(flag: str, path: str | None) -> None:
    """``path`` is, or can be created as, a writable directory; else a :class:`FlagValueError`
    naming ``flag``. Nothing is created: a tool checks before any heavy work and writes later."""
    if not path:
        return
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise FlagValueError(flag, f"{path!r} exists and is not a directory.")
    probe = path  # the deepest existing folder: makedirs creates the rest inside it
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise FlagValueError(flag, f"cannot create {path!r}: {probe!r} is not a directory.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise FlagValueError(flag, f"cannot write to {probe!r} (permission denied).")
