"""Train a (pre-activation) ResNet with Keras' ``model.fit``, on any Keras backend.

The way to train on JAX or PyTorch: the package's models, recipes (``keras_preact.recipes``)
and input pipeline, Keras' loop. On JAX with several local devices every batch is split over
them (``keras.distribution.DataParallel``). ``trainers/cifar.py`` is the ``tf.distribute``
trainer of the TensorFlow backend (Mirrored, multi-worker, TPU; exact resume).

    KERAS_BACKEND=jax python trainers/fit.py                         # the embedded CIFAR-10 sample
    KERAS_BACKEND=jax python trainers/fit.py --data_dir=/data/cifar10-jpeg --epochs=3
    KERAS_BACKEND=torch python trainers/fit.py --model=resnet56 --recipe=cifar --epochs=10

Flags: python trainers/fit.py --help; docs/backends.md. The command line itself is
``keras_preact.cli.fit``.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras_preact_commands  # noqa: E402

# Before Keras loads: TensorFlow's start-up lines off the output, oneDNN on; TensorFlow too,
# for the tf.data input on every backend (keras_preact_commands).
keras_preact_commands.prepare_process(tensorflow=True)

from absl import flags  # noqa: E402

from keras_preact.cli import fit as fit_cli  # noqa: E402

fit_cli.define_flags()
flags.adopt_module_key_flags(fit_cli)  # --help lists the trainer flags, not only absl's


def main(argv=None) -> int:
    """Exit status 0; 2 for a bad flag (one line naming it); 3 if the run diverged."""
    return fit_cli.console_main(sys.argv if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
