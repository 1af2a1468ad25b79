"""The model shipped in saved_models/ loads and reproduces its model card on the bundled sample."""

import glob
import json
import os
import subprocess
import sys

import pytest

import trainer_runs
from keras_preact.data import cifar10_sample_dir, read_label_map
from keras_preact.export.classify import Release
from keras_preact.export.model_card import artefact_bytes, card_preprocessing

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CARDS = sorted(glob.glob(os.path.join(ROOT, "saved_models", "*", "model_card.json")))


def read_card(card_path):
    with open(card_path) as handle:
        return json.load(handle)


def test_a_trained_model_ships_and_its_card_describes_the_files_shipped():
    assert CARDS, "saved_models/<name>/model_card.json is missing: the shipped model is gone"
    for card_path in CARDS:
        card = read_card(card_path)
        release = Release(os.path.dirname(card_path))
        assert release.path == os.path.join(os.path.dirname(card_path), card["measured"]["version_dir"])
        # Sizes on disk are those the card lists (no artefact replaced after the card was written).
        assert artefact_bytes(release.path) == card["artefact_bytes"]
        assert card_preprocessing(card["measured"]) == release.preprocessing == "cifar"
        labels = read_label_map(os.path.join(release.path, "assets.extra"))
        assert card["measured"]["class_names"] == release.class_names == labels


@pytest.mark.slow
@pytest.mark.parametrize("card_path", CARDS, ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_shipped_model_classifies_the_bundled_sample_as_its_card_says(card_path):
    card = read_card(card_path)
    model_dir = os.path.dirname(card_path)
    release = Release(model_dir)
    claimed = card["measured"]["accuracy"]["sample_test"]
    assert set(claimed) == set(release.backends)  # the card covers every artefact shipped
    # serving_default's count is recomputed in a TensorFlow-only process (the test below);
    # every other artefact here (ten views of 1,000 images each: not counted twice).
    others = [backend for backend in release.backends if backend != "saved_model"]
    measured = release.evaluate_folder(cifar10_sample_dir(), "test", others)
    with open(os.path.join(model_dir, "MODEL_CARD.md")) as handle:
        markdown = handle.read()
    for backend, row in claimed.items():
        assert row["count"] == 1000
        assert f"| {backend} | {row['correct']} | 1000 | {100 * row['accuracy']:.2f}% |" in markdown
    for backend in others:
        assert measured[backend]["count"] == 1000
        assert measured[backend]["correct"] == claimed[backend]["correct"], backend
    # A trained model, not a placeholder: well above chance (10 %) on held-out images.
    assert claimed["saved_model"]["accuracy"] > 0.8
    # On the same images, the float TFLite and ONNX files classify as the SavedModel does and
    # int8 loses at most the export's target of 1 point.
    float_correct = claimed["saved_model"]["correct"]
    for backend, slack in (("tflite/float32", 1), ("tflite/float16", 2), ("onnx", 1)):  # those shipped
        if backend in measured:
            assert abs(measured[backend]["correct"] - float_correct) <= slack, backend
    assert measured["tflite/int8"]["correct"] >= float_correct - 10
    # The card names the test-time augmentation the artefacts compute (as their parity report).
    assert card["measured"]["tta"] == release.export_info.get("tta", "none")
    from keras_preact.export.model_card import tta_text
    assert tta_text(card["measured"]["tta"]) in markdown


@pytest.mark.slow
@pytest.mark.parametrize("card_path", CARDS[:1])
def test_classify_command_on_sample_images(card_path):
    model_dir = os.path.dirname(card_path)
    release = Release(model_dir)
    sample = cifar10_sample_dir()
    images = [sorted(glob.glob(os.path.join(sample, "test", name, "*.jpg")))[0] for name in ("cat", "ship")]
    done = subprocess.run(
        [trainer_runs.console_command("keras-preact-classify"), model_dir, *images, "--top_k=2"],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    assert len(lines) == 2
    with open(images[0], "rb") as handle:
        expected = release.class_names[int(release.logits([handle.read()]).argmax())]
    assert lines[0].startswith(f"{images[0]}: {expected} ")

    bad = subprocess.run(
        [trainer_runs.console_command("keras-preact-classify"), model_dir, __file__],
        capture_output=True, text=True, cwd=ROOT, timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert bad.returncode == 2 and "could not classify" in bad.stderr


@pytest.mark.slow
@pytest.mark.parametrize("card_path", CARDS, ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_serving_default_alone_reproduces_the_card_in_a_tensorflow_only_process(card_path, tmp_path):
    # What a TF Serving user gets: benchmarks/serving_accuracy.py imports TensorFlow only (it fails
    # if keras_preact was imported) and must count what the card counts for the SavedModel.
    claimed = read_card(card_path)["measured"]["accuracy"]["sample_test"]["saved_model"]
    output = tmp_path / "serving_accuracy.json"
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "serving_accuracy.py"), os.path.dirname(card_path),
         f"--data_dir={cifar10_sample_dir()}", f"--output={output}"],
        capture_output=True, text=True, cwd=str(tmp_path), timeout=300,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"),
    )
    assert done.returncode == 0, done.stderr[-2000:]
    with open(output) as handle:
        result = json.load(handle)
    assert (result["images"], result["correct"]) == (claimed["count"], claimed["correct"])
    assert result["keras_preact_imported"] is False and result["signature"] == "serving_default"


def card_rows_in_markdown(measured: dict, count: int) -> list:
    """The rows MODEL_CARD.md's accuracy tables must hold for one measured split of the card."""
    return [f"| {backend} | {row['correct']} | {count} | {100 * row['accuracy']:.2f}% |"
            for backend, row in measured.items()]


@pytest.mark.parametrize("card_path", CARDS, ids=lambda p: os.path.basename(os.path.dirname(p)))
def test_card_markdown_and_saved_model_agree_with_the_card_json(card_path):
    # The figures a reader sees (MODEL_CARD.md) are the card's measurements, and the SavedModel
    # holds the network the card describes. The READMEs and docs quote no figure a test pins;
    # they link to the card (tests/test_docs_links.py checks the links resolve).
    import numpy as np
    import tensorflow as tf

    card = read_card(card_path)
    model_dir = os.path.dirname(card_path)
    with open(os.path.join(model_dir, "MODEL_CARD.md")) as handle:
        markdown = handle.read()
    for split, measured in card["measured"]["accuracy"].items():
        count = {row["count"] for row in measured.values()}
        assert len(count) == 1, f"{split}: artefacts measured on different image counts"
        for row in card_rows_in_markdown(measured, count.pop()):
            assert row in markdown, f"MODEL_CARD.md lacks {split} row {row!r}"
    version = card["measured"]["version_dir"]
    assert f"`{version}/`" in markdown, f"MODEL_CARD.md does not describe version {version}"
    parameters = card["training"]["parameters"]
    assert f"Parameters: {parameters:,}." in markdown
    saved_model = tf.saved_model.load(os.path.join(model_dir, version))
    assert sum(int(np.prod(v.shape)) for v in saved_model.variables) == parameters
    # The card's parity section is the shipped version's own report, and every float32 artefact
    # passed it; where an ONNX file ships, it was checked against serving_default too.
    with open(os.path.join(model_dir, version, "assets.extra", "parity.json")) as handle:
        report = json.load(handle)
    parity = card["measured"]["parity"]
    assert parity["comparisons"] == report["comparisons"] and report["float32_parity_passed"]
    assert "## Parity" in markdown and f"Parity vs Keras on {report['num_images']} images" in markdown
    if os.path.isfile(os.path.join(model_dir, version, "assets.extra", "model.onnx")):
        assert report["vs_serving_default"]["onnx"]["passed"]
        assert "onnx vs saved_model/serving_default" in markdown


def test_readmes_link_to_every_shipped_model_card():
    # Each shipped model is reachable from the front door and from saved_models/README.md.
    for readme in ("README.md", os.path.join("saved_models", "README.md")):
        with open(os.path.join(ROOT, readme)) as handle:
            text = handle.read()
        for card_path in CARDS:
            card_md = os.path.relpath(os.path.join(os.path.dirname(card_path), "MODEL_CARD.md"),
                                      os.path.dirname(os.path.join(ROOT, readme)))
            assert f"]({card_md})" in text, f"{readme} does not link to {card_md}"
