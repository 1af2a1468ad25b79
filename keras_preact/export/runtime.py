"""TensorFlow settings for a process that only serves an exported model.

With oneDNN on (``import keras_preact`` turns it on, see the package's ``__init__``), every
convolution reorders its filter from TensorFlow's layout into oneDNN's blocked one on every call,
because a variable may have changed since the last. In a process that only runs inference that
is wasted work, and it dominates at small batches: the shipped ResNet-56 SavedModel's
``predict_images`` at batch 1, on an AVX2 AMD EPYC, took 72.5 ms per call with the reorders and
13.5 ms without (docs/performance.md, "Measured: AMD EPYC, AVX2 only"). ``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1`` tells each convolution to reorder its
filter once, on its first call, and keep it.

That is only right where the weights never change after a model's first call: a process that
trains, loads other weights into a model it has already run, or swaps in averaged weights would
silently keep computing with the first filters. So the package sets it where a process starts
to serve, never on import and never in a function a training process may call: the serving
command (``python -m keras_preact.export.classify``, ``keras-preact-classify``) and the inference
benchmark. TF Serving reads the same variable: set it in the server's environment.
"""

from __future__ import annotations

import os

FROZEN_WEIGHTS_ENV = "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS"


def assume_frozen_weights() -> bool:
    """Let oneDNN keep each convolution's reordered filter (``TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1``)
    unless the environment already says otherwise; returns whether it is on.

    TensorFlow reads the variable once, when the process's first oneDNN convolution runs, so call
    this before any model runs. Only for processes that run inference alone (see the module doc).
    """
    os.environ.setdefault(FROZEN_WEIGHTS_ENV, "1")
    return os.environ[FROZEN_WEIGHTS_ENV].strip().lower() in ("1", "true")
