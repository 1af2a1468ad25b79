"""``diagnostics/propagation.py`` (paper Eqn 4-8): the shortcut-path term, measured trends,
and the measurement leaving the model unchanged. The command line: test_diagnostics_main.py."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_preact import ResidualUnit, build_resnet
from keras_preact.diagnostics import propagation_norms

RNG = np.random.RandomState(0)


def tiny_net(units, shortcut="identity", **kwargs):
    """One stage of ``units`` basic units, 8 channels, 8x8 inputs."""
    return build_resnet((units,), widths=(8,), shortcut=shortcut, input_shape=(8, 8, 3), **kwargs)


def batch(n=8):
    return RNG.rand(n, 8, 8, 3).astype("float32"), np.arange(n) % 10


def mean_norm(t):
    return np.mean(np.linalg.norm(np.reshape(t, (len(t), -1)), axis=1))


# --- the shortcut-path term (Eqn 5 first term, Eqn 8 prod lambda_i) ------------------------

def test_stopping_the_residual_gradient_keeps_the_unit_output():
    unit = ResidualUnit(8, shortcut="exclusive_gating", gate_bias_init=-1.0)
    x = RNG.randn(2, 8, 8, 8).astype("float32")
    np.testing.assert_array_equal(unit(x, training=True, residual_gradient=False),
                                  unit(x, training=True))


def test_direct_term_is_constant_through_identity_shortcuts():
    x, y = batch()
    norms = propagation_norms(tiny_net(12), x, y)
    np.testing.assert_allclose(norms["backward_direct"], norms["output_gradient"], rtol=1e-5)
    # F is live in the full gradient, which therefore differs from the direct term.
    assert norms["backward"][0] > 1.5 * norms["backward_direct"][0]


def test_direct_term_of_constant_scaling_is_lambda_to_the_power_of_the_units():
    """F is not zeroed: only the stop-gradient path can make the ratio exactly 0.5^(n-1)."""
    n = 12
    x, y = batch()
    norms = propagation_norms(tiny_net(n, "constant_scaling"), x, y)
    direct = norms["backward_direct"]
    assert direct[0] / direct[-1] == pytest.approx(0.5 ** (n - 1), rel=1e-3)
    assert direct[-1] == pytest.approx(0.5 * norms["output_gradient"], rel=1e-5)
    full_ratio = norms["backward"][0] / norms["backward"][-1]
    assert not 0.1 < full_ratio / 0.5 ** (n - 1) < 10  # the full gradient is something else


def test_direct_term_of_exclusive_gating_is_the_product_of_one_minus_the_gates():
    """Two units: the direct term at unit l is ||dE/dx_L * prod_{i >= l} (1 - g(x_i))||."""
    model = tiny_net(2, "exclusive_gating", gate_bias_init=-1.0)  # gates far from 0
    x, y = batch()
    norms = propagation_norms(model, x, y)

    # Independently: walk the net, keep the unit inputs, dE/dx_L and the gate values.
    gates = []
    with tf.GradientTape() as tape:
        h = tf.constant(x)
        for layer in model.layers[1:]:
            is_unit = isinstance(layer, ResidualUnit)
            if is_unit:
                gates.append(layer.gate(h).numpy())
            h = layer(h, training=True)
            if is_unit:  # after the loop: the last unit's output x_L
                tape.watch(h)
                last_output = h
        loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(y, h, from_logits=True))
    output_grad = tape.gradient(loss, last_output).numpy()

    expected_2 = mean_norm(output_grad * (1 - gates[1]))
    expected_1 = mean_norm(output_grad * (1 - gates[1]) * (1 - gates[0]))
    np.testing.assert_allclose(norms["backward_direct"], [expected_1, expected_2], rtol=1e-5)
    assert norms["backward_direct"][0] / norms["output_gradient"] < 0.9


# --- measured trends at initialisation --------------------------------------------------------

def test_identity_keeps_gradients_within_a_small_factor_constant_scaling_does_not():
    """50 units, real initialisation (He init, BN on batch statistics).

    Measured with seeds 0-2: identity's full gradient spreads 45-59x across the units (it grows
    towards the input because ||x_l|| grows along the identity path), and the scale-free
    product ||x_l|| * ||dE/dx_l|| only 5-7x. A 0.5-scaled shortcut spreads them by 6e5-8e5 and
    4e5-6e5. Thresholds keep a 3x or larger margin on each side.
    """
    x, y = batch()
    spread, product_spread = {}, {}
    for shortcut in ("identity", "constant_scaling"):
        keras.utils.set_random_seed(0)
        norms = propagation_norms(tiny_net(50, shortcut), x, y)
        spread[shortcut] = norms["backward"].max() / norms["backward"].min()
        product = norms["forward"] * norms["backward"]
        product_spread[shortcut] = product.max() / product.min()
    assert spread["identity"] < 200
    assert product_spread["identity"] < 20
    assert spread["constant_scaling"] > 1e5
    assert product_spread["constant_scaling"] > 1e4 * product_spread["identity"]


# --- the measurement does not change the model ------------------------------------------------

@pytest.mark.parametrize("stacked", [False, True])
def test_measurement_leaves_every_variable_unchanged(stacked):
    model = build_resnet((3, 3), widths=(8, 16), input_shape=(8, 8, 3), stacked_stages=stacked)
    x, y = batch()
    model(x, training=True)  # non-trivial moving statistics
    before = [v.numpy().copy() for v in model.variables]
    propagation_norms(model, x, y, training=True)
    for variable, value in zip(model.variables, before):
        np.testing.assert_array_equal(variable.numpy(), value, err_msg=variable.path)
    # The check has teeth: a training-mode call does move the BN statistics.
    model(x, training=True)
    assert any(not np.array_equal(v.numpy(), b) for v, b in zip(model.variables, before))
