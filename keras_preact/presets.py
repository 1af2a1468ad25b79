"""The model table: the paper's named networks, a registry, and their constructors.

CIFAR nets are named by depth: a net of ``d`` layers with units of ``L`` weight layers has
``(d - 2) / (3 L)`` units in each of its three stages (basic: 6n+2, bottleneck: 9n+2,
single: 3n+2). ImageNet nets use the stage tables of [1].

    >>> import keras_preact
    >>> model = keras_preact.ResNet1001(preact=True)        # CIFAR-10, 10,327,706 parameters
    >>> model = keras_preact.ResNet110(unit="single")       # ResNet-110(1layer)
    >>> model = keras_preact.get_model("resnet200", preact=False)
"""

from __future__ import annotations

import keras

from keras_preact.resnet import build_resnet
from keras_preact.units import KINDS, check_choice

LAYERS_PER_UNIT = {"basic": 2, "bottleneck": 3, "single": 1}

# name -> (family, depth, default unit kind)
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

MODEL_NAMES = tuple(CIFAR_MODELS) + tuple(IMAGENET_MODELS)


def cifar_units_per_stage(depth: int, unit: str) -> tuple:
    """Units per stage of a CIFAR net of ``depth`` layers, or a ValueError saying why not."""
    check_choice("unit kind", unit, KINDS)
    per_unit = LAYERS_PER_UNIT[unit]
    n, rem = divmod(depth - 2, 3 * per_unit)
    if rem or n < 1:
        examples = ", ".join(str(3 * per_unit * k + 2) for k in (1, 3, 5, 9, 18))
        raise ValueError(
            f"Impossible depth {depth} for CIFAR {unit} units: depth must be "
            f"{3 * per_unit}n+2 (e.g. {examples})."
        )
    return (n, n, n)


def cifar_resnet(depth: int, unit: str | None = None, **kwargs) -> keras.Model:
    """A CIFAR ResNet of any valid depth; ``unit`` defaults to bottleneck for 164 and 1001."""
    if unit is None:
        unit = "bottleneck" if depth in CIFAR_BOTTLENECK_DEPTHS else "basic"
    stages = cifar_units_per_stage(int(depth), unit)
    kwargs.setdefault("name", f"resnet{depth}" + ("_1layer" if unit == "single" else ""))
    return build_resnet(stages, family="cifar", unit=unit, **kwargs)


def imagenet_resnet(name: str, **kwargs) -> keras.Model:
    check_choice("ImageNet model", name, tuple(IMAGENET_MODELS))
    unit, stages = IMAGENET_MODELS[name]
    if "unit" in kwargs:
        raise ValueError(f"{name} fixes its unit kind ({unit}); use build_resnet for others.")
    kwargs.setdefault("num_classes", 1000)
    kwargs.setdefault("name", name)
    return build_resnet(stages, family="imagenet", unit=unit, **kwargs)


def get_model(name: str, **kwargs) -> keras.Model:
    """Build a named network, e.g. ``get_model("resnet164", preact=True, num_classes=100)``."""
    key = str(name).lower().replace("-", "").replace("_", "")
    check_choice("model", key, MODEL_NAMES)
    if key in CIFAR_MODELS:
        return cifar_resnet(CIFAR_MODELS[key], **kwargs)
    return imagenet_resnet(key, **kwargs)


def model_family(name: str) -> str:
    key = str(name).lower().replace("-", "").replace("_", "")
    check_choice("model", key, MODEL_NAMES)
    return "cifar" if key in CIFAR_MODELS else "imagenet"


def _constructor(name: str):
    family = model_family(name)
    default_unit = (
        ("bottleneck" if CIFAR_MODELS[name] in CIFAR_BOTTLENECK_DEPTHS else "basic")
        if family == "cifar"
        else IMAGENET_MODELS[name][0]
    )

    def constructor(**kwargs) -> keras.Model:
        return get_model(name, **kwargs)

    constructor.__name__ = constructor.__qualname__ = "ResNet" + name[len("resnet"):]
    constructor.__doc__ = (
        f"{family.capitalize() if family == 'cifar' else 'ImageNet'} {name} "
        f"({default_unit} units). Keyword arguments go to ``keras_preact.build_resnet`` "
        "(preact, order, shortcut, num_classes, input_shape, include_top, pooling, ...)"
        + ("; ``unit=`` picks another unit kind at the same depth." if family == "cifar" else ".")
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
