"""The trainer command line shared by ``trainers/cifar.py`` and ``trainers/imagenet.py``.

Three steps, each usable on its own (the tests call them in-process):

* ``define_flags(family, flag_values)`` declares the absl flags; defaults that depend on the
  dataset are ``None`` and come from its ``Recipe``.
* ``settings_from_flags(family, flag_values)`` is the only code that reads flag values. It
  checks everything that can be checked without building a model or reading data and returns
  a :class:`Settings` holding every value a run needs.
* ``run(settings)`` does the job from those settings alone: strategy -> data -> model and
  optimizer in ``strategy.scope()`` -> ``Trainer.fit`` (resuming from ``model_dir``) -> final
  test error, plot, ``results.json``, optional export.

Bad input fails within seconds, before any heavy work, with a ``FlagError`` naming the flag:
unknown model, impossible depth, bad order/unit/shortcut combinations, a batch that does not
split over the replicas, missing data, no TPU. Errors are attributed to flags by structure,
never by their text: ``registry.ModelNameError.argument`` (name or unit),
``strategy.StrategyError.argument`` (strategy name, CPU devices, TPU, batch), the data flag
that was given (``--data_dir`` or ``--dataset``), and for the architecture the flag whose
value ``ResNetConfig`` refused when the flags are added to it one at a time.

``console_main(family)`` is a trainer script's whole command line: ``--help`` exits 0; a
malformed, unknown or out-of-range flag is one line ``error: --flag: message`` on stderr and
exit status 2 (no traceback, nothing written); 3 when training diverges (the message names the
last known-good checkpoint the run directory now resumes from) or a checkpoint to resume holds
non-finite values.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import sys
import time

import keras
import tensorflow as tf
from absl import flags
from absl import logging as absl_logging

from keras_preact import data as data_lib
from keras_preact import export as export_lib
from keras_preact import hardware, registry
from keras_preact.common import DTYPE_POLICIES, FAMILIES, KINDS, ORDERS, SHORTCUT_OPTIONS, SHORTCUTS
from keras_preact.config import ResNetConfig, resolve_order
from keras_preact.padding import PADDINGS
from keras_preact.training import recipes as recipes_lib
from keras_preact.training import schedules
from keras_preact.training import strategy as strategy_lib
from keras_preact.training import divergence as divergence_lib
from keras_preact.training.loop import DivergenceError, Trainer, WorkerLostError
from keras_preact.training.observe import RESULTS_FILE

CIFAR_DATASETS = ("cifar10_sample", "cifar10", "cifar100")
IMAGENET_DATASETS = ("imagenet2012",)
# Single-crop test sizes of the paper's ImageNet results (Table 5: 224 and 320 crops).
IMAGENET_EVAL_SIZES = (224, 320)

# Which flag carries each argument named by a structured error.
MODEL_ARGUMENT_FLAGS = {"name": "model", "unit": "unit"}  # registry.ModelNameError.argument
# --input: where training batches come from (data.InMemorySplit or data.build_dataset).
INPUTS = ("auto", "memory", "stream")

STRATEGY_ARGUMENT_FLAGS = {  # strategy.StrategyError.argument
    "name": "strategy",
    "tf_config": "strategy",  # the environment of --strategy=multi_worker_mirrored
    "tpu": "tpu",
    "cpu_devices": "cpu_devices",
    "global_batch": "batch_size",
}

# --steps_per_loop under TPUStrategy when unset: a host round-trip per step would idle the TPU
# (loops still stop at every log row, evaluation and checkpoint).
TPU_STEPS_PER_LOOP = 100

JIT_SYNC_BN = ("not with --sync_bn: synchronised BatchNorm all-reduces inside the compiled step, "
               "which XLA cannot hold; drop one of them.")

EXIT_FLAG_ERROR = 2
EXIT_DIVERGED = 3
EXIT_WORKER_LOST = 4

FLAGS = flags.FLAGS


class FlagError(ValueError):
    """A bad flag value; ``str()`` is the one line shown to the user, ``flag`` names the flag."""

    def __init__(self, flag: str, message: str):
        super().__init__(f"--{flag}: {message}")
        self.flag = flag


def _define(flag_values, definer, *args, **kwargs):
    definer(*args, flag_values=flag_values, **kwargs)


def define_flags(family: str, flag_values: flags.FlagValues = FLAGS) -> None:
    """Declare the trainer flags for ``family`` (``"cifar"`` or ``"imagenet"``) in ``flag_values``."""
    if family not in FAMILIES:
        raise ValueError(f"Unknown family {family!r}. Valid choices: {', '.join(map(repr, FAMILIES))}.")
    cifar = family == "cifar"
    if "verbosity" in flag_values:  # absl's; TF's INFO chatter would break the progress bar
        flag_values.set_default("verbosity", absl_logging.WARNING)
    # Data.
    _define(flag_values, flags.DEFINE_enum,
        "dataset",
        "cifar10_sample" if cifar else "imagenet2012",
        CIFAR_DATASETS if cifar else IMAGENET_DATASETS,
        "TFDS dataset, or the CIFAR-10 sample shipped in the package (no download). "
        "Ignored when --data_dir is given.",
    )
    _define(flag_values, flags.DEFINE_string,
        "data_dir", None, "An image folder <root>/<split>/<class>/<image> to train on instead."
    )
    _define(flag_values, flags.DEFINE_string, "tfds_dir", None, "TensorFlow Datasets data directory.")
    _define(flag_values, flags.DEFINE_string, "train_split", "train", "Training split.")
    _define(flag_values, flags.DEFINE_enum, "input", "auto", list(INPUTS),
        "memory: decode the splits once into memory, batches a pure function of --seed and the "
        "step (exact resume); stream: decode every epoch; auto: memory for CIFAR-sized data "
        f"(up to {data_lib.in_memory.DEFAULT_MAX_BYTES // 2**30} GiB decoded), else stream.")
    _define(flag_values, flags.DEFINE_string, "eval_split", "test" if cifar else "validation", "Evaluation split.")
    if not cifar:
        _define(flag_values, flags.DEFINE_string, "manual_dir", None, "Where the ILSVRC2012 tar files are (TFDS).")
        _define(flag_values, flags.DEFINE_enum,
            "augment", "scale", ["scale", "inception"],
            "Scale jitter 256-480 + 224 crop (the paper's) or Inception scale/aspect crops.",
        )
        _define(flag_values, flags.DEFINE_bool, "color", True, "Colour and lighting augmentation.")
        _define(flag_values, flags.DEFINE_list, "eval_sizes", [str(s) for s in IMAGENET_EVAL_SIZES],
                "Single-crop test sizes (224 and/or 320, paper Table 5).")
    # Model.
    _define(flag_values, flags.DEFINE_string,
        "model", "resnet20" if cifar else "resnet50",
        f"One of {', '.join(registry.list_models())}, or resnet<depth> for any valid CIFAR depth.",
    )
    _define(flag_values, flags.DEFINE_bool, "preact", None, "Pre-activation (full_preact) or original units.")
    _define(flag_values, flags.DEFINE_enum, "order", None, list(ORDERS), "Unit order (paper Fig. 4).")
    _define(flag_values, flags.DEFINE_enum, "shortcut", "identity", list(SHORTCUTS), "Shortcut (paper Fig. 2).")
    _define(flag_values, flags.DEFINE_float, "shortcut_scale", None,
            "--shortcut=constant_scaling: lambda on the shortcut (default 0.5, paper Table 1).")
    _define(flag_values, flags.DEFINE_bool, "scale_residual", None,
            "--shortcut=constant_scaling: also scale F by 1 - lambda (Table 1's 0.5 / 0.5 row).")
    _define(flag_values, flags.DEFINE_float, "gate_bias_init", None,
            "Gating shortcuts: initial gate bias b_g (default -6; Table 1 also tries 0).")
    _define(flag_values, flags.DEFINE_float, "dropout_rate", None,
            "--shortcut=dropout: drop rate of the shortcut (default 0.5, Table 1).")
    _define(flag_values, flags.DEFINE_enum, "unit", None, list(KINDS), "Unit kind (CIFAR models).")
    _define(flag_values, flags.DEFINE_bool, "stacked_stages", False,
            "Run each stage's repeated units as one loop over stacked weights (very deep nets).")
    _define(flag_values, flags.DEFINE_bool, "recompute", False,
            "With --stacked_stages: recompute units in the backward pass (less memory).")
    _define(flag_values, flags.DEFINE_enum, "padding", "symmetric", list(PADDINGS),
            "Padding of strided convs: symmetric (Torch's, as the paper's code; the default) or "
            "same (TensorFlow's; runs of keras_preact 0.1 used it).")
    _define(flag_values, flags.DEFINE_string, "init_weights", None,
            "Start from this weights file (timm ResNetV2 or PyTorch .safetensors/.pth, .keras): "
            "its backbone, and a fresh classifier when its class count differs (fine-tuning). "
            "Options the file fixes (timm: stem, padding) are taken from it. A resumed run "
            "continues from its checkpoint instead.")
    _define(flag_values, flags.DEFINE_enum, "dtype_policy", "auto", ["auto", *DTYPE_POLICIES],
            "Keras dtype policy: float32, or mixed precision (float32 weights; mixed_float16 with "
            "dynamic loss scaling for GPUs, mixed_bfloat16 for TPUs and CPUs with bf16). auto: "
            "mixed_bfloat16 on TPUs and on CPUs with bf16 instructions (avx512_bf16, AMX) where "
            "no GPU is visible, else float32.")
    # Speed.
    _define(flag_values, flags.DEFINE_bool, "jit_compile", False,
            "Compile the train and evaluation steps with XLA.")
    _define(flag_values, flags.DEFINE_integer, "steps_per_loop", None,
            f"Training steps per tf.function call (one host sync); default 1, "
            f"{TPU_STEPS_PER_LOOP} under --strategy=tpu. Logs, evaluations and checkpoints stay "
            "on their steps.")
    # Distribution.
    _define(flag_values, flags.DEFINE_enum, "strategy", "default", list(strategy_lib.STRATEGIES), "tf.distribute strategy.")
    _define(flag_values, flags.DEFINE_integer,
        "cpu_devices", None, "Split the CPU into this many logical devices (mirrored on a CPU machine)."
    )
    _define(flag_values, flags.DEFINE_string, "tpu", None, "TPU name or grpc:// address (--strategy=tpu).")
    _define(flag_values, flags.DEFINE_float, "worker_timeout", strategy_lib.DEFAULT_WORKER_TIMEOUT,
        "--strategy=multi_worker_mirrored: seconds a collective waits for the other workers before "
        "the run stops (exit status 4) instead of hanging; longer than any step, evaluation or save.")
    _define(flag_values, flags.DEFINE_bool, "sync_bn", False, "Synchronise BatchNorm batch statistics across replicas.")
    # Optimisation (unset: the dataset's recipe).
    _define(flag_values, flags.DEFINE_enum, "recipe", None, list(recipes_lib.family_recipes(family)),
        "Training recipe whose settings the flags below override (default: the paper's for the "
        "dataset; 'fast': the short-budget CIFAR recipe, see docs/training.md).")
    _define(flag_values, flags.DEFINE_integer, "batch_size", None, "Global batch size (all replicas).")
    _define(flag_values, flags.DEFINE_float, "lr", None, "Base learning rate (ImageNet: for batch 256, scaled linearly).")
    _define(flag_values, flags.DEFINE_float, "momentum", None, "SGD momentum.")
    _define(flag_values, flags.DEFINE_bool, "nesterov", None, "Nesterov momentum.")
    _define(flag_values, flags.DEFINE_float, "weight_decay", None, "L2 weight decay (coupled, added to the gradient).")
    _define(flag_values, flags.DEFINE_bool, "decay_bn", None, "Apply weight decay to BN gamma/beta and biases too.")
    _define(flag_values, flags.DEFINE_enum, "lr_schedule", None, list(schedules.SCHEDULES), "Learning-rate schedule.")
    _define(flag_values, flags.DEFINE_list,
        "lr_boundaries", None, "Step-decay boundaries: iterations (32000), fractions (0.5) or epochs (30ep)."
    )
    _define(flag_values, flags.DEFINE_float, "lr_decay", None, "Multiply the rate by this at each boundary.")
    _define(flag_values, flags.DEFINE_integer, "warmup_steps", None, "Iterations at --warmup_lr first (paper: 400).")
    _define(flag_values, flags.DEFINE_float, "warmup_lr", None, "Warm-up learning rate (paper: 0.01).")
    _define(flag_values, flags.DEFINE_float, "label_smoothing", None, "Label smoothing.")
    _define(flag_values, flags.DEFINE_float, "weight_average", None,
        "Evaluate and export an exponential moving average of the weights with this decay per "
        "step (e.g. 0.999); 0: off.")
    _define(flag_values, flags.DEFINE_bool, "eval_flip", None,
        "Evaluate on the mean logits of each image and its mirror image (test-time augmentation).")
    _define(flag_values, flags.DEFINE_bool, "eval_translate", None,
        "Also average the logits of copies of each image shifted one pixel up, down, left and "
        "right (5 views, 10 with --eval_flip; docs/training.md, 'Test-time translation').")
    _define(flag_values, flags.DEFINE_integer, "train_steps", None, "Train this many iterations.")
    _define(flag_values, flags.DEFINE_float, "epochs", None, "Train this many epochs (instead of --train_steps).")
    # Run.
    _define(flag_values, flags.DEFINE_string, "model_dir", None, "Run directory (default runs/<dataset>_<model>).")
    _define(flag_values, flags.DEFINE_integer, "checkpoint_every", 1000, "Also checkpoint every N steps (0: epoch ends only).")
    _define(flag_values, flags.DEFINE_integer, "keep_checkpoints", 3, "Checkpoints to keep.")
    _define(flag_values, flags.DEFINE_integer, "log_every", 50, "metrics.csv / TensorBoard row every N steps.")
    _define(flag_values, flags.DEFINE_integer, "eval_every", 0, "Evaluate every N steps (0: every epoch).")
    _define(flag_values, flags.DEFINE_integer, "seed", 0, "Random seed (initialisation, shuffling, augmentation).")
    _define(flag_values, flags.DEFINE_bool, "export", False, "Export a TF Serving SavedModel at the end.")
    _define(flag_values, flags.DEFINE_string, "export_dir", "saved_models", "Base directory of exports.")
    # Safety (issue 14).
    _define(flag_values, flags.DEFINE_bool, "strict", False,
            "Fail on the first unreadable, corrupt or oversized image instead of skipping and counting it.")
    _define(flag_values, flags.DEFINE_float, "divergence_factor", divergence_lib.DEFAULT_FACTOR,
            "Stop when a step's loss exceeds this many times its recent average (0: only NaN/inf stop).")
    _define(flag_values, flags.DEFINE_integer, "divergence_window", divergence_lib.DEFAULT_WINDOW,
            "Steps in the recent average of --divergence_factor.")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything ``run`` needs; ``settings_from_flags`` builds and validates it.

    Exactly one of ``dataset`` (a TFDS name or ``"cifar10_sample"``) and ``data_dir`` (an image
    folder ``<root>/<split>/<class>/<image>``) is set.
    """

    family: str  # "cifar" or "imagenet": which trainer (data pipeline and evaluation)
    model_name: str  # canonical name (keras_preact.registry)
    recipe: recipes_lib.Recipe  # optimisation and schedule, flags applied
    model_dir: str
    model_kwargs: dict = dataclasses.field(default_factory=dict)  # order, shortcut, unit, ...
    # Data.
    dataset: str | None = "cifar10_sample"
    data_dir: str | None = None
    tfds_dir: str | None = None
    manual_dir: str | None = None  # ImageNet (TFDS): the ILSVRC2012 tar files
    train_split: str = "train"
    eval_split: str = "test"
    input: str = "auto"  # "memory", "stream" or "auto" (see INPUTS)
    augment: str = "scale"  # ImageNet training augmentation: "scale" or "inception"
    color: bool = True  # ImageNet colour and lighting augmentation
    eval_sizes: tuple = ()  # ImageNet single-crop test sizes
    # Distribution.
    strategy_name: str = "default"
    cpu_devices: int | None = None
    tpu: str | None = None
    worker_timeout: float = strategy_lib.DEFAULT_WORKER_TIMEOUT  # multi-worker collectives
    sync_bn: bool = False
    # Speed.
    dtype_auto: bool = False  # --dtype_policy=auto chose the policy in model_kwargs
    jit_compile: bool = False
    steps_per_loop: int | None = None  # None: 1, or TPU_STEPS_PER_LOOP under TPUStrategy
    # Run.
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    log_every: int = 50
    eval_every: int = 0
    seed: int = 0
    init_weights: str | None = None  # weights file the model starts from (fresh runs only)
    export: bool = False
    export_dir: str = "saved_models"
    strict: bool = False  # fail on a bad image file instead of skipping and counting it
    divergence_factor: float = divergence_lib.DEFAULT_FACTOR
    divergence_window: int = divergence_lib.DEFAULT_WINDOW
    argv: tuple = ()  # the command line, recorded in results.json

    @property
    def source(self) -> str:
        """What ``build_dataset`` reads: the image folder, else the dataset name."""
        return self.data_dir or self.dataset

    @property
    def data_flag(self) -> str:
        """The flag that chose the data, to blame when it cannot be read."""
        return "data_dir" if self.data_dir else "dataset"


def resolve_dtype_policy(policy: str, strategy_name: str) -> str:
    """``--dtype_policy``, with ``auto`` resolved for the hardware at hand.

    bfloat16 is chosen only where it was measured to win: on an AMD EPYC with avx512_bf16,
    training ran 1.45x (ResNet-20, ResNet-56) to 1.75x (ResNet-110, ResNet-164) faster than
    float32 (docs/training.md), and TPUs compute in bfloat16 natively. On GPUs (float16 is
    their format, with loss scaling) and CPUs without bf16 (an Intel Xeon measured slower) it
    stays float32.
    """
    if policy != "auto":
        return policy
    if strategy_name == "tpu":
        return "mixed_bfloat16"
    if hardware.cpu_has_bf16() and not tf.config.list_physical_devices("GPU"):
        return "mixed_bfloat16"
    return "float32"


def model_settings(name: str, *, unit=None, preact=None, order=None, shortcut="identity",
                   stacked_stages=False, recompute=False, dtype_policy="float32",
                   padding="symmetric", shortcut_options=None) -> tuple:
    """``(canonical model name, keyword arguments of registry.get_model)``, checked without building.

    The name goes through ``keras_preact.registry`` only; its ``ModelNameError.argument`` says
    whether ``--model`` or ``--unit`` is wrong. The architecture is then checked by
    ``ResNetConfig`` with the flags added one at a time, so the flag whose addition it refuses
    is the one named. ``shortcut_options`` (``SHORTCUT_OPTIONS`` names, e.g. ``gate_bias_init``)
    are refused for a shortcut that does not use them: they would silently change nothing.
    """
    shortcut_options = dict(shortcut_options or {})
    for option, value in shortcut_options.items():
        users = SHORTCUT_OPTIONS[option]
        if shortcut not in users:
            raise FlagError(option, f"only used with --shortcut={' or '.join(users)}; "
                                    f"got --shortcut={shortcut}.")
    try:
        spec = registry.resolve(name, unit)
    except registry.ModelNameError as error:
        raise FlagError(MODEL_ARGUMENT_FLAGS[error.argument], str(error)) from None
    try:
        order = resolve_order(preact, order)
    except ValueError as error:  # only an explicit --order can contradict --preact
        raise FlagError("order", str(error)) from None
    arguments = dict(family=spec.family, unit=spec.unit, order=order)
    for flag, added in (
        ("shortcut", {"shortcut": shortcut}),
        ("stacked_stages", {"stacked_stages": bool(stacked_stages)}),
        ("recompute", {"recompute": bool(recompute)}),
        ("dtype_policy", {"dtype_policy": dtype_policy}),
        ("padding", {"padding": padding}),
        *((option, {option: value}) for option, value in shortcut_options.items()),
    ):
        arguments.update(added)
        try:
            ResNetConfig(spec.units_per_stage, **arguments)
        except ValueError as error:
            raise FlagError(flag, str(error)) from None
    kwargs = {"shortcut": shortcut, "order": order, **shortcut_options}
    if unit is not None:
        kwargs["unit"] = unit
    if stacked_stages:
        kwargs.update(stacked_stages=True, recompute=bool(recompute))
    if dtype_policy != "float32":
        kwargs["dtype_policy"] = dtype_policy
    if padding != "symmetric":
        kwargs["padding"] = padding
    return spec.name, kwargs


def init_weights_options(model_name: str, path: str | None, model_kwargs: dict) -> dict:
    """``model_kwargs`` with the options ``--init_weights`` fixes; FlagError if it cannot serve."""
    if not path:
        return model_kwargs
    path = os.path.expanduser(path)
    try:
        # The class count comes from the data (a different one gets a fresh head), so only
        # the architecture the file fixes is merged here.
        kwargs, _ = registry.weights_options(
            registry.resolve(model_name), path, {**model_kwargs, "include_top": False})
        kwargs.pop("include_top")
    except (FileNotFoundError, ValueError) as error:
        raise FlagError("init_weights", str(error)) from None
    return kwargs


def _check_positive(values: dict, minimum: int = 1) -> None:
    for flag, value in values.items():
        if value is not None and value < minimum:
            raise FlagError(flag, f"must be >= {minimum}, got {value}.")


# flag -> (lowest, highest, lowest allowed?, highest allowed?); None: no bound. Checked when set.
NUMBER_RANGES = {
    "lr": (0, None, False, True),
    "momentum": (0, 1, True, False),
    "weight_decay": (0, None, True, True),
    "lr_decay": (0, 1, False, True),
    "warmup_steps": (0, None, True, True),
    "warmup_lr": (0, None, False, True),
    "epochs": (0, None, False, True),
    "seed": (0, None, True, True),
    "weight_average": (0, 1, True, False),
    "worker_timeout": (0, None, False, True),
    "divergence_window": (1, None, True, True),
    "shortcut_scale": (0, None, True, True),
    "gate_bias_init": (None, None, True, True),
    "dropout_rate": (0, 1, True, False),
}


def check_numbers(F) -> None:
    """Every numeric flag finite and in its range (``NUMBER_RANGES``), else a FlagError naming it."""
    for flag, (low, high, low_ok, high_ok) in NUMBER_RANGES.items():
        value = getattr(F, flag, None)
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            raise FlagError(flag, f"must be a finite number, got {value}.")
        if low is not None and (value < low or (value == low and not low_ok)):
            raise FlagError(flag, f"must be {'>=' if low_ok else '>'} {low}, got {value}.")
        if high is not None and (value > high or (value == high and not high_ok)):
            raise FlagError(flag, f"must be {'<=' if high_ok else '<'} {high}, got {value}.")
    try:
        divergence_lib.check_settings(F.divergence_factor, F.divergence_window)
    except ValueError as error:
        raise FlagError("divergence_factor", str(error)) from None


def check_classes(data_dir: str, split: str) -> None:
    """An image folder's training split must hold at least two class folders."""
    folder = os.path.join(data_dir, split)
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if len(classes) < 2:
        raise FlagError(
            "data_dir", f"{folder!r} holds {len(classes)} class folder(s) {classes}: a classifier needs at least two."
        )


def check_writable_dir(flag: str, path: str | None) -> None:
    """``path`` is, or can be created as, a writable directory (nothing is created here)."""
    if not path:
        return
    path = os.path.abspath(os.path.expanduser(path))
    if os.path.exists(path) and not os.path.isdir(path):
        raise FlagError(flag, f"{path!r} exists and is not a directory.")
    probe = path
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise FlagError(flag, f"cannot create {path!r}: {probe!r} is not a directory.")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise FlagError(flag, f"cannot write to {probe!r} (permission denied).")


def settings_from_flags(family: str, flag_values: flags.FlagValues = FLAGS, argv=()) -> Settings:
    """The parsed flags of the ``family`` trainer as validated :class:`Settings`.

    The only function that reads flag values. Cheap checks only (no model built, no data
    read); a ``FlagError`` names the first bad flag. ``argv`` is recorded in ``results.json``.
    """
    if family not in FAMILIES:
        raise ValueError(f"Unknown family {family!r}. Valid choices: {', '.join(map(repr, FAMILIES))}.")
    F = flag_values
    imagenet = family == "imagenet"
    if F.stacked_stages and F.sync_bn:
        raise FlagError("sync_bn", "not supported with --stacked_stages (its BN is per replica).")
    if F.jit_compile and F.sync_bn:
        raise FlagError("jit_compile", JIT_SYNC_BN)
    model_name, model_kwargs = model_settings(
        F.model, unit=F.unit, preact=F.preact, order=F.order, shortcut=F.shortcut,
        stacked_stages=F.stacked_stages, recompute=F.recompute,
        dtype_policy=resolve_dtype_policy(F.dtype_policy, F.strategy),
        padding=F.padding,
        shortcut_options={option: getattr(F, option) for option in SHORTCUT_OPTIONS
                          if getattr(F, option) is not None},
    )
    model_kwargs = init_weights_options(model_name, F.init_weights, model_kwargs)
    dataset, data_dir = F.dataset, None
    if F.data_dir:
        dataset, data_dir = None, os.path.expanduser(F.data_dir)
        for split in (F.train_split, F.eval_split):
            if not os.path.isdir(os.path.join(data_dir, split)):
                raise FlagError(
                    "data_dir", f"no folder {os.path.join(data_dir, split)!r}: expected <root>/<split>/<class>/<image>."
                )
    if F.recipe:
        recipe = recipes_lib.get_recipe(F.recipe)
    else:
        recipe = recipes_lib.recipe_for_dataset(dataset or family, family)
    if F.train_steps is not None and F.epochs is not None:
        raise FlagError("epochs", "give --train_steps or --epochs, not both.")
    _check_positive({"batch_size": F.batch_size, "train_steps": F.train_steps,
                     "steps_per_loop": F.steps_per_loop,
                     "keep_checkpoints": F.keep_checkpoints, "log_every": F.log_every,
                     "cpu_devices": F.cpu_devices})
    _check_positive({"checkpoint_every": F.checkpoint_every, "eval_every": F.eval_every}, minimum=0)
    if F.epochs is not None and F.epochs <= 0:
        raise FlagError("epochs", f"must be positive, got {F.epochs}.")
    if F.lr is not None and F.lr <= 0:
        raise FlagError("lr", f"must be positive, got {F.lr}.")
    if F.label_smoothing is not None and not 0 <= F.label_smoothing < 1:
        raise FlagError("label_smoothing", f"must be in [0, 1), got {F.label_smoothing}.")
    check_numbers(F)
    if data_dir:
        check_classes(data_dir, F.train_split)
    check_writable_dir("model_dir", F.model_dir)
    if F.export:
        check_writable_dir("export_dir", F.export_dir)
    recipe = recipe.replace(
        batch_size=F.batch_size,
        base_lr=F.lr,
        momentum=F.momentum,
        nesterov=F.nesterov,
        weight_decay=F.weight_decay,
        decay_bn=F.decay_bn,
        schedule=F.lr_schedule,
        lr_boundaries=tuple(F.lr_boundaries) if F.lr_boundaries is not None else None,
        decay_factor=F.lr_decay,
        warmup_steps=F.warmup_steps,
        warmup_lr=F.warmup_lr,
        label_smoothing=F.label_smoothing,
        weight_average=F.weight_average,
        eval_flip=F.eval_flip,
        eval_translate=F.eval_translate,
        train_steps=F.train_steps,
        epochs=F.epochs,
    )
    try:  # boundary syntax, with a stand-in run length (the real one needs the dataset size)
        schedules.resolve_boundaries(recipe.lr_boundaries, 10**9, 10**6)
    except ValueError as error:
        raise FlagError("lr_boundaries", str(error)) from None
    eval_sizes = ()
    if imagenet:
        try:
            eval_sizes = tuple(int(size) for size in F.eval_sizes)
        except ValueError:
            raise FlagError("eval_sizes", f"sizes must be integers, got {F.eval_sizes}.") from None
        if not eval_sizes or any(size not in IMAGENET_EVAL_SIZES for size in eval_sizes):
            raise FlagError("eval_sizes", f"the paper's single-crop tests are 224 and 320, got {F.eval_sizes}.")
    source_name = os.path.basename(os.path.normpath(data_dir)) if data_dir else dataset
    return Settings(
        family=family,
        model_name=model_name,
        recipe=recipe,
        model_dir=F.model_dir or os.path.join("runs", f"{source_name}_{model_name}"),
        model_kwargs=model_kwargs,
        dataset=dataset,
        data_dir=data_dir,
        tfds_dir=F.tfds_dir,
        manual_dir=F.manual_dir if imagenet else None,
        train_split=F.train_split,
        eval_split=F.eval_split,
        input=F.input if not imagenet else "stream",
        augment=F.augment if imagenet else "scale",
        color=F.color if imagenet else True,
        eval_sizes=eval_sizes,
        strategy_name=F.strategy,
        cpu_devices=F.cpu_devices,
        tpu=F.tpu,
        worker_timeout=F.worker_timeout,
        sync_bn=F.sync_bn,
        dtype_auto=F.dtype_policy == "auto",
        jit_compile=F.jit_compile,
        steps_per_loop=F.steps_per_loop,
        checkpoint_every=F.checkpoint_every,
        keep_checkpoints=F.keep_checkpoints,
        log_every=F.log_every,
        eval_every=F.eval_every,
        seed=F.seed,
        init_weights=os.path.expanduser(F.init_weights) if F.init_weights else None,
        export=F.export,
        export_dir=F.export_dir,
        strict=F.strict,
        divergence_factor=F.divergence_factor,
        divergence_window=F.divergence_window,
        argv=tuple(argv),
    )


def _strategy_flag_error(error: strategy_lib.StrategyError) -> FlagError:
    return FlagError(STRATEGY_ARGUMENT_FLAGS[error.argument], str(error))


def build_data(settings: Settings, global_batch: int) -> tuple:
    """(train batches, train info, {eval name: dataset}); a FlagError if the data cannot be read.

    The train batches are a dataset (streaming) or a function of the first step
    (``--input=memory``, see ``data.InMemorySplit``); ``Trainer.fit`` takes either.
    """
    if settings.input != "stream":
        loaded = in_memory_data(settings, global_batch)
        if loaded is not None:
            return loaded
    return streaming_data(settings, global_batch)


def in_memory_data(settings: Settings, global_batch: int):
    """``build_data``'s result from splits decoded into memory; None if ``--input=auto`` and the
    data is not CIFAR-sized (too large, or images that call for the ImageNet recipe)."""
    common = dict(data_dir=settings.tfds_dir, strict=settings.strict, only_preprocessing="cifar")
    try:
        train = data_lib.InMemorySplit.load(settings.source, settings.train_split, **common)
        evaluation = data_lib.InMemorySplit.load(settings.source, settings.eval_split, **common)
    except data_lib.NotForMemory as error:
        if settings.input == "auto":
            return None
        raise FlagError("input", _first_line(error)) from None
    except (FileNotFoundError, ValueError, OSError) as error:
        raise FlagError(settings.data_flag, _first_line(error)) from None
    except tf.errors.InvalidArgumentError as error:  # --strict and an undecodable file
        raise FlagError("strict", _first_line(error.message)) from None
    if train.steps_per_epoch(global_batch) < 1:
        raise FlagError("batch_size", f"{global_batch} is larger than the {len(train)} training examples.")
    # The decoded examples (a file that failed to decode is not one), and the augmentation used.
    info = dataclasses.replace(train.info, num_examples=len(train), augment="cifar")
    info.bad_files = train.info.bad_files
    batches = train.train_batches(global_batch, seed=settings.seed)
    return batches, info, {settings.eval_split: evaluation.eval_batches(global_batch)}


def _first_line(error) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def streaming_data(settings: Settings, global_batch: int) -> tuple:
    """``build_data``'s result from ``data.build_dataset`` (decoding every epoch)."""
    common = dict(seed=settings.seed, data_dir=settings.tfds_dir, strict=settings.strict)
    train_kwargs = {}
    if settings.family == "imagenet":
        common["manual_dir"] = settings.manual_dir
        train_kwargs = dict(preprocessing="imagenet_224", augment=settings.augment, color=settings.color)
    try:
        train, info = data_lib.build_dataset(
            settings.source, settings.train_split, batch_size=global_batch, training=True,
            **train_kwargs, **common,
        )
        evals = {}
        if settings.family == "imagenet":
            for size in settings.eval_sizes:
                evals[f"{settings.eval_split}@{size}"], _ = data_lib.build_dataset(
                    settings.source, settings.eval_split, batch_size=global_batch, training=False,
                    preprocessing=f"imagenet_{size}", **common,
                )
        else:
            evals[settings.eval_split], _ = data_lib.build_dataset(
                settings.source, settings.eval_split, batch_size=global_batch, training=False,
                preprocessing=info.preprocessing, **common,
            )
    except (FileNotFoundError, ValueError, OSError) as error:
        raise FlagError(settings.data_flag, _first_line(error)) from None
    return train, info, evals


def run(settings: Settings, stream=None) -> dict:
    """Train as ``settings`` say; returns the final evaluations ``{name: {error, loss, count}}``.

    Reads no flags. Raises FlagError when a setting turns out bad once the strategy or the data
    is built, and ``DivergenceError`` if the loss stops being finite.
    """
    stream = stream or sys.stdout
    try:
        strategy = strategy_lib.build_strategy(
            settings.strategy_name, cpu_devices=settings.cpu_devices, tpu=settings.tpu,
            worker_timeout=settings.worker_timeout,
        )
        recipe = settings.recipe
        strategy_lib.per_replica_batch(recipe.batch_size, strategy)
    except strategy_lib.StrategyError as error:
        raise _strategy_flag_error(error) from None
    chief = strategy_lib.is_chief(strategy)

    train, info, evals = build_data(settings, recipe.batch_size)
    steps_per_epoch = info.num_examples // recipe.batch_size
    if steps_per_epoch < 1:
        raise FlagError(
            "batch_size", f"{recipe.batch_size} is larger than the {info.num_examples} training examples."
        )
    check_schedule_fits(recipe, steps_per_epoch)
    input_shape = (None, None, 3) if settings.family == "imagenet" else (*info.image_size, 3)

    def build_model():
        keras.utils.set_random_seed(settings.seed)
        # A resumed run's checkpoint, restored by the Trainer, replaces these weights.
        return registry.get_model(
            settings.model_name, num_classes=info.num_classes, input_shape=input_shape,
            weights=settings.init_weights, **settings.model_kwargs,
        )

    trainer = Trainer(
        strategy,
        build_model,
        recipe,
        steps_per_epoch=steps_per_epoch,
        global_batch=recipe.batch_size,
        model_dir=settings.model_dir,
        sync_bn=settings.sync_bn,
        checkpoint_every=settings.checkpoint_every,
        eval_every=settings.eval_every,
        log_every=settings.log_every,
        keep_checkpoints=settings.keep_checkpoints,
        divergence_factor=settings.divergence_factor,
        divergence_window=settings.divergence_window,
        stream=stream,
        jit_compile=settings.jit_compile,
        steps_per_loop=steps_per_loop(settings),
    )
    say = (lambda text: print(text, file=stream, flush=True)) if chief else (lambda text: None)
    if chief:
        data_lib.write_label_map(info.class_names, settings.model_dir)
    say(
        f"{trainer.model.name} ({trainer.model.count_params():,} parameters) on {info.source} "
        f"{settings.train_split} ({info.num_examples} images, {info.num_classes} classes, "
        f"{info.image_size[0]}x{info.image_size[1]}); strategy {settings.strategy_name} with "
        f"{strategy.num_replicas_in_sync} replica(s)"
        + "".join(f"; {item}" for item in speed_settings(settings, trainer))
        + f"; batch {recipe.batch_size}, "
        f"{trainer.total_steps} steps ({trainer.total_steps / steps_per_epoch:.1f} epochs), "
        f"lr {trainer.base_lr:g} {recipe.schedule}"
        + (f" /{1 / recipe.decay_factor:g} at {list(trainer.boundaries)}" if trainer.boundaries else "")
        + moved_boundaries_note(recipe)
        + (f", after a warm-up of {recipe.warmup_steps} steps at {recipe.warmup_lr:g}" if recipe.warmup_steps else "")
        + f"; run directory {settings.model_dir}"
    )
    started = time.monotonic()
    results = trainer.fit(train, evals)
    if info.bad_files.count:
        say(f"Skipped {info.bad_files.count} unreadable, corrupt or oversized training image file(s) "
            f"({info.bad_files.skips} time(s)), e.g. {info.bad_files.files[0]}; --strict fails instead.")
    for name, result in results.items():
        say(
            f"Final {name} error: {100 * result['error']:.2f}% "
            f"(accuracy {100 * (1 - result['error']):.2f}%) on {result['count']} images "
            f"after {trainer.step} steps."
        )
    if chief:
        write_results(settings, trainer, results, time.monotonic() - started)
    say(f"Plot: {os.path.join(settings.model_dir, 'curves.png')}; metrics: "
        f"{os.path.join(settings.model_dir, 'metrics.csv')}; "
        f"{time.monotonic() - started:.0f} s in this process.")
    if settings.export and chief:
        path = export_lib.export_model(
            trainer.use_averaged_weights(), settings.export_dir, name=settings.model_name,
            preprocessing=info.preprocessing if settings.family == "cifar" else "imagenet_224",
            class_names=info.class_names,
        )
        say(f"Exported to {path}")
    return results


def steps_per_loop(settings: Settings) -> int:
    """``--steps_per_loop``, or its default: 1, ``TPU_STEPS_PER_LOOP`` under TPUStrategy."""
    if settings.steps_per_loop:
        return settings.steps_per_loop
    return TPU_STEPS_PER_LOOP if settings.strategy_name == "tpu" else 1


def speed_settings(settings: Settings, trainer) -> list:
    """The banner's words for the settings that are not the plain float32 loop."""
    items = []
    policy = settings.model_kwargs.get("dtype_policy", "float32")
    if policy != "float32":
        items.append(policy + (" with dynamic loss scaling" if trainer.loss_scaling else "")
                     + (" (auto: bf16 hardware)" if settings.dtype_auto else ""))
    if settings.jit_compile:
        items.append("XLA")
    if trainer.steps_per_loop > 1:
        items.append(f"up to {trainer.steps_per_loop} steps per loop")
    return items


def check_schedule_fits(recipe: recipes_lib.Recipe, steps_per_epoch: int) -> None:
    """A FlagError for a step-decay boundary or a warm-up that does not fit in the run.

    Only known once the data (hence the run's length in iterations) is: an iteration or epoch
    boundary at or after the last step blames ``--lr_boundaries``; a warm-up as long as the
    run blames ``--warmup_steps``.
    """
    total = recipe.total_steps(steps_per_epoch)
    if recipe.schedule == "step":
        try:
            schedules.resolve_boundaries(recipe.lr_boundaries, total, steps_per_epoch, within_run=True)
        except ValueError as error:
            raise FlagError("lr_boundaries", str(error)) from None
    if recipe.warmup_steps and recipe.warmup_steps >= total:
        raise FlagError(
            "warmup_steps", f"a warm-up of {recipe.warmup_steps} steps does not end inside the run "
            f"({total} steps); shorten it or lengthen the run."
        )


def moved_boundaries_note(recipe: recipes_lib.Recipe) -> str:
    """The banner's note when the recipe's absolute boundaries moved to fractions of this run."""
    try:
        base = recipes_lib.get_recipe(recipe.name)
    except ValueError:
        return ""
    moved = base.relative_boundaries()
    if recipe.schedule != "step" or base.lr_boundaries == moved or recipe.lr_boundaries != moved:
        return ""
    length = f"{base.train_steps} steps" if base.train_steps else f"{base.epochs:g} epochs"
    return (f" (the {base.name} recipe's {', '.join(map(str, base.lr_boundaries))} of {length}, "
            f"moved to the same fractions {', '.join(f'{float(f):.3g}' for f in moved)} of this run)")


def write_results(settings: Settings, trainer, results: dict, seconds: float) -> str:
    """``<model_dir>/results.json``: the final evaluations of a finished run, for tools.

    Its presence means the run reached its last step (the ablation runner skips such runs);
    ``seconds`` is the time spent in the process that finished it (not the whole run if it
    was resumed).
    """
    record = {
        "model": trainer.model.name,
        "parameters": int(trainer.model.count_params()),
        "steps": int(trainer.step),
        "seconds_in_last_process": round(seconds, 1),
        "recipe": dataclasses.asdict(trainer.recipe),
        "base_lr": float(trainer.base_lr),
        "global_batch": int(trainer.global_batch),
        "dtype_policy": settings.model_kwargs.get("dtype_policy", "float32"),
        "input": "memory" if trainer.exact_input else "stream",
        "source": settings.source,
        "seed": settings.seed,
        "final": {name: {k: float(v) if k != "count" else int(v) for k, v in r.items()}
                  for name, r in results.items()},
        "argv": list(settings.argv),
    }
    path = os.path.join(settings.model_dir, RESULTS_FILE)
    with open(path + ".tmp", "w") as handle:
        json.dump(record, handle, indent=2)
    os.replace(path + ".tmp", path)
    return path


def main(family: str, flag_values: flags.FlagValues = FLAGS, argv=None, stream=None) -> None:
    """The body of a trainer's ``main(argv)`` once flags are parsed: run; one line on stderr and
    exit 2 (bad flag), 3 (divergence, or a checkpoint with non-finite values) or 4 (another
    worker of a multi-worker run was lost; restart them all to resume)."""
    code = _run_settings(family, flag_values, sys.argv if argv is None else argv, stream)
    if code:
        sys.exit(code)


def _run_settings(family, flag_values, argv, stream) -> int:
    try:
        settings = settings_from_flags(family, flag_values, argv=argv)
        run(settings, stream)
    except FlagError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FLAG_ERROR
    except DivergenceError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_DIVERGED
    except WorkerLostError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_WORKER_LOST
    return 0


HELP_ARGUMENTS = ("-h", "-help", "--help", "-?", "--helpshort", "--helpfull")


def wants_help(argv) -> bool:
    """Whether the command line asks for help (before ``--``)."""
    arguments = list(argv[1:])
    if "--" in arguments:
        arguments = arguments[: arguments.index("--")]
    return any(a in HELP_ARGUMENTS for a in arguments)


def parse_command_line(flag_values: flags.FlagValues, argv) -> list:
    """Parse ``argv`` into ``flag_values``; a FlagError naming the flag for a malformed one.

    Returns the remaining arguments (``argv[0]`` first), as absl does.
    """
    try:
        return flag_values(list(argv))
    except flags.UnrecognizedFlagError as error:
        hint = str(error).split(". ", 1)[1].strip() if ". " in str(error) else "see --help"
        raise FlagError(error.flagname, f"unknown flag ({hint}).") from None
    except flags.Error as error:
        text = " ".join(str(error).split())
        match = re.match(r"flag --(\w+)(=\S*)?: (.*)", text) or re.search(r"flag --(\w+)()(.*)", text)
        if match:
            raise FlagError(match.group(1), match.group(3).strip(" :") or text) from None
        raise FlagError("?", text) from None


def console_main(family: str, argv=None, flag_values: flags.FlagValues = FLAGS, stream=None) -> int:
    """A trainer script's whole command line: ``--help`` (exit 0), parse, validate, run.

    Returns the exit status: 0, 2 (usage error: one line ``error: --flag: problem`` on stderr,
    no traceback), 3 (training diverged or a checkpoint holds non-finite values).
    """
    argv = list(sys.argv if argv is None else argv)
    if wants_help(argv):
        print(flag_values.main_module_help() or flag_values.get_help())
        return 0
    try:
        rest = parse_command_line(flag_values, argv)
        if len(rest) > 1:
            print(f"error: unexpected argument {rest[1]!r}: flags are --name=value.", file=sys.stderr)
            return EXIT_FLAG_ERROR
    except FlagError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FLAG_ERROR
    return _run_settings(family, flag_values, argv, stream)
