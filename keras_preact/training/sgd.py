"""SGD with momentum whose update is one fused kernel per variable on TensorFlow.

Keras' ``SGD`` writes the momentum update ``m <- momentum * m - lr * g; w <- w + m`` (Nesterov:
``w <- w + momentum * m - lr * g``) as separate graph ops per variable: reads, casts, two
multiplies, a subtraction and two assignments. For ResNet-164's 494 variables that is 5,436 of
the training step's 12,618 ops, traced in Python and rewritten by Grappler before the first step
runs. TensorFlow's ``ResourceApplyKerasMomentum`` kernel computes exactly that update (the same
products and the same subtraction, in the same order) in one op, so :class:`FusedSGD` is
Keras' SGD with one backend switch: on TensorFlow, for dense gradients, the kernel; everywhere
else (JAX, PyTorch, sparse gradients, no momentum) Keras' own ``update_step``. Same variables,
same config, same numbers (tested bit for bit against ``keras.optimizers.SGD``);
``benchmarks/first_step.py`` measures the first step it saves.
"""

from __future__ import annotations

import keras

from keras_preact.common import PACKAGE

# The dtypes the kernel is registered for on CPU and GPU that Keras variables use.
_FUSED_DTYPES = ("float16", "bfloat16", "float32", "float64")


@keras.saving.register_keras_serializable(package=PACKAGE)
class FusedSGD(keras.optimizers.SGD):
    """``keras.optimizers.SGD`` with TensorFlow's fused momentum kernel (see the module doc).

    Takes Keras' ``SGD`` arguments and has its variables (one momentum slot per variable, same
    names under the optimizer's name) and config, so the trainer's checkpoints (keyed by path
    below the optimizer's name) and ``.keras`` files written with either load into the other.
    """

    def _uses_fused_kernel(self, gradient, variable) -> bool:
        if keras.backend.backend() != "tensorflow" or self.momentum == 0:
            return False
        import tensorflow as tf  # only on the TensorFlow backend

        dense = not isinstance(gradient, tf.IndexedSlices)
        return dense and keras.backend.standardize_dtype(variable.dtype) in _FUSED_DTYPES

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            # Read a learning-rate variable once per step, not once per variable: the value is
            # the same (nothing assigns it during the update) and the graph keeps one read.
            learning_rate = tf.convert_to_tensor(learning_rate)
        super()._backend_update_step(grads, trainable_variables, learning_rate)

    def update_step(self, gradient, variable, learning_rate):
        if not self._uses_fused_kernel(gradient, variable):
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        # Here ``variable`` is the backend's tf.Variable (or, under a tf.distribute strategy,
        # the replica's component inside ``strategy.extended.update``, whose ``handle`` is that
        # component's); the slot is a Keras variable holding the same kind.
        momentum = self.momentums[self._get_variable_index(variable)]
        momentum = momentum.value if isinstance(momentum, keras.Variable) else momentum
        dtype = variable.dtype
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle,
            accum=momentum.handle,
            lr=tf.cast(learning_rate, dtype),
            grad=tf.cast(gradient, dtype),
            momentum=tf.cast(self.momentum, dtype),
            use_locking=False,
            use_nesterov=self.nesterov,
        )
