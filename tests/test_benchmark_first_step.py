"""benchmarks/first_step.py: the first training step split into phases, one process per case."""

import json
import os
import subprocess
import sys

import pytest

import trainer_runs

SCRIPT = os.path.join(trainer_runs.ROOT, "benchmarks", "first_step.py")


@pytest.mark.slow
def test_phases_add_up_to_the_first_step_and_lazy_slots_trace_twice(tmp_path):
    out = tmp_path / "first_step.json"
    done = subprocess.run(
        [sys.executable, SCRIPT, "--models=resnet8", "--variants=default,lazy_slots,keras_sgd", "--batch=4", f"--out={out}"],
        capture_output=True, text=True, timeout=600, cwd=trainer_runs.ROOT,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.startswith("CPU: ") and "| resnet8 | default |" in done.stdout
    report = json.loads(out.read_text())
    rows = {row["variant"]: row for row in report["rows"]}
    for row in rows.values():
        seconds = row["seconds"]
        assert set(seconds) == {"import", "build", "trace", "first_run", "step"}
        assert all(value > 0 for value in seconds.values())
        phases_to_first = sum(seconds[p] for p in ("import", "build", "trace", "first_run"))
        assert abs(phases_to_first - row["first_step_s"]) < 0.05
    # The same step graph either way; only how often it was traced differs.
    assert rows["default"]["graph_ops"] == rows["lazy_slots"]["graph_ops"]
    # Keras' SGD writes the momentum update as separate ops per variable; FusedSGD as one kernel.
    assert rows["default"]["graph_ops"] < rows["keras_sgd"]["graph_ops"]
    bad = subprocess.run([sys.executable, SCRIPT, "--variants=fast"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown fast" in bad.stderr


def test_a_worker_killed_without_a_word_is_named():
    # The OOM killer's SIGKILL leaves no traceback; the row must still say what happened.
    sys.path.insert(0, os.path.join(trainer_runs.ROOT, "benchmarks"))
    from process_memory import worker_failure

    assert worker_failure(-9, "").startswith("killed by SIGKILL (out of memory?")
    assert worker_failure(-15, "") == "killed by SIGTERM"
    assert worker_failure(1, "Traceback ...\nValueError: bad\n") == "ValueError: bad"
    assert worker_failure(3, "") == "exit 3, no output"
