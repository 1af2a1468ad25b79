"""Helpers for the trainer tests: tiny generated image folders and trainer subprocesses."""

import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_image_folder(root, splits, classes=("cat", "dog", "ship"), size=32, seed=0):
    """``root/<split>/<class>/<i>.jpg``: each class a different mean colour, so it is learnable."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    for split, per_class in splits.items():
        for c, name in enumerate(classes):
            folder = os.path.join(root, split, name)
            os.makedirs(folder, exist_ok=True)
            for i in range(per_class):
                colour = np.zeros(3)
                colour[c % 3] = 180
                pixels = np.clip(rng.normal(colour + 40, 30, (size, size, 3)), 0, 255).astype("uint8")
                Image.fromarray(pixels).save(os.path.join(folder, f"{i:04d}.jpg"), quality=90)
    return str(root)


def console_command(name: str) -> str:
    """The installed console command ``name`` (``keras-preact-export``, ...) next to the
    interpreter: the form users run, which sets up TensorFlow's quiet start-up before it loads
    (``python -m keras_preact.export`` cannot: the package is imported first)."""
    path = os.path.join(os.path.dirname(sys.executable), name)
    if not os.path.exists(path):
        raise AssertionError(f"{name} is not installed next to {sys.executable}: pip install -e .")
    return path


def env():
    environment = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    for name in ("TF_CONFIG", "TPU_NAME"):
        environment.pop(name, None)
    return environment


def start(trainer, *flags, stdout=subprocess.PIPE):
    return subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "trainers", f"{trainer}.py"), *flags],
        stdout=stdout, stderr=subprocess.PIPE, text=True, env=env(), cwd=ROOT,
    )


def run(trainer, *flags, timeout=180):
    """Run a trainer to completion; returns (returncode, stdout, stderr, seconds)."""
    started = time.monotonic()
    process = start(trainer, *flags)
    try:
        out, err = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, out, err, time.monotonic() - started
