"""benchmarks/torch_baseline.py: the plain-PyTorch build of the paper's CIFAR nets is the network
keras_preact builds by default (same parameters, same function), its training step and worker,
and the PyTorch rows of benchmarks/training_speed.py and benchmarks/inference.py."""

import ast
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")  # installed with the [torch], [dev] and [bench] extras

import keras_preact  # noqa: E402
import trainer_runs  # noqa: E402
from keras_preact.model import all_layers  # noqa: E402
from keras_preact.norm import BN_EPSILON, BN_MOMENTUM  # noqa: E402
from keras_preact.training.recipes import RECIPES  # noqa: E402

BENCHMARKS = os.path.join(trainer_runs.ROOT, "benchmarks")
sys.path.insert(0, BENCHMARKS)
import torch_baseline  # noqa: E402
import training_speed  # noqa: E402

SPEED = os.path.join(BENCHMARKS, "training_speed.py")


@pytest.fixture
def torch_threads():
    """Restore the process's PyTorch thread count after a test that sets it."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


# -- the network ---------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["resnet20", "resnet56", "resnet110", "resnet164"])
def test_parameter_counts_equal_keras_preact(name):
    """Exact in both senses: PyTorch's parameters are Keras' trainable weights (convs, BN gamma
    and beta, classifier), and adding the BN running means and variances (buffers in PyTorch,
    non-trainable weights in Keras) gives ``count_params()``."""
    keras_model = keras_preact.get_model(name)
    counts = torch_baseline.count_parameters(torch_baseline.build(name))
    trainable = int(sum(np.prod(w.shape) for w in keras_model.trainable_weights))
    assert counts["trainable"] == trainable
    assert counts["trainable"] + counts["bn_statistics"] == keras_model.count_params()


def test_resnet1001_parameter_count_equals_keras_preact():
    """Counted without a forward pass; the stacked Keras build has the same weights, built fast."""
    keras_model = keras_preact.get_model("resnet1001", stacked_stages=True)
    counts = torch_baseline.count_parameters(torch_baseline.build("resnet1001"))
    assert counts["trainable"] == 10_327_706  # the registry's documented count
    assert counts["trainable"] + counts["bn_statistics"] == keras_model.count_params()


def test_every_registered_cifar_name_has_its_unit_kind_and_depth():
    for name, (depth, kind) in torch_baseline.TORCH_MODELS.items():
        spec = keras_preact.registry.resolve(name)
        assert (spec.unit, spec.depth) == (kind, depth)
        assert torch_baseline.units_per_stage(name) == (kind, spec.units_per_stage[0])
    with pytest.raises(ValueError, match="Unknown model 'resnet21'"):
        torch_baseline.build("resnet21")


def _copy_keras_weights(keras_model, net):
    """Keras' weights into the PyTorch net, layer by layer in call order (a ResNet is one chain;
    a unit's layers run pre-activation, branch, shortcut in both builds)."""
    import keras

    counterparts = {keras.layers.BatchNormalization: torch.nn.BatchNorm2d, keras.layers.Dense: torch.nn.Linear,
                    keras.layers.Conv2D: torch.nn.Conv2d}
    keras_layers = [layer for layer in all_layers(keras_model) if isinstance(layer, tuple(counterparts))]
    torch_layers = [m for m in net.modules() if isinstance(m, tuple(counterparts.values()))]
    assert [type(m) for m in torch_layers] == [
        next(t for k, t in counterparts.items() if isinstance(layer, k)) for layer in keras_layers]
    rng = np.random.RandomState(0)
    with torch.no_grad():
        for layer, module in zip(keras_layers, torch_layers):
            if isinstance(layer, keras.layers.BatchNormalization):
                # Non-trivial statistics and affine parameters, so a misplaced BN shows.
                c = layer.gamma.shape[0]
                values = [rng.uniform(0.5, 1.5, c), rng.normal(0, 0.1, c),  # gamma, beta
                          rng.normal(0, 0.1, c), rng.uniform(0.5, 1.5, c)]  # mean, variance
                layer.set_weights([v.astype("float32") for v in values])
                for tensor, value in zip((module.weight, module.bias, module.running_mean, module.running_var), values):
                    tensor.copy_(torch.from_numpy(value.astype("float32")))
            elif isinstance(layer, keras.layers.Dense):
                kernel, bias = layer.get_weights()
                module.weight.copy_(torch.from_numpy(kernel.T))
                module.bias.copy_(torch.from_numpy(bias))
            else:
                assert layer.get_weights()[0].shape[:2] == tuple(module.weight.shape[2:])
                module.weight.copy_(torch.from_numpy(layer.get_weights()[0].transpose(3, 2, 0, 1)))


@pytest.mark.parametrize("name, unit, torch_net", [
    ("resnet20", None, lambda: torch_baseline.build("resnet20")),  # basic units, zero-pad shortcuts
    ("resnet20", "bottleneck", lambda: torch_baseline.PreActResNet("bottleneck", 2)),  # projections
])
def test_same_function_as_keras_preact_with_the_same_weights(name, unit, torch_net):
    """Layer order, padding of the strided convs, which pixels the option-A shortcut keeps and
    where the pre-activation sits all match: the eval-mode logits agree, NCHW and channels_last."""
    keras_model = keras_preact.get_model(name, unit=unit)
    net = torch_net()
    _copy_keras_weights(keras_model, net)
    x = np.random.RandomState(1).normal(size=(4, 32, 32, 3)).astype("float32")
    expected = np.asarray(keras_model(x, training=False))
    for variant in ("torch", "torch+cl"):
        got = torch_baseline.nhwc_predictor(net.to(memory_format=torch_baseline.memory_format(
            torch_baseline.VARIANTS[variant])), torch_baseline.VARIANTS[variant])(x).numpy()
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def test_forward_shape():
    net = torch_baseline.build("resnet20")
    assert tuple(net(torch.rand(2, 3, 32, 32)).shape) == (2, 10)
    assert tuple(torch_baseline.build("resnet20", num_classes=100)(torch.rand(2, 3, 32, 32)).shape) == (2, 100)


def test_batch_norm_and_recipe_are_keras_preacts():
    """PyTorch counts BN momentum as the new statistic's weight, Keras as the old one's."""
    bns = [m for m in torch_baseline.build("resnet20").modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and all(m.momentum == pytest.approx(1 - BN_MOMENTUM) and m.eps == BN_EPSILON for m in bns)
    recipe = RECIPES["cifar"]
    assert (torch_baseline.LEARNING_RATE, torch_baseline.MOMENTUM, torch_baseline.NESTEROV,
            torch_baseline.WEIGHT_DECAY, torch_baseline.BATCH_SIZE) == (
        recipe.base_lr, recipe.momentum, recipe.nesterov, recipe.weight_decay, recipe.batch_size)
    assert recipe.decay_bn  # torch.optim.SGD decays every parameter, BN's included
    group = torch_baseline.make_optimizer(torch_baseline.build("resnet20")).param_groups[0]
    assert (group["momentum"], group["nesterov"], group["weight_decay"]) == (0.9, False, 1e-4)


@pytest.mark.parametrize("bfloat16", [False, True])
def test_training_steps_give_finite_losses_and_update_the_statistics(bfloat16):
    torch.manual_seed(0)
    variant = torch_baseline.VARIANTS["torch+bf16" if bfloat16 else "torch+cl"]
    net = torch_baseline.prepare("resnet20", variant)
    optimizer = torch_baseline.make_optimizer(net)
    images = torch.rand(8, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 10, (8,))
    before = net.stem[1][0].running_mean.clone()
    losses = [float(torch_baseline.train_step(net, optimizer, images, labels, bfloat16)) for _ in range(3)]
    assert all(math.isfinite(loss) for loss in losses)
    assert losses[0] < 10 * math.log(10)  # a fresh net starts near chance
    assert not torch.equal(before, net.stem[1][0].running_mean)
    logits = torch_baseline.evaluate(net, images, bfloat16)
    assert logits.dtype == torch.float32 and bool(torch.isfinite(logits).all())
    assert not net.training


def test_the_baseline_imports_neither_keras_nor_the_package():
    with open(os.path.join(BENCHMARKS, "torch_baseline.py"), encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) and node.module}
    assert not imported & {"keras", "keras_preact", "tensorflow", "jax"}


# -- the worker ----------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["train", "infer"])
def test_time_case_reports_a_row(mode, torch_threads):
    row = torch_baseline.time_case(dict(model="resnet20", variant="torch+cl", mode=mode, batch=4,
                                        steps=1, threads=1))
    assert row["params"] == 269_722 and row["threads"] == 1
    assert row["images_per_s"] > 0 and row["first_step_s"] > 0 and row["peak_rss_gb"] > 0


def test_bf16_weights_variant_infers_in_bfloat16_and_refuses_to_train(torch_threads):
    """torch+bf16w: the network itself in bfloat16 (no autocast), inference only; its logits
    are the float32 network's to bfloat16 rounding."""
    torch.manual_seed(0)
    net = torch_baseline.prepare("resnet20", torch_baseline.VARIANTS["torch+bf16w"])
    assert {p.dtype for p in net.parameters()} == {torch.bfloat16}
    reference = torch_baseline.build("resnet20")
    reference.load_state_dict({k: v.float() for k, v in net.state_dict().items()})
    images = np.random.RandomState(0).rand(4, 32, 32, 3).astype("float32")
    got = torch_baseline.nhwc_predictor(net, torch_baseline.VARIANTS["torch+bf16w"])(images)
    expected = torch_baseline.nhwc_predictor(reference, torch_baseline.VARIANTS["torch"])(images)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=0.15)
    row = torch_baseline.time_case(dict(model="resnet20", variant="torch+bf16w", mode="infer",
                                        batch=2, steps=1, threads=1))
    assert row["images_per_s"] > 0 and row["device"] == "cpu"
    with pytest.raises(ValueError, match="inference variant"):
        torch_baseline.time_case(dict(model="resnet20", variant="torch+bf16w", mode="train",
                                      batch=2, steps=1, threads=1))


def test_a_compile_failure_is_the_variants_one_line_error(monkeypatch, torch_threads):
    class Broken(torch.nn.Module):
        """What torch.compile returns; it fails where inductor would, at the first call."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, x):
            raise RuntimeError("inductor: no working C++ compiler\nlong details")

    monkeypatch.setattr(torch_baseline.torch, "compile", Broken)
    row = torch_baseline.time_case(dict(model="resnet20", variant="torch+compile", mode="train",
                                        batch=2, steps=1, threads=1))
    assert row["error"] == "torch.compile failed: RuntimeError: inductor: no working C++ compiler"


# -- training_speed.py ---------------------------------------------------------------------
@pytest.mark.slow
def test_training_speed_times_torch_rows_beside_the_package_default(tmp_path):
    """Worker processes of both frameworks in one case; the default build's ratio to PyTorch's best."""
    default = training_speed.package_default_variant()
    output = tmp_path / "speed.json"
    process = subprocess.run(
        # One PyTorch thread: OpenMP's spinning threads collapse on cores other tests keep busy.
        [sys.executable, SPEED, "--quick", f"--variants={default},torch", "--steps=1", "--torch_threads=1",
         f"--output={output}"],
        capture_output=True, text=True, env=trainer_runs.env(), cwd=trainer_runs.ROOT, timeout=300)
    assert process.returncode == 0, process.stderr[-3000:]
    report = json.loads(output.read_text())
    rows = {r["variant"]: r for r in report["results"]}
    assert list(rows) == [default, "torch"]
    torch_row = rows["torch"]
    assert torch_row["framework"] == "pytorch" and torch_row["images_per_s"] > 0
    assert torch_row["params"] == rows[default]["params"]
    assert torch_row["threads"] == report["machine"]["torch_threads"] == 1
    assert report["package_default_variant"] == default
    [comparison] = report["vs_pytorch"]
    assert comparison["torch_best"] == "torch" == rows[default]["torch_best_variant"]
    assert comparison["default_vs_torch_best"] == pytest.approx(
        rows[default]["images_per_s"] / torch_row["images_per_s"], rel=1e-2)
    assert f"package default ({default}) = " in process.stdout and "PyTorch's best (torch, " in process.stdout


def test_training_speed_skips_torch_rows_without_pytorch(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(training_speed, "torch_variants", lambda: None)
    output = tmp_path / "speed.json"
    training_speed.main(["--quick", "--variants=torch,torch+cl", f"--output={output}"])
    printed = capsys.readouterr().out
    assert "PyTorch is not importable: the torch rows are skipped" in printed
    report = json.loads(output.read_text())
    assert report["results"] == [] and report["vs_pytorch"] == []
    assert report["torch_skipped"].startswith("PyTorch is not importable")


def test_training_speed_refuses_an_unknown_torch_variant(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        training_speed.main(["--quick", "--variants=fused,torch+turbo", f"--output={tmp_path / 'x.json'}"])
    assert exit_.value.code == 2
    assert "argument --variants: Unknown variant 'torch+turbo': the PyTorch baseline's are" in capsys.readouterr().err


def test_cases_for_models_or_modes_the_table_lacks():
    table = [("resnet110", "train", 128, ("plain", "fused", "stacked"), 8)]
    generic = training_speed.GENERIC_CASE
    added = training_speed.generic_cases(["resnet56", "resnet110"], table, {"train", "infer"}, set())
    assert added == [("resnet56", "train", 128, generic["variants"], generic["steps"]["train"]),
                     ("resnet56", "infer", 128, generic["variants"], generic["steps"]["infer"]),
                     ("resnet110", "infer", 128, generic["variants"], generic["steps"]["infer"])]
    # Without --modes a tabled model keeps its own cases, an untabled one gets both modes.
    assert [c[:2] for c in training_speed.generic_cases(["resnet56", "resnet110"], table, set(), {64})] == [
        ("resnet56", "train"), ("resnet56", "infer")]


def test_the_default_build_is_the_fused_one_under_the_auto_dtype_policy():
    from keras_preact.hardware import cpu_has_bf16

    expected = "fused+bf16" if cpu_has_bf16() and not _tensorflow_sees_a_gpu() else "fused"
    assert training_speed.package_default_variant() == expected


def _tensorflow_sees_a_gpu() -> bool:
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def test_pytorch_comparison_names_the_best_variant_and_skips_errors():
    rows = [dict(model="resnet20", mode="train", batch=32, variant="fused", images_per_s=100.0, first_step_s=10.0),
            dict(model="resnet20", mode="train", batch=32, variant="torch", images_per_s=50.0, first_step_s=4.0),
            dict(model="resnet20", mode="train", batch=32, variant="torch+cl", images_per_s=80.0, first_step_s=5.0),
            dict(model="resnet20", mode="train", batch=32, variant="torch+compile", error="torch.compile failed: x")]
    comparison = training_speed.pytorch_comparison(rows, "fused")
    assert comparison["torch_best"] == "torch+cl"
    assert comparison["default_vs_torch_best"] == 1.25 and comparison["first_step_ratio_vs_torch_best"] == 2.0
    assert training_speed.pytorch_comparison(rows[1:], "fused") is None
    assert training_speed.pytorch_comparison(rows[:1], "fused") is None


# -- inference.py --------------------------------------------------------------------------
def _inference_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("inference_benchmark", os.path.join(BENCHMARKS, "inference.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_inference_pytorch_rows_only_for_the_baselines_networks(torch_threads):
    inference = _inference_module()
    model = keras_preact.get_model("resnet20")
    rows, note = inference.pytorch_rows(model, "resnet20", "cifar", threads=1)
    assert note is None and set(rows) == set(inference.PYTORCH_ROWS)
    x = np.random.RandomState(0).rand(2, 32, 32, 3).astype("float32")
    for predict in rows.values():
        assert tuple(predict(x).shape) == (2, 10)
    rows, note = inference.pytorch_rows(keras_preact.get_model("resnet20", order="original"), "resnet20", "cifar")
    assert rows == {} and "not the default build of resnet20" in note
    rows, note = inference.pytorch_rows(model, "resnet18", "imagenet_224")
    assert rows == {} and note.startswith("PyTorch rows skipped: the baseline builds the CIFAR nets")


def test_inference_compares_the_best_row_of_each_form():
    inference = _inference_module()
    row = lambda throughput, latency: {"throughput_img_s": throughput, "latency_ms_median": latency}  # noqa: E731
    results = {"keras/unfolded": row(100, 5.0), "keras/folded": row(120, 6.0),
               "saved_model/unfolded": row(90, 4.0), "onnxruntime/folded": row(300, 1.0),
               "pytorch_float32/unfolded": row(50, 9.0), "pytorch_channels_last/unfolded": row(150, 3.0),
               "litert_float32/folded": row(400, 0.5)}
    best = inference.best_of_each(results)
    assert list(best) == ["saved_model", "keras", "pytorch", "onnxruntime"]
    assert best["keras"]["throughput_row"] == "keras/folded" and best["keras"]["latency_row"] == "keras/unfolded"
    assert best["pytorch"]["throughput_row"] == "pytorch_channels_last/unfolded"
    assert best["onnxruntime"]["throughput_vs_pytorch_best"] == 2.0
    assert best["keras"]["throughput_vs_pytorch_best"] == 0.8


def test_inference_refuses_the_old_recipe_flag():
    process = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "inference.py"), "--recipe", "cifar"],
                             capture_output=True, text=True, env=trainer_runs.env(), timeout=120)
    assert process.returncode == 2
    lines = process.stderr.strip().splitlines()
    assert lines[-1].startswith("error: --recipe: renamed --preprocessing")
