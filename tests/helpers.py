"""Helpers shared by several test modules."""

import keras

from keras_preact.units import ResidualUnit


def batch_norm_layers(model) -> list:
    """Every BatchNormalization layer of ``model``, of any class, also those inside ResidualUnits
    (found through public layer lists)."""
    found = []
    for layer in model.layers:
        members = layer.op_layers() if isinstance(layer, ResidualUnit) else [layer]
        found += [m for m in members if isinstance(m, keras.layers.BatchNormalization)]
    return found
