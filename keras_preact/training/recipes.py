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

from keras_preact.common import FAMILIES
from keras_preact.training import settings
from keras_preact.training.schedules import SCHEDULES, relative_boundaries, resolve_boundaries
from keras_preact.tta import tta_name


# The single-crop test sizes of the paper's ImageNet results (Table 5).
IMAGENET_EVAL_SIZES = (224, 320)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """Optimisation, schedule and evaluation settings of one training recipe.

    The ``optimisation`` section of a run configuration (``keras_preact.training.run_config``):
    each field is a setting (``keras_preact.training.settings``) with its trainer flag, default
    and check, and the presets in ``RECIPES`` fill it. Constructing one checks every value.
    """

    name: str = settings.text("custom", "Name of the recipe (a RECIPES key for a preset).", flag=None)
    batch_size: int = settings.integer(128, "Global batch size (all replicas).", low=1)
    family: str = settings.choice(  # the trainer that takes it
        "cifar", FAMILIES, "The trainer family that takes the recipe.", flag=None)
    base_lr: float = settings.number(
        0.1, "Base learning rate (ImageNet: for batch 256, scaled linearly).", flag="lr", low=0, low_open=True)
    lr_reference_batch: int | None = settings.integer(  # None: no scaling
        None, "base_lr is for this global batch and scales linearly with it.", flag=None, low=1)
    momentum: float = settings.number(0.9, "SGD momentum.", low=0, high=1, high_open=True)
    nesterov: bool = settings.boolean(False, "Nesterov momentum.")
    weight_decay: float = settings.number(1e-4, "L2 weight decay (coupled, added to the gradient).", low=0)
    decay_bn: bool = settings.boolean(True, "Apply weight decay to BN gamma/beta and biases too.")
    schedule: str = settings.choice("step", SCHEDULES, "Learning-rate schedule.", flag="lr_schedule")
    lr_boundaries: tuple = settings.items(
        (), "Step-decay boundaries: iterations (32000), fractions (0.5) or epochs (30ep).", unset="none")
    decay_factor: float = settings.number(
        0.1, "Multiply the rate by this at each boundary.", flag="lr_decay", low=0, high=1, low_open=True)
    # The run's length: iterations or epochs (exactly one of the two).
    train_steps: int | None = settings.integer(None, "Train this many iterations.", low=1,
                                               unset="unset (--epochs)")
    epochs: float | None = settings.number(None, "Train this many epochs (instead of --train_steps).",
                                           low=0, low_open=True, unset="unset (--train_steps)")
    warmup_steps: int = settings.integer(0, "Iterations at --warmup_lr first (paper: 400).", low=0)
    warmup_lr: float = settings.number(0.01, "Warm-up learning rate (paper: 0.01).", low=0, low_open=True)
    label_smoothing: float = settings.number(0.0, "Label smoothing.", low=0, high=1, high_open=True)
    eval_sizes: tuple = settings.items(
        (), f"Single-crop test sizes ({' and/or '.join(map(str, IMAGENET_EVAL_SIZES))}, paper Table 5).",
        item_type=int, families=("imagenet",))
    weight_average: float = settings.number(
        0.0, "Evaluate and export an exponential moving average of the weights with this decay per "
        "step (e.g. 0.999); 0: off.", low=0, high=1, high_open=True)
    eval_flip: bool = settings.boolean(
        False, "Evaluate on the mean logits of each image and its mirror image (test-time augmentation).")
    eval_translate: bool = settings.boolean(
        False, "Also average the logits of copies of each image shifted one pixel up, down, left and "
        "right (5 views, 10 with --eval_flip; docs/training.md, 'Test-time translation').")

    def __post_init__(self):
        settings.check_fields(self)
        if self.train_steps is not None and self.epochs is not None:
            raise settings.SettingError("epochs", "give --train_steps or --epochs, not both.")
        if self.train_steps is None and self.epochs is None:
            raise settings.SettingError("epochs", "give --train_steps or --epochs.")
        try:  # boundary syntax, with a stand-in run length (the real one needs the dataset size)
            resolve_boundaries(self.lr_boundaries, 10**9, 10**6)
        except ValueError as error:
            raise settings.SettingError("lr_boundaries", str(error)) from None
        if any(size not in IMAGENET_EVAL_SIZES for size in self.eval_sizes) or (
                self.family == "imagenet" and not self.eval_sizes):
            raise settings.SettingError(
                "eval_sizes", f"the paper's single-crop tests are "
                f"{' and '.join(map(str, IMAGENET_EVAL_SIZES))}, got {list(self.eval_sizes)}.")

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
        eval_sizes=IMAGENET_EVAL_SIZES,
    ),
    # Short budgets on CIFAR-style data (minutes to an hour on a CPU), the paper's architecture
    # unchanged. Each element was measured against the same budget without it
    # (docs/training.md, "The fast recipe"): Nesterov momentum, label smoothing 0.1, weight
    # decay 5e-4 on conv and dense kernels only, a cosine decay to zero over the run, an
    # exponential moving average of the weights for evaluation and export, and flip
    # test-time augmentation. Set the length with --epochs (or --train_steps).
    "fast": Recipe(
        name="fast",
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
