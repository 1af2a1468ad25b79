"""benchmarks/serving_accuracy.py refuses what it cannot measure, each with one clear line."""

import glob
import importlib.util
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location("serving_accuracy", os.path.join(ROOT, "benchmarks", "serving_accuracy.py"))
serving_accuracy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(serving_accuracy)


def _fake_model(base, versions):
    for version in versions:
        os.makedirs(base / version)
        (base / version / "saved_model.pb").write_bytes(b"")
    return base


def test_the_newest_numeric_version_is_the_one_loaded_as_tf_serving_does(tmp_path):
    base = _fake_model(tmp_path / "model", ["2", "10", "9"])
    os.makedirs(base / "11")  # no saved_model.pb: not a version
    os.makedirs(base / "latest")
    assert serving_accuracy.version_dir(str(base)) == str(base / "10")
    assert serving_accuracy.version_dir(str(base / "2")) == str(base / "2")


@pytest.mark.parametrize("layout, message", [
    (None, "No such model directory"),
    ([], "holds no SavedModel"),
])
def test_a_missing_model_is_refused(tmp_path, layout, message):
    path = tmp_path / "model"
    if layout is not None:
        os.makedirs(path)
    with pytest.raises(SystemExit, match=message):
        serving_accuracy.version_dir(str(path))


def test_images_are_read_in_class_folders_and_an_empty_or_missing_split_refused(tmp_path):
    for name, files in (("cat", ["b.jpg", "a.PNG", "notes.txt"]), ("dog", ["c.jpeg"])):
        os.makedirs(tmp_path / "test" / name)
        for f in files:
            (tmp_path / "test" / name / f).write_bytes(b"")
    pairs = serving_accuracy.labelled_images(str(tmp_path), "test")
    assert [(os.path.basename(p), c) for p, c in pairs] == [("a.PNG", "cat"), ("b.jpg", "cat"), ("c.jpeg", "dog")]
    with pytest.raises(SystemExit, match="No 'train' split"):
        serving_accuracy.labelled_images(str(tmp_path), "train")
    os.makedirs(tmp_path / "val" / "cat")
    with pytest.raises(SystemExit, match="No images under"):
        serving_accuracy.labelled_images(str(tmp_path), "val")


def test_classes_the_model_does_not_know_are_refused(tmp_path):
    cards = sorted(glob.glob(os.path.join(ROOT, "saved_models", "*", "model_card.json")))
    assert cards, "no shipped model"
    model = os.path.dirname(cards[0])
    os.makedirs(tmp_path / "test" / "unicorn")
    (tmp_path / "test" / "unicorn" / "u.jpg").write_bytes(b"")
    with pytest.raises(SystemExit, match="does not know: unicorn"):
        serving_accuracy.main([model, f"--data_dir={tmp_path}"])
    with pytest.raises(SystemExit):
        serving_accuracy.main([model, f"--data_dir={tmp_path}", "--batch_size=0"])
