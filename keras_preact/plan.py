"""The residual unit as data, and the one interpreter that runs it.

``y = h(x) (+) F(x)``, ``x_next = f(y)`` (paper Eqn 1-2). :func:`unit_plan` turns a unit's
options into a :class:`UnitPlan`: which ops form the residual function F, the shortcut h, the
after-addition activation f, the pre-activation and where it sits, and the gate. Every
implementation of a unit executes that plan with :func:`run_unit`, supplying only how a single
op is computed (a :class:`UnitBackend`):

* ``keras_preact.units.ResidualUnit`` -- Keras sublayers, one per op;
* ``keras_preact.stacked.StackedStage`` -- TensorFlow ops over one unit's slice of stacked
  weights, inside a ``tf.while_loop``;
* ``keras_preact.export.fold`` -- folded inference layers (conv -> BN merged).

So the order of F, h and f, the pre-activation rules and the shortcut formula
(:class:`Combination`) are written once; a new option is added here and every implementation has it.

An op is a tuple ``(op, name, *args)``: ``("bn", name)``, ``("relu", name)``,
``("conv", name, kernel, filters, strides)``, ``("zero_pad", name, filters, strides)``,
``("dropout", name, rate)``. A conv's padding convention is the plan's ``padding``
(``keras_preact.padding``). Names are the sublayer names of ``ResidualUnit`` (and so the
weight paths of saved models).

:class:`UnitOptions` is the value every unit implementation, the network config and the
command lines share: the options of a unit besides its place in the network, each default
written once (``UNIT_DEFAULTS``) and every value checked in one place.
"""

from __future__ import annotations

import abc
import dataclasses

from keras import ops

from keras_preact.common import (
    DOWNSAMPLES,
    EXPANSION,
    GATED_SHORTCUTS,
    KINDS,
    ORDERS,
    PREACT_ORDERS,
    SHORTCUTS,
    STRIDE_AT,
    check_choice,
)
from keras_preact.norm import BN_EPSILON, BN_MOMENTUM
from keras_preact.padding import PADDINGS


@dataclasses.dataclass(frozen=True)
class UnitOptions:
    """The options of a residual unit besides its place in the network (width, stride,
    pre-activation placement), with their defaults; ``keras_preact.units`` describes each.

    ``ResidualUnit``, ``StackedStage``, ``ResNetConfig`` (field ``unit`` is ``kind`` here),
    the shortcut layers and the diagnostics command line take their defaults from
    ``UNIT_DEFAULTS``, so each default is written on one line below. Values are checked and
    normalised (floats, bools) on construction.
    """

    kind: str = "basic"  # weight layers of F: two 3x3 convs, as [1]'s CIFAR nets
    order: str = "full_preact"  # the proposed unit (Fig. 4e)
    shortcut: str = "identity"  # h(x) = x (Fig. 2a), the paper's choice
    downsample: str = "projection"  # 1x1 conv where dimensions change
    stride_at: str = "first"  # the paper's CIFAR code strides the first conv
    shortcut_scale: float = 0.5  # lambda of constant_scaling (Table 1: 0.5)
    scale_residual: bool = False  # also scale F by 1 - lambda (Table 1's 0.5 / 0.5 row)
    gate_bias_init: float = -6.0  # b_g of the gates (Table 1's gating rows: 0 and -6, the best)
    dropout_rate: float = 0.5  # of the dropout shortcut (Table 1: 0.5)
    padding: str = "symmetric"  # of strided convs: Torch's, as the paper's code (padding.py)
    bn_momentum: float = BN_MOMENTUM
    bn_epsilon: float = BN_EPSILON
    fused_bn: bool = True  # the backend's fused BN kernel (norm.batch_norm_forward): same numbers, faster

    def __post_init__(self):
        check_choice("unit kind", self.kind, KINDS)
        check_choice("order", self.order, ORDERS)
        check_choice("shortcut", self.shortcut, SHORTCUTS)
        check_choice("downsample", self.downsample, DOWNSAMPLES)
        check_choice("stride_at", self.stride_at, STRIDE_AT)
        check_choice("padding", self.padding, PADDINGS)
        if not 0.0 <= float(self.dropout_rate) < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {self.dropout_rate!r}.")
        for name in ("shortcut_scale", "gate_bias_init", "dropout_rate", "bn_momentum", "bn_epsilon"):
            object.__setattr__(self, name, float(getattr(self, name)))  # frozen
        for name in ("scale_residual", "fused_bn"):
            object.__setattr__(self, name, bool(getattr(self, name)))

    @classmethod
    def names(cls) -> tuple:
        return tuple(field.name for field in dataclasses.fields(cls))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "UnitOptions":
        return dataclasses.replace(self, **changes)


UNIT_DEFAULTS = UnitOptions()


@dataclasses.dataclass(frozen=True)
class Combination:
    """How h(x) and F(x) are added: the shortcut variant and its constants."""

    shortcut: str = UNIT_DEFAULTS.shortcut
    shortcut_scale: float = UNIT_DEFAULTS.shortcut_scale
    scale_residual: bool = UNIT_DEFAULTS.scale_residual

    def __call__(self, shortcut, residual, gate=None):
        """``y = h(x) (+) F(x)`` for each shortcut variant (paper Fig. 2, Table 1): the one
        place this formula lives."""
        kind = self.shortcut
        if kind == "constant_scaling":
            lam = self.shortcut_scale
            return lam * shortcut + ((1.0 - lam) * residual if self.scale_residual else residual)
        if kind == "exclusive_gating":
            return (1.0 - gate) * shortcut + gate * residual
        if kind == "shortcut_only_gating":
            return (1.0 - gate) * shortcut + residual
        return ops.add(shortcut, residual)


@dataclasses.dataclass(frozen=True)
class UnitPlan:
    """One residual unit as data; see the module docstring for the op tuples.

    ``preactivation`` says where ``preact`` runs: ``"branch"`` (F's input only, the shortcut
    sees the raw x: Eqn 4 holds), ``"shared"`` (before the split: the paper's appendix, for
    dimension-changing units) or ``"none"`` (the caller applied it: the first unit). ``gate``
    is ``(filters, strides)`` of the gate's 1x1 conv, or None.
    """

    preactivation: str
    preact: tuple
    branch: tuple
    shortcut: tuple
    gate: tuple | None
    post: tuple
    combination: Combination
    padding: str  # of the strided convs: "symmetric" (Torch) or "same" (TensorFlow)

    def ops(self, part: str) -> tuple:
        return getattr(self, part)

    def bn_names(self) -> list:
        """Names of the unit's BN ops, in execution order of the parts."""
        return [name for part in ("preact", "branch", "shortcut", "post")
                for kind, name, *_ in self.ops(part) if kind == "bn"]


def conv_specs(kind: str, filters: int, strides: int, stride_at: str) -> list:
    """(kernel, filters, strides) of each weight layer of F, in order."""
    c = filters
    if kind == "basic":
        specs = [[3, c, 1], [3, c, 1]]
    elif kind == "bottleneck":
        specs = [[1, c, 1], [3, c, 1], [1, 4 * c, 1]]
    else:
        specs = [[3, c, 1]]
    # "first": the paper's CIFAR code strides the first conv (the 1x1 of a bottleneck);
    # "3x3": fb.resnet.torch strides the 3x3. Same thing for basic and single units.
    at = 0 if stride_at == "first" else [k for k, _, _ in specs].index(3)
    specs[at][2] = strides
    return [tuple(s) for s in specs]


def unit_plan(options: UnitOptions, *, in_channels: int, filters: int, strides: int,
              preactivation: str) -> UnitPlan:
    """The ops of one unit (paper Fig. 2 and Fig. 4): ``options`` shared by the network's units,
    then the unit's input channels, width, stride and pre-activation placement."""
    kind, order, shortcut = options.kind, options.order, options.shortcut
    downsample, stride_at = options.downsample, options.stride_at
    out_channels = filters * EXPANSION[kind]
    post_act = order not in PREACT_ORDERS
    preact = ()
    if preactivation != "none":
        if order == "full_preact":
            preact = (("bn", "preact_bn"), ("relu", "preact_relu"))
        elif order == "relu_only_preact":
            preact = (("relu", "preact_relu"),)

    branch = []
    specs = conv_specs(kind, filters, strides, stride_at)
    for i, (k, c, s) in enumerate(specs, start=1):
        last = i == len(specs)
        if order == "full_preact" and i > 1:
            branch += [("bn", f"bn{i}"), ("relu", f"relu{i}")]
        if order == "relu_only_preact" and i > 1:
            branch.append(("relu", f"relu{i}"))
        branch.append(("conv", f"conv{i}", k, c, s))
        if order in ("original", "relu_before_addition", "relu_only_preact") or (
            order == "bn_after_addition" and not last
        ):
            branch.append(("bn", f"bn{i}"))
        if post_act and (not last or order == "relu_before_addition"):
            branch.append(("relu", f"relu{i}"))

    h = []
    changes_dims = strides != 1 or in_channels != out_channels
    if (changes_dims and downsample == "projection") or shortcut == "conv1x1":
        h.append(("conv", "shortcut_conv", 1, out_channels, strides))
        if post_act:  # [1]'s projection shortcut is conv + BN
            h.append(("bn", "shortcut_bn"))
    elif changes_dims:
        h.append(("zero_pad", "shortcut_zero_pad", out_channels, strides))
    if shortcut == "dropout":
        h.append(("dropout", "shortcut_dropout", options.dropout_rate))

    post = ()
    if order == "original":
        post = (("relu", "post_relu"),)
    elif order == "bn_after_addition":
        post = (("bn", "post_bn"), ("relu", "post_relu"))
    return UnitPlan(
        preactivation=preactivation,
        preact=preact,
        branch=tuple(branch),
        shortcut=tuple(h),
        gate=(out_channels, strides) if shortcut in GATED_SHORTCUTS else None,
        post=post,
        combination=Combination(shortcut, options.shortcut_scale, options.scale_residual),
        padding=options.padding,
    )


class UnitBackend(abc.ABC):
    """How one implementation computes a single op; :func:`run_unit` does the rest."""

    @abc.abstractmethod
    def op(self, op: tuple, x):
        """Apply one op of the plan (see the module docstring) to ``x``."""

    @abc.abstractmethod
    def gate(self, x):
        """``g(x)`` of the gating shortcuts."""

    def sequence(self, op_list, x):
        for op in op_list:
            x = self.op(op, x)
        return x

    def combine(self, plan: UnitPlan, shortcut, residual, gate):
        return plan.combination(shortcut, residual, gate)


def run_unit(plan: UnitPlan, x, backend: UnitBackend):
    """``f(h(x) (+) F(x))`` with the pre-activation where the plan puts it."""
    if plan.preactivation == "shared":
        x = backend.sequence(plan.preact, x)
        branch_in = x
    elif plan.preactivation == "branch":
        branch_in = backend.sequence(plan.preact, x)
    else:
        branch_in = x
    residual = backend.sequence(plan.branch, branch_in)
    shortcut = backend.sequence(plan.shortcut, x)
    gate = backend.gate(x) if plan.gate is not None else None
    y = backend.combine(plan, shortcut, residual, gate)
    return backend.sequence(plan.post, y)
