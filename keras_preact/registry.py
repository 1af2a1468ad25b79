"""The model registry: every network name the package knows, resolved in one place.

* the paper's named networks (``list_models()``): CIFAR ResNet-20/32/44/56/110/1202 (basic
  units), ResNet-164/1001 (bottleneck), and ImageNet ResNet-18/34 (basic) and
  ResNet-50/101/152/200 (bottleneck), with the stage tables of [1];
* ``resnet<depth>`` for any valid CIFAR depth: a net of ``d`` layers with units of ``L`` weight
  layers has ``(d - 2) / (3 L)`` units in each of its three stages (basic: 6n+2, bottleneck:
  9n+2, single: 3n+2);
* aliases: case and separators are ignored (``ResNet-164``, ``resnet_164``), a ``preact``
  prefix is accepted, and ``resnet110_1layer`` is ResNet-110 with 1-layer units (paper Table 2's
  "ResNet-110(1layer)").

Trainers, export, diagnostics, the ablation runner and the benchmarks resolve names only here.

    >>> import keras_preact
    >>> model = keras_preact.ResNet1001(preact=True)        # CIFAR-10, 10,327,706 parameters
    >>> model = keras_preact.ResNet110(unit="single")       # ResNet-110(1layer)
    >>> model = keras_preact.get_model("resnet200", preact=False)
"""

from __future__ import annotations

import dataclasses
import os
import re

from keras_preact.common import KINDS, LAYERS_PER_UNIT, check_choice
from keras_preact.model import ResNet
from keras_preact.weights import file_architecture, load_weights, local_weights

CIFAR_MODELS = {
    "resnet20": 20,
    "resnet32": 32,
    "resnet44": 44,
    "resnet56": 56,
    "resnet110": 110,
    "resnet164": 164,
    "resnet1001": 1001,
    "resnet1202": 1202,
}
CIFAR_BOTTLENECK_DEPTHS = (164, 1001)  # the paper's bottleneck nets; the rest are basic

IMAGENET_MODELS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
    "resnet200": ("bottleneck", (3, 24, 36, 3)),
}

# alias -> (name, unit kind it fixes)
ALIASES = {"resnet1101layer": ("resnet110", "single")}

MODEL_NAMES = tuple(CIFAR_MODELS) + tuple(IMAGENET_MODELS)
_DEPTH_NAME = re.compile(r"^resnet(\d+)$")


class ModelNameError(ValueError):
    """A name or unit kind the registry cannot resolve; ``argument`` is ``"name"`` or ``"unit"``."""

    def __init__(self, argument: str, message: str):
        super().__init__(message)
        self.argument = argument


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A resolved name: what ``get_model`` builds."""

    name: str  # canonical model name, also the built model's default name
    family: str
    unit: str
    units_per_stage: tuple

    @property
    def depth(self) -> int:
        """Weight layers: stem conv + units x layers per unit + classifier."""
        return 2 + sum(self.units_per_stage) * LAYERS_PER_UNIT[self.unit]


def list_models() -> tuple:
    """The registered names (the paper's networks), CIFAR first."""
    return MODEL_NAMES + tuple(f"{ALIASES[a][0]}_1layer" for a in ALIASES)


def _key(name) -> str:
    key = re.sub(r"[\s_\-]", "", str(name).lower())
    return key[len("preact"):] if key.startswith("preactresnet") else key


def default_unit(depth: int) -> str:
    """The unit kind of a CIFAR net of ``depth`` layers when none is given."""
    return "bottleneck" if depth in CIFAR_BOTTLENECK_DEPTHS else "basic"


def cifar_units_per_stage(depth: int, unit: str) -> tuple:
    """Units per stage of a CIFAR net of ``depth`` layers, or a ValueError saying why not."""
    check_choice("unit kind", unit, KINDS)
    per_unit = LAYERS_PER_UNIT[unit]
    n, rem = divmod(int(depth) - 2, 3 * per_unit)
    if rem or n < 1:
        examples = ", ".join(str(3 * per_unit * k + 2) for k in (1, 3, 5, 9, 18))
        raise ModelNameError(
            "name",
            f"Impossible depth {depth} for CIFAR {unit} units: depth must be "
            f"{3 * per_unit}n+2 (e.g. {examples}).",
        )
    return (n, n, n)


def resolve(name, unit: str | None = None) -> ModelSpec:
    """The :class:`ModelSpec` of ``name`` (optionally with another CIFAR unit kind).

    Raises :class:`ModelNameError` (a ValueError) naming the valid choices.
    """
    key = _key(name)
    if unit is not None and unit not in KINDS:
        raise ModelNameError("unit", f"Unknown unit kind {unit!r}. Valid choices: {', '.join(KINDS)}.")
    if key in ALIASES:
        key, fixed = ALIASES[key]
        if unit not in (None, fixed):
            raise ModelNameError("unit", f"{name!r} has {fixed} units; got unit={unit!r}.")
        unit = fixed
    if key in IMAGENET_MODELS:
        fixed, stages = IMAGENET_MODELS[key]
        if unit not in (None, fixed):
            raise ModelNameError(
                "unit", f"{key} fixes its unit kind ({fixed}); use build_resnet for others."
            )
        return ModelSpec(key, "imagenet", fixed, stages)
    match = _DEPTH_NAME.match(key)
    if not match:
        raise ModelNameError(
            "name",
            f"Unknown model {name!r}. Valid choices: {', '.join(list_models())}, or "
            "resnet<depth> for a CIFAR depth 6n+2 (basic), 9n+2 (bottleneck), 3n+2 (single).",
        )
    depth = int(match.group(1))
    unit = unit or default_unit(depth)
    try:
        stages = cifar_units_per_stage(depth, unit)
    except ModelNameError as error:
        raise ModelNameError(
            "name", f"Unknown model {name!r}: {error} Named models: {', '.join(list_models())}."
        ) from None
    return ModelSpec(key + ("_1layer" if unit == "single" else ""), "cifar", unit, stages)


def model_family(name) -> str:
    return resolve(name).family


# Architecture arguments a weights file may fix (keras_preact.weights.implied_architecture,
# keras_preact.presets.architecture: a preset also fixes its shortcut and its parameters).
FILE_FIXED = ("stem", "padding", "stem_width", "order", "stride_at", "downsample", "shortcut",
              "shortcut_scale", "scale_residual", "gate_bias_init", "dropout_rate", "bn_epsilon")

# Weights by name: (model, name) -> a hub handle (keras_preact.hub) or a preset folder shipped
# in the package. timm's ResNetV2-50/101 trained with its "A1h" recipe on ImageNet-1k are
# BatchNorm pre-activation nets that the "timm" layout imports exactly (docs/weights.md).
PRETRAINED = {
    "resnet50": {"imagenet": "hf://timm/resnetv2_50.a1h_in1k/model.safetensors"},
    "resnet101": {"imagenet": "hf://timm/resnetv2_101.a1h_in1k/model.safetensors"},
    "resnet56": {"cifar10": os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                         "pretrained", "cifar10_resnet56")},
}


def pretrained_weights(spec: ModelSpec, weights) -> str:
    """The handle or path of named weights (``"imagenet"``, ``"cifar10"``), or ``weights`` itself
    when it is not a name; ValueError listing the models that have the name."""
    names = {name for table in PRETRAINED.values() for name in table}
    if not isinstance(weights, str) or weights not in names:
        return weights
    table = PRETRAINED.get(spec.name, {})
    if weights not in table:
        having = ", ".join(m for m, t in PRETRAINED.items() if weights in t)
        raise ValueError(f"No {weights!r} weights for {spec.name}: only {having} have them "
                         "(or pass a file, folder, hf:// or kaggle:// handle).")
    found = table[weights]
    if not found.startswith(("hf://", "kaggle://")) and not os.path.isdir(found):
        raise ValueError(f"The {weights!r} weights of {spec.name} are not in this installation "
                         f"(no folder {found}).")
    return found


def weights_options(spec: ModelSpec, weights: str, kwargs: dict, implied: dict | None = None) -> tuple:
    """``(kwargs with the options the weights file fixes, whether the head is new)``.

    ``implied``: the file's ``file_architecture`` when the caller has read it already.
    Raises ValueError when ``kwargs`` contradict the file (another stem, padding, family).
    """
    implied = file_architecture(weights) if implied is None else implied
    kwargs = dict(kwargs)
    if implied.get("family", spec.family) != spec.family:
        raise ValueError(f"{weights} holds an {implied['family']} network; {spec.name} is a "
                         f"{spec.family} network.")
    fixed = {k: v for k, v in implied.items() if k in FILE_FIXED}
    new_head = False
    if kwargs.get("include_top", True) and "num_classes" in implied:
        if kwargs.get("num_classes", implied["num_classes"]) != implied["num_classes"]:
            new_head = True  # fine-tuning: the backbone from the file, a fresh classifier
        else:
            fixed["num_classes"] = implied["num_classes"]
    elif kwargs.get("include_top", True) and implied.get("include_top") is False:
        if "num_classes" not in kwargs:  # a backbone only: features, or a classifier to train
            raise ValueError(f"{weights} holds a backbone without a classifier: pass "
                             "include_top=False (features), or num_classes for a fresh classifier.")
        new_head = True
    if kwargs.get("preact") is False:
        kwargs.pop("preact")
        kwargs.setdefault("order", "original")
    for key, value in fixed.items():
        if key in kwargs and kwargs[key] != value:
            raise ValueError(f"{weights} fixes {key}={value!r}; got {key}={kwargs[key]!r}.")
    kwargs.update(fixed)
    return kwargs, new_head


def get_model(name, weights: str | None = None, **kwargs) -> ResNet:
    """Build a network by name, e.g. ``get_model("resnet164", preact=True, num_classes=100)``.

    Keyword arguments go to :class:`keras_preact.ResNet` (``unit=`` picks another unit kind at
    the same CIFAR depth; ``data_format=`` the layout, None for
    ``keras.config.image_data_format()``). ImageNet nets default to 1000 classes.

    ``weights``: what to initialise from, as in ``keras.applications``: a name
    (``"imagenet"`` for resnet50 and resnet101: timm's ResNetV2 weights from Hugging Face;
    ``"cifar10"`` for resnet56: the preset shipped in the package; ``PRETRAINED``), a hub
    handle (``hf://owner/repo[/file]``, ``kaggle://owner/model/framework/variation[/version]``;
    ``keras_preact.hub``), a preset folder (keras_preact's or keras-hub's ResNetV2;
    ``keras_preact.presets``), a ``.keras`` or ``.weights.h5`` file, or a timm ResNetV2 /
    PyTorch state dict (``.safetensors``, ``.pth``; see ``keras_preact.weights``). The options
    such weights fix (timm: stem, padding, classes) are taken from them; passing a
    contradicting value is an error. With ``include_top=False``, or a ``num_classes`` other
    than the file's (fine-tuning), the file's classifier is left out and the model gets a
    freshly initialised one. Weights load into either ``data_format`` whatever layout they
    were saved from (they are layout-free). Hub weights that are neither cached nor downloadable raise
    ``keras_preact.hub.WeightsUnavailableError`` (a ValueError).
    """
    spec = resolve(name, kwargs.pop("unit", None))
    kwargs.setdefault("name", spec.name)
    new_head = False
    if weights is not None:
        weights = local_weights(pretrained_weights(spec, weights))
        kwargs, new_head = weights_options(spec, weights, kwargs)
    if spec.family == "imagenet":
        kwargs.setdefault("num_classes", 1000)
    model = ResNet(spec.units_per_stage, family=spec.family, unit=spec.unit, **kwargs)
    if weights is not None:
        load_weights(model, weights, skip_head=new_head or not model.architecture.include_top)
    return model


def cifar_resnet(depth: int, unit: str | None = None, **kwargs) -> ResNet:
    """A CIFAR ResNet of any valid depth; ``unit`` defaults to bottleneck for 164 and 1001."""
    return get_model(f"resnet{int(depth)}", unit=unit, **kwargs)


def _constructor(name: str):
    spec = resolve(name)
    family = "CIFAR" if spec.family == "cifar" else "ImageNet"

    def constructor(**kwargs) -> ResNet:
        return get_model(name, **kwargs)

    constructor.__name__ = constructor.__qualname__ = "ResNet" + name[len("resnet"):]
    constructor.__doc__ = (
        f"{family} {name} ({spec.unit} units). Keyword arguments go to ``keras_preact.ResNet`` "
        "(preact, order, shortcut, num_classes, input_shape, data_format, include_top, pooling, ...)"
        + ("; ``unit=`` picks another unit kind at the same depth." if spec.family == "cifar" else ".")
    )
    return constructor


ResNet20 = _constructor("resnet20")
ResNet32 = _constructor("resnet32")
ResNet44 = _constructor("resnet44")
ResNet56 = _constructor("resnet56")
ResNet110 = _constructor("resnet110")
ResNet164 = _constructor("resnet164")
ResNet1001 = _constructor("resnet1001")
ResNet1202 = _constructor("resnet1202")
ResNet18 = _constructor("resnet18")
ResNet34 = _constructor("resnet34")
ResNet50 = _constructor("resnet50")
ResNet101 = _constructor("resnet101")
ResNet152 = _constructor("resnet152")
ResNet200 = _constructor("resnet200")
