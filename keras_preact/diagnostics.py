"""Signal propagation through the residual units (paper Eqn 4-8).

``propagation_norms`` runs a network of this package layer by layer and records, for every
residual unit, the norm of its input ``x_l`` (forward) and of the loss gradient ``dE/dx_l``
(backward). With identity shortcuts Eqn 5 predicts gradient norms that stay within a small
factor across depth; with a scaled shortcut ``lambda * x`` the direct term is
``prod lambda_i`` and the norms shrink (or grow) geometrically.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from keras_preact.resnet import chain_layers
from keras_preact.stacked import unstack
from keras_preact.units import ResidualUnit


def propagation_norms(model: keras.Model, images, labels, training: bool = True) -> dict:
    """Per-unit forward activation norms and backward gradient norms for one batch.

    Args:
      model: a network built by ``keras_preact`` (stem, residual units, head in a chain),
        ending in logits.
      images, labels: one batch; labels are integer class ids.
      training: run BatchNorm with batch statistics (as during training) or moving statistics.

    Returns:
      dict with ``"units"`` (unit names), ``"forward"`` (||x_l|| of each unit's input, per
      example, averaged over the batch) and ``"backward"`` (||dE/dx_l||, likewise), as numpy
      arrays, plus ``"loss"``.
    """
    layers = chain_layers(unstack(model), "propagation_norms")
    images = tf.convert_to_tensor(images, tf.float32)
    labels = tf.convert_to_tensor(labels)
    unit_inputs, names = [], []
    with tf.GradientTape() as tape:
        x = images
        for layer in layers:
            if isinstance(layer, ResidualUnit):
                tape.watch(x)
                unit_inputs.append(x)
                names.append(layer.name)
            x = layer(x, training=training)
        loss = tf.reduce_mean(
            keras.losses.sparse_categorical_crossentropy(labels, x, from_logits=True)
        )
    if not unit_inputs:
        raise ValueError(f"Model {model.name!r} has no ResidualUnit layers.")
    grads = tape.gradient(loss, unit_inputs)

    def per_example_norm(t):
        flat = tf.reshape(t, [tf.shape(t)[0], -1])
        return float(tf.reduce_mean(tf.norm(flat, axis=1)))

    return {
        "units": names,
        "forward": np.array([per_example_norm(t) for t in unit_inputs]),
        "backward": np.array([per_example_norm(g) for g in grads]),
        "loss": float(loss),
    }
