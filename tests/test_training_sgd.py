"""FusedSGD: Keras' SGD, bit for bit, with one fused momentum kernel per variable on TensorFlow."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_preact
from keras_preact.training.sgd import FusedSGD

tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="the fused kernel is TensorFlow's")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _train(optimizer_class, steps=3, model_name="resnet20", **optimizer_kwargs):
    """Every model and optimizer variable after ``steps`` traced training steps, and the graph."""
    keras.utils.set_random_seed(0)
    model = keras_preact.get_model(model_name)
    rng = np.random.RandomState(0)
    x = tf.constant(rng.rand(8, 32, 32, 3).astype("float32"))
    y = tf.constant(rng.randint(0, 10, 8).astype("int32"))
    optimizer = optimizer_class(**optimizer_kwargs)
    optimizer.build(model.trainable_variables)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
        optimizer.apply(tape.gradient(loss, model.trainable_weights), model.trainable_weights)
        return loss

    graph = step.get_concrete_function(x, y).graph
    losses = [float(step(x, y)) for _ in range(steps)]
    values = [v.numpy() for v in model.variables] + [v.numpy() for v in optimizer.variables]
    return losses, values, graph, model


def _differing(a, b):
    assert len(a) == len(b)
    return sum(not np.array_equal(p, q) for p, q in zip(a, b))


@pytest.mark.parametrize("nesterov", [False, True])
def test_traced_steps_equal_keras_sgd_bit_for_bit(nesterov):
    # A schedule, as the trainer uses: the learning rate is a tensor computed from the counter.
    schedule = lambda: keras.optimizers.schedules.PiecewiseConstantDecay([1], [0.1, 0.01])  # noqa: E731
    kwargs = dict(momentum=0.9, nesterov=nesterov)
    keras_losses, keras_values, _, _ = _train(keras.optimizers.SGD, learning_rate=schedule(), **kwargs)
    fused_losses, fused_values, graph, model = _train(FusedSGD, learning_rate=schedule(), **kwargs)
    assert fused_losses == keras_losses
    assert _differing(fused_values, keras_values) == 0
    fused_ops = [op for op in graph.get_operations() if op.type == "ResourceApplyKerasMomentum"]
    assert len(fused_ops) == len(model.trainable_variables)


def test_the_step_graph_is_smaller():
    *_, keras_graph, _ = _train(keras.optimizers.SGD, steps=0, learning_rate=0.1, momentum=0.9)
    *_, fused_graph, model = _train(FusedSGD, steps=0, learning_rate=0.1, momentum=0.9)
    saved = len(keras_graph.get_operations()) - len(fused_graph.get_operations())
    # Keras writes about 11 ops per variable; the kernel, its inputs and the gradient's identity 3-4.
    assert saved >= 5 * len(model.trainable_variables)
    # The learning-rate variable is read once per step, not once per variable.
    reads = [op for op in fused_graph.get_operations()
             if op.type == "ReadVariableOp" and op.name.startswith("fused_sgd")]
    assert len(reads) == 1


def test_eager_apply_without_momentum_and_with_sparse_gradients_fall_back_to_keras():
    for kwargs in ({"momentum": 0.9}, {"momentum": 0.0}, {"momentum": 0.9, "nesterov": True}):
        results = []
        for cls in (keras.optimizers.SGD, FusedSGD):
            w = keras.Variable(np.array([[1.0, -2.0], [0.5, 3.0], [2.0, 2.0]], "float32"), name="table")
            optimizer = cls(learning_rate=0.1, **kwargs)
            optimizer.build([w])
            dense = tf.constant([[0.5, 0.25], [-1.0, 0.0], [0.1, 0.2]])
            sparse = tf.IndexedSlices(tf.constant([[1.0, 1.0]]), tf.constant([1]), tf.constant([3, 2]))
            for gradient in (dense, sparse, dense):
                optimizer.apply([gradient], [w])
            results.append([w.numpy()] + [v.numpy() for v in optimizer.variables])
        assert _differing(*results) == 0, kwargs


def test_same_variables_paths_and_config_as_keras_sgd():
    variables = [keras.Variable(np.ones(2, "float32"), name="kernel")]
    built = []
    for cls in (keras.optimizers.SGD, FusedSGD):
        optimizer = cls(0.1, momentum=0.9, nesterov=True)
        optimizer.build(variables)
        built.append(optimizer)
    # Paths below the optimizer's name, as the trainer's checkpoints key them.
    below = [[v.path.split("/", 1)[1] for v in o.variables] for o in built]
    assert below[1] == below[0]
    configs = [{k: v for k, v in o.get_config().items() if k != "name"} for o in built]
    assert configs[1] == configs[0]
    copy = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(built[1]))
    assert type(copy) is FusedSGD and copy.get_config() == built[1].get_config()


@pytest.mark.slow
def test_under_a_loss_scale_optimizer_and_mixed_float16_equals_keras():
    results = []
    for cls in (keras.optimizers.SGD, FusedSGD):
        keras.utils.set_random_seed(0)
        model = keras_preact.get_model("resnet20", dtype_policy="mixed_float16")
        optimizer = keras.optimizers.LossScaleOptimizer(cls(0.1, momentum=0.9))
        optimizer.build(model.trainable_variables)
        x = tf.constant(np.random.RandomState(0).rand(4, 32, 32, 3).astype("float32"))

        @tf.function
        def step(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean(tf.cast(model(x, training=True), tf.float32) ** 2)
                scaled = optimizer.scale_loss(loss)
            optimizer.apply(tape.gradient(scaled, model.trainable_weights), model.trainable_weights)

        for _ in range(2):
            step(x)
        results.append([v.numpy() for v in model.variables] + [v.numpy() for v in optimizer.variables])
    assert _differing(*results) == 0


@pytest.mark.slow
def test_mirrored_two_cpus_equals_keras_sgd_bit_for_bit():
    # Two logical CPUs must be set before TensorFlow starts: a fresh process. Inside
    # strategy.extended.update the variable is one replica's component; the kernel must update
    # that component's slot, on each replica.
    script = textwrap.dedent("""
        import numpy as np, keras, keras_preact, tensorflow as tf
        from keras_preact.training.strategy import configure_cpu_devices
        from keras_preact.training.sgd import FusedSGD
        configure_cpu_devices(2)
        strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
        rng = np.random.RandomState(0)
        x, y = rng.rand(8, 32, 32, 3).astype("float32"), rng.randint(0, 10, 8).astype("int32")
        results = []
        for cls in (keras.optimizers.SGD, FusedSGD):
            keras.utils.set_random_seed(0)
            with strategy.scope():
                model = keras_preact.get_model("resnet20")
                optimizer = cls(keras.optimizers.schedules.PiecewiseConstantDecay([1], [0.1, 0.01]),
                                momentum=0.9)
                optimizer.build(model.trainable_variables)
            data = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat(3)

            @tf.function
            def step(batch):
                def replica(x, y):
                    with tf.GradientTape() as tape:
                        losses = tf.keras.losses.sparse_categorical_crossentropy(
                            y, model(x, training=True), from_logits=True)
                        loss = tf.reduce_sum(losses) / 8
                    optimizer.apply(tape.gradient(loss, model.trainable_weights), model.trainable_weights)
                return strategy.run(replica, args=batch)

            for batch in strategy.experimental_distribute_dataset(data):
                step(batch)
            values = []
            for v in list(model.variables) + list(optimizer.variables):
                values += [c.numpy() for c in strategy.experimental_local_results(v.value)]
            results.append(values)
        print("differing", sum(not np.array_equal(a, b) for a, b in zip(*results)), "of", len(results[0]))
    """)
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "PYTHONPATH": REPO}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    last = done.stdout.strip().splitlines()[-1].split()
    assert last[0] == "differing" and last[1] == "0" and int(last[3]) > 100, done.stdout
