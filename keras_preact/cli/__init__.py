"""The command lines: the top layer of the package.

``keras_preact.cli.train`` is the trainer command line behind ``trainers/cifar.py`` and
``trainers/imagenet.py``. It sits above every other layer because it uses all of them: the
model registry, the data pipelines, the training loop and, at the end of a run, the exporter
(``keras_preact.export``, which itself builds on ``keras_preact.training``). Nothing in the
package imports this layer.

``keras_preact.cli.fit`` (``trainers/fit.py``) trains with Keras' ``model.fit`` on any backend;
the ``tf.distribute`` trainers need the TensorFlow backend and say so in one line otherwise
(:func:`require_tensorflow_backend`).
"""

import os
import sys
import textwrap

import keras

from keras_preact.common import COMMAND_ENVIRONMENT

EXIT_WRONG_BACKEND = 2


def require_tensorflow_backend(program: str) -> None:
    """Exit with one line on stderr (status 2) unless Keras runs on TensorFlow.

    Called by the ``tf.distribute`` trainers before they import TensorFlow, so that under
    ``KERAS_BACKEND=jax`` or ``torch`` the user learns what to run instead, not an ImportError.
    """
    backend = keras.backend.backend()
    if backend != "tensorflow":
        print(f"error: {program} trains with tf.distribute on the TensorFlow backend, and Keras "
              f"runs on {backend} here (KERAS_BACKEND): on {backend} train with Keras' fit, "
              f"`python trainers/fit.py` (same models, recipes and data), or set "
              "KERAS_BACKEND=tensorflow.", file=sys.stderr)
        sys.exit(EXIT_WRONG_BACKEND)


def command_help(flag_values, module_name: str, argv) -> str:
    """``--help`` of an absl command: its own flags only, under a usage line naming the command
    as typed. absl's ``get_help`` would open with absl's and TensorFlow's flags (about 70 lines
    before the first of the package's); ``--helpfull`` still lists every flag."""
    if "--helpfull" in argv[1:]:
        return flag_values.get_help()
    program = os.path.basename(argv[0]) if argv and argv[0] else "command"
    own = flag_values.module_help(module_name).strip("\n").split("\n", 1)[-1]  # no "<module>:"
    return (f"usage: {program} [--flag=value ...]   (--helpfull: absl's and TensorFlow's flags too)"
            f"\n\nflags:\n{own}\n\n{textwrap.fill(COMMAND_ENVIRONMENT, 96)}")
