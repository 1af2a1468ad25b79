"""Which test-time views pay: accuracy of one checkpoint under several sets of flip/shift views.

The logits of every view (the image shifted by up to ``--max_shift`` pixels along a row, a
column or a diagonal, zero fill, each with and without the mirror image) are computed once for
the run's last checkpoint (its weight average when the run kept one), and every view set below
is scored from them, so the sets differ only in which views they average:

* ``flip``: the image and its mirror image (the exporter's ``--tta=flip``);
* ``flip+cross1``: the image shifted 0 or 1 pixel up, down, left or right, and the mirrors (ten
  views: ``keras_preact.tta.TRANSLATE_SHIFTS``, the exporter's ``--tta=flip_translate``);
* ``flip+cross2`` (2-pixel shifts), ``flip+diag1`` / ``flip+diag2`` (diagonal shifts),
  ``flip+grid1`` (the 3x3 grid of shifts, 18 views), ``flip+cross12`` (1- and 2-pixel shifts,
  18 views) and, with ``--max_shift=2``, ``flip+grid2`` (the 5x5 grid, 50 views).

The view set of the package was chosen with this script on one run (the 110-minute ResNet-56,
docs/training.md "Test-time translation") and then measured on runs it was not chosen on.

    python benchmarks/tta_views.py --run_dir=runs/ship_r56/fast --model=resnet56 \\
        --data_dir=runs/time_to_accuracy/data

Prints a table and writes ``<run_dir>/tta_views.json`` (or ``--output``).
"""

from __future__ import annotations

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras_preact_commands  # noqa: E402

keras_preact_commands.prepare_process()  # as the commands run: oneDNN on, TensorFlow's start-up lines off
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from evaluation_levers import run_arguments  # noqa: E402  (the sibling script's arguments)


def view_sets(max_shift: int) -> dict:
    """Name -> list of (dy, dx) shifts; every shift is taken with and without the mirror."""
    sets = {
        "flip": [(0, 0)],
        "flip+cross1": [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)],
        "flip+diag1": [(0, 0), (1, 1), (-1, -1)],
        "flip+grid1": [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)],
    }
    if max_shift >= 2:
        sets.update({
            "flip+cross2": [(0, 0), (2, 0), (-2, 0), (0, 2), (0, -2)],
            "flip+diag2": [(0, 0), (2, 2), (-2, -2)],
            "flip+cross12": [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1), (2, 0), (-2, 0), (0, 2), (0, -2)],
            "flip+grid2": [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)],
        })
    return sets


def main(argv=None) -> dict:
    parser = run_arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--max_shift", type=int, default=2, choices=(1, 2),
                        help="Largest shift tried (2: 50 views per image, 1: 18).")
    parser.add_argument("--output", help="JSON path (default <run_dir>/tta_views.json).")
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from keras_preact import registry
    from keras_preact.data import InMemorySplit
    from keras_preact.export.__main__ import restore_checkpoint
    from keras_preact.tta import view_of
    from keras_preact.hardware import cpu_description

    split = InMemorySplit.load(args.data_dir, args.split)
    model = registry.get_model(args.model, num_classes=split.info.num_classes, input_shape=(32, 32, 3))
    # The exporter's restore: newest checkpoint, its weight average if it has one, every
    # variable checked present.
    prefix = restore_checkpoint(model, args.run_dir, "auto")
    weights = "averaged" if any(n.startswith("averaged/") for n, _ in tf.train.list_variables(prefix)) else "model"

    sets = view_sets(args.max_shift)
    shifts = sorted({shift for chosen in sets.values() for shift in chosen})
    views = [(dy, dx, mirrored) for dy, dx in shifts for mirrored in (False, True)]

    @tf.function
    def all_logits(images):
        return tf.stack([tf.cast(model(view_of(images, *view), training=False), tf.float32) for view in views])

    logits, labels = [], []
    for images, batch_labels in split.eval_batches(args.batch_size):
        logits.append(all_logits(images).numpy())
        labels.append(batch_labels.numpy())
    logits, labels = np.concatenate(logits, axis=1), np.concatenate(labels)  # [views, N, classes]
    index = {view: i for i, view in enumerate(views)}

    def accuracy(chosen) -> float:
        mean = np.mean([logits[index[(dy, dx, m)]] for dy, dx in chosen for m in (False, True)], axis=0)
        return float(np.mean(mean.argmax(-1) == labels))

    cpu = cpu_description()
    rows = {"none": float(np.mean(logits[index[(0, 0, False)]].argmax(-1) == labels))}
    rows.update({name: accuracy(chosen) for name, chosen in sets.items()})
    print(f"CPU: {cpu['model']}; {prefix} ({weights} weights), {len(labels)} {args.split} images")
    print(f"{'views':<14}{'count':>6}{'accuracy':>10}")
    for name, value in rows.items():
        count = 1 if name == "none" else 2 * len(sets[name])
        print(f"{name:<14}{count:>6}{100 * value:>9.2f}%")
    result = {"cpu": cpu, "checkpoint": prefix, "weights": weights, "model": args.model, "images": len(labels),
              "accuracy": rows, "shifts": {name: chosen for name, chosen in sets.items()},
              "command": " ".join([os.path.basename(sys.executable), *sys.argv])}
    output = args.output or os.path.join(args.run_dir, "tta_views.json")
    with open(output, "w") as handle:
        json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
