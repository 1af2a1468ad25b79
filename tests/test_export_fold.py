"""BN folding: the inference copy equals the Keras model in eval mode, for every unit variant."""

import keras
import numpy as np
import pytest

import keras_preact
from keras_preact.export import ChannelAffine, fold_batch_norm
from keras_preact.shortcuts import ShortcutCombine

X = np.random.RandomState(1).normal(size=(4, 32, 32, 3)).astype("float32")


BN_VALUES = {  # name -> sampler, non-trivial values as after training
    "gamma": lambda rng, shape: rng.uniform(0.5, 1.5, shape),
    "beta": lambda rng, shape: rng.normal(0, 0.3, shape),
    "moving_mean": lambda rng, shape: rng.normal(0, 0.3, shape),
    "moving_variance": lambda rng, shape: rng.uniform(0.5, 2, shape),
}


def randomize_bn(model, seed=0):
    """Randomise every BatchNorm variable, whatever the layer class (fused or Keras' own) and
    wherever it sits (inside units, stacked stages); returns the model."""
    rng = np.random.RandomState(seed)
    changed = 0
    for variable in model.variables:
        kind = variable.path.rsplit("/", 1)[-1]
        kind = next((k for k in BN_VALUES if kind == k or kind.endswith("_" + k)), None)
        if kind:
            variable.assign(BN_VALUES[kind](rng, variable.shape).astype("float32"))
            changed += 1
    assert changed >= 8, "no BatchNorm variables found to randomise"
    return model


def small(**kwargs):
    return randomize_bn(keras_preact.build_resnet((1, 1, 1), widths=(8, 16, 16), **kwargs))


def assert_same(model, folded, x=X):
    expected = model(x, training=False).numpy()
    got = folded(x).numpy()
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() <= 1e-5 * scale


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"order": "original"},
        {"order": "bn_after_addition"},
        {"order": "relu_before_addition"},
        {"order": "relu_only_preact"},
        {"shortcut": "exclusive_gating"},
        {"shortcut": "shortcut_only_gating"},
        {"shortcut": "constant_scaling", "scale_residual": True},
        {"shortcut": "conv1x1"},
        {"shortcut": "dropout"},
        {"unit": "bottleneck"},
        {"unit": "single", "downsample": "projection"},
    ],
    ids=lambda kw: "-".join(f"{v}" for v in kw.values()) or "full_preact",
)
def test_folded_model_equals_eval_mode_model(kwargs):
    model = small(**kwargs)
    folded = fold_batch_norm(model)
    assert_same(model, folded)
    remaining = [l for l in folded.layers if isinstance(l, (keras.layers.BatchNormalization, keras.layers.Dropout))]
    assert not remaining
    shortcut = kwargs.get("shortcut", "identity")
    combines = [l for l in folded.layers if isinstance(l, ShortcutCombine)]
    assert len(combines) == 3 and {c.shortcut for c in combines} == {shortcut}


def test_randomised_statistics_change_the_output():
    plain = keras_preact.build_resnet((1, 1, 1), widths=(8, 16, 16))
    randomised = keras_preact.build_resnet((1, 1, 1), widths=(8, 16, 16))
    randomised.set_weights(plain.get_weights())
    randomize_bn(randomised)
    gap = np.abs(plain(X, training=False) - randomised(X, training=False)).max()
    assert gap > 1e-2 * np.abs(plain(X, training=False)).max()


def test_stacked_model_folds_to_the_same_outputs():
    model = randomize_bn(keras_preact.build_resnet((3, 2, 2), widths=(8, 16, 16),
                                                   stacked_stages=True))
    assert_same(model, fold_batch_norm(model))


def test_preact_resnet_folds_branch_bn_and_keeps_leading_bn_as_affine():
    model = small()  # stem conv-BN, 3 units (first without pre-activation), final BN
    folded, report = fold_batch_norm(model, return_report=True)
    # Folded: stem_bn and the bn2 of each unit (conv1 -> bn2 -> relu -> conv2).
    assert sorted(report.folded_into_conv) == sorted(
        ["stem_bn", "stage1_unit1_bn2", "stage2_unit1_bn2", "stage3_unit1_bn2"]
    )
    # Kept: the leading BN of units 2 and 3 (input = the sum) and the final BN.
    assert sorted(report.kept_as_affine) == sorted(
        ["stage2_unit1_preact_bn", "stage3_unit1_preact_bn", "final_bn"]
    )
    affines = [l for l in folded.layers if isinstance(l, ChannelAffine)]
    assert len(affines) == 3
    convs = [l for l in folded.layers if isinstance(l, keras.layers.Conv2D)]
    assert sum(c.use_bias for c in convs) == 4


def test_imagenet_family_with_max_pool_folds(tmp_path):
    model = randomize_bn(
        keras_preact.build_resnet((1, 1), family="imagenet", unit="bottleneck", widths=(8, 16))
    )
    folded = fold_batch_norm(model)
    x = np.random.RandomState(2).normal(size=(2, 64, 64, 3)).astype("float32")
    assert_same(model, folded, x)
    # The folded model is a regular Keras model: it saves and loads (ChannelAffine registered).
    path = str(tmp_path / "folded.keras")
    folded.save(path)
    reloaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(reloaded(x).numpy(), folded(x).numpy())


def test_original_model_is_untouched():
    model = small()
    before = [w.copy() for w in model.get_weights()]
    fold_batch_norm(model)
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_other_models_are_rejected_with_the_conversion_hint():
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    b = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    model = keras.Model(inputs, keras.layers.Add()([a, b]))
    with pytest.raises(ValueError, match="keras_preact ResNet.*set_weights"):
        fold_batch_norm(model)
