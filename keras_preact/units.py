"""The residual unit of *Identity Mappings in Deep Residual Networks*, every variant in one layer.

``y = h(x) + F(x)``, ``x_next = f(y)`` (paper Eqn 1-2). One class, :class:`ResidualUnit`, covers
all the units the paper builds or ablates, as three independent options:

``kind`` -- the weight layers of the residual function F:
    ``"basic"``       two 3x3 convs (c, c);
    ``"bottleneck"``  1x1 (c), 3x3 (c), 1x1 (4c);
    ``"single"``      one 3x3 conv (the "1-layer" unit of ResNet-110(1layer)).

``order`` -- where BN and ReLU sit (paper Fig. 4, Table 2):
    ``"original"``             F = W-BN-ReLU-...-W-BN,       f = ReLU after the addition
    ``"bn_after_addition"``    F = W-BN-ReLU-...-W,          f = BN, ReLU after the addition
    ``"relu_before_addition"`` F = W-BN-ReLU-...-W-BN-ReLU,  f = identity
    ``"relu_only_preact"``     F = ReLU-W-BN-...-ReLU-W-BN,  f = identity
    ``"full_preact"``          F = BN-ReLU-W-...-BN-ReLU-W,  f = identity   (the proposed unit)

``shortcut`` -- the mapping h and how it is combined with F (paper Fig. 2, Table 1):
    ``"identity"``             y = x + F
    ``"constant_scaling"``     y = lam*x + F, or lam*x + (1-lam)*F with ``scale_residual=True``
    ``"exclusive_gating"``     y = (1-g(x))*x + g(x)*F,  g = sigmoid(1x1 conv + b_g)
    ``"shortcut_only_gating"`` y = (1-g(x))*x + F
    ``"conv1x1"``              y = conv1x1(x) + F
    ``"dropout"``              y = dropout(x, rate) + F

The unit is built from ``keras_preact.plan.unit_plan`` and executed by
``keras_preact.plan.run_unit``, the same plan and interpreter the stacked stages and the
BN-folding exporter use; this layer only supplies one Keras sublayer per op.

When a unit changes the number of channels or the resolution, ``x`` on the shortcut first goes
through the dimension-matching mapping chosen by ``downsample``: ``"projection"`` (1x1 conv,
strided; followed by BN in the post-activation orders as in [1]) or ``"zero_pad"`` (the
parameter-free subsample + zero channels of the CIFAR nets of [1]). The shortcut variant then
applies on top (for example a constant-scaling unit scales the projected shortcut).

``data_format`` is the layout of the unit's input and output, ``"channels_last"`` (NHWC) or
``"channels_first"`` (NCHW): a parameter of every sublayer (the convs' layout, BN's axis, the
zero-pad shortcut's axes), not another unit. The weights are the same in both.

``preactivation`` (pre-activation orders only) says where the unit's leading BN-ReLU (or ReLU)
is applied:
    ``"branch"``  on the residual branch only; the shortcut carries the raw ``x`` (Eqn 4 holds);
    ``"shared"``  before the split, so the shortcut sees the activated input (the paper's
                  appendix: dimension-changing units with projection shortcuts);
    ``"none"``    not at all: the caller already applied it (the network's first unit, whose
                  activation comes right after the stem conv).
"""

from __future__ import annotations

import keras
from keras import ops

from keras_preact import norm
from keras_preact.common import (
    DOWNSAMPLES,
    EXPANSION,
    KINDS,
    LEGACY_DATA_FORMAT,
    ORDERS,
    PACKAGE,
    PREACT_ORDERS,
    PREACTIVATIONS,
    SHORTCUTS,
    STRIDE_AT,
    channel_axis,
    check_choice,
    strided_shape,
)
from keras_preact.padding import LEGACY_PADDING
from keras_preact.plan import UNIT_DEFAULTS, UnitBackend, UnitOptions, UnitPlan, run_unit, unit_plan
from keras_preact.shortcuts import ShortcutGate, ZeroPadShortcut

__all__ = [
    "DOWNSAMPLES", "KINDS", "ORDERS", "PREACT_ORDERS", "PREACTIVATIONS", "SHORTCUTS", "STRIDE_AT",
    "ResidualUnit",
]

# What places a unit in the network, and the layout of its tensors; everything else it takes is
# a ``plan.UnitOptions`` field.
PLACEMENT = ("filters", "strides", "preactivation", "data_format")


def _short_name(layer) -> str:
    """The paper's name for a layer: W<k>x<k>, BN, ReLU, ... (used by ``layer_sequence``)."""
    if isinstance(layer, keras.layers.Conv2D):
        k = layer.kernel_size[0]
        return f"W{k}x{k}"
    if isinstance(layer, keras.layers.BatchNormalization):
        return "BN"
    if isinstance(layer, keras.layers.ReLU):
        return "ReLU"
    if isinstance(layer, keras.layers.Dropout):
        return "Dropout"
    if isinstance(layer, ZeroPadShortcut):
        return "ZeroPad"
    return type(layer).__name__


class _SublayerBackend(UnitBackend):
    """Runs a plan with the unit's own Keras sublayers (one per op)."""

    def __init__(self, unit: "ResidualUnit", residual_gradient: bool):
        self.unit = unit
        self.residual_gradient = residual_gradient

    def op(self, op, x):
        return getattr(self.unit, op[1])(x)

    def gate(self, x):
        return self.unit.gate(x)

    def combine(self, plan, shortcut, residual, gate):
        if not self.residual_gradient:
            residual = ops.stop_gradient(residual)
            gate = None if gate is None else ops.stop_gradient(gate)
        return plan.combination(shortcut, residual, gate)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResidualUnit(keras.layers.Layer):
    """One residual unit; see the module docstring for the meaning of each option.

    Args:
      filters: width ``c`` of the unit's 3x3 conv. The unit outputs ``c`` channels (basic,
        single) or ``4c`` (bottleneck).
      kind, order, shortcut, downsample, stride_at, preactivation: see the module docstring.
      strides: spatial stride of the unit (1, or 2 at the start of a stage).
      stride_at: which conv carries the stride: ``"first"`` (the paper's CIFAR code puts it on
        the first 1x1 of a bottleneck) or ``"3x3"`` (fb.resnet.torch, for ImageNet). The same
        for basic and single units, whose first conv is the 3x3.
      shortcut_scale: lambda of ``constant_scaling``.
      scale_residual: with ``constant_scaling``, also scale F by ``1 - lambda``.
      gate_bias_init: initial gate bias b_g of the gating shortcuts.
      dropout_rate: rate of the ``dropout`` shortcut.
      bn_momentum, bn_epsilon: BatchNorm settings (paper code: 0.9 / 1e-5 in Keras terms).
      fused_bn: compute BatchNorm with the backend's fused kernel (same results, faster; see
        ``keras_preact.norm.FusedBatchNormalization``). ``False`` uses Keras' own layer.
      padding: of the strided 3x3 conv: ``"symmetric"`` (the default, as ``ResNet``'s) pads as
        Torch (the paper's code) does, ``"same"`` as TensorFlow does (see
        ``keras_preact.padding``). A unit saved before this option existed was built with
        ``"same"`` and loads with it (``from_config``).
      data_format: ``"channels_last"`` (NHWC) or ``"channels_first"`` (NCHW); None (the
        default) is ``keras.config.image_data_format()`` when the unit is made, and the unit
        saves the resolved value. A unit saved before this option existed loads NHWC.

    Every option but ``filters``, ``strides``, ``preactivation`` (the unit's place in the
    network) and ``data_format`` is a field of ``keras_preact.plan.UnitOptions`` and takes its
    default from there (``UNIT_DEFAULTS``); ``unit.options`` is that value.
    """

    def __init__(
        self,
        filters: int,
        kind: str = UNIT_DEFAULTS.kind,
        order: str = UNIT_DEFAULTS.order,
        shortcut: str = UNIT_DEFAULTS.shortcut,
        strides: int = 1,
        downsample: str = UNIT_DEFAULTS.downsample,
        stride_at: str = UNIT_DEFAULTS.stride_at,
        preactivation: str = "branch",
        shortcut_scale: float = UNIT_DEFAULTS.shortcut_scale,
        scale_residual: bool = UNIT_DEFAULTS.scale_residual,
        gate_bias_init: float = UNIT_DEFAULTS.gate_bias_init,
        dropout_rate: float = UNIT_DEFAULTS.dropout_rate,
        bn_momentum: float = UNIT_DEFAULTS.bn_momentum,
        bn_epsilon: float = UNIT_DEFAULTS.bn_epsilon,
        fused_bn: bool = UNIT_DEFAULTS.fused_bn,
        padding: str = UNIT_DEFAULTS.padding,
        data_format: str | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        # Checks every option (choices, ranges) and normalises the numbers.
        options = UnitOptions(
            kind=kind, order=order, shortcut=shortcut, downsample=downsample,
            stride_at=stride_at, shortcut_scale=shortcut_scale, scale_residual=scale_residual,
            gate_bias_init=gate_bias_init, dropout_rate=dropout_rate, bn_momentum=bn_momentum,
            bn_epsilon=bn_epsilon, fused_bn=fused_bn, padding=padding,
        )
        check_choice("preactivation", preactivation, PREACTIVATIONS)
        if int(filters) < 1:
            raise ValueError(f"filters must be a positive integer, got {filters!r}.")
        if int(strides) not in (1, 2):
            raise ValueError(f"strides must be 1 or 2, got {strides!r}.")
        self.options = options
        self.filters = int(filters)
        self.strides = int(strides)
        self.preactivation = preactivation
        self.data_format = norm.runnable_data_format(data_format)
        # Each option is also an attribute (unit.order, unit.padding, ...).
        for name, value in options.to_dict().items():
            setattr(self, name, value)
        self.out_channels = self.filters * EXPANSION[kind]

    # -- structure -------------------------------------------------------------------------
    def plan(self, in_channels: int) -> UnitPlan:
        """The unit as data (``keras_preact.plan.UnitPlan``) for ``in_channels`` input channels."""
        return unit_plan(self.options, in_channels=in_channels, filters=self.filters,
                         strides=self.strides, preactivation=self.preactivation)

    def _make_layer(self, op):
        kind, name, *args = op
        layout = self.data_format
        if kind == "bn":
            return norm.batch_norm(self.bn_momentum, self.bn_epsilon, name, fused=self.fused_bn,
                                   data_format=layout)
        if kind == "relu":
            return keras.layers.ReLU(name=name)
        if kind == "conv":
            return norm.conv(args[1], args[0], args[2], name=name, padding=self.padding,
                             data_format=layout)
        if kind == "zero_pad":
            return ZeroPadShortcut(args[0], args[1], data_format=layout, name=name)
        return keras.layers.Dropout(args[0], name=name)

    def build(self, input_shape):
        in_channels = input_shape[channel_axis(self.data_format)]
        if in_channels is None:
            raise ValueError("ResidualUnit needs a known number of input channels.")
        self._plan = plan = self.plan(in_channels)
        self.preact_layers = [self._make_layer(op) for op in plan.preact]
        self.branch_layers = [self._make_layer(op) for op in plan.branch]
        self.shortcut_layers = [self._make_layer(op) for op in plan.shortcut]
        self.post_layers = [self._make_layer(op) for op in plan.post]
        self.gate = None
        if plan.gate is not None:
            self.gate = ShortcutGate(*plan.gate, self.gate_bias_init, data_format=self.data_format,
                                     name="gate")

        # tf.train.Checkpoint follows attributes, not Keras' tracked lists: without these
        # attributes a checkpoint misses the sublayers' variables (BN moving statistics
        # included). The .keras format is unaffected (same weight paths). The interpreter's
        # backend finds each op's layer by the same attribute.
        for layer in self.op_layers():
            setattr(self, layer.name, layer)

        # Build every sublayer now so that weights exist before a saved model is loaded.
        shape = tuple(input_shape)
        for layer in self.preact_layers:
            layer.build(shape)
        for layer in self.branch_layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        out_shape = shape
        shape = tuple(input_shape)
        for layer in self.shortcut_layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        if self.gate is not None:
            self.gate.build(tuple(input_shape))
        for layer in self.post_layers:
            layer.build(out_shape)

    # -- forward ---------------------------------------------------------------------------
    def call(self, inputs, training=None, residual_gradient=True):
        """``f(h(x) (+) F(x))``, by ``keras_preact.plan.run_unit``.

        ``residual_gradient=False`` is for measurement only (``keras_preact.diagnostics``): the
        output keeps its value, but the gradient flows through the shortcut path alone. The
        outputs of F and of the gate are wrapped in ``stop_gradient``, so that d(out)/dx is
        the shortcut term of the paper's Eqn 5 / Eqn 8 (``prod lambda_i``: 1 for identity,
        lambda for constant scaling, ``1 - g(x)`` for gating, the 1x1 conv for conv1x1), taken
        at the unit's real operating point. The gate is held constant too because its
        dependence on x is a path through a weight layer (W_g), one of the "other terms" of
        Eqn 8, not the shortcut. Everything else (h, a shared pre-activation, f) stays live.
        """
        return run_unit(self._plan, inputs, _SublayerBackend(self, residual_gradient))

    def compute_output_shape(self, input_shape):
        return strided_shape(input_shape, self.strides, self.out_channels, self.data_format)

    # -- introspection ---------------------------------------------------------------------
    def op_layers(self) -> list:
        """The sublayers that run the plan's ops (the gate not included), in plan order."""
        if not hasattr(self, "preact_layers"):
            raise ValueError("op_layers() needs a built unit; call it on an input first.")
        return [*self.preact_layers, *self.branch_layers, *self.shortcut_layers, *self.post_layers]

    def layer_sequence(self) -> dict:
        """The unit's layers by the paper's names, read from the built sublayers.

        Returns a dict with ``"shared"`` (applied before the split), ``"residual"`` (F, in
        order), ``"shortcut"`` (h) and ``"after_addition"`` (f).
        """
        if not self.built:
            raise ValueError("layer_sequence() needs a built unit; call it on an input first.")
        names = lambda layers: [_short_name(layer) for layer in layers]  # noqa: E731
        shared = self.preact_layers if self.preactivation == "shared" else []
        branch_pre = self.preact_layers if self.preactivation == "branch" else []
        shortcut = names(self.shortcut_layers)
        if self.gate is not None:
            shortcut.append("Gate")
        return {
            "shared": names(shared),
            "residual": names(branch_pre) + names(self.branch_layers),
            "shortcut": shortcut,
            "after_addition": names(self.post_layers),
        }

    def get_config(self):
        return {
            **super().get_config(),
            **{name: getattr(self, name) for name in PLACEMENT},
            **self.options.to_dict(),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # A unit saved before the padding option existed was built with TensorFlow's padding,
        # and one saved before the data_format option existed, NHWC.
        config.setdefault("padding", LEGACY_PADDING)
        config.setdefault("data_format", LEGACY_DATA_FORMAT)
        return super().from_config(config)
