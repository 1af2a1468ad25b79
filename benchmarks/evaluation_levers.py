"""What the evaluation-time levers of the ``fast`` recipe buy, measured on a finished run.

For every checkpoint kept in a run directory, the test accuracy of the model's own weights and
of their moving average (``--weight_average``), each on the single image and with flip
test-time augmentation (``--eval_flip``), and of the average with flip and one-pixel
translations (``--eval_translate``, ten views): five numbers per checkpoint, from the same
training run, so the differences are the levers' effects alone.

    python benchmarks/evaluation_levers.py --run_dir=runs/time_to_accuracy/fast \\
        --model=resnet56 --data_dir=runs/time_to_accuracy/data

Prints a table and writes ``<run_dir>/evaluation_levers.json``.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras_preact_commands  # noqa: E402

keras_preact_commands.prepare_process()  # as the commands run: oneDNN on, TensorFlow's start-up lines off


def run_arguments(description: str) -> argparse.ArgumentParser:
    """The arguments of the scripts that evaluate a run's checkpoints on an image folder
    (this one and ``tta_views.py``)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--run_dir", required=True, help="A trainer's run directory (checkpoints/).")
    parser.add_argument("--model", required=True, help="The run's registered model name.")
    parser.add_argument("--data_dir", required=True, help="Image folder with the test split.")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch_size", type=int, default=500)
    return parser


def main(argv=None) -> dict:
    parser = run_arguments(__doc__.split("\n\n")[0])
    parser.add_argument("--last", action="store_true",
                        help="Only the run's last checkpoint (the ten-view column costs ten passes per image).")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from keras_preact import registry
    from keras_preact.data import InMemorySplit
    from keras_preact.tta import tta_logits
    from keras_preact.hardware import cpu_description
    from keras_preact.training.checkpoints import VariableSet

    split = InMemorySplit.load(args.data_dir, args.split)
    model = registry.get_model(args.model, num_classes=split.info.num_classes, input_shape=(32, 32, 3))
    prefixes = sorted({p[: -len(".index")] for p in glob.glob(os.path.join(args.run_dir, "checkpoints", "ckpt-*.index"))},
                      key=lambda p: int(p.rsplit("-", 1)[1]))
    if not prefixes:
        raise SystemExit(f"No checkpoints under {args.run_dir}/checkpoints.")
    if args.last:
        prefixes = prefixes[-1:]

    # (column, weights, test-time augmentation); the views are the trainer's and exporter's.
    columns = (("own", "model", "none"), ("own+flip", "model", "flip"), ("average", "averaged", "none"),
               ("average+flip", "averaged", "flip"), ("average+flip+translate", "averaged", "flip_translate"))
    functions = {tta: tf.function(lambda images, tta=tta: tta_logits(
        lambda views: model(views, training=False), images, tta)) for _, _, tta in columns}

    def accuracy(tta: str) -> float:
        correct = 0
        for images, labels in split.eval_batches(args.batch_size):
            predicted = tf.argmax(functions[tta](images), -1, output_type=tf.int32)
            correct += int(tf.reduce_sum(tf.cast(predicted == labels, tf.int32)))
        return correct / len(split)

    cpu = cpu_description()
    print(f"CPU: {cpu['model']}; {args.run_dir}: {len(prefixes)} checkpoints, {len(split)} {args.split} images")
    widths = {"own": 9, "own+flip": 10, "average": 9, "average+flip": 10, "average+flip+translate": 12}
    print(f"{'step':>8}{'own':>9}{'own+flip':>10}{'average':>9}{'avg+flip':>10}{'avg+fl+tr':>12}")
    rows = []
    for prefix in prefixes:
        names = {name for name, _ in tf.train.list_variables(prefix)}
        row = {"step": int(prefix.rsplit("-", 1)[1])}
        for key in ("model", "averaged"):
            if not any(n.startswith(key + "/") for n in names):
                continue
            tf.train.Checkpoint(**{key: VariableSet(model.variables)}).restore(prefix).expect_partial()
            for label, weights, tta in columns:
                if weights == key:
                    row[label] = accuracy(tta)
        rows.append(row)
        cells = "".join(f"{100 * row[k]:>{w}.2f}" if k in row else f"{'-':>{w}}" for k, w in widths.items())
        print(f"{row['step']:>8}{cells}")
    result = {"cpu": cpu, "run_dir": args.run_dir, "model": args.model, "images": len(split), "rows": rows,
              "command": " ".join([os.path.basename(sys.executable), *sys.argv])}
    with open(os.path.join(args.run_dir, "evaluation_levers.json"), "w") as handle:
        json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
