"""The fit trainer: the run configuration of the tf.distribute trainer, trained with ``model.fit``.

``keras-preact-fit`` and ``trainers/fit.py`` are this command line. It trains on every Keras
backend (JAX, PyTorch, TensorFlow) and needs no TensorFlow off TensorFlow:

    KERAS_BACKEND=jax keras-preact-fit                                 # the bundled CIFAR-10 sample
    KERAS_BACKEND=jax keras-preact-fit --data_dir=/data/cifar10-jpeg --model=resnet110 --recipe=cifar
    KERAS_BACKEND=jax keras-preact-fit --config=runs/cifar10_resnet56/config.json   # a trainers/cifar.py run

* **Flags** are the tf.distribute trainer's (``keras_preact.cli.run_flags``: one per setting of
  ``RunConfig``, ``--recipe``, ``--config``), with the same defaults and the same
  ``config.json``. A setting this engine does not honour (``--strategy``, ``--sync_bn``,
  ``--input=stream``, ...) is refused, one line each, unless left at its default; so is a JAX
  distribution setting on another backend.
* **Data** (``keras_preact.data.arrays``): the image folder or the sample decoded once into
  memory, batches a pure function of ``--seed`` and the step, the paper's pad-and-crop and flip,
  the same on every backend (NumPy; TFDS names need TensorFlow installed).
* **Loop** (``keras_preact.fit_loop``): checkpoints in ``<model_dir>/checkpoints``
  every ``--checkpoint_every`` steps, at epoch ends and at the end; the same command resumes
  from the newest, exactly. ``metrics.csv``, TensorBoard scalars (``tensorboard/``),
  ``curves.png``, ``labels.txt``, ``config.json``, ``results.json`` and ``model.keras`` (the
  evaluated weights) in the run directory; ``--export`` writes a TF Serving SavedModel at the
  end where TensorFlow is installed.
* **Several JAX processes**: ``--coordinator_address``, ``--num_processes``, ``--process_id``
  (``keras.distribution.initialize``), or what JAX detects on a TPU slice or a SLURM/Open MPI
  launch; every batch is split over all devices of all processes (``DataParallel``), each
  process feeding its own rows. See docs/backends.md.

Exit status 0; 2 for a bad flag (one line naming it); 3 if the run diverged (the line names the
last good checkpoint); 4 if another process of a multi-process run was lost.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time

import keras
from absl import flags

from keras_preact import registry
from keras_preact.cli import command_help, run_flags
from keras_preact.cli.run_flags import FlagError, config_from_flags, parse_command_line, wants_help
from keras_preact.data.arrays import ArraySplit
from keras_preact.data.labels import write_label_map
from keras_preact.fit_loop import FitRun, join_jax_processes, wait_for_all_processes
from keras_preact.hardware import device_description
from keras_preact.recipes import from_recipe
from keras_preact.training import run_config
from keras_preact.training.divergence import DivergenceError
from keras_preact.training.observe import RESULTS_FILE
from keras_preact.training.run_config import RunConfig, check_schedule_fits
from keras_preact.training.schedules import scale_learning_rate
from keras_preact.weights import load_weights

ENGINE = "fit"
EXIT_FLAG_ERROR = 2
EXIT_DIVERGED = 3
EXIT_PROCESS_LOST = 4
MODEL_FILE = "model.keras"
IMAGES_PER_SEC_MEANS = ("training steps after this process's first (which holds the compilation); "
                        "evaluation, logging and checkpoint writes excluded")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The CIFAR trainer's flags (``run_flags.define_flags``): the same run configuration."""
    run_flags.define_flags("cifar", flag_values)


def engine_conflicts(config: RunConfig, backend: str) -> list:
    """One ``FlagError`` per setting this engine cannot honour on ``backend`` (empty: it runs)."""
    conflicts = config.engine_conflicts(ENGINE)
    if config.data.input == "stream":
        conflicts.append(FlagError("input", "the fit trainer holds the data in memory (memory or auto); "
                                            "streaming is the tf.distribute trainer's (trainers/cifar.py)."))
    distribution = config.distribution
    if backend != "jax":
        if distribution.keras_distribution == "data_parallel":
            conflicts.append(FlagError("keras_distribution", f"data_parallel is Keras' JAX distribution; "
                                                             f"the {backend} backend trains on one device here."))
        for name in ("coordinator_address", "num_processes", "process_id"):
            if getattr(distribution, name) is not None:
                conflicts.append(FlagError(name, f"several processes are JAX's (keras.distribution); "
                                                 f"got KERAS_BACKEND={backend}."))
    if config.run.export and importlib.util.find_spec("tensorflow") is None:
        conflicts.append(FlagError("export", "a SavedModel needs TensorFlow: pip install "
                                             "\"keras_preact[tensorflow]\", or export model.keras later."))
    return conflicts


def run(config: RunConfig, stream=None, shard=(0, 1)) -> dict:
    """Train as ``config`` says; returns what ``results.json`` holds. ``shard``: this process's
    index and the process count. Raises ``FlagError`` (a setting turns out bad once the data is
    read) and ``DivergenceError``."""
    stream = stream or sys.stdout
    backend = keras.backend.backend()
    started = time.monotonic()
    chief = shard[0] == 0
    say = (lambda text: print(text, file=stream, flush=True)) if chief else (lambda text: None)
    data, recipe, run_settings = config.data, config.recipe, config.run
    batch = recipe.batch_size
    if batch % shard[1]:
        raise FlagError("batch_size", f"{batch} does not split over {shard[1]} processes.")

    devices = keras.distribution.list_devices() if backend == "jax" else []
    wanted = config.distribution.keras_distribution
    if backend == "jax" and (wanted == "data_parallel" or (wanted == "auto" and len(devices) > 1)):
        if batch % len(devices):
            raise FlagError("batch_size", f"{batch} does not split over the {len(devices)} devices.")
        # Each process feeds its own rows of every batch (keras_preact.data.arrays shards).
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False))
    else:
        devices = devices[:1]

    try:
        train = ArraySplit.load(data.source, data.train_split, strict=data.strict, tfds_dir=data.tfds_dir)
        evaluation = ArraySplit.load(data.source, data.eval_split, strict=data.strict, tfds_dir=data.tfds_dir)
    except (FileNotFoundError, ValueError, OSError) as error:
        raise FlagError(data.flag, _first_line(error)) from None
    steps_per_epoch = train.steps_per_epoch(batch)
    if steps_per_epoch < 1:
        raise FlagError("batch_size", f"{batch} is larger than the {len(train)} training examples.")
    check_schedule_fits(recipe, steps_per_epoch)
    fit_recipe = from_recipe(recipe, steps_per_epoch=steps_per_epoch,
                             divergence_factor=run_settings.divergence_factor,
                             divergence_window=run_settings.divergence_window)

    keras.utils.set_random_seed(run_settings.seed)
    try:
        model = registry.get_model(config.model_name, num_classes=train.num_classes,
                                   input_shape=(*train.images.shape[1:3], 3), **config.model_kwargs)
    except ValueError as error:  # a layout this backend cannot run (TensorFlow without oneDNN)
        raise FlagError("data_format", _first_line(error)) from None
    if config.model.init_weights:  # a resumed run's checkpoint replaces these weights
        load_weights(model, config.model.init_weights,
                     skip_head=run_config.new_head(config.model.init_weights, train.num_classes))
    fit_recipe.compile(model, jit_compile=True if config.speed.jit_compile else "auto")
    model_dir = run_settings.model_dir
    if chief:
        os.makedirs(model_dir, exist_ok=True)
        write_label_map(train.class_names, model_dir)
        run_config.write(config, model_dir)

    fit_run = FitRun(model, fit_recipe, train, evaluation, model_dir=model_dir, steps_per_epoch=steps_per_epoch,
                     seed=run_settings.seed, checkpoint_every=config.checkpointing.checkpoint_every,
                     keep_checkpoints=config.checkpointing.keep_checkpoints, log_every=run_settings.log_every,
                     eval_every=run_settings.eval_every, eval_name=data.eval_split, shard=shard, chief=chief,
                     stream=stream, data_format=config.model.data_format)
    try:
        start = fit_run.restore()
    except ValueError as error:  # a checkpoint of another model or recipe
        raise FlagError("model_dir", _first_line(error)) from None
    device = device_description(backend)["name"]
    say(f"{model.name} ({model.count_params():,} parameters) on {data.source} {data.train_split} "
        f"({len(train)} images, {train.num_classes} classes); fit trainer on {backend} ({device}, "
        f"{max(1, len(devices))} device(s), {shard[1]} process(es)); {config.model.dtype_policy}; batch {batch}, "
        f"{fit_recipe.total_steps} steps ({fit_recipe.total_steps / steps_per_epoch:.1f} epochs of "
        f"{steps_per_epoch}), recipe {recipe.name}; run directory {model_dir}")
    if start:
        say(f"Resuming from {fit_run.restored_from} (step {start} of {fit_recipe.total_steps}).")
    finals = fit_run.fit()
    for name, result in finals.items():
        say(f"Final {name} error: {100 * result['error']:.2f}% (accuracy {100 * (1 - result['error']):.2f}%) "
            f"on {result['count']} images after {fit_run.step} steps"
            + (", of the weight average" if recipe.weight_average else "")
            + (f", {recipe.eval_tta} views" if recipe.eval_tta != "none" else "") + ".")
    results = {
        "model": model.name, "parameters": int(model.count_params()), "engine": ENGINE, "backend": backend,
        "device": device, "devices": max(1, len(devices)), "processes": shard[1], "steps": fit_run.step,
        "seconds_in_last_process": round(time.monotonic() - started, 1),
        "train_seconds": round(fit_run.train_seconds, 1),
        "images_per_sec_after_first_step": fit_run.images_per_sec_after_first_step(),
        "images_per_sec_means": IMAGES_PER_SEC_MEANS,
        "recipe": dataclasses.asdict(recipe),
        "base_lr": float(scale_learning_rate(recipe.base_lr, batch, recipe.lr_reference_batch)),
        "global_batch": batch, "dtype_policy": config.model.dtype_policy, "input": "memory",
        "source": data.source, "seed": run_settings.seed, "resumed_from": fit_run.restored_from,
        "final": finals, "argv": list(config.argv),
    }
    save_model(model, os.path.join(model_dir, MODEL_FILE), chief)
    if chief:
        _write_json(os.path.join(model_dir, RESULTS_FILE), results)
        speed = results["images_per_sec_after_first_step"]
        say(f"Plot: {os.path.join(model_dir, 'curves.png')}; metrics: {os.path.join(model_dir, 'metrics.csv')}; "
            f"{results['seconds_in_last_process']:.0f} s in this process"
            + (f", {speed} images/s in training steps after the first" if speed else "") + ".")
        if run_settings.export:
            say(f"Exported: {export(os.path.join(model_dir, MODEL_FILE), config)}")
    if shard[1] > 1:  # the others wait for process 0's writes: JAX's shutdown barrier would not
        wait_for_all_processes("keras_preact.fit: run directory written")
    return results


def save_model(model, path: str, chief: bool) -> None:
    """``model.keras``, written by process 0. Every process takes part: Keras reads a variable
    that spans several JAX processes with a collective; the others' copies go to a scratch file."""
    if chief:
        model.save(path)
        return
    with tempfile.TemporaryDirectory() as scratch:
        model.save(os.path.join(scratch, MODEL_FILE))


def export(model_file: str, config: RunConfig) -> str:
    """The TF Serving export of the trained model, by the exporter (``keras-preact-export``) in a
    TensorFlow process reading ``model_file`` and the labels.txt beside it: the same on every
    backend, and this process never imports TensorFlow for it."""
    command = [sys.executable, "-m", "keras_preact.export", "--model_file", model_file, "--name",
               config.model_name, "--preprocessing", "cifar", "--base_dir", config.run.export_dir]
    done = subprocess.run(command, env={**os.environ, "KERAS_BACKEND": "tensorflow"}, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"the export failed ({' '.join(command)}): {done.stderr.strip().splitlines()[-1:]}")
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    return lines[-1] if lines else config.run.export_dir


def _write_json(path: str, record: dict) -> None:
    with open(path + ".tmp", "w") as handle:
        json.dump(record, handle, indent=2)
    os.replace(path + ".tmp", path)


def _first_line(error) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__


def console_main(argv=None, flag_values: flags.FlagValues = flags.FLAGS, stream=None) -> int:
    """The whole command line; returns the exit status (see the module docstring)."""
    argv = list(sys.argv if argv is None else argv)
    if wants_help(argv):
        print(command_help(flag_values, run_flags.__name__, argv))
        return 0
    shard = (0, 1)
    try:
        rest = parse_command_line(flag_values, argv)
        if len(rest) > 1:
            print(f"error: unexpected argument {rest[1]!r}: flags are --name=value.", file=sys.stderr)
            return EXIT_FLAG_ERROR
        config = config_from_flags("cifar", flag_values, argv=argv, look_at_devices=False)
        conflicts = engine_conflicts(config, keras.backend.backend())
        if conflicts:
            for conflict in conflicts:
                print(f"error: {conflict}", file=sys.stderr)
            return EXIT_FLAG_ERROR
        shard = (0, 1)
        if keras.backend.backend() == "jax":
            distribution = config.distribution
            shard = join_jax_processes(distribution.coordinator_address, distribution.num_processes,
                                       distribution.process_id,
                                       find_peers=distribution.keras_distribution == "data_parallel")
        run(run_config.resolve_devices(config), stream, shard=shard)
    except FlagError as error:
        print(f"error: {error}", file=sys.stderr)
        return _leave(EXIT_FLAG_ERROR, shard)
    except DivergenceError as error:
        print(f"error: {error}", file=sys.stderr)
        return _leave(EXIT_DIVERGED, shard)
    except Exception as error:  # noqa: BLE001 -- a peer process lost mid-collective
        if shard[1] == 1:
            raise
        print(f"error: process {shard[0]} of {shard[1]} stopped: {_first_line(error)} -- another process of "
              "the run was probably lost; start every process again to resume from the last checkpoint.",
              file=sys.stderr)
        return _leave(EXIT_PROCESS_LOST, shard)
    return 0


def _leave(code: int, shard) -> int:
    """The exit status; a process of a multi-process run leaves at once, since JAX's shutdown
    would wait for peers that may be gone."""
    if shard[1] > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
