"""The PyTorch baseline of the speed benchmarks: the pre-activation CIFAR ResNets of He et al.
2016, "Identity Mappings in Deep Residual Networks" (the paper), in plain ``torch.nn``, written
independently of keras_preact (no Keras, no package import).

The networks are the ones ``keras_preact.get_model(name)`` builds by default (equal parameter
counts, and the same logits with the same weights: tests/test_torch_baseline.py), following the
paper's appendix and its Torch code for CIFAR; [1] is He et al. 2016, "Deep Residual Learning
for Image Recognition":

* stem: one 3x3 conv with 16 channels, then BN-ReLU: the first unit's pre-activation comes
  right after the stem conv, before the split (appendix);
* three stages of 16/32/64 channels; the first unit of stages 2 and 3 has stride 2. Basic units (ResNet-20/32/44/56/110/1202) are two 3x3 convs, ``n = (depth - 2) / 6``
  units per stage; bottleneck units (ResNet-164/1001) are 1x1 / 3x3 / 1x1 with a 4x wider output
  (64/128/256 channels), ``n = (depth - 2) / 9``. The stride sits on a unit's first conv (the
  paper's CIFAR code);
* every unit is the full pre-activation unit of Fig. 4(e): ``x + F(x)``, ``F = BN-ReLU-conv``
  repeated, nothing after the addition. The first unit of stages 2 and 3 changes dimensions; its
  BN-ReLU is applied before the split, so the shortcut sees the activated input (appendix). That
  shortcut is option A of [1] (section 4.2: subsample, then zero channels; parameter-free) for basic units, and a strided 1x1 projection for bottleneck units, whose
  first unit also widens 16 to 64 channels (keras_preact's CIFAR defaults, ``downsample``);
* after the last unit an extra BN-ReLU, global average pooling and a 10-way linear classifier.

BatchNorm uses the paper's settings in PyTorch's convention: momentum 0.1 (the weight of the new
batch statistic; Keras counts the other way, 0.9) and eps 1e-5. Convs are He-initialised
(fan-out, as the paper's code), the classifier as Keras' Dense (Glorot uniform, zero bias).

``make_optimizer`` and ``train_step`` are the paper's CIFAR recipe (appendix; [1] section 4.2):
SGD with momentum 0.9 (no Nesterov), L2 weight decay 1e-4 added to the gradient before momentum
-- which is what ``torch.optim.SGD(weight_decay=...)`` does -- on every parameter, BN's
included, and the mean cross-entropy over a batch of 128: keras_preact's ``RECIPES["cifar"]``
and its training loop.
The speed benchmarks pass the optimizer settings of their own Keras step instead, so both
sides time the same update.

Variants (``VARIANTS``), how a PyTorch user would speed a CPU run up:

    torch           float32, NCHW (PyTorch's default layout)
    torch+cl        float32, channels_last memory format (oneDNN's preferred layout)
    torch+bf16      torch.autocast("cpu", dtype=torch.bfloat16), channels_last
    torch+bf16w     inference only: the network cast to bfloat16 (``model.to(torch.bfloat16)``),
                    bf16 images, no autocast (which recasts every float32 weight at every call)
    torch+compile   torch.compile(model), float32, channels_last; a compilation failure is
                    reported as the variant's one-line error, not a crash

Run as a script, it times one case in this (fresh) process and prints one JSON line, the row
``benchmarks/training_speed.py`` collects (it starts one process per case):

    python benchmarks/torch_baseline.py --model resnet56 --variant torch+cl --mode train --batch 128 --steps 5

The first step is timed from process start (imports included) to the end of the first step,
as the Keras workers do. ``torch.set_num_threads`` is ``--threads`` (default: the CPUs this
process may run on, the count TensorFlow's thread pools use). Needs ``torch`` (the ``[bench]``
extra asks for the current release, ``torch>=2.15.0``). Runs on PyTorch's GPU where it sees one.
"""

from __future__ import annotations

import time

# The first step is reported from here: imports + build (+ compile) + one step.
PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from process_memory import peak_rss_gb  # noqa: E402 (benchmarks/, on the path of a script)

# The paper's BatchNorm (its Torch code): running-average momentum 0.1, eps 1e-5.
BN_MOMENTUM = 0.1
BN_EPSILON = 1e-5
WIDTHS = (16, 32, 64)  # 3x3-conv width of each CIFAR stage ([1] section 4.2)
EXPANSION = {"basic": 1, "bottleneck": 4}
LAYERS_PER_UNIT = {"basic": 2, "bottleneck": 3}
# The paper's CIFAR nets: depth and unit kind (bottleneck for 164 and 1001, Table 3 and 4).
TORCH_MODELS = {
    "resnet20": (20, "basic"),
    "resnet32": (32, "basic"),
    "resnet44": (44, "basic"),
    "resnet56": (56, "basic"),
    "resnet110": (110, "basic"),
    "resnet1202": (1202, "basic"),
    "resnet164": (164, "bottleneck"),
    "resnet1001": (1001, "bottleneck"),
}

# The paper's CIFAR recipe (appendix, [1] section 4.2).
LEARNING_RATE = 0.1
MOMENTUM = 0.9
NESTEROV = False
WEIGHT_DECAY = 1e-4
BATCH_SIZE = 128


# -- the network ---------------------------------------------------------------------------
def conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1) -> nn.Conv2d:
    """A bias-free conv padded ``(k - 1) // 2`` on every side, as the paper's Torch code."""
    return nn.Conv2d(in_channels, out_channels, kernel, stride, padding=(kernel - 1) // 2, bias=False)


def bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels, eps=BN_EPSILON, momentum=BN_MOMENTUM),
                         nn.ReLU(inplace=True))


class ZeroPadShortcut(nn.Module):
    """Option A of [1]: keep every ``stride``-th pixel, then append zero channels (no weights)."""

    def __init__(self, out_channels: int, stride: int):
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride]
        # F.pad pads the last dimensions first: (W left, W right, H top, H bottom, C front, C back).
        return F.pad(x, (0, 0, 0, 0, 0, self.out_channels - x.shape[1]))


class PreActUnit(nn.Module):
    """The full pre-activation unit, paper Fig. 4(e): ``x + F(x)``, F = (BN-ReLU-conv) x 2 or 3.

    ``preactivation``: ``"branch"`` (F's first BN-ReLU on the residual branch only; the
    shortcut is the identity), ``"shared"`` (before the split, so the dimension-matching
    shortcut takes the activated input: the appendix) or ``"none"`` (the network's first
    unit, whose BN-ReLU is the stem's).
    """

    def __init__(self, kind: str, in_channels: int, width: int, stride: int, preactivation: str):
        super().__init__()
        out_channels = width * EXPANSION[kind]
        self.preactivation = preactivation
        self.preact = bn_relu(in_channels) if preactivation != "none" else nn.Identity()
        if kind == "basic":
            # The stride on the first conv, as the paper's CIFAR code.
            self.branch = nn.Sequential(conv(in_channels, width, 3, stride), bn_relu(width),
                                        conv(width, width, 3))
        else:
            self.branch = nn.Sequential(conv(in_channels, width, 1, stride), bn_relu(width),
                                        conv(width, width, 3), bn_relu(width),
                                        conv(width, out_channels, 1))
        if stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif kind == "basic":
            self.shortcut = ZeroPadShortcut(out_channels, stride)
        else:
            self.shortcut = conv(in_channels, out_channels, 1, stride)

    def forward(self, x):
        if self.preactivation == "shared":
            x = self.preact(x)
            return self.shortcut(x) + self.branch(x)
        return self.shortcut(x) + self.branch(self.preact(x))


class PreActResNet(nn.Module):
    """A pre-activation CIFAR ResNet: stem conv, BN-ReLU, three stages of units, BN-ReLU, pool, linear."""

    def __init__(self, kind: str, units_per_stage: int, num_classes: int = 10):
        super().__init__()
        self.stem = nn.Sequential(conv(3, WIDTHS[0], 3), bn_relu(WIDTHS[0]))
        units, channels = [], WIDTHS[0]
        for stage, width in enumerate(WIDTHS):
            for u in range(units_per_stage):
                first = u == 0
                preactivation = "branch" if not first else ("none" if stage == 0 else "shared")
                units.append(PreActUnit(kind, channels, width, 2 if first and stage else 1, preactivation))
                channels = width * EXPANSION[kind]
        self.units = nn.Sequential(*units)
        # The last unit's output gets one more BN-ReLU before pooling (appendix).
        self.final = bn_relu(channels)
        self.classifier = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                # He et al. 2015 (fan-out), as the paper's code: N(0, sqrt(2 / (k * k * out))).
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        # Keras' Dense initialisation (the Keras build's classifier), not nn.Linear's default.
        nn.init.xavier_uniform_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def forward(self, x):
        x = self.final(self.units(self.stem(x)))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def units_per_stage(name: str) -> tuple:
    """``(unit kind, units per stage)`` of a ``TORCH_MODELS`` name: (depth - 2) / (3 x layers per unit)."""
    if name not in TORCH_MODELS:
        raise ValueError(f"Unknown model {name!r}. Valid choices: {', '.join(TORCH_MODELS)}.")
    depth, kind = TORCH_MODELS[name]
    return kind, (depth - 2) // (3 * LAYERS_PER_UNIT[kind])


def build(name: str, num_classes: int = 10) -> PreActResNet:
    """The PyTorch build of ``keras_preact.get_model(name)`` (a ``TORCH_MODELS`` name)."""
    kind, n = units_per_stage(name)
    return PreActResNet(kind, n, num_classes)


def count_parameters(model: nn.Module) -> dict:
    """``{"trainable": parameters, "bn_statistics": BN running means and variances}``.

    Their sum is what Keras' ``count_params()`` counts (its moving statistics are
    non-trainable weights); PyTorch's ``num_batches_tracked`` counter has no Keras counterpart.
    """
    statistics_ = sum(buffer.numel() for name, buffer in model.named_buffers()
                      if name.endswith(("running_mean", "running_var")))
    return {"trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "bn_statistics": statistics_}


# -- variants, training step, evaluation ---------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Variant:
    channels_last: bool = False
    bfloat16: bool = False
    compile: bool = False
    bf16_weights: bool = False  # inference only: the network itself in bfloat16, no autocast


VARIANTS = {
    "torch": Variant(),
    "torch+cl": Variant(channels_last=True),
    "torch+bf16": Variant(channels_last=True, bfloat16=True),
    "torch+bf16w": Variant(channels_last=True, bf16_weights=True),
    "torch+compile": Variant(channels_last=True, compile=True),
}


def memory_format(variant: Variant):
    return torch.channels_last if variant.channels_last else torch.contiguous_format


def device() -> torch.device:
    """Where the baseline runs: the GPU where PyTorch sees one (tools/gpu_check.sh), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(bfloat16: bool):
    """bfloat16 autocast (convs and matmuls in bf16, the loss in float32) on the baseline's device."""
    if not bfloat16:
        return contextlib.nullcontext()
    return torch.autocast(device().type, dtype=torch.bfloat16)


def make_optimizer(model: nn.Module, lr: float = LEARNING_RATE, momentum: float = MOMENTUM,
                   nesterov: bool = NESTEROV, weight_decay: float = WEIGHT_DECAY) -> torch.optim.SGD:
    """SGD of the paper's recipe. ``weight_decay`` is coupled L2 (``wd * w`` joins the gradient
    before momentum), on every parameter, BN's included: the recipe's decay."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, nesterov=nesterov,
                           weight_decay=weight_decay)


def train_step(model: nn.Module, optimizer, images, labels, bfloat16: bool = False):
    """One SGD step on the mean cross-entropy of a batch; returns the (detached) loss."""
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with autocast(bfloat16):
        logits = model(images)
    loss = F.cross_entropy(logits.float(), labels)  # float32 loss, as Keras' float32 head
    loss.backward()
    optimizer.step()
    return loss.detach()


def evaluate(model: nn.Module, images, bfloat16: bool = False):
    """Eval-mode (running BN statistics) float32 logits of a batch, without autograd."""
    model.eval()
    with torch.inference_mode(), autocast(bfloat16):
        return model(images).float()


def nhwc_predictor(model: nn.Module, variant: Variant):
    """``predict(images)``: eval-mode logits of a float32 NHWC numpy batch (the layout the Keras,
    SavedModel and ONNX Runtime rows of benchmarks/inference.py take), converted in the call.

    NHWC seen as NCHW is already channels_last in memory, so only the NCHW variant copies.
    """
    fmt = memory_format(variant)

    def predict(images):
        dtype = torch.bfloat16 if variant.bf16_weights else torch.float32
        x = torch.from_numpy(images).permute(0, 3, 1, 2).to(device(), dtype)
        x = x.contiguous(memory_format=fmt)
        return evaluate(model, x, variant.bfloat16)

    return predict


def prepare(name: str, variant: Variant, num_classes: int = 10) -> nn.Module:
    """``build(name)`` on the baseline's device in the variant's memory format (and dtype, for
    ``torch+bf16w``), compiled for ``torch+compile``."""
    model = build(name, num_classes).to(device(), memory_format=memory_format(variant))
    if variant.bf16_weights:
        model = model.to(torch.bfloat16)
    return torch.compile(model) if variant.compile else model


def schedulable_cpus() -> int:
    """CPUs this process may run on: the size of TensorFlow's default thread pools."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {lines[0] if lines else ''}"[:300]


# -- one timed case (a worker process of benchmarks/training_speed.py) ----------------------
def time_case(spec: dict) -> dict:
    """Build and time one case in this process, as training_speed.py's Keras workers do.

    ``spec``: model, variant, mode (``train``/``infer``), batch, steps; optional ``threads``
    and ``optimizer`` (``make_optimizer`` keyword arguments). A row: trainable params, first
    step from process start, median step, images/s, peak RSS.
    """
    variant = VARIANTS[spec["variant"]]
    threads = int(spec.get("threads") or schedulable_cpus())
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    batch = spec["batch"]
    fmt = memory_format(variant)
    dtype = torch.bfloat16 if variant.bf16_weights else torch.float32
    images = torch.rand(batch, 3, 32, 32).to(device(), dtype).contiguous(memory_format=fmt)
    labels = torch.randint(0, 10, (batch,)).to(device())
    if variant.bf16_weights and spec["mode"] == "train":
        raise ValueError(f"{spec['variant']} is an inference variant (a bfloat16 network has no "
                         "float32 master weights to train); use torch+bf16 to train")
    model = prepare(spec["model"], variant)
    if spec["mode"] == "train":
        optimizer = make_optimizer(model, **spec.get("optimizer", {}))

        def step():
            return float(train_step(model, optimizer, images, labels, variant.bfloat16))
    else:
        def step():
            return float(evaluate(model, images, variant.bfloat16).sum())

    try:
        step()
    except Exception as error:  # noqa: BLE001 - reported as the variant's result
        if not variant.compile:
            raise
        return {**spec, "threads": threads, "error": f"torch.compile failed: {one_line(error)}"}
    first = time.perf_counter() - PROCESS_START
    step()  # one untimed warm step
    times = []
    for _ in range(spec["steps"]):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    return {
        **spec,
        "threads": threads,
        "torch_version": torch.__version__,
        "device": str(device()),
        **({"peak_device_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3)}
           if device().type == "cuda" else {}),
        "params": count_parameters(model)["trainable"],
        "first_step_s": round(first, 2),
        "step_s_median": round(median, 4),
        "images_per_s": round(batch / median, 2),
        "peak_rss_gb": peak_rss_gb(),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet20", choices=sorted(TORCH_MODELS))
    parser.add_argument("--variant", default="torch", choices=sorted(VARIANTS))
    parser.add_argument("--mode", default="train", choices=("train", "infer"))
    parser.add_argument("--batch", type=int, default=BATCH_SIZE)
    parser.add_argument("--steps", type=int, default=5, help="timed steps (after one warm step)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: the CPUs this process may use)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # a JSON spec, from training_speed.py
    args = parser.parse_args(argv)
    spec = json.loads(args.worker) if args.worker else dict(
        model=args.model, variant=args.variant, mode=args.mode, batch=args.batch, steps=args.steps,
        threads=args.threads)
    print(json.dumps(time_case(spec)), flush=True)


if __name__ == "__main__":
    main()
