"""Command line: measure signal propagation through shortcut variants of a net, plot it.

    python -m keras_preact.diagnostics --model resnet302 \\
        --variants full_preact/identity,full_preact/constant_scaling,original/identity \\
        --batch_size 32 --out propagation.png

Writes the PNG (default ``./propagation.png``: the current directory, never the repository's
``docs/``), a JSON file beside it (every number and the command line) and prints a table.
Bad arguments (unknown model or variant, missing or unreadable file, out-of-range number)
exit with status 2 and a one-line error; ``--help`` exits 0.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import sys
import time
import zipfile

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_preact.common import (  # noqa: E402
    COMMAND_ENVIRONMENT,
    FlagValueError,
    OneLineArgumentParser,
    check_writable_dir,
    positive_float,
    positive_int,
    program_name,
)

from keras_preact.diagnostics.batch import load_batch  # noqa: E402
from keras_preact.diagnostics.plot import plot_propagation  # noqa: E402
from keras_preact.diagnostics.propagation import propagation_norms  # noqa: E402
from keras_preact.diagnostics.variants import (  # noqa: E402
    DEFAULT_VARIANTS,
    build_variant,
    canonical_model_name,
    parse_variants,
)
from keras_preact.plan import UNIT_DEFAULTS  # noqa: E402

USAGE_ERROR = 2


class UsageError(Exception):
    """A problem with the command line or its files: reported in one line, exit status 2."""


def make_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog=program_name("keras_preact.diagnostics"),
        description=(
            "Signal propagation (He et al. 2016, Eqn 4-8): per residual unit, the forward norm "
            "||x_l||, the backward norm ||dE/dx_l|| and its shortcut-path term (the gradient "
            "carried through the shortcuts alone, residual branches held constant), for several "
            "shortcut/order variants of one network on one batch of real images."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        epilog=COMMAND_ENVIRONMENT,
    )
    net = parser.add_argument_group("network")
    net.add_argument("--model", default="resnet302",
                     help="a keras_preact model name (resnet110, resnet164, resnet50, ...) or "
                          "resnet<depth> for a CIFAR net of that depth (basic units: 6n+2)")
    net.add_argument("--variants", default=None,
                     help="comma-separated order/shortcut pairs, each built as its own net "
                          f"(default: {','.join(DEFAULT_VARIANTS)})")
    net.add_argument("--model_file", default=None,
                     help="measure this saved .keras model instead (one variant: the model "
                          "itself; --model and --variants do not apply)")
    net.add_argument("--shortcut_scale", type=positive_float, default=UNIT_DEFAULTS.shortcut_scale,
                     help="lambda of the constant_scaling shortcut")
    net.add_argument("--gate_bias_init", type=float, default=UNIT_DEFAULTS.gate_bias_init,
                     help="initial gate bias b_g of the gating shortcuts")
    net.add_argument("--seed", type=int, default=0,
                     help="weight initialisation seed (the same for every variant)")
    data = parser.add_argument_group("data")
    data.add_argument("--data_dir", default=None,
                      help="image folder root/<split>/<class>/<image> (default: the CIFAR-10 "
                           "sample shipped in the package)")
    data.add_argument("--split", default="test", help="split folder to take the batch from")
    data.add_argument("--recipe", default="auto",
                      choices=("auto", "cifar", "imagenet_224", "imagenet_320"),
                      help="evaluation preprocessing; auto: cifar for images <= 64 px, "
                           "else imagenet_224")
    data.add_argument("--batch_size", type=positive_int, default=32,
                      help="images in the batch (picked evenly across the split's classes)")
    data.add_argument("--mode", choices=("train", "eval"), default="train",
                      help="BatchNorm on batch statistics (train) or moving statistics (eval)")
    out = parser.add_argument_group("output")
    out.add_argument("--out", default="propagation.png",
                     help="PNG to write (default: in the current directory); the JSON goes "
                          "beside it with the same name")
    out.add_argument("--dpi", type=positive_int, default=100, help="PNG resolution")
    return parser


def summarize(norms: dict) -> dict:
    """First/last values and spreads of one variant's curves (the table and the JSON summary)."""
    forward, backward, direct = norms["forward"], norms["backward"], norms["backward_direct"]
    product = forward * backward
    return {
        "units": len(forward),
        "forward_first": float(forward[0]),
        "forward_last": float(forward[-1]),
        "backward_first": float(backward[0]),
        "backward_last": float(backward[-1]),
        "backward_max_over_min": float(backward.max() / backward.min()),
        "backward_first_over_last": float(backward[0] / backward[-1]),
        "direct_first": float(direct[0]),
        "direct_last": float(direct[-1]),
        "direct_first_over_last": float(direct[0] / direct[-1]) if direct[-1] else float("nan"),
        "product_max_over_min": float(product.max() / product.min()),
        "loss": norms["loss"],
    }


def format_table(summaries: dict) -> str:
    header = ("variant", "fwd first", "fwd last", "bwd first", "bwd last", "bwd max/min",
              "direct first", "direct last")
    rows = [header] + [
        (label, *(f"{s[k]:.3g}" for k in ("forward_first", "forward_last", "backward_first",
                                           "backward_last", "backward_max_over_min",
                                           "direct_first", "direct_last")))
        for label, s in summaries.items()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join("  ".join(cell.rjust(w) if i else cell.ljust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))) for row in rows)


def check_arguments(args) -> None:
    """Everything that can be checked before building a network, as UsageErrors."""
    if args.model_file is not None:
        if args.variants is not None:
            raise UsageError("--variants does not apply to --model_file (the file is the variant).")
        if not os.path.isfile(args.model_file):
            raise UsageError(f"--model_file: {args.model_file!r} does not exist.")
        if not zipfile.is_zipfile(args.model_file):
            raise UsageError(f"--model_file: {args.model_file!r} is not a .keras file (not a zip archive).")
    else:
        try:
            canonical_model_name(args.model)
            parse_variants(args.variants or ",".join(DEFAULT_VARIANTS))
        except ValueError as e:
            raise UsageError(str(e)) from e
    if args.data_dir is not None and not os.path.isdir(args.data_dir):
        raise UsageError(f"Data folder {args.data_dir!r} does not exist.")
    if args.batch_size < 1:
        raise UsageError(f"--batch_size must be a positive integer, got {args.batch_size}.")
    if not args.out.lower().endswith(".png"):
        raise UsageError(f"--out must name a .png file, got {args.out!r}.")
    if not math.isfinite(args.gate_bias_init):
        raise UsageError(f"--gate_bias_init must be a finite number, got {args.gate_bias_init}.")
    try:
        check_writable_dir("out", os.path.dirname(os.path.abspath(args.out)))
    except FlagValueError as error:
        raise UsageError(str(error)) from None


def load_model_file(path: str, batch: dict) -> keras.Model:
    try:
        model = keras.saving.load_model(path)
    except Exception as e:  # noqa: BLE001 - any load failure is the file's problem
        raise UsageError(f"Cannot load {path!r} as a Keras model: {e}") from e
    expected = tuple(model.inputs[0].shape[1:])
    got = batch["images"].shape[1:]
    if any(e is not None and e != g for e, g in zip(expected, got)):
        raise UsageError(f"{path} expects images of shape {expected}, the data gives {got}; "
                         "pick --data_dir/--recipe to match.")
    classes = model.outputs[0].shape[-1]
    if classes is not None and batch["num_classes"] > classes:
        raise UsageError(
            f"{path} has {classes} outputs, the data has {batch['num_classes']} classes.")
    return model


def run(args, argv) -> dict:
    start = time.time()
    training = args.mode == "train"
    try:
        batch = load_batch(args.data_dir, args.split, args.batch_size, args.recipe)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(str(e)) from e
    image_shape = tuple(batch["images"].shape[1:])

    if args.model_file is not None:
        label = os.path.basename(args.model_file)
        jobs = [(label, lambda: load_model_file(args.model_file, batch))]
        model_title = os.path.basename(args.model_file)
    else:
        variants = parse_variants(args.variants or ",".join(DEFAULT_VARIANTS))
        model_title = canonical_model_name(args.model)

        def builder(order, shortcut):
            def build():
                keras.utils.set_random_seed(args.seed)
                try:
                    return build_variant(
                        args.model, order, shortcut, num_classes=batch["num_classes"],
                        image_shape=image_shape, shortcut_scale=args.shortcut_scale,
                        gate_bias_init=args.gate_bias_init,
                    )
                except ValueError as e:
                    raise UsageError(str(e)) from e
            return build

        jobs = [(f"{order}/{shortcut}", builder(order, shortcut)) for order, shortcut in variants]

    results, timings = {}, {}
    for label, build in jobs:
        t0 = time.time()
        model = build()
        t1 = time.time()
        results[label] = propagation_norms(model, batch["images"], batch["labels"],
                                           training=training)
        timings[label] = {"build_seconds": round(t1 - t0, 2),
                          "measure_seconds": round(time.time() - t1, 2)}
        print(f"{label}: built in {t1 - t0:.1f} s, measured in {time.time() - t1:.1f} s",
              file=sys.stderr, flush=True)

    summaries = {label: summarize(norms) for label, norms in results.items()}
    units = len(next(iter(results.values()))["units"])
    title = (f"{model_title} ({units} residual units), batch {len(batch['labels'])}, "
             f"BN {'batch' if training else 'moving'} statistics (mode={args.mode})")
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    plot_propagation(results, args.out, title, dpi=args.dpi)
    wall = time.time() - start
    report = {
        "command": shlex.join(["python", "-m", "keras_preact.diagnostics", *argv]),
        "title": title,
        "model": model_title,
        "model_file": args.model_file,
        "batch_size": int(len(batch["labels"])),
        "mode": args.mode,
        "seed": args.seed,
        "shortcut_scale": args.shortcut_scale,
        "gate_bias_init": args.gate_bias_init,
        "data": {"root": args.data_dir or "cifar10_sample", "split": args.split,
                 "recipe": batch["recipe"], "labels": batch["labels"].tolist()},
        "wall_seconds": round(wall, 1),
        "definitions": {
            "forward": "||x_l|| of unit l's input, per example, batch mean",
            "backward": "||dE/dx_l||, E = mean softmax cross-entropy over the batch",
            "backward_direct": "shortcut-path term of dE/dx_l (Eqn 5 first term, Eqn 8 prod "
                               "lambda_i): dE/dx_L carried back with every residual branch "
                               "(and gate) held constant",
            "depth": "weight layers before unit l's input",
        },
        "summary": summaries,
        "timings": timings,
        "variants": {
            label: {key: (value.tolist() if isinstance(value, np.ndarray) else value)
                    for key, value in norms.items()}
            for label, norms in results.items()
        },
    }
    json_path = os.path.splitext(args.out)[0] + ".json"
    with open(json_path, "w") as f:
        json.dump(report, f, indent=1)
    print(title)
    print(format_table(summaries))
    print(f"wrote {args.out} and {json_path} in {wall:.1f} s")
    return report


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = make_parser().parse_args(argv)
    try:
        check_arguments(args)
        run(args, argv)
    except UsageError as e:
        message = " ".join(str(e).split())
        print(f"error: {message}", file=sys.stderr)
        return USAGE_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
