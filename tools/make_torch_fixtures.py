"""Make the PyTorch fixtures of tests/test_weights.py, or full-size parity files, with torch + timm.

Run once, in an environment with torch and timm (never needed by the package, its install or
CI):

    pip install torch timm safetensors numpy
    python tools/make_torch_fixtures.py                        # -> tests/fixtures/torch/
    python tools/make_torch_fixtures.py --full --out /tmp/parity --images <cifar10-jpeg>/test

Fixtures (small, random weights, non-trivial BatchNorm statistics, eval-mode logits):

* ``timm_bottleneck.safetensors`` -- a reduced timm ``ResNetV2`` (BatchNorm, the paper's bottleneck,
  3 stages of 1 unit);
* ``timm_basic.pth`` -- the same with timm's pre-activation basic unit, saved by ``torch.save``
  (read by keras_preact's restricted reader, without torch);
* ``cifar_basic.pth`` / ``cifar_bottleneck_3x3.pth`` -- an independent PyTorch build of the
  paper's CIFAR pre-activation nets (defined below, following the paper's appendix and its
  Torch code; layer names as keras_preact's), with symmetric (Torch) padding;
* ``io.npz`` -- the input batches (NHWC) and the logits of each.

``--full`` writes the same for full-size timm ``resnetv2_50``/``resnetv2_101`` (random weights)
and CIFAR ResNet-20/110 and ``stride_at="3x3"`` ResNet-164, on real images when ``--images``
is given; ``tools/check_torch_parity.py`` then compares keras_preact's imports with them.
"""

from __future__ import annotations

import argparse
import os

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

torch.set_grad_enabled(False)
HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURES = os.path.join(os.path.dirname(HERE), "tests", "fixtures", "torch")


def randomise_bn(model: nn.Module, seed: int) -> nn.Module:
    """Trained-like BN parameters and running statistics in every BatchNorm."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            c = module.num_features
            module.weight.copy_(0.5 + torch.rand(c, generator=generator))
            module.bias.copy_(0.3 * torch.randn(c, generator=generator))
            module.running_mean.copy_(0.3 * torch.randn(c, generator=generator))
            module.running_var.copy_(0.5 + 1.5 * torch.rand(c, generator=generator))
    return model.eval()


# -- an independent PyTorch build of the paper's CIFAR pre-activation nets ---------------------
class PreActUnit(nn.Module):
    """Full pre-activation unit (paper Fig. 4(e)); ``preactivation`` as the paper's appendix."""

    def __init__(self, cin, width, kind, stride, preactivation, downsample, stride_at):
        super().__init__()
        self.kind, self.preactivation = kind, preactivation
        out = width * (4 if kind == "bottleneck" else 1)
        specs = [[1, width, 1], [3, width, 1], [1, out, 1]] if kind == "bottleneck" else \
            [[3, width, 1], [3, width, 1]]
        at = 0 if stride_at == "first" else [k for k, _, _ in specs].index(3)
        specs[at][2] = stride
        if preactivation != "none":
            self.preact_bn = nn.BatchNorm2d(cin)
        c = cin
        for i, (k, filters, s) in enumerate(specs, start=1):
            if i > 1:
                setattr(self, f"bn{i}", nn.BatchNorm2d(c))
            setattr(self, f"conv{i}", nn.Conv2d(c, filters, k, s, (k - 1) // 2, bias=False))
            c = filters
        self.n = len(specs)
        changes = stride != 1 or cin != out
        self.stride, self.out = stride, out
        self.projection = changes and downsample == "projection"
        self.zero_pad = changes and downsample == "zero_pad"
        if self.projection:
            self.shortcut_conv = nn.Conv2d(cin, out, 1, stride, 0, bias=False)

    def forward(self, x):
        if self.preactivation == "shared":
            x = F.relu(self.preact_bn(x))
            branch = x
        elif self.preactivation == "branch":
            branch = F.relu(self.preact_bn(x))
        else:
            branch = x
        r = self.conv1(branch)
        for i in range(2, self.n + 1):
            r = getattr(self, f"conv{i}")(F.relu(getattr(self, f"bn{i}")(r)))
        if self.projection:
            h = self.shortcut_conv(x)
        elif self.zero_pad:
            h = x[:, :, :: self.stride, :: self.stride]
            h = F.pad(h, (0, 0, 0, 0, 0, self.out - h.shape[1]))
        else:
            h = x
        return h + r


class PreActCifarNet(nn.Module):
    """Stem conv-BN-ReLU (the first unit's activation), stages, final BN-ReLU, pool, linear."""

    def __init__(self, units_per_stage, widths, kind, num_classes, downsample, stride_at):
        super().__init__()
        self.stem_conv = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(widths[0])
        self.names = []
        c = widths[0]
        for s, (n, width) in enumerate(zip(units_per_stage, widths), start=1):
            for u in range(1, n + 1):
                preactivation = ("none" if s == 1 else "shared") if u == 1 else "branch"
                unit = PreActUnit(c, width, kind, 2 if (u == 1 and s > 1) else 1, preactivation,
                                  downsample, stride_at)
                setattr(self, f"stage{s}_unit{u}", unit)
                self.names.append(f"stage{s}_unit{u}")
                c = unit.out
        self.final_bn = nn.BatchNorm2d(c)
        self.predictions = nn.Linear(c, num_classes)

    def forward(self, x):
        x = F.relu(self.stem_bn(self.stem_conv(x)))
        for name in self.names:
            x = getattr(self, name)(x)
        x = F.relu(self.final_bn(x))
        return self.predictions(x.mean(dim=(2, 3)))


def timm_resnetv2(layers, channels, stem_chs, num_classes, basic=False):
    from timm.layers import BatchNormAct2d, create_conv2d
    from timm.models.resnetv2 import ResNetV2

    return ResNetV2(layers=layers, channels=channels, stem_chs=stem_chs, num_classes=num_classes,
                    conv_layer=create_conv2d, norm_layer=BatchNormAct2d, basic=basic,
                    bottle_ratio=1.0 if basic else 0.25)


def logits(model, x_nhwc: np.ndarray) -> np.ndarray:
    return model(torch.from_numpy(x_nhwc).permute(0, 3, 1, 2).contiguous()).numpy()


def save_state_dict(model, path):
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file(state, path)
    else:
        torch.save(state, path)


def small_fixtures(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    arrays = {}
    nets = {
        # timm rounds bottleneck widths up to multiples of 8: out = 4 x width needs width >= 8.
        "timm_bottleneck.safetensors": (timm_resnetv2([1, 1, 1], (32, 64, 128), 8, 5), 38),
        "timm_basic.pth": (timm_resnetv2([1, 1, 1, 1], (8, 16, 16, 32), 8, 4, basic=True), 38),
        "cifar_basic.pth": (PreActCifarNet((1, 1, 1), (8, 16, 32), "basic", 3, "zero_pad", "first"), 32),
        "cifar_bottleneck_3x3.pth": (PreActCifarNet((1, 1, 1), (4, 8, 16), "bottleneck", 3,
                                                    "projection", "3x3"), 32),
    }
    for seed, (file, (model, side)) in enumerate(nets.items()):
        randomise_bn(model, seed)
        x = rng.normal(size=(2, side, side, 3)).astype(np.float32)
        key = file.split(".")[0]
        arrays[f"{key}_x"], arrays[f"{key}_logits"] = x, logits(model, x)
        save_state_dict(model, os.path.join(out, file))
    np.savez(os.path.join(out, "io.npz"), **arrays)
    for name in sorted(os.listdir(out)):
        print(f"{os.path.join(out, name)}: {os.path.getsize(os.path.join(out, name)):,} bytes")


def real_images(folder: str | None, count: int, side: int, rng) -> np.ndarray:
    """``count`` images from an image folder (any nesting), resized; noise without a folder."""
    if not folder:
        return rng.normal(size=(count, side, side, 3)).astype(np.float32)
    from PIL import Image

    files = sorted(os.path.join(root, f) for root, _, names in os.walk(folder) for f in names
                   if f.lower().endswith((".jpg", ".jpeg", ".png")))
    if not files:
        raise SystemExit(f"No images under {folder}.")
    files = files[:: max(1, len(files) // count)][:count]  # spread over the classes
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    images = [(np.asarray(Image.open(f).convert("RGB").resize((side, side), Image.BILINEAR),
                          np.float32) / 255.0 - mean) / std for f in files]
    return np.stack(images).astype(np.float32)


def full_parity_files(out: str, images: str | None, count: int) -> None:
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(0)
    import timm

    arrays = {}
    x224 = real_images(images, count, 224, rng)
    x32 = real_images(images, count, 32, rng)
    arrays["imagenet_x"], arrays["cifar_x"] = x224, x32
    for seed, name in enumerate(("resnetv2_50", "resnetv2_101")):
        torch.manual_seed(seed)
        model = randomise_bn(timm.create_model(name, pretrained=False), seed)
        arrays[f"{name}_logits"] = np.concatenate(
            [logits(model, x224[i:i + 50]) for i in range(0, len(x224), 50)])
        save_state_dict(model, os.path.join(out, f"{name}.safetensors"))
        print(name, "done", flush=True)
    cifar = {
        "resnet20": ((3, 3, 3), "basic", "zero_pad", "first"),
        "resnet110": ((18, 18, 18), "basic", "zero_pad", "first"),
        "resnet164_3x3": ((18, 18, 18), "bottleneck", "projection", "3x3"),
    }
    for seed, (name, (stages, kind, downsample, stride_at)) in enumerate(cifar.items()):
        torch.manual_seed(seed)
        model = randomise_bn(PreActCifarNet(stages, (16, 32, 64), kind, 10, downsample, stride_at), seed)
        arrays[f"{name}_logits"] = np.concatenate(
            [logits(model, x32[i:i + 250]) for i in range(0, len(x32), 250)])
        save_state_dict(model, os.path.join(out, f"{name}.pth"))
        print(name, "done", flush=True)
    np.savez(os.path.join(out, "io.npz"), **arrays)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=FIXTURES)
    parser.add_argument("--full", action="store_true", help="full-size parity files instead")
    parser.add_argument("--images", help="image folder for --full (default: noise)")
    parser.add_argument("--count", type=int, default=1000, help="images for --full")
    args = parser.parse_args()
    if args.full:
        full_parity_files(args.out, args.images, args.count)
    else:
        small_fixtures(args.out)


if __name__ == "__main__":
    main()
