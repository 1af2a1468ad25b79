"""The cross-backend cases: which networks, which weights, which inputs.

Shared by ``tools/make_backend_fixtures.py`` (writes the TensorFlow reference outputs once) and
``tests/test_backends.py`` (recomputes them under the backend it runs on). The weights are
generated from a seed, in ``model.weights`` order, so every backend builds the same numbers
without a weights file; BatchNorm gets trained-like parameters and statistics, so eval and
training mode differ.
"""

from __future__ import annotations

import os

import numpy as np

import keras_preact
from keras_preact.norm import he_std

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "backends")
REFERENCE = os.path.join(FIXTURES, "reference_outputs.npz")

# name -> (model name, build options, input side). The paper's three reference nets with their
# default options, and the stacked-stage build (the while loop on TensorFlow, a scan on JAX).
CASES = {
    "resnet20": ("resnet20", {}, 32),
    "resnet164": ("resnet164", {}, 32),
    "resnet50": ("resnet50", {"num_classes": 10}, 64),
    "resnet20_stacked": ("resnet20", {"stacked_stages": True}, 32),
}
BATCH = 4


def build(case: str):
    name, options, _ = CASES[case]
    model = keras_preact.get_model(name, **options)
    seeded_weights(model, seed=sorted(CASES).index(case))
    return model


def images(case: str) -> np.ndarray:
    side = CASES[case][2]
    rng = np.random.default_rng(100 + sorted(CASES).index(case))
    return rng.normal(size=(BATCH, side, side, 3)).astype("float32")


def small_model_for_files():
    """A small net with most layer classes (projection and gate, symmetric padding, a stacked
    stage): what the cross-backend file tests save under one backend and load under another."""
    model = keras_preact.build_resnet((2, 3), widths=(4, 8), input_shape=(32, 32, 3), num_classes=5,
                                      family="imagenet", unit="bottleneck", stem_width=8,
                                      shortcut="exclusive_gating", stacked_stages=True)
    seeded_weights(model, seed=7)
    return model


def seeded_weights(model, seed: int = 0) -> None:
    """Assign every variable a value drawn from ``seed`` (He-scaled kernels, trained-like BN)."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        name, shape = variable.path.rsplit("/", 1)[-1], tuple(variable.shape)
        if name.endswith("kernel") and len(shape) >= 4:
            value = rng.normal(size=shape) * he_std(shape)
        elif name.endswith("kernel"):
            value = rng.normal(size=shape) / np.sqrt(shape[0])
        elif name.endswith(("gamma", "moving_variance")):
            value = 0.5 + rng.random(shape)
        else:  # beta, bias, moving_mean
            value = 0.1 * rng.normal(size=shape)
        variable.assign(value.astype("float32"))


def outputs(model, x: np.ndarray) -> dict:
    """Eval-mode logits, then training-mode logits (batch statistics), as numpy."""
    import keras

    return {
        "eval": keras.ops.convert_to_numpy(model(x, training=False)),
        "train": keras.ops.convert_to_numpy(model(x, training=True)),
    }


def relative_difference(a, b) -> float:
    """``max |a - b| / max |b|``: the error relative to the reference's scale."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))
