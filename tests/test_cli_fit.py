"""The fit trainer (``trainers/fit.py``, ``keras-preact-fit``) on the backend under test.

Run in every tier: the TensorFlow environment (fast tier), ``KERAS_BACKEND=torch``, and the
JAX-only environment without TensorFlow (``.ci/run``), so the JAX-only trainer is covered too.
Each run trains ResNet-8 on a small image folder in a subprocess, as a user runs it.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
from absl import flags

from keras_preact.cli import fit as fit_cli
from keras_preact.training import run_config

BACKEND = keras.backend.backend()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINER = os.path.join(ROOT, "trainers", "fit.py")
CLASSES = ("cat", "dog", "frog")
# 48 training images in batches of 16: 3 steps per epoch.
COMMON = ("--model=resnet8", "--recipe=fast", "--batch_size=16", "--dtype_policy=float32", "--log_every=1")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """``<root>/{train,test}/<class>/*.png``: 48 and 16 images whose red mean encodes the class."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 48), ("test", 16)):
        for i in range(count):
            label = i % len(CLASSES)
            pixels = rng.normal(128, 30, size=(32, 32, 3))
            pixels[..., 0] += 40 * (label - 1)
            path = root / split / CLASSES[label]
            path.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(pixels, 0, 255).astype("uint8")).save(path / f"{i}.png")
    return str(root)


# PyTorch's OpenMP threads spin at every barrier and collapse on cores another test worker uses
# (pytest -n 2 on 2 cores): one thread each keeps a subprocess run at its speed.
ENVIRONMENT = {**os.environ, "KERAS_BACKEND": BACKEND, **({"OMP_NUM_THREADS": "1"} if BACKEND == "torch" else {})}


def fit_command(*arguments, timeout=600):
    return subprocess.run([sys.executable, TRAINER, *arguments], env=ENVIRONMENT, capture_output=True, text=True,
                          timeout=timeout)


def last_checkpoint(run_dir) -> dict:
    names = sorted(os.listdir(os.path.join(run_dir, "checkpoints")))
    with np.load(os.path.join(run_dir, "checkpoints", names[-1])) as stored:
        return {name: stored[name] for name in stored.files}


def metrics_rows(run_dir) -> list:
    with open(os.path.join(run_dir, "metrics.csv"), newline="") as handle:
        return list(csv.DictReader(handle))


def test_trains_a_folder_and_writes_what_the_tf_distribute_trainer_writes(folder, tmp_path):
    run_dir = tmp_path / "run"
    result = fit_command(*COMMON, f"--data_dir={folder}", "--epochs=2", "--checkpoint_every=2",
                         "--keep_checkpoints=2", f"--model_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "step 6/6" in result.stdout and "Final test error" in result.stdout

    results = json.loads((run_dir / "results.json").read_text())
    assert (results["engine"], results["backend"], results["steps"], results["processes"]) == ("fit", BACKEND, 6, 1)
    final = results["final"]["test"]
    assert final["count"] == 16 and 0.0 <= final["error"] <= 1.0 and np.isfinite(final["loss"])
    assert results["images_per_sec_after_first_step"] > 0 and "compilation" in results["images_per_sec_means"]

    rows = metrics_rows(run_dir)
    assert [int(r["step"]) for r in rows if r["train_loss"]] == [1, 2, 3, 4, 5, 6]
    assert [int(r["step"]) for r in rows if r["test_error"]] == [3, 6]  # each epoch's end
    assert float([r for r in rows if r["test_error"]][-1]["test_error"]) == pytest.approx(final["error"])
    for group in ("train", "test"):
        events = os.listdir(run_dir / "tensorboard" / group)
        assert events and all((run_dir / "tensorboard" / group / e).stat().st_size > 0 for e in events)
    assert (run_dir / "curves.png").stat().st_size > 0
    assert (run_dir / "labels.txt").read_text().split() == list(CLASSES)
    # config.json repeats the run: read back, it resolves to the same configuration.
    written = json.loads((run_dir / "config.json").read_text())
    assert run_config.resolve("cifar", written).to_dict() == written
    # The last two checkpoints are kept (steps 4 and 6), and no temporary file is left.
    assert sorted(os.listdir(run_dir / "checkpoints")) == ["ckpt-000000004.npz", "ckpt-000000006.npz"]

    model = keras.saving.load_model(run_dir / "model.keras", safe_mode=True)
    assert model.predict(np.zeros((2, 32, 32, 3), "float32"), verbose=0).shape == (2, len(CLASSES))


def test_a_run_killed_and_resumed_ends_with_the_weights_of_an_uninterrupted_one(folder, tmp_path):
    arguments = (*COMMON, f"--data_dir={folder}", "--train_steps=90", "--checkpoint_every=3", "--eval_every=45")
    whole = fit_command(*arguments, f"--model_dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]

    killed = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, TRAINER, *arguments, f"--model_dir={killed}"],
                               env=ENVIRONMENT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (killed / "checkpoints" / "ckpt-000000009.npz").exists():
            assert process.poll() is None and time.monotonic() < deadline, "the run ended before its checkpoint"
            time.sleep(0.02)
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    assert not (killed / "results.json").exists(), "the kill came after the end of the run"
    assert os.listdir(killed / "checkpoints")  # what the kill left behind: a complete checkpoint

    resumed = fit_command(*arguments, f"--model_dir={killed}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Resuming from" in resumed.stdout
    expected, actual = last_checkpoint(tmp_path / "whole"), last_checkpoint(killed)
    assert sorted(expected) == sorted(actual)
    different = [name for name in expected if name != "state" and not np.array_equal(expected[name], actual[name])]
    # Measured bit for bit on the CPU on all three backends (docs/backends.md).
    assert not different, different


def test_a_diverging_run_exits_3_naming_its_last_finite_checkpoint(folder, tmp_path):
    run_dir = tmp_path / "run"
    result = fit_command(*COMMON, f"--data_dir={folder}", "--train_steps=30", "--checkpoint_every=1",
                         "--lr=1e6", f"--model_dir={run_dir}")
    assert result.returncode == 3, result.stderr[-3000:]
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: training diverged at step ")
    checkpoints = sorted(os.listdir(run_dir / "checkpoints"))
    assert checkpoints and os.path.join(str(run_dir), "checkpoints", checkpoints[-1]) in line
    for name in checkpoints:
        with np.load(run_dir / "checkpoints" / name) as stored:
            assert all(np.all(np.isfinite(stored[k])) for k in stored.files if stored[k].dtype.kind == "f")
    assert not (run_dir / "results.json").exists()


def test_a_tf_distribute_config_runs_and_its_engine_settings_are_refused_one_line_each(folder, tmp_path):
    tf_config = run_config.resolve("cifar", {
        "model": {"model": "resnet8", "dtype_policy": "float32"}, "data": {"data_dir": folder},
        "recipe": {"name": "fast", "batch_size": 16, "train_steps": 3}})
    path = run_config.write(tf_config, str(tmp_path / "tf_run"))
    run_dir = tmp_path / "run"
    result = fit_command(f"--config={path}", f"--model_dir={run_dir}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run_dir / "config.json").read_text())["recipe"] == tf_config.to_dict()["recipe"]

    mirrored = json.loads(open(path).read())
    mirrored["distribution"].update(strategy="mirrored", sync_bn=True)
    mirrored["data"]["input"] = "stream"
    (tmp_path / "mirrored.json").write_text(json.dumps(mirrored))
    refused = fit_command(f"--config={tmp_path / 'mirrored.json'}", f"--model_dir={tmp_path / 'other'}")
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()[-3:]
    assert [line.split(":")[1].strip() for line in lines] == ["--strategy", "--sync_bn", "--input"], lines
    assert not (tmp_path / "other").exists()


def test_a_channels_first_network_trains_on_the_same_batches_transposed(folder, tmp_path):
    """--data_format=channels_first: the batches are the NHWC ones transposed, so the run is the
    channels_last run's up to float rounding (same weights at the start, same steps)."""
    runs = {}
    for layout in ("channels_last", "channels_first"):
        # A small rate: the layouts sum gradients in another order, which a large one amplifies.
        result = fit_command(*COMMON, f"--data_dir={folder}", "--train_steps=3", f"--data_format={layout}", "--lr=0.002",
                             f"--model_dir={tmp_path / layout}")
        assert result.returncode == 0, result.stderr[-3000:]
        runs[layout] = last_checkpoint(tmp_path / layout)
    for name, value in runs["channels_last"].items():
        if name != "state":
            np.testing.assert_allclose(runs["channels_first"][name], value, rtol=1e-4, atol=1e-5, err_msg=name)
    config = json.loads((tmp_path / "channels_first" / "config.json").read_text())
    assert config["model"]["data_format"] == "channels_first"


def parse_fit(*arguments):
    values = flags.FlagValues()
    fit_cli.define_flags(values)
    return fit_cli.console_main(["keras-preact-fit", *arguments], values)


@pytest.mark.skipif(BACKEND == "jax", reason="JAX honours them: tests/test_fit_processes.py")
@pytest.mark.parametrize("arguments, flags_named", [
    (("--keras_distribution=data_parallel",), ["--keras_distribution"]),
    (("--num_processes=2", "--coordinator_address=localhost:1234"), ["--coordinator_address", "--num_processes"]),
])
def test_jax_distribution_settings_are_refused_on_other_backends(arguments, flags_named, capsys):
    assert parse_fit(*arguments) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[1].strip() for line in lines] == flags_named, lines


def test_several_processes_need_the_coordinator_address(capsys):
    assert parse_fit("--num_processes=2", "--process_id=0") == 2
    assert capsys.readouterr().err.strip() == (
        "error: --coordinator_address: --num_processes=2 needs the host:port of process 0 in every process.")
    assert parse_fit("--num_processes=2", "--process_id=2", "--coordinator_address=h:1") == 2
    assert "--process_id: must be below --num_processes=2, got 2." in capsys.readouterr().err


def test_help_lists_the_run_configuration_and_says_which_engine_honours_what(capsys):
    assert parse_fit("--help") == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--checkpoint_every", "--keep_checkpoints", "--config", "--recipe", "--lr", "--model_dir"):
        assert flag in text
    assert "tf.distribute strategy. [tf.distribute trainer only]" in text
    assert "[fit trainer only]" in text


HAS_TENSORFLOW = importlib.util.find_spec("tensorflow") is not None


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TENSORFLOW, reason="without TensorFlow --export is refused (the test below)")
def test_export_at_the_end_writes_a_servable_savedmodel(folder, tmp_path):
    exports = tmp_path / "exports"
    result = fit_command(*COMMON, f"--data_dir={folder}", "--train_steps=3", f"--model_dir={tmp_path / 'run'}",
                         "--export", f"--export_dir={exports}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (exports / "resnet8" / "1" / "saved_model.pb").is_file()
    assert (exports / "resnet8" / "1" / "assets.extra" / "labels.txt").read_text().split() == list(CLASSES)


@pytest.mark.skipif(HAS_TENSORFLOW, reason="with TensorFlow --export runs (the test above)")
def test_export_without_tensorflow_is_refused_in_one_line(capsys):
    assert parse_fit("--export") == 2
    assert capsys.readouterr().err.strip().startswith("error: --export: a SavedModel needs TensorFlow")
