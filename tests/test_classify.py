"""``keras-preact-classify`` (``keras_preact.export.classify``) on the shipped model: a bad file among good ones,
``--backend tflite``, exports that recorded their preprocessing under the old name."""

import glob
import os
import shutil
import subprocess
import sys

import pytest

import trainer_runs
from keras_preact.data import cifar10_sample_dir
from keras_preact.export.classify import Release, main, recorded_preprocessing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "saved_models", "cifar10_preact_resnet56")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Two sample photos, a text file named .jpg and a JPEG cut inside its header."""
    folder = tmp_path_factory.mktemp("images")
    sample = cifar10_sample_dir()
    for name in ("cat", "ship"):
        shutil.copyfile(sorted(glob.glob(os.path.join(sample, "test", name, "*.jpg")))[0], folder / f"{name}.jpg")
    (folder / "notes.jpg").write_text("not an image\n")
    (folder / "truncated.jpg").write_bytes((folder / "cat.jpg").read_bytes()[:300])
    return folder


def test_one_bad_file_among_good_ones_answers_the_good_and_names_each_bad(images):
    files = [str(images / name) for name in ("cat.jpg", "notes.jpg", "ship.jpg", "truncated.jpg")]
    # No TF_CPP_MIN_LOG_LEVEL from the caller: what a user's shell gives.
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join([ROOT] + env.get("PYTHONPATH", "").split(os.pathsep))
    done = subprocess.run([trainer_runs.console_command("keras-preact-classify"), SHIPPED, *files, "--top_k=1"],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert done.returncode == 2
    answers = done.stdout.splitlines()
    assert [line.split(":")[0] for line in answers] == [files[0], files[2]]
    assert answers[0].startswith(f"{files[0]}: cat ") and answers[1].startswith(f"{files[2]}: ship ")
    # Exactly one line per bad file on stderr, nothing before them (no TensorFlow or libjpeg log).
    assert done.stderr.splitlines() == [
        f"error: {files[1]}: could not classify: Image bytes are not JPEG, PNG, GIF or BMP (unknown file signature).",
        f"error: {files[3]}: could not classify: Invalid JPEG data, size 300",
    ]


def test_all_good_files_exit_0(images, capsys):
    assert main([SHIPPED, str(images / "cat.jpg"), str(images / "ship.jpg")]) == 0
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 2 and captured.err == ""


def test_backend_tflite_is_the_most_precise_tflite_file_held(images, capsys):
    release = Release(SHIPPED)
    held = [b for b in release.backends if b.startswith("tflite/")]
    expected = next(f"tflite/{v}" for v in ("float32", "float16", "int8") if f"tflite/{v}" in held)
    assert release.resolve_backend("tflite") == expected
    assert main([SHIPPED, str(images / "cat.jpg"), "--backend", "tflite", "--top_k=1"]) == 0
    assert capsys.readouterr().out.startswith(f"{images / 'cat.jpg'}: cat ")


def test_unknown_backend_is_one_line_naming_the_flag_and_the_backends(images, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([SHIPPED, str(images / "cat.jpg"), "--backend", "tensorrt"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: --backend: Unknown backend 'tensorrt'")
    assert "saved_model" in err


def test_misspelled_flag_gets_a_suggestion(images, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([SHIPPED, str(images / "cat.jpg"), "--bakend", "tflite"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "error: --bakend: unknown flag (did you mean --backend?)\n"


def test_exports_that_recorded_recipe_keep_loading():
    """Versions exported before the word was 'preprocessing' wrote export.recipe in parity.json."""
    assert recorded_preprocessing({"recipe": "cifar"}) == "cifar"
    assert recorded_preprocessing({"preprocessing": "imagenet_224"}) == "imagenet_224"
    with pytest.raises(ValueError):
        recorded_preprocessing({})
    for version in sorted(glob.glob(os.path.join(SHIPPED, "[0-9]*"))):
        assert Release(version).preprocessing == "cifar"


def test_the_command_keeps_filters_reordered_once_with_the_same_answers(images, monkeypatch):
    # The serving command sets TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1 for its own process (oneDNN keeps
    # each convolution's reordered filter); the answers must not change. A user's own setting wins.
    files = [str(images / "cat.jpg"), str(images / "ship.jpg")]
    script = ("import os, sys, keras_preact_commands; sys.argv[1:] = "
              f"{[SHIPPED, *files, '--top_k=3']!r}; status = keras_preact_commands.classify(); "
              "print('env', os.environ.get('TF_ONEDNN_ASSUME_FROZEN_WEIGHTS')); sys.exit(status)")
    outputs = {}
    for setting in (None, "0"):
        env = {k: v for k, v in os.environ.items() if k != "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"}
        env["PYTHONPATH"] = os.pathsep.join([ROOT] + env.get("PYTHONPATH", "").split(os.pathsep))
        if setting is not None:
            env["TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"] = setting
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT,
                              env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        *answers, env_line = done.stdout.splitlines()
        assert env_line == f"env {setting or '1'}"
        outputs[setting] = answers
    assert len(outputs[None]) == 2 and outputs[None] == outputs["0"]
    # main() itself, which a training process may call, leaves the process's setting alone.
    monkeypatch.delenv("TF_ONEDNN_ASSUME_FROZEN_WEIGHTS", raising=False)
    assert main([SHIPPED, files[0]]) == 0
    assert "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS" not in os.environ
