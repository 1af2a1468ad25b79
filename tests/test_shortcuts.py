"""Shortcut layers: the combination layer used by graphs built op by op, and serialization."""

import keras
import numpy as np
import pytest

from harness import assert_config_round_trip, assert_keras_round_trip
from keras_preact.shortcuts import ShortcutCombine, ShortcutGate, ZeroPadShortcut


@pytest.mark.parametrize("shortcut", ["identity", "constant_scaling", "exclusive_gating",
                                      "shortcut_only_gating"])
def test_combine_layer_matches_the_formula_and_round_trips(shortcut, tmp_path):
    rng = np.random.RandomState(0)
    h, f = rng.randn(2, 2, 4, 4, 3).astype("float32")
    g = rng.rand(2, 4, 4, 3).astype("float32")
    gated = shortcut.endswith("gating")
    inputs = [keras.Input((4, 4, 3)) for _ in range(3 if gated else 2)]
    layer = ShortcutCombine(shortcut, shortcut_scale=0.3, scale_residual=True)
    model = keras.Model(inputs, layer(inputs))
    expected = {
        "identity": h + f,
        "constant_scaling": 0.3 * h + 0.7 * f,
        "exclusive_gating": (1 - g) * h + g * f,
        "shortcut_only_gating": (1 - g) * h + f,
    }[shortcut]
    values = [h, f, g] if gated else [h, f]
    np.testing.assert_allclose(model(values), expected, rtol=1e-6, atol=1e-6)
    assert_keras_round_trip(model, values, tmp_path)  # the loaded copy computes the same


def test_combine_rejects_unknown_shortcuts():
    with pytest.raises(ValueError, match="exclusive_gating"):
        ShortcutCombine("gate")


def test_gate_and_zero_pad_configs_round_trip():
    gate = assert_config_round_trip(ShortcutGate(8, strides=2, bias_init=-3.0))
    assert gate.bias_init == -3.0
    pad = assert_config_round_trip(ZeroPadShortcut(16, strides=2))
    assert (pad.filters, pad.strides) == (16, 2)
    assert pad.compute_output_shape((None, 9, 9, 8)) == (None, 5, 5, 16)
