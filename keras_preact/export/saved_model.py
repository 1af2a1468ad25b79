"""The SavedModel for TF Serving: Keras 3 ``ExportArchive`` with two signatures.

``serving_default`` (input ``image_bytes``: ``tf.string [batch]``, JPEG, PNG, GIF or BMP, what
TF Serving makes of a REST ``{"b64": "..."}`` value; an empty batch is refused) checks each
image's header (the shared guard, :mod:`keras_preact.data.guard`), decodes it with ``keras_preact.data.decode_image``
and applies ``keras_preact.data.preprocess_for_eval`` with the export's evaluation preprocessing: the very code
the evaluation ran, traced into the graph.

``predict_images`` (input ``images``: ``float32 [batch, H, W, 3]``, already preprocessed)
skips decoding. Its declared shape is left open so that a wrong shape reaches the graph and is
rejected there by ``tf.ensure_shape`` with ``InvalidArgumentError`` (a fixed shape would be
rejected by the client library or by TF Serving's own feed check, with less clear messages).
Non-finite values are rejected too.

Both return ``logits`` and ``probabilities`` ``[batch, classes]``, ``classes`` (top-k ids,
int32), ``scores`` (their probabilities) and ``class_names`` (their names) ``[batch, k]``.
The archive depends on TensorFlow only: no Keras or keras_preact import is needed to serve it.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from keras_preact.data import decode_image, preprocess_for_eval
from keras_preact.data.preprocess import get_preprocessing
from keras_preact.data import guard

SERVING_SIGNATURE = "serving_default"
FLOAT_SIGNATURE = "predict_images"
BYTES_INPUT = "image_bytes"
FLOAT_INPUT = "images"
DEFAULT_TOP_K = 5


def eval_image_size(preprocessing: str) -> int:
    """Side of the square image ``preprocess_for_eval(..., preprocessing)`` returns."""
    return get_preprocessing(preprocessing).crop


def check_model_for_export(model: keras.Model, preprocessing: str, class_names) -> tuple:
    """Validate the model against the preprocessing and the class names; return ``(size, classes)``."""
    size = eval_image_size(preprocessing)
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ValueError("Only single-input, single-output classifiers can be exported.")
    in_shape = tuple(model.inputs[0].shape)
    if len(in_shape) != 4 or in_shape[-1] != 3:
        raise ValueError(f"The model must take [batch, H, W, 3] images, it takes {in_shape}.")
    for side in in_shape[1:3]:
        if side is not None and side != size:
            raise ValueError(
                f"Preprocessing {preprocessing!r} feeds {size}x{size} images but the model's input is "
                f"{in_shape[1:3]}; pick the preprocessing the model was trained/evaluated with."
            )
    out_shape = tuple(model.outputs[0].shape)
    if len(out_shape) != 2 or out_shape[-1] is None:
        raise ValueError(f"The model must output [batch, classes] logits, it outputs {out_shape}.")
    num_classes = int(out_shape[-1])
    names = [str(n) for n in class_names]
    if len(names) != num_classes:
        raise ValueError(
            f"{len(names)} class names for a model with {num_classes} outputs; give one name "
            "per class, in label order."
        )
    return size, num_classes


def classification_outputs(logits, class_names, top_k: int) -> dict:
    """The signature outputs computed from logits (see the module docstring)."""
    logits = tf.cast(logits, tf.float32)
    probabilities = tf.nn.softmax(logits, axis=-1)
    scores, classes = tf.math.top_k(probabilities, k=top_k)
    names = tf.gather(tf.constant(list(class_names), tf.string), classes)
    return {
        "logits": logits,
        "probabilities": probabilities,
        "classes": classes,
        "scores": scores,
        "class_names": names,
    }


def serving_archive(
    model: keras.Model,
    *,
    preprocessing: str,
    class_names,
    top_k: int = DEFAULT_TOP_K,
    max_image_pixels: int = guard.DEFAULT_MAX_PIXELS,
    max_image_side: int = guard.DEFAULT_MAX_SIDE,
) -> keras.export.ExportArchive:
    """An ``ExportArchive`` of ``model`` with the ``serving_default`` and ``predict_images`` signatures.

    ``model`` must output logits. ``model`` may be the original network or its
    ``fold_batch_norm`` copy; it is called with ``training=False``.
    """
    size, num_classes = check_model_for_export(model, preprocessing, class_names)
    names = [str(n) for n in class_names]
    k = max(1, min(int(top_k), num_classes))
    image_spec = tf.TensorSpec([size, size, 3], tf.float32)

    def classify(images):
        return classification_outputs(model(images, training=False), names, k)

    def decode_and_preprocess(one_image_bytes):
        # decode_image applies the shared image-safety guard (keras_preact.data.guard) first.
        image = decode_image(one_image_bytes, max_pixels=max_image_pixels, max_side=max_image_side)
        return preprocess_for_eval(image, preprocessing)

    def serve_image_bytes(image_bytes):
        not_empty = tf.debugging.assert_positive(
            tf.size(image_bytes), message="Empty request: the batch holds no images."
        )
        with tf.control_dependencies([not_empty]):
            image_bytes = tf.identity(image_bytes)
        images = tf.map_fn(
            decode_and_preprocess, image_bytes, fn_output_signature=image_spec
        )
        return classify(images)

    def serve_images(images):
        images = tf.ensure_shape(images, [None, size, size, 3])
        not_empty = tf.debugging.assert_positive(
            tf.shape(images)[0], message="Empty request: the batch holds no images."
        )
        with tf.control_dependencies([not_empty]):
            images = tf.identity(images)
        images = tf.debugging.assert_all_finite(images, "images contain NaN or Inf values.")
        return classify(images)

    archive = keras.export.ExportArchive()
    # Not archive.track(model): it lists the model's Keras Variables, and the TensorFlow backend
    # saves a Keras Variable and the tf.Variable inside it as two objects, so every weight was
    # written twice (a SavedModel twice the size of the parameters). The endpoints save the
    # tf.Variables they use anyway; listing the same tf.Variables as the archive's
    # ``variables`` (what ``tf.saved_model.load(path).variables`` returns) saves each once.
    for collection in ("variables", "trainable_variables", "non_trainable_variables"):
        archive.add_variable_collection(collection, [_tf_variable(v) for v in getattr(model, collection)])
    archive.add_endpoint(
        name=SERVING_SIGNATURE,
        fn=serve_image_bytes,
        input_signature=[tf.TensorSpec([None], tf.string, name=BYTES_INPUT)],
    )
    archive.add_endpoint(
        name=FLOAT_SIGNATURE,
        fn=serve_images,
        input_signature=[tf.TensorSpec(None, tf.float32, name=FLOAT_INPUT)],
    )
    return archive


def _tf_variable(variable) -> tf.Variable:
    """The tf.Variable holding a Keras Variable's value (the TensorFlow backend's storage)."""
    value = variable.value
    if not isinstance(value, tf.Variable):
        raise TypeError(f"Expected a TensorFlow-backed Keras Variable, got {type(variable)} holding {type(value)}.")
    return value


def write_saved_model(model: keras.Model, path: str, **kwargs) -> str:
    """Write ``serving_archive(model, **kwargs)`` to ``path`` (a new directory); return ``path``."""
    serving_archive(model, **kwargs).write_out(path, verbose=False)
    return path


def saved_variables(path: str) -> dict:
    """``{Keras variable path: value}`` of a SavedModel version folder written by :func:`write_saved_model`.

    The archive tracks the model's own variables, and the TensorFlow backend names each
    ``tf.Variable`` after its Keras path (``stage1_unit1/conv1/kernel``), so the path is the key.
    """
    loaded = tf.saved_model.load(path)
    values = {}
    for variable in loaded.variables:
        name = variable.name.rsplit(":", 1)[0]
        if name in values:
            raise ValueError(f"{path} holds two variables named {name!r}: not an export of one keras_preact model")
        values[name] = variable.numpy()
    return values


def load_saved_model_weights(model: keras.Model, path: str) -> int:
    """Set every variable of ``model`` from the SavedModel at ``path``; return how many.

    Re-exporting a released version (new artefacts, same weights) needs the weights back in a
    Keras model: ``model`` is the same architecture built afresh. Every variable must be found
    under its path with its shape, and the archive must hold nothing else, or nothing is
    assigned and ``ValueError`` says which variables disagree.
    """
    values = saved_variables(path)
    wanted = {v.path: v for v in model.variables}
    missing = sorted(set(wanted) - set(values))
    extra = sorted(set(values) - set(wanted))
    if missing or extra:
        detail = "; ".join(part for part in (
            f"{len(missing)} of the model's variables are not in it (e.g. {', '.join(missing[:3])})" if missing else "",
            f"it holds {len(extra)} the model lacks (e.g. {', '.join(extra[:3])})" if extra else "") if part)
        raise ValueError(f"{path} does not hold the variables of {model.name}: {detail}")
    wrong = [f"{p} {tuple(values[p].shape)} vs {tuple(v.shape)}" for p, v in wanted.items()
             if tuple(values[p].shape) != tuple(v.shape)]
    if wrong:
        raise ValueError(f"{path} holds variables of other shapes than {model.name}'s: {', '.join(wrong[:3])}")
    for variable_path, variable in wanted.items():
        variable.assign(values[variable_path])
    return len(wanted)
