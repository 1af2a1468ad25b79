"""Stacked stages: the identical units of a stage run as one loop over stacked weights.

A ResNet-1001 has 333 residual units; built unit by unit, its training graph has thousands of
ops per unit and a graph compiler (TensorFlow's tracing, XLA under JAX) spends minutes on it and
gigabytes keeping every intermediate. All units of a stage after the first have the same
shapes, so :class:`StackedStage` keeps their weights stacked along a leading axis
(``[units, ...]``) and runs them as one loop whose body is a single unit: the graph is the same
size whatever the depth. With ``recompute=True`` each unit's internals are recomputed in the
backward pass (``keras.remat``), so only the unit inputs are kept: memory grows by one feature
map per unit instead of a dozen.

The loop is the backend's own (the one switch of this module, :meth:`StackedStage._loop`):

* TensorFlow: a ``tf.while_loop`` reading each unit's slice of the weights from a
  ``TensorArray`` (the fast path: its gradient writes one slot per unit);
* JAX: ``keras.ops.scan`` over the stacked weights (``jax.lax.scan``, compiled once);
* other backends (PyTorch, eager): a Python loop over ``keras.ops.unstack`` of the weights.

The unit's math is not written again here: the loop body runs ``ResidualUnit.plan`` (the same
plan the Keras-layer unit is built from) with ``keras_preact.plan.run_unit``, BatchNorm with
``keras_preact.norm.batch_norm_forward`` and initialisation with ``norm.HeNormalFanOut``;
this module only supplies how one op reads its slice of the stacked weights, in ``keras.ops``.
BatchNorm moving statistics are updated exactly once per call, after the loop, from the batch
statistics each unit reports, also under recompute (the recomputed forward pass does not
update them).

Mixed precision: the stacked weights and the BN statistics stay float32 (the statistics are
float32 whatever the activations are); each conv reads its kernel cast to the activations'
dtype, as a Keras layer under a ``mixed_*`` policy does, and BatchNorm takes the
half-precision activations with float32 parameters (``norm.batch_norm_forward``).

Layout: ``data_format`` (NHWC or NCHW, as ``ResidualUnit``'s) is passed to each conv and BN of
the loop body; the stacked kernels are HWIO in both, so the weights do not depend on it.

Limits: every unit must keep its shape (stride 1, same channels), so a stage's first unit stays
a :class:`ResidualUnit`; the ``dropout`` shortcut is not supported (its random mask would differ
between the forward pass and the recomputation).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from keras_preact import norm
from keras_preact.common import LEGACY_DATA_FORMAT, PACKAGE, channel_axis
from keras_preact.convolution import convolution
from keras_preact.plan import UNIT_DEFAULTS, UnitBackend, UnitOptions, run_unit
from keras_preact.units import ResidualUnit

# The UnitOptions that do not change a stacked unit, which keeps its shape and has no dropout:
# dimension matching and stride placement (no unit changes dimensions), the padding of
# strided convs (none is strided), the dropout rate (the dropout shortcut is refused) and the
# fused BN kernel (the loop computes BN with norm.batch_norm_forward, which picks its kernel).
NOT_STACKED = ("downsample", "stride_at", "padding", "dropout_rate", "fused_bn")
# The UnitOptions a StackedStage takes (and writes in its config), besides its width.
STACKED_OPTIONS = tuple(name for name in UnitOptions.names() if name not in NOT_STACKED)


def stacked_options(options: UnitOptions) -> dict:
    """The ``STACKED_OPTIONS`` of ``options``, as ``StackedStage`` keyword arguments."""
    return {name: getattr(options, name) for name in STACKED_OPTIONS}


class _StackedBackend(UnitBackend):
    """Runs a plan on one unit's parameter tensors; collects the BN batch statistics."""

    def __init__(self, params: dict, epsilon: float, training: bool, data_format: str):
        self.p = params
        self.epsilon = epsilon
        self.training = training
        self.data_format = data_format
        self.stats = []

    def _conv(self, x, kernel):
        # float32 weights, cast to the activations' dtype (mixed precision)
        return convolution(x, ops.cast(kernel, x.dtype), strides=1, padding="same",
                           data_format=self.data_format)

    def op(self, op, x):
        kind, name, *_ = op
        p = self.p
        if kind == "relu":
            return ops.relu(x)
        if kind == "conv":
            return self._conv(x, p[(name, "kernel")])
        y, mean, variance = norm.batch_norm_forward(
            x, p[(name, "gamma")], p[(name, "beta")], p[(name, "moving_mean")],
            p[(name, "moving_variance")], self.epsilon, self.training, self.data_format,
        )
        if self.training:
            self.stats += [mean, variance]
        return y

    def gate(self, x):
        bias = ops.cast(self.p[("gate", "bias")], x.dtype)
        if self.data_format == "channels_first":
            bias = ops.reshape(bias, (-1, 1, 1))  # along the channel axis, not the width
        return ops.sigmoid(self._conv(x, self.p[("gate", "kernel")]) + bias)


@keras.saving.register_keras_serializable(package=PACKAGE)
class StackedStage(keras.layers.Layer):
    """``num_units`` identical, shape-preserving residual units run as one loop.

    Accepts the options of :class:`ResidualUnit` that apply to a shape-preserving unit
    (``STACKED_OPTIONS``, defaults from ``keras_preact.plan.UNIT_DEFAULTS``), its
    ``data_format`` (None: ``keras.config.image_data_format()``, resolved once) and
    ``recompute`` (recompute each unit in the backward pass). Holds the same parameters as
    ``num_units`` ResidualUnits; ``unit_weights`` and ``set_unit_weights`` convert from and to
    them.
    """

    def __init__(
        self,
        num_units: int,
        filters: int,
        kind: str = UNIT_DEFAULTS.kind,
        order: str = UNIT_DEFAULTS.order,
        shortcut: str = UNIT_DEFAULTS.shortcut,
        shortcut_scale: float = UNIT_DEFAULTS.shortcut_scale,
        scale_residual: bool = UNIT_DEFAULTS.scale_residual,
        gate_bias_init: float = UNIT_DEFAULTS.gate_bias_init,
        bn_momentum: float = UNIT_DEFAULTS.bn_momentum,
        bn_epsilon: float = UNIT_DEFAULTS.bn_epsilon,
        recompute: bool = False,
        data_format: str | None = None,
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
        self.options = UnitOptions(  # checks and normalises them
            kind=kind, order=order, shortcut=shortcut, shortcut_scale=shortcut_scale,
            scale_residual=scale_residual, gate_bias_init=gate_bias_init,
            bn_momentum=bn_momentum, bn_epsilon=bn_epsilon,
        )
        # The units are ResidualUnits: that class checks the width and the data format.
        template = ResidualUnit(filters, data_format=data_format, **self.options.to_dict())
        self.filters = template.filters
        self.data_format = template.data_format
        self.recompute = bool(recompute)

    def _template(self) -> ResidualUnit:
        # Built on demand and never stored: an attribute would be tracked as a sublayer.
        return ResidualUnit(self.filters, data_format=self.data_format, **self.options.to_dict())

    # -- variables -------------------------------------------------------------------------
    def build(self, input_shape):
        channels = input_shape[channel_axis(self.data_format)]
        template = self._template()
        if channels != template.out_channels:
            raise ValueError(
                f"StackedStage units keep their shape: input has {channels} channels but the "
                f"units output {template.out_channels}."
            )
        self._plan = plan = template.plan(channels)
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
            c = channels
            for kind, name, *args in plan.ops(part):
                if kind == "conv":
                    k, filters = args[0], args[1]
                    add((name, "kernel"), (k, k, c, filters), norm.HeNormalFanOut())
                    c = filters
                elif kind == "bn":
                    add((name, "gamma"), (c,), "ones")
                    add((name, "beta"), (c,), "zeros")
                    add((name, "moving_mean"), (c,), "zeros", trainable=False)
                    add((name, "moving_variance"), (c,), "ones", trainable=False)
        if plan.gate is not None:
            out = template.out_channels
            add(("gate", "kernel"), (1, 1, channels, out), norm.HeNormalFanOut())
            add(("gate", "bias"), (out,), keras.initializers.Constant(template.gate_bias_init))

    # -- forward ---------------------------------------------------------------------------
    def _unit_fn(self, training: bool):
        """One unit as a function of (x, per-unit parameter tensors) -> (y, *batch stats)."""
        keys = list(self._params)
        epsilon = self.options.bn_epsilon

        def unit(x, *values):
            backend = _StackedBackend(dict(zip(keys, values)), epsilon, training, self.data_format)
            y = run_unit(self._plan, x, backend)
            return (y, *backend.stats)

        return unit

    def call(self, inputs, training=None):
        training = bool(training) and self.trainable
        unit = self._unit_fn(training)
        if self.recompute and training:
            unit = keras.remat(unit)
        # The BN statistics are read as copies: they are updated in place after the loop, and
        # PyTorch's recomputing backward refuses inputs that changed since the forward pass.
        values = [v.value if v.trainable or not training else ops.copy(v.value)
                  for v in self._params.values()]
        y, stats = self._loop(unit, inputs, values, training)
        if training:
            m = self.options.bn_momentum
            for j, name in enumerate(self._plan.bn_names()):
                norm.update_moving_average(self._params[(name, "moving_mean")], stats[2 * j], m)
                norm.update_moving_average(self._params[(name, "moving_variance")], stats[2 * j + 1], m)
        return y

    def _loop(self, unit, inputs, weights, training: bool):
        """Run ``unit`` over the stack: ``(output, [per-unit statistic stacked over units])``."""
        backend = keras.backend.backend()
        if backend == "tensorflow":
            return self._tf_while_loop(unit, inputs, weights, training)
        if backend == "jax":
            def step(x, unit_weights):
                y, *stats = unit(x, *unit_weights)
                return y, tuple(stats)

            y, stats = ops.scan(step, inputs, tuple(weights))
            return y, list(stats)
        # Eager backends: unstack once (each unit's gradient lands in its own slice; indexing
        # v[i] would add a full-size gradient per unit), then a plain loop.
        slices = [ops.unstack(w, axis=0) for w in weights]
        y, collected = inputs, []
        for i in range(self.num_units):
            y, *stats = unit(y, *[s[i] for s in slices])
            collected.append(stats)
        return y, [ops.stack(column) for column in zip(*collected)]

    def _tf_while_loop(self, unit, inputs, weights, training: bool):
        """The TensorFlow fast path of ``_loop``: a ``tf.while_loop`` over TensorArrays."""
        import tensorflow as tf  # TensorFlow backend only

        # Each unit reads its slice of the stacked weights from a TensorArray: the gradient of
        # a read lands in one slot of a gradient TensorArray, where slicing the stacked tensor
        # (v[i]) would add a full-size, mostly-zero gradient at every iteration.
        arrays_in = [
            tf.TensorArray(w.dtype, size=self.num_units, element_shape=w.shape[1:]).unstack(w)
            for w in weights
        ]
        num_stats = 2 * len(self._plan.bn_names()) if training else 0

        def body(i, x, *arrays):
            y, *stats = unit(x, *[w.read(i) for w in arrays_in])
            arrays = [a.write(i, s) for a, s in zip(arrays, stats)]
            return (i + 1, y, *arrays)

        arrays = [tf.TensorArray(tf.float32, size=self.num_units) for _ in range(num_stats)]
        _, y, *arrays = tf.while_loop(
            lambda i, *_: i < self.num_units,
            body,
            (tf.constant(0), inputs, *arrays),
            # Shapes are fixed by the loop; parallel_iterations=1 keeps memory to one unit.
            parallel_iterations=1,
            # A fixed trip count: XLA (jit_compile) needs it to size the gradient's accumulators.
            maximum_iterations=self.num_units,
        )
        return y, [a.stack() for a in arrays]

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
            full = np.array(v)  # a writable copy (a JAX array's numpy view is read-only)
            full[i] = w
            v.assign(full)

    def get_config(self):
        return {
            **super().get_config(),
            "num_units": self.num_units,
            "filters": self.filters,
            **stacked_options(self.options),
            "recompute": self.recompute,
            "data_format": self.data_format,
        }

    @classmethod
    def from_config(cls, config):
        return super().from_config({"data_format": LEGACY_DATA_FORMAT, **config})


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
