"""Use an exported model: ``python -m keras_preact.export.classify <model> <image> ...``.

    python -m keras_preact.export.classify saved_models/cifar10_preact_resnet56 cat.jpg ship.png
    python -m keras_preact.export.classify saved_models/cifar10_preact_resnet56 cat.jpg --backend tflite/int8
    python -m keras_preact.export.classify saved_models/cifar10_preact_resnet56 cat.jpg --backend tflite
    python -m keras_preact.export.classify saved_models/<name> cat.jpg --backend onnx   # exported with --onnx
    python -m keras_preact.export.classify saved_models/cifar10_preact_resnet56 --eval_dir <root> --split test

``<model>`` is a model directory of the TF Serving layout (its newest version is used) or one
version directory. The ``saved_model`` backend calls the ``serving_default`` signature on the
encoded file bytes, exactly what TF Serving runs; ``tflite/<variant>`` runs a TFLite file of
the same export with LiteRT, and ``onnx`` its ``model.onnx`` with ONNX Runtime, both on the
export's evaluation preprocessing (``keras_preact.data``). ``--backend tflite`` is the most
precise TFLite file the export holds (float32, else float16, else int8).

Each image is checked on its own first (the serving guard's limits, decoding, preprocessing):
every good image is answered on stdout, each file that is not an image it can read is named on
stderr in one line ``error: <file>: could not classify: <reason>``, and the exit status is 2 if
any was. Usage errors are one line ``error: <flag>: <message>``, exit status 2.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sys

import numpy as np
import tensorflow as tf

from keras_preact.common import COMMAND_ENVIRONMENT, positive_int, program_name
from keras_preact.data import decode_image, preprocess_for_eval
from keras_preact.data.guard import DEFAULT_MAX_PIXELS, DEFAULT_MAX_SIDE, FORMATS
from keras_preact.export.arguments import CommandParser
from keras_preact.export import parity
from keras_preact.export.exporter import (
    EXTRA_DIR,
    PARITY_FILE,
    TFLITE_DIR,
    existing_versions,
    image_folder_split,
)
from keras_preact.export.onnx import ONNX_FILE, OnnxRunner
from keras_preact.export.runtime import assume_frozen_weights
from keras_preact.export.tflite import TFLiteRunner

SAVED_MODEL = "saved_model"
ONNX = "onnx"
TFLITE = "tflite"
TFLITE_PREFERENCE = ("float32", "float16", "int8")  # what --backend tflite picks, first held


@contextlib.contextmanager
def quiet_native_stderr():
    """Send what native code writes to file descriptor 2 (TensorFlow's C++ log, libjpeg's own
    complaints, LiteRT's delegate notice) to /dev/null for the block.

    A file that fails to decode makes TensorFlow log the failed op with its graph node names and
    libjpeg print its state, before the tool's own one-line message; the error still reaches
    Python as an exception, which the tool reports. Python's ``sys.stderr`` is left alone.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


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
    (version 4 of the shipped ResNet-56 among them); both are read.
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

    def resolve_backend(self, backend: str) -> str:
        """``backend`` as one of :attr:`backends` (``"tflite"``: the most precise TFLite file held)."""
        if backend == TFLITE:
            held = [f"{TFLITE}/{v}" for v in TFLITE_PREFERENCE if f"{TFLITE}/{v}" in self.backends]
            if not held:
                raise ValueError(f"This export holds no TFLite file; it has: {', '.join(self.backends)}.")
            return held[0]
        if backend not in self.backends:
            raise ValueError(f"Unknown backend {backend!r}. This export has: {', '.join(self.backends)} "
                             f"(or {TFLITE}: the most precise TFLite file).")
        return backend

    def image_problem(self, encoded: bytes) -> str | None:
        """Why ``encoded`` cannot be classified (the serving guard, decoding, preprocessing), or None.

        The same checks as the serving signature's, with this export's limits, run on one image
        at a time, so one bad file does not fail a batch of good ones.
        """
        try:
            with quiet_native_stderr():
                image = decode_image(tf.constant(encoded), max_pixels=self.export_info.get("max_image_pixels"),
                                     max_side=self.export_info.get("max_image_side", DEFAULT_MAX_SIDE))
                preprocess_for_eval(image, self.preprocessing)
        except tf.errors.OpError as error:
            return _graph_error_reason(error)
        return None

    def logits(self, encoded_images, backend: str = SAVED_MODEL, batch_size: int = 100) -> np.ndarray:
        """``[N, classes]`` logits of JPEG/PNG bytes through ``backend``."""
        encoded_images = list(encoded_images)
        backend = self.resolve_backend(backend)
        if backend == SAVED_MODEL:
            if self._saved_model is None:
                self._saved_model = tf.saved_model.load(self.path)
            return parity.saved_model_logits(self._saved_model, "serving_default", encoded_images, batch_size)
        if backend not in self._runners and backend == ONNX:
            self._runners[backend] = OnnxRunner(os.path.join(self.path, EXTRA_DIR, ONNX_FILE))
        elif backend not in self._runners:
            with open(os.path.join(self.path, EXTRA_DIR, TFLITE_DIR, backend.split("/", 1)[1] + ".tflite"), "rb") as f:
                self._runners[backend] = TFLiteRunner(f.read())
        images = parity.preprocess_encoded(encoded_images, self.preprocessing)
        with quiet_native_stderr():  # LiteRT announces its CPU delegate on stderr at the first run
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
            backend = self.resolve_backend(backend)
            logits = self.logits(images, backend)
            top2 = np.sort(logits, axis=1)[:, -2:]
            gap = (top2[:, 1] - top2[:, 0]) / np.maximum(np.abs(logits).max(axis=1), 1e-12)
            correct = int(np.sum(np.argmax(logits, axis=1) == labels))
            results[backend] = {"correct": correct, "count": len(labels),
                                "accuracy": correct / len(labels), "near_ties": int(np.sum(gap < 1e-4))}
        return results


def _graph_error_reason(error) -> str:
    """The request guard's own words from a TF error (graph: ``assertion failed: [...]``, eager:
    ``Summarized data: b'...'``), else the error's first line."""
    text = getattr(error, "message", None) or str(error)
    match = re.search(r"assertion failed: \[(.*?)\]", text) or re.search(r"Summarized data: b'(.*?)'", text)
    if match:
        return match.group(1)
    # An eager op's error: "{{function_node ...}} Invalid JPEG data, size 300 [Op:ExtractJpegShape] name:"
    text = re.sub(r"\{\{.*?\}\}\s*", "", text)
    text = re.sub(r"\s*\[Op:[^\]]*\].*", "", text, flags=re.S)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else type(error).__name__


def _top_k(logits: np.ndarray, class_names, k: int) -> list:
    shifted = np.exp(logits - logits.max())
    probabilities = shifted / shifted.sum()
    order = np.argsort(-probabilities)[:k]
    return [(class_names[i], float(probabilities[i])) for i in order]


def command() -> int:
    """The command as a process of its own: it only serves, so each convolution may keep its
    filter in oneDNN's layout (``runtime.assume_frozen_weights``); then :func:`main`. Not done in
    ``main``, which may run inside a process that also trains."""
    assume_frozen_weights()
    return main()


def main(argv=None) -> int:
    """The command line; returns 0, or 2 if a file could not be classified (each named on stderr)."""
    parser = CommandParser(prog=program_name("keras_preact.export.classify"), description=__doc__.split("\n")[0],
                           epilog=COMMAND_ENVIRONMENT)
    parser.add_argument("model", help="Model directory (newest version) or one version directory.")
    parser.add_argument("images", nargs="*", help=f"Image files ({', '.join(FORMATS)}; the serving limits of "
                        f"keras_preact.data.guard apply: at most {DEFAULT_MAX_PIXELS} pixels).")
    parser.add_argument("--backend", default=SAVED_MODEL, help="saved_model (default), tflite/<variant>, tflite "
                        "(the most precise TFLite file the export holds: float32, float16, int8) or onnx.")
    parser.add_argument("--top_k", type=positive_int, default=3, help="Classes shown per image.")
    parser.add_argument("--eval_dir", help="Report accuracy on an image folder <root>/<split>/<class>/ instead.")
    parser.add_argument("--split", default="test", help="Split of --eval_dir.")
    args = parser.parse_args(argv)
    if not args.images and not args.eval_dir:
        parser.fail("images", "give image files, or --eval_dir")
    missing = [path for path in args.images if not os.path.isfile(path)]
    if missing:
        parser.fail("images", f"no such file {missing[0]!r}")
    if args.eval_dir is not None and not os.path.isdir(args.eval_dir):
        parser.fail("--eval_dir", f"no folder {args.eval_dir!r}")
    if not os.path.isdir(args.model):
        parser.fail("model", f"no folder {args.model!r}")
    try:
        release = Release(args.model)
    except (OSError, ValueError, KeyError) as error:
        parser.fail("model", str(error).strip().splitlines()[0])
    try:
        backend = release.resolve_backend(args.backend)
    except ValueError as error:
        parser.fail("--backend", str(error))
    if args.eval_dir:
        try:
            rows = release.evaluate_folder(args.eval_dir, args.split, [backend])
        except (OSError, ValueError) as error:
            parser.fail("--eval_dir", str(error).strip().splitlines()[0])
        for name, row in rows.items():
            print(f"{name}: {row['correct']}/{row['count']} correct "
                  f"({100 * row['accuracy']:.2f}%) on {args.eval_dir}/{args.split}")
        return 0
    encoded, problems = {}, {}
    for path in args.images:
        with open(path, "rb") as handle:
            data = handle.read()
        problem = release.image_problem(data)
        if problem is None:
            encoded[path] = data
        else:
            problems[path] = problem
    answers = {}
    if encoded:
        logits = release.logits(list(encoded.values()), backend)
        answers = dict(zip(encoded, logits))
    for path in args.images:  # in the order given; answers on stdout, bad files on stderr
        if path in answers:
            guesses = ", ".join(f"{name} {100 * p:.1f}%"
                                for name, p in _top_k(answers[path], release.class_names, args.top_k))
            print(f"{path}: {guesses}", flush=True)
        else:
            print(f"error: {path}: could not classify: {problems[path]}", file=sys.stderr, flush=True)
    return 2 if problems else 0


if __name__ == "__main__":
    sys.exit(command())
