"""Every command-line tool: a malformed invocation is ONE line naming the flag, exit status 2,
no traceback, nothing written, well within 20 s; ``--help`` exits 0.

The tools: the trainers (``trainers/cifar.py``, ``trainers/imagenet.py`` through
``keras_preact.cli.train.console_main``), the ablation runner (``trainers/ablation.py``),
``python -m keras_preact.export``, ``python -m keras_preact.diagnostics`` and
``python -m keras_preact.export.classify``. They run in-process (fresh flag registries for the
absl tools) so the table stays fast; ``test_real_scripts_*`` runs a few in real processes.
"""

import concurrent.futures
import contextlib
import io
import os
import subprocess
import sys
import time

import pytest
from absl import flags

import trainer_runs
from keras_preact.cli import train as train_cli
from keras_preact.diagnostics import __main__ as diagnostics_main
from keras_preact.export import __main__ as export_main
from keras_preact.export import classify

sys.path.insert(0, os.path.join(trainer_runs.ROOT, "trainers"))
import ablation as ablation_runner  # noqa: E402


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("usage")
    (root / "garbage.keras").write_bytes(b"this is not a zip archive")
    one_class = root / "one_class"
    for split in ("train", "test"):
        (one_class / split / "cat").mkdir(parents=True)
    (root / "a_file").write_text("x")
    (root / "export").mkdir()
    (root / "export" / "saved_model.pb").write_bytes(b"")
    return root


def run_trainer(family, argv):
    flag_values = flags.FlagValues()
    train_cli.define_flags(family, flag_values)
    return train_cli.console_main(family, [f"{family}.py", *argv], flag_values, stream=io.StringIO())


def run_ablation(argv):
    flag_values = flags.FlagValues()
    ablation_runner.define_flags(flag_values)
    return ablation_runner.console_main(["ablation.py", *argv], flag_values)


def run_argparse(main, argv):
    try:
        return main(list(argv))
    except SystemExit as exit_:
        return exit_.code


TOOLS = {
    "cifar": lambda argv: run_trainer("cifar", argv),
    "imagenet": lambda argv: run_trainer("imagenet", argv),
    "ablation": run_ablation,
    "export": lambda argv: run_argparse(export_main.main, argv),
    "diagnostics": lambda argv: run_argparse(diagnostics_main.main, argv),
    "classify": lambda argv: run_argparse(classify.main, argv),
}

EXPORT = ["--preprocessing", "cifar", "--class_names", "a,b", "--tflite", "none"]

# (tool, argv, the flag the one line must name). "{tmp}" is the test's empty folder, "{files}"
# the module's fixture folder.
CASES = [
    # --- trainers: absl parsing ---
    ("cifar", ["--batch_size=abc"], "--batch_size"),
    ("cifar", ["--batch_size"], "--batch_size"),
    ("cifar", ["--sync_bn=maybe"], "--sync_bn"),
    ("cifar", ["--strategy=horovod"], "--strategy"),
    ("cifar", ["--dataset=mnist"], "--dataset"),
    ("cifar", ["--no_such_flag=1"], "--no_such_flag"),
    ("cifar", ["--batch=8"], "--batch"),
    ("cifar", ["--lr=fast"], "--lr"),
    ("cifar", ["--order=sideways"], "--order"),
    ("cifar", ["--lr_schedule=exp"], "--lr_schedule"),
    # --- trainers: values ---
    ("cifar", ["--model_dir=/dev/null/x"], "--model_dir"),
    ("cifar", ["--model_dir={files}/a_file"], "--model_dir"),
    ("cifar", ["--warmup_steps=-5"], "--warmup_steps"),
    ("cifar", ["--momentum=-1"], "--momentum"),
    ("cifar", ["--momentum=1"], "--momentum"),
    ("cifar", ["--lr_decay=0"], "--lr_decay"),
    ("cifar", ["--lr_decay=-0.1"], "--lr_decay"),
    ("cifar", ["--weight_decay=-1"], "--weight_decay"),
    ("cifar", ["--eval_every=-1"], "--eval_every"),
    ("cifar", ["--warmup_lr=0"], "--warmup_lr"),
    ("cifar", ["--lr=nan"], "--lr"),
    ("cifar", ["--lr=inf"], "--lr"),
    ("cifar", ["--lr=-0.1"], "--lr"),
    ("cifar", ["--epochs=0"], "--epochs"),
    ("cifar", ["--epochs=inf"], "--epochs"),
    ("cifar", ["--seed=-1"], "--seed"),
    ("cifar", ["--batch_size=0"], "--batch_size"),
    ("cifar", ["--train_steps=0"], "--train_steps"),
    ("cifar", ["--keep_checkpoints=0"], "--keep_checkpoints"),
    ("cifar", ["--log_every=0"], "--log_every"),
    ("cifar", ["--checkpoint_every=-3"], "--checkpoint_every"),
    ("cifar", ["--label_smoothing=1.5"], "--label_smoothing"),
    ("cifar", ["--divergence_factor=0.5"], "--divergence_factor"),
    ("cifar", ["--divergence_window=0"], "--divergence_window"),
    ("cifar", ["--model=resnet21"], "--model"),
    ("cifar", ["--model=vgg16"], "--model"),
    ("cifar", ["--data_dir={tmp}/none"], "--data_dir"),
    ("cifar", ["--data_dir={files}/one_class"], "--data_dir"),
    ("cifar", ["--export", "--export_dir=/dev/null/e"], "--export_dir"),
    ("cifar", ["--epochs=2", "--train_steps=3"], "--epochs"),
    ("cifar", ["--lr_boundaries=half"], "--lr_boundaries"),
    ("cifar", ["--gate_bias_init=0"], "--gate_bias_init"),  # the identity shortcut has no gate
    ("cifar", ["--shortcut=exclusive_gating", "--dropout_rate=0.5"], "--dropout_rate"),
    ("cifar", ["--shortcut=constant_scaling", "--shortcut_scale=nan"], "--shortcut_scale"),
    ("cifar", ["--shortcut=constant_scaling", "--shortcut_scale=-1"], "--shortcut_scale"),
    ("cifar", ["--shortcut=dropout", "--dropout_rate=1"], "--dropout_rate"),
    ("cifar", ["--shortcut=dropout", "--scale_residual"], "--scale_residual"),
    ("imagenet", ["--eval_sizes=256"], "--eval_sizes"),
    ("imagenet", ["--augment=mixup"], "--augment"),
    ("imagenet", ["--momentum=2"], "--momentum"),
    # --- ablation runner ---
    ("ablation", ["--model=resnet21", "--out={tmp}/out"], "--model"),
    ("ablation", ["--seeds=a", "--out={tmp}/out"], "--seeds"),
    ("ablation", ["--seeds=1,1", "--out={tmp}/out"], "--seeds"),
    ("ablation", ["--variants=preact", "--out={tmp}/out"], "--variants"),
    ("ablation", ["--epochs=0", "--out={tmp}/out"], "--epochs"),
    ("ablation", ["--batch_size=0", "--out={tmp}/out"], "--batch_size"),
    ("ablation", ["--out=/dev/null/x"], "--out"),
    ("ablation", ["--data_dir={tmp}/none", "--out={tmp}/out"], "--data_dir"),
    ("ablation", ["--out={tmp}/out", "--", "--weight_decay=-1"], "--weight_decay"),
    ("ablation", ["--out={tmp}/out", "--", "--no_such_flag=1"], "--no_such_flag"),
    ("ablation", ["--out={tmp}/out", "--", "--momentum=abc"], "--momentum"),
    ("ablation", ["--epochs=abc"], "--epochs"),
    ("ablation", ["--variants=identity:gate_bias_init=0", "--out={tmp}/out"], "--variants"),
    ("ablation", ["--variants=dropout:dropout_rate=often", "--out={tmp}/out"], "--variants"),
    ("ablation", ["--reuse_from={tmp}", "--out={tmp}/out"], "--reuse_from"),
    # --- python -m keras_preact.export ---
    ("export", ["--model_file", "{files}/garbage.keras", *EXPORT, "--base_dir", "{tmp}/b"], "--model_file"),
    ("export", ["--model_file", "{tmp}/missing.keras", *EXPORT, "--base_dir", "{tmp}/b"], "--model_file"),
    ("export", ["--checkpoint", "{tmp}", "--model", "resnet8", "--model_kwargs", "notjson", *EXPORT,
                "--base_dir", "{tmp}/b"], "--model_kwargs"),
    ("export", ["--checkpoint", "{tmp}", *EXPORT, "--base_dir", "{tmp}/b"], "--model"),
    ("export", ["--checkpoint", "{tmp}", "--model", "vgg16", *EXPORT, "--base_dir", "{tmp}/b"], "--model"),
    ("export", ["--model_file", "{files}/garbage.keras", *EXPORT, "--base_dir", "/dev/null/b"], "--base_dir"),
    ("export", ["--model_file", "{files}/garbage.keras", *EXPORT, "--top_k", "0"], "--top_k"),
    ("export", ["--model_file", "{files}/garbage.keras", *EXPORT, "--eval_limit", "-1"], "--eval_limit"),
    ("export", ["--model_file", "{files}/garbage.keras", *EXPORT, "--version", "x"], "--version"),
    ("export", ["--model_file", "{files}/garbage.keras", *EXPORT, "--max_image_pixels", "0"], "--max_image_pixels"),
    ("export", ["--model_file", "{files}/garbage.keras", "--preprocessing", "jpeg"], "--preprocessing"),
    ("export", ["--model_file", "{files}/garbage.keras", "--preprocessing", "cifar", "--class_names", "a,b",
                "--tflite", "int4"], "--tflite"),
    ("export", ["--checkpoint", "{tmp}", "--model", "resnet8", *EXPORT, "--num_classes", "1",
                "--base_dir", "{tmp}/b"], "--num_classes"),
    ("export", ["--checkpoint", "{tmp}", "--model", "resnet8", "--preprocessing", "cifar",
                "--labels_file", "{tmp}/nolabels.txt", "--base_dir", "{tmp}/b"], "--labels_file"),
    ("export", ["--checkpoint", "{tmp}", "--model", "resnet8", *EXPORT, "--base_dir", "/dev/null/b"], "--base_dir"),
    ("export", ["--model_file", "x.keras", "--checkpoint", "{tmp}", *EXPORT], "--checkpoint"),
    ("export", ["--model_file", "{files}/garbage.keras", *EXPORT, "--tta", "mirror"], "--tta"),
    # --- python -m keras_preact.diagnostics ---
    ("diagnostics", ["--model=vgg16", "--out={tmp}/p.png"], "vgg16"),
    ("diagnostics", ["--batch_size=0", "--out={tmp}/p.png"], "--batch_size"),
    ("diagnostics", ["--batch_size=x", "--out={tmp}/p.png"], "--batch_size"),
    ("diagnostics", ["--dpi=-5", "--out={tmp}/p.png"], "--dpi"),
    ("diagnostics", ["--shortcut_scale=0", "--out={tmp}/p.png"], "--shortcut_scale"),
    ("diagnostics", ["--shortcut_scale=nan", "--out={tmp}/p.png"], "--shortcut_scale"),
    ("diagnostics", ["--out={tmp}/p.jpg"], "--out"),
    ("diagnostics", ["--out=/dev/null/p.png"], "--out"),
    ("diagnostics", ["--model_file={files}/garbage.keras", "--out={tmp}/p.png"], "--model_file"),
    ("diagnostics", ["--model_file={tmp}/missing.keras", "--out={tmp}/p.png"], "--model_file"),
    ("diagnostics", ["--mode=test", "--out={tmp}/p.png"], "--mode"),
    ("diagnostics", ["--recipe=jpeg", "--out={tmp}/p.png"], "--recipe"),
    # --- python -m keras_preact.export.classify ---
    ("classify", ["{files}/export"], "--eval_dir"),
    ("classify", ["{files}/export", "{tmp}/missing.jpg"], "images"),
    ("classify", ["{files}/export", "--eval_dir={tmp}/none"], "--eval_dir"),
    ("classify", ["{files}/export", "{files}/a_file", "--top_k=0"], "--top_k"),
    ("classify", ["{files}/export", "{files}/a_file", "--top_k=x"], "--top_k"),
    ("classify", ["{tmp}/nomodel", "{files}/a_file"], "model"),
    ("classify", [], "model"),
]
assert len(CASES) >= 60


@pytest.mark.parametrize("tool, argv, flag", CASES, ids=[f"{t}:{' '.join(a)[:60]}" for t, a, _ in CASES])
def test_malformed_invocation_is_one_line_naming_the_flag(tool, argv, flag, files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)).replace("{files}", str(files)) for a in argv]
    stderr, stdout = io.StringIO(), io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(stdout):
        code = TOOLS[tool](argv)
    seconds = time.monotonic() - started
    err = stderr.getvalue()
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, (code, err, stdout.getvalue()[-500:])
    assert len(lines) == 1 and "error" in lines[0] and flag in lines[0], err
    assert "Traceback" not in err and "usage:" not in err
    assert seconds < 20
    assert not os.listdir(tmp_path)  # nothing written by a refused command


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_help_exits_0(tool, capsys):
    assert TOOLS[tool](["--help"]) in (0, None)
    out = capsys.readouterr().out
    assert "--" in out


def test_classify_help_lists_the_formats_the_guard_accepts(capsys):
    """GIF and BMP are decoded by training, evaluation and serving alike (keras_preact.data.guard)."""
    run_argparse(classify.main, ["--help"])
    assert "JPEG, PNG, GIF, BMP" in capsys.readouterr().out


SCRIPTS = {
    "cifar-help": ([os.path.join("trainers", "cifar.py"), "--help"], 0),
    "cifar-bad": ([os.path.join("trainers", "cifar.py"), "--momentum=-1"], 2),
    "ablation-help": ([os.path.join("trainers", "ablation.py"), "--help"], 0),
    "ablation-bad-trainer-flag": ([os.path.join("trainers", "ablation.py"), "--out=/dev/null/x"], 2),
}


def test_real_scripts_help_exits_0_and_bad_flags_exit_2():
    def run(argv):
        started = time.monotonic()
        done = subprocess.run([sys.executable, *argv], capture_output=True, text=True,
                              env=trainer_runs.env(), cwd=trainer_runs.ROOT, timeout=120)
        return done, time.monotonic() - started

    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = {name: pool.submit(run, argv) for name, (argv, _) in SCRIPTS.items()}
        results = {name: future.result() for name, future in results.items()}
    for name, (done, seconds) in results.items():
        expected = SCRIPTS[name][1]
        assert done.returncode == expected, (name, done.stderr[-1500:])
        assert "Traceback" not in done.stderr, name
        errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == (1 if expected else 0), (name, done.stderr[-1500:])
        assert seconds < 60


@pytest.mark.slow
def test_python_m_keras_preact_cli_train():
    """``python -m keras_preact.cli.train FAMILY`` is that family's trainer; without a family, a
    one-line usage and exit status 2."""
    def run(*argv):
        return subprocess.run([sys.executable, "-m", "keras_preact.cli.train", *argv], capture_output=True,
                              text=True, env=trainer_runs.env(), cwd=trainer_runs.ROOT, timeout=120)

    with concurrent.futures.ThreadPoolExecutor(max_workers=3) as pool:
        bare, helped, bad = pool.map(lambda argv: run(*argv), [(), ("cifar", "--help"), ("imagenet", "--momentum=2")])
    assert bare.returncode == 2 and bare.stdout == ""
    # The -m form imports the package, and so TensorFlow, before it runs: TensorFlow's start-up
    # lines may come first (the commands keep them off: keras_preact_commands). The usage is last.
    line = [line for line in bare.stderr.splitlines() if line.strip()][-1]
    assert line.startswith("usage: python -m keras_preact.cli.train {cifar|imagenet}")
    assert helped.returncode == 0 and "--batch_size" in helped.stdout and "from --recipe" in helped.stdout
    errors = [line for line in bad.stderr.splitlines() if line.startswith("error: ")]
    assert bad.returncode == 2 and len(errors) == 1 and errors[0].startswith("error: --momentum: "), bad.stderr
