"""The console commands of ``[project.scripts]``: installed next to the interpreter, each runs."""

import os
import subprocess
import sys
from importlib import metadata

import pytest

# The commands the installed package declares ([project.scripts] of pyproject.toml).
SCRIPTS = sorted(entry.name for entry in metadata.distribution("keras_preact").entry_points
                 if entry.group == "console_scripts")
BIN = os.path.dirname(sys.executable)


def command(name):
    path = os.path.join(BIN, name)
    if not os.path.exists(path):
        pytest.fail(f"{name} is not installed next to {sys.executable}: reinstall the package "
                    "(pip install -e .) after changing [project.scripts].")
    return path


def test_every_command_answers_help():
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    processes = {name: subprocess.Popen([command(name), "--help"], stdout=subprocess.PIPE,
                                        stderr=subprocess.PIPE, text=True, env=env)
                 for name in SCRIPTS}
    for name, process in processes.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, f"{name} --help: exit {process.returncode}\n{err[-2000:]}"
        assert "--" in out, f"{name} --help printed no flags"
        # The usage line names the command as typed, and only the command's own flags follow
        # (absl's and TensorFlow's are under --helpfull).
        assert out.startswith(f"usage: {name}"), f"{name} --help begins {out[:80]!r}"
        assert "--only_check_args" not in out and "absl.app" not in out, f"{name} lists absl's flags"
    assert {"keras-preact-train", "keras-preact-export", "keras-preact-classify",
            "keras-preact-convert-weights", "keras-preact-diagnose"} <= set(SCRIPTS)


def test_a_misspelled_flag_is_one_line_and_exit_2():
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # a user's shell
    process = subprocess.run([command("keras-preact-train"), "--batchsize=8"], capture_output=True,
                             text=True, timeout=300, env=env)
    assert process.returncode == 2
    lines = [line for line in process.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line, no TensorFlow log first:\n{process.stderr}"
    assert lines[0].startswith("error: --batchsize:") and "batch_size" in lines[0], process.stderr
