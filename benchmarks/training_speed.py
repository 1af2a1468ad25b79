"""Training and inference speed of the plain vs optimised builds of the deep CIFAR ResNets.

Each case runs in its own process (so its peak resident memory is its own) and reports:
time from process start to the end of the first training step (imports + build + trace +
one step), steady-state images/s (median over timed steps), and peak RSS (the worker's own
high-water mark, ``benchmarks/process_memory.py``). "plain" is a
straightforward Keras functional build (Keras BatchNormalization, one layer per unit) trained
with Keras' ``SGD``; the optimised variants are options of the same public models, trained with
the trainer's ``FusedSGD`` (the same update in one kernel per variable, ``training/sgd.py``):

    fused              fused_bn=True                   (the default build)
    stacked            fused + stacked_stages=True
    stacked_recompute  fused + stacked_stages=True + recompute=True
    folded             (inference) keras_preact.export.fold_batch_norm of the fused build

Any variant takes suffixes (also through ``--also``, which adds them to every variant of a case):

    +bf16   dtype_policy="mixed_bfloat16"  (plain+bf16 is Keras' BN under bf16, fused+bf16 the
            fused kernel on bf16 inputs: the pair shows what the fused path buys)
    +fp16   dtype_policy="mixed_float16", with dynamic loss scaling (LossScaleOptimizer)
    +jit    the step compiled with XLA (tf.function(jit_compile=True))
    +nchw   data_format="channels_first": the network NCHW, fed NCHW images (PyTorch's layout)

``--profile`` also runs 3 steps of every case under TensorFlow's profiler (after the timed
steps, so the timing is unaffected) and prints where the op time goes: the share of convolution,
BatchNorm (fused kernels and Keras' unfused ops alike), ReLU, shortcut and other ops, and the
top op types (``benchmarks/op_profile.py``). On the torch backend (``--engine=fit`` or
``batch``) it runs one more step under PyTorch's profiler and prints the top op types by self
CPU time, with their share and call count.

Backends (``--backend``, default ``$KERAS_BACKEND`` or tensorflow): every case runs in a worker
process under that Keras backend, on whatever device the backend sees (a GPU if there is one),
and the device's name is printed first. Three engines time a step:

    step   the package's own ``tf.function`` training step (TensorFlow only; the default there)
    fit    Keras' ``model.fit`` / ``model.predict`` with the ``fit`` defaults of each backend:
           XLA-compiled on JAX, eager on PyTorch (``+jit``: ``torch.compile``), ``tf.function``
           on TensorFlow (``+jit``: XLA). The default on JAX and PyTorch; ``--engine=fit`` on
           TensorFlow gives the like-for-like row of a three-backend table.
    batch  Keras' ``model.train_on_batch`` / ``model.predict_on_batch``, one call per step (the
           same compiled step as ``fit``, without its loop and callbacks).

With ``fit`` and ``batch``, each step ends with a read of its loss (or outputs), so steps are timed one by
one, as the ``step`` engine does with ``float(step(...))``.

PyTorch baseline (``benchmarks/torch_baseline.py``: the same networks in plain ``torch.nn``, equal
parameter counts, no Keras): the variants ``torch`` (float32, NCHW), ``torch+cl`` (channels_last),
``torch+bf16`` (bfloat16 autocast, channels_last) and ``torch+compile`` (``torch.compile``, float32,
channels_last) run as worker processes of the same cases, interleaved with the package's variants:
same batch, same timed steps, same first step (process start to the end of the first step,
imports included; a torch worker imports PyTorch, not Keras), the same SGD update (lr 0.1,
momentum 0.9, no weight decay, mean cross-entropy: ``STEP_OPTIMIZER``), and ``torch.set_num_threads`` set to the CPUs TensorFlow's
thread pools use (printed). Name them in ``--variants`` or add them all with ``--torch``, which
also adds the package's default build where a case lacks it. The default build is ``fused`` under
the dtype policy the trainers' ``--dtype_policy=auto`` picks on this machine (``fused+bf16`` on a
CPU with bf16 instructions, else ``fused``); every case with both reports it as a ratio to
PyTorch's best variant, named (``vs_pytorch`` in the JSON; > 1: the package is faster). ``--also``
applies to the package's variants only. Without PyTorch installed (``pip install
"keras_preact[bench]"``) the torch rows are skipped with a one-line note. The torch rows run on
PyTorch's GPU where it sees one, else the CPU, whatever ``--backend`` computes on. PyTorch's
OpenMP threads spin at every barrier: on cores busy with other work they collapse (a 2-thread ResNet-20 step ran over 10x slower on 2
cores shared with another job, 1 thread did not), so quote PyTorch rows from an idle machine
only; ``--torch_threads`` sets their thread count.

A model named in ``--cases`` without a case in the table (ResNet-56), or a ``--modes`` mode its
cases lack (ResNet-110 inference), gets one: ``plain`` and ``fused`` at batch 128, or at each ``--batches`` (``GENERIC_CASE``).

Ratios are against the plain float32 build measured in the same run. ``--repeats=N`` runs every
case N times with the variants interleaved (ABCABC...) and reports the median; quote numbers
only from an otherwise idle machine. The CPU model and its bf16/AMX flags are printed first.
Usage:

    python benchmarks/training_speed.py                      # the full table (~25 min)
    python benchmarks/training_speed.py --cases=resnet110    # one model
    python benchmarks/training_speed.py --cases=resnet20,resnet110,resnet164 --also=bf16 --repeats=3
    python benchmarks/training_speed.py --quick              # tiny smoke run
    python benchmarks/training_speed.py --cases=resnet164 --variants=plain,fused,plain+bf16,fused+bf16 --profile
    python benchmarks/training_speed.py --backend=jax --cases=resnet164 --variants=fused,fused+bf16
    python benchmarks/training_speed.py --cases=resnet56,resnet110,resnet164 --modes=train,infer \
        --batches=128 --variants=fused --torch --repeats=3
    python benchmarks/training_speed.py --quick --variants=fused,torch,torch+cl,torch+bf16,torch+compile

Writes benchmarks/results/training_speed.json.
"""

from __future__ import annotations

import time

# A worker process reports its first step counted from here: imports + build + trace + one step.
PROCESS_START = time.perf_counter()

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import keras_preact_commands  # noqa: E402


BACKENDS = ("tensorflow", "jax", "torch")
ENGINES = ("step", "fit", "batch")


def _backend_from_argv(argv) -> str:
    """The backend a worker runs under, set before Keras is imported (Keras reads it once)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--backend="):
            return arg.split("=", 1)[1]
        if arg == "--backend" and i + 1 < len(argv):
            return argv[i + 1]
    return os.environ.get("KERAS_BACKEND", "tensorflow")


if __name__ == "__main__" and _backend_from_argv(sys.argv[1:]) in BACKENDS:
    os.environ["KERAS_BACKEND"] = _backend_from_argv(sys.argv[1:])

# As the commands run (oneDNN on, TensorFlow's start-up lines off), once the backend is chosen.
keras_preact_commands.prepare_process()

import keras_preact  # noqa: E402,F401
import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from keras_preact.hardware import cpu_description, device_description  # noqa: E402
from keras_preact.plan import UNIT_DEFAULTS  # noqa: E402
from keras_preact.registry import ModelNameError, get_model, resolve  # noqa: E402
from process_memory import peak_rss_gb, worker_failure  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
VARIANTS = {
    "plain": dict(fused_bn=False),
    "fused": dict(fused_bn=True),
    "stacked": dict(fused_bn=True, stacked_stages=True),
    "stacked_recompute": dict(fused_bn=True, stacked_stages=True, recompute=True),
    # Inference only: keras_preact.export.fold_batch_norm of the default build (conv -> BN
    # folded into the conv, the other BNs as per-channel multiply-adds).
    "folded": dict(fused_bn=True),
}
SUFFIXES = {"bf16": dict(dtype_policy="mixed_bfloat16"), "fp16": dict(dtype_policy="mixed_float16"),
            "jit": {}, "nchw": dict(data_format="channels_first")}
# (model, mode, batch, variants, timed steps)
CASES = [
    ("resnet20", "train", 128, ("plain", "fused"), 10),
    ("resnet110", "train", 128, ("plain", "fused", "stacked"), 8),
    ("resnet164", "train", 128, ("plain", "fused", "stacked", "stacked_recompute"), 6),
    ("resnet164", "infer", 128, ("plain", "fused", "stacked", "folded"), 10),
    ("resnet1001", "train", 64, ("plain", "stacked_recompute", "stacked"), 3),
    ("resnet1001", "train", 128, ("stacked_recompute",), 2),
]
QUICK_CASES = [("resnet20", "train", 32, ("plain", "fused", "stacked_recompute"), 3)]
# A model named in --cases without a case in the table (or without one of the --modes asked
# for): the plain and default builds at the paper's batch, with these timed steps.
GENERIC_CASE = {"batch": 128, "variants": ("plain", "fused"), "steps": {"train": 8, "infer": 10}}
# The update every training step times, Keras' and PyTorch's alike.
STEP_OPTIMIZER = {"lr": 0.1, "momentum": 0.9}
# The PyTorch baseline's worker script and the base name of its variants (torch, torch+cl, ...).
TORCH_WORKER = os.path.join(HERE, "torch_baseline.py")
TORCH = "torch"


def split_variant(name: str) -> tuple:
    """``"fused+bf16+jit"`` -> (model kwargs, base variant, jit_compile)."""
    base, *suffixes = name.split("+")
    if base not in VARIANTS or any(s not in SUFFIXES for s in suffixes):
        raise ValueError(f"Unknown variant {name!r}: a base of {sorted(VARIANTS)} with suffixes "
                         f"+{', +'.join(SUFFIXES)}.")
    kwargs = dict(VARIANTS[base])
    for suffix in suffixes:
        kwargs.update(SUFFIXES[suffix])
    return kwargs, base, "jit" in suffixes


def in_layout(images: np.ndarray, kwargs: dict) -> np.ndarray:
    """NHWC ``images`` in the layout of the variant's network (``+nchw``: channels_first)."""
    if kwargs.get("data_format") == "channels_first":
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    return images


def step_optimizer(base: str, kwargs: dict):
    """The SGD update every Keras case runs (``STEP_OPTIMIZER``): Keras' own ``SGD`` for the
    plain build (what a Keras user writes), the trainer's ``FusedSGD`` (the same update, one
    fused kernel per variable on TensorFlow) for the package's builds; loss scaling under fp16."""
    from keras_preact.training.sgd import FusedSGD

    sgd = keras.optimizers.SGD if base == "plain" else FusedSGD
    optimizer = sgd(STEP_OPTIMIZER["lr"], momentum=STEP_OPTIMIZER["momentum"])
    if kwargs.get("dtype_policy") == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def is_torch_variant(name: str) -> bool:
    """Whether ``name`` is a variant of the PyTorch baseline (``torch``, ``torch+cl``, ...)."""
    return name.split("+")[0] == TORCH


def torch_variants() -> tuple | None:
    """The PyTorch baseline's variant names, or None when PyTorch cannot be imported."""
    if importlib.util.find_spec("torch") is None:
        return None
    try:
        import torch_baseline  # imports PyTorch: only when it is installed
    except ImportError:  # installed but broken (a missing shared library, say)
        return None
    return tuple(torch_baseline.VARIANTS)


def package_default_variant() -> str:
    """The build a user of the package gets on this machine: ``UnitOptions``' default BatchNorm
    (fused) under the dtype policy the trainers' ``--dtype_policy=auto`` resolves to here
    (mixed_bfloat16 on CPUs with bf16 instructions and no GPU, else float32)."""
    from keras_preact.training.run_config import resolve_dtype_policy

    base = "fused" if UNIT_DEFAULTS.fused_bn else "plain"
    suffix = {"float32": "", "mixed_bfloat16": "+bf16", "mixed_float16": "+fp16"}
    return base + suffix[resolve_dtype_policy("auto", "default")]


def generic_cases(models, table, modes, batches) -> list:
    """Cases for the ``--cases`` models the table has no case of, in every mode asked for (both
    by default), and for a ``--modes`` mode a model's table cases lack."""
    added = []
    for model in models:
        have = {mode for m, mode, *_ in table if m == model}
        wanted = set(modes) - have if have else set(modes or ("train", "infer"))
        for mode in sorted(wanted, key=("train", "infer").index):
            for batch in sorted(batches or {GENERIC_CASE["batch"]}):
                added.append((model, mode, batch, GENERIC_CASE["variants"], GENERIC_CASE["steps"][mode]))
    return added


def pytorch_comparison(rows: list, default_variant: str) -> dict | None:
    """The package's default build against PyTorch's best variant in one case's rows (None when
    either is missing): images/s and first-step ratios, > 1 where the package is faster."""
    package = next((r for r in rows if r["variant"] == default_variant and "error" not in r), None)
    torch_rows = [r for r in rows if is_torch_variant(r["variant"]) and "error" not in r]
    if package is None or not torch_rows:
        return None
    best = max(torch_rows, key=lambda r: r["images_per_s"])
    return {
        "model": package["model"], "mode": package["mode"], "batch": package["batch"],
        "package_default": default_variant,
        "package_images_per_s": package["images_per_s"],
        "torch_best": best["variant"],
        "torch_best_images_per_s": best["images_per_s"],
        "default_vs_torch_best": round(package["images_per_s"] / best["images_per_s"], 3),
        "package_first_step_s": package["first_step_s"],
        "torch_best_first_step_s": best["first_step_s"],
        # Shorter is better here: < 1 where the package reaches its first step sooner.
        "first_step_ratio_vs_torch_best": round(package["first_step_s"] / best["first_step_s"], 3),
    }


def worker(spec: dict) -> dict:
    """Build, trace and time one case in this (fresh) process."""
    if spec.get("engine", "step") != "step":
        return fit_worker(spec)
    import tensorflow as tf  # the step engine is TensorFlow's
    import op_profile

    from keras_preact.export import fold_batch_norm

    keras.utils.set_random_seed(0)
    kwargs, base, jit = split_variant(spec["variant"])
    model = get_model(spec["model"], **kwargs)
    if base == "folded":
        model = fold_batch_norm(model)
    batch = spec["batch"]
    rng = np.random.RandomState(0)
    x = tf.constant(in_layout(rng.rand(batch, 32, 32, 3).astype("float32"), kwargs))
    y = tf.constant(rng.randint(0, 10, batch).astype("int32"))
    optimizer = step_optimizer(base, kwargs)

    if spec["mode"] == "train":
        # Slots before the first trace, as the trainer builds them (training/loop.py): slots
        # created inside it would make TensorFlow trace the step twice (benchmarks/first_step.py).
        optimizer.build(model.trainable_weights)

        @tf.function(jit_compile=jit)
        def step(x, y):
            with tf.GradientTape() as tape:
                logits = tf.cast(model(x, training=True), tf.float32)
                loss = tf.reduce_mean(
                    tf.keras.losses.sparse_categorical_crossentropy(y, logits, from_logits=True)
                )
                scaled = optimizer.scale_loss(loss)
            grads = tape.gradient(scaled, model.trainable_weights)
            optimizer.apply(grads, model.trainable_weights)
            return loss
    else:
        @tf.function(jit_compile=jit)
        def step(x, y):
            return tf.reduce_sum(tf.cast(model(x, training=False), tf.float32))

    float(step(x, y))
    first = time.perf_counter() - PROCESS_START
    float(step(x, y))  # one untimed warm step
    times = []
    for _ in range(spec["steps"]):
        t = time.perf_counter()
        float(step(x, y))
        times.append(time.perf_counter() - t)
    median = statistics.median(times)
    profile = op_profile.profile_steps(lambda: float(step(x, y)), model) if spec.get("profile") else None
    return {
        **spec,
        **({"profile": profile} if profile else {}),
        "params": int(sum(np.prod(w.shape) for w in model.trainable_weights)),
        "first_step_s": round(first, 2),
        "step_s_median": round(median, 4),
        "images_per_s": round(batch / median, 2),
        "peak_rss_gb": peak_rss_gb(),
    }


class _StepTimer(keras.callbacks.Callback):
    """Seconds of every batch of ``fit`` / ``predict``; each batch ends with a read of its
    result, so the device has finished it (asynchronous backends would otherwise run ahead)."""

    def __init__(self):
        super().__init__()
        self.times, self.ends = [], []

    def _begin(self, batch, logs=None):
        self._started = time.perf_counter()

    def _end(self, batch, logs=None):
        value = (logs or {}).get("loss", (logs or {}).get("outputs"))
        if value is not None:
            np.asarray(keras.ops.convert_to_numpy(keras.ops.sum(value)))
        self.ends.append(time.perf_counter())
        self.times.append(self.ends[-1] - self._started)

    on_train_batch_begin = on_predict_batch_begin = _begin
    on_train_batch_end = on_predict_batch_end = _end


def fit_worker(spec: dict) -> dict:
    """One case timed through Keras' own ``fit`` / ``predict`` (``engine="batch"``:
    ``train_on_batch`` / ``predict_on_batch``), on any backend.

    ``spec["mode"]`` is ``train``, ``infer``, or ``train+infer`` (one build timed both ways;
    the result then holds a row per mode under ``"rows"``).
    """
    keras.utils.set_random_seed(0)
    kwargs, base, jit = split_variant(spec["variant"])
    if base == "folded":
        raise ValueError("the folded variant is TensorFlow's (export); use --engine=step")
    backend = keras.backend.backend()
    model = get_model(spec["model"], **kwargs)
    batch, steps = spec["batch"], spec["steps"]
    rng = np.random.RandomState(0)
    x = in_layout(rng.rand(batch, 32, 32, 3).astype("float32"), kwargs)
    y = rng.randint(0, 10, batch).astype("int32")
    # XLA is how JAX runs a step; PyTorch and TensorFlow compile (torch.compile, XLA) on +jit.
    jit_compile = True if backend == "jax" else jit
    optimizer = step_optimizer(base, kwargs)
    model.compile(optimizer=optimizer, jit_compile=jit_compile,
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    # As keras_preact.recipes' compile does: without it, TensorFlow's fit creates the slots inside
    # its first traced step and traces the step twice (docs/performance.md, "First training step").
    optimizer.build(model.trainable_variables)
    # The same batch every step: 2 untimed steps (trace/compile + one warm step), then `steps`.
    xs, ys = np.concatenate([x] * (steps + 2)), np.concatenate([y] * (steps + 2))
    params = int(sum(np.prod(w.shape) for w in model.trainable_weights))
    rows = []
    for mode in spec["mode"].split("+"):
        timer = _StepTimer()
        if spec.get("engine") == "batch":
            run_on_batches(model, mode, x, y, steps + 2, timer)
        elif mode == "train":
            model.fit(xs, ys, batch_size=batch, epochs=1, shuffle=False, verbose=0, callbacks=[timer])
        else:
            model.predict(xs, batch_size=batch, verbose=0, callbacks=[timer])
        median = statistics.median(timer.times[2:])
        profile = (torch_op_profile(lambda: run_on_batches(model, mode, x, y, 1, _StepTimer()))
                   if spec.get("profile") and backend == "torch" else None)
        rows.append({
            **({"torch_profile": profile} if profile else {}),
            **spec, "mode": mode, "params": params,
            # From process start (imports, build, compile, one step) for a process's first mode;
            # the first batch alone (its compilation and one step) for a later one.
            "first_step_s": round(timer.ends[0] - PROCESS_START if not rows else timer.times[0], 2),
            "step_s_median": round(median, 4),
            "images_per_s": round(batch / median, 2),
            "peak_rss_gb": peak_rss_gb(),
            **device_memory(),
        })
    return rows[0] if len(rows) == 1 else {**spec, "rows": rows}


def run_on_batches(model, mode: str, x, y, count: int, timer: _StepTimer) -> None:
    """``count`` calls of ``model.train_on_batch`` (or ``predict_on_batch``), timed by ``timer``
    as ``fit``'s batches are: each ends with a read of its loss (or outputs)."""
    for batch in range(count):
        timer._begin(batch)
        if mode == "train":
            logs = {"loss": model.train_on_batch(x, y)}
        else:
            logs = {"outputs": model.predict_on_batch(x)}
        timer._end(batch, logs)


def torch_op_profile(run_step, top: int = 12) -> dict:
    """One more step under PyTorch's profiler (the torch backend): the share of the step's
    summed op time (self CPU time) of its ``top`` op types, and their call counts."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run_step()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return {"self_cpu_ms": round(total / 1000, 1),
            "top_ops": [[e.key, round(100 * e.self_cpu_time_total / total, 1), e.count]
                        for e in events[:top]]}


def device_memory() -> dict:
    """Peak accelerator memory of this process, where the backend reports it (GPU)."""
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax

            stats = jax.devices()[0].memory_stats() or {}
            peak = stats.get("peak_bytes_in_use")
        elif backend == "torch":
            import torch

            peak = torch.cuda.max_memory_allocated() if torch.cuda.is_available() else None
        else:
            peak = None
    except Exception:  # noqa: BLE001 - a report, never a failure
        peak = None
    return {"peak_device_gb": round(peak / 2**30, 3)} if peak else {}


def run_case(spec: dict, timeout: float | None = None) -> dict:
    """One case in a fresh worker process: this script under Keras, or torch_baseline.py."""
    if is_torch_variant(spec["variant"]):
        cmd = [sys.executable, TORCH_WORKER, "--worker", json.dumps(spec)]
    else:
        cmd = [sys.executable, os.path.abspath(__file__), "--backend", spec["backend"],
               "--worker", json.dumps(spec)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {**spec, "error": worker_failure(proc.returncode, proc.stderr)}
    return json.loads(lines[-1])


def _median_run(results: list) -> dict:
    """The run with the median images/s (errors win: one failure is reported)."""
    for r in results:
        if "error" in r:
            return r
    ordered = sorted(results, key=lambda r: r["images_per_s"])
    r = dict(ordered[len(ordered) // 2])
    r["images_per_s_all"] = [x["images_per_s"] for x in results]
    r["peak_rss_gb"] = max(x["peak_rss_gb"] for x in results)
    return r


def print_profiles(rows) -> None:
    """Op time by category (% of summed op time) for every profiled row, then its top op types."""
    for r in rows:
        if "torch_profile" in r:
            profile = r["torch_profile"]
            top = ", ".join(f"{name} {share:.1f}% ({count}x)" for name, share, count in profile["top_ops"])
            print(f"\n{r['model']} {r['mode']} {r['variant']} (PyTorch profiler, one step, "
                  f"{profile['self_cpu_ms']:.0f} ms of op time): {top}")
    tensorflow_rows = [r for r in rows if isinstance(r.get("profile"), dict)]
    if not tensorflow_rows:
        return
    import op_profile  # TensorFlow's profiler: only with --profile (the step engine)

    categories = op_profile.CATEGORIES
    header = f"{'model':<11}{'mode':<6}{'variant':<24}" + "".join(f"{c[:10]:>11}" for c in categories)
    print("\nop time by category (% of summed op time; ops run in parallel, so not wall time)")
    print(header)
    print("-" * len(header))
    for r in tensorflow_rows:
        shares = r["profile"]["category_share"]
        print(f"{r['model']:<11}{r['mode']:<6}{r['variant']:<24}"
              + "".join(f"{shares[c]:>11.1f}" for c in categories))
    for r in tensorflow_rows:
        top = ", ".join(f"{t} {share:.1f}%" for t, share in r["profile"]["top_op_types"])
        print(f"  {r['model']} {r['mode']} {r['variant']}: {top}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="", help="comma-separated model names to keep")
    parser.add_argument("--quick", action="store_true", help="tiny smoke run")
    parser.add_argument("--repeats", type=int, default=1,
                        help="run every case this many times, variants interleaved (ABAB...), "
                             "and report the median images/s: the machines are noisy")
    parser.add_argument("--also", default="",
                        help="suffixes added to every variant of every case, e.g. bf16,jit,bf16+jit")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps of every case (default: each case's own)")
    parser.add_argument("--batches", default="", help="comma-separated batch sizes to keep (e.g. 64)")
    parser.add_argument("--modes", default="", help="train, infer or both (default)")
    parser.add_argument("--variants", default="",
                        help="comma-separated variants replacing each case's own (e.g. plain,fused+bf16)")
    parser.add_argument("--torch", action="store_true",
                        help="add the PyTorch baseline's variants (torch, torch+cl, torch+bf16, "
                             "torch+compile) and the package's default build to every case")
    parser.add_argument("--torch_threads", type=int, default=None,
                        help="torch.set_num_threads of the torch rows (default: the CPUs "
                             "TensorFlow's thread pools use)")
    parser.add_argument("--profile", action="store_true",
                        help="profile 3 more steps of every case: op time by category and op type")
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"),
                        choices=BACKENDS, help="Keras backend of every case (default: $KERAS_BACKEND "
                        "or tensorflow)")
    parser.add_argument("--engine", choices=ENGINES, default=None,
                        help="step: the package's tf.function step (TensorFlow only, its default); "
                             "fit: Keras' model.fit/predict (any backend, the default elsewhere); "
                             "batch: Keras' train_on_batch/predict_on_batch")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "training_speed.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return

    cases = QUICK_CASES if args.quick else CASES
    try:
        batches = {int(b) for b in args.batches.split(",") if b.strip()}
    except ValueError:
        parser.error(f"argument --batches: give integers, got {args.batches!r}")
    modes = {m.strip() for m in args.modes.split(",") if m.strip()}
    if modes - {"train", "infer"}:
        parser.error(f"argument --modes: train and/or infer, got {args.modes!r}")
    if args.cases:
        try:
            keep = list(dict.fromkeys(resolve(name).name for name in args.cases.split(",") if name.strip()))
        except ModelNameError as error:
            parser.error(f"argument --cases: {error}")
        cases = [c for c in cases if c[0] in keep] + generic_cases(keep, cases, modes, batches)
        cases.sort(key=lambda c: keep.index(c[0]))  # stable: the table's order within a model
    cases = [c for c in cases if (not batches or c[2] in batches) and (not modes or c[1] in modes)]
    if args.steps is not None:
        if args.steps < 1:
            parser.error(f"argument --steps: must be >= 1, got {args.steps}")
        cases = [(m, mode, b, variants, args.steps) for m, mode, b, variants, _ in cases]
    chosen = tuple(v.strip() for v in args.variants.split(",") if v.strip())
    if chosen:
        cases = [(m, mode, b, chosen, n) for m, mode, b, _, n in cases]
    extra = [s.strip() for s in args.also.split(",") if s.strip()]
    if extra:  # the package's suffixes: not for the PyTorch baseline's variants
        cases = [(m, mode, b, tuple(variants) + tuple(f"{v}+{s}" for s in extra for v in variants
                                                      if not is_torch_variant(v)), n)
                 for m, mode, b, variants, n in cases]
    default_variant = package_default_variant()
    known_torch = torch_variants()
    if args.torch:
        added = (default_variant, *(known_torch or ()))
        cases = [(m, mode, b, tuple(variants) + tuple(v for v in added if v not in variants), n)
                 for m, mode, b, variants, n in cases]
    for _, _, _, variants, _ in cases:
        for variant in variants:
            try:
                if not is_torch_variant(variant):
                    split_variant(variant)
                elif known_torch is not None and variant not in known_torch:
                    raise ValueError(f"Unknown variant {variant!r}: the PyTorch baseline's are "
                                     f"{', '.join(known_torch)}.")
            except ValueError as error:
                parser.error(f"argument {'--variants' if chosen else '--also'}: {error}")
    torch_note = None
    if known_torch is None and (args.torch or any(is_torch_variant(v) for c in cases for v in c[3])):
        torch_note = ("PyTorch is not importable: the torch rows are skipped "
                      "(pip install \"keras_preact[bench]\").")
        cases = [(m, mode, b, tuple(v for v in variants if not is_torch_variant(v)), n)
                 for m, mode, b, variants, n in cases]
    engine = args.engine or ("step" if args.backend == "tensorflow" else "fit")
    if engine == "step" and args.backend != "tensorflow":
        parser.error(f"argument --engine: the step engine is TensorFlow's; use --engine=fit "
                     f"with --backend={args.backend}")
    if args.profile and engine == "fit" and args.backend != "torch":
        parser.error("argument --profile: TensorFlow's profiler needs --engine=step "
                     "(PyTorch's profiles the torch backend's fit and batch engines)")
    cpu = cpu_description()
    device = device_description(args.backend)
    print(f"CPU: {cpu['model']}; {os.cpu_count()} logical CPUs; flags: "
          f"{', '.join(cpu['flags']) or 'no avx512/bf16/amx'}")
    print(f"Backend: {args.backend} {device['version']} (engine: {engine}); device: {device['name']}")
    torch_threads = torch_version = None
    print(f"Package default build here: {default_variant}")
    if torch_note:
        print(torch_note)
    elif any(is_torch_variant(v) for c in cases for v in c[3]):
        import torch_baseline

        torch_version, torch_threads = (torch_baseline.torch.__version__,
                                         args.torch_threads or torch_baseline.schedulable_cpus())
        print(f"PyTorch baseline: torch {torch_version} on the CPU, torch.set_num_threads({torch_threads})")
    rows, comparisons = [], []
    header = (f"{'model':<11}{'mode':<6}{'batch':>6} {'variant':<28}{'params':>11}"
              f"{'first step s':>13}{'img/s':>9}{'x plain':>8}{'peak GB':>9}")
    print(header)
    print("-" * len(header))
    for model, mode, batch, variants, steps in cases:
        base = None
        runs = {v: [] for v in variants}
        for _ in range(max(1, args.repeats)):
            for variant in variants:
                if is_torch_variant(variant):
                    spec = dict(model=model, mode=mode, batch=batch, variant=variant, steps=steps,
                                framework="pytorch", threads=torch_threads,
                                optimizer={**STEP_OPTIMIZER, "nesterov": False, "weight_decay": 0.0})
                else:
                    spec = dict(model=model, mode=mode, batch=batch, variant=variant, steps=steps,
                                profile=args.profile, backend=args.backend, engine=engine)
                runs[variant].append(run_case(spec))
        case_rows = []
        for variant in variants:
            r = _median_run(runs[variant])
            if "error" in r:
                print(f"{model:<11}{mode:<6}{batch:>6} {variant:<28} ERROR: {r['error']}")
                rows.append(r)
                case_rows.append(r)
                continue
            if variant == "plain":
                base = r
            r["speedup_vs_plain"] = (
                round(r["images_per_s"] / base["images_per_s"], 3) if base else None
            )
            r["first_step_ratio_vs_plain"] = (
                round(r["first_step_s"] / base["first_step_s"], 3) if base else None
            )
            rows.append(r)
            case_rows.append(r)
            ratio = f"{r['speedup_vs_plain']:.2f}" if base else "-"
            print(f"{model:<11}{mode:<6}{batch:>6} {variant:<28}{r['params']:>11,}"
                  f"{r['first_step_s']:>13.1f}{r['images_per_s']:>9.1f}{ratio:>8}"
                  f"{r['peak_rss_gb']:>9.2f}", flush=True)
        comparison = pytorch_comparison(case_rows, default_variant)
        if comparison:
            comparisons.append(comparison)
            package_row = next(r for r in case_rows if r["variant"] == default_variant)
            package_row["torch_best_variant"] = comparison["torch_best"]
            package_row["vs_torch_best"] = comparison["default_vs_torch_best"]
            print(f"  -> package default ({default_variant}) = {comparison['default_vs_torch_best']:.2f}x "
                  f"the images/s of PyTorch's best ({comparison['torch_best']}, "
                  f"{comparison['torch_best_images_per_s']:.1f} img/s); first step "
                  f"{comparison['package_first_step_s']:.1f} s vs {comparison['torch_best_first_step_s']:.1f} s",
                  flush=True)
    if args.profile:
        print_profiles(rows)
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    with open(args.output, "w") as f:
        json.dump({
            "machine": {"cpus": os.cpu_count(), "cpu": cpu, "platform": platform.platform(),
                        "python": platform.python_version(), "keras": keras.__version__,
                        "backend": args.backend, "backend_version": device["version"],
                        "device": device["name"], "engine": engine,
                        "torch": torch_version, "torch_threads": torch_threads},
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "package_default_variant": default_variant,
            **({"torch_skipped": torch_note} if torch_note else {}),
            "results": rows,
            # Per case with both: the package's default build / PyTorch's best variant.
            "vs_pytorch": comparisons,
        }, f, indent=1)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
