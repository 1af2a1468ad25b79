"""The trainer command line shared by ``trainers/cifar.py`` and ``trainers/imagenet.py``.

A thin driver over ``keras_preact.training.run_config``: flags (``keras_preact.cli.run_flags``,
shared with the fit trainer) -> :class:`RunConfig` -> ``run``.

* ``define_flags(family, flag_values)`` declares one absl flag per setting of the run
  configuration, generated from its fields (name, type, default, help text, choices); the
  recipe settings default to the chosen ``--recipe``'s values, which ``--help`` lists. Plus
  ``--recipe`` (the preset) and ``--config`` (a configuration file, JSON or YAML).
* ``config_from_flags(family, flag_values)`` is the only code that reads flag values: the
  file's values, then the preset, then every flag given, resolved and checked by
  ``run_config.resolve`` without building a model or reading data.
* ``run(config)`` does the job from the configuration alone: strategy -> data -> model and
  optimizer in ``strategy.scope()`` -> ``Trainer.fit`` (resuming from the run directory) ->
  final test error, plot, ``results.json``, optional export. It writes the resolved
  configuration to ``<run directory>/config.json``; ``--config`` on that file repeats the run.

Bad input fails within seconds, before any heavy work, with a ``FlagError`` naming the flag:
unknown model, impossible depth, bad order/unit/shortcut combinations, a batch that does not
split over the replicas, missing data, no TPU. Errors are attributed to flags by structure,
never by their text: each setting's check names its own flag (``settings.SettingError``),
``registry.ModelNameError.argument`` (name or unit), ``strategy.StrategyError.argument``
(strategy name, CPU devices, TPU, batch) and the data flag that was given (``--data_dir`` or
``--dataset``).

``console_main(family)`` is a trainer script's whole command line: ``--help`` exits 0; a
malformed, unknown or out-of-range flag is one line ``error: --flag: message`` on stderr and
exit status 2 (no traceback, nothing written); 3 when training diverges (the message names the
last known-good checkpoint the run directory now resumes from) or a checkpoint to resume holds
non-finite values. ``python -m keras_preact.cli.train cifar|imagenet [flags]`` is the same
command line as the trainer script of that family.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time

import keras
import tensorflow as tf
from absl import flags

from keras_preact import data as data_lib
from keras_preact import export as export_lib
from keras_preact import registry
from keras_preact.cli import command_help
from keras_preact.cli import run_flags
from keras_preact.cli.run_flags import config_from_flags, define_flags, parse_command_line, wants_help
from keras_preact.common import FAMILIES
from keras_preact.training import recipes as recipes_lib
from keras_preact.training import run_config
from keras_preact.training import settings as settings_lib
from keras_preact.training import strategy as strategy_lib
from keras_preact.training.loop import DivergenceError, Trainer, WorkerLostError
from keras_preact.training.observe import RESULTS_FILE
from keras_preact.training.run_config import RunConfig, check_schedule_fits
from keras_preact.weights import load_weights

STRATEGY_ARGUMENT_FLAGS = {  # strategy.StrategyError.argument
    "name": "strategy",
    "tf_config": "strategy",  # the environment of --strategy=multi_worker_mirrored
    "tpu": "tpu",
    "cpu_devices": "cpu_devices",
    "global_batch": "batch_size",
}

EXIT_FLAG_ERROR = 2
EXIT_DIVERGED = 3
EXIT_WORKER_LOST = 4

FLAGS = flags.FLAGS

# A bad flag value; ``str()`` is the one line shown to the user, ``flag`` names the flag. The
# configuration's own error: each setting's check names its flag.
FlagError = settings_lib.SettingError
ENGINE = "tf.distribute"

def _strategy_flag_error(error: strategy_lib.StrategyError) -> FlagError:
    return FlagError(STRATEGY_ARGUMENT_FLAGS[error.argument], str(error))


def build_data(config: RunConfig, global_batch: int) -> tuple:
    """(train batches, train info, {eval name: dataset}); a FlagError if the data cannot be read.

    The train batches are a dataset (streaming) or a function of the first step
    (``--input=memory``, see ``data.InMemorySplit``); ``Trainer.fit`` takes either.
    """
    if config.data.input != "stream":
        loaded = in_memory_data(config, global_batch)
        if loaded is not None:
            return loaded
    return streaming_data(config, global_batch)


def in_memory_data(config: RunConfig, global_batch: int):
    """``build_data``'s result from splits decoded into memory; None if ``--input=auto`` and the
    data is not CIFAR-sized (too large, or images that call for the ImageNet recipe)."""
    data = config.data
    common = dict(data_dir=data.tfds_dir, strict=data.strict, only_preprocessing="cifar")
    try:
        train = data_lib.InMemorySplit.load(data.source, data.train_split, **common)
        evaluation = data_lib.InMemorySplit.load(data.source, data.eval_split, **common)
    except data_lib.NotForMemory as error:
        if data.input == "auto":
            return None
        raise FlagError("input", _first_line(error)) from None
    except (FileNotFoundError, ValueError, OSError) as error:
        raise FlagError(data.flag, _first_line(error)) from None
    except tf.errors.InvalidArgumentError as error:  # --strict and an undecodable file
        raise FlagError("strict", _first_line(error.message)) from None
    if train.steps_per_epoch(global_batch) < 1:
        raise FlagError("batch_size", f"{global_batch} is larger than the {len(train)} training examples.")
    # The decoded examples (a file that failed to decode is not one), and the augmentation used.
    info = dataclasses.replace(train.info, num_examples=len(train), augment="cifar")
    info.bad_files = train.info.bad_files
    batches = train.train_batches(global_batch, seed=config.run.seed)
    return batches, info, {data.eval_split: evaluation.eval_batches(global_batch)}


def _first_line(error) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def streaming_data(config: RunConfig, global_batch: int) -> tuple:
    """``build_data``'s result from ``data.build_dataset`` (decoding every epoch)."""
    data = config.data
    common = dict(seed=config.run.seed, data_dir=data.tfds_dir, strict=data.strict)
    train_kwargs = {}
    if config.family == "imagenet":
        common["manual_dir"] = data.manual_dir
        train_kwargs = dict(preprocessing="imagenet_224", augment=data.augment, color=data.color)
    try:
        train, info = data_lib.build_dataset(
            data.source, data.train_split, batch_size=global_batch, training=True,
            **train_kwargs, **common,
        )
        evals = {}
        if config.family == "imagenet":
            for size in config.recipe.eval_sizes:
                evals[f"{data.eval_split}@{size}"], _ = data_lib.build_dataset(
                    data.source, data.eval_split, batch_size=global_batch, training=False,
                    preprocessing=f"imagenet_{size}", **common,
                )
        else:
            evals[data.eval_split], _ = data_lib.build_dataset(
                data.source, data.eval_split, batch_size=global_batch, training=False,
                preprocessing=info.preprocessing, **common,
            )
    except (FileNotFoundError, ValueError, OSError) as error:
        raise FlagError(data.flag, _first_line(error)) from None
    return train, info, evals


def run(config: RunConfig, stream=None) -> dict:
    """Train as ``config`` says; returns the final evaluations ``{name: {error, loss, count}}``.

    Reads no flags. Raises FlagError when a setting turns out bad once the strategy or the data
    is built, and ``DivergenceError`` if the loss stops being finite.
    """
    stream = stream or sys.stdout
    distribution, recipe, run_settings = config.distribution, config.recipe, config.run
    try:
        strategy = strategy_lib.build_strategy(
            distribution.strategy, cpu_devices=distribution.cpu_devices, tpu=distribution.tpu,
            worker_timeout=distribution.worker_timeout,
        )
        strategy_lib.per_replica_batch(recipe.batch_size, strategy)
    except strategy_lib.StrategyError as error:
        raise _strategy_flag_error(error) from None
    chief = strategy_lib.is_chief(strategy)

    train, info, evals = build_data(config, recipe.batch_size)
    steps_per_epoch = info.num_examples // recipe.batch_size
    if steps_per_epoch < 1:
        raise FlagError(
            "batch_size", f"{recipe.batch_size} is larger than the {info.num_examples} training examples."
        )
    check_schedule_fits(recipe, steps_per_epoch)
    input_shape = (None, None, 3) if config.family == "imagenet" else (*info.image_size, 3)
    model_name, model_kwargs = config.model_name, config.model_kwargs
    init_weights = config.model.init_weights

    def build_model():
        keras.utils.set_random_seed(run_settings.seed)
        # A resumed run's checkpoint, restored by the Trainer, replaces these weights.
        model = registry.get_model(model_name, num_classes=info.num_classes, input_shape=input_shape,
                                   **model_kwargs)
        if init_weights:  # the options it fixes are in model_kwargs already
            load_weights(model, init_weights, skip_head=run_config.new_head(init_weights, info.num_classes))
        return model

    trainer = Trainer(
        strategy,
        build_model,
        recipe,
        steps_per_epoch=steps_per_epoch,
        global_batch=recipe.batch_size,
        model_dir=run_settings.model_dir,
        sync_bn=distribution.sync_bn,
        checkpoint_every=config.checkpointing.checkpoint_every,
        eval_every=run_settings.eval_every,
        log_every=run_settings.log_every,
        keep_checkpoints=config.checkpointing.keep_checkpoints,
        divergence_factor=run_settings.divergence_factor,
        divergence_window=run_settings.divergence_window,
        stream=stream,
        jit_compile=config.speed.jit_compile,
        steps_per_loop=config.speed.loop_length(distribution.strategy),
    )
    say = (lambda text: print(text, file=stream, flush=True)) if chief else (lambda text: None)
    if chief:
        data_lib.write_label_map(info.class_names, run_settings.model_dir)
        run_config.write(config, run_settings.model_dir)
    say(
        f"{trainer.model.name} ({trainer.model.count_params():,} parameters) on {info.source} "
        f"{config.data.train_split} ({info.num_examples} images, {info.num_classes} classes, "
        f"{info.image_size[0]}x{info.image_size[1]}); strategy {distribution.strategy} with "
        f"{strategy.num_replicas_in_sync} replica(s)"
        + "".join(f"; {item}" for item in speed_settings(config, trainer))
        + f"; batch {recipe.batch_size}, "
        f"{trainer.total_steps} steps ({trainer.total_steps / steps_per_epoch:.1f} epochs), "
        f"lr {trainer.base_lr:g} {recipe.schedule}"
        + (f" /{1 / recipe.decay_factor:g} at {list(trainer.boundaries)}" if trainer.boundaries else "")
        + moved_boundaries_note(recipe)
        + (f", after a warm-up of {recipe.warmup_steps} steps at {recipe.warmup_lr:g}" if recipe.warmup_steps else "")
        + f"; run directory {run_settings.model_dir}"
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
        write_results(config, trainer, results, time.monotonic() - started)
    say(f"Plot: {os.path.join(run_settings.model_dir, 'curves.png')}; metrics: "
        f"{os.path.join(run_settings.model_dir, 'metrics.csv')}; "
        f"{time.monotonic() - started:.0f} s in this process.")
    if run_settings.export and chief:
        path = export_lib.export_model(
            trainer.use_averaged_weights(), run_settings.export_dir, name=model_name,
            preprocessing=info.preprocessing if config.family == "cifar" else "imagenet_224",
            class_names=info.class_names,
        )
        say(f"Exported to {path}")
    return results


def speed_settings(config: RunConfig, trainer) -> list:
    """The banner's words for the settings that are not the plain float32 loop."""
    items = []
    policy = config.model.dtype_policy
    if policy != "float32":
        items.append(policy + (" with dynamic loss scaling" if trainer.loss_scaling else "")
                     + (" (auto: bf16 hardware)" if config.model.dtype_auto else ""))
    if config.speed.jit_compile:
        items.append("XLA")
    if trainer.steps_per_loop > 1:
        items.append(f"up to {trainer.steps_per_loop} steps per loop")
    return items


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


def write_results(config: RunConfig, trainer, results: dict, seconds: float) -> str:
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
        "dtype_policy": config.model.dtype_policy,
        "input": "memory" if trainer.exact_input else "stream",
        "source": config.data.source,
        "seed": config.run.seed,
        "final": {name: {k: float(v) if k != "count" else int(v) for k, v in r.items()}
                  for name, r in results.items()},
        "argv": list(config.argv),
    }
    path = os.path.join(config.run.model_dir, RESULTS_FILE)
    with open(path + ".tmp", "w") as handle:
        json.dump(record, handle, indent=2)
    os.replace(path + ".tmp", path)
    return path


def main(family: str, flag_values: flags.FlagValues = FLAGS, argv=None, stream=None) -> None:
    """The body of a trainer's ``main(argv)`` once flags are parsed: run; one line on stderr and
    exit 2 (bad flag), 3 (divergence, or a checkpoint with non-finite values) or 4 (another
    worker of a multi-worker run was lost; restart them all to resume)."""
    code = _run_config(family, flag_values, sys.argv if argv is None else argv, stream)
    if code:
        sys.exit(code)


def _run_config(family, flag_values, argv, stream) -> int:
    try:
        config = config_from_flags(family, flag_values, argv=argv)
        conflicts = config.engine_conflicts(ENGINE)
        if conflicts:  # one line each, e.g. the fit trainer's --keras_distribution
            for conflict in conflicts:
                print(f"error: {conflict}", file=sys.stderr)
            return EXIT_FLAG_ERROR
        run(config, stream)
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


def console_main(family: str, argv=None, flag_values: flags.FlagValues = FLAGS, stream=None) -> int:
    """A trainer script's whole command line: ``--help`` (exit 0), parse, validate, run.

    Returns the exit status: 0, 2 (usage error: one line ``error: --flag: problem`` on stderr,
    no traceback), 3 (training diverged or a checkpoint holds non-finite values).
    """
    argv = list(sys.argv if argv is None else argv)
    if wants_help(argv):
        print(command_help(flag_values, run_flags.__name__, argv))  # the flags are run_flags'
        return 0
    try:
        rest = parse_command_line(flag_values, argv)
        if len(rest) > 1:
            print(f"error: unexpected argument {rest[1]!r}: flags are --name=value.", file=sys.stderr)
            return EXIT_FLAG_ERROR
    except FlagError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FLAG_ERROR
    return _run_config(family, flag_values, argv, stream)


MODULE_USAGE = ("usage: python -m keras_preact.cli.train {cifar|imagenet} [--flag=value ...] "
                "(the command line of trainers/cifar.py or trainers/imagenet.py; --help lists the flags)")


def module_main(argv) -> int:
    """``python -m keras_preact.cli.train FAMILY [flags]``: the trainer of that family; without a
    family, the one-line usage on stderr and exit status 2."""
    if len(argv) < 2 or argv[1] not in FAMILIES:
        print(MODULE_USAGE, file=sys.stderr)
        return EXIT_FLAG_ERROR
    family = argv[1]
    define_flags(family)
    return console_main(family, [f"{argv[0]} {family}", *argv[2:]])


if __name__ == "__main__":
    sys.exit(module_main(sys.argv))
