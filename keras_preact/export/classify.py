"""Use an exported model: ``python -m keras_preact.export.classify <model> <image> ...``.

    python -m keras_preact.export.classify saved_models/cifar10_preact_resnet56 cat.jpg ship.png
    python -m keras_preact.export.classify saved_models/cifar10_preact_resnet56 cat.jpg --backend tflite/int8
    python -m keras_preact.export.classify saved_models/<name> cat.jpg --backend onnx   # exported with --onnx
    python -m keras_preact.export.classify saved_models/cifar10_preact_resnet56 --eval_dir <root> --split test

``<model>`` is a model directory of the TF Serving layout (its newest version is used) or one
version directory. The ``saved_model`` backend calls the ``serving_default`` signature on the
encoded file bytes, exactly what TF Serving runs; ``tflite/<variant>`` runs a TFLite file of
the same export with LiteRT, and ``onnx`` its ``model.onnx`` with ONNX Runtime, both on the
export's evaluation preprocessing (``keras_preact.data``).
"""

from __future__ import annotations

import json
import os
import re
import sys

import numpy as np
import tensorflow as tf

from keras_preact.common import OneLineArgumentParser, positive_int
from keras_preact.data.guard import DEFAULT_MAX_PIXELS, FORMATS
from keras_preact.export import parity
from keras_preact.export.exporter import (
    EXTRA_DIR,
    PARITY_FILE,
    TFLITE_DIR,
    existing_versions,
    image_folder_split,
)
from keras_preact.export.onnx import ONNX_FILE, OnnxRunner
from keras_preact.export.tflite import TFLiteRunner

SAVED_MODEL = "saved_model"
ONNX = "onnx"


def version_dir(path: str) -> str:
    """``path`` if it is one exported version, else the newest version under it."""
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    versions = existing_versions(path)
    if not versions:
        raise FileNotFoundError(
            f"No exported model at {path!r}: expected saved_model.pb or <version>/saved_model.pb."
        )
    return os.path.join(path, str(versions[-1]))


def recorded_preprocessing(export_info: dict) -> str:
    """The evaluation preprocessing an export recorded in its parity report (``export`` section).

    Exports written before the field was called ``preprocessing`` recorded it as ``recipe``
    (saved_models/cifar10_preact_resnet56/4 among them); both are read.
    """
    for key in ("preprocessing", "recipe"):
        if key in export_info:
            return export_info[key]
    raise ValueError("The parity report's export section names no preprocessing.")


class Release:
    """One exported version: its SavedModel, TFLite and ONNX files, class names and evaluation preprocessing."""

    def __init__(self, path: str):
        self.path = version_dir(path)
        with open(os.path.join(self.path, EXTRA_DIR, PARITY_FILE)) as handle:
            self.export_info = json.load(handle)["export"]
        self.class_names = list(self.export_info["class_names"])
        self.preprocessing = recorded_preprocessing(self.export_info)
        self._saved_model = None
        self._runners = {}

    @property
    def backends(self) -> list:
        folder = os.path.join(self.path, EXTRA_DIR, TFLITE_DIR)
        variants = sorted(f[:-7] for f in os.listdir(folder) if f.endswith(".tflite")) if os.path.isdir(folder) else []
        onnx = [ONNX] if os.path.isfile(os.path.join(self.path, EXTRA_DIR, ONNX_FILE)) else []
        return [SAVED_MODEL] + [f"tflite/{v}" for v in variants] + onnx

    def logits(self, encoded_images, backend: str = SAVED_MODEL, batch_size: int = 100) -> np.ndarray:
        """``[N, classes]`` logits of JPEG/PNG bytes through ``backend``."""
        encoded_images = list(encoded_images)
        if backend == SAVED_MODEL:
            if self._saved_model is None:
                self._saved_model = tf.saved_model.load(self.path)
            return parity.saved_model_logits(self._saved_model, "serving_default", encoded_images, batch_size)
        if backend not in self.backends:
            raise ValueError(f"Unknown backend {backend!r}. This export has: {', '.join(self.backends)}.")
        if backend not in self._runners and backend == ONNX:
            self._runners[backend] = OnnxRunner(os.path.join(self.path, EXTRA_DIR, ONNX_FILE))
        elif backend not in self._runners:
            with open(os.path.join(self.path, EXTRA_DIR, TFLITE_DIR, backend.split("/", 1)[1] + ".tflite"), "rb") as f:
                self._runners[backend] = TFLiteRunner(f.read())
        images = parity.preprocess_encoded(encoded_images, self.preprocessing)
        return self._runners[backend].logits(images, batch_size)

    def evaluate_folder(self, root: str, split: str, backends=None) -> dict:
        """Top-1 accuracy of each backend on every image of ``root/<split>/<class>/``.

        The folder's classes must be the export's (same names); returns
        ``{backend: {"correct", "count", "accuracy", "near_ties"}}`` where ``near_ties`` counts
        images whose two best logits are within 1e-4 (relative), whose class could flip under
        another CPU's float rounding.
        """
        images, labels = image_folder_split(root, split, None, self.class_names)
        if labels is None:
            raise ValueError(f"The classes of {root}/{split} are not this model's {self.class_names}.")
        results = {}
        for backend in backends or self.backends:
            logits = self.logits(images, backend)
            top2 = np.sort(logits, axis=1)[:, -2:]
            gap = (top2[:, 1] - top2[:, 0]) / np.maximum(np.abs(logits).max(axis=1), 1e-12)
            correct = int(np.sum(np.argmax(logits, axis=1) == labels))
            results[backend] = {"correct": correct, "count": len(labels),
                                "accuracy": correct / len(labels), "near_ties": int(np.sum(gap < 1e-4))}
        return results


def _graph_error_reason(error) -> str:
    """The request guard's own words from a TF graph error (``assertion failed: [...]``)."""
    text = str(error)
    match = re.search(r"assertion failed: \[(.*?)\]", text)
    if match:
        return match.group(1)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _top_k(logits: np.ndarray, class_names, k: int) -> list:
    shifted = np.exp(logits - logits.max())
    probabilities = shifted / shifted.sum()
    order = np.argsort(-probabilities)[:k]
    return [(class_names[i], float(probabilities[i])) for i in order]


def main(argv=None) -> int:
    parser = OneLineArgumentParser(prog="python -m keras_preact.export.classify", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="Model directory (newest version) or one version directory.")
    parser.add_argument("images", nargs="*", help=f"Image files ({', '.join(FORMATS)}; the serving limits of "
                        f"keras_preact.data.guard apply: at most {DEFAULT_MAX_PIXELS} pixels).")
    parser.add_argument("--backend", default=SAVED_MODEL, help="saved_model (default), tflite/<variant> or onnx.")
    parser.add_argument("--top_k", type=positive_int, default=3, help="Classes shown per image.")
    parser.add_argument("--eval_dir", help="Report accuracy on an image folder <root>/<split>/<class>/ instead.")
    parser.add_argument("--split", default="test", help="Split of --eval_dir.")
    args = parser.parse_args(argv)
    if not args.images and not args.eval_dir:
        parser.error("give image files, or --eval_dir.")
    missing = [path for path in args.images if not os.path.isfile(path)]
    if missing:
        parser.error(f"argument images: no such file {missing[0]!r}")
    if args.eval_dir is not None and not os.path.isdir(args.eval_dir):
        parser.error(f"argument --eval_dir: no folder {args.eval_dir!r}")
    if not os.path.isdir(args.model):
        parser.error(f"argument model: no folder {args.model!r}")
    try:
        release = Release(args.model)
        if args.eval_dir:
            for backend, row in release.evaluate_folder(args.eval_dir, args.split, [args.backend]).items():
                print(f"{backend}: {row['correct']}/{row['count']} correct "
                      f"({100 * row['accuracy']:.2f}%) on {args.eval_dir}/{args.split}")
            return 0
        encoded = []
        for path in args.images:
            with open(path, "rb") as handle:
                encoded.append(handle.read())
        logits = release.logits(encoded, args.backend)
    except (OSError, ValueError) as error:
        parser.error(str(error).splitlines()[0])
    except Exception as error:  # e.g. the serving signature's request guard rejecting a file
        parser.error(f"could not classify: {_graph_error_reason(error)}")
    for path, row in zip(args.images, logits):
        guesses = ", ".join(f"{name} {100 * p:.1f}%" for name, p in _top_k(row, release.class_names, args.top_k))
        print(f"{path}: {guesses}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
