"""TFLite conversion (float32, float16, int8) through a SavedModel, and the builtin-ops check.

``tf.lite.TFLiteConverter.from_keras_model`` does not work on Keras 3 models with this
TensorFlow, so the model is first written as a small SavedModel of its own (Keras'
``ExportArchive``, one ``serving_default`` signature: float images ``[batch, H, W, 3]`` ->
``logits``, ``probabilities``) and converted from there. The image decoding of the serving
SavedModel is not part of it: ``DecodeJpeg`` has no TFLite builtin, and on-device apps hand
over pixels anyway. Feed a TFLite model ``preprocess_for_eval`` output, as the float signature.

Variants:
  ``float32``  no quantization.
  ``float16``  weights stored as float16 (half the size), computed in float32 on CPU.
  ``int8``     full integer post-training quantization: weights and activations int8,
               calibrated on a representative set of preprocessed images; the model keeps
               float32 input and output tensors (quantize/dequantize at the edges), so it is a
               drop-in replacement for the float models.

Every variant is converted with ``supported_ops`` limited to TFLite builtins (no Flex /
``SELECT_TF_OPS``), and :func:`check_builtin_ops` verifies the result op by op, reading the
flatbuffer's operator codes with the public TFLite schema package ``tflite`` (no interpreter).

The files are run with LiteRT (``ai_edge_litert.interpreter``, the ``ai-edge-litert``
package), the runtime that replaces TensorFlow's deprecated bundled interpreter.
"""

from __future__ import annotations

import collections
import os
import tempfile

import keras
import numpy as np
import tensorflow as tf
import tflite as tflite_schema  # the TFLite flatbuffer schema (PyPI ``tflite``), public
from ai_edge_litert.interpreter import Interpreter

VARIANTS = ("float32", "float16", "int8")
TFLITE_SIGNATURE = "serving_default"


def check_variant(variant: str) -> None:
    if variant not in VARIANTS:
        raise ValueError(
            f"Unknown TFLite variant {variant!r}. Valid choices: {', '.join(map(repr, VARIANTS))}."
        )


def write_tflite_source(model: keras.Model, path: str, image_size: int) -> str:
    """The SavedModel the converter reads: float images -> logits and probabilities."""

    def predict(images):
        logits = tf.cast(model(images, training=False), tf.float32)
        return {"logits": logits, "probabilities": tf.nn.softmax(logits, axis=-1)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name=TFLITE_SIGNATURE,
        fn=predict,
        input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32, name="images")],
    )
    archive.write_out(path, verbose=False)
    return path


def convert_saved_model(
    saved_model_dir: str, variant: str, representative_images: np.ndarray | None = None
) -> bytes:
    """Convert the ``serving_default`` signature of ``saved_model_dir`` to a TFLite flatbuffer.

    ``representative_images`` (float32 ``[N, H, W, 3]``, preprocessed) is required for
    ``int8``: the activation ranges are calibrated on it, one image at a time.
    """
    check_variant(variant)
    converter = tf.lite.TFLiteConverter.from_saved_model(
        saved_model_dir, signature_keys=[TFLITE_SIGNATURE]
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if variant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "int8":
        if representative_images is None or len(representative_images) == 0:
            raise ValueError("int8 conversion needs representative_images (preprocessed floats).")
        calibration = np.asarray(representative_images, np.float32)

        def representative_dataset():
            # A list of input arrays, not a {"images": ...} dict: for a dict the calibrator
            # builds TensorFlow's deprecated interpreter only to look up the input by name.
            for image in calibration:
                yield [image[None]]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    return converter.convert()


def convert_model(
    model: keras.Model,
    variant: str,
    image_size: int,
    representative_images: np.ndarray | None = None,
) -> bytes:
    """Convert a Keras model to TFLite through a temporary SavedModel (see module docstring)."""
    check_variant(variant)
    if variant == "int8" and (representative_images is None or len(representative_images) == 0):
        raise ValueError("int8 conversion needs representative_images (preprocessed floats).")
    with tempfile.TemporaryDirectory(prefix="keras_preact_tflite_") as tmp:
        source = write_tflite_source(model, os.path.join(tmp, "saved_model"), image_size)
        return convert_saved_model(source, variant, representative_images)


def _operator_names(tflite_model: bytes) -> list:
    """``(name, is_builtin)`` of every operator of every subgraph, read from the flatbuffer.

    A builtin's name is its ``BuiltinOperator`` enum name (``"CONV_2D"``); an operator with
    code ``CUSTOM`` is not a builtin and is named by its custom code (Flex ops are custom ops
    named ``Flex<TF op>``, e.g. ``"FlexMatrixDeterminant"``).
    """
    buffer = bytearray(tflite_model)
    if not tflite_schema.Model.ModelBufferHasIdentifier(buffer, 0):
        raise ValueError("Not a TFLite flatbuffer (its file identifier is not 'TFL3').")
    model = tflite_schema.Model.GetRootAs(buffer, 0)
    codes = []
    for i in range(model.OperatorCodesLength()):
        code = model.OperatorCodes(i)
        # Schema v3a: the operator is max(builtin_code, deprecated_builtin_code), the old
        # int8 field still being set for codes below 127.
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == tflite_schema.BuiltinOperator.CUSTOM:
            custom = code.CustomCode()
            codes.append((custom.decode("utf-8") if custom else "CUSTOM", False))
        else:
            # A code newer than the schema package is still a builtin; only its name is unknown.
            codes.append((tflite_schema.BUILTIN_OPCODE2NAME.get(builtin, f"BUILTIN_{builtin}"), True))
    names = []
    for index in range(model.SubgraphsLength()):
        subgraph = model.Subgraphs(index)
        names.extend(codes[subgraph.Operators(i).OpcodeIndex()] for i in range(subgraph.OperatorsLength()))
    return names


def op_counts(tflite_model: bytes) -> dict:
    """How many times each operator occurs in the model, e.g. ``{"CONV_2D": 19, ...}``."""
    counts = collections.Counter(name for name, _ in _operator_names(tflite_model))
    return dict(sorted(counts.items()))


def non_builtin_ops(tflite_model: bytes) -> list:
    """Operators that are not TFLite builtins (Flex ops such as ``FlexConv2D``, custom ops)."""
    return sorted({name for name, builtin in _operator_names(tflite_model) if not builtin})


def check_builtin_ops(tflite_model: bytes) -> None:
    """Raise ValueError if the model needs anything beyond TFLite builtins (e.g. Flex ops)."""
    extra = non_builtin_ops(tflite_model)
    if extra:
        raise ValueError(
            f"The TFLite model uses non-builtin ops {extra}; it would need the Flex delegate "
            "(SELECT_TF_OPS), which deployment targets often lack."
        )


def interpreter_for(tflite_model: bytes, num_threads: int | None = None) -> Interpreter:
    """A LiteRT interpreter (``ai_edge_litert.interpreter.Interpreter``) of ``tflite_model``."""
    return Interpreter(model_content=tflite_model, num_threads=num_threads)


class TFLiteRunner:
    """Run a TFLite classifier with LiteRT on float image batches (any batch size)."""

    def __init__(self, tflite_model: bytes, num_threads: int | None = None):
        self.interpreter = interpreter_for(tflite_model, num_threads)
        self.runner = self.interpreter.get_signature_runner(TFLITE_SIGNATURE)

    def __call__(self, images: np.ndarray) -> dict:
        """``{"logits": ..., "probabilities": ...}`` for a float32 ``[N, H, W, 3]`` batch."""
        images = np.ascontiguousarray(images, np.float32)
        return {k: np.array(v) for k, v in self.runner(images=images).items()}

    def logits(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Logits of any number of images, ``batch_size`` at a time."""
        parts = [self(images[i : i + batch_size])["logits"] for i in range(0, len(images), batch_size)]
        return np.concatenate(parts, axis=0)

