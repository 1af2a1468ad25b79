"""Train a (pre-activation) ResNet on ImageNet with the paper's recipe (its appendix).

Batch 256, lr 0.1 scaled linearly with the batch, /10 at epochs 30 and 60, 90 epochs; scale or
Inception-style augmentation; single-crop evaluation at 224 and 320 (paper Table 5).

    python trainers/imagenet.py --strategy=mirrored --model=resnet200
    python trainers/imagenet.py --data_dir=/data/imagenet --augment=inception --batch_size=512
    TF_CONFIG=... python trainers/imagenet.py --strategy=multi_worker_mirrored --model_dir=/shared/run

Flags: python trainers/imagenet.py --help (every default, the recipe's included);
docs/training.md. A run writes its resolved configuration to <run directory>/config.json;
--config on that file repeats it. The command line itself is ``keras_preact.cli.train`` (also
``python -m keras_preact.cli.train imagenet``).
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

train_cli.define_flags("imagenet")
flags.adopt_module_key_flags(train_cli)  # --help lists the trainer flags, not only absl's


def main(argv=None) -> int:
    """Exit status 0; 2 for a bad flag (one line naming it); 3 on divergence. --help exits 0."""
    return train_cli.console_main("imagenet", sys.argv if argv is None else argv)


if __name__ == "__main__":
    sys.exit(main())
