"""Which networks the diagnostic measures: a model name and a list of ``order/shortcut`` variants.

A variant is the same network built with another unit order (paper Fig. 4) or shortcut
(paper Fig. 2), so their curves can share one plot.
"""

from __future__ import annotations

import keras

from keras_preact.common import ORDERS, SHORTCUTS
from keras_preact.registry import get_model, resolve

DEFAULT_VARIANTS = (
    "full_preact/identity",
    "full_preact/constant_scaling",
    "full_preact/exclusive_gating",
    "full_preact/conv1x1",
    "original/identity",
)


def parse_variants(text: str) -> list:
    """``"full_preact/identity,original/identity"`` -> ``[("full_preact", "identity"), ...]``."""
    variants = []
    for entry in (part.strip() for part in text.split(",")):
        if not entry:
            continue
        order, sep, shortcut = entry.partition("/")
        if not sep or order not in ORDERS or shortcut not in SHORTCUTS:
            raise ValueError(
                f"Bad variant {entry!r}: expected order/shortcut with order one of "
                f"{', '.join(ORDERS)} and shortcut one of {', '.join(SHORTCUTS)}."
            )
        if (order, shortcut) in variants:
            raise ValueError(f"Variant {entry!r} is listed twice.")
        variants.append((order, shortcut))
    if not variants:
        raise ValueError("No variants given: pass e.g. --variants full_preact/identity.")
    return variants


def canonical_model_name(name: str) -> str:
    """The registry's canonical name of ``name`` (``keras_preact.registry.resolve``)."""
    return resolve(name).name


def build_variant(model_name: str, order: str, shortcut: str, *, num_classes: int,
                  image_shape: tuple, **unit_options) -> keras.Model:
    """The network ``model_name`` with every unit of the given order and shortcut.

    CIFAR nets are built for ``image_shape``; ImageNet nets are fully convolutional. They take
    NHWC batches, the data pipeline's, unless ``unit_options`` name another ``data_format``.
    ``unit_options`` go to ``keras_preact.ResNet`` (e.g. ``shortcut_scale``, ``gate_bias_init``).
    """
    options = dict(order=order, shortcut=shortcut, num_classes=num_classes,
                   **{"data_format": "channels_last", **unit_options})
    if resolve(model_name).family == "cifar":
        options["input_shape"] = image_shape
    return get_model(model_name, **options)
