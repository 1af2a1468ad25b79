"""benchmarks/jax_op_profile.py: its op list is ResNet-164's step (counts and shapes)."""

from __future__ import annotations

import os
import sys

import keras

import trainer_runs
from keras_preact.model import all_layers
from keras_preact.registry import get_model

sys.path.insert(0, os.path.join(trainer_runs.ROOT, "benchmarks"))
import jax_op_profile  # noqa: E402


def test_the_op_list_is_resnet164s_convolutions_and_batch_norms():
    ops = jax_op_profile.step_ops(128)
    convs = sum(count for _, kind, _, _, count in ops if kind == "conv")
    norms = sum(count for _, kind, _, _, count in ops if kind == "bn")
    model = get_model("resnet164")
    model_convs = sum(isinstance(layer, keras.layers.Conv2D) for layer in all_layers(model))
    # All of the network's convolutions but the 3 strided/projection ones the list leaves out,
    # and its BN-ReLUs but the final one (it follows no unit's conv of the listed shapes).
    assert convs == model_convs - 3 == 163
    assert norms == 162
    assert all(shape[0] == 128 for _, _, shape, _, _ in ops)

