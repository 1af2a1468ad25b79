"""Test-time augmentation in the export (``keras_preact.export.tta``, ``export_model(tta=...)``,
``--tta``): flip and flip-and-translate wrappers, their ``.keras`` round trips, and every artefact
computing them."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_preact
from keras_preact.data import decode_image, preprocess_for_eval
from keras_preact.export import (
    HorizontalFlip,
    OnnxRunner,
    TFLiteRunner,
    TTA_CHOICES,
    Translate,
    ViewMean,
    export_model,
    flip_averaged,
    tta_averaged,
)
from keras_preact.tta import tta_logits, tta_name, tta_views
from keras_preact.export import __main__ as export_main
from keras_preact.export import model_card
from keras_preact.export.exporter import synthetic_images

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
X = np.random.RandomState(0).normal(size=(6, 32, 32, 3)).astype(np.float32)
# Lossless test images: the bytes signature and Python's preprocessing see the same pixels.
ENCODED = synthetic_images(32, 12, seed=4)


def relative_error(logits, reference) -> float:
    return float(np.abs(np.asarray(logits) - reference).max() / np.abs(reference).max())


def softmax(logits):
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(0)  # module scope: built before the per-test seed is set
    net = keras_preact.build_resnet((1, 1, 1), widths=(8, 16, 16), name="tiny")
    # Trained-like weights and BN statistics (a fresh net is nearly constant over its inputs),
    # so the mirror image gives clearly other logits and folding sees non-trivial statistics.
    rng = np.random.RandomState(3)
    for variable in net.variables:
        value = variable.numpy()
        if variable.path.endswith(("/gamma", "/moving_variance")):
            variable.assign(rng.uniform(0.5, 1.5, value.shape).astype(np.float32))
        elif variable.path.endswith(("/beta", "/moving_mean")):
            variable.assign(rng.normal(0, 0.2, value.shape).astype(np.float32))
        else:
            variable.assign(value + rng.normal(0, 0.1, value.shape).astype(np.float32))
    return net


@pytest.fixture(scope="module")
def exports(model, tmp_path_factory):
    """The same network exported with tta="flip" (every TFLite variant, ONNX) and "none"."""
    base = str(tmp_path_factory.mktemp("saved_models"))
    common = dict(preprocessing="cifar", class_names=CLASSES, eval_images=ENCODED, calibration_images=ENCODED,
                  verbose=False)
    flip = export_model(model, base, name="flip", tta="flip", onnx=True, **common)
    plain = export_model(model, base, name="plain", tflite_variants=(), **common)
    return flip, plain


def report_of(path):
    with open(os.path.join(path, "assets.extra", "parity.json")) as f:
        return json.load(f)


def test_wrapper_is_the_mean_over_the_image_and_its_mirror(model):
    wrapped = flip_averaged(model)
    assert wrapped.name == "tiny_flip_tta" and "tiny" in [layer.name for layer in wrapped.layers]
    assert wrapped.inputs[0].shape == model.inputs[0].shape
    assert wrapped.outputs[0].shape == model.outputs[0].shape
    assert len(wrapped.weights) == len(model.weights)  # shared, not copied
    logits = wrapped(X, training=False).numpy()
    plain = model(X, training=False).numpy()
    mirrored = model(X[:, :, ::-1], training=False).numpy()
    np.testing.assert_allclose(logits, (plain + mirrored) / 2, rtol=0, atol=1e-6 * np.abs(plain).max())
    # Non-symmetric images: the mirror image gives other logits, so the wrapper changes them.
    assert relative_error(logits, plain) > 0.01
    # A left-right symmetric image is its own mirror image: nothing changes.
    symmetric = np.concatenate([X[:, :, :16], X[:, :, :16][:, :, ::-1]], axis=2)
    np.testing.assert_allclose(wrapped(symmetric).numpy(), model(symmetric).numpy(), rtol=0, atol=1e-5)


def test_horizontal_flip_reverses_the_width_axis_only():
    flipped = HorizontalFlip()(X).numpy()
    np.testing.assert_array_equal(flipped, X[:, :, ::-1, :])
    with pytest.raises(ValueError, match="HorizontalFlip expects"):
        HorizontalFlip()(np.zeros((2, 3), np.float32))


def shifted(images, dy, dx):
    """Written out with NumPy: content moved dy rows down and dx columns right, zeros enter."""
    out = np.zeros_like(images)
    height, width = images.shape[1:3]
    out[:, max(dy, 0) : height + min(dy, 0), max(dx, 0) : width + min(dx, 0)] = \
        images[:, max(-dy, 0) : height - max(dy, 0), max(-dx, 0) : width - max(dx, 0)]
    return out


@pytest.mark.parametrize("dy, dx", [(1, 0), (-1, 0), (0, 1), (0, -1), (2, -3), (0, 0)])
def test_translate_moves_the_content_and_fills_with_zeros(dy, dx):
    out = Translate(dy, dx)(X).numpy()
    np.testing.assert_array_equal(out, shifted(X, dy, dx))
    if dy == 1:  # the first row entered empty; the image's last row left the frame
        assert not out[:, 0].any() and np.array_equal(out[:, 1:], X[:, :-1])


def test_translate_refuses_bad_shapes_and_shifts():
    with pytest.raises(ValueError, match="Translate expects"):
        Translate(1, 0)(np.zeros((2, 3), np.float32))
    with pytest.raises(ValueError, match="whole pixels"):
        Translate(0.5, 0)
    with pytest.raises(ValueError, match="out of its frame"):
        Translate(32, 0)(X)
    assert Translate(2, -1).get_config()["dy"] == 2 and Translate.from_config(Translate(2, -1).get_config()).dx == -1


def test_views_of_each_choice():
    assert tta_views("none") == ((0, 0, False),)
    assert tta_views("flip") == ((0, 0, False), (0, 0, True))
    assert len(tta_views("translate")) == 5 and not any(m for _, _, m in tta_views("translate"))
    views = tta_views("flip_translate")
    assert len(views) == len(set(views)) == 10
    assert {(dy, dx) for dy, dx, _ in views} == {(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)}
    assert [tta_name(f, t) for f in (False, True) for t in (False, True)] == [
        "none", "translate", "flip", "flip_translate"]
    with pytest.raises(ValueError, match="Unknown test-time augmentation"):
        tta_views("rotate")


def test_flip_translate_wrapper_is_the_mean_over_ten_views(model, tmp_path):
    wrapped = tta_averaged(model, "flip_translate")
    assert wrapped.name == "tiny_flip_translate_tta" and len(wrapped.weights) == len(model.weights)
    views = [shifted(X, dy, dx) for dy, dx in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))]
    views += [view[:, :, ::-1] for view in views]
    expected = np.mean([model(view, training=False).numpy() for view in views], axis=0)
    logits = wrapped(X, training=False).numpy()
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    assert relative_error(logits, flip_averaged(model)(X, training=False).numpy()) > 1e-3  # not the flip alone
    # The tensor function (the trainer's evaluation) computes the same mean.
    direct = tta_logits(lambda images: model(images, training=False), tf.constant(X), "flip_translate")
    np.testing.assert_allclose(direct.numpy(), logits, rtol=0, atol=1e-5 * np.abs(expected).max())
    path = str(tmp_path / "tiny_flip_translate.keras")
    wrapped.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    np.testing.assert_array_equal(loaded(X, training=False).numpy(), logits)
    with pytest.raises(ValueError, match="no views to average"):
        tta_averaged(model, "none")


def test_view_mean_averages_view_major_blocks_in_float32():
    # [views * batch, classes], view-major: rows 0-1 are view 0 of images 0-1, rows 2-3 view 1...
    stacked = np.arange(3 * 2 * 4, dtype=np.float32).reshape(6, 4)
    expected = stacked.reshape(3, 2, 4).mean(axis=0)
    np.testing.assert_array_equal(ViewMean(3)(stacked).numpy(), expected)
    half = ViewMean(3)(tf.constant(stacked, tf.bfloat16))
    assert half.dtype == tf.float32 and ViewMean(3).compute_output_shape((6, 4)) == (2, 4)
    layer = ViewMean.from_config(ViewMean(10, name="m").get_config())
    assert (layer.views, layer.name, layer.dtype) == (10, "m", "float32")
    for bad in (0, 2.5):
        with pytest.raises(ValueError, match="positive whole number of views"):
            ViewMean(bad)


def test_wrapper_calls_the_network_once_on_the_stacked_views(model):
    wrapped = tta_averaged(model, "flip_translate")
    # One node of the network: the exported graphs hold it once, not once per view.
    assert [layer.name for layer in wrapped.layers].count("tiny") == 1
    calls = [node for nodes in wrapped._nodes_by_depth.values() for node in nodes if node.operation is model]
    assert len(calls) == 1
    assert wrapped.get_layer("views").output.shape == (None, 32, 32, 3)


def test_flip_translate_export_computes_the_ten_view_mean(model, tmp_path):
    path = export_model(model, str(tmp_path), name="shifted", preprocessing="cifar", class_names=CLASSES,
                        tta="flip_translate", tflite_variants=("float32",), eval_images=ENCODED[:6],
                        verbose=False)
    report = report_of(path)
    assert report["export"]["tta"] == "flip_translate" and report["float32_parity_passed"]
    # The shipped version 4 said "flip" here although it computes ten views.
    assert report["reference"].startswith("keras, flip_translate test-time augmentation (10 views")
    ops = report["tflite"]["float32"]["ops"]
    # The network once, on the ten views stacked along the batch (one CONCATENATION of them).
    assert ops["CONV_2D"] == 7 and ops["REVERSE_V2"] == 5 and ops["CONCATENATION"] == 1
    assert report["tflite"]["float32"]["non_builtin_ops"] == []
    images = np.stack([preprocess_for_eval(decode_image(b), "cifar").numpy() for b in ENCODED])
    reference = tta_averaged(model, "flip_translate")(images, training=False).numpy()
    served = tf.saved_model.load(path).signatures["serving_default"](image_bytes=tf.constant(ENCODED))
    assert relative_error(served["logits"].numpy(), reference) <= 1e-4
    with open(os.path.join(path, "assets.extra", "tflite", "float32.tflite"), "rb") as f:
        assert relative_error(TFLiteRunner(f.read())(images)["logits"], reference) <= 1e-4


def test_keras_file_round_trip_in_safe_mode(model, tmp_path):
    wrapped = flip_averaged(model)
    path = str(tmp_path / "tiny_flip.keras")
    wrapped.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
    assert loaded.name == wrapped.name
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in loaded.layers)
    np.testing.assert_array_equal(loaded(X, training=False).numpy(), wrapped(X, training=False).numpy())


def test_mean_is_taken_in_float32_under_a_mixed_policy():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D(dtype="mixed_float16")(inputs)
    half = keras.Model(inputs, keras.layers.Dense(4, dtype="mixed_float16")(x), name="half")
    assert half(X).dtype == "float16"
    wrapped = flip_averaged(half)
    assert wrapped(X).dtype == "float32"
    mixed = keras_preact.build_resnet((1, 1, 1), widths=(8, 16, 16), dtype_policy="mixed_bfloat16")
    assert flip_averaged(mixed)(X).dtype == "float32"


def test_flip_export_signatures_and_files_compute_the_flip_averaged_logits(model, exports):
    flip, _ = exports
    wrapped = flip_averaged(model)
    images = np.stack([preprocess_for_eval(decode_image(b), "cifar").numpy() for b in ENCODED])
    reference = wrapped(images, training=False).numpy()
    loaded = tf.saved_model.load(flip)
    out = loaded.signatures["predict_images"](images=tf.constant(images))
    assert relative_error(out["logits"].numpy(), reference) <= 1e-4
    np.testing.assert_allclose(out["probabilities"].numpy(), softmax(reference), rtol=0, atol=1e-5)
    served = loaded.signatures["serving_default"](image_bytes=tf.constant(ENCODED))
    assert relative_error(served["logits"].numpy(), reference) <= 1e-4
    with open(os.path.join(flip, "assets.extra", "tflite", "float32.tflite"), "rb") as f:
        tflite = TFLiteRunner(f.read())(images)
    assert relative_error(tflite["logits"], reference) <= 1e-4
    np.testing.assert_allclose(tflite["probabilities"], softmax(reference), rtol=0, atol=1e-5)
    onnx_logits = OnnxRunner(os.path.join(flip, "assets.extra", "model.onnx")).logits(images)
    assert relative_error(onnx_logits, reference) <= 1e-4


def test_flip_parity_report_records_tta_and_compares_with_the_wrapper(exports):
    flip, plain = exports
    report = report_of(flip)
    assert report["export"]["tta"] == "flip" and report_of(plain)["export"]["tta"] == "none"
    # The reference is named with the test-time augmentation it computes.
    assert report["reference"].startswith("keras, flip test-time augmentation (2 views")
    assert report_of(plain)["reference"] == "keras"
    assert report["float32_parity_passed"] is True
    rows = report["comparisons"]
    assert set(rows) == {"saved_model/predict_images", "saved_model/serving_default", "keras_folded",
                         "tflite/float32", "tflite/float16", "tflite/int8", "onnx"}
    for name in ("saved_model/predict_images", "saved_model/serving_default", "keras_folded",
                 "tflite/float32", "onnx"):
        assert rows[name]["passed"] and rows[name]["top1_agreement"] == 1.0, name
    # The folding is that of the inner ResNet (its 4 conv -> BN pairs), wrapped afterwards.
    assert report["fold"]["bn_folded_into_conv"] == 4
    # The flip happens in the graph: the flatbuffers reverse the images, the ONNX model too.
    for variant in ("float32", "float16", "int8"):
        ops = report["tflite"][variant]["ops"]
        assert report["tflite"][variant]["non_builtin_ops"] == []
        assert ops["CONV_2D"] == 7 and ops["REVERSE_V2"] == 1, variant  # one network call, two views
    assert report["onnx"]["ops"]["Conv"] == 7 and report["onnx"]["ops"]["ReverseSequence"] == 1


def test_flip_export_answers_differently_from_the_plain_export(exports):
    flip, plain = exports
    flip_out = tf.saved_model.load(flip).signatures["predict_images"](images=tf.constant(X))
    plain_out = tf.saved_model.load(plain).signatures["predict_images"](images=tf.constant(X))
    assert np.abs(flip_out["probabilities"].numpy() - plain_out["probabilities"].numpy()).max() > 1e-3


def test_unfolded_flip_export_wraps_the_network_itself(model, tmp_path):
    """fold=False: TFLite and ONNX are converted from the wrapper of the unfolded network."""
    path = export_model(model, str(tmp_path), name="unfolded", preprocessing="cifar", class_names=CLASSES,
                        tta="flip", fold=False, onnx=True, tflite_variants=("float32",),
                        eval_images=ENCODED[:4], verbose=False)
    report = report_of(path)
    assert report["float32_parity_passed"] and "keras_folded" not in report["comparisons"]
    assert report["onnx"]["from"] == report["export"]["tflite_from"] == "keras_model"
    assert report["onnx"]["ops"]["Conv"] == 7 and report["tflite"]["float32"]["ops"]["REVERSE_V2"] == 1
    reference = flip_averaged(model)(X, training=False).numpy()
    assert relative_error(OnnxRunner(os.path.join(path, "assets.extra", "model.onnx")).logits(X), reference) <= 1e-4


def test_unknown_tta_is_refused_before_anything_is_written(model, tmp_path):
    base = tmp_path / "saved_models"
    base.mkdir()
    with pytest.raises(ValueError, match=r"'mirror'.*'none', 'flip'"):
        export_model(model, str(base), name="tiny", preprocessing="cifar", class_names=CLASSES,
                     tta="mirror", verbose=False)
    assert list(base.iterdir()) == []
    assert TTA_CHOICES == ("none", "flip", "translate", "flip_translate")


def test_command_line_passes_tta_through_and_refuses_other_values(monkeypatch, tmp_path, capsys, model):
    path = str(tmp_path / "tiny.keras")
    model.save(path)
    seen = {}

    def fake_export(net, base_dir, **kwargs):
        seen.update(kwargs)
        return os.path.join(base_dir, "tiny", "1")

    monkeypatch.setattr(export_main, "export_model", fake_export)
    argv = ["--model_file", path, "--preprocessing", "cifar", "--class_names", ",".join(CLASSES),
            "--base_dir", str(tmp_path / "out")]
    assert export_main.main(argv) == 0 and seen["tta"] == "none"
    assert export_main.main([*argv, "--tta", "flip"]) == 0 and seen["tta"] == "flip"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        export_main.main([*argv, "--tta", "mirror"])
    assert exit_.value.code == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "--tta" in error and "mirror" in error


def test_model_card_says_which_tta_the_artefacts_compute(exports):
    flip, plain = exports
    assert "horizontal flip" in model_card.tta_text("flip") and "two forward passes" in model_card.tta_text("flip")
    assert model_card.tta_text("none").startswith("Test-time augmentation: none")
    recipe = {"momentum": 0.9, "schedule": "cosine", "weight_decay": 1e-4, "eval_flip": True}
    assert "exported artefacts compute it too" in model_card.recipe_text(recipe, 0.1, "flip")
    assert "not in the exported signature" in model_card.recipe_text(recipe, 0.1)
    assert "(the exported artefacts compute flip and one-pixel translation instead)" in \
        model_card.recipe_text(recipe, 0.1, "flip_translate")
    both = {**recipe, "eval_translate": True}
    assert "flip and one-pixel translation test-time augmentation (the exported artefacts compute it too)" in \
        model_card.recipe_text(both, 0.1, "flip_translate")
    assert "ten forward passes" in model_card.tta_text("flip_translate")
    # What the card reads: the export's own record, through the release the card measures.
    from keras_preact.export.classify import Release

    assert Release(flip).export_info["tta"] == "flip" and Release(plain).export_info["tta"] == "none"
    card = {
        "name": "flip", "date": "2026-01-01", "notes": "", "eval_dir_description": "",
        "measured": {"version_dir": "1", "preprocessing": "cifar", "class_names": CLASSES, "tta": "flip",
                     "accuracy": {"sample_test": {}}},
        "training": {"command": "x", "steps": 1, "epochs": 1.0, "global_batch": 128, "recipe": recipe,
                     "base_lr": 0.1, "first_logged_step": 1, "wall_time_hours": 0.1,
                     "median_images_per_sec": 1.0, "parameters": 1},
        "hardware": {"cpu": "cpu", "logical_cores": 2, "memory_gb": 1, "gpu": False,
                     "tensorflow": tf.__version__, "keras": keras.__version__},
        "artefact_bytes": {},
    }
    assert model_card.tta_text("flip") in model_card.render(card)
