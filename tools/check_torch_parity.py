"""Compare keras_preact's imports of full-size PyTorch models with PyTorch's own logits.

    python tools/make_torch_fixtures.py --full --out /tmp/parity --images <cifar10-jpeg>/test
    python tools/check_torch_parity.py /tmp/parity

Imports timm ``resnetv2_50``/``resnetv2_101`` into ``keras_preact.ResNet50/101(weights=...)``
and the independent PyTorch CIFAR builds into ResNet-20/110 and ``stride_at="3x3"`` ResNet-164
(symmetric padding), runs them in eval mode on the same images, and prints the largest
relative logit difference and the top-1 agreement of each, plus the same nets with
TensorFlow's padding for contrast.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

import keras_preact


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def compare(model, x, expected, batch=50):
    got = np.concatenate([np.asarray(model(x[i:i + batch], training=False))
                          for i in range(0, len(x), batch)])
    rel = float(np.abs(got - expected).max() / np.abs(expected).max())
    top1 = float((got.argmax(1) == expected.argmax(1)).mean())
    return rel, top1


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder")
    args = parser.parse_args()
    io = np.load(os.path.join(args.folder, "io.npz"))
    print(f"CPU: {cpu_model()}; {len(io['imagenet_x'])} images")
    rows = []
    for name, builder in (("resnetv2_50", keras_preact.ResNet50), ("resnetv2_101", keras_preact.ResNet101)):
        start = time.time()
        model = builder(weights=os.path.join(args.folder, f"{name}.safetensors"))
        rows.append((f"{name} -> {model.name} (stem=timm, symmetric)",
                     *compare(model, io["imagenet_x"], io[f"{name}_logits"]), time.time() - start))
    cifar = {"resnet20": dict(), "resnet110": dict(), "resnet164_3x3": dict(stride_at="3x3")}
    for name, kwargs in cifar.items():
        for padding in ("symmetric", "same"):
            start = time.time()
            model = keras_preact.get_model(name.split("_")[0], padding=padding,
                                           weights=os.path.join(args.folder, f"{name}.pth"), **kwargs)
            rows.append((f"{name} torch build -> {model.name} (padding={padding})",
                         *compare(model, io["cifar_x"], io[f"{name}_logits"], 250), time.time() - start))
    print(f"{'model':58s} {'max rel diff':>12s} {'top-1 same':>10s} {'s':>6s}")
    for label, rel, top1, seconds in rows:
        print(f"{label:58s} {rel:12.2e} {top1:10.3f} {seconds:6.0f}")


if __name__ == "__main__":
    main()
