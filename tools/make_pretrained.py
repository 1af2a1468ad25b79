"""Write the pretrained preset shipped inside the package: ``keras_preact/pretrained/cifar10_resnet56/``.

Run once (it needs TensorFlow, to read the SavedModel), from the repository root:

    python tools/make_pretrained.py

It builds ResNet-56 as the shipped SavedModel's export did (``get_model("resnet56")``, CIFAR-10
classes), sets every variable from ``saved_models/cifar10_preact_resnet56/<newest version>`` by
variable path (``keras_preact.export.saved_model.load_saved_model_weights``: every variable
found with its shape, and nothing else in the archive, or nothing is set), writes the preset
(``config.json``, ``model.weights.h5``, ``metadata.json``) with a ``preprocessing.json`` that says
what the network expects, and checks that the preset loads back to bit-identical logits. With this folder in the package,
``keras_preact.ResNet56(weights="cifar10")`` needs no download and no TensorFlow.
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import keras_preact_commands  # noqa: E402

keras_preact_commands.prepare_process(tensorflow=True)

import keras_preact  # noqa: E402
import numpy as np  # noqa: E402
from keras_preact.data.preprocess import CIFAR_MEAN, CIFAR_STD  # noqa: E402
from keras_preact.export.saved_model import load_saved_model_weights  # noqa: E402

SOURCE = os.path.join(ROOT, "saved_models", "cifar10_preact_resnet56")
TARGET = os.path.join(ROOT, "keras_preact", "pretrained", "cifar10_resnet56")
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def newest_version(folder: str) -> str:
    versions = sorted(int(name) for name in os.listdir(folder) if name.isdigit())
    return os.path.join(folder, str(versions[-1]))


def main() -> int:
    version = newest_version(SOURCE)
    model = keras_preact.get_model("resnet56")
    count = load_saved_model_weights(model, version)
    print(f"{count} variables from {os.path.relpath(version, ROOT)}")
    keras_preact.save_to_preset(model, TARGET)
    with open(os.path.join(TARGET, "preprocessing.json"), "w") as handle:
        json.dump({
            "input": "32x32 RGB, pixel values in [0, 255], then (pixel - mean) / std per channel",
            "mean": list(CIFAR_MEAN), "std": list(CIFAR_STD), "classes": CLASSES,
            "output": "logits of the 10 CIFAR-10 classes",
            "source": f"saved_models/cifar10_preact_resnet56/{os.path.basename(version)} "
                      "(its MODEL_CARD.md: training, accuracy)",
        }, handle, indent=2)
        handle.write("\n")
    x = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype("float32")
    reloaded = keras_preact.from_preset(TARGET)
    if not np.array_equal(np.asarray(reloaded(x, training=False)), np.asarray(model(x, training=False))):
        raise SystemExit("the written preset does not reproduce the model's logits")
    print(f"wrote {os.path.relpath(TARGET, ROOT)}: {sorted(os.listdir(TARGET))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
