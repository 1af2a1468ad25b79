"""benchmarks/first_step.py: the first training step split into phases, one process per case."""

import json
import os
import subprocess
import sys

import trainer_runs

SCRIPT = os.path.join(trainer_runs.ROOT, "benchmarks", "first_step.py")


def test_phases_add_up_to_the_first_step_and_lazy_slots_trace_twice(tmp_path):
    out = tmp_path / "first_step.json"
    done = subprocess.run(
        [sys.executable, SCRIPT, "--models=resnet8", "--variants=default,lazy_slots", "--batch=4", f"--out={out}"],
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
    bad = subprocess.run([sys.executable, SCRIPT, "--variants=fast"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown fast" in bad.stderr
