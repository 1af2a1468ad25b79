"""The parity report: does every exported artefact compute what the Keras model computes?

All artefacts run on the *same* held-out images; the Keras model in eval mode is the reference.
For each artefact the report gives

* ``max_abs_diff``: ``max |logits - keras_logits|`` over all images and classes;
* ``max_rel_diff``: ``max_abs_diff / max |keras_logits|`` (the logit scale), checked against
  ``FLOAT_TOLERANCE`` (1e-4) for the float32 artefacts (SavedModel float and bytes signatures,
  the BN-folded Keras model, TFLite float32 run by LiteRT, ONNX run by ONNX Runtime);
* ``top1_agreement``: fraction of images whose arg-max class equals Keras';
* with labels: ``accuracy`` and ``accuracy_change_points`` (percentage points vs Keras), which
  for ``tflite/int8`` is checked against the target drop of at most ``INT8_MAX_DROP_POINTS``.

``vs_serving_default`` compares ONNX with the SavedModel's ``serving_default`` signature (what
TF Serving answers) the same way, when both were given: a user switching from one to the other
sees this difference, whatever either's difference to Keras.

The bytes signature is compared with Keras applied to the same images decoded and
preprocessed in Python by ``keras_preact.data`` (``decode_image`` + ``preprocess_for_eval``),
so it checks the preprocessing traced into the SavedModel as well as the network.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from keras_preact.data import decode_image, preprocess_for_eval
from keras_preact.export.onnx import OnnxRunner
from keras_preact.export.saved_model import BYTES_INPUT, FLOAT_INPUT, FLOAT_SIGNATURE, SERVING_SIGNATURE
from keras_preact.export.tflite import TFLiteRunner

FLOAT_TOLERANCE = 1e-4
INT8_MAX_DROP_POINTS = 1.0
FLOAT32_ARTEFACTS = (
    f"saved_model/{FLOAT_SIGNATURE}",
    f"saved_model/{SERVING_SIGNATURE}",
    "keras_folded",
    "tflite/float32",
    "onnx",
)


def preprocess_encoded(encoded_images, preprocessing: str, batch_size: int = 256) -> np.ndarray:
    """Decode and preprocess encoded images with ``keras_preact.data``: float32 ``[N, H, W, 3]``."""
    dataset = tf.data.Dataset.from_tensor_slices(tf.constant(list(encoded_images), tf.string))
    dataset = dataset.map(lambda b: preprocess_for_eval(decode_image(b), preprocessing)).batch(batch_size)
    return np.concatenate([batch.numpy() for batch in dataset], axis=0)


def keras_logits(model, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Eval-mode logits of ``model`` in batches."""
    parts = [
        np.asarray(model(images[i : i + batch_size], training=False))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(parts, axis=0).astype(np.float32)


def saved_model_logits(loaded, signature: str, inputs, batch_size: int = 64) -> np.ndarray:
    """Logits from a signature of a ``tf.saved_model.load``-ed export (float or bytes inputs)."""
    fn = loaded.signatures[signature]
    key = BYTES_INPUT if signature == SERVING_SIGNATURE else FLOAT_INPUT
    parts = []
    for i in range(0, len(inputs), batch_size):
        chunk = inputs[i : i + batch_size]
        tensor = tf.constant(list(chunk), tf.string) if key == BYTES_INPUT else tf.constant(chunk)
        parts.append(fn(**{key: tensor})["logits"].numpy())
    return np.concatenate(parts, axis=0)


def compare(reference: np.ndarray, logits: np.ndarray, labels=None) -> dict:
    """Parity numbers of ``logits`` against ``reference`` (see the module docstring)."""
    diff = np.abs(np.asarray(logits, np.float64) - np.asarray(reference, np.float64))
    scale = float(np.max(np.abs(reference))) or 1.0
    row = {
        "max_abs_diff": float(diff.max()),
        "max_rel_diff": float(diff.max() / scale),
        "top1_agreement": float(np.mean(np.argmax(logits, -1) == np.argmax(reference, -1))),
    }
    if labels is not None:
        labels = np.asarray(labels)
        accuracy = float(np.mean(np.argmax(logits, -1) == labels))
        reference_accuracy = float(np.mean(np.argmax(reference, -1) == labels))
        row["accuracy"] = accuracy
        row["accuracy_change_points"] = 100.0 * (accuracy - reference_accuracy)
    return row


def parity_report(
    model,
    *,
    preprocessing: str,
    encoded_images,
    labels=None,
    saved_model_dir: str | None = None,
    folded_model=None,
    tflite_models: dict | None = None,
    onnx_model: bytes | None = None,
    batch_size: int = 64,
    progress=None,
) -> dict:
    """Compare every given artefact with ``model`` on ``encoded_images``; return the report.

    Args:
      model: the Keras model (reference, run with ``training=False``).
      preprocessing: the evaluation preprocessing the export uses.
      encoded_images: JPEG/PNG bytes of the held-out images.
      labels: their integer labels, or None (then no accuracies).
      saved_model_dir: an export written by ``write_saved_model``; both signatures are checked.
      folded_model: the ``fold_batch_norm`` copy of ``model``.
      tflite_models: ``{variant: flatbuffer bytes}``, run with LiteRT.
      onnx_model: a serialized ONNX model (``keras_preact.export.onnx.convert_model``), run
        with ONNX Runtime on the same preprocessed images.
      progress: optional callable ``progress(name)`` called as each artefact is done.
    """
    encoded_images = list(encoded_images)
    if not encoded_images:
        raise ValueError("parity_report needs at least one image.")
    if labels is not None and len(labels) != len(encoded_images):
        raise ValueError(f"{len(labels)} labels for {len(encoded_images)} images.")
    images = preprocess_encoded(encoded_images, preprocessing)
    reference = keras_logits(model, images, batch_size)
    report = {
        "reference": "keras",
        "num_images": len(encoded_images),
        "float_tolerance_rel": FLOAT_TOLERANCE,
        "int8_max_drop_points": INT8_MAX_DROP_POINTS,
        "comparisons": {},
    }
    if labels is not None:
        report["keras_accuracy"] = float(np.mean(np.argmax(reference, -1) == np.asarray(labels)))
    rows = report["comparisons"]
    outputs = {}

    def done(name, logits):
        rows[name] = compare(reference, logits, labels)
        outputs[name] = logits
        if progress is not None:
            progress(name)

    if saved_model_dir is not None:
        loaded = tf.saved_model.load(saved_model_dir)
        done(f"saved_model/{FLOAT_SIGNATURE}", saved_model_logits(loaded, FLOAT_SIGNATURE, images, batch_size))
        done(
            f"saved_model/{SERVING_SIGNATURE}",
            saved_model_logits(loaded, SERVING_SIGNATURE, encoded_images, batch_size),
        )
    if folded_model is not None:
        done("keras_folded", keras_logits(folded_model, images, batch_size))
    for variant, flatbuffer in (tflite_models or {}).items():
        done(f"tflite/{variant}", TFLiteRunner(flatbuffer).logits(images, batch_size))
    if onnx_model is not None:
        done("onnx", OnnxRunner(onnx_model).logits(images, batch_size))

    for name, row in rows.items():
        if name in FLOAT32_ARTEFACTS:
            row["passed"] = row["max_rel_diff"] <= FLOAT_TOLERANCE
        elif name == "tflite/int8" and "accuracy_change_points" in row:
            row["within_int8_target"] = row["accuracy_change_points"] >= -INT8_MAX_DROP_POINTS
    serving = f"saved_model/{SERVING_SIGNATURE}"
    if serving in outputs and "onnx" in outputs:
        row = compare(outputs[serving], outputs["onnx"], labels)
        row["passed"] = row["max_rel_diff"] <= FLOAT_TOLERANCE
        report["vs_serving_default"] = {"onnx": row}
    report["float32_parity_passed"] = all(
        row["passed"] for name, row in rows.items() if name in FLOAT32_ARTEFACTS
    ) and all(row["passed"] for row in report.get("vs_serving_default", {}).values())
    return report


def format_report(report: dict) -> str:
    """The comparisons as a Markdown table."""
    lines = [
        f"Parity vs Keras on {report['num_images']} images"
        + (f" (Keras accuracy {100 * report['keras_accuracy']:.2f}%)" if "keras_accuracy" in report else ""),
        "",
        "| artefact | max abs diff | max rel diff | top-1 agreement | accuracy | change (points) | check |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in report["comparisons"].items():
        check = ""
        if "passed" in row:
            check = "pass" if row["passed"] else "FAIL"
        elif "within_int8_target" in row:
            check = "within 1 pt" if row["within_int8_target"] else "drop > 1 pt"
        accuracy = f"{100 * row['accuracy']:.2f}%" if "accuracy" in row else "-"
        change = f"{row['accuracy_change_points']:+.2f}" if "accuracy_change_points" in row else "-"
        lines.append(
            f"| {name} | {row['max_abs_diff']:.3g} | {row['max_rel_diff']:.3g} | "
            f"{100 * row['top1_agreement']:.2f}% | {accuracy} | {change} | {check} |"
        )
    for name, row in report.get("vs_serving_default", {}).items():
        lines.append(
            f"\n{name} vs saved_model/{SERVING_SIGNATURE}: max abs diff {row['max_abs_diff']:.3g}, "
            f"max rel diff {row['max_rel_diff']:.3g}, top-1 agreement {100 * row['top1_agreement']:.2f}% "
            f"({'pass' if row['passed'] else 'FAIL'})"
        )
    return "\n".join(lines)
