"""Train a (pre-activation) ResNet on CIFAR with the paper's recipe.

With no flags it trains ResNet-20 for a few minutes on the CIFAR-10 sample shipped in the
package (no download), prints the test accuracy and writes runs/cifar10_sample_resnet20/.

    python trainers/cifar.py
    python trainers/cifar.py --dataset=cifar10 --model=resnet164   # paper appendix recipe, 64k its
    python trainers/cifar.py --data_dir=/data/cifar10-jpeg --model=resnet110 --preact=false
    python trainers/cifar.py --strategy=mirrored --cpu_devices=2 --sync_bn --train_steps=2000
    python trainers/cifar.py --config=runs/cifar10_sample_resnet20/config.json --model_dir=runs/again

Flags: python trainers/cifar.py --help (every default, the recipe's included); docs/training.md.
A run writes its resolved configuration to <run directory>/config.json; --config on that file
repeats it. The command line itself is ``keras_preact.cli.train`` (also
``python -m keras_preact.cli.train cifar``).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras_preact_commands  # noqa: E402

# Before Keras loads: TensorFlow's start-up lines off the output, oneDNN on (keras_preact_commands).
keras_preact_commands.prepare_process()

from absl import flags  # noqa: E402

from keras_preact.cli import require_tensorflow_backend  # noqa: E402

require_tensorflow_backend(f"trainers/{os.path.basename(__file__)}")

from keras_preact.cli import train as train_cli  # noqa: E402

train_cli.define_flags("cifar")
flags.adopt_module_key_flags(train_cli)  # --help lists the trainer flags, not only absl's


def main(argv=None) -> int:
    """Exit status 0; 2 for a bad flag (one line naming it); 3 on divergence. --help exits 0."""
    return train_cli.console_main("cifar", sys.argv if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
