"""Time to accuracy on CIFAR-style image folders: the ``fast`` recipe against a plain Keras fit.

Two runs of the same architecture, one after the other on an otherwise idle machine:

* **fast**: this package's trainer, ``trainers/cifar.py --recipe=fast`` (in-memory input,
  Nesterov, label smoothing, a weight average, flip test-time augmentation, bfloat16 where the
  CPU has it), with the run's length set so that its training fits ``--budget_minutes``: a
  short probe run measures images/s first.
* **baseline**: what a Keras user would write: ``keras.utils.image_dataset_from_directory``
  (decoded once and cached), ``RandomFlip`` + ``RandomTranslation`` layers, the package's model
  built with Keras' own BatchNormalization (``fused_bn=False``), float32, ``model.fit`` with
  SGD momentum 0.9 at 0.1, decoupled weight decay 5e-4 and a cosine decay fitted to
  ``--baseline_minutes`` (its length is set from the images/s of its first 50 steps), and
  ``jit_compile=False`` (XLA is slower on CPUs; Keras' ``"auto"`` would turn it on).

Both evaluate on the full test split about ``--evals`` times, at regular amounts of training
time. Times are training wall time: evaluations (and the fast run's checkpoints) are left out
and reported separately. The time to an accuracy is that of the first evaluation at or above it
(so it is known to within one evaluation interval). The fast run's final weights are then
evaluated once more with flip and one-pixel translations (ten views per image,
``evaluation_levers.py --last``; ``--no-final_translate`` skips it): its curve uses the flip
alone, because ten views at every evaluation would cost five times as much.

Writes ``<output_dir>/time_to_accuracy.json`` and ``time_to_accuracy.png`` (test accuracy
against minutes, both runs). The fast run's directory ``<output_dir>/fast`` is a normal run
directory: interrupted, the same command resumes it (its planned length is kept in
``plan.json``); the baseline restarts.

    python benchmarks/time_to_accuracy.py --data_dir=../shared/data/cifar10-jpeg
        [--model=resnet56 --budget_minutes=60 --baseline_minutes=30 --target=0.8]

``--data_dir`` is an image folder with ``train/`` and ``test/`` splits, or a folder holding the
``cifar10-train.tar.gz`` / ``cifar10-test.tar.gz`` archives of the JPEG copy (unpacked under
``<output_dir>/data`` once).
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import subprocess
import sys
import tarfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras_preact_commands  # noqa: E402

keras_preact_commands.prepare_process()  # as the commands run: oneDNN on, TensorFlow's start-up lines off

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TRAINER = os.path.join(ROOT, "trainers", "cifar.py")
LEVERS = os.path.join(HERE, "evaluation_levers.py")
TEN_VIEWS = "average+flip+translate"  # evaluation_levers.py's column: weight average, ten views
PROBE_STEPS = 60
SAFETY = 0.97  # the probe's images/s overestimates a long run slightly (evaluations warm caches)


def parse_args(argv=None):
    from keras_preact.hardware import cpu_has_bf16

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=os.path.join(ROOT, "..", "shared", "data", "cifar10-jpeg"))
    parser.add_argument("--model", default="resnet56", help="Registered model for both runs.")
    parser.add_argument("--dtype_policy", default="mixed_bfloat16" if cpu_has_bf16() else "float32",
                        help="The fast run's policy (default: mixed_bfloat16 where the CPU has bf16).")
    parser.add_argument("--budget_minutes", type=float, default=60.0)
    parser.add_argument("--baseline_minutes", type=float, default=30.0, help="0: no baseline run.")
    parser.add_argument("--evals", type=int, default=20, help="Evaluations per run.")
    parser.add_argument("--target", type=float, default=0.80, help="Accuracy whose times are compared.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_dir", default=os.path.join("runs", "time_to_accuracy"))
    parser.add_argument("--fast_flags", default="", help="Extra trainer flags for the fast run.")
    parser.add_argument("--final_translate", action=argparse.BooleanOptionalAction, default=True,
                        help="Also evaluate the fast run's final weights with flip and one-pixel "
                        "translations (ten views, benchmarks/evaluation_levers.py --last); "
                        "--no-final_translate skips it.")
    args = parser.parse_args(argv)
    for name in ("budget_minutes", "evals", "target"):
        if getattr(args, name) <= 0:
            parser.error(f"--{name} must be positive.")
    if args.baseline_minutes < 0 or not 0 < args.target < 1:
        parser.error("--baseline_minutes must be >= 0 and --target in (0, 1).")
    return args


def image_folder(data_dir: str, output_dir: str) -> str:
    """An image folder with train/ and test/: ``data_dir`` itself, or its archives unpacked."""
    if all(os.path.isdir(os.path.join(data_dir, split)) for split in ("train", "test")):
        return data_dir
    archives = sorted(glob.glob(os.path.join(data_dir, "*.tar.gz")))
    if not archives:
        raise SystemExit(f"--data_dir {data_dir!r}: no train/ and test/ folders and no .tar.gz archives.")
    target = os.path.join(output_dir, "data")
    if not all(os.path.isdir(os.path.join(target, split)) for split in ("train", "test")):
        os.makedirs(target, exist_ok=True)
        for archive in archives:
            with tarfile.open(archive) as handle:
                handle.extractall(target, filter="data")
    return target


def read_rows(path: str) -> list:
    import csv

    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def run_trainer(flags: list, log_path: str) -> None:
    command = [sys.executable, TRAINER] + flags
    print("$ " + " ".join(command), flush=True)
    with open(log_path, "a") as log:
        process = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT)
    if process.returncode:
        raise SystemExit(f"The trainer failed (exit {process.returncode}); see {log_path}.")


def final_ten_views(args, folder: str, run_dir: str):
    """Accuracy of the run's last checkpoint (weight average) with the ten-view test-time
    augmentation, or None if the run kept no weight average."""
    command = [sys.executable, LEVERS, f"--run_dir={run_dir}", f"--model={args.model}",
               f"--data_dir={folder}", "--last"]
    print("$ " + " ".join(command), flush=True)
    process = subprocess.run(command, capture_output=True, text=True)
    if process.returncode:
        raise SystemExit(f"evaluation_levers.py failed (exit {process.returncode}):\n{process.stderr[-2000:]}")
    with open(os.path.join(run_dir, "evaluation_levers.json")) as handle:
        return json.load(handle)["rows"][-1].get(TEN_VIEWS)


def fast_run(args, folder: str) -> dict:
    """Probe images/s, then train the fast recipe for the budget; the curve from metrics.csv."""
    out = os.path.join(args.output_dir, "fast")
    os.makedirs(out, exist_ok=True)
    common = [f"--data_dir={folder}", f"--model={args.model}", f"--dtype_policy={args.dtype_policy}",
              "--recipe=fast", f"--seed={args.seed}"] + args.fast_flags.split()
    plan_path = os.path.join(out, "plan.json")
    if os.path.exists(plan_path):
        with open(plan_path) as handle:
            plan = json.load(handle)
        print(f"Resuming the fast run planned in {plan_path}: {plan['epochs']} epochs.", flush=True)
    else:
        probe_dir = os.path.join(args.output_dir, "probe")
        run_trainer(common + [f"--train_steps={PROBE_STEPS}", f"--log_every={PROBE_STEPS // 3}",
                              f"--model_dir={probe_dir}", "--checkpoint_every=0"],
                    os.path.join(args.output_dir, "probe.log"))
        rates = [float(r["images_per_sec"]) for r in read_rows(os.path.join(probe_dir, "metrics.csv"))
                 if r["images_per_sec"]]
        rate = rates[-1]  # the first window includes tracing
        train_examples = sum(len(files) for _, _, files in os.walk(os.path.join(folder, "train")))
        epochs = round(args.budget_minutes * 60 * rate * SAFETY / train_examples, 2)
        steps = math.floor(epochs * train_examples / 128)
        plan = {"images_per_sec_probe": rate, "epochs": epochs, "eval_every": max(1, steps // args.evals),
                "train_examples": train_examples}
        with open(plan_path, "w") as handle:
            json.dump(plan, handle, indent=2)
    flags = common + [f"--epochs={plan['epochs']}", f"--eval_every={plan['eval_every']}",
                      f"--model_dir={out}", "--log_every=100", "--checkpoint_every=2000"]
    started = time.monotonic()
    run_trainer(flags, os.path.join(out, "train.log"))
    rows = read_rows(os.path.join(out, "metrics.csv"))
    evaluations = {}  # by step: a finished run started again evaluates its last step again
    for r in rows:
        if r["test_error"]:
            evaluations.setdefault(int(r["step"]), (float(r["train_seconds"]) / 60, 1 - float(r["test_error"])))
    curve = [evaluations[step] for step in sorted(evaluations)]
    return {"command": "python trainers/cifar.py " + " ".join(flags), "plan": plan, "curve": curve,
            "train_minutes": max(float(r["train_seconds"] or 0) for r in rows) / 60,
            "wall_minutes_this_process": (time.monotonic() - started) / 60}


def baseline_run(args, folder: str) -> dict:
    """A plain Keras ``fit`` of the same architecture, its schedule fitted to the budget."""
    import keras
    import tensorflow as tf

    from keras_preact import registry
    from keras_preact.data import CIFAR_MEAN, CIFAR_STD

    keras.utils.set_random_seed(args.seed)
    batch = 128

    def split(name, shuffle):
        return keras.utils.image_dataset_from_directory(
            os.path.join(folder, name), image_size=(32, 32), batch_size=None, shuffle=shuffle,
            seed=args.seed, label_mode="int", verbose=False)

    train = split("train", True).cache().shuffle(50_000, seed=args.seed).batch(batch, drop_remainder=True)
    train = train.prefetch(tf.data.AUTOTUNE)
    test = split("test", False).cache().batch(500).prefetch(2)
    # The Keras way: preprocessing and augmentation layers in front of the network (active in
    # training only); the padding of the translation is zero after normalisation, as the paper's.
    classes = len([d for d in os.listdir(os.path.join(folder, "train")) if not d.startswith(".")])
    model = keras.Sequential([
        keras.Input((32, 32, 3)),
        keras.layers.Normalization(mean=CIFAR_MEAN, variance=[s * s for s in CIFAR_STD]),
        keras.layers.RandomFlip("horizontal"),
        keras.layers.RandomTranslation(0.125, 0.125, fill_mode="constant"),
        registry.get_model(args.model, num_classes=classes, input_shape=(32, 32, 3), fused_bn=False),
    ])
    total = tf.Variable(10**6, dtype=tf.int64, trainable=False)  # set from the first 50 steps

    class FittedCosine(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            progress = tf.minimum(tf.cast(step, tf.float32) / tf.cast(total, tf.float32), 1.0)
            return 0.1 * 0.5 * (1.0 + tf.cos(math.pi * progress))

    model.compile(optimizer=keras.optimizers.SGD(FittedCosine(), momentum=0.9, weight_decay=5e-4),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"], jit_compile=False)
    budget = args.baseline_minutes * 60
    interval = budget / args.evals

    class Clock(keras.callbacks.Callback):
        """Training time without evaluations; evaluates every ``interval``; fits the schedule."""

        def __init__(self):
            super().__init__()
            self.curve, self.train_seconds, self.steps, self.next_eval = [], 0.0, 0, interval
            self.mark = None

        def on_train_batch_begin(self, batch_index, logs=None):
            self.mark = time.monotonic()

        def on_train_batch_end(self, batch_index, logs=None):
            self.train_seconds += time.monotonic() - self.mark
            self.steps += 1
            if self.steps == 50:  # images/s after tracing -> the schedule's length
                rate = 40 * batch / (self.train_seconds - self.first10)
                total.assign(int(budget * rate / batch))
                print(f"baseline: {rate:.0f} images/s, schedule of {int(total.numpy())} steps", flush=True)
            if self.steps == 10:
                self.first10 = self.train_seconds
            if self.train_seconds >= self.next_eval or self.steps >= int(total.numpy()):
                accuracy = model.evaluate(test, verbose=0, return_dict=True)["accuracy"]
                self.curve.append((self.train_seconds / 60, float(accuracy)))
                print(f"baseline: {self.train_seconds / 60:.1f} min, test accuracy {accuracy:.4f}", flush=True)
                self.next_eval += interval
            if self.steps >= int(total.numpy()):
                self.model.stop_training = True

    clock = Clock()
    started = time.monotonic()
    model.fit(train, epochs=1000, callbacks=[clock], verbose=0)
    return {"curve": clock.curve, "steps": clock.steps, "train_minutes": clock.train_seconds / 60,
            "wall_minutes": (time.monotonic() - started) / 60,
            "recipe": "keras fit: SGD momentum 0.9, lr 0.1 cosine to 0 over the budget, weight_decay=5e-4 "
                      "(decoupled), batch 128, RandomFlip + RandomTranslation(0.125) layers in the model, float32, "
                      "Keras BatchNormalization, jit_compile=False, image_dataset_from_directory cached"}


def minutes_to(curve, target):
    return next((minutes for minutes, accuracy in curve if accuracy >= target), None)


def plot(result: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.5), dpi=100)
    for name, style in (("fast", "o-"), ("baseline", "s--")):
        if result.get(name):
            minutes, accuracy = zip(*result[name]["curve"])
            axis.plot(minutes, [100 * a for a in accuracy], style, markersize=3,
                      label=f"{name}: {result[name]['label']}")
    axis.axhline(100 * result["target"], color="gray", linewidth=0.8, linestyle=":")
    axis.set_xlabel("training wall time (minutes)")
    axis.set_ylabel("test accuracy (%)")
    axis.set_ylim(max(0, 100 * result["target"] - 30), 100)
    axis.grid(alpha=0.3)
    axis.legend(loc="lower right")
    axis.set_title(f"{result['model']} on {result['data']}, {result['cpu']['model']}", fontsize=9)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def main(argv=None) -> dict:
    args = parse_args(argv)
    from keras_preact.hardware import cpu_description

    os.makedirs(args.output_dir, exist_ok=True)
    cpu = cpu_description()
    print(f"CPU: {cpu['model']} ({os.cpu_count()} cores), flags: {', '.join(cpu['flags']) or 'none'}", flush=True)
    folder = image_folder(args.data_dir, args.output_dir)
    result = {"cpu": cpu, "cores": os.cpu_count(), "model": args.model, "data": args.data_dir,
              "target": args.target, "command": " ".join([sys.executable] + sys.argv)}
    fast = fast_run(args, folder)
    fast["label"] = f"fast recipe, {args.dtype_policy}"
    result["fast"] = fast
    if args.final_translate:
        fast["final_accuracy_ten_views"] = final_ten_views(args, folder, os.path.join(args.output_dir, "fast"))
    if args.baseline_minutes:
        baseline = baseline_run(args, folder)
        baseline["label"] = "plain Keras fit, float32"
        result["baseline"] = baseline
    print(f"\n{'run':<10}{'train min':>10}{'final acc':>10}{'best acc':>10}{f'min to {args.target:.0%}':>12}")
    for name in ("fast", "baseline"):
        if name in result:
            run = result[name]
            run["final_accuracy"] = run["curve"][-1][1]
            run["best_accuracy"] = max(a for _, a in run["curve"])
            run["minutes_to_target"] = minutes_to(run["curve"], args.target)
            reached = run["minutes_to_target"]
            print(f"{name:<10}{run['train_minutes']:>10.1f}{100 * run['final_accuracy']:>9.2f}%"
                  f"{100 * run['best_accuracy']:>9.2f}%{reached if reached is None else round(reached, 1)!s:>12}")
    if fast.get("final_accuracy_ten_views") is not None:
        print(f"fast, final weights with flip and one-pixel translations (ten views, float32): "
              f"{100 * fast['final_accuracy_ten_views']:.2f}%")
    if "baseline" in result and fast["minutes_to_target"] and result["baseline"]["minutes_to_target"]:
        result["speedup_to_target"] = result["baseline"]["minutes_to_target"] / fast["minutes_to_target"]
        print(f"Time to {args.target:.0%}: baseline / fast = {result['speedup_to_target']:.2f}x")
    with open(os.path.join(args.output_dir, "time_to_accuracy.json"), "w") as handle:
        json.dump(result, handle, indent=2)
    plot(result, os.path.join(args.output_dir, "time_to_accuracy.png"))
    print(f"Wrote {os.path.join(args.output_dir, 'time_to_accuracy.json')} and time_to_accuracy.png")
    return result


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    main()
