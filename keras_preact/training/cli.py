"""The command line shared by ``trainers/cifar.py`` and ``trainers/imagenet.py``.

``define_flags(family)`` declares the absl flags (defaults that depend on the dataset are
``None`` and come from its ``Recipe``), ``check_flags`` validates everything that can be
checked without building a model or reading data, and ``run`` does the job:

strategy -> data -> model and optimizer in ``strategy.scope()`` -> ``Trainer.fit`` (resuming from
``--model_dir``) -> final test error, plot, optional export.

Bad input fails within seconds, before any heavy work, with one line naming the flag
(``FlagError``): unknown model, impossible depth, bad order/unit/shortcut combinations, a batch
that does not split over the replicas, missing data, no TPU.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sys
import time

from absl import flags

from keras_preact import presets, resnet, units
from keras_preact.training import recipes as recipes_lib
from keras_preact.training import schedules, strategy as strategy_lib

FAMILIES = ("cifar", "imagenet")
CIFAR_DATASETS = ("cifar10_sample", "cifar10", "cifar100")
IMAGENET_DATASETS = ("imagenet2012",)
CUSTOM_CIFAR_MODEL = re.compile(r"^resnet(\d+)$")

FLAGS = flags.FLAGS


class FlagError(ValueError):
    """A bad flag value; ``str()`` is the one line shown to the user."""

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
    _define(flag_values, flags.DEFINE_string, "eval_split", "test" if cifar else "validation", "Evaluation split.")
    if not cifar:
        _define(flag_values, flags.DEFINE_string, "manual_dir", None, "Where the ILSVRC2012 tar files are (TFDS).")
        _define(flag_values, flags.DEFINE_enum, 
            "augment", "scale", ["scale", "inception"],
            "Scale jitter 256-480 + 224 crop (the paper's) or Inception scale/aspect crops.",
        )
        _define(flag_values, flags.DEFINE_bool, "color", True, "Colour and lighting augmentation.")
        _define(flag_values, flags.DEFINE_list, "eval_sizes", ["224", "320"], "Single-crop test sizes (224 and/or 320).")
    # Model.
    _define(flag_values, flags.DEFINE_string, 
        "model", "resnet20" if cifar else "resnet50",
        f"One of {', '.join(presets.MODEL_NAMES)}, or resnet<depth> for any valid CIFAR depth.",
    )
    _define(flag_values, flags.DEFINE_bool, "preact", None, "Pre-activation (full_preact) or original units.")
    _define(flag_values, flags.DEFINE_enum, "order", None, list(units.ORDERS), "Unit order (paper Fig. 4).")
    _define(flag_values, flags.DEFINE_enum, "shortcut", "identity", list(units.SHORTCUTS), "Shortcut (paper Fig. 2).")
    _define(flag_values, flags.DEFINE_enum, "unit", None, list(units.KINDS), "Unit kind (CIFAR models).")
    _define(flag_values, flags.DEFINE_bool, "stacked_stages", False,
            "Run each stage's repeated units as one loop over stacked weights (very deep nets).")
    _define(flag_values, flags.DEFINE_bool, "recompute", False,
            "With --stacked_stages: recompute units in the backward pass (less memory).")
    # Distribution.
    _define(flag_values, flags.DEFINE_enum, "strategy", "default", list(strategy_lib.STRATEGIES), "tf.distribute strategy.")
    _define(flag_values, flags.DEFINE_integer, 
        "cpu_devices", None, "Split the CPU into this many logical devices (mirrored on a CPU machine)."
    )
    _define(flag_values, flags.DEFINE_string, "tpu", None, "TPU name or grpc:// address (--strategy=tpu).")
    _define(flag_values, flags.DEFINE_bool, "sync_bn", False, "Synchronise BatchNorm batch statistics across replicas.")
    # Optimisation (unset: the dataset's recipe).
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


@dataclasses.dataclass
class Settings:
    """Everything ``run`` needs, validated."""

    family: str
    source: str  # dataset name or image-folder path
    model_name: str
    model_kwargs: dict
    recipe: recipes_lib.Recipe
    strategy_name: str
    model_dir: str
    eval_sizes: tuple = ()


def _model_kwargs(F, name: str) -> tuple:
    """(builder name, kwargs) after checking the model flags together, without building."""
    key = name.lower().replace("-", "").replace("_", "")
    kwargs = {"shortcut": F.shortcut}
    if F.recompute and not F.stacked_stages:
        raise FlagError("recompute", "needs --stacked_stages.")
    if F.stacked_stages:
        if F.shortcut == "dropout":
            raise FlagError("stacked_stages", "the dropout shortcut cannot be stacked.")
        if F.sync_bn:
            raise FlagError("sync_bn", "not supported with --stacked_stages (its BN is per replica).")
        kwargs.update(stacked_stages=True, recompute=bool(F.recompute))
    try:
        kwargs["order"] = resnet.resolve_order(F.preact, F.order)
    except ValueError as error:
        raise FlagError("order" if F.order else "preact", str(error)) from None
    if F.unit is not None:
        kwargs["unit"] = F.unit
    if key in presets.IMAGENET_MODELS:
        if F.unit is not None:
            raise FlagError(
                "unit", f"{key} fixes its unit kind ({presets.IMAGENET_MODELS[key][0]}); drop --unit."
            )
        return key, kwargs
    match = CUSTOM_CIFAR_MODEL.match(key)
    if not match:
        raise FlagError(
            "model",
            f"unknown model {name!r}. Valid choices: {', '.join(presets.MODEL_NAMES)}, "
            "or resnet<depth> for a CIFAR depth 6n+2 (basic), 9n+2 (bottleneck), 3n+2 (single).",
        )
    depth = int(match.group(1))
    unit = F.unit or ("bottleneck" if depth in presets.CIFAR_BOTTLENECK_DEPTHS else "basic")
    try:
        presets.cifar_units_per_stage(depth, unit)
    except ValueError as error:
        raise FlagError("model", str(error)) from None
    return key, kwargs


def check_flags(family: str, flag_values: flags.FlagValues = FLAGS) -> Settings:
    """Validate the parsed flags (cheap checks only); FlagError names the first bad flag."""
    F = flag_values
    model_name, model_kwargs = _model_kwargs(F, F.model)
    if F.data_dir:
        root = os.path.expanduser(F.data_dir)
        for split in (F.train_split, F.eval_split):
            if not os.path.isdir(os.path.join(root, split)):
                raise FlagError(
                    "data_dir", f"no folder {os.path.join(root, split)!r}: expected <root>/<split>/<class>/<image>."
                )
        source, dataset_name = root, "cifar" if family == "cifar" else "imagenet"
    else:
        source = dataset_name = F.dataset
    recipe = recipes_lib.recipe_for_dataset(dataset_name, family)
    if F.train_steps is not None and F.epochs is not None:
        raise FlagError("epochs", "give --train_steps or --epochs, not both.")
    for flag in ("batch_size", "train_steps", "checkpoint_every", "keep_checkpoints", "log_every"):
        value = getattr(F, flag)
        minimum = 0 if flag == "checkpoint_every" else 1
        if value is not None and value < minimum:
            raise FlagError(flag, f"must be >= {minimum}, got {value}.")
    if F.epochs is not None and F.epochs <= 0:
        raise FlagError("epochs", f"must be positive, got {F.epochs}.")
    if F.lr is not None and F.lr <= 0:
        raise FlagError("lr", f"must be positive, got {F.lr}.")
    if F.label_smoothing is not None and not 0 <= F.label_smoothing < 1:
        raise FlagError("label_smoothing", f"must be in [0, 1), got {F.label_smoothing}.")
    if F.cpu_devices is not None and F.cpu_devices < 1:
        raise FlagError("cpu_devices", f"must be >= 1, got {F.cpu_devices}.")
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
        train_steps=F.train_steps,
        epochs=F.epochs,
    )
    try:  # boundary syntax, with a stand-in run length (the real one needs the dataset size)
        schedules.resolve_boundaries(recipe.lr_boundaries, 10**9, 10**6)
    except ValueError as error:
        raise FlagError("lr_boundaries", str(error)) from None
    eval_sizes = ()
    if family == "imagenet":
        try:
            eval_sizes = tuple(int(size) for size in F.eval_sizes)
        except ValueError:
            raise FlagError("eval_sizes", f"sizes must be integers, got {F.eval_sizes}.") from None
        bad = [size for size in eval_sizes if size not in (224, 320)]
        if bad or not eval_sizes:
            raise FlagError("eval_sizes", f"the paper's single-crop tests are 224 and 320, got {F.eval_sizes}.")
    if F.export:
        try:
            from keras_preact import export as export_lib
        except ImportError:
            export_lib = None
        if not hasattr(export_lib, "export_model"):
            raise FlagError("export", "keras_preact.export.export_model is not available in this installation.")
    model_dir = F.model_dir or os.path.join(
        "runs", f"{os.path.basename(os.path.normpath(source)) if F.data_dir else source}_{model_name}"
    )
    return Settings(
        family=family,
        source=source,
        model_name=model_name,
        model_kwargs=model_kwargs,
        recipe=recipe,
        strategy_name=F.strategy,
        model_dir=model_dir,
        eval_sizes=eval_sizes,
    )


def _build_data(settings: Settings, global_batch: int):
    """(train dataset, train info, {eval name: dataset}) or FlagError on missing data."""
    from keras_preact.data import build_dataset

    flag = "data_dir" if FLAGS.data_dir else "dataset"
    common = dict(seed=FLAGS.seed, data_dir=FLAGS.tfds_dir)
    if settings.family == "imagenet":
        common["manual_dir"] = FLAGS.manual_dir
    train_kwargs = {}
    if settings.family == "imagenet":
        train_kwargs = dict(recipe="imagenet_224", augment=FLAGS.augment, color=FLAGS.color)
    try:
        train, info = build_dataset(
            settings.source, FLAGS.train_split, batch_size=global_batch, training=True,
            **train_kwargs, **common,
        )
        evals = {}
        if settings.family == "imagenet":
            for size in settings.eval_sizes:
                evals[f"{FLAGS.eval_split}@{size}"], _ = build_dataset(
                    settings.source, FLAGS.eval_split, batch_size=global_batch, training=False,
                    recipe=f"imagenet_{size}", **common,
                )
        else:
            evals[FLAGS.eval_split], _ = build_dataset(
                settings.source, FLAGS.eval_split, batch_size=global_batch, training=False,
                recipe=info.recipe, **common,
            )
    except (FileNotFoundError, ValueError, OSError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise FlagError(flag, message) from None
    return train, info, evals


def run(family: str, stream=None) -> dict:
    """Train from the parsed flags; returns the final evaluations. Raises FlagError on bad flags."""
    stream = stream or sys.stdout
    settings = check_flags(family)
    try:
        strategy = strategy_lib.build_strategy(
            settings.strategy_name, cpu_devices=FLAGS.cpu_devices, tpu=FLAGS.tpu
        )
    except strategy_lib.StrategyError as error:
        raise FlagError("cpu_devices" if "logical devices" in str(error) else "strategy", str(error)) from None
    recipe = settings.recipe
    try:
        strategy_lib.per_replica_batch(recipe.batch_size, strategy)
    except strategy_lib.StrategyError as error:
        raise FlagError("batch_size", str(error)) from None
    chief = strategy_lib.is_chief(strategy)

    import keras

    from keras_preact.training.loop import Trainer

    train, info, evals = _build_data(settings, recipe.batch_size)
    steps_per_epoch = info.num_examples // recipe.batch_size
    if steps_per_epoch < 1:
        raise FlagError(
            "batch_size", f"{recipe.batch_size} is larger than the {info.num_examples} training examples."
        )
    input_shape = (None, None, 3) if family == "imagenet" else (*info.image_size, 3)

    def build_model():
        keras.utils.set_random_seed(FLAGS.seed)
        kwargs = dict(num_classes=info.num_classes, input_shape=input_shape, **settings.model_kwargs)
        if settings.model_name in presets.MODEL_NAMES:
            return presets.get_model(settings.model_name, **kwargs)
        depth = int(CUSTOM_CIFAR_MODEL.match(settings.model_name).group(1))
        return presets.cifar_resnet(depth, **kwargs)  # any valid CIFAR depth, e.g. resnet8

    trainer = Trainer(
        strategy,
        build_model,
        recipe,
        steps_per_epoch=steps_per_epoch,
        global_batch=recipe.batch_size,
        model_dir=settings.model_dir,
        sync_bn=FLAGS.sync_bn,
        checkpoint_every=FLAGS.checkpoint_every,
        eval_every=FLAGS.eval_every,
        log_every=FLAGS.log_every,
        keep_checkpoints=FLAGS.keep_checkpoints,
        stream=stream,
    )
    say = (lambda text: print(text, file=stream, flush=True)) if chief else (lambda text: None)
    if chief:
        from keras_preact.data import write_label_map

        write_label_map(info.class_names, settings.model_dir)
    say(
        f"{trainer.model.name} ({trainer.model.count_params():,} parameters) on {info.source} "
        f"{FLAGS.train_split} ({info.num_examples} images, {info.num_classes} classes, "
        f"{info.image_size[0]}x{info.image_size[1]}); strategy {settings.strategy_name} with "
        f"{strategy.num_replicas_in_sync} replica(s); batch {recipe.batch_size}, "
        f"{trainer.total_steps} steps ({trainer.total_steps / steps_per_epoch:.1f} epochs), "
        f"lr {trainer.base_lr:g} {recipe.schedule}"
        + (f" /{1 / recipe.decay_factor:g} at {list(trainer.boundaries)}" if trainer.boundaries else "")
        + f"; run directory {settings.model_dir}"
    )
    started = time.monotonic()
    results = trainer.fit(train, evals)
    for name, result in results.items():
        say(
            f"Final {name} error: {100 * result['error']:.2f}% "
            f"(accuracy {100 * (1 - result['error']):.2f}%) on {result['count']} images "
            f"after {trainer.step} steps."
        )
    if chief:
        write_results(settings.model_dir, trainer, results, time.monotonic() - started)
    say(f"Plot: {os.path.join(settings.model_dir, 'curves.png')}; metrics: "
        f"{os.path.join(settings.model_dir, 'metrics.csv')}; "
        f"{time.monotonic() - started:.0f} s in this process.")
    if FLAGS.export and chief:
        from keras_preact.export import export_model

        path = export_model(
            trainer.model, FLAGS.export_dir, name=settings.model_name,
            recipe=info.recipe if family == "cifar" else "imagenet_224",
            class_names=info.class_names,
        )
        say(f"Exported to {path}")
    return results


def write_results(model_dir: str, trainer, results: dict, seconds: float) -> str:
    """``<model_dir>/results.json``: the final evaluations of a finished run, for tools.

    Its presence means the run reached its last step (the ablation runner skips such runs);
    ``seconds`` is the time spent in the process that finished it (not the whole run if it
    was resumed).
    """
    import json

    from keras_preact.training.observe import RESULTS_FILE

    record = {
        "model": trainer.model.name,
        "parameters": int(trainer.model.count_params()),
        "steps": int(trainer.step),
        "seconds_in_last_process": round(seconds, 1),
        "recipe": dataclasses.asdict(trainer.recipe),
        "base_lr": float(trainer.base_lr),
        "global_batch": int(trainer.global_batch),
        "final": {name: {k: float(v) if k != "count" else int(v) for k, v in r.items()}
                  for name, r in results.items()},
        "argv": sys.argv,
    }
    path = os.path.join(model_dir, RESULTS_FILE)
    with open(path + ".tmp", "w") as handle:
        json.dump(record, handle, indent=2)
    os.replace(path + ".tmp", path)
    return path


def main(family: str):
    """The body of a trainer's ``main(argv)``: one line on stderr and exit status 2 on bad flags."""
    from absl import logging

    from keras_preact.training.loop import DivergenceError

    if not FLAGS["verbosity"].present:  # TF's INFO chatter would break the progress bar
        logging.set_verbosity(logging.WARNING)
    try:
        run(family)
    except FlagError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except DivergenceError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(3)
