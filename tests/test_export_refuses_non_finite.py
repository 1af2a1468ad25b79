"""End to end: a real training run whose newest checkpoint holds NaN (as a run that diverged
before ``RunCheckpoints.save`` refused non-finite states could have left it) is refused

* by ``python -m keras_preact.export --checkpoint``: exit status 2, ONE error line that says the
  checkpoint holds non-finite values and names it (not "does not hold ... variables: wrong
  --model"), no traceback, no export written;
* by the trainer resuming that run directory: exit status 3, one ``error:`` line naming the
  checkpoint, no traceback, nothing new written into ``checkpoints/``.

The trainer and exporter run as real processes (``trainers/cifar.py``, ``-m
keras_preact.export``); the first, healthy run trains in-process through ``console_main``.
"""

import io
import json
import os
import re
import subprocess

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

import trainer_runs
from keras_preact.cli import train as train_cli
from keras_preact.export.__main__ import build_architecture, restore_checkpoint
from keras_preact.training import checkpoints as ckpt_lib

MODEL = "resnet8"


def _train_flags(run_dir, steps):
    return ["--dataset=cifar10_sample", f"--model={MODEL}", "--batch_size=8", f"--train_steps={steps}",
            "--log_every=1", f"--model_dir={run_dir}"]


def _poison(prefix, staging_dir):
    """Rewrite checkpoint ``prefix`` in place with every value of one kernel (the first by name) set to NaN.

    Every other tensor, the object graph included, is written back unchanged with the same
    name, dtype and shape, so the file differs from the healthy one only by the NaN; the
    ``checkpoint`` state file keeps naming ``prefix``. Returns the poisoned tensor's name.
    """
    reader = tf.train.load_checkpoint(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    kernels = sorted(n for n, d in dtypes.items()
                     if d.is_floating and n.startswith("model/") and "kernel" in n)
    assert kernels, sorted(dtypes)
    target = kernels[0]
    names = sorted(dtypes)
    tensors = []
    for name in names:
        value = reader.get_tensor(name)
        if name == target:
            value = np.full(value.shape, np.nan, value.dtype)
        tensors.append(tf.constant(value, dtype=dtypes[name]))
    staged = os.path.join(staging_dir, os.path.basename(prefix))
    tf.raw_ops.SaveV2(prefix=staged, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
    old = ckpt_lib.checkpoint_files(prefix)
    new = ckpt_lib.checkpoint_files(staged)
    assert [f[len(prefix):] for f in old] == [f[len(staged):] for f in new], (old, new)
    for source in new:  # replace (not write through) the run's files: pending/ hard-links them
        os.replace(source, prefix + source[len(staged):])
    return target


def _error_lines(text):
    return [line for line in text.splitlines() if "error:" in line]


@pytest.mark.slow
def test_export_and_resume_refuse_a_checkpoint_with_nan(tmp_path):
    run_dir = str(tmp_path / "run")
    base = str(tmp_path / "saved_models")

    # 1. A real, healthy run of 2 steps through the trainer's command line.
    flag_values = flags.FlagValues()
    train_cli.define_flags("cifar", flag_values)
    argv = ["cifar.py", *_train_flags(run_dir, 2)]
    assert train_cli.console_main("cifar", argv, flag_values, stream=io.StringIO()) == 0
    model_kwargs = train_cli.config_from_flags("cifar", flag_values, argv=argv).model_kwargs
    checkpoint_dir = os.path.join(run_dir, ckpt_lib.CHECKPOINT_SUBDIR)
    prefix = tf.train.latest_checkpoint(checkpoint_dir)
    assert prefix is not None and prefix.endswith("ckpt-2"), prefix
    with open(os.path.join(run_dir, "labels.txt")) as f:
        num_classes = len([line for line in f if line.strip()])
    # Control: the healthy checkpoint is finite and restores into the architecture the
    # exporter builds from these very flags, so a refusal below can only be the NaN's doing.
    assert ckpt_lib.non_finite_tensors(prefix) == []
    model = build_architecture(MODEL, model_kwargs, num_classes, "cifar")
    assert restore_checkpoint(model, run_dir) == prefix

    # 2. Poison the newest checkpoint; the state file still names it.
    staging = tmp_path / "staging"
    staging.mkdir()
    before = {n: tuple(s) for n, s in tf.train.list_variables(prefix)}
    target = _poison(prefix, str(staging))
    assert tf.train.latest_checkpoint(checkpoint_dir) == prefix
    assert {n: tuple(s) for n, s in tf.train.list_variables(prefix)} == before
    poisoned = tf.train.load_checkpoint(prefix).get_tensor(target)
    assert poisoned.size > 0 and np.isnan(poisoned).all()
    assert ckpt_lib.non_finite_tensors(prefix) == [target]
    checkpoint_state = open(os.path.join(checkpoint_dir, "checkpoint")).read()
    checkpoint_files = sorted(f for f in os.listdir(checkpoint_dir) if f.startswith("ckpt-"))

    # 3. The exporter refuses it: exit 2, one line that says why and names the checkpoint.
    export = subprocess.run(
        [trainer_runs.console_command("keras-preact-export"), "--checkpoint", run_dir, "--model", MODEL,
         "--model_kwargs", json.dumps(model_kwargs), "--preprocessing", "cifar", "--base_dir", base,
         "--name", "poisoned", "--tflite", "none", "--eval_limit", "20"],
        capture_output=True, text=True, env=trainer_runs.env(), cwd=trainer_runs.ROOT, timeout=180,
    )
    report = f"exit {export.returncode}\nstdout:\n{export.stdout[-2000:]}\nstderr:\n{export.stderr[-3000:]}"
    assert export.returncode == 2, report
    assert "Traceback" not in export.stderr + export.stdout, report
    errors = _error_lines(export.stderr)
    assert len(errors) == 1, report
    [line] = errors
    assert line == export.stderr.strip().splitlines()[-1] == export.stderr.strip().splitlines()[0], report
    assert line.startswith("error: --checkpoint: "), report
    assert re.search(r"non-finite|NaN", line), report
    assert f"Checkpoint {prefix} " in line and target in line, report
    for misleading in ("does not hold", "wrong --model", "missing", "ResidualUnit"):
        assert misleading not in line, report
    assert f"Restored {prefix}" not in export.stderr, report
    assert export.stdout.strip() == "", report  # the exporter prints the export path on success
    written = [os.path.join(root, name) for root, _, names in os.walk(base) for name in names]
    assert not os.path.exists(os.path.join(base, "poisoned")) and written == [], written

    # 4. Resuming that run directory is refused too: exit 3, one line naming the checkpoint.
    code, out, err, _ = trainer_runs.run("cifar", *_train_flags(run_dir, 4), timeout=180)
    report = f"exit {code}\nstdout:\n{out[-2000:]}\nstderr:\n{err[-3000:]}"
    assert code == train_cli.EXIT_DIVERGED == 3, report
    assert "Traceback" not in err + out, report
    errors = _error_lines(err)
    assert len(errors) == 1 and errors[0] == err.strip().splitlines()[-1], report
    assert errors[0].startswith(f"error: Checkpoint {prefix} holds non-finite values in 1 tensor(s) "
                                f"(e.g. {target}): "), report
    assert "Resumed from" not in out and "Final test error" not in out, report
    assert open(os.path.join(checkpoint_dir, "checkpoint")).read() == checkpoint_state
    assert sorted(f for f in os.listdir(checkpoint_dir) if f.startswith("ckpt-")) == checkpoint_files
    assert np.isnan(tf.train.load_checkpoint(prefix).get_tensor(target)).all()
