"""What the evaluation-time levers of the ``fast`` recipe buy, measured on a finished run.

For every checkpoint kept in a run directory, the test accuracy of the model's own weights and
of their moving average (``--weight_average``), each on the single image and with flip
test-time augmentation (``--eval_flip``): four numbers per checkpoint, from the same training
run, so the differences are the levers' effects alone.

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


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run_dir", required=True, help="A trainer's run directory (checkpoints/).")
    parser.add_argument("--model", required=True, help="The run's registered model name.")
    parser.add_argument("--data_dir", required=True, help="Image folder with the test split.")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch_size", type=int, default=500)
    args = parser.parse_args(argv)

    import tensorflow as tf

    from keras_preact import registry
    from keras_preact.data import InMemorySplit
    from keras_preact.hardware import cpu_description
    from keras_preact.training.checkpoints import VariableSet

    split = InMemorySplit.load(args.data_dir, args.split)
    model = registry.get_model(args.model, num_classes=split.info.num_classes, input_shape=(32, 32, 3))
    prefixes = sorted({p[: -len(".index")] for p in glob.glob(os.path.join(args.run_dir, "checkpoints", "ckpt-*.index"))},
                      key=lambda p: int(p.rsplit("-", 1)[1]))
    if not prefixes:
        raise SystemExit(f"No checkpoints under {args.run_dir}/checkpoints.")

    @tf.function
    def logits(images, flip):
        out = model(images, training=False)
        if flip:
            out = (out + model(tf.reverse(images, axis=[2]), training=False)) / 2.0
        return out

    def accuracy(flip: bool) -> float:
        correct = 0
        for images, labels in split.eval_batches(args.batch_size):
            predicted = tf.argmax(logits(images, flip), -1, output_type=tf.int32)
            correct += int(tf.reduce_sum(tf.cast(predicted == labels, tf.int32)))
        return correct / len(split)

    cpu = cpu_description()
    print(f"CPU: {cpu['model']}; {args.run_dir}: {len(prefixes)} checkpoints, {len(split)} {args.split} images")
    print(f"{'step':>8}{'own':>9}{'own+flip':>10}{'average':>9}{'avg+flip':>10}")
    rows = []
    for prefix in prefixes:
        names = {name for name, _ in tf.train.list_variables(prefix)}
        row = {"step": int(prefix.rsplit("-", 1)[1])}
        for key in ("model", "averaged"):
            if not any(n.startswith(key + "/") for n in names):
                continue
            tf.train.Checkpoint(**{key: VariableSet(model.variables)}).restore(prefix).expect_partial()
            label = "own" if key == "model" else "average"
            row[label] = accuracy(False)
            row[label + "+flip"] = accuracy(True)
        rows.append(row)
        cells = "".join(f"{100 * row[k]:>{w}.2f}" if k in row else f"{'-':>{w}}"
                        for k, w in (("own", 9), ("own+flip", 10), ("average", 9), ("average+flip", 10)))
        print(f"{row['step']:>8}{cells}")
    result = {"cpu": cpu, "run_dir": args.run_dir, "model": args.model, "images": len(split), "rows": rows,
              "command": " ".join([os.path.basename(sys.executable), *sys.argv])}
    with open(os.path.join(args.run_dir, "evaluation_levers.json"), "w") as handle:
        json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
