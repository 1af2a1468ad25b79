"""benchmarks/op_profile.py: op time by category from a real profiler trace, and the
``--profile`` table of benchmarks/training_speed.py."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

import trainer_runs
from keras_preact.registry import get_model

sys.path.insert(0, os.path.join(trainer_runs.ROOT, "benchmarks"))
import op_profile  # noqa: E402

SPEED = os.path.join(trainer_runs.ROOT, "benchmarks", "training_speed.py")


def _train_step(model):
    optimizer = keras.optimizers.SGD(0.1)
    x = tf.constant(np.random.RandomState(0).rand(8, 32, 32, 3).astype("float32"))
    y = tf.zeros((8,), tf.int32)

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = tf.cast(model(x, training=True), tf.float32)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
        optimizer.apply(tape.gradient(loss, model.trainable_weights), model.trainable_weights)
        return loss

    float(step())  # traced outside the profile
    return lambda: float(step())


@pytest.mark.parametrize("fused_bn", [True, False])
def test_batch_norm_is_found_fused_or_not(fused_bn):
    """The fused kernels by their op type; Keras' unfused BN (mean, variance, multiply-adds)
    by the layer its ops belong to. Either way BN is a visible share, and so is convolution."""
    model = get_model("resnet8", fused_bn=fused_bn)
    result = op_profile.profile_steps(_train_step(model), model, steps=2)
    shares = result["category_share"]
    assert set(shares) == set(op_profile.CATEGORIES)
    assert sum(shares.values()) == pytest.approx(100, abs=0.1)
    assert shares["conv"] > 20 and shares["batch_norm"] > 1
    assert result["op_seconds"] > 0 and result["profiled_steps"] == 2
    types = [t for t, _ in result["top_op_types"]]
    assert any("Conv2DBackpropFilter" in t for t in types)
    if not fused_bn:
        assert not any("BatchNorm" in t for t, _ in result["top_op_types"])  # found by layer


def test_categorize_by_type_then_by_layer():
    layers = {"bn2": "batch_norm", "conv1": "conv", "shortcut_zero_pad": "shortcut"}
    assert op_profile.categorize("m/u/bn2_1/FusedBatchNormV3", "_MklNativeFusedBatchNormEx", {}) == "batch_norm"
    assert op_profile.categorize("m/stage1_unit1_1/bn2_1/moments/mean", "Mean", layers) == "batch_norm"
    assert op_profile.categorize("gradient_tape/m/u/shortcut_zero_pad_1/Pad", "Pad", layers) == "shortcut"
    assert op_profile.categorize("m/u/conv1_1/Pad", "Pad", layers) == "conv"  # Torch padding of a conv
    assert op_profile.categorize("m/u/add", "AddV2", layers) == "other"


def test_the_residual_addition_is_other_in_the_folded_model_too():
    from keras_preact.export import fold_batch_norm

    folded = fold_batch_norm(get_model("resnet8"))
    layers = op_profile.layer_categories(folded)
    combine = [l.name for l in folded._flatten_layers() if type(l).__name__ == "ShortcutCombine"]
    assert combine and not any(name in layers for name in combine)
    assert op_profile.categorize(f"m/{combine[0]}_1/add", "AddV2", layers) == "other"


def test_read_op_times_names_a_folder_without_a_trace(tmp_path):
    with pytest.raises(FileNotFoundError, match="No profiler trace"):
        op_profile.read_op_times(str(tmp_path))


@pytest.mark.slow
def test_training_speed_profile_table(tmp_path):
    output = tmp_path / "speed.json"
    process = subprocess.run(
        [sys.executable, SPEED, "--quick", "--variants=plain,fused", "--profile", f"--output={output}"],
        capture_output=True, text=True, env=trainer_runs.env(), cwd=trainer_runs.ROOT, timeout=600)
    assert process.returncode == 0, process.stderr[-3000:]
    assert "op time by category" in process.stdout
    rows = json.loads(output.read_text())["results"]
    assert [r["variant"] for r in rows] == ["plain", "fused"]
    for row in rows:
        assert row["profile"]["category_share"]["batch_norm"] > 0
        assert f"resnet20 train {row['variant']}: " in process.stdout


def test_training_speed_refuses_an_unknown_variant(tmp_path):
    process = subprocess.run([sys.executable, SPEED, "--quick", "--variants=plain,turbo",
                              f"--output={tmp_path / 'x.json'}"],
                             capture_output=True, text=True, env=trainer_runs.env(), timeout=120)
    assert process.returncode == 2 and "argument --variants: Unknown variant 'turbo'" in process.stderr
