"""Stacked stages: the identical units of a stage run as one loop over stacked weights.

A ResNet-1001 has 333 residual units; built unit by unit, its training graph has thousands of
ops per unit and TensorFlow spends minutes tracing it and gigabytes keeping every intermediate.
All units of a stage after the first have the same shapes, so :class:`StackedStage` keeps their
weights stacked along a leading axis (``[units, ...]``) and runs them with one
``tf.while_loop`` whose body is a single unit: the graph is the same size whatever the depth.
With ``recompute=True`` each unit's internals are recomputed in the backward pass
(``tf.recompute_grad``), so only the unit inputs are kept: memory grows by one feature map per
unit instead of a dozen.

The unit's math is not written again here: the loop body executes ``ResidualUnit.plan`` (the
same op list the Keras-layer unit is built from) and ``keras_preact.units.combine``. BatchNorm
moving statistics are updated exactly once per call, after the loop, from the batch statistics
each unit reports, also under recompute (the recomputed forward pass does not update them).

Limits: every unit must keep its shape (stride 1, same channels), so a stage's first unit stays
a :class:`ResidualUnit`; the ``dropout`` shortcut is not supported (its random mask would differ
between the forward pass and the recomputation).
"""

from __future__ import annotations

import math

import keras
import numpy as np
import tensorflow as tf

from keras_preact import norm
from keras_preact.shortcuts import PACKAGE
from keras_preact.units import ResidualUnit, combine

BN_PARAMS = ("gamma", "beta", "moving_mean", "moving_variance")


@keras.saving.register_keras_serializable(package=PACKAGE)
class StackedStage(keras.layers.Layer):
    """``num_units`` identical, shape-preserving residual units run as one loop.

    Accepts the options of :class:`ResidualUnit` that apply to a shape-preserving unit
    (``filters, kind, order, shortcut, shortcut_scale, scale_residual, gate_bias_init,
    bn_momentum, bn_epsilon``) and ``recompute`` (recompute each unit in the backward pass).
    Holds the same parameters as ``num_units`` ResidualUnits; ``unit_weights`` and
    ``set_unit_weights`` convert from and to them.
    """

    def __init__(
        self,
        num_units: int,
        filters: int,
        kind: str = "basic",
        order: str = "full_preact",
        shortcut: str = "identity",
        shortcut_scale: float = 0.5,
        scale_residual: bool = False,
        gate_bias_init: float = -6.0,
        bn_momentum: float = norm.BN_MOMENTUM,
        bn_epsilon: float = norm.BN_EPSILON,
        recompute: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if int(num_units) < 1:
            raise ValueError(f"num_units must be >= 1, got {num_units!r}.")
        if shortcut == "dropout":
            raise ValueError(
                "StackedStage does not support the 'dropout' shortcut (its random mask would "
                "differ under recomputation); build that network with stacked_stages=False."
            )
        self.num_units = int(num_units)
        self.unit_options = dict(
            filters=int(filters),
            kind=kind,
            order=order,
            shortcut=shortcut,
            shortcut_scale=float(shortcut_scale),
            scale_residual=bool(scale_residual),
            gate_bias_init=float(gate_bias_init),
            bn_momentum=float(bn_momentum),
            bn_epsilon=float(bn_epsilon),
        )
        self._template()  # validates every option now, with ResidualUnit's own messages
        self.recompute = bool(recompute)

    def _template(self) -> ResidualUnit:
        # Built on demand and never stored: an attribute would be tracked as a sublayer.
        return ResidualUnit(**self.unit_options)

    # -- variables -------------------------------------------------------------------------
    def build(self, input_shape):
        channels = input_shape[-1]
        template = self._template()
        if channels != template.out_channels:
            raise ValueError(
                f"StackedStage units keep their shape: input has {channels} channels but the "
                f"units output {template.out_channels}."
            )
        self._plan = template.plan(channels)
        n = self.num_units
        # (op name, parameter name) -> variable, in ResidualUnit weight order.
        self._params = {}

        def add(key, shape, initializer, trainable=True):
            variable = self.add_weight(
                name=f"{key[0]}_{key[1]}",
                shape=(n, *shape),
                initializer=initializer,
                trainable=trainable,
                autocast=False,
            )
            self._params[key] = variable
            # tf.train.Checkpoint (the trainers' checkpoints) finds variables through
            # attributes, not through this tuple-keyed dict.
            setattr(self, f"{key[0]}_{key[1]}", variable)

        for part in ("preact", "branch", "shortcut", "post"):
            c = channels if part != "post" else template.out_channels
            for op in self._plan[part]:
                kind, name, *args = op
                if kind == "conv":
                    k, filters = args[0], args[1]
                    std = math.sqrt(2.0 / (k * k * filters))  # He (fan_out), per unit
                    add((name, "kernel"), (k, k, c, filters), keras.initializers.RandomNormal(0.0, std))
                    c = filters
                elif kind == "bn":
                    add((name, "gamma"), (c,), "ones")
                    add((name, "beta"), (c,), "zeros")
                    add((name, "moving_mean"), (c,), "zeros", trainable=False)
                    add((name, "moving_variance"), (c,), "ones", trainable=False)
        if self._plan["gate"] is not None:
            out = template.out_channels
            std = math.sqrt(2.0 / out)
            add(("gate", "kernel"), (1, 1, channels, out), keras.initializers.RandomNormal(0.0, std))
            add(("gate", "bias"), (out,), keras.initializers.Constant(template.gate_bias_init))

    def _bn_keys(self):
        return [
            name
            for part in ("preact", "branch", "shortcut", "post")
            for kind, name, *_ in self._plan[part]
            if kind == "bn"
        ]

    # -- forward ---------------------------------------------------------------------------
    def _unit_fn(self, training: bool):
        """One unit as a function of (x, per-unit parameter tensors) -> (y, *batch stats)."""
        keys = list(self._params)
        opts = self.unit_options
        eps = opts["bn_epsilon"]

        def run(ops, x, p, stats):
            for kind, name, *args in ops:
                if kind == "relu":
                    x = tf.nn.relu(x)
                elif kind == "conv":
                    x = tf.nn.conv2d(x, p[(name, "kernel")], 1, "SAME")
                elif training:
                    x, mean, var = norm.fused_batch_norm_train(
                        x, p[(name, "gamma")], p[(name, "beta")], eps
                    )
                    stats += [mean, var]
                else:
                    x, _, _ = tf.compat.v1.nn.fused_batch_norm(
                        x, p[(name, "gamma")], p[(name, "beta")],
                        mean=p[(name, "moving_mean")], variance=p[(name, "moving_variance")],
                        epsilon=eps, data_format="NHWC", is_training=False,
                    )
            return x

        def unit(x, *values):
            p = dict(zip(keys, values))
            stats = []
            residual = run(self._plan["branch"], run(self._plan["preact"], x, p, stats), p, stats)
            shortcut = run(self._plan["shortcut"], x, p, stats)
            gate = None
            if self._plan["gate"] is not None:
                gate = tf.sigmoid(
                    tf.nn.conv2d(x, p[("gate", "kernel")], 1, "SAME") + p[("gate", "bias")]
                )
            y = combine(opts["shortcut"], shortcut, residual, gate,
                        opts["shortcut_scale"], opts["scale_residual"])
            y = run(self._plan["post"], y, p, stats)
            return (y, *stats)

        return unit

    def call(self, inputs, training=None):
        training = bool(training) and self.trainable
        unit = self._unit_fn(training)
        if self.recompute and training:
            unit = tf.recompute_grad(unit)
        # Each unit reads its slice of the stacked weights from a TensorArray: the gradient of
        # a read lands in one slot of a gradient TensorArray, where slicing the stacked tensor
        # (v[i]) would add a full-size, mostly-zero gradient at every iteration.
        weights = [
            tf.TensorArray(v.dtype, size=self.num_units, element_shape=v.shape[1:]).unstack(
                tf.convert_to_tensor(v)
            )
            for v in self._params.values()
        ]
        bn_keys = self._bn_keys()
        num_stats = 2 * len(bn_keys) if training else 0

        def body(i, x, *arrays):
            out = unit(x, *[w.read(i) for w in weights])
            y, stats = out[0], out[1:]
            arrays = [a.write(i, s) for a, s in zip(arrays, stats)]
            return (i + 1, y, *arrays)

        arrays = [tf.TensorArray(tf.float32, size=self.num_units) for _ in range(num_stats)]
        _, y, *arrays = tf.while_loop(
            lambda i, *_: i < self.num_units,
            body,
            (tf.constant(0), inputs, *arrays),
            # Shapes are fixed by the loop; parallel_iterations=1 keeps memory to one unit.
            parallel_iterations=1,
        )
        if training:
            m = self.unit_options["bn_momentum"]
            for j, name in enumerate(bn_keys):
                mean = tf.stop_gradient(arrays[2 * j].stack())
                var = tf.stop_gradient(arrays[2 * j + 1].stack())
                moving_mean = self._params[(name, "moving_mean")]
                moving_var = self._params[(name, "moving_variance")]
                moving_mean.assign(moving_mean * m + mean * (1.0 - m))
                moving_var.assign(moving_var * m + var * (1.0 - m))
        return y

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    # -- conversion from/to ResidualUnits --------------------------------------------------
    def unit_weights(self, i: int) -> list:
        """Unit ``i``'s parameters as numpy arrays, in ``ResidualUnit.get_weights`` order."""
        return [np.asarray(v)[i] for v in self._params.values()]

    def set_unit_weights(self, i: int, weights) -> None:
        """Set unit ``i`` from arrays in ``ResidualUnit.get_weights`` order."""
        if len(weights) != len(self._params):
            raise ValueError(f"Expected {len(self._params)} arrays, got {len(weights)}.")
        for v, w in zip(self._params.values(), weights):
            full = np.asarray(v)
            full[i] = w
            v.assign(full)

    def get_config(self):
        return {
            **super().get_config(),
            "num_units": self.num_units,
            **self.unit_options,
            "recompute": self.recompute,
        }


def canonical_unit_weights(model: keras.Model) -> list:
    """Every layer's weights as a list, with each stacked stage expanded into its units.

    Two builds of one network, with and without stacked stages, give the same list; see
    :func:`transfer_weights`.
    """
    out = []
    for layer in model.layers:
        if isinstance(layer, StackedStage):
            out += [layer.unit_weights(i) for i in range(layer.num_units)]
        elif layer.weights:
            out.append(layer.get_weights())
    return out


def transfer_weights(source: keras.Model, target: keras.Model) -> None:
    """Copy all weights between two builds of the same network (stacked or unit by unit)."""
    weights = canonical_unit_weights(source)
    it = iter(weights)
    try:
        for layer in target.layers:
            if isinstance(layer, StackedStage):
                for i in range(layer.num_units):
                    layer.set_unit_weights(i, next(it))
            elif layer.weights:
                layer.set_weights(next(it))
    except (StopIteration, ValueError) as err:
        raise ValueError(
            f"Models {source.name!r} and {target.name!r} are not builds of the same network: "
            f"{err or 'the source has fewer layers'}."
        ) from None
    if next(it, None) is not None:
        raise ValueError(f"Model {source.name!r} has more layers than {target.name!r}.")


def unstack(model: keras.Model) -> keras.Model:
    """The same network with every StackedStage expanded into ResidualUnits (weights copied).

    Tools that read units one by one (BN folding for export, propagation diagnostics) call
    this; a model without stacked stages is returned as is.
    """
    if not any(isinstance(layer, StackedStage) for layer in model.layers):
        return model
    inputs = keras.Input(batch_shape=model.inputs[0].shape, name=model.inputs[0].name)
    x = inputs
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if isinstance(layer, StackedStage):
            # Stage layers are named "stage<s>_units<a>to<b>" by build_resnet.
            stage, _, span = layer.name.partition("_units")
            first = int(span.split("to")[0]) if span else 2
            for i in range(layer.num_units):
                x = ResidualUnit(**layer.unit_options, name=f"{stage}_unit{first + i}")(x)
        else:
            x = layer.__class__.from_config(layer.get_config())(x)
    flat = keras.Model(inputs, x, name=model.name)
    transfer_weights(model, flat)
    return flat
