"""The prepared GPU check: keras_preact on the JAX backend, on whatever device JAX sees.

Run by ``tools/gpu_check.sh`` (which installs Keras and the package from carried wheels first);
runs anywhere JAX does, the CPU included. It measures, each case in a fresh worker process of
``benchmarks/training_speed.py`` (Keras ``fit`` / ``predict``, XLA-compiled, one build timed for
training and then inference):

* ResNet-164 at batch 128 and ResNet-1001 at batch 64, float32 and mixed bfloat16: training
  and inference images/s, the first step (build + compile + one step) and peak device memory;
* a short ``fit`` of ResNet-20 with the ``fast`` recipe (``keras_preact.recipes``) on
  generated, learnable data: images/s and the loss falling;
* where PyTorch is installed too (the lent GPU machines have it), the PyTorch cells of
  ``benchmarks/backends_table.py`` for ResNet-164 at batch 128: Keras' PyTorch backend
  (channels_first, ``fit`` / ``predict``) and native PyTorch, float32 and bfloat16, training
  and inference, the CPU table's columns on the GPU.

It writes ``gpu_check.json`` and ``gpu_check.md`` (a table naming the device) into ``--out``.
Each case has a time limit, so a slow compile costs that case, not the whole check; the whole
check stays inside ``--budget`` seconds (default 480: the check must end within 9 minutes).

    python tools/gpu_check.py --out runs/gpu_check              # the check
    python tools/gpu_check.py --out /tmp/smoke --smoke          # tiny cases (tests, CPU)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import subprocess
import sys
import time

START = time.monotonic()
os.environ.setdefault("KERAS_BACKEND", "jax")
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

# (model, batch, timed steps) of the benchmark cases; every case in float32 and bfloat16.
CASES = [("resnet164", 128, 20), ("resnet1001", 64, 10)]
SMOKE_CASES = [("resnet20", 16, 3)]
VARIANTS = ("fused", "fused+bf16")
FIT_STEPS, FIT_BATCH = 150, 128
SMOKE_FIT_STEPS, SMOKE_FIT_BATCH = 24, 16
# backends_table.py cells run where PyTorch is installed: (column, mode, precision).
TORCH_CELLS = [(column, mode, precision) for column in ("torch_fit_nchw", "pytorch")
               for mode in ("train", "infer") for precision in ("float32", "bfloat16")]
TORCH_CELLS.append(("pytorch_bf16w", "infer", "bfloat16"))
TORCH_CASE, SMOKE_TORCH_CASE = ("resnet164", 128, 10), ("resnet20", 16, 2)


def fit_check(steps: int, batch: int) -> dict:
    """A short fit of ResNet-20 with the fast recipe on generated data (in a worker process)."""
    code = f"""
import json, time, numpy as np, keras, keras_preact
keras.utils.set_random_seed(0)
rng = np.random.default_rng(0)
n = {steps} * {batch}
y = rng.integers(0, 10, n)
x = 0.5 * rng.normal(size=(n, 32, 32, 3)).astype("float32")
x[..., 0] += (y[:, None, None] / 4.5 - 1.0).astype("float32")   # a learnable class signal
recipe = keras_preact.recipes.fast(steps={steps}, batch_size={batch})
model = keras_preact.ResNet20()
recipe.compile(model)
times, losses, means = [], [], [0.0]
class Steps(keras.callbacks.Callback):
    def on_train_batch_begin(self, b, logs=None): self.t = time.perf_counter()
    def on_train_batch_end(self, b, logs=None):
        mean = float(keras.ops.convert_to_numpy(logs["loss"]))
        losses.append((b + 1) * mean - b * means[-1]); means.append(mean)
        times.append(time.perf_counter() - self.t)
model.fit(x, y, batch_size={batch}, epochs=1, shuffle=False, verbose=0, callbacks=recipe.callbacks + [Steps()])
steady = sorted(times[2:])[len(times[2:]) // 2]
k = max(1, len(losses) // 4)   # first and last quarter of the steps
print(json.dumps({{"steps": len(losses), "batch": {batch}, "first_step_s": round(times[0], 2),
    "images_per_s": round({batch} / steady, 1), "loss_first": round(sum(losses[:k]) / k, 4),
    "loss_last": round(sum(losses[-k:]) / k, 4)}}))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": ROOT})
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode or not lines:
        return {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(lines[-1])


def torch_cells(args) -> list:
    """The PyTorch cells of backends_table.py (Keras' PyTorch backend and native PyTorch), each
    in its own process, with what is left of the budget shared among them."""
    import backends_table

    model, batch, steps = SMOKE_TORCH_CASE if args.smoke else TORCH_CASE
    rows = []
    for i, (column, mode, precision) in enumerate(TORCH_CELLS):
        left = args.budget - (time.monotonic() - START)
        spec = backends_table.cell_spec(column, mode, precision, model, batch,
                                        args.steps or steps, None)
        if left < 20:
            row = {**spec, "error": "skipped: the check's time budget is spent"}
        else:
            row = backends_table.run_cell(spec, timeout=max(20.0, left / (len(TORCH_CELLS) - i)))
        rows.append({**row, "column": column, "precision": precision})
        shown = row.get("error") or f"{row['images_per_s']:,.1f} img/s"
        print(f"  {column} {mode} {precision} ({spec['variant']}): {shown} "
              f"({time.monotonic() - START:.0f} s so far)", flush=True)
    return rows


def table(report: dict) -> str:
    """The markdown table of a report."""
    out = [f"Device: **{report['device']}** (JAX {report['jax']}, Keras {report['keras']}, "
           f"{report['date']}); host CPU: {report['cpu']}.", "",
           "| model | batch | dtype | training img/s | inference img/s | first step s | peak device GB |",
           "|---|---:|---|---:|---:|---:|---:|"]
    for row in report["benchmarks"]:
        dtype = "bfloat16" if "bf16" in row["variant"] else "float32"
        if "error" in row:
            out.append(f"| {row['model']} | {row['batch']} | {dtype} | {row['error']} | | | |")
            continue
        train, infer = row["rows"]
        memory = max(train.get("peak_device_gb", 0), infer.get("peak_device_gb", 0)) or "-"
        out.append(f"| {row['model']} | {row['batch']} | {dtype} | {train['images_per_s']:,.1f} | "
                   f"{infer['images_per_s']:,.1f} | {train['first_step_s']:.1f} | {memory} |")
    if report.get("torch"):
        out += ["", f"PyTorch {report['torch_version']} (`benchmarks/backends_table.py` cells):", "",
                "| cell | model | batch | variant | img/s | first step s | peak device GB |",
                "|---|---|---:|---|---:|---:|---:|"]
        for row in report["torch"]:
            name = f"{row['column']}, {row['mode']} {row['precision']}"
            if "error" in row:
                out.append(f"| {name} | {row['model']} | {row['batch']} | {row['variant']} | "
                           f"{row['error']} | | |")
                continue
            out.append(f"| {name} | {row['model']} | {row['batch']} | {row['variant']} | "
                       f"{row['images_per_s']:,.1f} | {row['first_step_s']:.1f} | "
                       f"{row.get('peak_device_gb', '-')} |")
    fit = report["fit"]
    out.append("")
    if "error" in fit:
        out.append(f"Short fit of ResNet-20 (fast recipe): ERROR {fit['error']}")
    else:
        out.append(f"Short fit of ResNet-20 (fast recipe, batch {fit['batch']}, {fit['steps']} steps, "
                   f"generated data): {fit['images_per_s']:,.1f} img/s, loss {fit['loss_first']} -> "
                   f"{fit['loss_last']}; first step {fit['first_step_s']} s.")
    out.append(f"\nWhole check: {report['seconds']:.0f} s.")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "runs", "gpu_check"))
    parser.add_argument("--smoke", action="store_true", help="tiny cases: a check of the check")
    parser.add_argument("--steps", type=int, default=None, help="timed steps of every case")
    parser.add_argument("--budget", type=float, default=480.0,
                        help="seconds for the whole check; each case gets a share of what is left")
    args = parser.parse_args(argv)

    import jax
    import keras

    from keras_preact.hardware import cpu_description, device_description
    import training_speed

    if keras.backend.backend() != "jax":
        parser.error(f"runs on the JAX backend; KERAS_BACKEND is {keras.backend.backend()}")
    device = device_description("jax")["name"]
    print(f"gpu_check: {device}; JAX {jax.__version__}, Keras {keras.__version__}", flush=True)
    cases = SMOKE_CASES if args.smoke else CASES
    specs = [(model, batch, args.steps or steps, variant)
             for model, batch, steps in cases for variant in VARIANTS]
    with_torch = importlib.util.find_spec("torch") is not None
    rows = []
    for i, (model, batch, steps, variant) in enumerate(specs):
        left = args.budget - (time.monotonic() - START)
        # What is left, shared by the cases still to run, the fit (counted as one case) and the
        # PyTorch cells (as three: nine short processes).
        timeout = max(30.0, left / (len(specs) - i + 1 + 3 * with_torch))
        spec = dict(model=model, mode="train+infer", batch=batch, variant=variant, steps=steps,
                    profile=False, backend="jax", engine="fit")
        row = training_speed.run_case(spec, timeout=timeout)
        rows.append(row)
        status = row.get("error") or ", ".join(
            f"{r['mode']} {r['images_per_s']:,.1f} img/s" for r in row["rows"])
        print(f"  {model} batch {batch} {variant}: {status} "
              f"({time.monotonic() - START:.0f} s so far)", flush=True)
    fit = fit_check(SMOKE_FIT_STEPS if args.smoke else FIT_STEPS,
                    SMOKE_FIT_BATCH if args.smoke else FIT_BATCH)
    print(f"  fit ResNet-20: {fit}", flush=True)
    torch_rows = torch_cells(args) if with_torch else []
    report = {
        "device": device, "jax": jax.__version__, "keras": keras.__version__,
        "cpu": cpu_description()["model"], "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "smoke": args.smoke,
        "benchmarks": rows, "fit": fit, "torch": torch_rows,
        "torch_version": next((r["torch_version"] for r in torch_rows if "torch_version" in r), None),
        "seconds": round(time.monotonic() - START, 1),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "gpu_check.json"), "w") as f:
        json.dump(report, f, indent=1)
    text = table(report)
    with open(os.path.join(args.out, "gpu_check.md"), "w") as f:
        f.write(text)
    print("\n" + text)
    print(f"wrote {args.out}/gpu_check.json and gpu_check.md")
    failed = [r for r in rows + torch_rows if "error" in r] + ([fit] if "error" in fit else [])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
