"""A model card for an exported model, written from measurements only.

    python -m keras_preact.export.model_card saved_models/cifar10_preact_resnet56 \\
        --run_dir runs/ship_r20 --eval_dir /data/cifar10-jpeg

    # a re-export of the same weights (export --saved_model): keep the earlier card's training
    python -m keras_preact.export.model_card saved_models/cifar10_preact_resnet56 \
        --training_from saved_models/cifar10_preact_resnet56/model_card.json --eval_dir /data/cifar10-jpeg

Writes ``MODEL_CARD.md`` and ``model_card.json`` next to the versions of the model directory
(TF Serving only loads the numeric version folders, so they can live there) and copies the
training curves. Every figure in it is measured by this command or read from files the
measurements wrote:

* test accuracy of the SavedModel and each TFLite file, on every image of ``--eval_dir``'s test
  split (e.g. the full CIFAR-10 test set) and on the test images of the CIFAR-10 sample bundled
  in the package (``tests/test_shipped_model.py`` recomputes the latter and must get the same
  counts);
* the training command, its length and wall time, from the run directory (``metrics.csv``,
  ``results.json``) and the hardware this command runs on (trained on the same machine), or,
  for a re-export of the same weights, both from the earlier card (``--training_from``);
* how far each artefact is from the Keras model, and ONNX from ``serving_default``, from the
  export's own parity report (``assets.extra/parity.json``);
* the test-time augmentation the artefacts compute, from the export's own parity report
  (``assets.extra/parity.json``, ``export.tta``; exports older than the field had none).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import shutil
import sys

import keras
import tensorflow as tf

from keras_preact.data import cifar10_sample_dir
from keras_preact.export.classify import Release
from keras_preact.export.exporter import EXTRA_DIR, PARITY_FILE
from keras_preact.export.parity import format_report
from keras_preact.tta import tta_name
from keras_preact.hardware import cpu_description
from keras_preact.training.observe import RESULTS_FILE, read_metrics, train_seconds

CARD_JSON = "model_card.json"
CARD_MD = "MODEL_CARD.md"
CURVES = "training_curves.png"


def hardware() -> dict:
    """CPU model and speed flags, logical cores, memory, OS and library versions of this machine."""
    cpu = cpu_description()
    memory_gb = None
    try:
        with open("/proc/meminfo") as handle:
            kb = next(int(line.split()[1]) for line in handle if line.startswith("MemTotal"))
        memory_gb = round(kb / 2**20, 1)
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu["model"], "cpu_flags": cpu["flags"], "logical_cores": os.cpu_count(), "memory_gb": memory_gb,
            "gpu": bool(tf.config.list_physical_devices("GPU")), "os": platform.platform(),
            "python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__}


def training_record(run_dir: str) -> dict:
    """Length, wall time and command of a finished trainer run, from its own files."""
    rows = read_metrics(os.path.join(run_dir, "metrics.csv"))
    with open(os.path.join(run_dir, RESULTS_FILE)) as handle:
        results = json.load(handle)
    rates = sorted(float(r["images_per_sec"]) for r in rows if r.get("images_per_sec"))
    # metrics.csv rows carry wall-clock times, also across resumed processes (results.json only
    # knows the last process); the span misses the iterations before the first logged row.
    # Training rows only: an evaluation-only rerun appends a row hours later.
    rows = [r for r in rows if r.get("train_loss")]
    times = [float(r["wall_time"]) for r in rows if r.get("wall_time")]
    # The span also holds evaluations and any pause between a stopped process and its resume (a
    # run spread over several sessions spans days): the trainer's own clock is the training time.
    seconds = train_seconds(rows)
    argv = results.get("argv", [])
    return {
        "command": " ".join(["python", "trainers/cifar.py", *argv[1:]]) if argv else None,
        "steps": results["steps"],
        "epochs": float(rows[-1]["epoch"]) if rows else None,
        "first_logged_step": int(rows[0]["step"]) if rows else None,
        "wall_time_hours": round((times[-1] - times[0]) / 3600, 2) if len(times) > 1 else None,
        "train_hours": round(seconds / 3600, 2) if seconds is not None else None,
        "median_images_per_sec": rates[len(rates) // 2] if rates else None,
        "final_test_error_in_training": {k: v["error"] for k, v in results["final"].items()},
        "parameters": results["parameters"],
        "dtype_policy": results.get("dtype_policy") or _flag_value(argv, "dtype_policy", "float32"),
        "recipe": results.get("recipe", {}),
        "base_lr": results.get("base_lr"),
        "global_batch": results.get("global_batch"),
    }


def earlier_training(card_path: str) -> tuple:
    """``(training record, training hardware)`` of an earlier card (read before it is overwritten)."""
    with open(card_path) as handle:
        card = json.load(handle)
    if "training" not in card or "hardware" not in card:
        raise ValueError(f"{card_path} is not a model card (no training or hardware record)")
    return card["training"], card["hardware"]


def _time_text(training: dict) -> str:
    """The card's line on how long training took (cards written before ``train_hours`` have only the span)."""
    span = (f"wall-clock span from the first logged iteration ({training['first_logged_step']}) to the end: "
            f"{training['wall_time_hours']:.2f} h")
    rate = f"at a median {training['median_images_per_sec']:.0f} images/s"
    if training.get("train_hours") is None:
        return f"{span[0].upper()}{span[1:]}, {rate}."
    return (f"Training time: {training['train_hours']:.2f} h in training steps, {rate} (the trainer's clock, "
            f"added up over every process of the run; evaluations and checkpoints excluded); {span} "
            "(evaluations and any pause between a stopped process and its resume included).")


def _flag_value(argv, name: str, default: str) -> str:
    """``--name=value`` from a recorded command line (runs older than the field in results.json)."""
    prefix = f"--{name}="
    return next((a[len(prefix):] for a in reversed(argv) if a.startswith(prefix)), default)


def measure(model_dir: str, eval_dir: str | None) -> dict:
    """Accuracy of every backend on the bundled sample's test split and on ``eval_dir``'s test split."""
    release = Release(model_dir)
    measured = {"sample_test": release.evaluate_folder(cifar10_sample_dir(), "test")}
    if eval_dir:
        measured["eval_dir_test"] = release.evaluate_folder(eval_dir, "test")
    return {"version_dir": os.path.relpath(release.path, model_dir), "preprocessing": release.preprocessing,
            "class_names": release.class_names, "tta": release.export_info.get("tta", "none"),
            "accuracy": measured, "parity": parity_record(release.path)}


PARITY_FIELDS = ("reference", "num_images", "data", "float_tolerance_rel", "comparisons", "vs_serving_default",
                 "keras_accuracy", "float32_parity_passed")


def parity_record(version_dir: str) -> dict | None:
    """The comparisons of the export's ``assets.extra/parity.json`` (None for an export without one)."""
    path = os.path.join(version_dir, EXTRA_DIR, PARITY_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        report = json.load(handle)
    return {key: report[key] for key in PARITY_FIELDS if key in report}


def parity_text(parity: dict | None) -> str:
    """The card's parity section: each artefact against the Keras model, ONNX against ``serving_default``."""
    if not parity:
        return "(this export has no parity report)"
    return (f"Written by the export (`assets.extra/parity.json`) on {parity['num_images']:,} held-out images "
            f"({parity.get('data', 'not recorded')}). Reference: {parity.get('reference', 'keras')}. A float32 "
            f"artefact passes within a relative {parity.get('float_tolerance_rel', 0):g} of the largest "
            "logit.\n\n" + format_report(parity))


TTA_TEXT = {
    "none": "Test-time augmentation: none (one forward pass per image).",
    "flip": "Test-time augmentation: horizontal flip (mean of the logits of the image and its mirror "
            "image); inference costs two forward passes per image. The accuracies above include it.",
    "translate": "Test-time augmentation: one-pixel translations (mean of the logits of the image and "
                 "of its copies shifted one pixel up, down, left and right, zero fill); inference costs "
                 "five forward passes per image. The accuracies above include it.",
    "flip_translate": "Test-time augmentation: horizontal flip and one-pixel translations (mean of the "
                      "logits of the image, its copies shifted one pixel up, down, left and right with "
                      "zero fill, and the mirror images of all five); inference costs ten forward "
                      "passes per image. The accuracies above include it.",
}


# Short names of the test-time augmentations, for sentences ("evaluated with ... test-time augmentation").
TTA_SHORT = {"flip": "flip", "translate": "one-pixel translation", "flip_translate": "flip and one-pixel translation"}


def tta_text(tta: str) -> str:
    """The card's line for the test-time augmentation an export computes."""
    return TTA_TEXT.get(tta, f"Test-time augmentation: {tta}.")


def recipe_text(recipe: dict, base_lr, exported_tta: str = "none") -> str:
    """The optimiser and schedule of a run, from its recorded recipe (``exported_tta``: the
    test-time augmentation of the export, to say whether the training evaluations' flip is in it)."""
    if not recipe:
        return "recipe not recorded"
    momentum = f"SGD momentum {recipe['momentum']:g}" + (" (Nesterov)" if recipe.get("nesterov") else "")
    schedule = recipe["schedule"]
    if schedule == "step" and recipe.get("lr_boundaries"):
        schedule += f" decay x{recipe['decay_factor']:g} at {', '.join(map(str, recipe['lr_boundaries']))}"
    text = f"{momentum}, weight decay {recipe['weight_decay']:g}, learning rate {base_lr:g} with {schedule} schedule"
    if recipe.get("warmup_steps"):
        text += f", warm-up {recipe['warmup_steps']} iterations at {recipe['warmup_lr']:g}"
    if recipe.get("label_smoothing"):
        text += f", label smoothing {recipe['label_smoothing']:g}"
    if recipe.get("weight_average"):
        text += (f", evaluated and exported with a moving average of the weights (decay "
                 f"{recipe['weight_average']:g} per iteration)")
    trained_tta = tta_name(recipe.get("eval_flip", False), recipe.get("eval_translate", False))
    if trained_tta != "none":
        text += f", evaluated during training with {TTA_SHORT[trained_tta]} test-time augmentation " + (
            "(the exported artefacts compute it too)" if exported_tta == trained_tta
            else f"(the exported artefacts compute {TTA_SHORT.get(exported_tta, exported_tta)} instead)"
            if exported_tta != "none" else "(not in the exported signature)"
        )
    return text


def _accuracy_table(results: dict) -> str:
    lines = ["| artefact | correct | images | top-1 accuracy |", "|---|---:|---:|---:|"]
    for backend, row in results.items():
        lines.append(f"| {backend} | {row['correct']} | {row['count']} | {100 * row['accuracy']:.2f}% |")
    return "\n".join(lines)


def render(card: dict) -> str:
    """The Markdown card."""
    t, h, m = card["training"], card["hardware"], card["measured"]
    sizes = "\n".join(f"| {name} | {size / 2**20:.2f} MB |" for name, size in card["artefact_bytes"].items())
    parts = [
        f"# {card['name']}: model card",
        "",
        card["notes"].strip(),
        "",
        "## Measured accuracy",
        "",
        f"CIFAR-10 test set ({card['eval_dir_description']}), every test image:",
        "",
        _accuracy_table(m["accuracy"]["eval_dir_test"]) if "eval_dir_test" in m["accuracy"] else "(not measured)",
        "",
        "The 1,000 test images of the CIFAR-10 sample bundled in the package "
        "(`keras_preact.data.cifar10_sample_dir()`, test split; `tests/test_shipped_model.py` "
        "recomputes these counts):",
        "",
        _accuracy_table(m["accuracy"]["sample_test"]),
        "",
        "## Training",
        "",
        f"- Command: `{t['command']}`",
        f"- {t['steps']} iterations ({t['epochs']:g} epochs) at batch {t['global_batch']}: "
        f"{recipe_text(t['recipe'], t['base_lr'], m.get('tta', 'none'))}; the trainer's CIFAR augmentation (4-pixel "
        "pad, random 32x32 crop, horizontal flip).",
        f"- {_time_text(t)}",
        f"- Parameters: {t['parameters']:,}.",
        f"- Hardware: {h['cpu']}, {h['logical_cores']} logical cores, {h['memory_gb']} GB, "
        f"{'GPU' if h['gpu'] else 'no GPU'}; TensorFlow {h['tensorflow']}, Keras {h['keras']}, "
        f"trained in {t.get('dtype_policy', 'float32')} (exported in float32).",
        f"- Curves: [{CURVES}]({CURVES}).",
        "",
        "## Artefacts",
        "",
        f"`{m['version_dir']}/` (TF Serving layout; preprocessing `{card_preprocessing(m)}` is inside "
        "the serving signature, which takes encoded image bytes):",
        "",
        "| file | size |",
        "|---|---:|",
        sizes,
        "",
        tta_text(m.get("tta", "none")),
        "",
        "## Parity",
        "",
        parity_text(m.get("parity")),
        "",
        f"Written by `python -m keras_preact.export.model_card` on {card['date']}.",
        "",
    ]
    return "\n".join(parts)


def card_preprocessing(measured: dict) -> str:
    """The card's evaluation preprocessing (cards written before the field was renamed say ``recipe``)."""
    return measured.get("preprocessing", measured.get("recipe"))


def artefact_bytes(version_dir: str) -> dict:
    sizes = {}
    for root, _, files in os.walk(version_dir):
        for name in files:
            path = os.path.join(root, name)
            relative = os.path.relpath(path, version_dir)
            artefact = relative.endswith((".tflite", ".onnx"))
            key = relative if artefact else "SavedModel (saved_model.pb, variables/)"
            if relative.startswith("assets.extra") and not artefact:
                continue
            sizes[key] = sizes.get(key, 0) + os.path.getsize(path)
    return dict(sorted(sizes.items()))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m keras_preact.export.model_card", description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", help="Exported model directory (TF Serving layout), e.g. saved_models/<name>.")
    training_source = parser.add_mutually_exclusive_group(required=True)
    training_source.add_argument("--run_dir", help="The trainer's run directory (metrics.csv, results.json).")
    training_source.add_argument(
        "--training_from",
        help="An earlier model_card.json of the same weights (a re-export with `export --saved_model`): "
        "its training record and training hardware are kept, as the run directory may be gone.")
    parser.add_argument("--eval_dir", help="Image folder whose test split is the full test set.")
    parser.add_argument("--eval_dir_description", default="JPEG copy, 10,000 images",
                        help="How the card describes --eval_dir.")
    parser.add_argument("--notes", help="Markdown written by hand (what the model is, how to use it, "
                        "limitations), placed under the title.")
    args = parser.parse_args(argv)
    try:
        notes = ""
        if args.notes:
            with open(args.notes) as handle:
                notes = handle.read()
        if args.run_dir:
            training, trained_on = training_record(args.run_dir), hardware()
        else:
            training, trained_on = earlier_training(args.training_from)
        measured = measure(args.model_dir, args.eval_dir)
    except (OSError, ValueError, KeyError) as error:
        parser.error(str(error).splitlines()[0])
    version_dir = os.path.join(args.model_dir, measured["version_dir"])
    card = {
        "name": os.path.basename(os.path.normpath(args.model_dir)),
        "date": datetime.date.today().isoformat(),
        "notes": notes,
        "eval_dir_description": args.eval_dir_description,
        "measured": measured,
        "training": training,
        "hardware": trained_on,  # where it was trained (the card's "Hardware" line)
        "measured_on": hardware(),
        "artefact_bytes": artefact_bytes(version_dir),
        "command": shlex.join(["python", "-m", "keras_preact.export.model_card", *(argv or sys.argv[1:])]),
    }
    curves = os.path.join(args.run_dir, "curves.png") if args.run_dir else None
    if curves and os.path.exists(curves):
        shutil.copyfile(curves, os.path.join(args.model_dir, CURVES))
    with open(os.path.join(args.model_dir, CARD_JSON), "w") as handle:
        json.dump(card, handle, indent=2)
    with open(os.path.join(args.model_dir, CARD_MD), "w") as handle:
        handle.write(render(card))
    for split, results in measured["accuracy"].items():
        for backend, row in results.items():
            print(f"{split} {backend}: {row['correct']}/{row['count']} ({100 * row['accuracy']:.2f}%)")
    print(os.path.join(args.model_dir, CARD_MD))
    return 0


if __name__ == "__main__":
    sys.exit(main())
