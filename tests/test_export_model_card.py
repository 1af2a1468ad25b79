"""The model card's training record: what it reads from a trainer's run directory."""

import csv
import json
import os

from keras_preact.export import model_card
from keras_preact.training.observe import METRIC_FIELDS, RESULTS_FILE


def _write_run(run_dir, rows):
    os.makedirs(run_dir)
    with open(os.path.join(run_dir, "metrics.csv"), "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=METRIC_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)
    results = {"steps": 400, "final": {"test": {"error": 0.1}}, "parameters": 1000, "argv": ["cifar.py", "--seed=4"],
               "recipe": {"name": "fast"}, "base_lr": 0.1, "global_batch": 128}
    with open(os.path.join(run_dir, RESULTS_FILE), "w") as handle:
        json.dump(results, handle)


def _row(step, wall_time, train_seconds, rate):
    return {"step": step, "epoch": step / 100, "learning_rate": 0.1, "train_loss": 1.0, "train_error": 0.5,
            "images_per_sec": rate, "wall_time": wall_time, "train_seconds": train_seconds}


def test_training_time_of_a_run_resumed_a_day_later_is_the_trainers_clock(tmp_path):
    # Two processes: steps 100-200, then, resumed the next day, 300-400; 50 s per 100 steps, and an
    # evaluation row in between that is no training row.
    day = 86400.0
    rows = [_row(100, 1000.0, 50.0, 256.0), _row(200, 1050.0, 100.0, 250.0),
            {"step": 200, "eval_name": "test", "test_loss": 0.5, "test_error": 0.2, "wall_time": 1060.0},
            _row(300, 1050.0 + day, 150.0, 260.0), _row(400, 1100.0 + day, 200.0, 240.0)]
    run_dir = str(tmp_path / "run")
    _write_run(run_dir, rows)

    record = model_card.training_record(run_dir)

    assert record["train_hours"] == round(200.0 / 3600, 2)
    assert record["wall_time_hours"] == round((100.0 + day) / 3600, 2)  # the span: a day of pause in it
    assert record["median_images_per_sec"] == 256.0 and record["first_logged_step"] == 100
    assert record["command"] == "python trainers/cifar.py --seed=4"
    line = model_card._time_text(record)
    assert line.startswith("Training time: 0.06 h in training steps, at a median 256 images/s")
    assert "wall-clock span from the first logged iteration (100) to the end: 24.03 h" in line


def test_a_card_written_before_the_trainers_clock_was_recorded_still_renders():
    old = {"first_logged_step": 100, "wall_time_hours": 1.89, "median_images_per_sec": 576.6}
    assert model_card._time_text(old) == (
        "Wall-clock span from the first logged iteration (100) to the end: 1.89 h, at a median 577 images/s.")


CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_a_re_export_keeps_the_earlier_cards_training_and_shows_the_parity_report(tmp_path):
    # A re-export (export --saved_model) has no run directory to read: --training_from keeps the
    # earlier card's training record and training hardware; the parity report, ONNX against
    # serving_default included, is the new export's.
    import pytest
    import keras_preact
    from keras_preact.export.exporter import export_model

    model = keras_preact.build_resnet((1, 1, 1), widths=(8, 16, 16))
    base = str(tmp_path / "saved_models")
    export_model(model, base, name="tiny", preprocessing="cifar", class_names=CLASSES, tflite_variants=(),
                 onnx=True, eval_limit=50, verbose=False)
    model_dir = os.path.join(base, "tiny")
    run_dir = str(tmp_path / "run")
    _write_run(run_dir, [_row(100, 1000.0, 50.0, 256.0), _row(200, 1050.0, 100.0, 250.0)])
    training = dict(model_card.training_record(run_dir), recipe={})  # "recipe not recorded"
    trained_on = {"cpu": "The training CPU", "cpu_flags": [], "logical_cores": 2, "memory_gb": 24.0, "gpu": False,
                  "tensorflow": "2.21.0", "keras": "3.15.1"}
    earlier = os.path.join(model_dir, model_card.CARD_JSON)
    with open(earlier, "w") as handle:
        json.dump({"training": training, "hardware": trained_on}, handle)

    assert model_card.main([model_dir, "--training_from", earlier]) == 0

    with open(earlier) as handle:
        card = json.load(handle)
    assert card["training"] == training and card["hardware"] == trained_on
    assert card["measured_on"]["cpu"] != "The training CPU"
    parity = card["measured"]["parity"]
    assert parity["num_images"] == 50 and parity["vs_serving_default"]["onnx"]["passed"]
    assert set(card["measured"]["accuracy"]["sample_test"]) == {"saved_model", "onnx"}
    with open(os.path.join(model_dir, model_card.CARD_MD)) as handle:
        markdown = handle.read()
    assert "Hardware: The training CPU, 2 logical cores" in markdown
    assert "## Parity" in markdown and "onnx vs saved_model/serving_default: max abs diff" in markdown
    # One source of the training record, not both, not none.
    for argv in ([model_dir], [model_dir, "--training_from", earlier, "--run_dir", run_dir]):
        with pytest.raises(SystemExit) as exit_info:
            model_card.main(argv)
        assert exit_info.value.code == 2
