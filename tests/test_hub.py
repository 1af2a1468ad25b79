"""Weights by name (keras_preact.hub): Hugging Face and Kaggle handles, offline, from fake caches.

Nothing is downloaded: each test builds the hub's cache in tmp_path in the layout the hub
library itself reads (huggingface_hub: ``models--<owner>--<repo>/{blobs,refs/main,snapshots/
<commit>/...}``; kagglehub: ``models/<owner>/<model>/<framework>/<variation>/<version>`` and its
``<version>.complete`` marker) and resolves handles with the network off (``HF_HUB_OFFLINE``).

The timm repository holds a state dict with timm's real ResNetV2-50 tensor names and shapes
(random weights, trained-like BatchNorm statistics, timm's ``num_batches_tracked``); its
reference logits come from an independent PyTorch forward of timm's ResNetV2 written below.
"""

import hashlib
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import keras_preact
from keras_preact import hub, presets, weights

def run(model, x):
    """Eval-mode outputs as NumPy on any backend."""
    return keras.ops.convert_to_numpy(model(x, training=False))


TIMM_REPO = "timm/resnetv2_50.a1h_in1k"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


# -- fake caches -------------------------------------------------------------------------------
@pytest.fixture
def hf_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache in tmp_path, offline (env for subprocesses, constants here:
    huggingface_hub reads both variables once, at its import)."""
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants
    cache = tmp_path / "hf_cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def add_to_hf_cache(cache, repo_id: str, files: dict) -> None:
    """Put ``{filename: bytes}`` in the cache as hf_hub_download leaves them: content-addressed
    blobs, ``refs/main`` holding the commit, snapshot entries linking to the blobs."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "blobs").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / name)


def timm_resnetv2_50_state_dict(seed: int = 0) -> dict:
    """timm's ``resnetv2_50`` state dict: names and shapes from the inverse of
    ``keras_preact.weights._timm_name`` over ResNet50(stem="timm"), random values."""
    rng = np.random.default_rng(seed)
    model = keras_preact.ResNet50(stem="timm", padding="symmetric")
    state = {}
    for variable in model.weights:
        name = weights._timm_name(variable.path)
        shape = tuple(variable.shape)
        if len(shape) == 4:  # conv HWIO -> OIHW, He-scaled so 16 residual units stay finite
            k, _, cin, cout = shape
            value = rng.normal(0, np.sqrt(2.0 / (k * k * cout)), (cout, cin, k, k))
        elif len(shape) == 2:  # timm's classifier is a 1x1 conv
            value = rng.normal(0, 0.02, (shape[1], shape[0], 1, 1))
        elif name.endswith("running_var"):
            value = 0.5 + 1.5 * rng.random(shape)
        elif name.endswith("running_mean") or name.endswith("bias"):
            value = 0.3 * rng.normal(size=shape)
        else:  # BN gamma
            value = 0.5 + rng.random(shape)
        state[name] = value.astype(np.float32)
        if name.endswith(".running_var"):
            state[name.replace("running_var", "num_batches_tracked")] = np.array(1000, np.int64)
    return state


def safetensors_bytes(state: dict, tmp_path) -> bytes:
    path = str(tmp_path / "model.safetensors")
    weights.write_safetensors(state, path)
    with open(path, "rb") as handle:
        return handle.read()


TIMM_CONFIG = json.dumps({"architecture": "resnetv2_50", "num_classes": 1000, "num_features": 2048,
                          "pretrained_cfg": {"mean": [0.485, 0.456, 0.406],
                                             "std": [0.229, 0.224, 0.225]}}).encode()


# -- an independent forward of timm's ResNetV2 (timm/models/resnetv2.py, PreActBottleneck) ----
def timm_resnetv2_logits(state: dict, x_nhwc: np.ndarray) -> np.ndarray:
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    sd = {k: torch.from_numpy(v) for k, v in state.items()}

    def norm_act(x, p):  # BatchNormAct2d, eval mode
        return F.relu(F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"],
                                   sd[f"{p}.weight"], sd[f"{p}.bias"], False, 0.0, 1e-5))

    with torch.no_grad():
        x = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)
        x = F.conv2d(x, sd["stem.conv.weight"], stride=2, padding=3)
        x = F.max_pool2d(x, 3, 2, 1)
        s = 0
        while f"stages.{s}.blocks.0.conv1.weight" in sd:
            b = 0
            while f"stages.{s}.blocks.{b}.conv1.weight" in sd:
                p = f"stages.{s}.blocks.{b}"
                stride = 2 if (s > 0 and b == 0) else 1
                x_preact = norm_act(x, f"{p}.norm1")
                shortcut = x
                if f"{p}.downsample.conv.weight" in sd:
                    shortcut = F.conv2d(x_preact, sd[f"{p}.downsample.conv.weight"], stride=stride)
                y = F.conv2d(x_preact, sd[f"{p}.conv1.weight"])
                y = F.conv2d(norm_act(y, f"{p}.norm2"), sd[f"{p}.conv2.weight"], stride=stride, padding=1)
                y = F.conv2d(norm_act(y, f"{p}.norm3"), sd[f"{p}.conv3.weight"])
                x = y + shortcut
                b += 1
            s += 1
        x = norm_act(x, "norm").mean(dim=(2, 3), keepdim=True)
        return F.conv2d(x, sd["head.fc.weight"], sd["head.fc.bias"]).flatten(1).numpy()


def assert_close(got, expected, rtol=1e-4):
    got, expected = np.asarray(got), np.asarray(expected)
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=rtol * np.abs(expected).max())


# -- tests -------------------------------------------------------------------------------------
def test_imagenet_and_hf_handle_load_timms_resnetv2_50_from_the_cache(hf_cache, tmp_path):
    state = timm_resnetv2_50_state_dict()
    add_to_hf_cache(hf_cache, TIMM_REPO, {"config.json": TIMM_CONFIG,
                                          "model.safetensors": safetensors_bytes(state, tmp_path)})
    from huggingface_hub import hf_hub_download

    assert hf_hub_download(TIMM_REPO, "model.safetensors").startswith(str(hf_cache))  # offline
    x = np.random.default_rng(1).normal(size=(2, 64, 64, 3)).astype(np.float32)
    expected = timm_resnetv2_logits(state, x)
    by_handle = keras_preact.ResNet50(weights=f"hf://{TIMM_REPO}")
    assert (by_handle.architecture.stem, by_handle.architecture.padding) == ("timm", "symmetric")
    assert_close(run(by_handle, x), expected)
    by_name = keras_preact.ResNet50(weights="imagenet")
    assert_close(run(by_name, x), expected)
    features = keras_preact.ResNet50(weights="imagenet", include_top=False, pooling=None)
    assert run(features, x).shape == (2, 2, 2, 2048)


def test_imagenet_is_named_only_for_the_models_that_have_it():
    with pytest.raises(ValueError, match=r"No 'imagenet' weights for resnet18: only resnet50, resnet101"):
        keras_preact.ResNet18(weights="imagenet")


def test_uncached_handle_offline_is_one_line_naming_the_handle(hf_cache):
    with pytest.raises(hub.WeightsUnavailableError) as error:
        keras_preact.ResNet50(weights="hf://someone/missing")
    message = str(error.value)
    assert "\n" not in message and "'hf://someone/missing'" in message
    assert "`hf download someone/missing`" in message and "HF_HUB_OFFLINE" in message
    assert isinstance(error.value, ValueError)
    with pytest.raises(hub.WeightsUnavailableError, match="hf download timm/resnetv2_101.a1h_in1k model.safetensors"):
        keras_preact.ResNet101(weights="imagenet")


def test_uncached_handle_offline_command_exits_2_with_one_line(hf_cache, tmp_path):
    # What the console script keras-preact-convert-weights runs (pyproject's [project.scripts]).
    command = [sys.executable, "-c", "import sys; from keras_preact_commands import convert_weights; "
               "sys.argv[0] = 'keras-preact-convert-weights'; sys.exit(convert_weights())"]
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        command + ["hf://someone/missing", "--model", "resnet50", "--out", str(tmp_path / "x.keras")],
        capture_output=True, text=True, timeout=300, cwd=str(tmp_path),
        env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hf_cache),
             "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])},
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "hf://someone/missing" in lines[0], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "x.keras").exists()


def small_model(num_classes=4):
    model = keras_preact.get_model("resnet8", num_classes=num_classes)
    x = np.random.default_rng(3).random((4, 32, 32, 3)).astype(np.float32)
    model(x, training=True)  # non-trivial BN statistics
    return model, x


def test_hf_repo_holding_a_preset_loads_as_a_preset(hf_cache, tmp_path):
    model, x = small_model()
    presets.save_to_preset(model, str(tmp_path / "preset"))
    files = {name: (tmp_path / "preset" / name).read_bytes()
             for name in ("config.json", "model.weights.h5", "metadata.json")}
    add_to_hf_cache(hf_cache, "someone/resnet8-preset", files)
    loaded = keras_preact.from_preset("hf://someone/resnet8-preset")
    np.testing.assert_array_equal(run(loaded, x), run(model, x))
    built = keras_preact.get_model("resnet8", weights="hf://someone/resnet8-preset")
    np.testing.assert_array_equal(run(built, x), run(model, x))
    with pytest.raises(ValueError, match="fixes num_classes|fixes shortcut"):
        keras_preact.get_model("resnet8", weights="hf://someone/resnet8-preset", shortcut="conv1x1")


def test_kaggle_handle_from_the_kagglehub_cache_versioned_and_offline(tmp_path, monkeypatch):
    kagglehub = pytest.importorskip("kagglehub")
    monkeypatch.setenv("KAGGLEHUB_CACHE", str(tmp_path / "kaggle"))
    model, x = small_model()
    base = tmp_path / "kaggle" / "models" / "someone" / "resnet8" / "keras" / "cifar"
    presets.save_to_preset(model, str(base / "2"))
    (base / "2.complete").touch()
    loaded = keras_preact.from_preset("kaggle://someone/resnet8/keras/cifar/2")  # no network
    np.testing.assert_array_equal(run(loaded, x), run(model, x))

    def no_network(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(kagglehub, "model_download", no_network)
    latest = keras_preact.from_preset("kaggle://someone/resnet8/keras/cifar")  # newest cached
    np.testing.assert_array_equal(run(latest, x), run(model, x))
    with pytest.raises(hub.WeightsUnavailableError) as error:
        keras_preact.from_preset("kaggle://someone/other/keras/cifar")
    assert "\n" not in str(error.value) and "kaggle://someone/other/keras/cifar" in str(error.value)


def test_handles_are_checked_before_any_download():
    with pytest.raises(ValueError, match="not a Hugging Face handle"):
        hub.resolve("hf://only-owner")
    with pytest.raises(ValueError, match="not a Kaggle model handle"):
        hub.resolve("kaggle://a/b")
