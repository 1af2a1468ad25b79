"""Train a list of unit variants x seeds under one schedule; write the paper-style table.

    python trainers/ablation.py --data_dir=/data/cifar10-jpeg            # the default study
    python trainers/ablation.py --variants=full_preact,original --model=resnet110 --seeds=0,1,2,3,4 \
        --epochs=164 --lr_boundaries=0.5,0.75 --data_dir=/data/cifar10-jpeg --out=runs/table2
    python trainers/ablation.py --dataset=cifar10 -- --weight_decay=5e-4   # after --: trainer flags

A variant is ``order/shortcut`` (paper Fig. 4 orders, Fig. 2 shortcuts), or just an order
(identity shortcut) or just a shortcut (on ``--base_order``, ``original`` as in Table 1).

The default study (4 variants x 2 seeds, ResNet-20, 3 epochs of CIFAR-10's 50,000 training
images, step decay at 50 % and 75 %) is sized to take about an hour on a 2-core CPU; the
paper's own budget is 164 epochs and deeper nets (ResNet-110, 164, 1001). Each run is an
ordinary ``trainers/cifar.py`` run in its own folder ``<out>/runs/<order>__<shortcut>/seed<k>``;
re-running the same command skips finished runs and resumes interrupted ones from their last
checkpoint. Outputs: ``<out>/results.md`` and ``results.csv`` (final test error, median and
mean +- std over seeds) and ``<out>/curves.png`` (training loss and test error vs epochs).
"""

import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags  # noqa: E402

from keras_preact.training import ablation  # noqa: E402
from keras_preact.training.observe import format_duration  # noqa: E402

DEFAULT_VARIANTS = [
    "original/identity",  # Table 1 baseline
    "original/constant_scaling",  # Table 1: lambda = 0.5
    "original/exclusive_gating",  # Table 1: b_g initialised to -6
    "full_preact/identity",  # Table 2: the proposed unit
]
TRAINER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar.py")
EXIT_FLAG_ERROR, EXIT_DIVERGED = 2, 3

flags.DEFINE_list("variants", DEFAULT_VARIANTS, "Variants: order/shortcut, order, or shortcut.")
flags.DEFINE_string("base_order", "original", "Unit order of variants given as a shortcut only.")
flags.DEFINE_list("seeds", ["0", "1"], "Seeds; every variant is trained once per seed.")
flags.DEFINE_string("model", "resnet20", "CIFAR model (trainers/cifar.py --model).")
flags.DEFINE_string("data_dir", None, "Image folder <root>/{train,test}/<class>/<image>.")
flags.DEFINE_string("dataset", None, "TFDS dataset or cifar10_sample (when no --data_dir).")
flags.DEFINE_float("epochs", 3, "Epochs per run (the budget).")
flags.DEFINE_integer("batch_size", None, "Batch size (default: the recipe's, 128).")
flags.DEFINE_list("lr_boundaries", ["0.5", "0.75"], "Step-decay boundaries (fractions of the run).")
flags.DEFINE_string("out", os.path.join("runs", "ablation"), "Output folder.")
flags.DEFINE_bool("dry_run", False, "Print the trainer commands and exit.")
FLAGS = flags.FLAGS


def settings(extra_flags) -> dict:
    """The flags every run shares; an output folder is tied to them (see ``check_out_dir``)."""
    return {
        "model": FLAGS.model,
        "data_dir": os.path.abspath(FLAGS.data_dir) if FLAGS.data_dir else None,
        "dataset": FLAGS.dataset,
        "epochs": FLAGS.epochs,
        "batch_size": FLAGS.batch_size,
        "lr_boundaries": FLAGS.lr_boundaries,
        "trainer_flags": list(extra_flags),
    }


def check_out_dir(out_dir: str, shared: dict) -> None:
    """Refuse to mix runs made with different shared settings in one table."""
    path = os.path.join(out_dir, "ablation.json")
    if os.path.exists(path):
        with open(path) as handle:
            previous = json.load(handle)["settings"]
        changed = {k: (previous.get(k), v) for k, v in shared.items() if previous.get(k) != v}
        if changed:
            detail = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            raise app.UsageError(
                f"{out_dir} holds runs made with other settings ({detail}). "
                "Use a new --out, or the original settings to resume."
            )


def trainer_command(variant, seed, shared, extra_flags) -> list:
    command = [sys.executable, TRAINER, f"--model={shared['model']}", f"--seed={seed}",
               f"--epochs={shared['epochs']}", f"--lr_boundaries={','.join(shared['lr_boundaries'])}",
               f"--model_dir={ablation.run_dir(FLAGS.out, variant, seed)}", *variant.trainer_flags()]
    if shared["data_dir"]:
        command.append(f"--data_dir={shared['data_dir']}")
    elif shared["dataset"]:
        command.append(f"--dataset={shared['dataset']}")
    if shared["batch_size"]:
        command.append(f"--batch_size={shared['batch_size']}")
    return command + list(extra_flags)


def main(argv):
    extra_flags = argv[1:]  # everything after "--" goes to every trainer run
    bad = [a for a in extra_flags if not a.startswith("--")]
    if bad:
        raise app.UsageError(f"Unexpected arguments {bad}; trainer flags go after -- as --name=value.")
    try:
        variants = ablation.parse_variants(FLAGS.variants, FLAGS.base_order)
        seeds = [int(s) for s in FLAGS.seeds]
    except ValueError as error:
        raise app.UsageError(f"--variants/--seeds: {error}")
    if not seeds or len(set(seeds)) != len(seeds):
        raise app.UsageError(f"--seeds: give distinct integers, got {FLAGS.seeds}.")
    if FLAGS.epochs <= 0:
        raise app.UsageError(f"--epochs: must be positive, got {FLAGS.epochs}.")
    if FLAGS.data_dir and not os.path.isdir(FLAGS.data_dir):
        raise app.UsageError(f"--data_dir: no folder {FLAGS.data_dir!r}.")
    shared = settings(extra_flags)
    jobs = [(v, s) for v in variants for s in seeds]
    if FLAGS.dry_run:
        for variant, seed in jobs:
            print(" ".join(trainer_command(variant, seed, shared, extra_flags)))
        return
    check_out_dir(FLAGS.out, shared)
    os.makedirs(FLAGS.out, exist_ok=True)
    with open(os.path.join(FLAGS.out, "ablation.json"), "w") as handle:
        json.dump({"settings": shared, "variants": [v.name for v in variants], "seeds": seeds,
                   "command": sys.argv}, handle, indent=2)

    status = {}
    timings = []
    started = time.monotonic()
    for index, (variant, seed) in enumerate(jobs, start=1):
        path = ablation.run_dir(FLAGS.out, variant, seed)
        header = f"[{index}/{len(jobs)}] {variant.name} seed {seed}"
        if ablation.is_finished(path):
            print(f"{header}: finished earlier, skipped ({path})", flush=True)
            continue
        remaining = len(jobs) - index + 1
        eta = f", ablation ETA {format_duration(remaining * sorted(timings)[len(timings) // 2])}" if timings else ""
        print(f"{header} -> {path}{eta}", flush=True)
        os.makedirs(path, exist_ok=True)
        run_started = time.monotonic()
        with open(os.path.join(path, "trainer.log"), "a") as log:
            process = subprocess.Popen(trainer_command(variant, seed, shared, extra_flags),
                                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       env=dict(os.environ, PYTHONUNBUFFERED="1"))
            for line in process.stdout:  # show the trainer's progress and keep it with the run
                log.write(line)
                if not line.startswith(("WARNING: All log", "I0000", "W0000")):
                    sys.stdout.write("    " + line)
                    sys.stdout.flush()
            code = process.wait()
        timings.append(time.monotonic() - run_started)
        if code == EXIT_FLAG_ERROR:  # the same flags would fail every run: stop now
            raise app.UsageError(f"the trainer rejected its flags (see {path}/trainer.log).")
        if code == EXIT_DIVERGED:
            status[(variant, seed)] = "diverged"
        elif code != 0:
            status[(variant, seed)] = f"failed (exit {code})"
        print(f"{header}: {status.get((variant, seed), 'finished')} in {format_duration(timings[-1])}", flush=True)

    results = [ablation.read_run(ablation.run_dir(FLAGS.out, v, s), v, s, status.get((v, s)))
               for v, s in jobs]
    rows = ablation.summarize(results)
    source = shared["data_dir"] or shared["dataset"] or "cifar10_sample"
    title = (f"{FLAGS.model}, {FLAGS.epochs:g} epochs, {len(seeds)} seed(s), "
             f"{os.path.basename(str(source).rstrip('/'))}")
    md_path, csv_path = ablation.write_table(rows, FLAGS.out, title)
    png_path = ablation.plot_ablation(results, os.path.join(FLAGS.out, "curves.png"), title)
    print()
    print(ablation.markdown_table(rows, title))
    print(f"Table: {md_path}, {csv_path}; curves: {png_path}; "
          f"{format_duration(time.monotonic() - started)} in this process.")
    if any(s.startswith("failed") for s in status.values()):
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
