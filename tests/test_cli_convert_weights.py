"""python -m keras_preact.cli.convert_weights: a timm / Torch file -> .keras or .weights.h5."""

import os

import keras
import numpy as np
import pytest

import keras_preact
from keras_preact.cli import convert_weights

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures", "torch")
IO = np.load(os.path.join(FIXTURES, "io.npz"))


def test_timm_file_to_keras_file(tmp_path, capsys):
    out = str(tmp_path / "timm.keras")
    assert convert_weights.main([os.path.join(FIXTURES, "timm_bottleneck.safetensors"), "--out", out]) == 0
    assert "stem=timm, padding=symmetric, 5 classes" in capsys.readouterr().out
    model = keras.saving.load_model(out, safe_mode=True)
    assert isinstance(model, keras_preact.ResNet)
    got = np.asarray(model(IO["timm_bottleneck_x"], training=False))
    np.testing.assert_allclose(got, IO["timm_bottleneck_logits"], rtol=1e-4, atol=1e-5)


def test_torch_file_to_weights_h5_with_a_model(tmp_path):
    out = str(tmp_path / "cifar.weights.h5")
    source = os.path.join(FIXTURES, "cifar_basic.pth")
    # resnet8's widths are 16/32/64: the fixture's 8/16/32 net is refused, naming the tensor.
    with pytest.raises(SystemExit) as exit_info:
        convert_weights.main([source, "--model", "resnet8", "--out", out,
                              "--model_kwargs", '{"num_classes": 3}'])
    assert exit_info.value.code == 2 and not os.path.exists(out)


@pytest.mark.parametrize("argv,message", [
    (["x.safetensors", "--out", "y.onnx"], "--out: must end in"),
    (["x.safetensors", "--out", "y.keras", "--model_kwargs", "{"], "--model_kwargs: not valid JSON"),
    (["x.safetensors", "--out", "y.keras", "--model", "vgg"], "--model: Unknown model"),
    (["missing.safetensors", "--out", "y.keras"], "No weights file"),
])
def test_bad_arguments_exit_2_naming_the_problem(argv, message, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if argv[0] == "x.safetensors":
        keras_preact.weights.write_safetensors(
            keras_preact.weights.torch_tensors(keras_preact.get_model("resnet8")), "x.safetensors")
    with pytest.raises(SystemExit) as exit_info:
        convert_weights.main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
