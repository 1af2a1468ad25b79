"""Which XLA:CPU flags make JAX train the package's networks faster, against TensorFlow.

JAX compiles every step with XLA, whose CPU backend has oneDNN and XNNPACK paths behind flags
(``XLA_FLAGS``). This benchmark trains one network through Keras' ``model.fit`` under JAX with
each flag setting of ``SETTINGS`` (or ``--settings``), and under TensorFlow (``--engine=fit``, the
like-for-like row, and the package's own step), each in a fresh worker process of
``benchmarks/training_speed.py``, the settings interleaved round by round (``--repeats``), and
prints a table of the median images/s and first-step time per setting, with each JAX setting's
ratio to TensorFlow's ``fit`` measured in the same run. The JSON goes to ``--output``.

    python benchmarks/jax_xla_flags.py --model=resnet164 --batch=128 --repeats=3
    python benchmarks/jax_xla_flags.py --settings="default=;onednn=--xla_cpu_use_onednn=true"

Which flags exist depends on the jaxlib build (``strings jaxlib/*.so | grep xla_cpu_``); a flag
it does not know fails the worker, which the table reports as an error, not as a number.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import keras_preact_commands  # noqa: E402

keras_preact_commands.set_environment_defaults()

from keras_preact.hardware import cpu_description  # noqa: E402
from training_speed import run_case  # noqa: E402

# name -> XLA_FLAGS. "default" is XLA:CPU as jaxlib ships it.
SETTINGS = {
    "default": "",
    "onednn": "--xla_cpu_use_onednn=true",
    "onednn_custom_call": "--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_custom_call=true",
    "xnnpack": "--xla_cpu_use_xnnpack=true",
    "fast_math": "--xla_cpu_enable_fast_math=true",
}


def parse_settings(text: str) -> dict:
    settings = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        name, _, flags = item.partition("=")
        settings[name.strip()] = flags.strip()
    return settings


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet164")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per worker (after the first)")
    parser.add_argument("--repeats", type=int, default=3, help="rounds; every setting runs once per round")
    parser.add_argument("--variant", default="fused", help="training_speed.py variant, e.g. fused+bf16")
    parser.add_argument("--settings", default="", help="name=XLA_FLAGS;... (default: SETTINGS)")
    parser.add_argument("--no_tensorflow", action="store_true", help="leave out the TensorFlow rows")
    parser.add_argument("--output", default=os.path.join(HERE, "results", "jax_xla_flags.json"))
    args = parser.parse_args(argv)
    settings = parse_settings(args.settings) if args.settings else dict(SETTINGS)
    cpu = cpu_description()
    print(f"CPU: {cpu['model']}; {os.cpu_count()} logical CPUs; flags: {', '.join(cpu['flags']) or 'none of note'}")
    print(f"{args.model} batch {args.batch}, train, variant {args.variant}, {args.steps} timed steps, "
          f"{args.repeats} interleaved rounds")

    base_spec = dict(model=args.model, mode="train", batch=args.batch, variant=args.variant, steps=args.steps,
                     profile=False)
    rows = {}  # name -> list of worker results
    plan = [(f"jax {name}", "jax", "fit", flags) for name, flags in settings.items()]
    if not args.no_tensorflow:
        plan += [("tensorflow fit", "tensorflow", "fit", ""), ("tensorflow step", "tensorflow", "step", "")]
    saved_flags = os.environ.get("XLA_FLAGS")
    try:
        for round_index in range(args.repeats):
            for name, backend, engine, flags in plan:
                if flags:
                    os.environ["XLA_FLAGS"] = flags
                else:
                    os.environ.pop("XLA_FLAGS", None)
                result = run_case({**base_spec, "backend": backend, "engine": engine})
                rows.setdefault(name, []).append(result)
                shown = (f"{result['images_per_s']:.1f} img/s, first step {result['first_step_s']:.1f} s"
                         if "error" not in result else f"error: {result['error'][:200]}")
                print(f"  round {round_index + 1}: {name:<26} {shown}", flush=True)
    finally:
        if saved_flags is None:
            os.environ.pop("XLA_FLAGS", None)
        else:
            os.environ["XLA_FLAGS"] = saved_flags

    summary = {}
    for name, results in rows.items():
        good = [r for r in results if "error" not in r]
        summary[name] = {
            "xla_flags": next((f for n, _, _, f in plan if n == name), ""),
            "images_per_s_median": statistics.median(r["images_per_s"] for r in good) if good else None,
            "images_per_s_all": [r.get("images_per_s") for r in results],
            "first_step_s_median": statistics.median(r["first_step_s"] for r in good) if good else None,
            "errors": [r["error"] for r in results if "error" in r],
        }
    reference = (summary.get("tensorflow fit") or {}).get("images_per_s_median")
    print(f"\n{'setting':<26}{'img/s (median)':>16}{'first step s':>14}{'x TF fit':>10}")
    for name, entry in summary.items():
        speed = entry["images_per_s_median"]
        ratio = speed / reference if speed and reference else None
        entry["vs_tensorflow_fit"] = round(ratio, 3) if ratio else None
        first = entry["first_step_s_median"]
        print(f"{name:<26}{(f'{speed:.1f}' if speed else 'error'):>16}"
              f"{(f'{first:.1f}' if first else '-'):>14}{(f'{ratio:.2f}' if ratio else '-'):>10}")
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output, "w") as handle:
        json.dump({"cpu": cpu, "date": time.strftime("%Y-%m-%d %H:%M:%S"), "model": args.model,
                   "batch": args.batch, "variant": args.variant, "steps": args.steps, "repeats": args.repeats,
                   "settings": summary}, handle, indent=1)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
