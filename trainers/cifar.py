"""Train a (pre-activation) ResNet on CIFAR with the paper's recipe.

With no flags it trains ResNet-20 for a few minutes on the CIFAR-10 sample shipped in the
package (no download), prints the test accuracy and writes runs/cifar10_sample_resnet20/.

    python trainers/cifar.py
    python trainers/cifar.py --dataset=cifar10 --model=resnet164            # SPEC recipe, 64k its
    python trainers/cifar.py --data_dir=/data/cifar10-jpeg --model=resnet110 --preact=false
    python trainers/cifar.py --strategy=mirrored --cpu_devices=2 --sync_bn --train_steps=2000

Flags: python trainers/cifar.py --helpfull; docs/training.md.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from keras_preact.training import cli  # noqa: E402

cli.define_flags("cifar")
flags.adopt_module_key_flags(cli)  # --help lists the trainer flags, not only absl's


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    cli.main("cifar")


if __name__ == "__main__":
    app.run(main)
