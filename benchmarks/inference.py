"""Inference speed of every deployment form of one network, in one run.

Backends, each with and without BN folding (``keras_preact.export.fold_batch_norm``):

* ``keras``        the Keras model called in a ``tf.function`` (``training=False``);
* ``saved_model``  the exported SavedModel's ``predict_images`` signature, loaded with
                   ``tf.saved_model.load`` (includes the softmax/top-k outputs);
* ``litert_<v>``   the TFLite float32, float16 and int8 models, run by LiteRT
                   (``ai_edge_litert.interpreter``, ``--threads`` threads);
* ``onnxruntime``  the ONNX export (``keras_preact.export.onnx``: Keras' ``model.export(format="onnx")``)
                   run by ONNX Runtime on CPU (``--threads`` intra-op threads). Needs
                   ``pip install "keras_preact[onnx]"``.

and the PyTorch baseline (``benchmarks/torch_baseline.py``: the same network in plain
``torch.nn``, equal parameter count, fresh weights; BN not folded), eval mode under
``torch.inference_mode()``, on the same NHWC numpy batches (converted in the call):

* ``pytorch_float32``        float32, NCHW;
* ``pytorch_channels_last``  float32, channels_last memory format;
* ``pytorch_bf16``           ``torch.autocast("cpu", dtype=torch.bfloat16)``, channels_last;

with ``torch.set_num_threads`` set to the CPUs TensorFlow's thread pools use (the Keras and
SavedModel rows'; ``--torch_threads`` sets another count). PyTorch's OpenMP threads spin at
every barrier and collapse on cores busy with other work: quote its rows from an idle machine
only. PyTorch rows need ``torch`` (``pip install "keras_preact[bench]"``) and one
of the paper's CIFAR nets in its default build (``--model resnet20`` ... ``resnet1001``, or a
``--model_file`` of one); otherwise they are skipped with a one-line note. A last table puts
side by side the best row of each of SavedModel ``predict_images``, Keras, PyTorch and ONNX
Runtime, with its throughput as a ratio to PyTorch's best.

For each: batch-1 latency (median and 90th percentile over ``--runs`` calls, after warm-up)
and batch throughput (images/s from the median time of ``--batch_runs`` calls at
``--batch``), timed in ``--rounds`` interleaved rounds. TFLite op counts of the folded and unfolded graphs are recorded too (and the ONNX ones), which shows
how much of the folding the converter already does on its own. A timing probe (the folded
TFLite float32 graph without the multiply-adds that remain of the unfoldable leading BNs; not
the network's function) measures what those cost. Prints a Markdown table and
writes everything to ``--out`` (JSON).

    python benchmarks/inference.py --model resnet20 --threads 2 --out benchmarks/results/inference.json
    python benchmarks/inference.py --model resnet110 --preprocessing cifar --batch 128 --threads 2

``--preprocessing`` is the evaluation preprocessing (``keras_preact.data.PREPROCESSINGS``: the
input size, and the SavedModel's serving preprocessing); ``--recipe``, its old name, is
refused with a one-line error naming it.

The machine is shared and noisy: only medians are reported, and numbers from one run are
comparable with each other, not across machines.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras_preact_commands  # noqa: E402

keras_preact_commands.prepare_process()  # as the commands run: oneDNN on, TensorFlow's start-up lines off

import keras_preact  # noqa: E402,F401
import keras
import numpy as np
import tensorflow as tf

from keras_preact import registry
from keras_preact.config import ResNetConfig
from keras_preact.data import PREPROCESSINGS, cifar10_sample_dir
from keras_preact.export import ChannelAffine, fold_batch_norm
from keras_preact.export import onnx as onnx_lib
from keras_preact.export.arguments import CommandParser
from keras_preact.export.exporter import image_folder_split, load_model_file
from keras_preact.export.parity import preprocess_encoded
from keras_preact.export.runtime import FROZEN_WEIGHTS_ENV, assume_frozen_weights
from keras_preact.hardware import cpu_description
from keras_preact.export.saved_model import eval_image_size, write_saved_model
from keras_preact.export.tflite import VARIANTS, TFLiteRunner, convert_model, op_counts

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # torch_baseline.py

# The PyTorch rows: row name -> torch_baseline variant (eval mode; torch.compile left out).
PYTORCH_ROWS = {"pytorch_float32": "torch", "pytorch_channels_last": "torch+cl", "pytorch_bf16": "torch+bf16"}
# Architecture arguments that change how a network computes, not which function it computes.
BUILD_OPTIONS = ("fused_bn", "stacked_stages", "recompute", "dtype_policy")
# The forms the last table compares (a row's backend, pytorch_* as one), best row of each.
COMPARED = {"saved_model": "SavedModel predict_images", "keras": "Keras", "pytorch": "PyTorch",
            "onnxruntime": "ONNX Runtime"}


def build_parser() -> argparse.ArgumentParser:
    parser = CommandParser(
        description=__doc__.split("\n\n")[0],
        renamed={"--recipe": "renamed --preprocessing (the evaluation preprocessing: "
                 f"{', '.join(sorted(PREPROCESSINGS))})"})
    parser.add_argument("--model", default="resnet20",
                        help="A keras_preact.registry model name (ignored with --model_file).")
    parser.add_argument("--model_file", help="A trained .keras file instead of a fresh network.")
    parser.add_argument("--preprocessing", default="cifar", choices=sorted(PREPROCESSINGS),
                        help="Evaluation preprocessing: the input size and the SavedModel's serving "
                             "preprocessing.")
    parser.add_argument("--batch", type=int, default=64, help="Batch size of the throughput test.")
    parser.add_argument("--runs", type=int, default=200, help="Batch-1 calls timed per backend.")
    parser.add_argument("--batch_runs", type=int, default=20, help="Batch calls timed per backend.")
    parser.add_argument("--rounds", type=int, default=5, help="Interleaved timing rounds.")
    parser.add_argument("--threads", type=int, default=2, help="LiteRT and ONNX Runtime threads.")
    parser.add_argument("--torch_threads", type=int, default=None,
                        help="PyTorch threads (default: the CPUs TensorFlow's thread pools use).")
    parser.add_argument("--calibration", type=int, default=100, help="int8 calibration images.")
    parser.add_argument("--reorder_weights", action="store_true",
                        help="Let oneDNN reorder every convolution's filter on every call, as in a process "
                             "that also trains (default: once, TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1, as the "
                             "serving command runs; keras_preact.export.runtime).")
    parser.add_argument("--out", default="benchmarks/results/inference.json", help="JSON output path.")
    return parser


def timed(fn, x, runs: int, warmup: int = 5) -> np.ndarray:
    """Seconds per call of ``fn(x)`` over ``runs`` calls, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn(x)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        fn(x)
        times[i] = time.perf_counter() - start
    return times


def without_affine(folded):
    """The folded model minus its ChannelAffine layers (the BNs that cannot be folded).

    Timing probe only: it does not compute the network's function. Its latency minus the
    folded model's is what the remaining per-channel multiply-adds cost.
    """

    def clone(layer):
        if isinstance(layer, ChannelAffine):
            return keras.layers.Identity(name=layer.name)
        return layer.__class__.from_config(layer.get_config())

    probe = keras.models.clone_model(folded, clone_function=clone)
    for layer in probe.layers:
        if layer.weights:
            layer.set_weights(folded.get_layer(layer.name).get_weights())
    return probe


def calibration_images(preprocessing: str, size: int, count: int) -> np.ndarray:
    """Real images for int8 calibration (the packaged CIFAR-10 sample) or random ones."""
    if preprocessing == "cifar":
        encoded, _ = image_folder_split(cifar10_sample_dir(), "train", count)
        return preprocess_encoded(encoded, preprocessing)
    return np.random.RandomState(0).normal(size=(count, size, size, 3)).astype(np.float32)


def is_default_architecture(model, name: str, num_classes: int) -> bool:
    """Whether ``model`` is ``registry.get_model(name, num_classes=...)``'s network, up to the
    options that change how it computes, not what (``BUILD_OPTIONS``)."""
    architecture = getattr(model, "architecture", None)
    if not isinstance(architecture, ResNetConfig):
        return False
    spec = registry.resolve(name)
    default = ResNetConfig.create(spec.units_per_stage, family=spec.family, unit=spec.unit,
                                  num_classes=num_classes)
    return architecture.replace(**{k: getattr(default, k) for k in BUILD_OPTIONS}) == default


def pytorch_rows(model, name: str, preprocessing: str, threads: int | None = None) -> tuple:
    """``({row name: predict}, None)`` of the PyTorch baseline for ``model``, or ``({}, why not)``.

    The baseline builds the paper's CIFAR nets in their default form only (tests/test_torch_baseline.py
    checks it computes the same function); any other architecture is skipped.
    """
    missing = 'PyTorch is not importable: the PyTorch rows are skipped (pip install "keras_preact[bench]").'
    if importlib.util.find_spec("torch") is None:
        return {}, missing
    try:
        import torch_baseline
    except ImportError:  # installed but broken (a missing shared library, say)
        return {}, missing

    try:
        name = registry.resolve(name).name
    except registry.ModelNameError:
        pass
    if preprocessing != "cifar" or name not in torch_baseline.TORCH_MODELS:
        return {}, (f"PyTorch rows skipped: the baseline builds the CIFAR nets "
                    f"{', '.join(torch_baseline.TORCH_MODELS)} (--preprocessing cifar), not {name}.")
    num_classes = int(model.outputs[0].shape[-1])
    if not is_default_architecture(model, name, num_classes):
        return {}, f"PyTorch rows skipped: the model is not the default build of {name}."
    torch_baseline.torch.set_num_threads(threads or torch_baseline.schedulable_cpus())
    rows = {}
    for row, variant_name in PYTORCH_ROWS.items():
        variant = torch_baseline.VARIANTS[variant_name]
        rows[row] = torch_baseline.nhwc_predictor(torch_baseline.prepare(name, variant, num_classes), variant)
    return rows, None


def best_of_each(results: dict) -> dict:
    """The best row of each ``COMPARED`` form: highest throughput and lowest batch-1 latency,
    with the throughput as a ratio to PyTorch's best (> 1: faster than PyTorch)."""
    def form(name):
        backend = name.split("/")[0]
        return "pytorch" if backend.startswith("pytorch_") else backend

    best = {}
    for key, title in COMPARED.items():
        rows = {n: r for n, r in results.items() if form(n) == key}
        if not rows:
            continue
        fastest = max(rows, key=lambda n: rows[n]["throughput_img_s"])
        quickest = min(rows, key=lambda n: rows[n]["latency_ms_median"])
        best[key] = {"title": title, "throughput_row": fastest,
                     "throughput_img_s": rows[fastest]["throughput_img_s"],
                     "latency_row": quickest, "latency_ms_median": rows[quickest]["latency_ms_median"]}
    if "pytorch" in best:
        for entry in best.values():
            entry["throughput_vs_pytorch_best"] = round(
                entry["throughput_img_s"] / best["pytorch"]["throughput_img_s"], 3)
    return best


def build_model(args, parser, size: int):
    """The ``--model_file`` model, or the registry's ``--model`` with fresh weights."""
    if args.model_file:
        try:
            return load_model_file(args.model_file)
        except (OSError, ValueError) as error:
            parser.error(f"argument --model_file: {error}")
    try:
        family = registry.model_family(args.model)
    except registry.ModelNameError as error:
        parser.error(f"argument --model: {error}")
    shape = (size, size, 3) if family == "cifar" else (None, None, 3)
    return registry.get_model(args.model, input_shape=shape)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    cpu = cpu_description()
    print(f"CPU: {cpu['model']} ({os.cpu_count()} logical); flags: {' '.join(cpu['flags']) or 'none of note'}")
    # Before the first convolution runs: TensorFlow reads the setting once.
    frozen_weights = False if args.reorder_weights else assume_frozen_weights()
    print(f"oneDNN filters reordered {'once per convolution' if frozen_weights else 'on every call'} "
          f"(TF_ENABLE_ONEDNN_OPTS={os.environ.get('TF_ENABLE_ONEDNN_OPTS', 'unset')}, "
          f"{FROZEN_WEIGHTS_ENV}={os.environ.get(FROZEN_WEIGHTS_ENV, 'unset')})", flush=True)
    try:
        size = eval_image_size(args.preprocessing)
    except ValueError as error:
        parser.error(f"argument --preprocessing: {error}")
    try:
        onnx_lib.require()
    except ImportError as error:
        parser.error(str(error))
    model = build_model(args, parser, size)
    num_classes = int(model.outputs[0].shape[-1])
    folded = fold_batch_norm(model)
    rng = np.random.RandomState(0)
    one = rng.normal(size=(1, size, size, 3)).astype(np.float32)
    batch = rng.normal(size=(args.batch, size, size, 3)).astype(np.float32)
    calibration = calibration_images(args.preprocessing, size, args.calibration)
    torch_rows, torch_note = pytorch_rows(model, model.name if args.model_file else args.model,
                                          args.preprocessing, args.torch_threads)
    if torch_note:
        print(torch_note, file=sys.stderr, flush=True)

    backends = {}  # name -> (callable, extra info)
    artefact_info = {}  # name -> file size and op counts (LiteRT and ONNX backends)
    tmp = tempfile.mkdtemp(prefix="keras_preact_bench_")
    names = [str(i) for i in range(num_classes)]
    steps = [("unfolded", model), ("folded", folded)]
    total = len(steps) * (3 + len(VARIANTS)) + 1 + len(torch_rows)
    done = 0

    def progress(what):
        nonlocal done
        done += 1
        print(f"[{done}/{total}] prepared {what}", file=sys.stderr, flush=True)

    for tag, net in steps:
        keras_fn = tf.function(lambda x, net=net: net(x, training=False))
        backends[f"keras/{tag}"] = keras_fn
        progress(f"keras/{tag}")
        path = write_saved_model(net, os.path.join(tmp, tag), preprocessing=args.preprocessing,
                                 class_names=names)
        signature = tf.saved_model.load(path).signatures["predict_images"]
        backends[f"saved_model/{tag}"] = lambda x, fn=signature: fn(images=tf.constant(x))
        progress(f"saved_model/{tag}")
        for variant in VARIANTS:
            flatbuffer = convert_model(net, variant, size, calibration if variant == "int8" else None)
            runner = TFLiteRunner(flatbuffer, num_threads=args.threads)
            backends[f"litert_{variant}/{tag}"] = runner
            artefact_info[f"litert_{variant}/{tag}"] = {"bytes": len(flatbuffer), "ops": op_counts(flatbuffer)}
            progress(f"litert_{variant}/{tag}")
        onnx_model = onnx_lib.convert_model(net, size)
        backends[f"onnxruntime/{tag}"] = onnx_lib.OnnxRunner(onnx_model, num_threads=args.threads)
        artefact_info[f"onnxruntime/{tag}"] = {"bytes": len(onnx_model), "ops": onnx_lib.op_counts(onnx_model)}
        progress(f"onnxruntime/{tag}")
    probe = convert_model(without_affine(folded), "float32", size)
    backends["litert_float32/probe_no_affine"] = TFLiteRunner(probe, num_threads=args.threads)
    artefact_info["litert_float32/probe_no_affine"] = {"bytes": len(probe), "ops": op_counts(probe)}
    progress("litert_float32/probe_no_affine (timing probe: unfoldable BNs removed)")
    for row, predict in torch_rows.items():
        backends[f"{row}/unfolded"] = predict
        progress(f"{row}/unfolded")

    # Interleaved rounds: every backend is timed a little in each round, so a burst of load
    # from other processes on the shared machine hits all backends alike, not one of them.
    latency = {name: [] for name in backends}
    per_batch = {name: [] for name in backends}
    for name, fn in backends.items():  # warm-up
        timed(fn, one, 0, warmup=5)
        timed(fn, batch, 0, warmup=2)
    rounds = max(1, min(args.rounds, args.batch_runs))
    for r in range(rounds):
        for name, fn in backends.items():
            latency[name].extend(timed(fn, one, max(1, args.runs // rounds), warmup=0))
            per_batch[name].extend(timed(fn, batch, max(1, args.batch_runs // rounds), warmup=0))
        print(f"[round {r + 1}/{rounds}] timed {len(backends)} backends", file=sys.stderr, flush=True)
    results = {}
    for name in backends:
        results[name] = {
            "latency_ms_median": 1000 * float(np.median(latency[name])),
            "latency_ms_p90": 1000 * float(np.percentile(latency[name], 90)),
            "throughput_img_s": args.batch / float(np.median(per_batch[name])),
            **artefact_info.get(name, {}),
        }
    compared = best_of_each(results)
    torch_info = {"torch": None, "torch_threads": None}
    if torch_rows:
        import torch_baseline

        torch_info = {"torch": torch_baseline.torch.__version__,
                      "torch_threads": torch_baseline.torch.get_num_threads()}

    report = {
        "model": args.model_file or args.model,
        "parameters": int(model.count_params()),
        "input": [size, size, 3],
        "batch": args.batch,
        "runs": args.runs,
        "batch_runs": args.batch_runs,
        "rounds": args.rounds,
        "threads": args.threads,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "ai_edge_litert": importlib.metadata.version("ai-edge-litert"),
        "onnxruntime": importlib.metadata.version("onnxruntime"),
        **torch_info,
        **({"pytorch_skipped": torch_note} if torch_note else {}),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "cpu": cpu,
        "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
        "filters_reordered_once": frozen_weights,
        "results": results,
        # The best row of each form; throughput_vs_pytorch_best > 1: faster than PyTorch's best.
        "best_of_each": compared,
    }
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(report, f, indent=2)

    print(f"\n{report['model']} ({report['parameters']:,} parameters), input {size}x{size}, "
          f"TF {tf.__version__}, LiteRT {report['ai_edge_litert']}, ONNX Runtime {report['onnxruntime']}, "
          f"{args.threads} threads (LiteRT, ONNX Runtime)"
          + (f", PyTorch {report['torch']} ({report['torch_threads']} threads)" if torch_rows else "")
          + f", {report['machine']}\n")
    print("| backend | BN folded | batch-1 latency ms (median) | p90 ms | "
          f"throughput img/s (batch {args.batch}) | size bytes |")
    print("|---|---|---|---|---|---|")
    for name, row in results.items():
        backend, tag = name.split("/")
        folded_column = {"folded": "yes", "unfolded": "no"}.get(tag, "probe: no leading BNs")
        print(f"| {backend} | {folded_column} | {row['latency_ms_median']:.3f} | "
              f"{row['latency_ms_p90']:.3f} | {row['throughput_img_s']:.0f} | {row.get('bytes', '-')} |")
    for variant in VARIANTS:
        a, b = artefact_info[f"litert_{variant}/unfolded"]["ops"], artefact_info[f"litert_{variant}/folded"]["ops"]
        print(f"\nTFLite {variant} ops unfolded: {a}\nTFLite {variant} ops folded:   {b}"
              + ("  (identical)" if a == b else ""))
    a, b = artefact_info["onnxruntime/unfolded"]["ops"], artefact_info["onnxruntime/folded"]["ops"]
    print(f"\nONNX ops unfolded: {a}\nONNX ops folded:   {b}")
    probe_row, folded_row = results["litert_float32/probe_no_affine"], results["litert_float32/folded"]
    print(f"\nCost of the BNs no converter can fold (TFLite float32, folded minus probe): "
          f"{folded_row['latency_ms_median'] - probe_row['latency_ms_median']:+.3f} ms batch-1 latency, "
          f"throughput {folded_row['throughput_img_s']:.0f} vs {probe_row['throughput_img_s']:.0f} img/s; "
          f"probe ops {artefact_info['litert_float32/probe_no_affine']['ops']}")
    print("\nBest row of each form (throughput and batch-1 latency may come from different rows):\n")
    print(f"| form | throughput img/s (batch {args.batch}) | row | x PyTorch's best | "
          "batch-1 latency ms | row |")
    print("|---|---|---|---|---|---|")
    for entry in compared.values():
        ratio = entry.get("throughput_vs_pytorch_best")
        print(f"| {entry['title']} | {entry['throughput_img_s']:.0f} | {entry['throughput_row']} | "
              f"{f'{ratio:.2f}' if ratio is not None else '-'} | {entry['latency_ms_median']:.3f} | "
              f"{entry['latency_row']} |")
    if torch_note:
        print(f"\n{torch_note}")
    print(f"\nJSON: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
