"""``import keras_preact`` is a library import: it changes nothing in the process it joins.

The commands' start-up (quiet TensorFlow, oneDNN on) lives in ``keras_preact_commands``, which
each command calls before Keras loads; these tests hold the package itself to no environment
variable set and no file descriptor touched, and, on the JAX backend, to no TensorFlow import
for building, training and predicting (TensorFlow may not even be installed there).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code: str, **env) -> subprocess.CompletedProcess:
    # A user's shell: none of the test session's own TensorFlow settings.
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    environment.update(env, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-c", code], env=environment, cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


def test_import_changes_no_environment_variable_and_no_file_descriptor():
    code = """
import os, keras
before = dict(os.environ)
calls = []
for name in ("dup", "dup2", "open", "close"):
    original = getattr(os, name)
    def spy(*args, _name=name, _original=original):
        calls.append(_name)
        return _original(*args)
    setattr(os, name, spy)
import keras_preact
changed = sorted(k for k in set(before) | set(os.environ) if before.get(k) != os.environ.get(k))
print("changed:", changed, "fd calls:", calls)
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "changed: [] fd calls: []", result.stdout


def test_the_commands_set_their_defaults_and_keep_the_users():
    # The environment part only: the full prepare_process() (which imports Keras and TensorFlow
    # quietly) runs in every console command test (tests/test_console_scripts.py).
    code = """
import os
import keras_preact_commands
keras_preact_commands.set_environment_defaults()
print(os.environ["TF_ENABLE_ONEDNN_OPTS"], os.environ["TF_CPP_MIN_LOG_LEVEL"])
"""
    assert run_python(code).stdout.split() == ["1", "1"]
    assert run_python(code, TF_ENABLE_ONEDNN_OPTS="0").stdout.split() == ["0", "1"]


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="needs JAX ([jax] extra)")
def test_jax_builds_fits_saves_and_reloads_without_importing_tensorflow(tmp_path):
    """ResNet-20 on JAX: build, fit, predict without TensorFlow. Saving a ``.keras`` file is
    Keras' own code, which imports TensorFlow when it is installed (``tf.available`` in
    ``keras.src.saving.serialization_lib``); where it is not ([jax] only), nothing needs it."""
    path = str(tmp_path / "resnet20.keras")
    code = f"""
import sys, numpy as np, keras, keras_preact
model = keras_preact.ResNet20()
model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
x = np.random.default_rng(0).normal(size=(8, 32, 32, 3)).astype("float32")
model.fit(x, np.arange(8) % 10, batch_size=4, epochs=1, verbose=0)
logits = model.predict(x, verbose=0)
before_save = "tensorflow" in sys.modules
model.save({path!r})
loaded = keras.saving.load_model({path!r}, safe_mode=True)
assert np.allclose(loaded.predict(x, verbose=0), logits, atol=1e-5)
installed = __import__("importlib.util").util.find_spec("tensorflow") is not None
print("tensorflow before save:", before_save, "at the end:", "tensorflow" in sys.modules, "installed:", installed)
"""
    result = run_python(code, KERAS_BACKEND="jax")
    assert result.returncode == 0, result.stderr[-3000:]
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("tensorflow before save: False"), last
    if last.endswith("installed: False"):
        assert "at the end: False" in last
