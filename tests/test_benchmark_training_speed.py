"""benchmarks/training_speed.py's variants: the +nchw suffix builds and feeds a channels_first network."""

from __future__ import annotations

import os
import sys

import numpy as np

import trainer_runs
from keras_preact.registry import get_model

sys.path.insert(0, os.path.join(trainer_runs.ROOT, "benchmarks"))
import training_speed  # noqa: E402


def test_the_nchw_suffix_builds_channels_first_and_transposes_the_images():
    kwargs, base, jit = training_speed.split_variant("fused+nchw")
    assert (kwargs["data_format"], base, jit) == ("channels_first", "fused", False)
    images = np.random.RandomState(0).rand(2, 32, 32, 3).astype("float32")
    nchw = training_speed.in_layout(images, kwargs)
    assert nchw.shape == (2, 3, 32, 32) and nchw.flags["C_CONTIGUOUS"]
    np.testing.assert_array_equal(nchw.transpose(0, 2, 3, 1), images)
    assert training_speed.in_layout(images, training_speed.split_variant("fused")[0]) is images
    model = get_model("resnet20", **kwargs)
    assert model.predict(nchw, verbose=0).shape == (2, 10)
