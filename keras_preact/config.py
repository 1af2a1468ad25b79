"""The architecture of a residual network as one value: :class:`ResNetConfig`.

Every argument that shapes a network lives here -- the stage table, the stem, the unit kind,
order and shortcut with their parameters, dimension matching and stride placement, widths, the
head, BatchNorm settings and the fast-path options -- with its default resolved and its value
checked. ``keras_preact.model.ResNet`` is built from it and serializes it back
(``get_config``), so a ``.keras`` file carries the architecture by its arguments.

The per-unit layout (which stride and which pre-activation each unit gets, where stacked stages
start) is derived here once, from the paper's appendix rules:

* the first unit's activation comes right after the stem conv, before the split
  (``preactivation="none"``: the stem is conv -> BN -> ReLU);
* the first unit of every later stage changes dimensions; its pre-activation is applied before
  the split, so the projection (or zero-pad) shortcut takes the pre-activated input
  (``preactivation="shared"``); all other units pre-activate the residual branch only;
* the last unit of a pre-activation net is followed by an extra BN-ReLU (ReLU only for
  ``relu_only_preact``) before pooling (``ResNet`` adds it).

``data_format`` (``"channels_last"``, NHWC, or ``"channels_first"``, NCHW; None resolves to
``keras.config.image_data_format()`` when the config is made) is the layout of every tensor of
the network; it changes no weight. ``input_shape`` is (height, width, channels) in both layouts;
:attr:`ResNetConfig.image_shape` is the shape the model's input takes, (channels, height, width)
for channels_first.

The options every unit shares (kind, order, shortcut and its parameters, dimension matching,
stride placement, padding, BatchNorm settings) are the fields of ``keras_preact.plan.UnitOptions``
under the same names (``unit`` for its ``kind``), with its defaults and its checks;
:meth:`ResNetConfig.unit_options` returns them as that one value.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import keras

from keras_preact.common import (
    DTYPE_POLICIES,
    EXPANSION,
    FAMILIES,
    ORDERS,
    POOLINGS,
    PREACT_ORDERS,
    check_choice,
    resolve_data_format,
)
from keras_preact.plan import UNIT_DEFAULTS, UnitOptions

# "cifar": 3x3 conv, BN-ReLU; "imagenet" (fb.resnet.torch, the paper's ImageNet code): 7x7/2
# conv, BN-ReLU, 3x3/2 max pool; "timm" (timm's ResNetV2): 7x7/2 conv, 3x3/2 max pool, and the
# BN-ReLU inside the first unit, before its split (its projection takes the activated input).
STEMS = ("cifar", "imagenet", "timm")
# Smallest input side each family accepts: every stride must still see at least one pixel.
MIN_SIDE = {"cifar": 8, "imagenet": 32}
DEFAULT_WIDTHS = {"cifar": (16, 32, 64), "imagenet": (64, 128, 256, 512)}
IMAGENET_STEM_WIDTH = 64
# The config's name of a UnitOptions field where it differs ("unit": the unit kind).
UNIT_FIELDS = {"kind": "unit"}


def resolve_order(preact, order) -> str:
    """``preact=True|False`` is shorthand for ``order="full_preact"|"original"``."""
    if order is None:
        if preact is None:
            return UNIT_DEFAULTS.order
        return "original" if preact is False else "full_preact"
    check_choice("order", order, ORDERS)
    if preact is not None and (order in PREACT_ORDERS) != bool(preact):
        raise ValueError(
            f"preact={preact} contradicts order={order!r}; pass one of them. "
            f"Pre-activation orders: {', '.join(PREACT_ORDERS)}."
        )
    return order


def check_input_shape(input_shape, family: str) -> tuple:
    """Validate and normalise ``input_shape`` (height, width, channels), whatever the layout."""
    try:
        shape = tuple(input_shape)
    except TypeError:
        shape = None
    if shape is None or len(shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape!r}.")
    h, w, c = shape
    if not isinstance(c, int) or c < 1:
        raise ValueError(f"input_shape channels must be a positive integer, got {input_shape!r}.")
    lo = MIN_SIDE[family]
    for side in (h, w):
        if side is not None and (not isinstance(side, int) or side < lo):
            raise ValueError(
                f"input_shape {input_shape!r}: height and width must be None or integers "
                f">= {lo} for {family} networks (input_shape is (height, width, channels) "
                "for both data formats)."
            )
    return shape


@dataclasses.dataclass(frozen=True)
class UnitSlot:
    """Where one unit (or one stacked run of units) sits in the network."""

    stage: int  # 1-based
    first: int  # 1-based index of the (first) unit in its stage
    count: int  # 1 for a ResidualUnit, > 1 ... for a StackedStage
    filters: int
    strides: int
    preactivation: str
    stacked: bool

    @property
    def name(self) -> str:
        if self.stacked:
            return f"stage{self.stage}_units{self.first}to{self.first + self.count - 1}"
        return f"stage{self.stage}_unit{self.first}"


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    """Every architecture argument of a network, defaults resolved, values checked.

    Build one with :meth:`create` (which also takes the ``preact`` shorthand) or directly;
    ``None`` fields take the family's default. See ``keras_preact.model.ResNet`` for the meaning
    of each argument.
    """

    units_per_stage: tuple
    family: str = "cifar"
    unit: str = UNIT_DEFAULTS.kind
    widths: tuple | None = None
    stem: str | None = None
    stem_width: int | None = None
    padding: str = UNIT_DEFAULTS.padding
    order: str = UNIT_DEFAULTS.order
    shortcut: str = UNIT_DEFAULTS.shortcut
    downsample: str | None = None  # the family's, see __post_init__
    stride_at: str | None = None  # the family's, see __post_init__
    num_classes: int = 10
    input_shape: tuple | None = None
    include_top: bool = True
    pooling: str | None = "avg"
    classifier_activation: str | None = None
    shortcut_scale: float = UNIT_DEFAULTS.shortcut_scale
    scale_residual: bool = UNIT_DEFAULTS.scale_residual
    gate_bias_init: float = UNIT_DEFAULTS.gate_bias_init
    dropout_rate: float = UNIT_DEFAULTS.dropout_rate
    bn_momentum: float = UNIT_DEFAULTS.bn_momentum
    bn_epsilon: float = UNIT_DEFAULTS.bn_epsilon
    fused_bn: bool = UNIT_DEFAULTS.fused_bn
    stacked_stages: bool = False
    recompute: bool = False
    dtype_policy: str | None = None  # None: Keras' global policy when the config is made
    data_format: str | None = None  # None: Keras' image_data_format() when the config is made

    @classmethod
    def create(cls, units_per_stage: Sequence[int], *, preact: bool | None = None,
               order: str | None = None, **kwargs) -> "ResNetConfig":
        """A config from ``build_resnet``-style arguments (``preact`` shorthand included)."""
        return cls(tuple(units_per_stage), order=resolve_order(preact, order), **kwargs)

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (frozen)
        check_choice("family", self.family, FAMILIES)
        check_choice("pooling", self.pooling, POOLINGS)
        if self.dtype_policy is None:
            set_("dtype_policy", keras.config.dtype_policy().name)
        check_choice("dtype_policy", self.dtype_policy, DTYPE_POLICIES)
        set_("data_format", resolve_data_format(self.data_format))
        family = self.family
        if self.recompute and not self.stacked_stages:
            raise ValueError("recompute=True needs stacked_stages=True.")
        if self.stacked_stages and self.shortcut == "dropout":
            raise ValueError(
                "The 'dropout' shortcut cannot be stacked (its random mask would differ under "
                "recomputation); build that network with stacked_stages=False."
            )
        set_("stem", family if self.stem is None else self.stem)
        check_choice("stem", self.stem, STEMS)
        if self.downsample is None:
            cifar_plain = family == "cifar" and self.unit != "bottleneck"
            set_("downsample", "zero_pad" if cifar_plain else "projection")
        if self.stride_at is None:
            set_("stride_at", "first" if family == "cifar" else "3x3")
        # The unit options are checked, and their numbers normalised, by UnitOptions.
        for name, value in self.unit_options().to_dict().items():
            set_(UNIT_FIELDS.get(name, name), value)
        if self.stem == "timm" and self.order not in PREACT_ORDERS:
            raise ValueError(
                "stem='timm' leaves the first activation to the first unit, which only the "
                f"pre-activation orders ({', '.join(PREACT_ORDERS)}) have; got order={self.order!r}."
            )
        try:
            stages = tuple(int(n) for n in self.units_per_stage)
            widths = tuple(int(w) for w in (self.widths or DEFAULT_WIDTHS[family]))
        except (TypeError, ValueError):
            raise ValueError(
                f"units_per_stage and widths must be sequences of integers, got "
                f"{self.units_per_stage!r} and {self.widths!r}."
            ) from None
        if not stages or min(stages) < 1:
            raise ValueError(f"Every stage needs at least one unit, got {stages}.")
        if len(widths) != len(stages):
            raise ValueError(f"{len(stages)} stages but {len(widths)} widths: give one width per stage.")
        if min(widths) < 1:
            raise ValueError(f"Widths must be positive, got {widths}.")
        set_("units_per_stage", stages)
        set_("widths", widths)
        if self.stem_width is None:
            set_("stem_width", widths[0] if self.stem == "cifar" else IMAGENET_STEM_WIDTH)
        if isinstance(self.stem_width, bool) or not isinstance(self.stem_width, int) or self.stem_width < 1:
            raise ValueError(f"stem_width must be a positive integer, got {self.stem_width!r}.")
        if self.include_top and (
            isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int)
            or self.num_classes < 1
        ):
            raise ValueError(f"num_classes must be a positive integer, got {self.num_classes!r}.")
        shape = self.input_shape
        if shape is None:
            shape = (32, 32, 3) if family == "cifar" else (None, None, 3)
        set_("input_shape", check_input_shape(shape, family))
        for name in ("stacked_stages", "recompute", "include_top"):
            set_(name, bool(getattr(self, name)))

    # -- derived -------------------------------------------------------------------------
    @property
    def is_preact(self) -> bool:
        return self.order in PREACT_ORDERS

    @property
    def image_shape(self) -> tuple:
        """One input image as the model takes it: ``input_shape`` (height, width, channels),
        or (channels, height, width) for ``data_format="channels_first"``."""
        h, w, c = self.input_shape
        return (c, h, w) if self.data_format == "channels_first" else (h, w, c)

    def unit_options(self) -> UnitOptions:
        """The options shared by every unit of the network (``keras_preact.plan.UnitOptions``)."""
        return UnitOptions(**{name: getattr(self, UNIT_FIELDS.get(name, name))
                              for name in UnitOptions.names()})

    def layout(self) -> list:
        """The network's units in order, as :class:`UnitSlot` s (the appendix rules above)."""
        slots = []
        for s, (n, width) in enumerate(zip(self.units_per_stage, self.widths), start=1):
            for u in range(1, n + 1):
                if not self.is_preact:
                    preactivation = "branch"  # unused by post-activation units
                elif u == 1 and s > 1:
                    preactivation = "shared"
                elif u == 1:
                    # The first unit's activation is the stem's BN-ReLU, unless the stem has
                    # none (timm): then the unit applies it, before its split if its shortcut
                    # is a projection (dimensions change), else on its branch only.
                    changes = self.stem_width != width * EXPANSION[self.unit]
                    preactivation = "none" if self.stem != "timm" else (
                        "shared" if changes else "branch")
                else:
                    preactivation = "branch"
                strides = 2 if (u == 1 and s > 1) else 1
                if self.stacked_stages and u == 2:
                    # The shape-preserving units 2..n of a stage run as one StackedStage.
                    slots.append(UnitSlot(s, 2, n - 1, width, 1, "branch", True))
                    break
                slots.append(UnitSlot(s, u, 1, width, strides, preactivation, False))
        return slots

    # -- conversion ----------------------------------------------------------------------
    def replace(self, **changes) -> "ResNetConfig":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """JSON-friendly arguments (lists for tuples); ``ResNetConfig(**d)`` rebuilds it."""
        out = dataclasses.asdict(self)
        for key in ("units_per_stage", "widths", "input_shape"):
            out[key] = list(out[key])
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "ResNetConfig":
        values = dict(values)
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"Unknown architecture argument(s): {', '.join(unknown)}.")
        for key in ("units_per_stage", "widths", "input_shape"):
            if values.get(key) is not None:
                values[key] = tuple(values[key])
        return cls(**values)
