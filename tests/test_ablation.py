"""The ablation runner: variant parsing, statistics, and trainers/ablation.py end to end."""

import csv
import json
import math
import os
import subprocess
import sys

import pytest
from absl import flags

from keras_preact.cli import train as train_cli
from keras_preact.training import ablation
from trainer_runs import ROOT, env, make_image_folder

ABLATION = os.path.join(ROOT, "trainers", "ablation.py")


@pytest.mark.parametrize(
    "spec,order,shortcut",
    [
        ("original/constant_scaling", "original", "constant_scaling"),
        ("full_preact", "full_preact", "identity"),  # an order: identity shortcut
        ("exclusive_gating", "original", "exclusive_gating"),  # a shortcut: on the base order
        (" relu_only_preact / conv1x1 ", "relu_only_preact", "conv1x1"),
    ],
)
def test_parse_variant(spec, order, shortcut):
    assert ablation.parse_variant(spec) == ablation.Variant(order, shortcut)


@pytest.mark.parametrize(
    "spec,options,name,flags_",
    [  # Table 1's rows that differ only in a shortcut option
        ("original/constant_scaling:scale_residual", (("scale_residual", "true"),),
         "original/constant_scaling:scale_residual=true", ["--scale_residual=true"]),
        ("shortcut_only_gating:gate_bias_init=0", (("gate_bias_init", "0"),),
         "original/shortcut_only_gating:gate_bias_init=0", ["--gate_bias_init=0"]),
        ("exclusive_gating: gate_bias_init = -6.0", (("gate_bias_init", "-6"),),
         "original/exclusive_gating:gate_bias_init=-6", ["--gate_bias_init=-6"]),
        ("constant_scaling:shortcut_scale=0.25:scale_residual=false",
         (("scale_residual", "false"), ("shortcut_scale", "0.25")),
         "original/constant_scaling:scale_residual=false:shortcut_scale=0.25",
         ["--scale_residual=false", "--shortcut_scale=0.25"]),
    ],
)
def test_parse_variant_with_shortcut_options(spec, options, name, flags_):
    variant = ablation.parse_variant(spec)
    assert variant.options == options and variant.name == name
    assert variant.trainer_flags()[2:] == flags_
    assert "/" not in variant.slug and ":" not in variant.slug  # one folder per variant
    assert ablation.parse_variant(name) == variant  # the printed name parses back


@pytest.mark.parametrize(
    "spec,match",
    [
        ("identity:gate_bias_init=0", "not by 'identity'"),
        ("dropout:gate=1", "Unknown shortcut option 'gate'"),
        ("dropout:dropout_rate=often", "needs a number"),
        ("constant_scaling:scale_residual=maybe", "true or false"),
        ("dropout:dropout_rate=0.5:dropout_rate=0.2", "given twice"),
    ],
)
def test_bad_shortcut_options_are_named(spec, match):
    with pytest.raises(ValueError, match=match):
        ablation.parse_variant(spec)


@pytest.mark.parametrize(
    "spec,name,flags_",
    [  # a recipe ablation: one unit, one training element changed per row
        ("full_preact --nonesterov", "full_preact/identity --nonesterov", ("--nonesterov",)),
        ("full_preact --batch_size=256 --lr=0.2", "full_preact/identity --batch_size=256 --lr=0.2",
         ("--batch_size=256", "--lr=0.2")),
        (" exclusive_gating: gate_bias_init = -6.0  --lr_schedule=step ",
         "original/exclusive_gating:gate_bias_init=-6 --lr_schedule=step", ("--lr_schedule=step",)),
    ],
)
def test_parse_variant_with_row_flags(spec, name, flags_):
    variant = ablation.parse_variant(spec)
    assert variant.name == name and variant.flags == flags_
    assert variant.trainer_flags()[-len(flags_):] == list(flags_)  # after the unit's own flags
    assert "/" not in variant.slug and ":" not in variant.slug and " " not in variant.slug
    assert ablation.parse_variant(name) == variant  # the printed name parses back
    assert variant.slug != ablation.parse_variant(spec.split(" --")[0]).slug  # its own folder


@pytest.mark.parametrize(
    "spec,match",
    [
        ("full_preact lr=0.2", "then optionally trainer flags"),
        ("full_preact --lr=0.2 0.3", "written --name=value"),
        ("full_preact --lr=0.2 --lr=0.3", "--lr is given twice"),
        ("full_preact --shortcut=conv1x1", "give the unit in the variant itself"),
        ("exclusive_gating --gate_bias_init=0", "give the unit in the variant itself"),
        ("full_preact --epochs=3", "--epochs is one per study"),
        ("full_preact --seed=1", "--seed is one per study"),
    ],
)
def test_bad_row_flags_are_named(spec, match):
    with pytest.raises(ValueError, match=match):
        ablation.parse_variant(spec)


def test_a_diverged_run_is_recorded_and_read_back(tmp_path):
    variant = ablation.parse_variant("original/dropout")
    assert ablation.recorded_status(str(tmp_path)) is None
    ablation.record_status(str(tmp_path), "diverged")
    assert ablation.recorded_status(str(tmp_path)) == "diverged"
    assert ablation.read_run(str(tmp_path), variant, 0).status == "diverged"  # no results.json


def test_variants_differing_in_an_option_are_distinct_rows():
    variants = ablation.parse_variants(["shortcut_only_gating:gate_bias_init=0",
                                        "shortcut_only_gating:gate_bias_init=-6"])
    assert len({v.slug for v in variants}) == 2
    with pytest.raises(ValueError, match="listed twice"):
        ablation.parse_variants(["dropout:dropout_rate=0.5", "dropout:dropout_rate=.5"])


def test_final_training_loss_is_the_mean_of_the_last_tenth():
    result = _result("original", 0, 0.1)
    result.curves["train_loss"] = [(e / 10, 3.0 - e / 10) for e in range(21)]  # epochs 0 .. 2
    assert result.final_train_loss == pytest.approx((1.2 + 1.1 + 1.0) / 3)  # epochs >= 1.8
    result.status = "diverged"
    assert result.final_train_loss is None  # not a result, as its error is not


def test_shortcut_only_variants_use_the_base_order():
    assert ablation.parse_variant("dropout", base_order="full_preact").order == "full_preact"


@pytest.mark.parametrize(
    "specs,match",
    [
        (["preact"], "Unknown variant 'preact'"),
        (["full_preact/gate"], "Unknown shortcut 'gate'"),
        (["foo/identity"], "Unknown order 'foo'"),
        (["original", "original/identity"], "listed twice"),
        ([""], "No variants"),
    ],
)
def test_bad_variants_are_named(specs, match):
    with pytest.raises(ValueError, match=match):
        ablation.parse_variants(specs)


def _result(variant, seed, error, status="finished"):
    return ablation.RunResult(ablation.parse_variant(variant), seed, status,
                              test_error=error, parameters=100)


def test_summary_statistics_and_failed_runs():
    results = [
        _result("original", 0, 0.10), _result("original", 1, 0.14), _result("original", 2, 0.11),
        _result("constant_scaling", 0, None, status="diverged"),
        _result("constant_scaling", 1, 0.30),
        _result("full_preact", 0, None, status="failed (exit 1)"),
    ]
    rows = {row["variant"]: row for row in ablation.summarize(results)}
    original = rows["original/identity"]
    assert original["median_error"] == pytest.approx(11.0)
    assert original["mean_error"] == pytest.approx(35 / 3)
    assert original["std_error"] == pytest.approx(math.sqrt(((10 - 35 / 3) ** 2 + (14 - 35 / 3) ** 2
                                                             + (11 - 35 / 3) ** 2) / 2))
    scaling = rows["original/constant_scaling"]
    assert (scaling["runs"], scaling["finished"], scaling["median_error"]) == (2, 1, pytest.approx(30.0))
    assert math.isnan(scaling["std_error"]) and scaling["not_finished"] == "seed 0: diverged"
    preact = rows["full_preact/identity"]
    assert preact["finished"] == 0 and math.isnan(preact["median_error"])
    table = ablation.markdown_table(ablation.summarize(results))
    assert "| original/identity | 3/3 | 11.00 | 11.67 +- 2.08 | 10.00, 14.00, 11.00 | n/a | n/a | 100 |" in table
    assert "| full_preact/identity | 0/1 (seed 0: failed (exit 1)) | n/a | fail |" in table


def _ablation(*flags, timeout=600):
    return subprocess.run([sys.executable, ABLATION, *flags], capture_output=True, text=True,
                          env=env(), cwd=ROOT, timeout=timeout)


@pytest.mark.slow
def test_ablation_end_to_end_then_resume(tmp_path):
    data = make_image_folder(tmp_path / "data", {"train": 16, "test": 8})
    out = tmp_path / "out"
    flags = [f"--data_dir={data}", "--model=resnet8", "--variants=original,full_preact",
             "--seeds=0,1", "--epochs=2", "--batch_size=16", f"--out={out}"]
    done = _ablation(*flags)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    with open(out / "results.csv") as handle:
        rows = {row["variant"]: row for row in csv.DictReader(handle)}
    assert set(rows) == {"original/identity", "full_preact/identity"}
    for variant, row in rows.items():
        errors = [float(e) for e in row["errors"].split()]
        assert row["runs"] == "2" and row["finished"] == "2" and len(errors) == 2
        assert float(row["median_error"]) == pytest.approx(sum(errors) / 2, abs=1e-3)
        for seed in (0, 1):  # each number is the run's own final test error
            run = out / "runs" / variant.replace("/", "__") / f"seed{seed}"
            with open(run / "results.json") as handle:
                record = json.load(handle)
            assert record["steps"] == 6  # 2 epochs of 48 images at batch 16
            assert round(100 * record["final"]["test"]["error"], 4) in errors
    markdown = (out / "results.md").read_text()
    assert "| original/identity | 2/2 |" in markdown and "| full_preact/identity | 2/2 |" in markdown
    assert (out / "curves.png").stat().st_size > 10_000

    again = _ablation(*flags)  # finished runs are skipped, the table is rebuilt identically
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.count("finished earlier, skipped") == 4
    assert (out / "results.md").read_text() == markdown

    changed = _ablation(*flags[:-1], "--epochs=3", f"--out={out}")
    assert changed.returncode != 0
    assert "other settings (epochs: 2.0 -> 3.0)" in changed.stderr

    # A second study made with the same settings links the finished runs instead of training.
    second = tmp_path / "second"
    reused = _ablation(*flags[:2], "--variants=original", *flags[3:-1], f"--out={second}",
                       f"--reuse_from={out}")
    assert reused.returncode == 0, reused.stderr[-2000:]
    assert reused.stdout.count(", linked") == 2 and "step " not in reused.stdout
    with open(second / "results.csv") as handle:
        (row,) = csv.DictReader(handle)
    assert row["errors"] == rows["original/identity"]["errors"]
    assert float(row["median_train_loss"]) > 0
    other = _ablation(*flags[:-3], "--epochs=3", f"--out={tmp_path / 'third'}", f"--reuse_from={out}")
    assert other.returncode != 0 and "--reuse_from" in other.stderr  # other settings: not reusable


def test_bad_variant_fails_fast(tmp_path):
    done = _ablation("--variants=original,preact", f"--out={tmp_path}", timeout=120)
    assert done.returncode != 0
    assert "Unknown variant 'preact'" in done.stderr
    assert not os.path.exists(tmp_path / "runs")


def test_dry_run_commands_are_valid_trainer_settings(tmp_path):
    """Every command the runner would launch parses into the run it names (in-process)."""
    data = make_image_folder(tmp_path / "data", {"train": 2, "test": 1})
    done = _ablation("--dry_run", "--variants=original/conv1x1,full_preact,shortcut_only_gating:gate_bias_init=0",
                     "--seeds=3",
                     "--model=resnet8", f"--data_dir={data}", "--batch_size=16", f"--out={tmp_path / 'out'}",
                     "--", "--weight_decay=5e-4", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    commands = [line.split() for line in done.stdout.splitlines() if line.strip()]
    assert len(commands) == 3 and not os.path.exists(tmp_path / "out")
    expected = [("original", "conv1x1", {}), ("full_preact", "identity", {}),
                ("original", "shortcut_only_gating", {"gate_bias_init": 0.0})]
    for command, (order, shortcut, options) in zip(commands, expected):
        assert command[1] == os.path.join(ROOT, "trainers", "cifar.py")
        flag_values = flags.FlagValues()
        train_cli.define_flags("cifar", flag_values)
        flag_values(["cifar.py", *command[2:]])
        settings = train_cli.config_from_flags("cifar", flag_values)
        architecture = {k: v for k, v in settings.model_kwargs.items() if k != "dtype_policy"}  # auto: per CPU
        assert architecture == {"order": order, "shortcut": shortcut, "data_format": "channels_last", **options}
        assert (settings.model_name, settings.run.seed, settings.data.data_dir) == ("resnet8", 3, data)
        slug = f"{order}__{shortcut}" + "".join(f"__{k}_{v:g}" for k, v in options.items())
        assert settings.run.model_dir == str(tmp_path / "out" / "runs" / slug / "seed3")
        recipe = settings.recipe
        assert (recipe.epochs, recipe.batch_size, recipe.weight_decay, recipe.lr_boundaries) == (
            3.0, 16, 5e-4, ("0.5", "0.75"))


def _runner_module():
    """trainers/ablation.py as a module. It declares its flags on absl's FLAGS when imported, so
    it is imported once per process, under the name tests/test_cli_usage_errors.py uses."""
    import importlib

    trainers = os.path.join(ROOT, "trainers")
    if trainers not in sys.path:
        sys.path.insert(0, trainers)
    return importlib.import_module("ablation")


def _ablation_in_process(capsys, *argv):
    """trainers/ablation.py's command line in this process (flag checks only: no training)."""
    runner = _runner_module()
    flag_values = flags.FlagValues()
    runner.define_flags(flag_values)
    code = runner.console_main(["ablation.py", *argv], flag_values)
    return code, capsys.readouterr()


def test_recipe_rows_reach_the_trainer(tmp_path, capsys):
    """Rows that differ in a training flag: each command parses into its own recipe."""
    data = make_image_folder(tmp_path / "data", {"train": 2, "test": 1})
    code, output = _ablation_in_process(
        capsys, "--dry_run", "--seeds=0", "--model=resnet8", f"--data_dir={data}", f"--out={tmp_path / 'out'}",
        "--variants=full_preact,full_preact --nonesterov,full_preact --label_smoothing=0 --lr_schedule=step",
        "--", "--recipe=fast")
    assert code == 0, output.err
    commands = [line.split() for line in output.out.splitlines() if line.startswith(sys.executable)]
    recipes = []
    for command in commands:
        flag_values = flags.FlagValues()
        train_cli.define_flags("cifar", flag_values)
        flag_values(["cifar.py", *command[2:]])
        recipes.append(train_cli.config_from_flags("cifar", flag_values).recipe)
    assert [(r.name, r.nesterov, r.label_smoothing, r.schedule) for r in recipes] == [
        ("fast", True, 0.1, "cosine"), ("fast", False, 0.1, "cosine"), ("fast", True, 0.0, "step")]
    assert len({a for c in commands for a in c if a.startswith("--model_dir=")}) == 3  # a folder per row


@pytest.mark.parametrize(
    "row,extra,match",
    [
        ("full_preact --label_smoothing=0", ["--", "--label_smoothing=0.2"], "--label_smoothing is also given after --"),
        ("full_preact --nesterov=false", ["--", "--nonesterov"], "--nesterov is also given after --"),
        ("full_preact --batch_size=32", ["--batch_size=16"], "--batch_size is set for every run by the runner's --batch_size"),
        ("full_preact --lr_boundaries=0.3", [], "--lr_boundaries is set for every run"),
        ("full_preact --no_such_flag=1", [], "full_preact/identity --no_such_flag=1: --no_such_flag: unknown flag"),
        ("full_preact --nesterov --nonesterov", [], "--nesterov is given twice in one row (as --nonesterov)"),
    ],
)
def test_row_flags_that_clash_are_refused(tmp_path, capsys, row, extra, match):
    runner_flags = [a for a in extra if a.startswith("--batch")]
    after = extra[extra.index("--"):] if "--" in extra else []
    code, output = _ablation_in_process(capsys, "--dry_run", "--seeds=0", f"--out={tmp_path / 'out'}",
                                        f"--variants={row}", *runner_flags, *after)
    assert code == train_cli.EXIT_FLAG_ERROR
    assert output.err.startswith("error: --variants: ") and match in output.err, output.err
    assert not os.path.exists(tmp_path / "out")


def test_a_flag_given_twice_after_the_separator_is_refused(tmp_path, capsys):
    # --nesterov then --nonesterov: absl would let the later one win without a word.
    code, output = _ablation_in_process(capsys, "--dry_run", "--seeds=0", f"--out={tmp_path / 'out'}",
                                        "--variants=full_preact", "--", "--nesterov", "--nonesterov")
    assert code == train_cli.EXIT_FLAG_ERROR
    assert output.err.startswith("error: --nesterov: given twice after -- (as --nonesterov)"), output.err
    assert not os.path.exists(tmp_path / "out")


@pytest.mark.slow
def test_a_diverged_run_is_not_trained_again(tmp_path):
    """The trainer exits 3 on divergence; the runner records it, and a rerun reports it without
    training (with the same seed it would diverge again)."""
    data = make_image_folder(tmp_path / "data", {"train": 16, "test": 8})
    out = tmp_path / "out"
    flags_ = [f"--data_dir={data}", "--model=resnet8", "--variants=original --lr=1e6", "--seeds=0",
              "--epochs=4", "--batch_size=16", f"--out={out}"]
    first = _ablation(*flags_)
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-2000:]
    run = out / "runs" / "original__identity__lr_1e6" / "seed0"
    assert "diverged in" in first.stdout and (run / ablation.STATUS_FILE).exists()
    log_size = (run / "trainer.log").stat().st_size
    again = _ablation(*flags_)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "diverged earlier, not trained again" in again.stdout
    assert (run / "trainer.log").stat().st_size == log_size  # no trainer was started
    assert "| original/identity --lr=1e6 | 0/1 (seed 0: diverged) |" in (out / "results.md").read_text()


def test_study_title_names_the_data_and_the_shared_flags(tmp_path, capsys):
    runner = _runner_module()
    flag_values = flags.FlagValues()
    runner.define_flags(flag_values)
    data = make_image_folder(tmp_path / "cifar" / "data", {"train": 2, "test": 1})
    rest = train_cli.parse_command_line(flag_values, ["ablation.py", "--seeds=0,1", "--epochs=12",
                                                      f"--data_dir={data}", "--", "--recipe=fast"])
    options = runner.options_from_flags(flag_values, rest)
    assert runner.study_title(options) == "resnet20, 12 epochs, 2 seed(s), cifar/data, --recipe=fast"
