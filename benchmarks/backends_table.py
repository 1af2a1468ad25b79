"""One table across backends: a network's training and inference speed in float32 and bfloat16,
on every Keras backend and in native PyTorch, measured in one run.

Columns (``--columns``; by default every one whose library is installed):

    tf_step         TensorFlow, the package's own tf.function step (the trainers' engine)
    tf_fit          TensorFlow, Keras' model.fit / predict
    jax_fit         JAX, model.fit / predict (XLA-compiled)
    torch_fit       Keras' PyTorch backend, model.fit / predict, NHWC network and images
    torch_fit_nchw  the same, channels_first network fed NCHW images (PyTorch's layout)
    torch_batch     PyTorch backend, model.train_on_batch / predict_on_batch, NCHW
    pytorch         native PyTorch (benchmarks/torch_baseline.py): channels_last memory, bf16
                    through torch.autocast
    pytorch_bf16w   native PyTorch, inference only: the network itself in bfloat16 (no autocast)
    tf_folded       TensorFlow, inference only: the BN-folded network SavedModels serve
                    (keras_preact.export.fold_batch_norm), run by the package's step

Rows: training and inference, float32 and bfloat16 (Keras' ``mixed_bfloat16`` policy). Every
cell is a fresh worker process of ``benchmarks/training_speed.py`` (or the PyTorch baseline):
imports, build, first step, then timed steps, each ending with a read of its result. The cells
run ``--repeats`` times, interleaved (every cell once, then again), and each cell reports its
median images/s, its peak resident memory (the worker's own high-water mark) and its first step
from process start. The CPU model and its flags, the backends' versions and the commands are
printed first and written to the JSON.

    python benchmarks/backends_table.py                               # ResNet-164, batch 128
    python benchmarks/backends_table.py --repeats=3 --output=benchmarks/results/backends_table.json
    python benchmarks/backends_table.py --columns=torch_fit,torch_fit_nchw,pytorch --modes=train
    python benchmarks/backends_table.py --model=resnet20 --batch=16 --steps=2 --repeats=1  # smoke

Quote numbers from an otherwise idle machine only (PyTorch's OpenMP threads collapse on busy
cores). Writes ``--output`` (default ``runs/backends_table.json``) and the Markdown table beside
it (``.md``).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)

from keras_preact.hardware import cpu_description  # noqa: E402 (imports no backend)
from process_memory import worker_failure  # noqa: E402

SPEED_SCRIPT = os.path.join(HERE, "training_speed.py")
TORCH_SCRIPT = os.path.join(HERE, "torch_baseline.py")
PRECISIONS = ("float32", "bfloat16")
MODES = ("train", "infer")
# The SGD update every training cell runs (training_speed.STEP_OPTIMIZER), PyTorch's included.
STEP_OPTIMIZER = {"lr": 0.1, "momentum": 0.9, "nesterov": False, "weight_decay": 0.0}


@dataclasses.dataclass(frozen=True)
class Column:
    label: str
    library: str  # the module the column needs: tensorflow, jax or torch
    backend: str | None  # Keras backend; None for native PyTorch
    engine: str | None  # training_speed.py's --engine
    variants: dict  # (mode, precision) -> variant name; a missing pair is not measured
    python: str | None = None  # native PyTorch: the Python that runs its cells (--pytorch_python)

    def variant(self, mode: str, precision: str) -> str | None:
        return self.variants.get((mode, precision), self.variants.get(precision))


COLUMNS = {
    "tf_step": Column("TF, package step", "tensorflow", "tensorflow", "step",
                      {"float32": "fused", "bfloat16": "fused+bf16"}),
    "tf_fit": Column("TF, `fit`", "tensorflow", "tensorflow", "fit",
                     {"float32": "fused", "bfloat16": "fused+bf16"}),
    "jax_fit": Column("JAX, `fit`", "jax", "jax", "fit",
                      {"float32": "fused", "bfloat16": "fused+bf16"}),
    "torch_fit": Column("torch backend, `fit`, NHWC", "torch", "torch", "fit",
                        {"float32": "fused", "bfloat16": "fused+bf16"}),
    "torch_fit_nchw": Column("torch backend, `fit`, NCHW", "torch", "torch", "fit",
                             {"float32": "fused+nchw", "bfloat16": "fused+nchw+bf16"}),
    "torch_batch": Column("torch backend, `train_on_batch`, NCHW", "torch", "torch", "batch",
                          {"float32": "fused+nchw", "bfloat16": "fused+nchw+bf16"}),
    "pytorch": Column("native PyTorch", "torch", None, None,
                      {"float32": "torch+cl", "bfloat16": "torch+bf16"}),
    "pytorch_bf16w": Column("native PyTorch, bf16 weights", "torch", None, None,
                            {("infer", "bfloat16"): "torch+bf16w"}),
    "tf_folded": Column("TF, folded BN", "tensorflow", "tensorflow", "step",
                        {("infer", "float32"): "folded", ("infer", "bfloat16"): "folded+bf16"}),
}
KERAS_TORCH_COLUMNS = ("torch_fit", "torch_fit_nchw", "torch_batch")


def installed(library: str) -> bool:
    return importlib.util.find_spec(library) is not None


def cell_spec(column: str, mode: str, precision: str, model: str, batch: int, steps: int,
              threads: int | None) -> dict | None:
    """The worker spec of one cell, or None where the column has no such cell."""
    col = COLUMNS[column]
    variant = col.variant(mode, precision)
    if variant is None:
        return None
    spec = dict(model=model, mode=mode, batch=batch, variant=variant, steps=steps)
    if col.backend is None:
        return {**spec, "framework": "pytorch", "threads": threads, "optimizer": STEP_OPTIMIZER,
                **({"python": col.python} if col.python else {})}
    return {**spec, "backend": col.backend, "engine": col.engine}


def command(spec: dict) -> list:
    if spec.get("framework") == "pytorch":
        return [spec.get("python") or sys.executable, TORCH_SCRIPT, "--worker", json.dumps(spec)]
    return [sys.executable, SPEED_SCRIPT, "--backend", spec["backend"], "--worker", json.dumps(spec)]


def run_cell(spec: dict, timeout: float) -> dict:
    """One cell in a fresh worker process: its result row, or ``{"error": one line}``."""
    try:
        proc = subprocess.run(command(spec), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {**spec, "error": worker_failure(proc.returncode, proc.stderr)}
    row = json.loads(lines[-1])
    return row if "images_per_s" in row else {**spec, "error": row.get("error", "no result")}


def median_cell(runs: list) -> dict:
    """The median over a cell's repeats: images/s (and the step time that gives it), first step
    and the highest peak memory; an error if every repeat failed."""
    good = [r for r in runs if "error" not in r]
    if not good:
        return {"error": runs[-1]["error"]}
    return {
        "images_per_s": round(statistics.median(r["images_per_s"] for r in good), 2),
        "images_per_s_all": [r["images_per_s"] for r in good],
        "first_step_s": round(statistics.median(r["first_step_s"] for r in good), 2),
        "peak_rss_gb": max(r["peak_rss_gb"] for r in good),
        **({"peak_device_gb": max(r["peak_device_gb"] for r in good)}
           if all("peak_device_gb" in r for r in good) else {}),
        "variant": good[0]["variant"],
        **({"torch_version": good[0]["torch_version"]} if "torch_version" in good[0] else {}),
        **({"failed_repeats": len(runs) - len(good)} if len(good) < len(runs) else {}),
    }


def ratios(table: dict, columns: list) -> dict:
    """The comparisons the table is for, per row: Keras' PyTorch backend (its faster layout and
    engine) against native PyTorch, JAX against TensorFlow's step, TensorFlow against PyTorch."""
    out = {}
    for row, cells in table.items():
        speed = {c: cells[c]["images_per_s"] for c in columns if "images_per_s" in cells.get(c, {})}
        memory = {c: cells[c]["peak_rss_gb"] for c in columns if "peak_rss_gb" in cells.get(c, {})}
        entry = {}
        torch_cols = [c for c in KERAS_TORCH_COLUMNS if c in speed]
        if torch_cols and "pytorch" in speed:
            best = max(torch_cols, key=speed.get)
            entry["torch_backend_best"] = best
            entry["torch_backend_vs_pytorch"] = round(speed[best] / speed["pytorch"], 3)
            entry["torch_backend_memory_vs_pytorch"] = round(memory[best] / memory["pytorch"], 3)
        if "jax_fit" in speed and "tf_step" in speed:
            entry["jax_vs_tf_step"] = round(speed["jax_fit"] / speed["tf_step"], 3)
        if "pytorch" in speed:
            others = ["tf_step", "tf_fit", "tf_folded", "pytorch_bf16w"] + [c for c in speed if "@" in c]
            for c in others:
                if c in speed:
                    entry[f"{c}_vs_pytorch"] = round(speed[c] / speed["pytorch"], 3)
        out[row] = entry
    return out


def markdown(table: dict, columns: list, key: str, fmt: str) -> str:
    """One Markdown table of ``key`` (a cell's field) with a row per mode and precision."""
    lines = ["| | " + " | ".join(COLUMNS[c].label for c in columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for row, cells in table.items():
        values = []
        for c in columns:
            cell = cells.get(c)
            if cell is None:
                values.append("")
            elif "error" in cell:
                values.append("error")
            else:
                values.append(format(cell[key], fmt))
        lines.append(f"| {row} | " + " | ".join(values) + " |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet164", help="a registered model name")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--columns", default="",
                        help=f"comma-separated, of {', '.join(COLUMNS)} (default: every column "
                             "whose library is installed)")
    parser.add_argument("--modes", default="train,infer")
    parser.add_argument("--precisions", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=3,
                        help="every cell this many times, interleaved; medians are reported")
    parser.add_argument("--steps", type=int, default=None,
                        help="timed steps per cell (default: 4 training, 8 inference)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads of the native PyTorch cells (default: the "
                             "CPUs this process may run on)")
    parser.add_argument("--pytorch_python", default="",
                        help="comma-separated Pythons that run the native PyTorch columns "
                             "(default: this one); each after the first adds its own columns, "
                             "named by its PyTorch version, interleaved with the rest: "
                             "other environments compare other PyTorch releases")
    parser.add_argument("--timeout", type=float, default=900, help="seconds per cell")
    parser.add_argument("--output", default=os.path.join("runs", "backends_table.json"))
    args = parser.parse_args(argv)

    names = [c.strip() for c in args.columns.split(",") if c.strip()] or list(COLUMNS)
    unknown = [c for c in names if c not in COLUMNS]
    if unknown:
        parser.error(f"argument --columns: unknown {', '.join(unknown)}; choose from {', '.join(COLUMNS)}")
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not modes or set(modes) - set(MODES):
        parser.error(f"argument --modes: of {', '.join(MODES)}, got {args.modes!r}")
    if not precisions or set(precisions) - set(PRECISIONS):
        parser.error(f"argument --precisions: of {', '.join(PRECISIONS)}, got {args.precisions!r}")
    if args.repeats < 1 or args.batch < 1 or (args.steps is not None and args.steps < 1):
        parser.error("--repeats, --batch and --steps must be >= 1")
    skipped = {c: f"{COLUMNS[c].library} is not installed" for c in names
               if not installed(COLUMNS[c].library)}
    if args.columns and skipped:
        parser.error("argument --columns: " + "; ".join(f"{c}: {why}" for c, why in skipped.items()))
    columns = [c for c in names if c not in skipped]
    pythons = [p.strip() for p in args.pytorch_python.split(",") if p.strip()] or [sys.executable]
    native = [c for c in columns if COLUMNS[c].backend is None]
    if native:
        versions_of = {}
        for python in pythons:
            versions_of[python] = torch_version_of(python)
            if versions_of[python] is None:
                parser.error(f"argument --pytorch_python: {python} cannot import torch")
        for k, python in enumerate(pythons[1:], start=1):
            for c in native:
                key = f"{c}@{versions_of[python]}"
                COLUMNS[key] = dataclasses.replace(
                    COLUMNS[c], label=f"{COLUMNS[c].label} {versions_of[python]}", python=python)
                columns.append(key)
        for c in native:
            COLUMNS[c] = dataclasses.replace(COLUMNS[c], python=pythons[0])
    if not columns:
        parser.error("no column can run here: install TensorFlow, JAX or PyTorch")

    cpu = cpu_description()
    print(f"CPU: {cpu['model']}; {os.cpu_count()} logical CPUs; flags: "
          f"{', '.join(cpu['flags']) or 'no avx512/bf16/amx'}")
    versions = {lib: _version(lib) for lib in ("keras", "tensorflow", "jax", "torch") if installed(lib)}
    print("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    for c, why in skipped.items():
        print(f"Column {c} skipped: {why}")
    print(f"{args.model}, batch {args.batch}, {args.repeats} interleaved repeat(s), columns: "
          f"{', '.join(columns)}", flush=True)

    cells = []  # (row name, column, spec)
    for mode in modes:
        for precision in precisions:
            steps = args.steps or (4 if mode == "train" else 8)
            for column in columns:
                spec = cell_spec(column, mode, precision, args.model, args.batch, steps, args.threads)
                if spec is not None:
                    cells.append((f"{mode} {precision}", column, spec))
    runs = {(row, column): [] for row, column, _ in cells}
    started = time.monotonic()
    for repeat in range(args.repeats):
        for row, column, spec in cells:
            result = run_cell(spec, args.timeout)
            runs[(row, column)].append(result)
            shown = result.get("error") or f"{result['images_per_s']:.1f} img/s, {result['peak_rss_gb']:.2f} GB"
            print(f"  [{repeat + 1}/{args.repeats}] {row:<17} {column:<15} {spec['variant']:<16} "
                  f"{shown}  ({time.monotonic() - started:.0f} s)", flush=True)

    table = {}
    for (row, column), results in runs.items():
        table.setdefault(row, {})[column] = median_cell(results)
    compared = ratios(table, columns)
    text = "\n\n".join([
        f"Images/s (medians of {args.repeats} interleaved repeats):\n\n" + markdown(table, columns, "images_per_s", ".1f"),
        "Peak resident memory of the worker process, GB:\n\n" + markdown(table, columns, "peak_rss_gb", ".2f"),
        "First step from process start, s:\n\n" + markdown(table, columns, "first_step_s", ".1f"),
    ])
    print("\n" + text + "\n")
    for row, entry in compared.items():
        if entry:
            print(f"{row}: " + ", ".join(f"{k} {v}" for k, v in entry.items()))
    output = os.path.abspath(args.output)
    os.makedirs(os.path.dirname(output), exist_ok=True)
    with open(output, "w") as f:
        json.dump({
            "machine": {"cpus": os.cpu_count(), "cpu": cpu, "platform": platform.platform(),
                        "python": platform.python_version(), **versions},
            "date": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join(["python", os.path.relpath(__file__, ROOT),
                                 *(sys.argv[1:] if argv is None else argv)]),
            "model": args.model, "batch": args.batch, "repeats": args.repeats,
            "columns": {c: dataclasses.asdict(COLUMNS[c]) | {"variants": {
                f"{m} {p}": COLUMNS[c].variant(m, p) for m in modes for p in precisions}}
                for c in columns},
            "skipped": skipped,
            "table": table,
            "ratios": compared,
        }, f, indent=1)
    with open(os.path.splitext(output)[0] + ".md", "w") as f:
        f.write(text + "\n")
    print(f"wrote {output} and {os.path.splitext(output)[0]}.md")


def torch_version_of(python: str) -> str | None:
    """The PyTorch version another Python imports (None where it cannot)."""
    try:
        done = subprocess.run([python, "-c", "import torch; print(torch.__version__)"],
                              capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines()[-1] if done.returncode == 0 and done.stdout.strip() else None


def _version(library: str) -> str:
    """A library's installed version, read from its metadata (without importing it)."""
    from importlib.metadata import PackageNotFoundError, version

    for name in (library, f"{library}-cpu"):
        try:
            return version(name)
        except PackageNotFoundError:
            continue
    return "unknown"


if __name__ == "__main__":
    main()
