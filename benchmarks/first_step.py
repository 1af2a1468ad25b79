"""Where the first training step's time goes, phase by phase, in a fresh process per case.

``benchmarks/training_speed.py`` reports one figure, process start to the end of the first
step. This splits it (each phase timed from the end of the one before):

    import      TensorFlow, Keras and keras_preact
    build       the network (``keras_preact.registry.get_model``: layers, variables)
    trace       the training step traced into a graph (``tf.function.get_concrete_function``:
                the Python forward pass and the gradient tape's backward pass; building the
                optimizer's slots, where it happens before, is counted here too)
    first_run   the first call of that graph: Grappler's graph rewrites, the function's
                instantiation, oneDNN primitive creation (each convolution shape once), the
                optimizer's slot variables, and one step's arithmetic
    step        a later step (the arithmetic alone), so ``first_run - step`` is the one-off cost

The step is the one ``training_speed.py`` times (forward, cross-entropy, gradients, SGD with
momentum), on a random batch. Variants:

    default       the package's default build (fused BatchNorm) and the trainer's optimizer,
                  ``FusedSGD`` (``training/sgd.py``: one fused momentum kernel per variable); its
                  slot variables are built before the step is traced, as the trainer does
                  (``training/loop.py``)
    keras_sgd     default build, Keras' own ``SGD`` (the same update as separate ops per
                  variable: what ``FusedSGD`` saves)
    lazy_slots    default build, slots created inside the first trace (as Keras does when the
                  optimizer is first applied in a ``tf.function``): TensorFlow then traces the
                  step twice, since a function that creates variables is traced again
    stacked       ``stacked_stages=True``: each stage's identical units as one loop body, so
                  the graph holds one unit per stage instead of all of them
    no_grappler   default build, Grappler's meta-optimizer off (what its rewrites cost at the
                  first call, and, in ``step``, what they buy)

Each (model, variant) runs ``--repeats`` times, interleaved, in its own process; the table gives
medians. The CPU model and its flags are printed first.

    python benchmarks/first_step.py                                     # ResNet-164 and 1001
    python benchmarks/first_step.py --models=resnet164 --variants=default,stacked --repeats=3

Writes ``--out`` (default ``benchmarks/results/first_step.json``).
"""

from __future__ import annotations

import time

PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

from process_memory import worker_failure  # noqa: E402  (benchmarks/, the script's folder)

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras_preact_commands  # noqa: E402

keras_preact_commands.set_environment_defaults()  # oneDNN on, as the commands run

VARIANTS = {
    "default": {"model": {}, "grappler": True, "build_slots": True, "keras_sgd": False},
    "keras_sgd": {"model": {}, "grappler": True, "build_slots": True, "keras_sgd": True},
    "lazy_slots": {"model": {}, "grappler": True, "build_slots": False, "keras_sgd": False},
    "stacked": {"model": {"stacked_stages": True}, "grappler": True, "build_slots": True,
                "keras_sgd": False},
    "no_grappler": {"model": {}, "grappler": False, "build_slots": True, "keras_sgd": False},
}
PHASES = ("import", "build", "trace", "first_run", "step")


def worker(model_name: str, variant: str, batch: int) -> dict:
    """Time the phases of one case in this process (started fresh by :func:`run_case`)."""
    import keras_preact  # noqa: F401  (first: its TensorFlow settings, e.g. oneDNN, precede TF's import)
    import numpy as np
    import tensorflow as tf
    import keras

    from keras_preact.registry import get_model
    from keras_preact.training.sgd import FusedSGD

    marks = {"import": time.perf_counter()}
    settings = VARIANTS[variant]
    if not settings["grappler"]:
        tf.config.optimizer.set_experimental_options({"disable_meta_optimizer": True})
    keras.utils.set_random_seed(0)
    model = get_model(model_name, **settings["model"])
    marks["build"] = time.perf_counter()
    rng = np.random.RandomState(0)
    x = tf.constant(rng.rand(batch, 32, 32, 3).astype("float32"))
    y = tf.constant(rng.randint(0, 10, batch).astype("int32"))
    sgd = keras.optimizers.SGD if settings["keras_sgd"] else FusedSGD
    optimizer = sgd(0.1, momentum=0.9)
    if settings["build_slots"]:
        optimizer.build(model.trainable_variables)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            logits = tf.cast(model(x, training=True), tf.float32)
            loss = tf.reduce_mean(tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True))
        grads = tape.gradient(loss, model.trainable_weights)
        optimizer.apply(grads, model.trainable_weights)
        return loss

    concrete = step.get_concrete_function(x, y)
    marks["trace"] = time.perf_counter()
    float(step(x, y))
    marks["first_run"] = time.perf_counter()
    float(step(x, y))
    marks["step"] = time.perf_counter()
    seconds, previous = {}, PROCESS_START
    for phase in PHASES:
        seconds[phase] = round(marks[phase] - previous, 3)
        previous = marks[phase]
    graph_ops = len(concrete.graph.get_operations())
    return {"model": model_name, "variant": variant, "batch": batch, "seconds": seconds,
            "first_step_s": round(marks["first_run"] - PROCESS_START, 3), "graph_ops": graph_ops}


def run_case(model_name: str, variant: str, batch: int, timeout: float) -> dict:
    done = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--worker", model_name, variant, str(batch)],
        capture_output=True, text=True, timeout=timeout,
    )
    if done.returncode != 0:
        error = worker_failure(done.returncode, done.stderr)
        return {"model": model_name, "variant": variant, "batch": batch, "error": error}
    return json.loads(done.stdout.strip().splitlines()[-1])


def median_row(runs: list) -> dict:
    ok = [r for r in runs if "error" not in r]
    if not ok:
        return runs[-1]
    row = dict(ok[0])
    row["seconds"] = {p: round(statistics.median(r["seconds"][p] for r in ok), 2) for p in PHASES}
    row["first_step_s"] = round(statistics.median(r["first_step_s"] for r in ok), 2)
    row["runs"] = [r["first_step_s"] for r in ok]
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="resnet164,resnet1001", help="Comma-separated registry names.")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"Comma-separated: {', '.join(VARIANTS)}.")
    parser.add_argument("--batch", type=int, default=128, help="Training batch size.")
    parser.add_argument("--repeats", type=int, default=1, help="Runs per case, interleaved; medians reported.")
    parser.add_argument("--timeout", type=float, default=1800, help="Seconds one case may take.")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      "first_step.json"), help="JSON output file.")
    args = parser.parse_args(argv)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"argument --variants: unknown {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    if args.repeats < 1 or args.batch < 1:
        parser.error("--repeats and --batch must be positive")

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from keras_preact.hardware import cpu_description

    cpu = cpu_description()
    print(f"CPU: {cpu['model']} ({os.cpu_count()} logical); flags: {' '.join(cpu['flags']) or 'none of note'}")
    rows = []
    for model_name in models:
        runs = {v: [] for v in variants}
        for repeat in range(args.repeats):
            for variant in variants:  # interleaved: ABAB..., so drift hits every variant alike
                result = run_case(model_name, variant, args.batch, args.timeout)
                runs[variant].append(result)
                shown = result.get("error") or f"{result['first_step_s']:.1f} s"
                print(f"  {model_name} {variant} run {repeat + 1}: {shown}", flush=True)
        rows.extend(median_row(runs[v]) for v in variants)

    print(f"\nFirst training step, batch {args.batch}, medians of {args.repeats} (seconds from process start)\n")
    print("| model | variant | " + " | ".join(PHASES) + " | first step | graph ops |")
    print("|---|---|" + "---:|" * (len(PHASES) + 2))
    for row in rows:
        if "error" in row:
            print(f"| {row['model']} | {row['variant']} | failed: {row['error']} |")
            continue
        cells = " | ".join(f"{row['seconds'][p]:.2f}" for p in PHASES)
        print(f"| {row['model']} | {row['variant']} | {cells} | **{row['first_step_s']:.1f}** | {row['graph_ops']} |")
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as handle:
        json.dump({"cpu": cpu, "logical_cpus": os.cpu_count(), "batch": args.batch, "repeats": args.repeats,
                   "rows": rows}, handle, indent=2)
    print(f"\nWrote {args.out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], sys.argv[3], int(sys.argv[4]))))
        sys.exit(0)
    sys.exit(main())
