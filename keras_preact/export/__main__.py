"""``python -m keras_preact.export``: a ``.keras`` file, a training checkpoint or an export -> saved_models/.

    # a saved Keras model (labels.txt next to it, or --class_names / --labels_file)
    python -m keras_preact.export --model_file runs/r20/model.keras --name resnet20 --preprocessing cifar

    # a training run directory (its checkpoints/ and labels.txt): rebuild the architecture
    python -m keras_preact.export --checkpoint runs/cifar10_resnet20 --model resnet20 \\
        --preprocessing cifar --name resnet20

    # a version exported before (its variables; labels.txt in its assets.extra): the same
    # weights again, with other artefacts, as the next version
    python -m keras_preact.export --saved_model saved_models/resnet20/1 --model resnet20 \
        --preprocessing cifar --name resnet20 --onnx

Writes ``<base_dir>/<name>/<version>/`` (see ``keras_preact.export.exporter``) and prints the
parity report. ``--onnx`` adds ``assets.extra/model.onnx`` (needs ``pip install
"keras_preact[onnx]"``). ``--tta`` makes every artefact average the logits over views of each
image: ``flip`` (the image and its mirror image, two forward passes), ``translate`` (the image and
its copies shifted one pixel up, down, left and right, five) or ``flip_translate`` (ten). A bad
argument is one line ``error: --flag: message`` on stderr with exit status 2 (an unknown flag
with the closest known ones; ``--recipe``, the old name of ``--preprocessing``, says so); exit
status 1 if the float32 parity check fails.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import zipfile

import numpy as np
import tensorflow as tf

from keras_preact import registry
from keras_preact.data import LABEL_MAP_FILENAME, PREPROCESSINGS
from keras_preact.export.exporter import (
    EXTRA_DIR,
    ExportParityError,
    export_model,
    image_folder_split,
    load_model_file,
)
from keras_preact.export.saved_model import eval_image_size, load_saved_model_weights
from keras_preact.export.tflite import VARIANTS
from keras_preact.tta import TTA_CHOICES
from keras_preact.common import (COMMAND_ENVIRONMENT, FlagValueError, check_writable_dir, positive_int,
                                 program_name)
from keras_preact.export.arguments import ArgumentError, CommandParser
from keras_preact.training.checkpoints import VariableSet, check_finite_checkpoint
from keras_preact.training.divergence import NonFiniteCheckpointError


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        prog=program_name("keras_preact.export"),
        renamed={"--recipe": "renamed --preprocessing (the evaluation preprocessing: "
                 f"{', '.join(sorted(PREPROCESSINGS))}; --recipe is the trainers' training recipe)"},
        description="Export a trained keras_preact model for TF Serving, TFLite and (--onnx) ONNX, "
        "with a parity report.",
        epilog=COMMAND_ENVIRONMENT,
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model_file", help="A .keras file.")
    source.add_argument(
        "--checkpoint",
        help="A training run directory, its checkpoints/ directory, or one checkpoint prefix "
        "(needs --model to rebuild the architecture).",
    )
    source.add_argument(
        "--saved_model",
        help="A version folder this exporter wrote (e.g. saved_models/<name>/4): its weights, "
        "read by variable path into --model, exported again (other artefacts, a new version).",
    )
    parser.add_argument(
        "--model",
        help="Architecture of --checkpoint: a registered name (keras_preact.list_models(): "
        "resnet20, resnet164, resnet50, ...) or resnet<depth> for any valid CIFAR depth.",
    )
    parser.add_argument(
        "--model_kwargs",
        default="{}",
        help='JSON keyword arguments of the architecture, as at training, e.g. \'{"order": "original"}\'.',
    )
    parser.add_argument(
        "--weights",
        default="auto",
        choices=("auto", "model", "averaged"),
        help="Which weights of --checkpoint: the model's own, or the moving average a run with "
        "--weight_average keeps (auto: the average if the checkpoint holds one, as the run's "
        "evaluations used it).",
    )
    parser.add_argument("--num_classes", type=positive_int, help="Outputs of --checkpoint's model (default: number of class names).")
    parser.add_argument("--preprocessing", required=True, choices=sorted(PREPROCESSINGS),
                        help="Evaluation preprocessing the serving signature applies (the one the model "
                        "was evaluated with).")
    parser.add_argument("--name", help="Model name under --base_dir (default: from --model or the file name).")
    parser.add_argument("--base_dir", default="saved_models", help="TF Serving model base directory.")
    parser.add_argument("--version", type=positive_int, help="Version number (default: the next free one).")
    parser.add_argument("--class_names", help="Comma-separated class names in label order.")
    parser.add_argument("--labels_file", help="labels.txt with one class name per line (default: next to the model).")
    parser.add_argument("--eval_dir", help="Image folder <root>/<split>/<class>/<image> for parity and int8 calibration.")
    parser.add_argument("--eval_split", default="test", help="Held-out split of --eval_dir.")
    parser.add_argument("--calibration_split", default="train", help="Calibration split of --eval_dir.")
    parser.add_argument("--eval_limit", type=positive_int, default=1000, help="Held-out images in the parity report.")
    parser.add_argument("--calibration_size", type=positive_int, default=200, help="int8 calibration images.")
    parser.add_argument(
        "--tflite",
        default=",".join(VARIANTS),
        help=f"Comma-separated TFLite variants ({', '.join(VARIANTS)}), or 'none'.",
    )
    parser.add_argument(
        "--onnx",
        action="store_true",
        help="Also write assets.extra/model.onnx (input: the preprocessed float batch, output: "
        "logits), checked with ONNX Runtime in the parity report. Needs the [onnx] extra.",
    )
    parser.add_argument("--no_fold", action="store_true", help="Convert the unfolded model to TFLite and ONNX.")
    parser.add_argument(
        "--tta",
        default="none",
        choices=TTA_CHOICES,
        help="Test-time augmentation computed by every artefact: none (default), flip (the mean "
        "of the logits of the image and of its mirror image; two forward passes per image), "
        "translate (the image and its copies shifted one pixel up, down, left, right; five) or "
        "flip_translate (those five and their mirror images; ten).",
    )
    parser.add_argument("--top_k", type=positive_int, default=5, help="Classes returned per image.")
    parser.add_argument("--max_image_pixels", type=positive_int, help="Reject larger images at serving time.")
    parser.add_argument(
        "--allow_parity_failure", action="store_true", help="Publish even if float32 parity fails."
    )
    return parser


def _label_file_near(path: str) -> str | None:
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    # an export keeps its labels.txt in assets.extra/
    for candidate in (directory, os.path.dirname(directory), os.path.join(directory, EXTRA_DIR)):
        file = os.path.join(candidate, LABEL_MAP_FILENAME)
        if os.path.isfile(file):
            return file
    return None


def resolve_class_names(args, source_path: str) -> list:
    if args.class_names:
        return [c.strip() for c in args.class_names.split(",") if c.strip()]
    if args.labels_file is not None and not os.path.isfile(args.labels_file):
        raise ArgumentError("--labels_file", f"no such file {args.labels_file!r}")
    labels_file = args.labels_file or _label_file_near(source_path)
    if labels_file is None:
        raise ArgumentError(
            "--class_names", f"no class names: pass --class_names or --labels_file (no {LABEL_MAP_FILENAME} "
            f"next to {source_path!r})"
        )
    with open(labels_file, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise ArgumentError("--labels_file", f"{labels_file!r} is empty")
    return names


def checkpoint_prefix(path: str) -> str:
    """The newest checkpoint under a run directory / checkpoint directory, or ``path`` itself."""
    for directory in (os.path.join(path, "checkpoints"), path):
        if os.path.isdir(directory):
            latest = tf.train.latest_checkpoint(directory)
            if latest:
                return latest
    if os.path.isfile(path + ".index"):
        return path
    if not os.path.exists(path):
        raise ArgumentError("--checkpoint", f"no such file or folder {path!r}")
    raise ArgumentError("--checkpoint", f"no checkpoint at {path!r} (looked in {os.path.join(path, 'checkpoints')}, "
                        f"{path} and {path}.index)")


def parse_model_kwargs(text: str) -> dict:
    """``--model_kwargs``: a JSON object, or an ArgumentError naming the flag."""
    try:
        kwargs = json.loads(text)
    except json.JSONDecodeError as error:
        raise ArgumentError("--model_kwargs", f"not valid JSON ({error}): {text!r}") from None
    if not isinstance(kwargs, dict):
        raise ArgumentError("--model_kwargs", f"must be a JSON object, got {text!r}")
    return kwargs


def build_architecture(name: str, kwargs: dict, num_classes: int, preprocessing: str):
    """The network ``name`` (resolved by ``keras_preact.registry``) with ``kwargs``, fresh weights.

    A name the registry does not know is an ArgumentError of ``--model``; a bad unit kind or
    another architecture argument the network refuses, one of ``--model_kwargs``.
    """
    kwargs = dict(kwargs)
    kwargs.setdefault("num_classes", num_classes)
    # The export serves NHWC whatever the run trained in (checkpoint variables are layout-free),
    # so the network is built NHWC, not in keras.config.image_data_format()'s layout.
    kwargs.setdefault("data_format", "channels_last")
    if preprocessing == "cifar":
        size = eval_image_size(preprocessing)
        kwargs.setdefault("input_shape", (size, size, 3))
    try:
        return registry.get_model(name, **kwargs)
    except registry.ModelNameError as error:
        raise ArgumentError("--model" if error.argument == "name" else "--model_kwargs", str(error)) from None
    except (TypeError, ValueError) as error:
        raise ArgumentError("--model_kwargs", str(error)) from None


def restore_checkpoint(model, path: str, weights: str = "auto") -> str:
    """Load a training checkpoint's model variables into ``model``; fail if any is missing.

    ``weights``: ``"model"`` (the trained weights), ``"averaged"`` (their moving average, kept
    under ``averaged`` by a run with a weight average) or ``"auto"`` (the average if there is
    one: what the run's evaluations measured).

    The trainer saves variables by their Keras paths (``training.checkpoints.VariableSet``), so
    the same ``VariableSet`` reads them back into a freshly built ``model``.
    ``assert_existing_objects_matched`` only vouches for objects the checkpoint knows; a
    variable the checkpoint never contained would keep its fresh value unnoticed. So every
    float variable is first set to NaN, and any NaN left after the restore is an error.
    """
    prefix = checkpoint_prefix(path)
    try:
        check_finite_checkpoint(prefix)
    except NonFiniteCheckpointError as error:
        raise ArgumentError("--checkpoint", str(error)) from None
    has_average = any(name.startswith("averaged/") for name, _ in tf.train.list_variables(prefix))
    if weights == "averaged" and not has_average:
        raise ArgumentError("--weights", f"checkpoint {prefix} holds no weight average (the run had "
                            "no --weight_average); use --weights=model")
    key = "averaged" if weights == "averaged" or (weights == "auto" and has_average) else "model"
    floats = [v for v in model.variables if v.dtype.startswith("float")]
    for variable in floats:
        variable.assign(np.full(variable.shape, np.nan, variable.dtype))
    status = tf.train.Checkpoint(**{key: VariableSet(model.variables)}).restore(prefix)
    status.expect_partial()  # the optimizer's slots are in the checkpoint too, unused here
    try:
        status.assert_existing_objects_matched()
    except AssertionError:  # variables of other names or shapes: another architecture
        raise ArgumentError("--checkpoint", f"{prefix} holds variables that do not fit the {model.name} built "
                            "from --model/--model_kwargs (wrong --model or --model_kwargs?)") from None
    missing = [v.path for v in floats if np.isnan(np.asarray(v.numpy())).all()]
    if missing:
        raise ArgumentError("--checkpoint",
            f"Checkpoint {prefix} does not hold {len(missing)} of the model's variables "
            f"(e.g. {', '.join(missing[:3])}): wrong --model/--model_kwargs, or a checkpoint "
            "written before ResidualUnit sublayers were checkpoint-tracked."
        )
    return prefix


def parse_tflite(text: str) -> tuple:
    """``--tflite``: comma-separated variants, or ``none``; an ArgumentError names the flag."""
    if text.strip().lower() == "none":
        return ()
    variants = tuple(v.strip() for v in text.split(",") if v.strip())
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        raise ArgumentError("--tflite", f"unknown variant(s) {', '.join(bad)}; valid: {', '.join(VARIANTS)}, or none")
    return variants


def check_arguments(args) -> None:
    """Checks before any model is loaded, cheapest first; ArgumentError names the flag.

    Flag values come first (they need no file), then the files named: a missing
    ``--checkpoint`` is reported as such, before the class names that would be read next to it.
    """
    parse_tflite(args.tflite)
    if args.weights != "auto" and args.checkpoint is None:
        source = "--model_file" if args.model_file is not None else "--saved_model"
        raise ArgumentError("--weights", f"chooses among a --checkpoint's weights; {source} holds one set")
    if args.model_file is None and not args.model:
        source = "--checkpoint" if args.checkpoint is not None else "--saved_model"
        raise ArgumentError("--model", f"{source} needs --model (the architecture to restore into)")
    kwargs = parse_model_kwargs(args.model_kwargs)
    if args.model_file is None:
        try:
            registry.resolve(args.model, kwargs.get("unit"))
        except registry.ModelNameError as error:
            raise ArgumentError("--model" if error.argument == "name" else "--model_kwargs", str(error)) from None
    if args.num_classes is not None and args.num_classes < 2:
        raise ArgumentError("--num_classes", f"a classifier needs at least two classes, got {args.num_classes}")
    if args.labels_file is not None and not os.path.isfile(args.labels_file):
        raise ArgumentError("--labels_file", f"no such file {args.labels_file!r}")
    if args.eval_dir is not None and not os.path.isdir(args.eval_dir):
        raise ArgumentError("--eval_dir", f"no folder {args.eval_dir!r}")
    try:
        check_writable_dir("base_dir", args.base_dir)
    except FlagValueError as error:
        raise ArgumentError(f"--{error.flag}", error.message) from None
    if args.model_file is not None:
        if not os.path.isfile(args.model_file):
            raise ArgumentError("--model_file", f"no model file {args.model_file!r}")
        if not zipfile.is_zipfile(args.model_file):
            raise ArgumentError("--model_file", f"{args.model_file!r} is not a .keras file (not a zip archive)")
    elif args.saved_model is not None:
        if not os.path.isfile(os.path.join(args.saved_model, "saved_model.pb")):
            raise ArgumentError("--saved_model", f"no SavedModel at {args.saved_model!r} (no saved_model.pb "
                                "in it; pass a version folder such as saved_models/<name>/1)")
    else:
        checkpoint_prefix(args.checkpoint)


def load_source(args, class_names) -> tuple:
    """``(model, name)`` from ``--model_file``, or ``--checkpoint`` / ``--saved_model`` read into ``--model``."""
    if args.model_file:
        try:
            model = load_model_file(args.model_file)
        except (ValueError, TypeError, OSError) as error:
            raise ArgumentError("--model_file", str(error).strip().splitlines()[0]) from None
        return model, args.name or os.path.splitext(os.path.basename(args.model_file))[0]
    kwargs = parse_model_kwargs(args.model_kwargs)
    model = build_architecture(args.model, kwargs, args.num_classes or len(class_names), args.preprocessing)
    if args.saved_model is not None:
        try:
            count = load_saved_model_weights(model, args.saved_model)
        except ValueError as error:
            raise ArgumentError("--saved_model", f"{error} (wrong --model or --model_kwargs?)") from None
        print(f"Read {count} variables from {args.saved_model}", file=sys.stderr)
    else:
        prefix = restore_checkpoint(model, args.checkpoint, args.weights)
        print(f"Restored {prefix}", file=sys.stderr)
    return model, args.name or registry.resolve(args.model, kwargs.get("unit")).name


def main(argv=None) -> int:
    """The command line; returns 0, or 1 if float32 parity failed. Usage errors exit 2 in one line."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        check_arguments(args)
        variants = parse_tflite(args.tflite)
        class_names = resolve_class_names(args, args.model_file or args.checkpoint or args.saved_model)
        if len(class_names) < 2:
            raise ArgumentError("--class_names", f"a classifier needs at least two classes, got {class_names}")
        model, name = load_source(args, class_names)
        data = {}
        if args.eval_dir:
            data["eval_images"], data["eval_labels"] = image_folder_split(
                args.eval_dir, args.eval_split, args.eval_limit, class_names
            )
            data["calibration_images"], _ = image_folder_split(
                args.eval_dir, args.calibration_split, args.calibration_size
            )
        if args.max_image_pixels:
            data["max_image_pixels"] = args.max_image_pixels
    except ArgumentError as error:
        parser.fail(error.flag, str(error)[len(error.flag) + 2 :])
    except (ValueError, FileNotFoundError) as error:  # e.g. an --eval_dir without that split
        parser.fail("--eval_dir" if args.eval_dir else "--model", str(error).strip().splitlines()[0])
    try:
        path = export_model(
            model,
            args.base_dir,
            name=name,
            version=args.version,
            preprocessing=args.preprocessing,
            class_names=class_names,
            top_k=args.top_k,
            tflite_variants=variants,
            onnx=args.onnx,
            fold=not args.no_fold,
            tta=args.tta,
            eval_limit=args.eval_limit,
            calibration_size=args.calibration_size,
            strict=not args.allow_parity_failure,
            **data,
        )
    except ExportParityError as error:
        print(str(error), file=sys.stderr)
        return 1
    except ImportError as error:  # --onnx without the [onnx] extra
        parser.fail("--onnx", str(error).strip().splitlines()[0])
    except ValueError as error:  # the model does not fit the flags (size, classes, version)
        flag = ("--version" if "ersion" in str(error) else "--class_names" if "class names" in str(error)
                else "--preprocessing" if "Preprocessing" in str(error) else "--name" if "name must" in str(error)
                else "--model_file" if args.model_file else "--model")
        parser.fail(flag, str(error).strip().splitlines()[0])
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
