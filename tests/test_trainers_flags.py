"""Trainer flags: defaults follow the recipes; bad flags fail fast with one line naming the flag."""

import concurrent.futures

import pytest
from absl import flags

import trainer_runs
from keras_preact.training import cli


def parse(family, *argv):
    flag_values = flags.FlagValues()
    cli.define_flags(family, flag_values)
    flag_values(["trainer", *argv])
    return flag_values


def check(family, *argv):
    return cli.check_flags(family, parse(family, *argv))


def test_cifar_defaults_train_the_embedded_sample():
    settings = check("cifar")
    assert settings.source == "cifar10_sample" and settings.model_name == "resnet20"
    assert settings.recipe.name == "cifar10_sample" and settings.model_kwargs["order"] == "full_preact"
    assert settings.model_dir.endswith("cifar10_sample_resnet20")


def test_real_datasets_get_the_paper_recipe():
    cifar = check("cifar", "--dataset=cifar10", "--model=resnet164")
    assert cifar.recipe.name == "cifar" and cifar.recipe.total_steps(390) == 64000
    imagenet = check("imagenet", "--model=resnet200")
    assert imagenet.recipe.name == "imagenet" and imagenet.eval_sizes == (224, 320)
    assert imagenet.recipe.lr_reference_batch == 256


def test_overrides_reach_the_recipe_and_the_model(tmp_path):
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
    settings = check(
        "cifar", f"--data_dir={tmp_path}", "--model=resnet110", "--unit=single", "--preact=false",
        "--shortcut=constant_scaling", "--lr_schedule=cosine", "--label_smoothing=0.1",
        "--decay_bn=false", "--epochs=3", "--warmup_steps=400", "--batch_size=64", "--nesterov",
    )
    assert settings.source == str(tmp_path) and settings.recipe.name == "cifar"
    assert settings.model_kwargs == {"order": "original", "shortcut": "constant_scaling", "unit": "single"}
    recipe = settings.recipe
    assert (recipe.schedule, recipe.label_smoothing, recipe.decay_bn, recipe.nesterov) == ("cosine", 0.1, False, True)
    assert (recipe.epochs, recipe.train_steps, recipe.warmup_steps, recipe.batch_size) == (3, None, 400, 64)


IN_PROCESS_CASES = {
    "unknown_model": (("cifar", "--model=vgg16"), "model", "unknown model 'vgg16'"),
    "bad_depth": (("cifar", "--model=resnet21"), "model", "Impossible depth 21"),
    "bad_depth_for_unit": (("cifar", "--model=resnet32", "--unit=bottleneck"), "model", "Impossible depth 32"),
    "order_contradicts_preact": (("cifar", "--preact=false", "--order=full_preact"), "order", "contradicts"),
    "unit_on_imagenet_net": (("imagenet", "--model=resnet50", "--unit=basic"), "unit", "fixes its unit kind"),
    "missing_data": (("cifar", "--data_dir=/nonexistent/cifar"), "data_dir", "no folder '/nonexistent/cifar/train'"),
    "steps_and_epochs": (("cifar", "--epochs=2", "--train_steps=10"), "epochs", "not both"),
    "bad_boundaries": (("cifar", "--lr_boundaries=half"), "lr_boundaries", "Bad learning-rate boundary 'half'"),
    "bad_eval_size": (("imagenet", "--eval_sizes=256"), "eval_sizes", "224 and 320"),
    "negative_batch": (("cifar", "--batch_size=0"), "batch_size", ">= 1"),
    "recompute_alone": (("cifar", "--recompute"), "recompute", "needs --stacked_stages"),
    "stacked_dropout": (("cifar", "--stacked_stages", "--shortcut=dropout"), "stacked_stages", "dropout"),
    "stacked_sync_bn": (("cifar", "--stacked_stages", "--sync_bn"), "sync_bn", "not supported"),
}


def test_stacked_stage_flags_reach_the_model():
    settings = check("cifar", "--model=resnet1001", "--stacked_stages", "--recompute")
    assert settings.model_kwargs["stacked_stages"] is True
    assert settings.model_kwargs["recompute"] is True


@pytest.mark.parametrize("case", sorted(IN_PROCESS_CASES))
def test_bad_flags_name_the_flag(case):
    args, flag, message = IN_PROCESS_CASES[case]
    with pytest.raises(cli.FlagError, match=message) as error:
        check(*args)
    assert error.value.flag == flag and str(error.value).startswith(f"--{flag}: ")
    assert "\n" not in str(error.value)


def test_unknown_strategy_is_refused_while_parsing():
    with pytest.raises(flags.IllegalFlagValueError, match="horovod"):
        parse("cifar", "--strategy=horovod")


# End to end: the trainer process prints one line and exits before building a model.
PROCESS_CASES = {
    "bad_depth": (("cifar", "--model=resnet21"), "error: --model: Impossible depth 21"),
    "batch_not_divisible": (
        ("cifar", "--strategy=mirrored", "--cpu_devices=2", "--batch_size=127"),
        "error: --batch_size: --batch_size=127 is not divisible by the 2 replicas",
    ),
    "no_tpu": (("imagenet", "--strategy=tpu"), "error: --strategy: --strategy=tpu: no TPU on this machine"),
}


@pytest.fixture(scope="module")
def outcomes():
    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        futures = {
            name: pool.submit(trainer_runs.run, args[0], *args[1:], timeout=90)
            for name, (args, _) in PROCESS_CASES.items()
        }
        return {name: future.result() for name, future in futures.items()}


@pytest.mark.parametrize("case", sorted(PROCESS_CASES))
def test_trainer_process_fails_fast_with_one_line(outcomes, case):
    code, out, err, seconds = outcomes[case]
    assert code == 2, (out, err[-2000:])
    assert "Traceback" not in err, err
    assert [line for line in err.splitlines() if line.startswith("error: ")] == [
        next(line for line in err.splitlines() if PROCESS_CASES[case][1] in line)
    ]
    assert seconds < 60  # the TensorFlow import dominates; no model is built, no data read
    assert "step " not in out
