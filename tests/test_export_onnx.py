"""ONNX export (``keras_preact/export/onnx.py``): Keras' own ``model.export(format="onnx")``, run
with ONNX Runtime, compared with the Keras model and the exported SavedModel."""

import json
import os
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_preact
from keras_preact.data import cifar10_sample_dir
from keras_preact.export import OnnxRunner, convert_to_onnx, export_model, fold_batch_norm
from keras_preact.export import onnx as onnx_lib
from keras_preact.export.classify import Release
from keras_preact.export.exporter import image_folder_split
from helpers import batch_norm_layers

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
X = np.random.RandomState(0).normal(size=(24, 32, 32, 3)).astype(np.float32)


def trained_like(model, seed: int = 3):
    """Non-default BN statistics and weights, so that a wrong BN mode or a lost weight shows."""
    rng = np.random.RandomState(seed)
    model.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in model.get_weights()])
    for layer in batch_norm_layers(model):
        c = layer.gamma.shape[0]
        layer.set_weights([rng.uniform(0.5, 1.5, c), rng.normal(0, 0.2, c), rng.normal(0, 0.2, c), rng.uniform(0.5, 2, c)])
    return model


def relative_error(logits, reference) -> float:
    return float(np.abs(logits - reference).max() / np.abs(reference).max())


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)
    return trained_like(keras_preact.build_resnet((1, 1, 1), widths=(8, 16, 16)))


def test_onnx_matches_keras_with_a_dynamic_batch(model):
    onnx_model = convert_to_onnx(model, 32)
    runner = OnnxRunner(onnx_model)
    # The contract: one float input "images" [batch, 32, 32, 3], one output "logits".
    assert runner.input_name == "images" and runner.output_names == ["logits"]
    shape = runner.session.get_inputs()[0].shape
    assert shape[1:] == [32, 32, 3] and not isinstance(shape[0], int)  # batch left open
    reference = model(X, training=False).numpy()
    logits = runner.logits(X, batch_size=10)  # batches of 10, 10 and 4
    assert logits.shape == reference.shape == (24, 10)
    assert relative_error(logits, reference) <= 1e-4
    one = runner(X[:1])["logits"]
    np.testing.assert_allclose(one, logits[:1], rtol=0, atol=1e-4 * np.abs(reference).max())
    # Eval-mode BN with the moving statistics: a training-mode graph would differ by far more.
    assert relative_error(model(X, training=True).numpy(), reference) > 0.05
    counts = onnx_lib.op_counts(onnx_model)
    assert counts["Conv"] == 7  # stem + 2 per unit x 3 units (zero-pad shortcuts: no conv)
    assert counts.get("Loop", 0) == 0


def test_folded_model_exports_the_same_function(model):
    reference = model(X, training=False).numpy()
    folded = OnnxRunner(convert_to_onnx(fold_batch_norm(model), 32)).logits(X)
    assert relative_error(folded, reference) <= 1e-4


def test_stacked_stages_are_unstacked_before_export():
    """A StackedStage (a tf.while_loop over stacked weights, which Keras' exporter cannot track:
    ``model.export`` fails on it with Keras 3.15) exports as the equivalent units."""
    keras.utils.set_random_seed(1)
    stacked = trained_like(keras_preact.build_resnet((3, 2, 2), widths=(8, 16, 16), stacked_stages=True))
    assert stacked.architecture.stacked_stages
    onnx_model = convert_to_onnx(stacked, 32)
    counts = onnx_lib.op_counts(onnx_model)
    assert counts["Conv"] == 1 + 2 * 7 and "Loop" not in counts
    reference = stacked(X, training=False).numpy()
    assert relative_error(OnnxRunner(onnx_model).logits(X), reference) <= 1e-4


def test_missing_onnx_packages_give_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ImportError
    with pytest.raises(ImportError, match=r"onnxruntime.*pip install \"keras_preact\[onnx\]\""):
        onnx_lib.require()
    with pytest.raises(ImportError, match=r"keras_preact\[onnx\]"):
        OnnxRunner(b"")


def test_export_model_writes_model_onnx_checked_against_keras_and_the_saved_model(model, tmp_path):
    base = str(tmp_path / "saved_models")
    path = export_model(model, base, name="tiny", preprocessing="cifar", class_names=CLASSES,
                        tflite_variants=(), onnx=True, eval_limit=40, verbose=False)
    onnx_file = os.path.join(path, "assets.extra", "model.onnx")
    assert os.path.isfile(onnx_file)
    with open(os.path.join(path, "assets.extra", "parity.json")) as f:
        report = json.load(f)
    row = report["comparisons"]["onnx"]
    assert row["passed"] and row["max_rel_diff"] <= 1e-4 and row["top1_agreement"] == 1.0
    assert report["num_images"] == 40 and "accuracy" in row  # the bundled sample, with labels
    assert report["float32_parity_passed"]
    info = report["onnx"]
    assert info["file"] == "assets.extra/model.onnx" and info["bytes"] == os.path.getsize(onnx_file)
    assert info["from"] == "bn_folded_model" and info["opset"] == onnx_lib.OPSET
    assert (info["input"], info["output"]) == ("images", "logits")

    # The file on disk against the SavedModel's float signature on the same preprocessed images.
    encoded, _ = image_folder_split(cifar10_sample_dir(), "test", 40)
    release = Release(os.path.join(base, "tiny"))
    assert release.backends == ["saved_model", "onnx"]
    saved = release.logits(encoded)  # serving_default on the encoded bytes
    onnx_logits = release.logits(encoded, "onnx")  # keras_preact.data preprocessing + ONNX Runtime
    assert relative_error(onnx_logits, saved) <= 1e-4
    assert np.array_equal(onnx_logits.argmax(1), saved.argmax(1))
    images = tf.constant(np.random.RandomState(2).normal(size=(3, 32, 32, 3)).astype(np.float32))
    float_logits = tf.saved_model.load(path).signatures["predict_images"](images=images)["logits"].numpy()
    assert relative_error(OnnxRunner(onnx_file).logits(images.numpy()), float_logits) <= 1e-4


def test_export_model_without_onnx_packages_writes_nothing(model, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tf2onnx", None)
    base = tmp_path / "saved_models"
    with pytest.raises(ImportError, match="tf2onnx"):
        export_model(model, str(base), name="tiny", preprocessing="cifar", class_names=CLASSES,
                     tflite_variants=(), onnx=True, verbose=False)
    assert not base.exists() or not any(base.rglob("*"))
