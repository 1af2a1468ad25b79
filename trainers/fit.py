"""Train a (pre-activation) ResNet with Keras' ``model.fit``, on any Keras backend.

The fit trainer: the run configuration, flags and ``--config`` of ``trainers/cifar.py`` (the
tf.distribute trainer of the TensorFlow backend), trained by Keras' own loop on JAX, PyTorch or
TensorFlow, with checkpoints and exact resume, and without TensorFlow off TensorFlow.

    KERAS_BACKEND=jax python trainers/fit.py                         # the bundled CIFAR-10 sample
    KERAS_BACKEND=jax python trainers/fit.py --data_dir=/data/cifar10-jpeg --recipe=cifar
    KERAS_BACKEND=torch python trainers/fit.py --model=resnet56 --epochs=10

Flags: python trainers/fit.py --help; docs/backends.md. The command line itself is
``keras_preact.cli.fit`` (also ``keras-preact-fit``).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras_preact_commands  # noqa: E402

# Before Keras loads: TensorFlow's start-up lines off the output, oneDNN on (keras_preact_commands).
# TensorFlow is loaded where it is installed: Keras imports it on any backend (its random seed
# seeds TensorFlow's), so it loads silenced here. A JAX-only install has none to load.
keras_preact_commands.prepare_process(tensorflow=True)

from absl import flags  # noqa: E402

from keras_preact.cli import fit as fit_cli  # noqa: E402
from keras_preact.cli import run_flags  # noqa: E402

fit_cli.define_flags()
flags.adopt_module_key_flags(run_flags)  # --help lists the trainer flags, not only absl's


def main(argv=None) -> int:
    """Exit status 0; 2 for a bad flag (one line naming it); 3 if the run diverged; 4 if another
    process of a multi-process run was lost."""
    return fit_cli.console_main(sys.argv if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
