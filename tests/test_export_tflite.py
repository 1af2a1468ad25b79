"""TFLite conversion through the SavedModel: parity with Keras (run by LiteRT), builtin ops only
(read from the flatbuffer), variants, and no deprecated TensorFlow interpreter on the way."""

import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_preact
from ai_edge_litert.interpreter import Interpreter as LiteRTInterpreter

from keras_preact.export import TFLiteRunner, check_builtin_ops, convert_to_tflite, fold_batch_norm, op_counts
from keras_preact.export.tflite import interpreter_for, non_builtin_ops
from helpers import batch_norm_layers

X = np.random.RandomState(0).normal(size=(24, 32, 32, 3)).astype(np.float32)


def randomise_batch_norm(model, seed: int) -> int:
    """Trained-like gamma, beta and moving statistics in every BN layer; returns how many."""
    rng = np.random.RandomState(seed)
    layers = batch_norm_layers(model)
    for layer in layers:
        c = layer.gamma.shape[0]
        layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.2, c), rng.uniform(0.5, 2, c)])
    return len(layers)


def image_dependent(logits):
    """Logits minus their mean over the images: what tells one image from another.

    An untrained net gives every image nearly the same logits (here the image-dependent part is
    under a tenth of the logit scale), so a bound relative to the logit scale alone would accept
    a quantized model that outputs a constant.
    """
    return logits - logits.mean(axis=0)


def correlation(a, b) -> float:
    return float(np.corrcoef(np.ravel(a), np.ravel(b))[0, 1])


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)  # module scope: built before the per-test seed is set
    m = keras_preact.build_resnet((1, 1, 1), widths=(8, 16, 16))
    # Trained-like BN statistics, so folding and quantization see non-trivial values. The
    # default build uses keras_preact.norm.FusedBatchNormalization (a BatchNormalization
    # subclass): every BN, of whatever class, must be randomised.
    assert any(type(layer) is not keras.layers.BatchNormalization for layer in batch_norm_layers(m))
    randomised = randomise_batch_norm(m, seed=3)
    statistics = [v for v in m.variables if v.path.endswith(("/moving_mean", "/moving_variance"))]
    assert randomised == len(statistics) // 2 == 7  # stem, 2 per unit x 3 units - 1st preact, final
    for variable in statistics:
        default = 0.0 if variable.path.endswith("mean") else 1.0
        assert np.abs(variable.numpy() - default).min() > 0, variable.path
    return m


def test_randomised_statistics_change_what_the_model_computes(model):
    """The checks below have teeth: default BN statistics would give other logits."""
    fresh = keras_preact.build_resnet((1, 1, 1), widths=(8, 16, 16))
    fresh.set_weights(model.get_weights())
    for layer in batch_norm_layers(fresh):
        c = layer.gamma.shape[0]
        layer.set_weights([np.ones(c), np.zeros(c), np.zeros(c), np.ones(c)])
    reference = model(X, training=False).numpy()
    assert np.abs(fresh(X, training=False).numpy() - reference).max() > 0.1 * np.abs(reference).max()


def test_float32_matches_keras_and_uses_builtin_ops_only(model):
    flatbuffer = convert_to_tflite(model, "float32", 32)
    check_builtin_ops(flatbuffer)
    assert non_builtin_ops(flatbuffer) == []
    reference = model(X, training=False).numpy()
    logits = TFLiteRunner(flatbuffer).logits(X, batch_size=10)  # also exercises batch resizing
    assert logits.shape == reference.shape
    assert np.abs(logits - reference).max() <= 1e-4 * np.abs(reference).max()


def test_folded_model_converts_to_the_same_ops(model):
    """The converter folds conv->BN itself; our folding must not add or lose ops."""
    plain = op_counts(convert_to_tflite(model, "float32", 32))
    folded_flatbuffer = convert_to_tflite(fold_batch_norm(model), "float32", 32)
    assert op_counts(folded_flatbuffer) == plain
    reference = model(X, training=False).numpy()
    logits = TFLiteRunner(folded_flatbuffer).logits(X)
    assert np.abs(logits - reference).max() <= 1e-4 * np.abs(reference).max()


@pytest.mark.slow
def test_float16_and_int8_variants(model):
    reference = model(X, training=False).numpy()
    float16 = convert_to_tflite(model, "float16", 32)
    int8 = convert_to_tflite(model, "int8", 32, representative_images=X)
    for flatbuffer in (float16, int8):
        check_builtin_ops(flatbuffer)
    assert "DEQUANTIZE" in op_counts(float16)  # float16 weights, dequantized at load
    assert "QUANTIZE" in op_counts(int8)  # float input quantized once, then integer kernels
    float32_size = len(convert_to_tflite(model, "float32", 32))
    assert len(float16) < 0.75 * float32_size and len(int8) < len(float16)
    scale = np.abs(reference).max()
    varying = image_dependent(reference)
    spread = np.abs(varying).max()
    assert spread > 0.03 * scale  # the images do get different logits
    # Measured: float16 within 5e-4 of the logit scale; int8 within 0.02 of it and 0.1 of the
    # image-dependent spread, correlation 0.993 with float32 on the image-dependent part.
    # Bounds keep a margin of 2.5x or more.
    float16_logits = TFLiteRunner(float16).logits(X)
    assert np.abs(float16_logits - reference).max() <= 2e-3 * scale
    assert correlation(image_dependent(float16_logits), varying) > 0.9999
    int8_logits = TFLiteRunner(int8).logits(X)
    assert np.abs(int8_logits - reference).max() <= 0.06 * scale
    assert np.abs(int8_logits - reference).max() > 1e-5 * scale  # it really is quantized
    assert np.abs(image_dependent(int8_logits) - varying).max() <= 0.3 * spread
    assert correlation(image_dependent(int8_logits), varying) > 0.97


def test_int8_needs_representative_images_and_variants_are_checked(model):
    with pytest.raises(ValueError, match="representative_images"):
        convert_to_tflite(model, "int8", 32)
    with pytest.raises(ValueError, match="Valid choices"):
        convert_to_tflite(model, "bfloat16", 32)


def test_builtin_check_catches_flex_ops():
    @tf.function(input_signature=[tf.TensorSpec([4, 4], tf.float32)])
    def determinant(x):
        return {"det": tf.linalg.det(x)}

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [determinant.get_concrete_function()], determinant
    )
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    flex_model = converter.convert()
    assert non_builtin_ops(flex_model) == ["FlexMatrixDeterminant"]
    with pytest.raises(ValueError, match="Flex"):
        check_builtin_ops(flex_model)


def test_litert_runs_the_models_and_nothing_deprecated_is_used(model, monkeypatch):
    """Conversion (int8 calibration included), the op check and running never build TensorFlow's
    deprecated interpreter, set no warning filter, and raise no deprecation warning."""

    def forbidden(*args, **kwargs):
        raise AssertionError("TensorFlow's deprecated TFLite interpreter was constructed")

    filters = []
    monkeypatch.setattr(tf.lite.Interpreter, "__init__", forbidden)
    monkeypatch.setattr(warnings, "filterwarnings", lambda *a, **k: filters.append((a, k)))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        int8 = convert_to_tflite(model, "int8", 32, representative_images=X[:4])
        check_builtin_ops(int8)
        runner = TFLiteRunner(int8, num_threads=1)
        runner.logits(X[:3])
    assert filters == []
    deprecations = [str(w.message) for w in caught
                    if issubclass(w.category, (DeprecationWarning, PendingDeprecationWarning))
                    or "deprecated" in str(w.message).lower()]
    assert deprecations == []
    assert isinstance(runner.interpreter, LiteRTInterpreter)
    assert type(runner.interpreter).__module__ == "ai_edge_litert.interpreter"


def test_op_counts_are_read_from_the_flatbuffer(model):
    """One CONV_2D per Conv2D layer of the network, one FULLY_CONNECTED for the head."""
    flatbuffer = convert_to_tflite(model, "float32", 32)
    counts = op_counts(flatbuffer)
    convs = sum(isinstance(layer, keras.layers.Conv2D) for layer in fold_batch_norm(model).layers)
    assert convs == 7 and counts["CONV_2D"] == convs
    assert counts["FULLY_CONNECTED"] == 1 and counts["SOFTMAX"] == 1
    assert all(name.isupper() for name in counts)  # builtin enum names, no custom ops
    # The same model file runs: the counted graph is the one LiteRT executes.
    assert interpreter_for(flatbuffer).get_signature_list() == {
        "serving_default": {"inputs": ["images"], "outputs": ["logits", "probabilities"]}
    }
    with pytest.raises(ValueError, match="Not a TFLite flatbuffer"):
        op_counts(b"\x00" * 64)
