"""Test accuracy of an exported model through its ``serving_default`` signature, TensorFlow only.

What a TF Serving user gets: this script imports TensorFlow and the standard library, never
Keras code or ``keras_preact``, loads the SavedModel the way TF Serving does (the newest numeric
version of a model directory, or the version folder given), sends every image of an image
folder's split to ``serving_default`` as encoded bytes, and compares the top class name it
returns with the image's folder name.

    python benchmarks/serving_accuracy.py saved_models/cifar10_preact_resnet56 \\
        --data_dir=/data/cifar10-jpeg --output=runs/serving_accuracy.json

The image folder is ``<data_dir>/<split>/<class name>/<image>`` (the layout of the CIFAR-10 JPEG
copy and of the package's bundled sample). Prints the counts and writes JSON where ``--output``
says. The modules the process ended with are checked: it fails if ``keras_preact`` was imported.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras_preact_commands  # noqa: E402

keras_preact_commands.set_environment_defaults()  # oneDNN on, as the commands run; Keras is not imported here

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def version_dir(path: str) -> str:
    """The folder TF Serving would load: ``path`` itself if it is a SavedModel, else its newest numeric version.

    The same rule as ``keras_preact.export.classify``, written again on purpose: this script must
    not import the package whose absence it checks.
    """
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    if not os.path.isdir(path):
        raise SystemExit(f"No such model directory: {path}")
    versions = [name for name in os.listdir(path)
                if name.isdigit() and os.path.isfile(os.path.join(path, name, "saved_model.pb"))]
    if not versions:
        raise SystemExit(f"{path} holds no SavedModel: neither saved_model.pb nor numeric version folders with one.")
    return os.path.join(path, max(versions, key=int))


def labelled_images(data_dir: str, split: str) -> list[tuple[str, str]]:
    """``(path, class name)`` for every image of ``<data_dir>/<split>/<class>/``, in a fixed order."""
    root = os.path.join(data_dir, split)
    if not os.path.isdir(root):
        raise SystemExit(f"No '{split}' split in {data_dir}: expected {root}/<class name>/<image>.")
    pairs = []
    for name in sorted(os.listdir(root)):
        folder = os.path.join(root, name)
        if os.path.isdir(folder):
            pairs += [(os.path.join(folder, f), name) for f in sorted(os.listdir(folder))
                      if f.lower().endswith(IMAGE_SUFFIXES)]
    if not pairs:
        raise SystemExit(f"No images under {root}/<class name>/ ({', '.join(IMAGE_SUFFIXES)}).")
    return pairs


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="A model directory in TF Serving layout, or one version folder.")
    parser.add_argument("--data_dir", required=True, help="Image folder: <data_dir>/<split>/<class name>/<image>.")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batch_size", type=int, default=250)
    parser.add_argument("--output", help="Write the result here as JSON (default: print only).")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error("--batch_size must be at least 1")

    import tensorflow as tf

    path = version_dir(args.model_dir)
    pairs = labelled_images(args.data_dir, args.split)
    serve = tf.saved_model.load(path).signatures["serving_default"]
    labels_file = os.path.join(path, "assets.extra", "labels.txt")
    if os.path.isfile(labels_file):
        with open(labels_file) as handle:
            known = {line.strip() for line in handle if line.strip()}
        unknown = sorted({name for _, name in pairs} - known)
        if unknown:
            raise SystemExit(f"Classes of {args.data_dir}/{args.split} the model does not know: {', '.join(unknown)}")

    correct = top5 = 0
    start = time.perf_counter()
    for first in range(0, len(pairs), args.batch_size):
        batch = pairs[first:first + args.batch_size]
        blobs = []
        for image_path, _ in batch:
            with open(image_path, "rb") as handle:
                blobs.append(handle.read())
        names = serve(image_bytes=tf.constant(blobs))["class_names"].numpy()
        for row, (_, truth) in zip(names, batch):
            predicted = [name.decode() for name in row]
            correct += predicted[0] == truth
            top5 += truth in predicted[:5]
        done = first + len(batch)
        print(f"\r{done}/{len(pairs)} images, top-1 {100 * correct / done:.2f}%", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    seconds = time.perf_counter() - start

    imported = sorted({name.split(".")[0] for name in sys.modules})
    if "keras_preact" in imported:  # the claim this script exists to check
        raise SystemExit("keras_preact was imported: this measurement must need TensorFlow alone.")
    result = {
        "model": os.path.abspath(path), "data_dir": os.path.abspath(args.data_dir), "split": args.split,
        "signature": "serving_default", "images": len(pairs), "correct": correct,
        "accuracy": correct / len(pairs), "top5_correct": top5, "top5_accuracy": top5 / len(pairs),
        "seconds": round(seconds, 1), "tensorflow": tf.__version__, "keras_preact_imported": False,
        "command": " ".join(["python", "benchmarks/serving_accuracy.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    print(f"{path} serving_default on {args.data_dir}/{args.split}: {correct}/{len(pairs)} top-1 "
          f"({100 * result['accuracy']:.2f}%), top-5 {100 * result['top5_accuracy']:.2f}%, {seconds:.0f} s; "
          f"TensorFlow {tf.__version__}, keras_preact not imported")
    if args.output:
        os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
        with open(args.output, "w") as handle:
            json.dump(result, handle, indent=2)
        print(f"JSON: {args.output}")
    return result


if __name__ == "__main__":
    main()
