"""``python -m keras_preact.diagnostics`` (``diagnostics/__main__.py``): the figure and JSON hold
the measurement of the nets named, bad arguments exit 2 with one line."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_preact import build_resnet
from keras_preact.diagnostics import propagation_norms
from keras_preact.diagnostics.__main__ import main
from keras_preact.diagnostics.batch import load_batch
from keras_preact.diagnostics.variants import build_variant

CURVES = ("forward", "backward", "backward_direct")


def png_size(path) -> tuple:
    """(height, width) of a PNG file, decoded."""
    return tuple(tf.io.decode_png(path.read_bytes()).shape[:2])


def test_cli_writes_figure_and_json_of_the_measured_nets(tmp_path, capsys):
    out = tmp_path / "figs" / "prop.png"
    variants = "full_preact/identity,full_preact/constant_scaling,original/identity"
    code = main(["--model", "ResNet-8", "--batch_size", "4", "--out", str(out), "--variants", variants])
    assert code == 0
    assert png_size(out) == (460, 1500)  # plot_propagation's 15 x 4.6 in figure at --dpi 100
    report = json.loads((tmp_path / "figs" / "prop.json").read_text())
    assert report["model"] == "resnet8"  # the registry's name for the alias given
    assert report["batch_size"] == 4 and report["mode"] == "train"
    assert list(report["variants"]) == variants.split(",")
    # The numbers are those of the named nets on the named batch: measure one again here.
    batch = load_batch(None, "test", 4)
    assert report["data"]["labels"] == batch["labels"].tolist()
    keras.utils.set_random_seed(0)  # --seed's default, as the command does before each build
    model = build_variant("resnet8", "full_preact", "constant_scaling", num_classes=10,
                          image_shape=(32, 32, 3), shortcut_scale=0.5, gate_bias_init=-6.0)
    expected = propagation_norms(model, batch["images"], batch["labels"], training=True)
    measured = report["variants"]["full_preact/constant_scaling"]
    for curve in CURVES:
        np.testing.assert_allclose(measured[curve], expected[curve], rtol=1e-5, err_msg=curve)
    assert report["variants"]["full_preact/identity"]["depth"] == [1, 3, 5]
    # The summary and the printed table are made from those curves.
    for label, norms in report["variants"].items():
        summary = report["summary"][label]
        assert summary["units"] == len(norms["forward"]) == 3
        assert summary["forward_first"] == norms["forward"][0]
        assert summary["backward_last"] == norms["backward"][-1]
        assert summary["backward_max_over_min"] == pytest.approx(max(norms["backward"]) / min(norms["backward"]))
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("full_preact/constant_scaling"))
    assert f"{report['summary']['full_preact/constant_scaling']['direct_last']:.3g}" in row


def test_cli_measures_a_saved_model_in_eval_mode(tmp_path):
    model = build_resnet((1, 1, 1), widths=(4, 8, 8), shortcut="conv1x1")
    model(np.random.RandomState(0).rand(8, 32, 32, 3).astype("float32"), training=True)  # moving stats
    model.save(tmp_path / "tiny.keras")
    out = tmp_path / "saved.png"
    assert main(["--model_file", str(tmp_path / "tiny.keras"), "--batch_size", "4",
                 "--mode", "eval", "--out", str(out)]) == 0
    report = json.loads((tmp_path / "saved.json").read_text())
    assert list(report["variants"]) == ["tiny.keras"] and report["mode"] == "eval"
    batch = load_batch(None, "test", 4)
    expected = propagation_norms(model, batch["images"], batch["labels"], training=False)
    measured = report["variants"]["tiny.keras"]
    assert measured["units"] == list(expected["units"]) and len(measured["units"]) == 3
    for curve in CURVES:
        np.testing.assert_allclose(measured[curve], expected[curve], rtol=1e-5, err_msg=curve)
    # Eval mode reads the moving statistics: training-mode numbers would differ.
    in_training_mode = propagation_norms(model, batch["images"], batch["labels"], training=True)
    assert not np.allclose(in_training_mode["forward"], expected["forward"], rtol=1e-3)


@pytest.mark.parametrize("args,message", [
    (["--variants", "full_preact/identiti"], "Bad variant 'full_preact/identiti'"),
    (["--model", "resnet21"], "Impossible depth 21"),
    (["--model", "vgg16"], "Unknown model 'vgg16'"),
    (["--model_file", "/no/such/model.keras"], "does not exist"),
    (["--data_dir", "/no/such/folder"], "does not exist"),
])
def test_cli_usage_errors_exit_2_with_one_line(args, message, tmp_path, capsys):
    assert main([*args, "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
    assert not (tmp_path / "x.png").exists()


@pytest.mark.slow
def test_python_dash_m_entry_point_exits_2_on_a_bad_variant(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run(
        [sys.executable, "-m", "keras_preact.diagnostics", "--variants", "preact/identity",
         "--out", str(tmp_path / "x.png")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert result.returncode == 2
    assert "error: Bad variant 'preact/identity'" in result.stderr
