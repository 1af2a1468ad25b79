"""Input-pipeline throughput: keras_preact.data against the pipelines a user would otherwise write.

    python benchmarks/input_pipeline.py [--data ../shared/data/cifar10-jpeg] [--repeats 3]

Cases, each timed in the same run (images/second, median over ``--repeats`` fresh passes,
the first batch of each pass excluded as warm-up):

- CIFAR training batches (32x32 JPEGs from the real CIFAR-10 copy, batch 128):
  keras_preact (pad 4, crop, flip, normalise) vs. ``keras.utils.image_dataset_from_directory``
  + Keras preprocessing layers (ZeroPadding2D, RandomCrop, RandomFlip, Normalization), vs.
  the same loader + keras-cv ``RandomCropAndResize`` (when keras-cv is importable).
- ImageNet-style training batches (224x224 from ~500x375 JPEGs, made by upscaling CIFAR
  images into a temporary folder, batch 64): keras_preact ``inception`` and ``scale`` vs.
  ``image_dataset_from_directory(image_size=256)`` + RandomCrop/RandomFlip/Normalization,
  vs. the same loader + keras-cv ``RandomCropAndResize`` (area 8-100%, aspect 3/4-4/3).
- A CIFAR ResNet-110 training step (batch 128) on this machine, to check the CIFAR pipeline
  is not the bottleneck (``--skip-model`` to leave it out).

Prints a table and writes JSON (``--out``). Needs only the CIFAR-10 JPEG tarball.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tarfile
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras_preact_commands  # noqa: E402

keras_preact_commands.prepare_process()  # as the commands run: oneDNN on, TensorFlow's start-up lines off

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import keras  # noqa: E402

from keras_preact.data import CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, build_dataset  # noqa: E402
from keras_preact.registry import get_model  # noqa: E402

try:
    import keras_cv
except ImportError:  # an optional extra: pip install keras_preact[bench]
    keras_cv = None

IMAGENET_SIZES = ((500, 375), (375, 500), (500, 333), (400, 350))  # (width, height), ImageNet-like


def extract_cifar(tarball: str, dest: str, per_class: int) -> str:
    """Extract the first ``per_class`` images of each class of the training tarball."""
    counts = {}
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            parts = member.name.strip("./").split("/")
            if not (member.isfile() and len(parts) == 3 and parts[2].endswith(".jpg")):
                continue
            if counts.get(parts[1], 0) >= per_class:
                continue
            counts[parts[1]] = counts.get(parts[1], 0) + 1
            os.makedirs(os.path.join(dest, "train", parts[1]), exist_ok=True)
            with open(os.path.join(dest, "train", parts[1], parts[2]), "wb") as f:
                f.write(tar.extractfile(member).read())
    return dest


def make_large_jpegs(cifar_root: str, dest: str, per_class: int) -> str:
    """ImageNet-like JPEGs: CIFAR images upscaled (bicubic) to ~500x375, quality 90."""
    rng = np.random.default_rng(0)
    split = os.path.join(cifar_root, "train")
    for cls in sorted(os.listdir(split)):
        os.makedirs(os.path.join(dest, "train", cls), exist_ok=True)
        for name in sorted(os.listdir(os.path.join(split, cls)))[:per_class]:
            size = IMAGENET_SIZES[rng.integers(len(IMAGENET_SIZES))]
            image = Image.open(os.path.join(split, cls, name)).convert("RGB").resize(size, Image.BICUBIC)
            image.save(os.path.join(dest, "train", cls, name), quality=90)
    return dest


def keras_loader(root: str, size: int, batch_size: int):
    return keras.utils.image_dataset_from_directory(
        os.path.join(root, "train"), image_size=(size, size), batch_size=batch_size, shuffle=True, seed=0, verbose=False
    )


def with_layers(ds, layers):
    aug = keras.Sequential(layers)
    return ds.map(lambda x, y: (aug(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE
    )


def normalization(mean, std):
    return keras.layers.Normalization(mean=list(mean), variance=[s * s for s in std])


def pipelines(cifar_root: str, large_root: str):
    """``{case: {pipeline name: (batch size, dataset factory or None if unavailable)}}``."""
    cifar_batch, large_batch = 128, 64
    cifar = {
        "keras_preact": lambda: build_dataset(cifar_root, "train", batch_size=cifar_batch, training=True, seed=0)[0],
        "keras layers": lambda: with_layers(
            keras_loader(cifar_root, 32, cifar_batch),
            [normalization(CIFAR_MEAN, CIFAR_STD), keras.layers.ZeroPadding2D(4), keras.layers.RandomCrop(32, 32),
             keras.layers.RandomFlip("horizontal")],
        ),
        "keras-cv": None,
    }
    large = {
        "keras_preact inception": lambda: build_dataset(
            large_root, "train", batch_size=large_batch, training=True, augment="inception", seed=0
        )[0],
        "keras_preact scale": lambda: build_dataset(
            large_root, "train", batch_size=large_batch, training=True, augment="scale", seed=0
        )[0],
        "keras layers": lambda: with_layers(
            keras_loader(large_root, 256, large_batch),
            [keras.layers.RandomCrop(224, 224), keras.layers.RandomFlip("horizontal"),
             normalization(IMAGENET_MEAN, IMAGENET_STD)],
        ),
        "keras-cv": None,
    }
    if keras_cv is not None:
        def cv_layers(size):
            return [keras_cv.layers.RandomCropAndResize(
                target_size=(size, size), crop_area_factor=(0.08, 1.0), aspect_ratio_factor=(3 / 4, 4 / 3)),
                keras.layers.RandomFlip("horizontal")]

        cifar["keras-cv"] = lambda: with_layers(
            keras_loader(cifar_root, 32, cifar_batch), cv_layers(32) + [normalization(CIFAR_MEAN, CIFAR_STD)]
        )
        large["keras-cv"] = lambda: with_layers(
            keras_loader(large_root, 256, large_batch), cv_layers(224) + [normalization(IMAGENET_MEAN, IMAGENET_STD)]
        )
    return {"cifar (32x32, batch 128)": cifar, "imagenet-style (224x224, batch 64)": large}


def images_per_second(make_dataset, max_images: int, repeats: int) -> tuple:
    """Wall-clock images/s per pass, and CPU milliseconds (all threads) per image per pass.

    The CPU cost does not depend on what else the (shared) machine is running, so it is
    the steadier way to compare pipelines; images/s is what a trainer sees.
    """
    rates, cpu_ms = [], []
    for _ in range(repeats):
        it = iter(make_dataset())
        next(it)  # warm-up: tracing, thread pools, first prefetch
        n, start, cpu_start = 0, time.perf_counter(), time.process_time()
        for x, _ in it:
            n += int(x.shape[0])
            if n >= max_images:
                break
        rates.append(n / (time.perf_counter() - start))
        cpu_ms.append(1000 * (time.process_time() - cpu_start) / n)
    return rates, cpu_ms


def resnet110_step(batch_size: int = 128, steps: int = 3) -> dict:
    model = get_model("resnet110")
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = np.random.default_rng(0).normal(size=(batch_size, 32, 32, 3)).astype(np.float32)
    y = np.zeros(batch_size, np.int32)
    model.train_on_batch(x, y)  # compile + first step
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - start)
    step = statistics.median(times)
    return {"batch_size": batch_size, "step_seconds": step, "images_per_second": batch_size / step, "runs": times}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data", "cifar10-jpeg"),
                        help="folder holding cifar10-train.tar.gz (the JPEG copy of CIFAR-10)")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results", "input_pipeline.json"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cifar-per-class", type=int, default=500, help="CIFAR images per class (10 classes)")
    parser.add_argument("--large-per-class", type=int, default=60, help="ImageNet-style JPEGs per class")
    parser.add_argument("--skip-model", action="store_true", help="do not time the ResNet-110 training step")
    args = parser.parse_args(argv)

    tarball = os.path.join(args.data, "cifar10-train.tar.gz")
    if not os.path.isfile(tarball):
        raise SystemExit(f"{tarball} not found: pass --data <folder with cifar10-train.tar.gz>.")
    start = time.time()
    results, table = [], []
    with tempfile.TemporaryDirectory(prefix="kp_bench_") as tmp:
        cifar_root = extract_cifar(tarball, os.path.join(tmp, "cifar"), args.cifar_per_class)
        large_root = make_large_jpegs(cifar_root, os.path.join(tmp, "large"), args.large_per_class)
        print(f"data ready in {time.time() - start:.0f} s: {10 * args.cifar_per_class} CIFAR JPEGs, "
              f"{10 * args.large_per_class} ImageNet-style JPEGs", flush=True)
        for case, entries in pipelines(cifar_root, large_root).items():
            max_images = 10 * (args.cifar_per_class if case.startswith("cifar") else args.large_per_class)
            for name, factory in entries.items():
                if factory is None:
                    results.append({"case": case, "pipeline": name, "status": "not installed"})
                    table.append((case, name, "not installed", "", ""))
                    continue
                rates, cpu_ms = images_per_second(factory, max_images, args.repeats)
                median, cpu = statistics.median(rates), statistics.median(cpu_ms)
                results.append({"case": case, "pipeline": name, "images_per_second": median, "runs": rates,
                                "cpu_ms_per_image": cpu, "cpu_ms_runs": cpu_ms})
                table.append((case, name, f"{median:,.0f}", f"{cpu:.2f}", ""))
                print(f"  {case:36s} {name:24s} {median:8,.0f} img/s {cpu:6.2f} CPU ms/img", flush=True)
    summary = {}
    for case in {r["case"] for r in results}:
        rows = [r for r in results if r["case"] == case and "images_per_second" in r]
        ours = max((r for r in rows if r["pipeline"].startswith("keras_preact")), key=lambda r: r["images_per_second"])
        base = [r for r in rows if not r["pipeline"].startswith("keras_preact")]
        fastest = max(base, key=lambda r: r["images_per_second"])
        cheapest = min(base, key=lambda r: r["cpu_ms_per_image"])
        summary[case] = {"best keras_preact": ours["pipeline"], "fastest baseline": fastest["pipeline"],
                         "speedup": ours["images_per_second"] / fastest["images_per_second"],
                         "cpu_speedup_vs_cheapest_baseline": cheapest["cpu_ms_per_image"] / ours["cpu_ms_per_image"]}
        for i, row in enumerate(table):
            if row[0] == case and row[1].startswith("keras_preact"):
                r = next(r for r in rows if r["pipeline"] == row[1])
                table[i] = (*row[:4], f"{r['images_per_second'] / fastest['images_per_second']:.2f}x wall, "
                            f"{cheapest['cpu_ms_per_image'] / r['cpu_ms_per_image']:.2f}x CPU")
    model = None if args.skip_model else resnet110_step()

    print(f"\n{'case':36s} {'pipeline':24s} {'img/s':>8s} {'CPU ms/img':>10s}  speedup vs best baseline")
    for case, name, rate, cpu, speed in table:
        print(f"{case:36s} {name:24s} {rate:>8s} {cpu:>10s}  {speed}")
    if model:
        cifar_rate = next(r["images_per_second"] for r in results
                          if r["case"].startswith("cifar") and r["pipeline"] == "keras_preact")
        model["pipeline_seconds_per_batch"] = model["batch_size"] / cifar_rate
        model["pipeline_share_of_step"] = model["pipeline_seconds_per_batch"] / model["step_seconds"]
        print(f"\nResNet-110 training step, batch 128: {model['step_seconds']:.2f} s "
              f"({model['images_per_second']:.0f} img/s); the CIFAR pipeline makes a batch in "
              f"{model['pipeline_seconds_per_batch'] * 1000:.0f} ms = {100 * model['pipeline_share_of_step']:.1f}% "
              f"of a step.")
    report = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "tensorflow": tf.__version__, "keras": keras.__version__,
                    "keras_cv": keras_cv.__version__ if keras_cv else "not installed",
                    "load_average_at_end": os.getloadavg()},
        "config": vars(args),
        "results": results,
        "summary": summary,
        "resnet110_step": model,
        "wall_seconds": time.time() - start,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2, default=str)
    print(f"\nwrote {args.out} ({report['wall_seconds']:.0f} s)")


if __name__ == "__main__":
    main()
