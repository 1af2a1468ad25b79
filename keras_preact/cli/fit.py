"""The ``fit`` trainer: a recipe trained with Keras' ``model.fit``, on any Keras backend.

``trainers/fit.py`` is this command line. It is the way to train on JAX or PyTorch (the
``tf.distribute`` trainer, ``trainers/cifar.py``, is TensorFlow's): the model, the recipe
(``keras_preact.recipes``) and the input pipeline are the package's own, the loop is Keras'.

    KERAS_BACKEND=jax python trainers/fit.py                                  # embedded sample
    KERAS_BACKEND=jax python trainers/fit.py --data_dir=/data/cifar10-jpeg --epochs=3
    KERAS_BACKEND=torch python trainers/fit.py --model=resnet56 --recipe=cifar --epochs=10

* Data: ``--data_dir`` (an image folder with ``train/`` and ``test/``) or ``--dataset``
  (``cifar10_sample``, the default, or a TFDS name), decoded once into memory
  (``keras_preact.data.InMemorySplit``): the same batches, for the same ``--seed``, as the
  TensorFlow trainer's ``--input=memory``. The pipeline is ``tf.data``, which ``fit`` takes on
  every backend, so reading data needs TensorFlow installed (the model does not).
* Devices: on JAX with more than one local device, ``--distribution=auto`` (the default)
  splits every batch over all of them (``keras.distribution.DataParallel``).
* Evaluation: after training, the test split with the recipe's test-time flip where it has
  one, on the weight average where it keeps one (as the TensorFlow trainer reports it).
* Output, in ``--model_dir``: ``history.json`` (per-epoch metrics and seconds),
  ``results.json`` (final accuracy, images/s, backend, device) and ``model.keras``.

Exit status 0; 2 for a bad flag (one line naming it); 3 if the run diverged.
"""

from __future__ import annotations

import json
import os
import sys
import time

import keras
import numpy as np
from absl import flags

import keras_preact
from keras_preact import data as data_lib
from keras_preact.cli import command_help
from keras_preact.hardware import device_description
from keras_preact.registry import ModelNameError, resolve
from keras_preact.training.recipes import RECIPES

EXIT_FLAG_ERROR = 2
EXIT_DIVERGED = 3
DISTRIBUTIONS = ("auto", "none", "data_parallel")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    define = dict(flag_values=flag_values)
    flags.DEFINE_string("model", "resnet20", "Registered model name (keras_preact.list_models()).", **define)
    flags.DEFINE_string("recipe", "fast", "Training recipe (keras_preact.training.RECIPES).", **define)
    flags.DEFINE_float("epochs", None, "Epochs to train (default: the recipe's length).", **define)
    flags.DEFINE_integer("batch_size", None, "Global batch (default: the recipe's).", **define)
    flags.DEFINE_string("data_dir", None, "Image folder with train/<class>/ and test/<class>/.", **define)
    flags.DEFINE_string("dataset", "cifar10_sample", "Dataset when --data_dir is not given "
                        "(cifar10_sample: embedded in the package; or a TFDS name).", **define)
    flags.DEFINE_integer("seed", 0, "Seed of the weights and of the batches.", **define)
    flags.DEFINE_enum("dtype_policy", "float32", ["float32", "mixed_bfloat16", "mixed_float16"],
                      "Keras dtype policy of the model.", **define)
    flags.DEFINE_enum("distribution", "auto", list(DISTRIBUTIONS),
                      "auto: DataParallel over all local devices when JAX sees more than one; "
                      "data_parallel: always (JAX only); none: one device.", **define)
    flags.DEFINE_string("model_dir", None, "Output folder (default: runs/fit_<backend>_<model>).", **define)
    flags.DEFINE_integer("verbose", 1, "Keras fit verbosity: 1 progress bar, 2 a line per epoch.", **define)


class FlagError(ValueError):
    def __init__(self, flag: str, message: str):
        super().__init__(f"--{flag}: {message}")


def run(values: flags.FlagValues = flags.FLAGS, stream=None) -> dict:
    """Train and evaluate as the flags say; returns the results written to results.json."""
    stream = stream or sys.stdout
    backend = keras.backend.backend()
    try:
        spec = resolve(values.model)
    except ModelNameError as error:
        raise FlagError("model", str(error)) from None
    if values.recipe not in RECIPES or RECIPES[values.recipe].family != "cifar":
        cifar = [n for n, r in RECIPES.items() if r.family == "cifar"]
        raise FlagError("recipe", f"unknown CIFAR recipe {values.recipe!r}; choices: {', '.join(cifar)}.")
    if values.epochs is not None and not values.epochs > 0:
        raise FlagError("epochs", f"must be > 0, got {values.epochs}.")
    if values.batch_size is not None and values.batch_size < 1:
        raise FlagError("batch_size", f"must be >= 1, got {values.batch_size}.")
    distribution = values.distribution
    if distribution == "data_parallel" and backend != "jax":
        raise FlagError("distribution", f"data_parallel is Keras' JAX distribution; the {backend} "
                        "backend trains on one device here (TensorFlow: trainers/cifar.py --strategy).")
    devices = keras.distribution.list_devices() if backend == "jax" else []
    if distribution == "data_parallel" or (distribution == "auto" and len(devices) > 1):
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))
    else:
        devices = devices[:1]

    source = values.data_dir or values.dataset
    data_flag = "data_dir" if values.data_dir else "dataset"
    try:
        train = data_lib.InMemorySplit.load(source, "train", only_preprocessing="cifar")
        test = data_lib.InMemorySplit.load(source, "test", only_preprocessing="cifar")
    except (FileNotFoundError, ValueError, OSError) as error:
        raise FlagError(data_flag, str(error).strip().splitlines()[0]) from None
    recipe_data = RECIPES[values.recipe]
    batch = int(values.batch_size or recipe_data.batch_size)
    per_epoch = train.steps_per_epoch(batch)
    if per_epoch < 1:
        raise FlagError("batch_size", f"{batch} is larger than the {len(train)} training examples.")
    changes = {} if values.epochs is None else {"epochs": values.epochs}
    recipe = keras_preact.recipes.get(values.recipe, batch_size=batch, steps_per_epoch=per_epoch, **changes)
    epochs = recipe.total_steps / per_epoch

    keras.utils.set_random_seed(values.seed)
    model = keras_preact.get_model(spec.name, unit=spec.unit, num_classes=train.info.num_classes,
                                   dtype_policy=values.dtype_policy)
    recipe.compile(model)
    model_dir = values.model_dir or os.path.join("runs", f"fit_{backend}_{spec.name}")
    os.makedirs(model_dir, exist_ok=True)
    device = device_description(backend)["name"]
    print(f"{spec.name} on {backend} ({device}; {max(1, len(devices))} device(s)), recipe "
          f"{values.recipe}: {recipe.total_steps} steps of {batch} ({epochs:g} epochs of "
          f"{per_epoch}), {values.dtype_policy}; writing {model_dir}", file=stream, flush=True)

    timer = _EpochTimer()
    whole_epochs = int(np.ceil(epochs))
    started = time.monotonic()
    history = model.fit(
        train.train_batches(batch, seed=values.seed)(0), epochs=whole_epochs, steps_per_epoch=per_epoch,
        callbacks=[*recipe.callbacks, timer], verbose=values.verbose,
        shuffle=False,  # the batches come shuffled and augmented from the pipeline
    )
    wall = time.monotonic() - started
    stop = next((c for c in recipe.callbacks if isinstance(c, keras_preact.recipes.DivergenceStop)), None)
    accuracy = evaluate(model, test.eval_batches(batch), flip=recipe.recipe.eval_flip)
    results = {
        "model": spec.name, "recipe": values.recipe, "backend": backend, "device": device,
        "devices": max(1, len(devices)), "dtype_policy": values.dtype_policy, "seed": values.seed,
        "batch_size": batch, "epochs": epochs, "steps": recipe.total_steps,
        "test_accuracy": accuracy, "test_images": len(test),
        "eval": ("weight average" if recipe.recipe.weight_average else "final weights")
                + (" + flip" if recipe.recipe.eval_flip else ""),
        "epoch_seconds": [round(s, 2) for s in timer.seconds],
        # Training throughput from the end of the first step (which holds the compilation) to
        # the end of the last; None for a one-step run.
        "images_per_sec_after_first_step": timer.images_per_sec(batch),
        "wall_seconds": round(wall, 1),
        "diverged": None if stop is None or stop.stopped_at is None else
                    {"step": stop.stopped_at, "reason": stop.reason},
    }
    with open(os.path.join(model_dir, "history.json"), "w") as f:
        json.dump({k: [float(x) for x in v] for k, v in history.history.items()}, f, indent=1)
    with open(os.path.join(model_dir, "results.json"), "w") as f:
        json.dump(results, f, indent=1)
    model.save(os.path.join(model_dir, "model.keras"))
    speed = results["images_per_sec_after_first_step"]
    print(f"\nFinal test accuracy: {100 * accuracy:.2f}% ({results['eval']}, {len(test)} images)"
          + (f"; {speed} images/s training, after the first step (compilation excluded)"
             if speed is not None else ""), file=stream)
    return results


def evaluate(model, dataset, flip: bool) -> float:
    """Top-1 accuracy; with ``flip``, of the mean logits of each image and its mirror image."""
    labels = np.concatenate([np.asarray(y) for _, y in dataset.as_numpy_iterator()])
    logits = model.predict(dataset, verbose=0)
    if flip:
        mirrored = dataset.map(lambda x, y: (x[:, :, ::-1, :], y))
        logits = (logits + model.predict(mirrored, verbose=0)) / 2.0
    return float(np.mean(np.argmax(logits, -1) == labels))


class _EpochTimer(keras.callbacks.Callback):
    """Seconds of each training epoch, and the training steps after the first (whose time holds
    the compilation: tracing and XLA or TorchDynamo work), for a throughput that excludes it."""

    def __init__(self):
        super().__init__()
        self.seconds = []
        self._steps = 0
        self._first_step_done = None
        self._last_step_done = None

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.monotonic()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.monotonic() - self._started)

    def on_train_batch_end(self, batch, logs=None):
        now = time.monotonic()
        self._steps += 1
        if self._first_step_done is None:
            self._first_step_done = now
        self._last_step_done = now

    def images_per_sec(self, batch_size: int):
        """Images per second over the steps after the first; None with fewer than two steps."""
        if self._steps < 2 or self._last_step_done <= self._first_step_done:
            return None
        return round((self._steps - 1) * batch_size / (self._last_step_done - self._first_step_done), 1)


def console_main(argv=None, flag_values: flags.FlagValues = flags.FLAGS) -> int:
    argv = list(sys.argv if argv is None else argv)
    if any(arg in ("-h", "--help", "--helpfull") for arg in argv[1:]):
        print(command_help(flag_values, __name__, argv))
        return 0
    try:
        flag_values(argv)
    except flags.Error as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FLAG_ERROR
    try:
        results = run(flag_values)
    except FlagError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_FLAG_ERROR
    return EXIT_DIVERGED if results["diverged"] else 0
