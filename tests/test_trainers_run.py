"""The trainers end to end: the embedded sample, an image folder, mirrored, resume, kill -9, ImageNet."""

import os
import re
import signal
import time

import pytest
import tensorflow as tf

import trainer_runs
from keras_preact.training import read_metrics


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar_folder")
    return trainer_runs.make_image_folder(root, {"train": 16, "test": 4})


def test_default_run_uses_the_embedded_sample(tmp_path):
    code, out, err, _ = trainer_runs.run(
        "cifar", "--train_steps=2", "--batch_size=16", f"--model_dir={tmp_path}"
    )
    assert code == 0, err[-3000:]
    assert "resnet20" in out and "cifar10_sample train (5000 images, 10 classes, 32x32)" in out
    assert re.search(r"Final test error: \d+\.\d\d% \(accuracy \d+\.\d\d%\) on 1000 images after 2 steps", out)
    assert (tmp_path / "curves.png").exists() and (tmp_path / "labels.txt").read_text().startswith("airplane\n")


def test_mirrored_folder_run_then_resume(cifar_folder, tmp_path):
    flags = [
        f"--data_dir={cifar_folder}", "--strategy=mirrored", "--cpu_devices=2", "--batch_size=8",
        "--log_every=1", f"--model_dir={tmp_path}", "--lr_boundaries=0.5",
        "--model=resnet8",  # any CIFAR depth 6n+2 is accepted: the smallest, for speed
    ]
    code, out, err, _ = trainer_runs.run("cifar", *flags, "--train_steps=4")
    assert code == 0, err[-3000:]
    assert "strategy mirrored with 2 replica(s)" in out and "Final test error" in out
    assert "3 classes" in out
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-4")
    code, out, err, _ = trainer_runs.run("cifar", *flags, "--train_steps=7")
    assert code == 0, err[-3000:]
    assert "at step 4 (epoch 0, batch 4)" in out and "after 7 steps" in out
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [int(r["step"]) for r in rows if r["train_loss"]] == list(range(1, 8))
    assert os.listdir(tmp_path / "tensorboard")


def test_kill_9_loses_at_most_the_work_since_the_last_checkpoint(cifar_folder, tmp_path):
    flags = [
        f"--data_dir={cifar_folder}", "--batch_size=8", "--checkpoint_every=3", "--log_every=1",
        f"--model_dir={tmp_path}", "--lr_boundaries=100", "--model=resnet8",
    ]
    process = trainer_runs.start("cifar", *flags, "--train_steps=100000")
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            latest = tf.train.latest_checkpoint(str(tmp_path / "checkpoints"))
            if latest and int(latest.rsplit("-", 1)[1]) >= 6:
                break
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)  # whatever it was doing, mid-step or mid-save
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
    saved = int(tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).rsplit("-", 1)[1])
    assert saved >= 6
    code, out, err, _ = trainer_runs.run("cifar", *flags, f"--train_steps={saved + 2}")
    assert code == 0, err[-3000:]
    assert f"at step {saved} " in out and f"after {saved + 2} steps" in out


def test_imagenet_trainer_evaluates_at_224_and_320(tmp_path):
    root = trainer_runs.make_image_folder(tmp_path / "data", {"train": 4, "validation": 2}, size=48)
    code, out, err, _ = trainer_runs.run(
        "imagenet", f"--data_dir={root}", "--model=resnet18", "--batch_size=4", "--train_steps=2",
        "--augment=inception", f"--model_dir={tmp_path / 'run'}",
    )
    assert code == 0, err[-3000:]
    assert "lr 0.0015625" in out  # 0.1 for 256, scaled to the batch of 4
    for size in (224, 320):
        assert re.search(rf"Final validation@{size} error: .* on 6 images after 2 steps", out), out
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert {r["eval_name"] for r in rows if r["test_error"]} == {"validation@224", "validation@320"}


def test_export_at_the_end(cifar_folder, tmp_path):
    code, out, err, _ = trainer_runs.run(
        "cifar", f"--data_dir={cifar_folder}", "--model=resnet8", "--batch_size=8", "--train_steps=2",
        f"--model_dir={tmp_path / 'run'}", "--export", f"--export_dir={tmp_path / 'exports'}", timeout=900,
    )
    assert code == 0, err[-3000:]
    assert "Exported to" in out
    assert os.path.exists(tmp_path / "exports" / "resnet8" / "1" / "saved_model.pb")
