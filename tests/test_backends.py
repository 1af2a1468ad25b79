"""The package on every Keras backend: this module runs under whichever backend Keras has.

The TensorFlow suite runs it as part of ``pytest``; ``.ci/run`` runs it again under
``KERAS_BACKEND=jax`` (in a JAX-only install) and ``KERAS_BACKEND=torch``. It covers: the
import without TensorFlow, every registered model built and run, the outputs of the seeded
reference cases against TensorFlow's (``tests/fixtures/backends``, written once by
``tools/make_backend_fixtures.py``), ``.keras`` round trips, files crossing backends in both
directions, the weight imports, stacked stages (scan and remat) against the unit-by-unit
build, and short ``fit`` runs fed by numpy arrays and by the package's ``tf.data`` pipeline.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import backend_cases
import keras_preact
from harness import assert_config_round_trip, assert_keras_round_trip
from keras_preact import weights
from keras_preact.stacked import transfer_weights

BACKEND = keras.backend.backend()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = np.load(backend_cases.REFERENCE)
TORCH_FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "torch")
TORCH_IO = np.load(os.path.join(TORCH_FIXTURES, "io.npz"))

# Eval mode: every backend within 1e-5 of TensorFlow's logits (max |diff| / max |logit|).
# Training mode normalises by the statistics of a batch of 4; the deep nets then amplify
# float32 rounding: against a float64 evaluation of the same nets (docs/backends.md),
# TensorFlow's own float32 output is off by 1.5e-5 (ResNet-50) and 2.3e-5 (ResNet-164), and
# TensorFlow with Keras' BatchNorm instead of the fused kernel differs from the fused one by
# 2e-5. The bound for those two is the float32 error, not a backend difference.
EVAL_TOLERANCE = 1e-5
TRAIN_TOLERANCE = {"resnet20": 1e-5, "resnet20_stacked": 1e-5, "resnet164": 5e-5, "resnet50": 5e-5}


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def installed(backend: str) -> bool:
    module = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch"}[backend]
    return importlib.util.find_spec(module) is not None


def run_python(code: str, backend: str, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": os.pathsep.join([ROOT, os.path.join(ROOT, "tests")])}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


# -- the package without TensorFlow -------------------------------------------------------------
# Makes `import tensorflow` fail, as on a machine without it (the GPU image has none). Keras
# itself probes for TensorFlow when it serializes, so "not imported" is not the test: "not
# needed" is.
HIDE_TENSORFLOW = """
import importlib.abc, importlib.machinery, sys
class _Hidden(importlib.abc.Loader):
    def create_module(self, spec):
        raise ImportError(f"{spec.name} is hidden by the test")
    def exec_module(self, module):
        pass
class _HideTensorFlow(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tensorflow_datasets", "tf_keras"):
            return importlib.machinery.ModuleSpec(name, _Hidden())  # found, but fails to import
        return None
sys.meta_path.insert(0, _HideTensorFlow())
"""


@pytest.mark.skipif(BACKEND == "tensorflow", reason="the TensorFlow backend needs TensorFlow")
def test_models_files_weights_and_fit_need_no_tensorflow(tmp_path):
    code = HIDE_TENSORFLOW + f"""
import numpy as np, keras, keras_preact
from keras_preact import recipes, weights
model = keras_preact.get_model("resnet14", stacked_stages=True, recompute=True)
x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
fit = recipes.fast(steps=2, batch_size=4)
fit.compile(model)
model.fit(x, np.arange(4), batch_size=4, epochs=2, verbose=0, callbacks=fit.callbacks)
model.save({str(tmp_path / "m.keras")!r})
loaded = keras.saving.load_model({str(tmp_path / "m.keras")!r}, safe_mode=True)
assert np.allclose(keras.ops.convert_to_numpy(loaded(x)), keras.ops.convert_to_numpy(model(x)), atol=1e-5)
weights.model_from_file({os.path.join(TORCH_FIXTURES, "timm_bottleneck.safetensors")!r})
try:
    import tensorflow
except ImportError:
    print("ok without tensorflow")
"""
    result = run_python(code, BACKEND)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "ok without tensorflow"


@pytest.mark.skipif(BACKEND == "tensorflow", reason="the refusal is for the other backends")
@pytest.mark.parametrize("trainer", ["cifar", "imagenet"])
def test_tf_distribute_trainers_refuse_another_backend_in_one_line(trainer):
    result = subprocess.run([sys.executable, os.path.join(ROOT, "trainers", f"{trainer}.py")],
                            env={**os.environ, "KERAS_BACKEND": BACKEND}, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "trainers/fit.py" in lines[0] and BACKEND in lines[0]


# -- models -------------------------------------------------------------------------------------
@pytest.mark.skipif(BACKEND == "tensorflow",
                    reason="tests/test_registry.py builds, counts and serializes every model on TensorFlow")
@pytest.mark.parametrize("name", keras_preact.list_models())
def test_every_registered_model_builds_and_runs_once(name):
    spec = keras_preact.registry.resolve(name)
    side = 32 if spec.family == "cifar" else 64
    model = keras_preact.get_model(name)
    x = np.random.default_rng(0).normal(size=(2, side, side, 3)).astype("float32")
    # Training mode: with freshly initialised moving statistics an eval-mode pass of 333
    # units grows the residual stream past float32 (on every backend); batch statistics keep
    # each unit's input normalised, as in training.
    y = to_numpy(model(x, training=True))
    assert y.shape == (2, 10 if spec.family == "cifar" else 1000)
    assert np.all(np.isfinite(y))


@pytest.mark.parametrize("case", sorted(backend_cases.CASES))
def test_outputs_equal_tensorflows_for_the_same_weights(case):
    model = backend_cases.build(case)
    x = backend_cases.images(case)
    np.testing.assert_array_equal(x, REFERENCE[f"{case}/images"])
    got = backend_cases.outputs(model, x)
    assert backend_cases.relative_difference(got["eval"], REFERENCE[f"{case}/eval"]) <= EVAL_TOLERANCE
    assert backend_cases.relative_difference(got["train"], REFERENCE[f"{case}/train"]) <= TRAIN_TOLERANCE[case]


def small_model(**options):
    """A 2-unit-per-stage net with a gate and a zero-pad shortcut: most layer classes, fast."""
    return keras_preact.build_resnet((2, 2), widths=(4, 8), input_shape=(8, 8, 3), num_classes=3,
                                     **options)


@pytest.mark.parametrize("options", [{"shortcut": "exclusive_gating"},
                                     {"stacked_stages": True, "recompute": True, "unit": "bottleneck"}])
def test_keras_file_round_trip_in_safe_mode(tmp_path, options):
    model = small_model(**options)
    x = np.random.default_rng(1).normal(size=(2, 8, 8, 3)).astype("float32")
    loaded = assert_keras_round_trip(model, x, tmp_path, atol=1e-6)
    assert isinstance(loaded, keras_preact.ResNet)


def test_layers_serialize_on_their_own():
    unit = keras_preact.ResidualUnit(4, shortcut="shortcut_only_gating", padding="symmetric")
    stage = keras_preact.StackedStage(3, 4, kind="bottleneck")
    for layer, shape in ((unit, (1, 8, 8, 4)), (stage, (1, 8, 8, 16))):
        x = np.random.default_rng(2).normal(size=shape).astype("float32")
        y = to_numpy(layer(x))
        copy = assert_config_round_trip(layer)
        copy(x)  # builds it
        copy.set_weights(layer.get_weights())
        np.testing.assert_allclose(to_numpy(copy(x)), y, rtol=0, atol=1e-6)


# -- files crossing backends --------------------------------------------------------------------
LOAD_AND_RUN = """
import json, sys, keras, numpy as np
import keras_preact
from backend_cases import small_model_for_files as build
keras_file, weights_file, x_file, out_file = sys.argv[1:5] if len(sys.argv) > 4 else {args}
x = np.load(x_file)
loaded = keras.saving.load_model(keras_file, safe_mode=True)
fresh = build()
fresh.load_weights(weights_file)
np.savez(out_file, keras=keras.ops.convert_to_numpy(loaded(x, training=False)),
         weights=keras.ops.convert_to_numpy(fresh(x, training=False)))
loaded.save(out_file + ".keras")
"""


@pytest.mark.parametrize("other", [b for b in ("tensorflow", "jax", "torch") if b != BACKEND])
def test_files_written_here_load_under_another_backend_and_back(tmp_path, other):
    if not installed(other):
        pytest.skip(f"the {other} backend is not installed (pip install 'keras_preact[{other}]')")
    model = backend_cases.small_model_for_files()
    x = np.random.default_rng(3).normal(size=(2, 32, 32, 3)).astype("float32")
    expected = to_numpy(model(x, training=False))
    keras_file, weights_file = str(tmp_path / "m.keras"), str(tmp_path / "m.weights.h5")
    x_file, out_file = str(tmp_path / "x.npy"), str(tmp_path / "out.npz")
    model.save(keras_file)
    model.save_weights(weights_file)
    np.save(x_file, x)
    args = repr([keras_file, weights_file, x_file, out_file])
    result = run_python(LOAD_AND_RUN.format(args=args), other)
    assert result.returncode == 0, result.stderr[-3000:]
    there = np.load(out_file)
    for key in ("keras", "weights"):  # the other backend computes our logits from our files
        assert backend_cases.relative_difference(there[key], expected) <= EVAL_TOLERANCE
    # ... and the .keras file it wrote loads here with the same outputs (the reverse direction).
    back = keras.saving.load_model(out_file + ".keras", safe_mode=True)
    assert backend_cases.relative_difference(to_numpy(back(x, training=False)), expected) <= EVAL_TOLERANCE


# -- weight import --------------------------------------------------------------------------------
@pytest.mark.parametrize("file", ["timm_bottleneck.safetensors", "timm_basic.pth"])
def test_timm_weights_give_timms_logits(file):
    model = weights.model_from_file(os.path.join(TORCH_FIXTURES, file))
    key = file.split(".")[0]
    got = to_numpy(model(TORCH_IO[f"{key}_x"], training=False))
    assert backend_cases.relative_difference(got, TORCH_IO[f"{key}_logits"]) <= 1e-5


def test_torch_state_dict_of_an_independent_pytorch_build():
    # The reduced CIFAR net of tools/make_torch_fixtures.py, PyTorch's logits.
    model = keras_preact.build_resnet((1, 1, 1), num_classes=3, widths=(8, 16, 32))
    weights.load_weights(model, os.path.join(TORCH_FIXTURES, "cifar_basic.pth"))
    got = to_numpy(model(TORCH_IO["cifar_basic_x"], training=False))
    assert backend_cases.relative_difference(got, TORCH_IO["cifar_basic_logits"]) <= 1e-5


# -- stacked stages: the backend's loop and remat ---------------------------------------------------
def test_stacked_recompute_trains_as_the_unit_by_unit_build():
    """Three SGD steps of the scan/remat (or while-loop) build follow the plain build's losses."""
    x = np.random.default_rng(4).normal(size=(8, 32, 32, 3)).astype("float32")
    y = np.arange(8) % 10
    plain = keras_preact.get_model("resnet14")
    stacked = keras_preact.get_model("resnet14", stacked_stages=True, recompute=True)
    transfer_weights(plain, stacked)
    losses = {}
    for name, model in (("plain", plain), ("stacked", stacked)):
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        losses[name] = [float(model.train_on_batch(x, y)) for _ in range(3)]
    np.testing.assert_allclose(losses["stacked"], losses["plain"], rtol=1e-4)
    assert losses["plain"][2] != losses["plain"][0]  # the steps did train
    transfer_weights(stacked, plain_copy := keras_preact.get_model("resnet14"))
    # Three steps at lr 0.1 on a batch of 8 amplify float32 rounding (another summation order in
    # the loop): on JAX the logits (about 1.4 at most) differed by up to 1.23e-3 on an AMX Xeon,
    # less on an AVX2 EPYC.
    np.testing.assert_allclose(to_numpy(plain_copy(x, training=False)), to_numpy(plain(x, training=False)),
                               rtol=0, atol=2e-3)


# -- the prepared GPU check, run small on this machine ---------------------------------------------
@pytest.mark.skipif(BACKEND != "jax", reason="the GPU check runs Keras' JAX backend")
def test_gpu_check_installs_from_carried_wheels_and_writes_its_table(tmp_path):
    wheels, out = tmp_path / "wheels", tmp_path / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    prepared = subprocess.run(["bash", os.path.join(ROOT, "tools", "gpu_check.sh"), "--prepare",
                               f"--wheels={wheels}"], env=env, capture_output=True, text=True,
                              timeout=600)
    if prepared.returncode != 0 and "pip download" in prepared.stderr + prepared.stdout:
        pytest.fail(f"--prepare failed: {prepared.stderr[-2000:]}")
    assert prepared.returncode == 0, prepared.stderr[-2000:]
    names = sorted(p.name for p in wheels.iterdir())
    assert any(n.startswith("keras-3.15.1") for n in names) and any(n.startswith("keras_preact") for n in names)
    result = subprocess.run(["bash", os.path.join(ROOT, "tools", "gpu_check.sh"), f"--wheels={wheels}",
                             f"--out={out}", "--smoke"], env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert f"installed from {wheels}" in result.stdout
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["device"].startswith(("CPU", "GPU", "CUDA"))
    assert [r["variant"] for r in report["benchmarks"]] == ["fused", "fused+bf16"]
    for row in report["benchmarks"]:
        assert [r["mode"] for r in row["rows"]] == ["train", "infer"]
        assert all(r["images_per_s"] > 0 for r in row["rows"])
    assert report["fit"]["loss_last"] < report["fit"]["loss_first"]
    assert report["device"] in (out / "gpu_check.md").read_text()
    if importlib.util.find_spec("torch") is None:  # CI's JAX-only environment
        assert report["torch"] == []
    else:  # the PyTorch cells of backends_table.py, as on the lent GPU machines
        assert {r["column"] for r in report["torch"]} == {"torch_fit_nchw", "pytorch", "pytorch_bf16w"}
        assert all(r["images_per_s"] > 0 for r in report["torch"]), report["torch"]
        assert report["torch_version"] and "PyTorch" in (out / "gpu_check.md").read_text()
