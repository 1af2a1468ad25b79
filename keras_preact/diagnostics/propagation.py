"""The measurement: per-unit forward and backward norms through a residual network (Eqn 4-8).

For units ``x_{l+1} = f(h(x_l) + F(x_l))`` the gradient at a unit's input is (paper Eqn 5,
Eqn 8 for a scaled shortcut ``h(x) = lambda * x``)

    dE/dx_l = dE/dx_L * (prod_i lambda_i  +  terms through the residual branches F_i).

``propagation_norms`` records ``||x_l||`` and the full ``||dE/dx_l||`` for every unit, and
separately the first term alone, the *shortcut-path term*: ``dE/dx_L`` carried back through
each unit with its residual branch held constant (``ResidualUnit.call(...,
residual_gradient=False)``). It equals ``||dE/dx_L||`` at every unit for identity shortcuts,
decays as ``lambda^k`` for constant scaling, as ``prod (1 - g(x))`` for gating, and is the
product of the 1x1 convolutions for conv1x1 shortcuts.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_preact.model import as_resnet, unstack
from keras_preact.units import ResidualUnit


def per_example_norm(t) -> float:
    """Euclidean norm of each example's slice of ``t``, averaged over the batch."""
    flat = tf.reshape(t, [tf.shape(t)[0], -1])
    return float(tf.reduce_mean(tf.norm(flat, axis=1)))


def weight_layer_count(layer) -> int:
    """Weight layers (convolutions, dense) on the main path through ``layer``.

    For a residual unit these are the convolutions of its residual branch F (the shortcut's
    1x1 conv and the gate run in parallel, so they do not add depth), which is how the paper
    counts depth (a basic unit is 2 layers, a bottleneck 3).
    """
    if isinstance(layer, ResidualUnit):
        return sum(isinstance(l, keras.layers.Conv2D) for l in layer.branch_layers)
    return int(isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)))


def snapshot_state(model: keras.Model) -> list:
    """Copies of the model's non-trainable variables (BN moving statistics, seed states)."""
    return [np.array(v.numpy()) for v in model.non_trainable_variables]


def restore_state(model: keras.Model, values: list) -> None:
    for variable, value in zip(model.non_trainable_variables, values):
        variable.assign(value)


def propagation_norms(model: keras.Model, images, labels, training: bool = True) -> dict:
    """Per-unit forward activation norms, backward gradient norms and shortcut-path terms.

    Runs the network layer by layer on one batch, with softmax cross-entropy as the loss E.
    The model is left as it was: calling BatchNorm with ``training=True`` updates its moving
    statistics in Keras 3, so the non-trainable variables are saved first and restored after.

    Args:
      model: a network built by ``keras_preact`` (stem, residual units, head in a chain;
        stacked stages are expanded with ``unstack``), ending in logits.
      images, labels: one batch; labels are integer class ids.
      training: run BatchNorm with batch statistics (as during training) or with the moving
        statistics (as at evaluation).

    Returns:
      dict of numpy arrays (one entry per residual unit, in order) and scalars:
        ``"units"``: unit names;
        ``"depth"``: weight layers before each unit's input (stem conv + the branch convs of
          the earlier units), so the x axis can read "layers" as in the paper;
        ``"forward"``: ``||x_l||`` of each unit's input, per example, averaged over the batch;
        ``"backward"``: ``||dE/dx_l||``, likewise;
        ``"backward_direct"``: the shortcut-path term of ``dE/dx_l`` (Eqn 5's first term,
          Eqn 8's ``prod lambda_i`` term): ``dE/dx_L`` at the last unit's output carried back
          through every later unit with its residual branch held constant;
        ``"output_gradient"``: ``||dE/dx_L||`` at the last unit's output;
        ``"loss"``: E on the batch.
    """
    layers = unstack(as_resnet(model, "propagation_norms")).chain_layers()
    units = [layer for layer in layers if isinstance(layer, ResidualUnit)]
    if not units:
        raise ValueError(f"Model {model.name!r} has no ResidualUnit layers.")
    state = snapshot_state(model)  # unstack() may copy; the caller's model is what must not change
    try:
        images = tf.convert_to_tensor(images, tf.float32)
        labels = tf.convert_to_tensor(labels)
        unit_inputs, depth, layers_so_far = [], [], 0
        last_unit = units[-1]
        with tf.GradientTape(persistent=False) as tape:
            x = images
            for layer in layers:
                if isinstance(layer, ResidualUnit):
                    tape.watch(x)
                    unit_inputs.append(x)
                    depth.append(layers_so_far)
                x = layer(x, training=training)
                layers_so_far += weight_layer_count(layer)
                if layer is last_unit:
                    tape.watch(x)
                    last_output = x
            loss = tf.reduce_mean(
                keras.losses.sparse_categorical_crossentropy(labels, x, from_logits=True)
            )
        grads = tape.gradient(loss, unit_inputs + [last_output])
        unit_grads, output_grad = grads[:-1], grads[-1]

        # The shortcut-path term, unit by unit from the top: each unit is evaluated again at
        # its recorded input, with F held constant, and the running gradient is pulled back
        # through it (a vector-Jacobian product with the unit's shortcut-only Jacobian).
        # The product is linear in the carried vector, so it is carried normalised and its
        # scale kept apart in float64: 0.5^150 * dE/dx_L would underflow float32.
        direct = np.zeros(len(units))
        carried, log_scale = output_grad, 0.0
        for i in reversed(range(len(units))):
            x_l = unit_inputs[i]
            with tf.GradientTape() as unit_tape:
                unit_tape.watch(x_l)
                direct_out = units[i](x_l, training=training, residual_gradient=False)
            carried = unit_tape.gradient(direct_out, x_l, output_gradients=carried)
            norm = per_example_norm(carried)
            if norm == 0.0 or not np.isfinite(norm):
                direct[: i + 1] = norm  # nothing (or nothing finite) flows further down
                break
            direct[i] = np.exp(log_scale) * norm
            carried, log_scale = carried / norm, log_scale + np.log(norm)
    finally:
        restore_state(model, state)

    return {
        "units": [unit.name for unit in units],
        "depth": np.array(depth),
        "forward": np.array([per_example_norm(t) for t in unit_inputs]),
        "backward": np.array([per_example_norm(g) for g in unit_grads]),
        "backward_direct": direct,
        "output_gradient": per_example_norm(output_grad),
        "loss": float(loss),
    }
