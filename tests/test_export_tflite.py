"""TFLite conversion through the SavedModel: parity with Keras, builtin ops only, variants."""

import numpy as np
import pytest
import tensorflow as tf

import keras_preact
from keras_preact.export import TFLiteRunner, check_builtin_ops, convert_to_tflite, fold_batch_norm, op_counts
from keras_preact.export.tflite import non_builtin_ops

X = np.random.RandomState(0).normal(size=(24, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def model():
    m = keras_preact.build_resnet((1, 1, 1), widths=(8, 16, 16))
    # Trained-like BN statistics, so folding and quantization see non-trivial values.
    rng = np.random.RandomState(3)
    for layer in m._flatten_layers(include_self=False, recursive=True):
        if layer.__class__.__name__ == "BatchNormalization":
            c = layer.gamma.shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.2, c), rng.uniform(0.5, 2, c)])
    return m


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
    assert np.abs(TFLiteRunner(float16).logits(X) - reference).max() <= 1e-2 * scale
    int8_logits = TFLiteRunner(int8).logits(X)
    assert np.abs(int8_logits - reference).max() <= 0.2 * scale
    assert np.abs(int8_logits - reference).max() > 1e-5 * scale  # it really is quantized


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
