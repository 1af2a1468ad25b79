"""The residual unit of *Identity Mappings in Deep Residual Networks*, every variant in one layer.

``y = h(x) + F(x)``, ``x_next = f(y)`` (paper Eqn 1-2). One class, :class:`ResidualUnit`, covers
all the units the paper builds or ablates, as three independent options:

``kind`` -- the weight layers of the residual function F:
    ``"basic"``       two 3x3 convs (c, c);
    ``"bottleneck"``  1x1 (c), 3x3 (c), 1x1 (4c);
    ``"single"``      one 3x3 conv (the "1-layer" unit of ResNet-110(1layer)).

``order`` -- where BN and ReLU sit (paper Fig. 4, SPEC section 2):
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

When a unit changes the number of channels or the resolution, ``x`` on the shortcut first goes
through the dimension-matching mapping chosen by ``downsample``: ``"projection"`` (1x1 conv,
strided; followed by BN in the post-activation orders as in [1]) or ``"zero_pad"`` (the
parameter-free subsample + zero channels of the CIFAR nets of [1]). The shortcut variant then
applies on top (for example a constant-scaling unit scales the projected shortcut).

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
from keras_preact.shortcuts import PACKAGE, ShortcutGate, ZeroPadShortcut, strided_shape

KINDS = ("basic", "bottleneck", "single")
ORDERS = (
    "original",
    "bn_after_addition",
    "relu_before_addition",
    "relu_only_preact",
    "full_preact",
)
PREACT_ORDERS = ("relu_only_preact", "full_preact")
SHORTCUTS = (
    "identity",
    "constant_scaling",
    "exclusive_gating",
    "shortcut_only_gating",
    "conv1x1",
    "dropout",
)
DOWNSAMPLES = ("projection", "zero_pad")
STRIDE_AT = ("first", "3x3")
PREACTIVATIONS = ("branch", "shared", "none")

EXPANSION = {"basic": 1, "bottleneck": 4, "single": 1}


def check_choice(name: str, value, choices) -> None:
    """Raise a ValueError naming the valid choices when ``value`` is not one of them."""
    if value not in choices:
        raise ValueError(
            f"Unknown {name} {value!r}. Valid choices: {', '.join(map(repr, choices))}."
        )


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


def combine(shortcut_kind, shortcut, residual, gate, shortcut_scale, scale_residual):
    """y = h(x) (+) F(x) for each shortcut variant (the one place this formula lives)."""
    if shortcut_kind == "constant_scaling":
        lam = shortcut_scale
        return lam * shortcut + ((1.0 - lam) * residual if scale_residual else residual)
    if shortcut_kind == "exclusive_gating":
        return (1.0 - gate) * shortcut + gate * residual
    if shortcut_kind == "shortcut_only_gating":
        return (1.0 - gate) * shortcut + residual
    return ops.add(shortcut, residual)


def _apply(layers, x):
    for layer in layers:
        x = layer(x)
    return x


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
      fused_bn: compute BatchNorm with TensorFlow's fused kernel (same results, faster; see
        ``keras_preact.norm.FusedBatchNormalization``). ``False`` uses Keras' own layer.
    """

    def __init__(
        self,
        filters: int,
        kind: str = "basic",
        order: str = "full_preact",
        shortcut: str = "identity",
        strides: int = 1,
        downsample: str = "projection",
        stride_at: str = "first",
        preactivation: str = "branch",
        shortcut_scale: float = 0.5,
        scale_residual: bool = False,
        gate_bias_init: float = -6.0,
        dropout_rate: float = 0.5,
        bn_momentum: float = norm.BN_MOMENTUM,
        bn_epsilon: float = norm.BN_EPSILON,
        fused_bn: bool = True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_choice("unit kind", kind, KINDS)
        check_choice("order", order, ORDERS)
        check_choice("shortcut", shortcut, SHORTCUTS)
        check_choice("downsample", downsample, DOWNSAMPLES)
        check_choice("stride_at", stride_at, STRIDE_AT)
        check_choice("preactivation", preactivation, PREACTIVATIONS)
        if int(filters) < 1:
            raise ValueError(f"filters must be a positive integer, got {filters!r}.")
        if int(strides) not in (1, 2):
            raise ValueError(f"strides must be 1 or 2, got {strides!r}.")
        if not 0.0 <= float(dropout_rate) < 1.0:
            raise ValueError(f"dropout_rate must be in [0, 1), got {dropout_rate!r}.")
        self.filters = int(filters)
        self.kind = kind
        self.order = order
        self.shortcut = shortcut
        self.strides = int(strides)
        self.downsample = downsample
        self.stride_at = stride_at
        self.preactivation = preactivation
        self.shortcut_scale = float(shortcut_scale)
        self.scale_residual = bool(scale_residual)
        self.gate_bias_init = float(gate_bias_init)
        self.dropout_rate = float(dropout_rate)
        self.bn_momentum = float(bn_momentum)
        self.bn_epsilon = float(bn_epsilon)
        self.fused_bn = bool(fused_bn)
        self.out_channels = self.filters * EXPANSION[kind]

    # -- structure -------------------------------------------------------------------------
    def _conv_specs(self):
        """(kernel, filters, strides) of each weight layer of F, in order."""
        c, s = self.filters, self.strides
        if self.kind == "basic":
            specs = [[3, c, 1], [3, c, 1]]
        elif self.kind == "bottleneck":
            specs = [[1, c, 1], [3, c, 1], [1, 4 * c, 1]]
        else:
            specs = [[3, c, 1]]
        at = 0 if self.stride_at == "first" else [k for k, _, _ in specs].index(3)
        specs[at][2] = s
        return specs

    def plan(self, in_channels: int) -> dict:
        """The unit as data: which ops run where, in order.

        Each op is a tuple ``(op, name, *args)`` with op one of ``"bn"``, ``"relu"``,
        ``("conv", name, kernel, filters, strides)``, ``("zero_pad", name, filters, strides)``,
        ``("dropout", name, rate)``. Keys: ``"preact"`` (placed by ``preactivation``),
        ``"branch"`` (F), ``"shortcut"`` (h), ``"gate"`` (``(filters, strides)`` or None) and
        ``"post"`` (f). ``build`` turns it into Keras layers; ``keras_preact.stacked`` runs the
        same plan over stacked weights, so both implementations share one definition.
        """
        order = self.order
        post_act = order not in PREACT_ORDERS
        preact = []
        if self.preactivation == "none":
            pass  # the caller applied it (network's first unit: the stem's BN-ReLU)
        elif order == "full_preact":
            preact = [("bn", "preact_bn"), ("relu", "preact_relu")]
        elif order == "relu_only_preact":
            preact = [("relu", "preact_relu")]

        branch = []
        specs = self._conv_specs()
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

        shortcut = []
        changes_dims = self.strides != 1 or in_channels != self.out_channels
        if (changes_dims and self.downsample == "projection") or self.shortcut == "conv1x1":
            shortcut.append(("conv", "shortcut_conv", 1, self.out_channels, self.strides))
            if post_act:  # [1]'s projection shortcut is conv + BN
                shortcut.append(("bn", "shortcut_bn"))
        elif changes_dims:
            shortcut.append(("zero_pad", "shortcut_zero_pad", self.out_channels, self.strides))
        if self.shortcut == "dropout":
            shortcut.append(("dropout", "shortcut_dropout", self.dropout_rate))

        gate = None
        if self.shortcut in ("exclusive_gating", "shortcut_only_gating"):
            gate = (self.out_channels, self.strides)

        post = []
        if order == "original":
            post = [("relu", "post_relu")]
        elif order == "bn_after_addition":
            post = [("bn", "post_bn"), ("relu", "post_relu")]
        return dict(preact=preact, branch=branch, shortcut=shortcut, gate=gate, post=post)

    def _make_layer(self, op):
        kind, name, *args = op
        if kind == "bn":
            return norm.batch_norm(self.bn_momentum, self.bn_epsilon, name, fused=self.fused_bn)
        if kind == "relu":
            return keras.layers.ReLU(name=name)
        if kind == "conv":
            return norm.conv(args[1], args[0], args[2], name=name)
        if kind == "zero_pad":
            return ZeroPadShortcut(args[0], args[1], name=name)
        return keras.layers.Dropout(args[0], name=name)

    def build(self, input_shape):
        in_channels = input_shape[-1]
        if in_channels is None:
            raise ValueError("ResidualUnit needs a known number of input channels.")
        plan = self.plan(in_channels)
        self.preact_layers = [self._make_layer(op) for op in plan["preact"]]
        self.branch_layers = [self._make_layer(op) for op in plan["branch"]]
        self.shortcut_layers = [self._make_layer(op) for op in plan["shortcut"]]
        self.post_layers = [self._make_layer(op) for op in plan["post"]]
        self.gate = None
        if plan["gate"] is not None:
            self.gate = ShortcutGate(*plan["gate"], self.gate_bias_init, name="gate")

        # tf.train.Checkpoint follows attributes, not Keras' tracked lists: without these
        # attributes a checkpoint misses the sublayers' variables (BN moving statistics
        # included). The .keras format is unaffected (same weight paths).
        for layer in (*self.preact_layers, *self.branch_layers, *self.shortcut_layers, *self.post_layers):
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
        """``f(h(x) (+) F(x))``.

        ``residual_gradient=False`` is for measurement only (``keras_preact.diagnostics``): the
        output keeps its value, but the gradient flows through the shortcut path alone. The
        outputs of F and of the gate are wrapped in ``stop_gradient``, so that d(out)/dx is
        the shortcut term of the paper's Eqn 5 / Eqn 8 (``prod lambda_i``: 1 for identity,
        lambda for constant scaling, ``1 - g(x)`` for gating, the 1x1 conv for conv1x1), taken
        at the unit's real operating point. The gate is held constant too because its
        dependence on x is a path through a weight layer (W_g), one of the "other terms" of
        Eqn 8, not the shortcut. Everything else (h, a shared pre-activation, f) stays live.
        """
        x = inputs
        if self.preactivation == "shared":
            x = _apply(self.preact_layers, x)
            branch_in = x
        elif self.preactivation == "branch":
            branch_in = _apply(self.preact_layers, x)
        else:
            branch_in = x
        residual = _apply(self.branch_layers, branch_in)
        shortcut = _apply(self.shortcut_layers, x)

        gate = self.gate(x) if self.gate is not None else None
        if not residual_gradient:
            residual = ops.stop_gradient(residual)
            gate = None if gate is None else ops.stop_gradient(gate)
        y = combine(self.shortcut, shortcut, residual, gate,
                    self.shortcut_scale, self.scale_residual)
        return _apply(self.post_layers, y)

    def compute_output_shape(self, input_shape):
        return strided_shape(input_shape, self.strides, self.out_channels)

    # -- introspection ---------------------------------------------------------------------
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
            "filters": self.filters,
            "kind": self.kind,
            "order": self.order,
            "shortcut": self.shortcut,
            "strides": self.strides,
            "downsample": self.downsample,
            "stride_at": self.stride_at,
            "preactivation": self.preactivation,
            "shortcut_scale": self.shortcut_scale,
            "scale_residual": self.scale_residual,
            "gate_bias_init": self.gate_bias_init,
            "dropout_rate": self.dropout_rate,
            "bn_momentum": self.bn_momentum,
            "bn_epsilon": self.bn_epsilon,
            "fused_bn": self.fused_bn,
        }
