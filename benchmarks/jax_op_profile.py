"""Where JAX's CPU training step loses to TensorFlow's: each convolution and BatchNorm of a
ResNet-164 step, forward and backward, timed alone in XLA:CPU (JAX) and in TensorFlow.

A ResNet-164 step is 166 convolutions and 163 BatchNorm-ReLUs of a few distinct shapes. This
times every distinct one at the network's batch, once jit-compiled in JAX
(``jax.lax.conv_general_dilated``; BN as ``keras_preact.norm.batch_norm_forward`` computes it on
JAX) and once as a ``tf.function`` in TensorFlow (``tf.nn.conv2d``; BN by TensorFlow's fused
kernel), each framework in its own worker process, then weighs each op by how many times a step
runs it. The table gives, per op and in all, the milliseconds per step each framework spends:

    forward     y = op(x)
    backward    the gradients of sum(y * g) with respect to x and the op's parameters (the
                data and weight gradients of a training step)

    python benchmarks/jax_op_profile.py                   # ResNet-164, batch 128, float32
    python benchmarks/jax_op_profile.py --batch=32 --repeats=5
    XLA_FLAGS=--xla_cpu_use_onednn=true python benchmarks/jax_op_profile.py   # an XLA setting

The sums leave out what a whole step adds (the loss, the optimizer, XLA's fusion across ops,
TensorFlow's graph scheduling), so they are a breakdown, not the step time; the step times are
``benchmarks/backends_table.py``'s. The CPU model and its flags are printed first. Writes
``--output`` (default ``runs/jax_op_profile.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

FRAMEWORKS = ("jax", "tensorflow")
WIDTHS, SIZES, UNITS_PER_STAGE = (16, 32, 64), (32, 16, 8), 18  # ResNet-164 ((164 - 2) / 9)


def step_ops(batch: int) -> list:
    """ResNet-164's ops: (name, kind, input shape NHWC, kernel shape or None, count per step).

    Each bottleneck unit is BN-ReLU, 1x1 (4w -> w), BN-ReLU, 3x3 (w -> w), BN-ReLU, 1x1 (w -> 4w);
    the stride-2 and projection convs of a stage's first unit are left out (3 per network)."""
    ops = [("stem 3x3, 3->16", "conv", (batch, 32, 32, 3), (3, 3, 3, 16), 1)]
    for width, size in zip(WIDTHS, SIZES):
        n = UNITS_PER_STAGE
        ops += [
            (f"1x1 {4 * width}->{width} @{size}", "conv", (batch, size, size, 4 * width), (1, 1, 4 * width, width), n),
            (f"3x3 {width}->{width} @{size}", "conv", (batch, size, size, width), (3, 3, width, width), n),
            (f"1x1 {width}->{4 * width} @{size}", "conv", (batch, size, size, width), (1, 1, width, 4 * width), n),
            (f"BN-ReLU {4 * width} @{size}", "bn", (batch, size, size, 4 * width), None, n),
            (f"BN-ReLU {width} @{size}", "bn", (batch, size, size, width), None, 2 * n),
        ]
    return ops


def _median_ms(fn, repeats: int) -> float:
    fn()  # compile / trace, and one warm call
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return round(1000 * statistics.median(times), 3)


def jax_worker(ops: list, repeats: int) -> dict:
    os.environ["KERAS_BACKEND"] = "jax"
    import jax
    import jax.numpy as jnp

    from keras_preact.norm import batch_norm_forward

    def conv(x, k):
        return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME",
                                            dimension_numbers=("NHWC", "HWIO", "NHWC"))

    def bn_relu(x, gamma, beta):
        y, _, _ = batch_norm_forward(x, gamma, beta, None, None, 1e-5, True)
        return jax.nn.relu(y)

    key = jax.random.PRNGKey(0)
    out = {}
    for name, kind, shape, kernel, _ in ops:
        x = jax.random.normal(key, shape)
        params = ((jax.random.normal(key, kernel) * 0.1,) if kind == "conv"
                  else (jnp.ones(shape[-1]), jnp.zeros(shape[-1])))
        f = conv if kind == "conv" else bn_relu
        g = jax.random.normal(key, jax.eval_shape(f, x, *params).shape)
        forward = jax.jit(f)
        backward = jax.jit(jax.grad(lambda x, *p: jnp.sum(f(x, *p) * g), argnums=tuple(range(1 + len(params)))))
        out[name] = {
            "forward_ms": _median_ms(lambda: forward(x, *params).block_until_ready(), repeats),
            "backward_ms": _median_ms(lambda: jax.block_until_ready(backward(x, *params)), repeats),
        }
    return {"version": jax.__version__, "xla_flags": os.environ.get("XLA_FLAGS", ""), "ops": out}


def tensorflow_worker(ops: list, repeats: int) -> dict:
    import keras_preact_commands

    keras_preact_commands.set_environment_defaults()  # oneDNN on, as the package's commands run
    import tensorflow as tf

    def conv(x, k):
        return tf.nn.conv2d(x, k, 1, "SAME")

    def bn_relu(x, gamma, beta):
        y, _, _ = tf.compat.v1.nn.fused_batch_norm(x, gamma, beta, epsilon=1e-5, is_training=True)
        return tf.nn.relu(y)

    out = {}
    for name, kind, shape, kernel, _ in ops:
        x = tf.random.normal(shape, seed=0)
        params = ((tf.random.normal(kernel, seed=0) * 0.1,) if kind == "conv"
                  else (tf.ones(shape[-1]), tf.zeros(shape[-1])))
        f = conv if kind == "conv" else bn_relu
        g = tf.random.normal(f(x, *params).shape, seed=1)
        forward = tf.function(f)

        @tf.function
        def backward(x, *p):
            with tf.GradientTape() as tape:
                tape.watch([x, *p])
                loss = tf.reduce_sum(f(x, *p) * g)
            return tape.gradient(loss, [x, *p])

        out[name] = {
            "forward_ms": _median_ms(lambda: forward(x, *params).numpy(), repeats),
            "backward_ms": _median_ms(lambda: [t.numpy() for t in backward(x, *params)], repeats),
        }
    return {"version": tf.__version__, "ops": out}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per op (median)")
    parser.add_argument("--output", default=os.path.join("runs", "jax_op_profile.json"))
    parser.add_argument("--worker", choices=FRAMEWORKS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.batch < 1 or args.repeats < 1:
        parser.error("--batch and --repeats must be >= 1")
    ops = step_ops(args.batch)
    if args.worker:
        run = jax_worker if args.worker == "jax" else tensorflow_worker
        print(json.dumps(run(ops, args.repeats)), flush=True)
        return

    from keras_preact.hardware import cpu_description

    cpu = cpu_description()
    print(f"CPU: {cpu['model']}; {os.cpu_count()} logical CPUs; flags: "
          f"{', '.join(cpu['flags']) or 'no avx512/bf16/amx'}", flush=True)
    results = {}
    for framework in FRAMEWORKS:
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), f"--worker={framework}",
                               f"--batch={args.batch}", f"--repeats={args.repeats}"],
                              capture_output=True, text=True)
        lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
        if proc.returncode or not lines:
            sys.exit(f"jax_op_profile: the {framework} worker failed: "
                     f"{(proc.stderr.strip().splitlines() or ['no output'])[-1]}")
        results[framework] = json.loads(lines[-1])
    print(f"ResNet-164's ops at batch {args.batch}, float32; JAX {results['jax']['version']} "
          f"(XLA_FLAGS={results['jax']['xla_flags'] or 'none'}), TensorFlow "
          f"{results['tensorflow']['version']}; ms per step (per call x calls per step)\n")
    header = ("| op | calls | JAX fwd | TF fwd | JAX bwd | TF bwd | JAX / TF |\n"
              "|---|---:|---:|---:|---:|---:|---:|")
    lines, totals = [header], {f: {"forward_ms": 0.0, "backward_ms": 0.0} for f in FRAMEWORKS}
    by_kind = {(f, k): 0.0 for f in FRAMEWORKS for k in ("conv", "bn")}
    for name, kind, _, _, count in ops:
        cells = {f: results[f]["ops"][name] for f in FRAMEWORKS}
        for f in FRAMEWORKS:
            for phase in ("forward_ms", "backward_ms"):
                totals[f][phase] += count * cells[f][phase]
                by_kind[(f, kind)] += count * cells[f][phase]
        jax_ms = cells["jax"]["forward_ms"] + cells["jax"]["backward_ms"]
        tf_ms = cells["tensorflow"]["forward_ms"] + cells["tensorflow"]["backward_ms"]
        lines.append(f"| {name} | {count} | {count * cells['jax']['forward_ms']:.0f} | "
                     f"{count * cells['tensorflow']['forward_ms']:.0f} | "
                     f"{count * cells['jax']['backward_ms']:.0f} | "
                     f"{count * cells['tensorflow']['backward_ms']:.0f} | {jax_ms / tf_ms:.2f} |")
    jax_all = sum(totals["jax"].values())
    tf_all = sum(totals["tensorflow"].values())
    lines.append(f"| **all** | | {totals['jax']['forward_ms']:.0f} | {totals['tensorflow']['forward_ms']:.0f} | "
                 f"{totals['jax']['backward_ms']:.0f} | {totals['tensorflow']['backward_ms']:.0f} | "
                 f"{jax_all / tf_all:.2f} |")
    print("\n".join(lines))
    summary = {f"{f}_{k}_ms": round(v, 1) for (f, k), v in by_kind.items()}
    print("\nms per step by kind: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    output = os.path.abspath(args.output)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output, "w") as f:
        json.dump({"cpu": cpu, "batch": args.batch, "repeats": args.repeats,
                   "date": time.strftime("%Y-%m-%d %H:%M:%S"), "ops": [
                       {"name": n, "kind": k, "shape": s, "kernel": w, "calls_per_step": c}
                       for n, k, s, w, c in ops],
                   "results": results, "totals_ms": totals, "by_kind_ms": summary}, f, indent=1)
    print(f"\nwrote {output}")


if __name__ == "__main__":
    main()
