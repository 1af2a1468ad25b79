"""The checks every serializable layer and model of the package must pass, written once.

Like keras-hub's ``TestCase`` (``run_model_saving_test``, ``run_serialization_test``), as plain
functions the test modules import (``from harness import ...``); they use ``keras.ops`` only,
so they run under every Keras backend.

* :func:`assert_keras_round_trip` -- save as ``.keras``, load with ``safe_mode=True`` (no Lambda
  layers, nothing unsafe), same class, same config, same outputs;
* :func:`assert_config_round_trip` -- ``from_config(get_config())`` and Keras' own
  (de)serialization give the same class and config;
* :func:`assert_rebuilds_from_config` -- a model rebuilt from its config holds the same
  weights and, given them, computes the same outputs;
* :func:`assert_same_outputs` -- two models (or layers) agree on the same inputs.
"""

import os

import keras
import numpy as np


def to_numpy(values):
    """A tensor, or a list of tensors, as numpy arrays (any backend)."""
    if isinstance(values, (list, tuple)):
        return [to_numpy(v) for v in values]
    return keras.ops.convert_to_numpy(values)


def outputs_of(model, inputs, training=False) -> list:
    """The model's outputs on ``inputs`` as a list of numpy arrays (one per output)."""
    out = to_numpy(model(inputs, training=training))
    return out if isinstance(out, list) else [out]


def assert_same_outputs(expected_model, model, inputs, *, atol=0.0, rtol=0.0, training=False,
                        names=None):
    """``model`` computes what ``expected_model`` computes on ``inputs`` (bit for bit when
    ``atol`` and ``rtol`` are 0). ``names`` label the outputs in a failure message."""
    expected, got = outputs_of(expected_model, inputs, training), outputs_of(model, inputs, training)
    assert len(got) == len(expected), f"{len(got)} outputs, expected {len(expected)}"
    names = names or [f"output {i}" for i in range(len(expected))]
    for name, e, g in zip(names, expected, got):
        if atol == 0 and rtol == 0:
            np.testing.assert_array_equal(g, e, err_msg=name)
        else:
            np.testing.assert_allclose(g, e, rtol=rtol, atol=atol, err_msg=name)


def _as_model(layer_or_model, inputs) -> keras.Model:
    if isinstance(layer_or_model, keras.Model):
        return layer_or_model
    x = [keras.Input(shape=v.shape[1:]) for v in inputs] if isinstance(inputs, list) else (
        keras.Input(shape=inputs.shape[1:]))
    return keras.Model(x, layer_or_model(x))


def _as_json(config):
    """A config as its ``.keras`` file holds it (JSON: tuples become lists)."""
    if isinstance(config, dict):
        return {key: _as_json(value) for key, value in config.items()}
    if isinstance(config, (list, tuple)):
        return [_as_json(value) for value in config]
    return config


def _layer_configs(model) -> dict:
    return {layer.name: _as_json(layer.get_config()) for layer in model.layers}


def assert_keras_round_trip(layer_or_model, inputs, tmp_path, *, atol=0.0, rtol=0.0, names=None):
    """Save ``layer_or_model`` as ``.keras``, load it with ``safe_mode=True`` and check that the
    copy is the same: class, config (the model's and every layer's) and outputs on ``inputs``
    in inference mode (bit for bit unless ``atol``/``rtol`` are given). A layer is saved
    inside a one-layer functional model. Returns the loaded model."""
    model = _as_model(layer_or_model, inputs)
    path = os.path.join(str(tmp_path), f"{model.name}.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert type(loaded) is type(model)
    assert loaded.name == model.name
    assert not any(isinstance(layer, keras.layers.Lambda) for layer in loaded.layers)
    assert _as_json(loaded.get_config()) == _as_json(model.get_config())
    assert _layer_configs(loaded) == _layer_configs(model)
    assert len(loaded.weights) == len(model.weights)
    assert_same_outputs(model, loaded, inputs, atol=atol, rtol=rtol, names=names)
    return loaded


def assert_config_round_trip(layer):
    """``type(layer).from_config(layer.get_config())`` and ``keras.saving``'s serialize /
    deserialize give an object of the same class with the same config. Returns the copy."""
    config = layer.get_config()
    clone = type(layer).from_config(config)
    assert type(clone) is type(layer) and clone.get_config() == config
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(layer))
    assert type(restored) is type(layer) and restored.get_config() == config
    return restored


def assert_rebuilds_from_config(model, inputs, *, atol=0.0, rtol=0.0):
    """``type(model).from_config(model.get_config())`` is the same network: the same layer
    names and parameter count, and with ``model``'s weights the same outputs. Returns it."""
    rebuilt = type(model).from_config(model.get_config())
    assert [layer.name for layer in rebuilt.layers] == [layer.name for layer in model.layers]
    assert rebuilt.count_params() == model.count_params()
    rebuilt.set_weights(model.get_weights())
    assert_same_outputs(model, rebuilt, inputs, atol=atol, rtol=rtol)
    return rebuilt
