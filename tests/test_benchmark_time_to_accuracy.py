"""benchmarks/time_to_accuracy.py end to end on the embedded sample, with budgets of seconds."""

import json
import os
import subprocess
import sys

import pytest
import trainer_runs
from keras_preact.data import cifar10_sample_dir

SCRIPT = os.path.join(trainer_runs.ROOT, "benchmarks", "time_to_accuracy.py")
LEVERS = os.path.join(trainer_runs.ROOT, "benchmarks", "evaluation_levers.py")
TTA_VIEWS = os.path.join(trainer_runs.ROOT, "benchmarks", "tta_views.py")


# Six subprocesses, two of them timed training runs: minutes on a 2-core CPU (`pytest -m slow`).
@pytest.mark.slow
def test_both_runs_write_curves_json_and_plot(tmp_path):
    out = tmp_path / "tta"
    command = [sys.executable, SCRIPT, f"--data_dir={cifar10_sample_dir()}", "--model=resnet8",
               "--budget_minutes=0.15", "--baseline_minutes=0.1", "--evals=2", "--target=0.15",
               "--dtype_policy=float32", f"--output_dir={out}"]
    process = subprocess.run(command, capture_output=True, text=True, env=trainer_runs.env(),
                             cwd=trainer_runs.ROOT, timeout=400)
    assert process.returncode == 0, process.stdout[-2000:] + process.stderr[-3000:]
    assert "CPU: " in process.stdout and "min to 15%" in process.stdout
    result = json.loads((out / "time_to_accuracy.json").read_text())
    assert result["cpu"]["model"] and result["model"] == "resnet8"
    for name in ("fast", "baseline"):
        curve = result[name]["curve"]
        assert len(curve) >= 2 and all(0 <= accuracy <= 1 for _, accuracy in curve)
        minutes = [m for m, _ in curve]
        assert minutes == sorted(minutes) and minutes[-1] <= 1.0
        assert result[name]["best_accuracy"] == max(a for _, a in curve)
    plan = json.loads((out / "fast" / "plan.json").read_text())
    assert plan["images_per_sec_probe"] > 0 and plan["train_examples"] == 5000
    assert "--recipe=fast" in result["fast"]["command"]
    ten_views = result["fast"]["final_accuracy_ten_views"]  # the final weights, ten-view TTA
    assert 0 < ten_views <= 1 and "(ten views, float32)" in process.stdout
    assert (out / "time_to_accuracy.png").stat().st_size > 1000
    # Run again: the finished fast run is resumed (nothing retrained), its plan kept.
    again = subprocess.run(command + ["--baseline_minutes=0", "--no-final_translate"], capture_output=True, text=True,
                           env=trainer_runs.env(), cwd=trainer_runs.ROOT, timeout=400)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "Resuming the fast run planned" in again.stdout
    rerun = json.loads((out / "time_to_accuracy.json").read_text())["fast"]
    assert rerun["curve"] == result["fast"]["curve"] and "final_accuracy_ten_views" not in rerun

    # The evaluation levers of the same run: own/averaged weights, with and without flip.
    levers = subprocess.run([sys.executable, LEVERS, f"--run_dir={out / 'fast'}", "--model=resnet8",
                             f"--data_dir={cifar10_sample_dir()}", "--batch_size=250"],
                            capture_output=True, text=True, env=trainer_runs.env(), cwd=trainer_runs.ROOT,
                            timeout=300)
    assert levers.returncode == 0, levers.stderr[-3000:]
    table = json.loads((out / "fast" / "evaluation_levers.json").read_text())
    assert table["images"] == 1000 and table["rows"]
    last = table["rows"][-1]
    assert set(last) == {"step", "own", "own+flip", "average", "average+flip", "average+flip+translate"}
    assert 0.2 < last["average+flip+translate"] <= 1  # the ten views of a briefly trained net: above chance (0.1)
    assert abs(last["average+flip+translate"] - ten_views) <= 0.003  # what the benchmark recorded
    # The run's own last evaluation (averaged weights, flip) is what the tool measures (up to a
    # few images whose top class flips with the batch size's float round-off).
    assert abs(last["average+flip"] - result["fast"]["curve"][-1][1]) <= 0.005
    only_last = subprocess.run([sys.executable, LEVERS, f"--run_dir={out / 'fast'}", "--model=resnet8",
                                f"--data_dir={cifar10_sample_dir()}", "--batch_size=250", "--last"],
                               capture_output=True, text=True, env=trainer_runs.env(), cwd=trainer_runs.ROOT,
                               timeout=300)
    assert only_last.returncode == 0, only_last.stderr[-3000:]
    assert json.loads((out / "fast" / "evaluation_levers.json").read_text())["rows"] == [last]

    # The view-set study on the same checkpoint: its "flip" and "flip+cross1" sets are the
    # levers' average+flip and ten-view columns, computed by another path.
    views = subprocess.run([sys.executable, TTA_VIEWS, f"--run_dir={out / 'fast'}", "--model=resnet8",
                            f"--data_dir={cifar10_sample_dir()}", "--batch_size=250", "--max_shift=1"],
                           capture_output=True, text=True, env=trainer_runs.env(), cwd=trainer_runs.ROOT,
                           timeout=300)
    assert views.returncode == 0, views.stderr[-3000:]
    study = json.loads((out / "fast" / "tta_views.json").read_text())
    assert study["weights"] == "averaged" and study["images"] == 1000
    assert set(study["accuracy"]) == {"none", "flip", "flip+cross1", "flip+diag1", "flip+grid1"}
    assert abs(study["accuracy"]["flip"] - last["average+flip"]) <= 0.003
    assert abs(study["accuracy"]["flip+cross1"] - last["average+flip+translate"]) <= 0.003
    assert abs(study["accuracy"]["none"] - last["average"]) <= 0.003
