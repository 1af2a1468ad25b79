"""keras_preact.cli.train: flags -> Settings (each bad flag named by its FlagError), run(settings)
in-process, main's exit statuses, and the real trainer scripts end to end in a few processes.

Runs that need a fresh TensorFlow (2 logical CPU devices for a mirrored run, kill -9) start
``trainers/cifar.py`` in a subprocess (tests/trainer_runs.py); everything else runs here.
"""

import ast
import concurrent.futures
import dataclasses
import inspect
import io
import json
import math
import os
import pathlib
import random
import re
import signal
import time

import pytest
import numpy as np
import tensorflow as tf
from absl import flags

import trainer_runs
from keras_preact import registry
from keras_preact.cli import train
from keras_preact.training import DivergenceError, read_metrics
from keras_preact.training import run_config
from keras_preact.training import strategy as strategy_lib

PACKAGE = pathlib.Path(train.__file__).resolve().parents[1]


def parse(family, *argv):
    flag_values = flags.FlagValues()
    train.define_flags(family, flag_values)
    flag_values(["trainer", *argv])
    return flag_values


def check(family, *argv):
    return train.config_from_flags(family, parse(family, *argv), argv=("trainer", *argv))


@pytest.fixture(scope="module")
def cifar_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar_folder")
    return trainer_runs.make_image_folder(root, {"train": 16, "test": 4})


# --- flags -> Settings ------------------------------------------------------------------------


def test_cifar_defaults_train_the_embedded_sample():
    config = check("cifar")
    assert config.data.source == "cifar10_sample" and config.model_name == "resnet20"
    assert (config.data.dataset, config.data.data_dir, config.data.flag) == ("cifar10_sample", None, "dataset")
    assert config.recipe.name == "cifar10_sample" and config.model_kwargs["order"] == "full_preact"
    assert config.run.model_dir == os.path.join("runs", "cifar10_sample_resnet20")
    assert (config.data.train_split, config.data.eval_split, config.recipe.eval_sizes) == ("train", "test", ())


def test_real_datasets_get_the_paper_recipe():
    cifar = check("cifar", "--dataset=cifar10", "--model=resnet164")
    assert cifar.recipe.name == "cifar" and cifar.recipe.total_steps(390) == 64000
    imagenet = check("imagenet", "--model=resnet200")
    assert imagenet.recipe.name == "imagenet" and imagenet.recipe.eval_sizes == (224, 320)
    assert imagenet.recipe.lr_reference_batch == 256 and imagenet.data.eval_split == "validation"


def test_overrides_reach_the_recipe_and_the_model(tmp_path):
    for split in ("train", "test"):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
    settings = check(
        "cifar", f"--data_dir={tmp_path}", "--model=resnet110", "--unit=single", "--preact=false",
        "--shortcut=constant_scaling", "--lr_schedule=cosine", "--label_smoothing=0.1",
        "--decay_bn=false", "--epochs=3", "--warmup_steps=400", "--batch_size=64", "--nesterov",
    )
    assert settings.data.source == str(tmp_path) and settings.data.flag == "data_dir"
    assert settings.data.data_dir == str(tmp_path) and settings.recipe.name == "cifar"
    assert settings.model_name == "resnet110_1layer"  # the registry's name for Table 2's net
    architecture = {k: v for k, v in settings.model_kwargs.items() if k != "dtype_policy"}  # auto: per CPU
    assert architecture == {"order": "original", "shortcut": "constant_scaling", "unit": "single",
                            "data_format": "channels_last"}  # explicit: the trainers' images are NHWC
    assert settings.run.model_dir == os.path.join("runs", f"{tmp_path.name}_resnet110_1layer")
    recipe = settings.recipe
    assert (recipe.schedule, recipe.label_smoothing, recipe.decay_bn, recipe.nesterov) == ("cosine", 0.1, False, True)
    assert (recipe.epochs, recipe.train_steps, recipe.warmup_steps, recipe.batch_size) == (3, None, 400, 64)


def test_every_run_value_is_in_the_config(tmp_path):
    argv = (
        "--strategy=mirrored", "--cpu_devices=2", "--sync_bn", "--tpu=grpc://1.2.3.4:8470",
        "--checkpoint_every=5", "--keep_checkpoints=2", "--log_every=3", "--eval_every=7",
        "--seed=4", "--export", f"--export_dir={tmp_path / 'exports'}", f"--model_dir={tmp_path / 'run'}",
        f"--tfds_dir={tmp_path / 'tfds'}", "--train_split=train[:90%]", "--eval_split=train[90%:]",
        "--strict", "--divergence_factor=50", "--divergence_window=5", "--input=stream", "--worker_timeout=30", "--dtype_policy=float32",
    )
    config = check("cifar", "--dataset=cifar100", *argv)
    assert config.family == "cifar" and config.model_name == "resnet20"
    assert config.argv == ("trainer", "--dataset=cifar100", *argv)
    sections = config.to_dict()
    assert sections["data"] == {
        "dataset": "cifar100", "data_dir": None, "tfds_dir": str(tmp_path / "tfds"), "manual_dir": None,
        "train_split": "train[:90%]", "eval_split": "train[90%:]", "input": "stream", "augment": "scale",
        "color": True, "strict": True,
    }
    assert sections["distribution"] == {"strategy": "mirrored", "cpu_devices": 2, "tpu": "grpc://1.2.3.4:8470",
                                        "worker_timeout": 30.0, "sync_bn": True, "keras_distribution": "auto",
                                        "coordinator_address": None, "num_processes": None, "process_id": None}
    assert sections["checkpointing"] == {"checkpoint_every": 5, "keep_checkpoints": 2}
    assert sections["run"] == {
        "model_dir": str(tmp_path / "run"), "log_every": 3, "eval_every": 7, "seed": 4, "export": True,
        "export_dir": str(tmp_path / "exports"), "divergence_factor": 50.0, "divergence_window": 5,
    }
    assert sections["speed"] == {"jit_compile": False, "steps_per_loop": None}  # None: 1, or 100 under TPUStrategy
    assert (config.model.init_weights, config.model.dtype_policy, config.model.dtype_auto) == (None, "float32", False)
    imagenet = check("imagenet", f"--manual_dir={tmp_path}", "--augment=inception", "--nocolor",
                     "--eval_sizes=320")
    assert (imagenet.data.manual_dir, imagenet.data.augment, imagenet.data.color, imagenet.recipe.eval_sizes) == (
        str(tmp_path), "inception", False, (320,))


def test_strict_in_memory_names_the_bad_file_before_training(tmp_path):
    folder = trainer_runs.make_image_folder(tmp_path, {"train": 3, "test": 1})
    (tmp_path / "train" / "dog" / "broken.jpg").write_bytes(b"not an image")
    settings = check("cifar", f"--data_dir={folder}", "--strict", "--batch_size=2")
    with pytest.raises(train.FlagError, match=r"--strict: .*cannot decode.*broken\.jpg"):
        train.build_data(settings, 2)
    _, info, _ = train.build_data(check("cifar", f"--data_dir={folder}", "--batch_size=2"), 2)
    assert info.bad_files.count == 1 and info.num_examples == 9  # skipped and counted


def test_fast_recipe_and_its_levers_are_flags():
    settings = check("cifar", "--recipe=fast", "--epochs=5")
    fast = settings.recipe
    assert (fast.name, fast.nesterov, fast.label_smoothing, fast.schedule, fast.decay_bn) == (
        "fast", True, 0.1, "cosine", False)
    assert (fast.weight_average, fast.eval_flip, fast.epochs) == (0.999, True, 5)
    assert (fast.eval_translate, fast.eval_tta) == (False, "flip")
    off = check("cifar", "--recipe=fast", "--weight_average=0", "--noeval_flip").recipe
    assert (off.weight_average, off.eval_flip, off.eval_tta) == (0.0, False, "none")
    both = check("cifar", "--recipe=fast", "--eval_translate").recipe
    assert (both.eval_flip, both.eval_translate, both.eval_tta) == (True, True, "flip_translate")
    paper = check("cifar").recipe  # the paper's recipe stays the default, without the levers
    assert (paper.name, paper.weight_average, paper.eval_flip) == ("cifar10_sample", 0.0, False)
    assert check("cifar").data.input == "auto" and check("imagenet").data.input == "stream"
    with pytest.raises(flags.IllegalFlagValueError):  # the ImageNet trainer has no CIFAR recipe
        check("imagenet", "--recipe=fast")


@pytest.mark.parametrize("flag, message", [
    ("--weight_average=1", "--weight_average: must be in [0, 1), got 1.0"),
    ("--weight_average=-0.1", "--weight_average: must be in [0, 1), got -0.1"),
])
def test_weight_average_range(flag, message):
    with pytest.raises(train.FlagError, match=re.escape(message)):
        check("cifar", flag)


def test_input_memory_refuses_images_that_are_not_cifar_sized(tmp_path):
    folder = trainer_runs.make_image_folder(tmp_path / "big", {"train": 2, "test": 1}, size=96)
    settings = check("cifar", f"--data_dir={folder}", "--input=memory", "--batch_size=2")
    with pytest.raises(train.FlagError, match=r"--input: .*imagenet_224.* not 'cifar'"):
        train.build_data(settings, 2)
    auto = check("cifar", f"--data_dir={folder}", "--batch_size=2")  # auto streams it instead
    batches, info, _ = train.build_data(auto, 2)
    assert isinstance(batches, tf.data.Dataset) and info.preprocessing == "imagenet_224"
    small = check("cifar", f"--data_dir={trainer_runs.make_image_folder(tmp_path / 'small', {'train': 4, 'test': 2})}",
                  "--batch_size=2")
    batches, info, evals = train.build_data(small, 2)
    assert callable(batches) and info.num_examples == 12 and info.augment == "cifar"
    images, labels = next(iter(batches(0)))
    assert images.shape == (2, 32, 32, 3) and images.dtype == tf.float32
    assert sum(int(y.shape[0]) for _, y in evals["test"]) == 6


@pytest.mark.parametrize(
    "name", ["resnet8", "ResNet-164", "resnet_1001", "resnet110_1layer", "RESNET50", "resnet26"]
)
def test_model_names_resolve_through_the_registry(name):
    settings = check("cifar", f"--model={name}")
    assert settings.model_name == registry.resolve(name).name


def test_stacked_stage_flags_reach_the_model():
    settings = check("cifar", "--model=resnet1001", "--stacked_stages", "--recompute")
    assert settings.model_kwargs["stacked_stages"] is True
    assert settings.model_kwargs["recompute"] is True


def test_shortcut_options_reach_the_model():
    """Table 1's rows that differ only in an option: each flag changes the network built."""
    settings = check("cifar", "--model=resnet8", "--shortcut=shortcut_only_gating", "--gate_bias_init=0")
    assert settings.model_kwargs["gate_bias_init"] == 0.0
    kwargs = {k: v for k, v in settings.model_kwargs.items() if k != "dtype_policy"}
    model = registry.get_model(settings.model_name, **kwargs)
    gate_biases = [v for v in model.weights if "gate" in v.path and v.path.endswith("bias")]
    assert gate_biases and all(np.all(v.numpy() == 0.0) for v in gate_biases)
    default = registry.get_model("resnet8", shortcut="shortcut_only_gating")
    assert all(np.all(v.numpy() == -6.0) for v in default.weights
               if "gate" in v.path and v.path.endswith("bias"))

    settings = check("cifar", "--shortcut=constant_scaling", "--scale_residual", "--shortcut_scale=0.25")
    assert (settings.model_kwargs["scale_residual"], settings.model_kwargs["shortcut_scale"]) == (True, 0.25)
    settings = check("cifar", "--shortcut=dropout", "--dropout_rate=0.2")
    assert settings.model_kwargs["dropout_rate"] == 0.2
    assert "dropout_rate" not in check("cifar", "--shortcut=dropout").model_kwargs  # the unit's default


BAD_FLAGS = {
    "unknown_model": (("cifar", "--model=vgg16"), "model", "Unknown model 'vgg16'"),
    "bad_depth": (("cifar", "--model=resnet21"), "model", "Impossible depth 21"),
    "bad_depth_for_unit": (("cifar", "--model=resnet32", "--unit=bottleneck"), "model", "Impossible depth 32"),
    "unit_on_imagenet_net": (("imagenet", "--model=resnet50", "--unit=basic"), "unit", "fixes its unit kind"),
    "unit_on_1layer_alias": (("cifar", "--model=resnet110_1layer", "--unit=basic"), "unit", "single units"),
    "order_contradicts_preact": (("cifar", "--preact=false", "--order=full_preact"), "order", "contradicts"),
    "recompute_alone": (("cifar", "--recompute"), "recompute", "needs stacked_stages"),
    "stacked_dropout": (("cifar", "--stacked_stages", "--shortcut=dropout"), "stacked_stages", "dropout"),
    "stacked_sync_bn": (("cifar", "--stacked_stages", "--sync_bn"), "sync_bn", "not supported"),
    "missing_data": (("cifar", "--data_dir=/nonexistent/cifar"), "data_dir", "no folder '/nonexistent/cifar/train'"),
    "steps_and_epochs": (("cifar", "--epochs=2", "--train_steps=10"), "epochs", "not both"),
    "bad_boundaries": (("cifar", "--lr_boundaries=half"), "lr_boundaries", "Bad learning-rate boundary 'half'"),
    "bad_eval_size": (("imagenet", "--eval_sizes=256"), "eval_sizes", "224 and 320"),
    "eval_size_not_a_number": (("imagenet", "--eval_sizes=big"), "eval_sizes", "integers"),
    "zero_batch": (("cifar", "--batch_size=0"), "batch_size", ">= 1"),
    "zero_cpu_devices": (("cifar", "--cpu_devices=0"), "cpu_devices", ">= 1"),
    "negative_checkpoint_every": (("cifar", "--checkpoint_every=-1"), "checkpoint_every", ">= 0"),
    "zero_lr": (("cifar", "--lr=0"), "lr", "positive"),
    "label_smoothing_one": (("cifar", "--label_smoothing=1"), "label_smoothing", r"\[0, 1\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_FLAGS))
def test_bad_flags_name_the_flag(case):
    args, flag, message = BAD_FLAGS[case]
    with pytest.raises(train.FlagError, match=message) as error:
        check(*args)
    assert error.value.flag == flag and str(error.value).startswith(f"--{flag}: ")
    assert "\n" not in str(error.value)


def test_unknown_strategy_is_refused_while_parsing():
    with pytest.raises(flags.IllegalFlagValueError, match="horovod"):
        parse("cifar", "--strategy=horovod")


# --- structured errors -> flags -------------------------------------------------------------


def test_every_strategy_error_argument_has_a_flag():
    assert set(train.STRATEGY_ARGUMENT_FLAGS) == set(strategy_lib.ERROR_ARGUMENTS)
    with pytest.raises(ValueError, match="Unknown StrategyError argument"):
        strategy_lib.StrategyError("message", "batch")


def test_uneven_batch_is_blamed_on_batch_size():
    two_replicas = type("TwoReplicas", (), {"num_replicas_in_sync": 2})()
    with pytest.raises(strategy_lib.StrategyError) as error:
        strategy_lib.per_replica_batch(127, two_replicas)
    assert train.STRATEGY_ARGUMENT_FLAGS[error.value.argument] == "batch_size"


def test_run_blames_strategy_when_there_is_no_tpu(monkeypatch, tmp_path):
    monkeypatch.delenv("TPU_NAME", raising=False)
    monkeypatch.setattr(strategy_lib, "local_tpu_present", lambda: False)
    settings = check("imagenet", "--strategy=tpu", f"--model_dir={tmp_path}")
    with pytest.raises(train.FlagError, match="no TPU on this machine") as error:
        train.run(settings)
    assert error.value.flag == "strategy" and not os.listdir(tmp_path)


def test_run_blames_cpu_devices_once_tensorflow_has_started(tmp_path):
    have = len(tf.config.list_logical_devices("CPU"))  # starts the runtime: the layout is fixed
    settings = check("cifar", f"--cpu_devices={have + 1}", f"--model_dir={tmp_path}")
    with pytest.raises(train.FlagError, match="already initialised") as error:
        train.run(settings)
    assert error.value.flag == "cpu_devices"


def test_unreadable_data_is_blamed_on_the_flag_that_chose_it(tmp_path):
    for split in ("train", "test"):
        for name in ("cat", "dog"):  # two classes, but no image in them
            (tmp_path / "empty" / split / name).mkdir(parents=True)
    folder = check("cifar", f"--data_dir={tmp_path / 'empty'}", f"--model_dir={tmp_path / 'a'}")
    with pytest.raises(train.FlagError) as error:
        train.run(folder)
    assert error.value.flag == "data_dir"
    sample = check("cifar", "--eval_split=no_such_split", f"--model_dir={tmp_path / 'b'}")
    with pytest.raises(train.FlagError) as error:
        train.run(sample)
    assert error.value.flag == "dataset"


# --- run(settings) in-process ---------------------------------------------------------------


def test_run_trains_records_and_resumes_in_process(tmp_path):
    argv = ("--model=resnet8", "--train_steps=3", "--batch_size=32", "--log_every=1", "--seed=3",
            "--lr_boundaries=0.5", f"--model_dir={tmp_path}")
    settings = check("cifar", *argv)
    out = io.StringIO()
    results = train.run(settings, stream=out)

    assert set(results) == {"test"} and results["test"]["count"] == 1000
    assert 0.0 <= results["test"]["error"] <= 1.0 and math.isfinite(results["test"]["loss"])
    text = out.getvalue()
    assert "resnet8 (75,770 parameters) on cifar10_sample train (5000 images, 10 classes, 32x32)" in text
    assert f"Final test error: {100 * results['test']['error']:.2f}% " in text and "after 3 steps" in text

    record = json.loads((tmp_path / "results.json").read_text())
    assert record["final"] == results  # the returned evaluations, exactly
    assert (record["model"], record["steps"], record["global_batch"], record["seed"]) == ("resnet8", 3, 32, 3)
    assert record["parameters"] == registry.get_model("resnet8").count_params() == 75770
    assert record["recipe"]["train_steps"] == 3 and record["recipe"]["lr_boundaries"] == ["0.5"]
    assert record["source"] == "cifar10_sample" and record["argv"] == ["trainer", *argv]
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [int(r["step"]) for r in rows if r["train_loss"]] == [1, 2, 3]
    [final] = [r for r in rows if r["test_error"]]
    assert (int(final["step"]), final["eval_name"]) == (3, "test")
    assert float(final["test_error"]) == pytest.approx(results["test"]["error"])
    assert (tmp_path / "labels.txt").read_text().startswith("airplane\nautomobile\n")
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-3")

    longer = dataclasses.replace(settings, recipe=settings.recipe.replace(train_steps=5))
    out = io.StringIO()
    train.run(longer, stream=out)
    assert "at step 3 " in out.getvalue() and "after 5 steps" in out.getvalue()
    assert json.loads((tmp_path / "results.json").read_text())["steps"] == 5
    assert [int(r["step"]) for r in read_metrics(tmp_path / "metrics.csv") if r["train_loss"]] == [1, 2, 3, 4, 5]


def test_imagenet_run_evaluates_at_224_and_320(tmp_path):
    root = trainer_runs.make_image_folder(tmp_path / "data", {"train": 4, "validation": 2}, size=48)
    settings = check(
        "imagenet", f"--data_dir={root}", "--model=resnet18", "--batch_size=4", "--train_steps=2",
        "--augment=inception", f"--model_dir={tmp_path / 'run'}",
    )
    out = io.StringIO()
    results = train.run(settings, stream=out)
    assert set(results) == {"validation@224", "validation@320"}
    assert all(result["count"] == 6 for result in results.values())
    assert "lr 0.0015625" in out.getvalue()  # 0.1 for 256, scaled to the batch of 4
    for size in (224, 320):
        assert re.search(rf"Final validation@{size} error: .* on 6 images after 2 steps", out.getvalue())
    rows = read_metrics(tmp_path / "run" / "metrics.csv")
    assert {r["eval_name"] for r in rows if r["test_error"]} == {"validation@224", "validation@320"}
    assert json.loads((tmp_path / "run" / "results.json").read_text())["final"] == results


def test_epochs_on_a_folder_decay_the_rate_at_half_and_three_quarters(cifar_folder, tmp_path):
    """The CIFAR recipe's drops at 32k and 48k of 64k iterations ([1] section 4.2) move to 50 %
    and 75 % of a 3-epoch run; read back from the logged learning rate. A warm-up (the paper's
    400 iterations at 0.01 for ResNet-110) keeps its length in iterations, and the banner says so."""
    settings = check(
        "cifar", f"--data_dir={cifar_folder}", "--model=resnet8", "--batch_size=8", "--epochs=3",
        "--log_every=1", "--checkpoint_every=0", f"--model_dir={tmp_path}", "--warmup_steps=2",
    )
    assert settings.recipe.lr_boundaries == ("0.5", "0.75")
    out = io.StringIO()
    train.run(settings, stream=out)
    rows = [r for r in read_metrics(tmp_path / "metrics.csv") if r["train_loss"]]
    rates = [float(r["learning_rate"]) for r in rows]
    assert len(rates) == 18  # 48 images / 8 = 6 steps per epoch
    # Row k is logged after step k, trained at iteration k - 1: 2 warm-up steps at 0.01, then
    # 7 at 0.1, 5 at 0.01, 4 at 0.001.
    assert rates == pytest.approx([0.01] * 2 + [0.1] * 7 + [0.01] * 5 + [0.001] * 4, rel=1e-6)
    assert "step /10 at [9, 14] (the cifar recipe's 32000, 48000 of 64000 steps, moved to the same " \
           "fractions 0.5, 0.75 of this run), after a warm-up of 2 steps at 0.01" in out.getvalue()


@pytest.mark.parametrize("flag, value, message", [
    ("lr_boundaries", "9,18", "falls at step 18, after the end of the run .18 steps."),
    ("lr_boundaries", "3ep", "after the end of the run"),
    ("warmup_steps", "18", "warm-up of 18 steps does not end inside the run .18 steps."),
])
def test_schedule_that_does_not_fit_the_run_names_the_flag(cifar_folder, tmp_path, flag, value, message):
    settings = check("cifar", f"--data_dir={cifar_folder}", "--batch_size=8", "--epochs=3",
                     f"--{flag}={value}", f"--model_dir={tmp_path}")
    with pytest.raises(train.FlagError, match=message) as error:
        train.run(settings, stream=io.StringIO())
    assert error.value.flag == flag and not os.listdir(tmp_path)


def test_imagenet_epoch_boundaries_follow_the_run():
    settings = check("imagenet", "--epochs=9")
    assert [float(b) for b in settings.recipe.lr_boundaries] == pytest.approx([1 / 3, 2 / 3])
    assert check("imagenet").recipe.lr_boundaries == ("30ep", "60ep")


@pytest.mark.slow
def test_export_at_the_end(cifar_folder, tmp_path):
    settings = check(
        "cifar", f"--data_dir={cifar_folder}", "--model=resnet8", "--batch_size=8", "--train_steps=2",
        f"--model_dir={tmp_path / 'run'}", "--export", f"--export_dir={tmp_path / 'exports'}",
    )
    out = io.StringIO()
    train.run(settings, stream=out)
    version = tmp_path / "exports" / "resnet8" / "1"
    assert f"Exported to {version}" in out.getvalue()
    assert (version / "saved_model.pb").exists()
    assert (version / "assets.extra" / "labels.txt").read_text().split() == ["cat", "dog", "ship"]


@pytest.mark.slow
def test_mixed_precision_xla_loop_run_exports_float32_signatures(cifar_folder, tmp_path):
    """A model trained under mixed_bfloat16 (with XLA, 2 steps per loop) exports the float32
    serving signatures of a float32 model, with the trained weights."""
    settings = check(
        "cifar", f"--data_dir={cifar_folder}", "--model=resnet8", "--batch_size=8", "--train_steps=4",
        "--dtype_policy=mixed_bfloat16", "--jit_compile", "--steps_per_loop=2", "--log_every=2",
        f"--model_dir={tmp_path / 'run'}", "--export", f"--export_dir={tmp_path / 'exports'}",
    )
    assert settings.model_kwargs["dtype_policy"] == "mixed_bfloat16"
    assert (settings.speed.jit_compile, settings.speed.steps_per_loop) == (True, 2)
    out = io.StringIO()
    train.run(settings, stream=out)
    assert "; mixed_bfloat16; XLA; up to 2 steps per loop; batch 8" in out.getvalue()
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.csv") if r["train_loss"]]
    assert [int(r["step"]) for r in rows] == [2, 4] and all(math.isfinite(float(r["train_loss"])) for r in rows)
    loaded = tf.saved_model.load(str(tmp_path / "exports" / "resnet8" / "1"))
    predict = loaded.signatures["predict_images"]
    assert predict.structured_input_signature[1]["images"].dtype == tf.float32
    images = tf.random.stateless_uniform((2, 32, 32, 3), (1, 2))
    outputs = predict(images=images)
    assert all(t.dtype in (tf.float32, tf.int32, tf.int64, tf.string) for t in outputs.values())
    assert any(t.dtype == tf.float32 for t in outputs.values())


def test_dtype_policy_auto_is_bfloat16_only_on_bf16_hardware(monkeypatch):
    monkeypatch.setattr(run_config.hardware, "cpu_has_bf16", lambda: True)
    bf16 = check("cifar")
    assert bf16.model_kwargs["dtype_policy"] == "mixed_bfloat16" and bf16.model.dtype_auto
    monkeypatch.setattr(run_config.hardware, "gpu_visible", lambda backend=None: True)
    assert "dtype_policy" not in check("cifar").model_kwargs  # a GPU: float32 unless asked
    monkeypatch.setattr(run_config.hardware, "cpu_has_bf16", lambda: False)
    assert "dtype_policy" not in check("cifar").model_kwargs  # float32: the models' default
    assert run_config.resolve_dtype_policy("auto", "tpu") == "mixed_bfloat16"
    explicit = check("cifar", "--dtype_policy=float32")
    assert "dtype_policy" not in explicit.model_kwargs and not explicit.model.dtype_auto


def test_speed_flags_defaults_and_conflicts():
    settings = check("cifar", "--dtype_policy=float32")
    assert (settings.speed.jit_compile, settings.speed.steps_per_loop) == (False, None)
    assert settings.speed.loop_length(settings.distribution.strategy) == 1
    assert settings.speed.loop_length("tpu") == run_config.TPU_STEPS_PER_LOOP
    assert check("cifar", "--dtype_policy=mixed_float16").model_kwargs["dtype_policy"] == "mixed_float16"
    for argv, flag, message in [
        (("--jit_compile", "--sync_bn"), "jit_compile", "not with --sync_bn"),
        (("--steps_per_loop=0",), "steps_per_loop", ">= 1"),
    ]:
        with pytest.raises(train.FlagError, match=message) as error:
            check("cifar", *argv)
        assert error.value.flag == flag
    with pytest.raises(flags.IllegalFlagValueError):
        parse("cifar", "--dtype_policy=float64")


# --- main: exit statuses --------------------------------------------------------------------


def test_main_trains_the_default_model_on_the_embedded_sample(tmp_path):
    argv = ("--train_steps=2", "--batch_size=16", f"--model_dir={tmp_path}")
    out = io.StringIO()
    train.main("cifar", parse("cifar", *argv), argv=argv, stream=out)
    text = out.getvalue()
    assert "resnet20" in text and "cifar10_sample train (5000 images, 10 classes, 32x32)" in text
    assert re.search(r"Final test error: \d+\.\d\d% \(accuracy \d+\.\d\d%\) on 1000 images after 2 steps", text)
    assert (tmp_path / "curves.png").stat().st_size > 0


def test_main_bad_flag_is_one_line_and_exit_2(capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_:
        train.main("cifar", parse("cifar", "--model=resnet21", f"--model_dir={tmp_path}"), argv=())
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --model: ") and "Impossible depth 21" in err and err.count("\n") == 1
    assert not os.listdir(tmp_path)


@pytest.mark.slow
def test_main_divergence_is_exit_3(capsys, cifar_folder, tmp_path):
    flag_values = parse("cifar", f"--data_dir={cifar_folder}", "--model=resnet8", "--batch_size=8",
                        "--train_steps=4", "--lr=1e30", f"--model_dir={tmp_path}")
    with pytest.raises(SystemExit) as exit_:
        train.main("cifar", flag_values, argv=(), stream=io.StringIO())
    assert exit_.value.code == 3
    err = capsys.readouterr().err
    assert err.startswith("error: Training diverged at step ") and "no known-good checkpoint" in err
    assert not (tmp_path / "results.json").exists()
    assert issubclass(DivergenceError, RuntimeError)


# --- structure ------------------------------------------------------------------------------


def test_only_config_from_flags_reads_flags():
    source = inspect.getsource(train)
    assert "FLAGS." not in source
    for function in (train.run, train.build_data, train.write_results):
        assert "flag_values" not in inspect.getsource(function)
    assert "flag_values" not in inspect.getsource(run_config) and "absl" not in inspect.getsource(run_config)


def test_cli_is_the_top_layer_and_imports_at_module_top():
    """No lower module imports keras_preact.cli; the CLI has no function-local package imports.

    The console commands' entry points, which import their command's module only when it runs
    (so keras-preact-fit never needs TensorFlow), live outside the package, in
    keras_preact_commands.py (tests/test_console_scripts.py runs them).
    """
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        imports = [node for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))]
        names = [node.module or "" for node in imports if isinstance(node, ast.ImportFrom)]
        names += [alias.name for node in imports if isinstance(node, ast.Import) for alias in node.names]
        if "cli" not in path.relative_to(PACKAGE).parts:
            assert not [n for n in names if n.startswith("keras_preact.cli")], path
        else:
            top = {id(node) for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))}
            local = [node for node in imports if id(node) not in top]
            assert not local, (path, [ast.unparse(node) for node in local])


# --- the real trainer scripts, end to end ---------------------------------------------------

PROCESS_CASES = {
    "bad_depth": (("cifar", "--model=resnet21"), "error: --model: ", "Impossible depth 21"),
    "batch_not_divisible": (
        ("cifar", "--strategy=mirrored", "--cpu_devices=2", "--batch_size=127"),
        "error: --batch_size: ", "--batch_size=127 is not divisible by the 2 replicas",
    ),
}


@pytest.fixture(scope="module")
def outcomes():
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(PROCESS_CASES)) as pool:
        futures = {
            name: pool.submit(trainer_runs.run, args[0], *args[1:], timeout=90)
            for name, (args, _, _) in PROCESS_CASES.items()
        }
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("case", sorted(PROCESS_CASES))
def test_trainer_process_fails_fast_with_one_line(outcomes, case):
    code, out, err, seconds = outcomes[case]
    _, prefix, message = PROCESS_CASES[case]
    assert code == 2, (out, err[-2000:])
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(prefix) and message in errors[0], err[-2000:]
    assert seconds < 60  # the TensorFlow import dominates; no model is built, no data read
    assert "step " not in out


@pytest.mark.slow
def test_mirrored_folder_run_then_resume(cifar_folder, tmp_path):
    flags_ = [
        f"--data_dir={cifar_folder}", "--strategy=mirrored", "--cpu_devices=2", "--batch_size=8",
        "--log_every=1", f"--model_dir={tmp_path}", "--lr_boundaries=0.5",
        "--model=resnet8",  # any CIFAR depth 6n+2 is accepted: the smallest, for speed
    ]
    code, out, err, _ = trainer_runs.run("cifar", *flags_, "--train_steps=4")
    assert code == 0, err[-3000:]
    assert "strategy mirrored with 2 replica(s)" in out and "Final test error" in out
    assert "3 classes" in out
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")).endswith("ckpt-4")
    code, out, err, _ = trainer_runs.run("cifar", *flags_, "--train_steps=7")
    assert code == 0, err[-3000:]
    assert "at step 4 (epoch 0, batch 4)" in out and "after 7 steps" in out
    rows = read_metrics(tmp_path / "metrics.csv")
    assert [int(r["step"]) for r in rows if r["train_loss"]] == list(range(1, 8))
    assert os.listdir(tmp_path / "tensorboard")
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["steps"] == 7 and record["argv"][1:] == [*flags_, "--train_steps=7"]


def kill_9_after_checkpoint(process, checkpoint_dir, step: int, delay: float = 0.0) -> int:
    """SIGKILL ``process`` ``delay`` seconds after it saved a checkpoint at ``step`` or later
    (whatever it is doing then, mid-step or mid-save); the newest checkpoint's step after it."""
    deadline = time.monotonic() + 120
    try:
        while time.monotonic() < deadline:
            latest = tf.train.latest_checkpoint(str(checkpoint_dir))
            if latest and int(latest.rsplit("-", 1)[1]) >= step:
                break
            time.sleep(0.05)
        time.sleep(delay)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stdout.close()
        process.stderr.close()
    return int(tf.train.latest_checkpoint(str(checkpoint_dir)).rsplit("-", 1)[1])


@pytest.mark.slow
def test_kill_9_loses_at_most_the_work_since_the_last_checkpoint(cifar_folder, tmp_path):
    flags_ = [
        f"--data_dir={cifar_folder}", "--batch_size=8", "--checkpoint_every=3", "--log_every=1",
        # A constant rate, so the killed run and the shorter resumed one share their schedule
        # (a boundary past the end of the resumed run would be refused; fractions would move).
        f"--model_dir={tmp_path}", "--lr_decay=1", "--model=resnet8",
    ]
    process = trainer_runs.start("cifar", *flags_, "--train_steps=100000")
    saved = kill_9_after_checkpoint(process, tmp_path / "checkpoints", 6)
    assert saved >= 6
    code, out, err, _ = trainer_runs.run("cifar", *flags_, f"--train_steps={saved + 2}")
    assert code == 0, err[-3000:]
    assert f"at step {saved} " in out and f"after {saved + 2} steps" in out


def final_model_tensors(run_dir) -> dict:
    reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(str(run_dir / "checkpoints")))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if name.startswith(("model/", "averaged/"))}


@pytest.mark.slow
def test_kill_9_at_a_random_step_then_resume_gives_bit_identical_weights(cifar_folder, tmp_path):
    """The real trainer killed with SIGKILL at a random moment and restarted with the
    same command ends with the same weights, bit for bit, as a run never interrupted (the input
    is a function of the seed and the step: --input=memory, the default for CIFAR-sized data)."""
    # The kill comes after a checkpoint at step 4..20 plus up to 0.5 s: 40 more steps leave room
    # for a loaded machine, where the watcher sees the checkpoint late (30 steps once were not).
    steps = 60
    flags_ = [f"--data_dir={cifar_folder}", "--batch_size=8", "--checkpoint_every=4", "--log_every=1",
              "--model=resnet8", "--recipe=fast", f"--train_steps={steps}"]
    code, out, err, _ = trainer_runs.run("cifar", *flags_, f"--model_dir={tmp_path / 'straight'}")
    assert code == 0, err[-3000:]
    kill_after = random.Random().randint(4, 20)  # a checkpoint at least this late, then a random delay
    delay = random.Random().uniform(0.0, 0.5)
    process = trainer_runs.start("cifar", *flags_, f"--model_dir={tmp_path / 'killed'}")
    saved = kill_9_after_checkpoint(process, tmp_path / "killed" / "checkpoints", kill_after, delay)
    assert process.returncode == -signal.SIGKILL
    assert kill_after <= saved < steps, (kill_after, saved)
    code, out, err, _ = trainer_runs.run("cifar", *flags_, f"--model_dir={tmp_path / 'killed'}")
    assert code == 0, err[-3000:]
    assert f"at step {saved} " in out, out
    straight, resumed = final_model_tensors(tmp_path / "straight"), final_model_tensors(tmp_path / "killed")
    assert straight.keys() == resumed.keys() and any(k.startswith("averaged/") for k in straight)
    for name, value in straight.items():
        assert np.array_equal(value, resumed[name]), (name, kill_after, saved, delay)
    assert json.loads((tmp_path / "straight" / "results.json").read_text())["final"] == json.loads(
        (tmp_path / "killed" / "results.json").read_text())["final"]


def test_lr_1e6_stops_within_a_few_steps_names_a_finite_checkpoint_that_resumes(capsys, tmp_path):
    """A run that explodes: 10 sane warm-up steps, then --lr=1e6 from step 11."""
    from keras_preact.training import checkpoints as ckpt_lib

    common = ("--model=resnet8", "--batch_size=16", "--checkpoint_every=2", "--keep_checkpoints=1",
              "--log_every=1", f"--model_dir={tmp_path}")
    diverging = parse("cifar", *common, "--train_steps=40", "--lr=1e6", "--warmup_steps=10", "--warmup_lr=0.05")
    with pytest.raises(SystemExit) as exit_:
        train.main("cifar", diverging, argv=(), stream=io.StringIO())
    assert exit_.value.code == train.EXIT_DIVERGED
    err = capsys.readouterr().err.strip()
    match = re.fullmatch(r"error: Training diverged at step (\d+): .*last known-good checkpoint is (\S+); "
                         r"resuming this run directory starts from it\. .*", err)
    assert match, err
    assert 11 <= int(match.group(1)) <= 14  # within a few steps of the explosion
    named = match.group(2)
    assert tf.train.latest_checkpoint(str(tmp_path / "checkpoints")) == named
    prefixes = [os.path.join(root, f[:-6]) for root, _, names in os.walk(tmp_path) for f in names
                if f.endswith(".index")]
    assert named + ".index" in [p + ".index" for p in prefixes]
    assert all(not ckpt_lib.non_finite_tensors(p) for p in prefixes)  # nothing non-finite on disk
    step = int(named.rsplit("-", 1)[1])
    assert 2 <= step <= 10

    out = io.StringIO()
    sane = parse("cifar", *common, f"--train_steps={step + 6}", "--lr=0.05")
    train.main("cifar", sane, argv=(), stream=out)
    assert f"Resumed from {named} at step {step} " in out.getvalue()
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["steps"] == step + 6 and math.isfinite(record["final"]["test"]["loss"])
    assert record["final"]["test"]["loss"] < 5  # sane: ln(10) = 2.3 is chance level


def test_init_weights_fine_tunes_an_imported_backbone_with_a_new_head(cifar_folder, tmp_path):
    from keras_preact import weights

    source = registry.get_model("resnet8", num_classes=10)  # e.g. trained elsewhere, 10 classes
    path = str(tmp_path / "backbone.safetensors")
    weights.write_safetensors(weights.torch_tensors(source), path)
    settings = check("cifar", f"--data_dir={cifar_folder}", "--model=resnet8", "--batch_size=8",
                     "--train_steps=2", "--lr=1e-9", f"--init_weights={path}",
                     f"--model_dir={tmp_path / 'run'}")
    assert settings.model.init_weights == path
    train.run(settings, stream=io.StringIO())
    prefix = tf.train.latest_checkpoint(str(tmp_path / "run" / "checkpoints"))
    stored = {name: tf.train.load_variable(prefix, name) for name, _ in tf.train.list_variables(prefix)
              if "/.ATTRIBUTES/" in name and "optimizer" not in name}
    [stem] = [v for k, v in stored.items() if "stem_conv" in k and "kernel" in k]
    [head] = [v for k, v in stored.items() if "predictions" in k and "kernel" in k]
    # The backbone starts from the file (a 1e-9 rate leaves it there); the head is new: 3 classes.
    np.testing.assert_allclose(stem, source.get_layer("stem_conv").kernel, rtol=1e-5, atol=1e-7)
    assert head.shape == (64, 3)


@pytest.mark.parametrize("make,message", [
    (lambda p: None, "No weights file"),
    (lambda p: open(p, "wb").write(b"not a weights file"), "Cannot tell the format"),
])
def test_bad_init_weights_name_the_flag(tmp_path, make, message):
    path = str(tmp_path / "w.bin5")
    make(path)
    with pytest.raises(train.FlagError, match=message) as error:
        check("cifar", f"--init_weights={path}")
    assert error.value.flag == "init_weights"


def test_init_weights_by_name_and_uncached_handles(tmp_path, monkeypatch):
    """--init_weights takes the names get_model takes ("cifar10" -> the preset in the package,
    recorded as its folder), refuses a name the model lacks, and, offline, an uncached hub
    handle is one FlagError naming the handle (exit 2 from the trainer)."""
    config = check("cifar", "--model=resnet56", "--init_weights=cifar10")
    assert config.model.init_weights == registry.PRETRAINED["resnet56"]["cifar10"]
    with pytest.raises(train.FlagError, match="only resnet56 have them") as error:
        check("cifar", "--model=resnet20", "--init_weights=cifar10")
    assert error.value.flag == "init_weights"
    pytest.importorskip("huggingface_hub")
    from huggingface_hub import constants
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(train.FlagError, match="'hf://someone/missing' are not available") as error:
        check("cifar", "--init_weights=hf://someone/missing")
    assert error.value.flag == "init_weights" and "\n" not in str(error.value)


def test_padding_flag_reaches_the_model():
    assert check("cifar", "--padding=same").model_kwargs["padding"] == "same"
    assert "padding" not in check("cifar").model_kwargs  # the default: symmetric


# --- the run configuration: flags generated from it, files, the written config ----------------


def test_flags_are_the_config_settings_one_to_one():
    for family in ("cifar", "imagenet"):
        flag_values = flags.FlagValues()
        train.define_flags(family, flag_values)
        generated = {flag for _, _, flag in run_config.flag_settings(family)}
        assert set(flag_values) == generated | {"recipe", "config"}
        assert len(generated) == len(run_config.flag_settings(family))  # no two settings share a flag
    assert "eval_sizes" not in {flag for _, _, flag in run_config.flag_settings("cifar")}
    # The loop's own defaults are the configuration's, not a second copy.
    signature = inspect.signature(train.Trainer).parameters
    assert signature["checkpoint_every"].default == run_config.CheckpointSettings().checkpoint_every == 1000
    assert signature["keep_checkpoints"].default == run_config.CheckpointSettings().keep_checkpoints
    assert signature["log_every"].default == run_config.RunSettings().log_every


def test_help_shows_every_default_including_the_recipes(capsys):
    flag_values = flags.FlagValues()
    train.define_flags("cifar", flag_values)
    assert train.console_main("cifar", ["cifar.py", "--help"], flag_values) == 0
    text = capsys.readouterr().out
    blocks = {}
    for block in re.split(r"\n(?=  --)", text):
        match = re.match(r"\s*--(?:\[no\])?(\w+):", block)
        if match:
            blocks[match.group(1)] = " ".join(block.split())
    assert set(blocks) >= {flag for _, _, flag in run_config.flag_settings("cifar")} | {"recipe", "config"}
    for flag in (f for _, _, f in run_config.flag_settings("cifar")):
        assert "default:" in blocks[flag], blocks[flag]
    assert "(default: from --recipe (cifar, fast, cifar10_sample: 128))" in blocks["batch_size"]
    assert "from --recipe (cifar, fast, cifar10_sample: 0.1)" in blocks["lr"]
    assert "cifar: unset (--train_steps); fast: 30; cifar10_sample: 15" in blocks["epochs"]
    assert "cifar: 64000" in blocks["train_steps"] and "(default: '1000')" in blocks["checkpoint_every"]
    assert "the network's, -6.0" in blocks["gate_bias_init"]
    assert "cifar10_sample for --dataset=cifar10_sample" in blocks["recipe"]


def test_config_file_with_flags_on_top(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"recipe": {"name": "fast", "batch_size": 16, "epochs": 2},
                                "run": {"seed": 5, "log_every": 4},
                                "checkpointing": {"checkpoint_every": 7}, "model": {"model": "resnet8"}}))
    config = check("cifar", f"--config={path}", "--seed=6", "--label_smoothing=0")
    assert (config.recipe.name, config.recipe.batch_size, config.recipe.epochs) == ("fast", 16, 2.0)
    assert (config.recipe.label_smoothing, config.recipe.nesterov) == (0.0, True)  # flag, preset
    assert (config.run.seed, config.run.log_every, config.checkpointing.checkpoint_every) == (6, 4, 7)
    assert config.model_name == "resnet8" and config.run.model_dir == os.path.join("runs", "cifar10_sample_resnet8")
    # --recipe replaces the file's recipe section; the other sections stay the file's.
    paper = check("cifar", f"--config={path}", "--recipe=cifar")
    assert (paper.recipe.name, paper.recipe.batch_size, paper.recipe.train_steps) == ("cifar", 128, 64000)
    assert paper.checkpointing.checkpoint_every == 7


def test_config_file_written_again_is_unchanged(tmp_path):
    """A run repeated with --config writes the same config.json: whole numbers stay integers
    (15, not 15.0) although a number setting is read back as a float."""
    first = run_config.write(check("cifar", "--epochs=15", "--lr=0.1"), str(tmp_path / "a"))
    again = run_config.write(check("cifar", f"--config={first}"), str(tmp_path / "b"))
    with open(first) as a, open(again) as b:
        text = a.read()
        assert text == b.read()
    assert '"epochs": 15,' in text


@pytest.mark.parametrize("content, flag, message", [
    (None, "config", "no file"),
    ("{not json", "config", "cannot read"),
    ('["a list"]', "config", "must hold a mapping"),
    ('{"optimisation": {}}', "config", "unknown section 'optimisation'"),
    ('{"recipe": {"lrr": 0.1}}', "config", "unknown setting recipe.lrr"),
    ('{"recipe": {"base_lr": -1}}', "lr", "must be positive"),
    ('{"run": {"seed": "one"}}', "seed", "must be an integer"),
    ('{"data": {"dataset": "mnist"}}', "dataset", "must be one of"),
    ('{"family": "imagenet"}', "config", "the imagenet trainer"),
    ('{"recipe": {"name": "imagenet"}}', "recipe", "for the imagenet trainer"),
])
def test_bad_config_files_name_the_setting(tmp_path, content, flag, message):
    path = tmp_path / "run.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(train.FlagError, match=message) as error:
        check("cifar", f"--config={path}")
    assert error.value.flag == flag and "\n" not in str(error.value)


def test_yaml_config_needs_pyyaml(tmp_path, monkeypatch):
    import sys

    path = tmp_path / "run.yaml"
    path.write_text("run:\n  seed: 3\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # PyYAML not importable (as in the package's venv)
    with pytest.raises(train.FlagError, match=r"--config: reading run.yaml needs PyYAML.*\.json") as error:
        check("cifar", f"--config={path}")
    assert "\n" not in str(error.value)
    # With a YAML reader importable, the file's values are read like JSON's.
    reader = type(sys)("yaml")
    reader.safe_load = lambda handle: {"run": {"seed": int(handle.read().split()[-1])}}
    monkeypatch.setitem(sys.modules, "yaml", reader)
    assert check("cifar", f"--config={path}").run.seed == 3


def _metrics_without_timing(run_dir):
    return [{k: v for k, v in row.items() if k not in ("wall_time", "images_per_sec", "train_seconds")}
            for row in read_metrics(run_dir / "metrics.csv")]


def test_written_config_repeats_the_run_exactly(cifar_folder, tmp_path):
    first = check("cifar", f"--data_dir={cifar_folder}", "--model=resnet8", "--batch_size=8",
                  "--train_steps=5", "--log_every=1", "--checkpoint_every=2", "--seed=7", "--recipe=fast",
                  "--lr=0.05", "--dtype_policy=float32", f"--model_dir={tmp_path / 'first'}")
    train.run(first, stream=io.StringIO())
    written = tmp_path / "first" / "config.json"
    assert json.loads(written.read_text()) == first.to_dict()
    again = check("cifar", f"--config={written}", f"--model_dir={tmp_path / 'again'}")
    expected = first.to_dict()
    expected["run"]["model_dir"] = str(tmp_path / "again")
    assert again.to_dict() == expected
    train.run(again, stream=io.StringIO())
    assert _metrics_without_timing(tmp_path / "first") == _metrics_without_timing(tmp_path / "again")
    straight, repeated = final_model_tensors(tmp_path / "first"), final_model_tensors(tmp_path / "again")
    assert straight.keys() == repeated.keys() and any(k.startswith("averaged/") for k in straight)
    for name, value in straight.items():
        assert np.array_equal(value, repeated[name]), name


class Terminal(io.StringIO):
    """An output stream that says it is a terminal: the progress bar redraws in place."""

    def isatty(self):
        return True


def test_final_line_and_no_pending_checkpoints_after_a_clean_finish(cifar_folder, tmp_path):
    out = Terminal()
    config = check("cifar", f"--data_dir={cifar_folder}", "--model=resnet8", "--batch_size=8",
                   "--train_steps=8", "--checkpoint_every=3", f"--model_dir={tmp_path}")
    train.run(config, stream=out)
    lines = out.getvalue().split("\n")
    [final] = [line for line in lines if "Final test error" in line]
    assert final.startswith("Final test error: "), repr(final)  # not after the bar on its line
    assert any("\rstep 8/8 [====================]" in line for line in lines)  # the bar, redrawn in place
    checkpoints = tmp_path / "checkpoints"
    assert not (checkpoints / "pending").exists()
    assert tf.train.latest_checkpoint(str(checkpoints)).endswith("ckpt-8")
    # The run directory still resumes: a longer run continues from step 8.
    longer = check("cifar", f"--data_dir={cifar_folder}", "--model=resnet8", "--batch_size=8",
                   "--train_steps=10", "--checkpoint_every=3", f"--model_dir={tmp_path}")
    resumed = io.StringIO()
    train.run(longer, stream=resumed)
    assert "at step 8 " in resumed.getvalue() and not (checkpoints / "pending").exists()


def test_the_fit_trainers_settings_are_refused_one_line_each(capsys):
    flag_values = flags.FlagValues()
    train.define_flags("cifar", flag_values)
    argv = ["cifar.py", "--keras_distribution=data_parallel", "--num_processes=2", "--coordinator_address=h:1",
            "--data_format=channels_first"]
    assert train.console_main("cifar", argv, flag_values) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert [line.split(":")[1].strip() for line in lines] == [
        "--data_format", "--keras_distribution", "--coordinator_address", "--num_processes"], lines
    assert all("only the fit trainer honours it" in line for line in lines)
