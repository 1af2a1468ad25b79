"""``python -m keras_preact.cli.convert_weights``: a weights file -> a ``.keras`` or ``.weights.h5``.

    python -m keras_preact.cli.convert_weights resnetv2_50.safetensors --model resnet50 \\
        --out resnet50_timm.keras
    python -m keras_preact.cli.convert_weights my_cifar_net.pth --model resnet110 \\
        --model_kwargs '{"num_classes": 100}' --out resnet110.weights.h5

The input is a timm ResNetV2 state dict or a PyTorch state dict named like keras_preact's layers
(``keras_preact.weights``); the options the file fixes (timm: stem, padding, classes) are taken
from it. ``--model`` may be left out for timm files: the architecture is then read from the file.
The converted model is checked against the file's own tensors before it is written. Exit
status 2 on bad arguments or a mismatched architecture (the message names the first
mismatching tensor).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from keras_preact import presets, registry, weights
from keras_preact.common import COMMAND_ENVIRONMENT, OneLineArgumentParser, program_name


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineArgumentParser(
        prog=program_name("keras_preact.cli.convert_weights"),
        description="Convert a timm / PyTorch weights file into a Keras file of a keras_preact model.",
        epilog=COMMAND_ENVIRONMENT,
    )
    parser.add_argument("weights", help="A .safetensors or PyTorch state-dict file, a preset folder, "
                        "or a hub handle (hf://owner/repo, kaggle://owner/model/framework/variation).")
    parser.add_argument("--out", required=True, help="Output .keras or .weights.h5 file.")
    parser.add_argument("--model", help="A registered model name (default: read from a timm file).")
    parser.add_argument("--model_kwargs", default="{}",
                        help='JSON architecture arguments, e.g. \'{"num_classes": 100}\'.')
    parser.add_argument("--overwrite", action="store_true", help="Replace --out if it exists.")
    return parser


def convert(path: str, out: str, model_name: str | None = None, model_kwargs: dict | None = None):
    """Build the model, load ``path``, write ``out``; returns the model."""
    model_kwargs = dict(model_kwargs or {})
    if model_name:
        model = registry.get_model(model_name, weights=path, **model_kwargs)
    else:
        local = weights.local_weights(path)  # a hub handle: the files in the hub's cache
        if os.path.isdir(local):
            model = presets.from_preset(local, **model_kwargs)
        else:
            model = weights.model_from_file(local, **model_kwargs)
    if out.endswith(".weights.h5"):
        model.save_weights(out)
    else:
        model.save(out)
    return model


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.out.endswith(weights.KERAS_SUFFIXES):
        parser.error(f"argument --out: must end in {' or '.join(weights.KERAS_SUFFIXES)}, got {args.out!r}.")
    if os.path.exists(args.out) and not args.overwrite:
        parser.error(f"argument --out: {args.out!r} exists (pass --overwrite to replace it).")
    try:
        kwargs = json.loads(args.model_kwargs)
    except json.JSONDecodeError as error:
        parser.error(f"argument --model_kwargs: not valid JSON ({error}).")
    if not isinstance(kwargs, dict):
        parser.error("argument --model_kwargs: must be a JSON object.")
    try:
        model = convert(args.weights, args.out, args.model, kwargs)
    except registry.ModelNameError as error:
        parser.error(f"argument --model: {error}")
    except (ValueError, FileNotFoundError, TypeError, ImportError) as error:
        parser.error(str(error))  # one line: e.g. hub weights neither cached nor downloadable
    print(f"{args.out}: {model.name}, {model.count_params():,} parameters "
          f"(stem={model.architecture.stem}, padding={model.architecture.padding}, "
          f"{model.architecture.num_classes if model.architecture.include_top else 'no'} classes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
