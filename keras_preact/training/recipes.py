"""The paper's training recipes as data, one ``Recipe`` per dataset family.

The numbers are those of the paper's appendix (implementation details), which keeps the
settings of the original ResNet paper [1] (He et al., CVPR 2016: CIFAR in its section 4.2,
ImageNet in its section 3.4).

Every field is a default that a trainer flag overrides. ``"cifar"`` and ``"imagenet"`` are the
paper's recipes; ``"cifar10_sample"`` is the same CIFAR recipe shortened to a few minutes on a
2-core CPU for the small CIFAR-10 sample embedded in the package (the trainer's no-download
default): same optimizer and shape of schedule, boundaries at the same fractions of the run
(32k/64k = 0.5 and 48k/64k = 0.75).

Choices documented here once:

* Weight decay is L2 regularisation added to the gradient before momentum (``wd * w`` added to
  ``dE/dw``), as in the paper's Torch code, on every parameter including BN's gamma and beta
  (``decay_bn=True``). Keras' ``SGD(weight_decay=...)`` is *decoupled* decay (``w -= lr*wd*w``
  after the momentum update), which interacts differently with momentum and the schedule, so
  the loop adds the L2 term to the loss instead and keeps the optimizer's own decay off.
* Momentum 0.9 without Nesterov: the paper's CIFAR code (and the text) use plain momentum;
  fb.resnet.torch's ImageNet code uses Nesterov, available with ``nesterov=True``.
* ImageNet's 0.1 is for a batch of 256 and scales linearly with the global batch.
"""

from __future__ import annotations

import dataclasses
import math

from keras_preact.training.schedules import relative_boundaries
from keras_preact.tta import tta_name


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Optimisation and schedule settings of one training recipe."""

    name: str
    batch_size: int
    family: str = "cifar"  # the trainer that takes it ("cifar" or "imagenet")
    base_lr: float = 0.1
    lr_reference_batch: int | None = None  # base_lr is for this batch; None: no scaling
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4
    decay_bn: bool = True  # L2 on BN gamma/beta too (the paper's code)
    schedule: str = "step"
    lr_boundaries: tuple = ()  # iterations "32000", fractions "0.5" or epochs "30ep"
    decay_factor: float = 0.1
    train_steps: int | None = None  # the run's length: iterations ...
    epochs: float | None = None  # ... or epochs (exactly one of the two)
    warmup_steps: int = 0
    warmup_lr: float = 0.01
    label_smoothing: float = 0.0
    eval_sizes: tuple = ()  # ImageNet: single-crop test sizes
    weight_average: float = 0.0  # decay of the weights' moving average used to evaluate; 0: off
    eval_flip: bool = False  # evaluate on the mean logits of the image and its mirror image
    eval_translate: bool = False  # ... and of copies shifted one pixel (keras_preact.tta)

    @property
    def eval_tta(self) -> str:
        """The test-time augmentation of every evaluation, a ``keras_preact.tta`` choice."""
        return tta_name(self.eval_flip, self.eval_translate)

    def total_steps(self, steps_per_epoch: int) -> int:
        """Length of the run in iterations."""
        if self.train_steps:
            return int(self.train_steps)
        return max(1, math.ceil(self.epochs * steps_per_epoch))

    def replace(self, **changes) -> "Recipe":
        """A copy with ``changes``; ``None`` values are ignored (an unset flag keeps the default).

        Setting ``train_steps`` clears ``epochs`` and vice versa, since one decides the length.
        A new length without new ``lr_boundaries`` moves the recipe's boundaries given in
        iterations or epochs to the same fractions of the run (``relative_boundaries``): the
        CIFAR recipe's 32k and 48k of 64k iterations become 0.5 and 0.75 of any run, so a short
        run decays its rate too. A boundary given with the change is kept as it is.
        """
        changes = {k: v for k, v in changes.items() if v is not None}
        if "train_steps" in changes and "epochs" not in changes:
            changes["epochs"] = None
        if "epochs" in changes and "train_steps" not in changes:
            changes["train_steps"] = None
        new_length = (changes.get("train_steps", self.train_steps), changes.get("epochs", self.epochs))
        if new_length != (self.train_steps, self.epochs) and "lr_boundaries" not in changes:
            changes["lr_boundaries"] = self.relative_boundaries()
        return dataclasses.replace(self, **changes)

    def relative_boundaries(self) -> tuple:
        """``lr_boundaries`` as fractions of this recipe's run where their unit allows."""
        return relative_boundaries(self.lr_boundaries, self.train_steps, self.epochs)


# Variables ``decay_bn=False`` leaves out of weight decay (Keras' short names; a StackedStage
# names its BN scale ``<op>_gamma``): what remains are the conv and dense kernels.
NO_DECAY_NAMES = ("gamma", "beta", "bias")


def has_short_name(variable, names) -> bool:
    """Whether a variable's name is one of ``names`` (or, stacked, ends with ``_<name>``)."""
    return any(variable.name == n or variable.name.endswith("_" + n) for n in names)


def decays(variable, decay_bn: bool) -> bool:
    """Whether the recipe's weight decay applies to ``variable`` (a trainable variable)."""
    return decay_bn or not has_short_name(variable, NO_DECAY_NAMES)


RECIPES = {
    # Paper appendix: SGD momentum 0.9, batch 128, wd 1e-4, 0.1 /10 at 32k and 48k
    # iterations; 64k iterations in all ([1] section 4.2). The 400-iteration warm-up at 0.01
    # is off: the appendix remarks it is not necessary for the pre-activation unit;
    # --warmup_steps=400 turns it on.
    "cifar": Recipe(
        name="cifar",
        batch_size=128,
        lr_boundaries=("32000", "48000"),
        train_steps=64000,
    ),
    # Paper appendix: batch 256, 0.1 (here linearly scaled with the batch) /10 at epochs 30
    # and 60; 90 epochs (fb.resnet.torch's length); single-crop tests at 224 and 320 (paper
    # Table 5).
    "imagenet": Recipe(
        name="imagenet",
        family="imagenet",
        batch_size=256,
        lr_reference_batch=256,
        lr_boundaries=("30ep", "60ep"),
        epochs=90,
        eval_sizes=(224, 320),
    ),
    # Short budgets on CIFAR-style data (minutes to an hour on a CPU), the paper's architecture
    # unchanged. Each element was measured against the same budget without it
    # (docs/training.md, "The fast recipe"): Nesterov momentum, label smoothing 0.1, weight
    # decay 5e-4 on conv and dense kernels only, a cosine decay to zero over the run, an
    # exponential moving average of the weights for evaluation and export, and flip
    # test-time augmentation. Set the length with --epochs (or --train_steps).
    "fast": Recipe(
        name="fast",
        batch_size=128,
        base_lr=0.1,
        nesterov=True,
        weight_decay=5e-4,
        decay_bn=False,
        schedule="cosine",
        epochs=30,
        label_smoothing=0.1,
        weight_average=0.999,
        eval_flip=True,
    ),
    # The CIFAR recipe shrunk to a few minutes on 2 CPU cores for the embedded sample.
    "cifar10_sample": Recipe(
        name="cifar10_sample",
        batch_size=128,
        lr_boundaries=("0.5", "0.75"),
        epochs=15,
    ),
}


def family_recipes(family: str) -> tuple:
    """Names of the recipes a trainer of ``family`` (``"cifar"`` or ``"imagenet"``) accepts."""
    return tuple(name for name, recipe in RECIPES.items() if recipe.family == family)


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(
            f"Unknown recipe {name!r}. Valid choices: {', '.join(map(repr, RECIPES))}."
        )
    return RECIPES[name]


def recipe_for_dataset(dataset: str, family: str) -> Recipe:
    """The default recipe of a dataset: the embedded sample's short one, else the family's."""
    if dataset == "cifar10_sample":
        return RECIPES["cifar10_sample"]
    return get_recipe(family)
