"""ONNX export through Keras' own ``model.export(format="onnx")``, and ONNX Runtime to run it.

The ONNX model is the network alone, for ONNX Runtime, TensorRT, Triton and the like:

* input ``images``: float32 ``[batch, H, W, 3]``, **already preprocessed** (the preprocessing's
  ``keras_preact.data.preprocess_for_eval`` output: resized, centre-cropped and normalised), the
  same contract as the TFLite files and the SavedModel's ``predict_images`` signature. Image
  decoding is not part of it;
* output ``logits``: float32 ``[batch, classes]`` (apply a softmax for probabilities).

Keras converts with tf2onnx (``keras.Model.export``); this module only fixes the input
signature (a named, batch-dynamic float input), the opset (:data:`OPSET`), expands stacked
stages first (``keras_preact.model.unstack``: a ``StackedStage`` runs a ``tf.while_loop`` over
weights Keras' exporter cannot track) and names the output ``logits``.

It needs the optional dependencies ``pip install "keras_preact[onnx]"`` (tf2onnx, onnx,
onnxruntime, pinned in ``pyproject.toml``); without them :func:`require` raises an
``ImportError`` that says so. They are imported when first used, so the rest of the exporter
works without them.
"""

from __future__ import annotations

import collections
import importlib
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf

from keras_preact.model import ResNet, unstack

ONNX_FILE = "model.onnx"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"
# tf2onnx's own default, pinned here so that a converter upgrade does not change the file:
# opset 15 is supported by every current ONNX Runtime, TensorRT and Triton.
OPSET = 15
EXTRA = "onnx"
REQUIRED_MODULES = ("tf2onnx", "onnx", "onnxruntime")


def require(*modules: str) -> dict:
    """Import the ONNX dependencies (default: all of them); ``{name: module}``.

    Raises:
      ImportError: naming the missing packages and the extra that installs them.
    """
    loaded, missing = {}, []
    for name in modules or REQUIRED_MODULES:
        try:
            loaded[name] = importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(
            f"ONNX export needs {', '.join(missing)}, which are not installed. Install the "
            f"pinned versions with: pip install \"keras_preact[{EXTRA}]\""
        )
    return loaded


def exportable(model: keras.Model) -> keras.Model:
    """``model`` with its stacked stages expanded into residual units (other models as they are)."""
    return unstack(model) if isinstance(model, ResNet) else model


def _rename_output(graph, old: str, new: str) -> None:
    for node in graph.node:
        node.output[:] = [new if name == old else name for name in node.output]
        node.input[:] = [new if name == old else name for name in node.input]
    for output in graph.output:
        if output.name == old:
            output.name = new


def convert_model(model: keras.Model, image_size: int) -> bytes:
    """The serialized ONNX model of ``model`` (see the module docstring for its contract).

    ``model`` must take ``[batch, image_size, image_size, 3]`` images and return logits; it
    may be a ``keras_preact`` ResNet (stacked stages are expanded) or any single-output Keras
    model, e.g. its ``fold_batch_norm`` copy.
    """
    onnx = require()["onnx"]
    net = exportable(model)
    if len(net.outputs) != 1:
        raise ValueError("Only single-output classifiers can be exported to ONNX.")
    signature = [tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name=INPUT_NAME)]
    with tempfile.TemporaryDirectory(prefix="keras_preact_onnx_") as tmp:
        path = os.path.join(tmp, ONNX_FILE)
        net.export(path, format="onnx", input_signature=signature, opset_version=OPSET, verbose=False)
        proto = onnx.load(path)
    graph = proto.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ValueError(
            f"Expected one input and one output in the ONNX graph, got {len(graph.input)} and "
            f"{len(graph.output)}."
        )
    if graph.input[0].name != INPUT_NAME:
        raise ValueError(f"The ONNX input is named {graph.input[0].name!r}, expected {INPUT_NAME!r}.")
    _rename_output(graph, graph.output[0].name, OUTPUT_NAME)
    onnx.checker.check_model(proto, full_check=True)
    return proto.SerializeToString()


def op_counts(onnx_model: bytes) -> dict:
    """How many nodes of each ONNX operator type the model has, e.g. ``{"Conv": 7, ...}``."""
    onnx = require("onnx")["onnx"]
    proto = onnx.load_from_string(onnx_model)
    return dict(sorted(collections.Counter(node.op_type for node in proto.graph.node).items()))


class OnnxRunner:
    """Run an ONNX classifier with ONNX Runtime (CPU) on preprocessed float image batches."""

    def __init__(self, onnx_model, num_threads: int | None = None):
        """``onnx_model``: the serialized model (bytes) or the path of a ``.onnx`` file."""
        ort = require("onnxruntime")["onnxruntime"]
        options = ort.SessionOptions()
        if num_threads:
            options.intra_op_num_threads = int(num_threads)
            options.inter_op_num_threads = 1
        if isinstance(onnx_model, (str, os.PathLike)):
            onnx_model = os.fspath(onnx_model)
        self.session = ort.InferenceSession(onnx_model, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]

    def __call__(self, images: np.ndarray) -> dict:
        """``{"logits": ...}`` for a float32 ``[N, H, W, 3]`` batch."""
        images = np.ascontiguousarray(images, np.float32)
        values = self.session.run(self.output_names, {self.input_name: images})
        return dict(zip(self.output_names, values))

    def logits(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Logits of any number of images, ``batch_size`` at a time."""
        parts = [self(images[i : i + batch_size])[OUTPUT_NAME] for i in range(0, len(images), batch_size)]
        return np.concatenate(parts, axis=0)
