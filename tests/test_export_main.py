"""``python -m keras_preact.export`` (``keras_preact/export/__main__.py``): from a .keras file or
a training checkpoint; model names resolved by the registry; bad flags named in the error."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import trainer_runs
import keras_preact
from keras_preact.data import write_label_map
from keras_preact.export.__main__ import main
from keras_preact.training.checkpoints import RunCheckpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FAST = ["--preprocessing", "cifar", "--tflite", "none", "--eval_limit", "20"]


def trained_like(model):
    """Non-default weights, so a restore that silently kept fresh weights would be caught."""
    rng = np.random.RandomState(5)
    model.set_weights([w + rng.normal(0, 0.05, w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


def saved_predictions(version_dir, images):
    loaded = tf.saved_model.load(version_dir)
    return loaded.signatures["predict_images"](images=tf.constant(images))["logits"].numpy()


def test_from_keras_file_with_labels_next_to_it(tmp_path, capsys):
    model = trained_like(keras_preact.build_resnet((1, 1, 1), widths=(8, 16, 16)))
    path = str(tmp_path / "run" / "tiny.keras")
    os.makedirs(os.path.dirname(path))
    model.save(path)
    write_label_map(CLASSES, os.path.dirname(path))
    base = str(tmp_path / "saved_models")
    assert main(["--model_file", path, "--base_dir", base, *FAST]) == 0
    version_dir = os.path.join(base, "tiny", "1")
    assert capsys.readouterr().out.strip() == version_dir
    x = np.random.RandomState(0).normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(saved_predictions(version_dir, x), model(x, training=False).numpy(), atol=1e-5)
    with open(os.path.join(version_dir, "assets.extra", "parity.json")) as f:
        report = json.load(f)
    assert report["float32_parity_passed"] and report["export"]["class_names"] == CLASSES


def _training_run(run_dir, model):
    """A run directory as the trainer leaves it: checkpoints/ (model + optimizer) and labels.txt."""
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    # The trainer's own checkpoint writer (variables keyed by their Keras paths).
    RunCheckpoints(run_dir, model=model, optimizer=optimizer, strategy=tf.distribute.get_strategy()).save(1)
    write_label_map(CLASSES, run_dir)


def test_from_training_checkpoint(tmp_path, capsys):
    run_dir = str(tmp_path / "run")
    model = trained_like(keras_preact.cifar_resnet(8, order="original"))
    _training_run(run_dir, model)
    base = str(tmp_path / "saved_models")
    # An alias of the registry; without --name the export takes the canonical name.
    args = ["--checkpoint", run_dir, "--model", "ResNet-8", "--model_kwargs", '{"order": "original"}',
            "--base_dir", base, *FAST]
    assert main(args) == 0
    version_dir = os.path.join(base, "resnet8", "1")
    # Readable by a TF Serving process running as another user (the staging dir was 0700).
    assert os.stat(version_dir).st_mode & 0o777 == 0o755
    x = np.random.RandomState(1).normal(size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(saved_predictions(version_dir, x), model(x, training=False).numpy(), atol=1e-5)
    # Restoring into the wrong architecture is an argument error, not a silent fresh model.
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        main(["--checkpoint", run_dir, "--model", "resnet8", "--base_dir", base, "--name", "bad", *FAST])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --checkpoint: ") and "wrong --model" in err
    assert not os.path.exists(os.path.join(base, "bad"))


def test_from_an_earlier_export_same_weights_new_version(tmp_path, capsys):
    """``--saved_model``: a released version's weights, read back by path, exported again."""
    run_dir = str(tmp_path / "run")
    model = trained_like(keras_preact.cifar_resnet(8))
    _training_run(run_dir, model)
    base = str(tmp_path / "saved_models")
    assert main(["--checkpoint", run_dir, "--model", "resnet8", "--base_dir", base, *FAST]) == 0
    first = os.path.join(base, "resnet8", "1")
    capsys.readouterr()
    # No --class_names: they come from the export's assets.extra/labels.txt.
    assert main(["--saved_model", first, "--model", "resnet8", "--base_dir", base, "--tta", "flip", *FAST]) == 0
    second = os.path.join(base, "resnet8", "2")
    assert capsys.readouterr().out.strip() == second
    x = np.random.RandomState(2).normal(size=(2, 32, 32, 3)).astype(np.float32)
    flipped = (model(x, training=False).numpy() + model(x[:, :, ::-1], training=False).numpy()) / 2
    np.testing.assert_allclose(saved_predictions(second, x), flipped, atol=1e-5)
    with open(os.path.join(second, "assets.extra", "parity.json")) as f:
        report = json.load(f)
    assert report["export"]["class_names"] == CLASSES and report["export"]["tta"] == "flip"
    # Another architecture's variables are refused in one line, before anything is written.
    with pytest.raises(SystemExit) as exit_info:
        main(["--saved_model", first, "--model", "resnet14", "--base_dir", base, *FAST])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("error: --saved_model:") and "wrong --model" in error
    assert sorted(os.listdir(os.path.join(base, "resnet8"))) == ["1", "2"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """A .keras file without labels.txt next to it, and a (fake) checkpoint prefix."""
    root = tmp_path_factory.mktemp("sources")
    keras_preact.build_resnet((1, 1, 1), widths=(8, 16, 16)).save(str(root / "m.keras"))
    (root / "run").mkdir()
    (root / "run" / "ckpt-1.index").write_bytes(b"")
    return root


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--checkpoint", "nowhere", *FAST], "error: --model: --checkpoint needs --model"),
        (["--model_file", "missing.keras", "--class_names", "a,b", *FAST], "error: --model_file: no model file"),
        (["--model_file", "{src}/m.keras", *FAST], "error: --class_names: no class names"),
        (["--checkpoint", "{tmp}/nowhere", "--model", "resnet8", *FAST],
         "error: --checkpoint: no such file or folder"),
        (["--checkpoint", "{src}", "--model", "resnet8", *FAST], "error: --checkpoint: no checkpoint at"),
        (["--saved_model", "{src}", "--model", "resnet8", *FAST], "error: --saved_model: no SavedModel at"),
        (["--saved_model", "{src}", *FAST], "error: --model: --saved_model needs --model"),
        (["--saved_model", "{src}", "--model", "resnet8", "--weights", "averaged", *FAST],
         "error: --weights: chooses among a --checkpoint's weights; --saved_model holds one set"),
        (["--model_file", "m.keras", "--class_names", "a", "--preprocessing", "cifar", "--tflite", "int4"],
         "error: --tflite: unknown variant(s) int4"),
        (["--model_file", "m.keras", "--preprocessing", "jpeg"], "error: --preprocessing: invalid choice"),
        (["--model_file", "m.keras", "--recipe", "cifar"], "error: --recipe: renamed --preprocessing"),
        (["--model_file", "m.keras", "--prepocessing", "cifar"],
         "error: --prepocessing: unknown flag (did you mean --preprocessing?)"),
        (["--model_fiel", "m.keras", *FAST], "error: --model_fiel: unknown flag (did you mean --model_file"),
        (["--model_file", "m.keras", "--preprocessing=cifar", "--onx"], "error: --onx: unknown flag (did you mean --onnx"),
        (["--checkpoint", "run", "--class_names", "a,b", "--model", "vgg16", *FAST],
         "error: --model: Unknown model 'vgg16'"),
        (["--checkpoint", "run", "--class_names", "a,b", "--model", "resnet21", *FAST],
         ("error: --model: ", "Impossible depth 21")),
        (["--checkpoint", "run", "--class_names", "a,b", "--model", "resnet8", "--model_kwargs", "notjson", *FAST],
         "error: --model_kwargs: not valid JSON"),
        (["--checkpoint", "run", "--class_names", "a,b", "--model", "resnet8", "--model_kwargs", "[1]", *FAST],
         "error: --model_kwargs: must be a JSON object"),
        (["--checkpoint", "run", "--class_names", "a,b", "--model", "resnet8", "--model_kwargs",
          '{"unit": "triple"}', *FAST], "error: --model_kwargs: Unknown unit kind 'triple'"),
        (["--checkpoint", "{src}/run/ckpt-1", "--class_names", "a,b", "--model", "resnet8", "--model_kwargs",
          '{"order": "sideways"}', *FAST], "error: --model_kwargs: Unknown order 'sideways'"),
        (["--checkpoint", "{src}/run/ckpt-1", "--class_names", "a,b", "--model", "resnet8", "--model_kwargs",
          '{"depth": 3}', *FAST], ("error: --model_kwargs: ", "'depth'")),
    ],
    ids=["checkpoint-without-model", "missing-file", "no-class-names", "missing-checkpoint",
         "folder-without-checkpoint", "folder-without-saved-model", "saved-model-without-model", "weights-without-checkpoint", "bad-variant", "bad-preprocessing", "old-recipe-flag", "misspelled-flag",
         "misspelled-source", "misspelled-switch", "unknown-model", "impossible-depth", "kwargs-not-json",
         "kwargs-not-object", "kwargs-bad-unit", "kwargs-bad-order", "kwargs-unknown-argument"],
)
def test_bad_arguments_exit_2_with_one_line_naming_the_flag(argv, message, capsys, tmp_path, monkeypatch, sources):
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{src}", str(sources)).replace("{tmp}", str(tmp_path)) for a in argv]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    for fragment in (message,) if isinstance(message, str) else message:
        assert fragment in err
    assert not os.listdir(tmp_path)  # nothing exported


def test_missing_checkpoint_in_a_fresh_process_is_one_line_without_tensorflow_log(tmp_path):
    """What a user sees: no TensorFlow start-up log before the one line, exit status 2."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + env.get("PYTHONPATH", "").split(os.pathsep))
    done = subprocess.run(
        [trainer_runs.console_command("keras-preact-export"), "--checkpoint", str(tmp_path / "no_run"), "--model",
         "resnet20", "--preprocessing", "cifar", "--base_dir", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=str(tmp_path), env=env, timeout=300,
    )
    assert done.returncode == 2
    assert done.stderr.splitlines() == [f"error: --checkpoint: no such file or folder {str(tmp_path / 'no_run')!r}"]


def test_onnx_flag_writes_model_onnx_next_to_the_other_artefacts(tmp_path):
    model = trained_like(keras_preact.build_resnet((1, 1, 1), widths=(8, 16, 16)))
    path = str(tmp_path / "tiny.keras")
    model.save(path)
    base = str(tmp_path / "saved_models")
    assert main(["--model_file", path, "--class_names", ",".join(CLASSES), "--base_dir", base,
                 "--onnx", *FAST]) == 0
    extra = os.path.join(base, "tiny", "1", "assets.extra")
    assert sorted(os.listdir(extra)) == ["labels.txt", "model.onnx", "parity.json", "tflite"]
    with open(os.path.join(extra, "parity.json")) as f:
        report = json.load(f)
    assert report["comparisons"]["onnx"]["passed"] and report["comparisons"]["onnx"]["max_rel_diff"] <= 1e-4
    assert report["onnx"]["bytes"] == os.path.getsize(os.path.join(extra, "model.onnx"))
    # ONNX against what TF Serving answers (serving_default on the encoded images), not only Keras.
    against_serving = report["vs_serving_default"]["onnx"]
    assert against_serving["passed"] and against_serving["max_rel_diff"] <= 1e-4
    assert against_serving["top1_agreement"] == 1.0


def test_onnx_flag_without_the_onnx_extra_exits_2_and_exports_nothing(tmp_path, capsys, monkeypatch):
    model = keras_preact.build_resnet((1, 1, 1), widths=(8, 16, 16))
    path = str(tmp_path / "tiny.keras")
    model.save(path)
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if not installed
    base = tmp_path / "saved_models"
    with pytest.raises(SystemExit) as exit_info:
        main(["--model_file", path, "--class_names", ",".join(CLASSES), "--base_dir", str(base),
              "--onnx", *FAST])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --onnx: ") and 'pip install "keras_preact[onnx]"' in err
    assert not base.exists()
