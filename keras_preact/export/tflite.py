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
``SELECT_TF_OPS``), and :func:`check_builtin_ops` verifies the result op by op.
"""

from __future__ import annotations

import collections
import os
import tempfile
import warnings

import keras
import numpy as np
import tensorflow as tf

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
            for image in calibration:
                yield {"images": image[None]}

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    with warnings.catch_warnings():  # int8 calibration runs the deprecated bundled interpreter
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
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


def builtin_op_names() -> frozenset:
    """Names of TFLite's builtin operators (the ``BuiltinOperator`` enum of the schema)."""
    from tensorflow.lite.python import schema_py_generated as schema

    return frozenset(
        name for name, value in vars(schema.BuiltinOperator).items()
        if name.isupper() and isinstance(value, int) and name != "CUSTOM"
    )


def op_counts(tflite_model: bytes) -> dict:
    """How many times each operator occurs in the model, e.g. ``{"CONV_2D": 19, ...}``."""
    interpreter = interpreter_for(tflite_model)
    counts = collections.Counter(op["op_name"] for op in interpreter._get_ops_details())
    return dict(sorted(counts.items()))


def non_builtin_ops(tflite_model: bytes) -> list:
    """Operators that are not TFLite builtins (Flex ops such as ``FlexConv2D``, custom ops)."""
    builtins = builtin_op_names()
    return sorted(name for name in op_counts(tflite_model) if name not in builtins)


def check_builtin_ops(tflite_model: bytes) -> None:
    """Raise ValueError if the model needs anything beyond TFLite builtins (e.g. Flex ops)."""
    extra = non_builtin_ops(tflite_model)
    if extra:
        raise ValueError(
            f"The TFLite model uses non-builtin ops {extra}; it would need the Flex delegate "
            "(SELECT_TF_OPS), which deployment targets often lack."
        )


def interpreter_for(tflite_model: bytes, num_threads: int | None = None):
    """A ``tf.lite.Interpreter`` without its deprecation notice.

    TensorFlow 2.21 points to the separate ``ai_edge_litert`` package; the bundled interpreter
    runs the same kernels and avoids a dependency, so the notice is silenced here.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*tf.lite.Interpreter is deprecated.*")
        return tf.lite.Interpreter(model_content=tflite_model, num_threads=num_threads)


class TFLiteRunner:
    """Run a TFLite classifier on float image batches, resizing its batch dimension as needed."""

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

