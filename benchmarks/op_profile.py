"""Where a step's time goes: TensorFlow's profiler, op time summed by category and by op type.

Used by ``benchmarks/training_speed.py --profile``. ``profile_steps`` runs a step function a
few times under ``tf.profiler``, reads the trace back (the ``.xplane.pb`` file TensorFlow
writes; no TensorBoard plugin needed) and sums the time of every executed op:

* by **category**: ``batch_norm`` (the fused kernels *and* the mean/variance/multiply ops of
  Keras' unfused BatchNormalization, recognised by the layer they belong to), ``conv``,
  ``relu``, ``shortcut`` (zero-pad and gate), ``classifier``, ``optimizer`` and ``other``
  (the residual additions, casts, the folded model's per-channel multiply-adds...);
* by **op type** (``_MklNativeConv2DBackpropFilter``, ``FusedBatchNormGradV3``, ``Cast``...).

Shares are of summed op time, not of wall time: TensorFlow runs independent ops in parallel,
so op time can exceed the step's wall time. They answer "what does the CPU spend its cycles
on", e.g. BatchNorm's share of a training step in float32 vs bfloat16.
"""

from __future__ import annotations

import collections
import glob
import os
import re
import shutil
import tempfile

import tensorflow as tf

CATEGORIES = ("conv", "batch_norm", "relu", "shortcut", "classifier", "optimizer", "other")
_LAYER_CATEGORIES = (  # (Keras layer class name contains, category); the first match wins
    # The residual addition: "other" whether a layer of its own (ShortcutCombine, in the BN-folded
    # model) or an op of the unit's own scope (ResidualUnit), so builds compare like for like.
    ("ShortcutCombine", "other"),
    ("BatchNorm", "batch_norm"),
    ("Conv", "conv"),
    ("ReLU", "relu"),
    ("Shortcut", "shortcut"),
    ("Gate", "shortcut"),
    ("Dense", "classifier"),
)
_SUFFIX = re.compile(r"_\d+$")  # Keras adds "_1" to a layer's name scope when traced again


def layer_categories(model) -> dict:
    """``{layer name: category}`` for every layer of ``model`` whose class says what it is."""
    names = {}
    for layer in model._flatten_layers(include_self=False):
        kind = type(layer).__name__
        for marker, category in _LAYER_CATEGORIES:
            if marker in kind:
                if category != "other":
                    names.setdefault(layer.name, category)
                break
    return names


def categorize(op_name: str, op_type: str, layers: dict) -> str:
    """The category of one executed op, from its type, else the layer its name lies in."""
    if "BatchNorm" in op_type:
        return "batch_norm"
    if "Conv2D" in op_type:
        return "conv"
    for component in reversed(op_name.split("/")[:-1]):
        category = layers.get(_SUFFIX.sub("", component))
        if category:
            return category
    if op_type.startswith(("Relu", "_MklRelu")):
        return "relu"
    if op_type in ("ResourceApplyKerasMomentum", "AssignSubVariableOp", "AssignAddVariableOp",
                   "AssignVariableOp") or op_name.startswith(("SGD", "sgd", "fused_sgd", "LossScale")):
        return "optimizer"
    return "other"


def read_op_times(logdir: str) -> list:
    """``[(op name, op type, seconds)]`` of every op executed in the trace under ``logdir``."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    paths = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    if not paths:
        raise FileNotFoundError(f"No profiler trace (*.xplane.pb) under {logdir}.")
    ops = []
    for path in paths:
        space = xplane_pb2.XSpace()
        with open(path, "rb") as handle:
            space.ParseFromString(handle.read())
        for plane in space.planes:
            metadata = plane.event_metadata
            for line in plane.lines:
                if not line.name.startswith("tf_Compute"):  # executor threads: one event per op
                    continue
                for event in line.events:
                    name = metadata[event.metadata_id].name  # "<op name>:<op type>"
                    if ":" not in name or name.startswith(("ExecutorState", "Threadpool")):
                        continue
                    op_name, op_type = name.rsplit(":", 1)
                    ops.append((op_name, op_type, event.duration_ps * 1e-12))
    return ops


def summarize(ops, layers: dict, top: int = 8) -> dict:
    """Shares (%) of op time by category and the ``top`` op types; total op seconds."""
    total = sum(seconds for _, _, seconds in ops) or 1.0
    by_category = collections.Counter()
    by_type = collections.Counter()
    for op_name, op_type, seconds in ops:
        by_category[categorize(op_name, op_type, layers)] += seconds
        by_type[op_type] += seconds
    return {
        "op_seconds": round(total, 4),
        "category_share": {c: round(100 * by_category[c] / total, 2) for c in CATEGORIES},
        "top_op_types": [(t, round(100 * s / total, 2)) for t, s in by_type.most_common(top)],
    }


def profile_steps(run_step, model, steps: int = 3, logdir: str | None = None) -> dict:
    """Run ``run_step()`` ``steps`` times under the profiler; ``summarize`` of their ops.

    ``run_step`` must be warm (traced) already, so that tracing is not in the profile.
    """
    own = logdir is None
    logdir = logdir or tempfile.mkdtemp(prefix="op_profile_")
    try:
        tf.profiler.experimental.start(logdir)
        try:
            for _ in range(steps):
                run_step()
        finally:
            tf.profiler.experimental.stop()
        result = summarize(read_op_times(logdir), layer_categories(model))
    finally:
        if own:
            shutil.rmtree(logdir, ignore_errors=True)
    result["profiled_steps"] = steps
    return result


__all__ = ["CATEGORIES", "categorize", "layer_categories", "profile_steps", "read_op_times", "summarize"]
