"""Train a list of unit variants x seeds under one schedule; write the paper-style table.

    python trainers/ablation.py --data_dir=/data/cifar10-jpeg            # the default study
    python trainers/ablation.py --variants=full_preact,original --model=resnet110 --seeds=0,1,2,3,4 \
        --epochs=164 --lr_boundaries=0.5,0.75 --data_dir=/data/cifar10-jpeg --out=runs/table2
    python trainers/ablation.py --dataset=cifar10 -- --weight_decay=5e-4   # after --: trainer flags
    python trainers/ablation.py --variants="full_preact,full_preact --nonesterov" --seeds=0 \
        --data_dir=/data/cifar10-jpeg -- --recipe=fast     # a training recipe, element by element

A variant is ``order/shortcut`` (paper Fig. 4 orders, Fig. 2 shortcuts), or just an order
(identity shortcut) or just a shortcut (on ``--base_order``, ``original`` as in Table 1), then
optionally trainer flags of that row alone, after a space (``full_preact --label_smoothing=0``).

The default study (4 variants x 2 seeds, ResNet-20, 3 epochs of CIFAR-10's 50,000 training
images, step decay at 50 % and 75 %) is sized to take about an hour on a 2-core CPU; the
paper's own budget is 164 epochs and deeper nets (ResNet-110, 164, 1001). Each run is an
ordinary ``trainers/cifar.py`` run in its own folder ``<out>/runs/<order>__<shortcut>/seed<k>``;
re-running the same command skips finished runs and resumes interrupted ones from their last
checkpoint; a run that diverged is reported as such without training it again (delete its
folder to retry). Outputs: ``<out>/results.md`` and ``results.csv`` (final test error, median and
mean +- std over seeds) and ``<out>/curves.png`` (training loss and test error vs epochs).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras_preact_commands  # noqa: E402

# Before Keras loads: TensorFlow's start-up lines off the output, oneDNN on (keras_preact_commands).
keras_preact_commands.prepare_process()

from absl import flags  # noqa: E402

from keras_preact.common import check_writable_dir  # noqa: E402
from keras_preact.cli import train as train_cli  # noqa: E402
from keras_preact.training import ablation, run_config  # noqa: E402
from keras_preact.training.observe import format_duration  # noqa: E402

DEFAULT_VARIANTS = [
    "original/identity",  # Table 1 baseline
    "original/constant_scaling",  # Table 1: lambda = 0.5
    "original/exclusive_gating",  # Table 1: b_g initialised to -6
    "full_preact/identity",  # Table 2: the proposed unit
]
TRAINER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cifar.py")
EXIT_FLAG_ERROR, EXIT_DIVERGED = train_cli.EXIT_FLAG_ERROR, train_cli.EXIT_DIVERGED

FlagError = train_cli.FlagError


def define_flags(flag_values: flags.FlagValues) -> None:
    """Declare the runner's flags in ``flag_values`` (the script: ``flags.FLAGS``)."""
    def define(definer, *args):
        definer(*args, flag_values=flag_values)

    define(flags.DEFINE_list, "variants", DEFAULT_VARIANTS,
           "Variants: order/shortcut, order, or shortcut, each optionally followed by trainer flags of "
           "that row (e.g. 'full_preact --label_smoothing=0').")
    define(flags.DEFINE_string, "base_order", "original", "Unit order of variants given as a shortcut only.")
    define(flags.DEFINE_list, "seeds", ["0", "1"], "Seeds; every variant is trained once per seed.")
    define(flags.DEFINE_string, "model", "resnet20", "CIFAR model (trainers/cifar.py --model).")
    define(flags.DEFINE_string, "data_dir", None, "Image folder <root>/{train,test}/<class>/<image>.")
    define(flags.DEFINE_string, "dataset", None, "TFDS dataset or cifar10_sample (when no --data_dir).")
    define(flags.DEFINE_float, "epochs", 3, "Epochs per run (the budget).")
    define(flags.DEFINE_integer, "batch_size", None, "Batch size (default: the recipe's, 128).")
    define(flags.DEFINE_list, "lr_boundaries", ["0.5", "0.75"], "Step-decay boundaries (fractions of the run).")
    define(flags.DEFINE_string, "out", os.path.join("runs", "ablation"), "Output folder.")
    define(flags.DEFINE_list, "reuse_from", [],
           "Other ablation folders made with the same settings: a run finished there (e.g. Table 1's "
           "original/identity, which Table 2 repeats) is linked here instead of trained again.")
    define(flags.DEFINE_bool, "dry_run", False, "Print the trainer commands and exit.")


define_flags(flags.FLAGS)


@dataclasses.dataclass(frozen=True)
class Options:
    """The parsed command line of one ablation."""

    variants: tuple  # ablation.Variant
    seeds: tuple
    model: str
    data_dir: str | None  # absolute
    dataset: str | None
    epochs: float
    batch_size: int | None
    lr_boundaries: tuple
    out: str
    dry_run: bool
    trainer_flags: tuple  # after "--": passed to every trainer run
    reuse_from: tuple = ()  # other ablation folders whose finished runs are linked, not retrained

    def shared(self) -> dict:
        """The settings every run shares; an output folder is tied to them (``check_out_dir``)."""
        return {
            "model": self.model,
            "data_dir": self.data_dir,
            "dataset": self.dataset,
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr_boundaries": list(self.lr_boundaries),
            "trainer_flags": list(self.trainer_flags),
        }


def options_from_flags(flag_values, argv) -> Options:
    """The only code that reads flag values; a FlagError names a bad one.

    Then ``validate`` checks every trainer command the runner would launch.
    """
    F = flag_values
    extra_flags = argv[1:]  # everything after "--" goes to every trainer run
    bad = [a for a in extra_flags if not a.startswith("--")]
    if bad:
        raise FlagError("-", f"unexpected arguments {bad}; trainer flags go after -- as --name=value.")
    try:
        variants = ablation.parse_variants(F.variants, F.base_order)
    except ValueError as error:
        raise FlagError("variants", str(error)) from None
    try:
        seeds = [int(s) for s in F.seeds]
    except ValueError:
        raise FlagError("seeds", f"give integers, got {F.seeds}.") from None
    if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
        raise FlagError("seeds", f"give distinct non-negative integers, got {F.seeds}.")
    if not (F.epochs > 0) or F.epochs == float("inf"):
        raise FlagError("epochs", f"must be a positive number, got {F.epochs}.")
    if F.batch_size is not None and F.batch_size < 1:
        raise FlagError("batch_size", f"must be >= 1, got {F.batch_size}.")
    if F.data_dir and not os.path.isdir(F.data_dir):
        raise FlagError("data_dir", f"no folder {F.data_dir!r}.")
    if F.data_dir and F.dataset:
        raise FlagError("dataset", "give --data_dir or --dataset, not both.")
    check_writable_dir("out", F.out)
    for folder in F.reuse_from:
        if not os.path.isfile(os.path.join(folder, "ablation.json")):
            raise FlagError("reuse_from", f"{folder!r} is not an ablation folder (no ablation.json).")
    return Options(
        variants=tuple(variants),
        seeds=tuple(seeds),
        model=F.model,
        data_dir=os.path.abspath(F.data_dir) if F.data_dir else None,
        dataset=F.dataset,
        epochs=F.epochs,
        batch_size=F.batch_size,
        lr_boundaries=tuple(F.lr_boundaries),
        out=F.out,
        dry_run=F.dry_run,
        trainer_flags=tuple(extra_flags),
        reuse_from=tuple(os.path.abspath(f) for f in F.reuse_from),
    )


def check_out_dir(out_dir: str, shared: dict, flag: str = "out") -> None:
    """Refuse to mix runs made with different shared settings in one table."""
    path = os.path.join(out_dir, "ablation.json")
    if os.path.exists(path):
        with open(path) as handle:
            previous = json.load(handle)["settings"]
        changed = {k: (previous.get(k), v) for k, v in shared.items() if previous.get(k) != v}
        if changed:
            detail = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
            advice = ("Use a new --out, or the original settings to resume." if flag == "out"
                      else "Only runs made with the same settings can be reused.")
            raise FlagError(flag, f"{out_dir} holds runs made with other settings ({detail}). {advice}")


def reuse_finished_run(options: Options, variant, seed) -> str | None:
    """Link the run of ``(variant, seed)`` finished in a ``--reuse_from`` folder; its path, or None."""
    path = ablation.run_dir(options.out, variant, seed)
    if os.path.lexists(path):  # started here: resume it, never replace it
        return None
    for folder in options.reuse_from:
        source = ablation.run_dir(folder, variant, seed)
        if ablation.is_finished(source):
            os.makedirs(os.path.dirname(path), exist_ok=True)
            os.symlink(os.path.relpath(source, os.path.dirname(path)), path)
            return source
    return None


def _canonical_flag(argument: str, flag_values: flags.FlagValues) -> str:
    """The trainer flag an argument sets: ``--nonesterov`` and ``--nesterov=false`` both set nesterov."""
    name = ablation.flag_name(argument)
    if name not in flag_values and name.startswith("no") and name[2:] in flag_values:
        return name[2:]
    return name


def check_row_flags(options: Options) -> None:
    """A row's flag may not also be set for every run (after ``--``, or by the runner): which
    one wins would depend on the order of the command line."""
    flag_values = flags.FlagValues()
    train_cli.define_flags("cifar", flag_values)
    shared = {}
    for argument in options.trainer_flags:
        name = _canonical_flag(argument, flag_values)
        if name in shared:  # e.g. --nesterov and --nonesterov: the later one would silently win
            raise FlagError(name, f"given twice after -- (as {argument}); give it once.")
        shared[name] = "also given after --"
    shared["lr_boundaries"] = "set for every run by the runner's --lr_boundaries"
    if options.batch_size:
        shared["batch_size"] = "set for every run by the runner's --batch_size"
    for variant in options.variants:
        row = set()
        for argument in variant.flags:
            name = _canonical_flag(argument, flag_values)
            if name in row:
                raise FlagError("variants", f"{variant.name}: --{name} is given twice in one row (as {argument}).")
            row.add(name)
            if name in shared:
                raise FlagError("variants", f"{variant.name}: --{name} is {shared[name]}; set it in one place.")


def validate(options: Options) -> None:
    """Check every trainer command as ``trainers/cifar.py`` would, before anything is written.

    A FlagError names the runner's flag, or for a flag after ``--`` the trainer's.
    """
    check_row_flags(options)
    for variant in options.variants:
        for seed in options.seeds:
            command = trainer_command(options, variant, seed)
            flag_values = flags.FlagValues()
            train_cli.define_flags("cifar", flag_values)
            try:
                train_cli.parse_command_line(flag_values, command[1:])
                train_cli.config_from_flags("cifar", flag_values)
            except FlagError as error:
                runner_flag = error.flag if error.flag in ("model", "data_dir", "dataset", "epochs",
                                                           "batch_size", "lr_boundaries") else None
                if runner_flag or any(a.startswith(f"--{error.flag}=") or a == f"--{error.flag}"
                                      for a in options.trainer_flags):
                    raise
                raise FlagError("variants", f"{variant.name}: {error}") from None


def trainer_command(options: Options, variant, seed) -> list:
    command = [sys.executable, TRAINER, f"--model={options.model}", f"--seed={seed}",
               f"--epochs={options.epochs}", f"--lr_boundaries={','.join(options.lr_boundaries)}",
               f"--model_dir={ablation.run_dir(options.out, variant, seed)}", *variant.trainer_flags()]
    if options.data_dir:
        command.append(f"--data_dir={options.data_dir}")
    elif options.dataset:
        command.append(f"--dataset={options.dataset}")
    if options.batch_size:
        command.append(f"--batch_size={options.batch_size}")
    return command + list(options.trainer_flags)


def run_trainer(command, path: str, header: str) -> int:
    """One trainer run; its output is shown indented and kept in ``<path>/trainer.log``."""
    with open(os.path.join(path, "trainer.log"), "a") as log:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                   env=dict(os.environ, PYTHONUNBUFFERED="1"))
        for line in process.stdout:  # show the trainer's progress and keep it with the run
            log.write(line)
            if not line.startswith(("WARNING: All log", "I0000", "W0000")):
                sys.stdout.write("    " + line)
                sys.stdout.flush()
        return process.wait()


def study_title(options: Options) -> str:
    """What the table and plot are of: model, budget, seeds, data, and the flags every run got."""
    source = str(options.data_dir or options.dataset or "cifar10_sample").rstrip("/")
    # Two path components: a folder is often called just "data" or "images".
    source = "/".join(source.split("/")[-2:])
    shared = f", {' '.join(options.trainer_flags)}" if options.trainer_flags else ""
    return f"{options.model}, {options.epochs:g} epochs, {len(options.seeds)} seed(s), {source}{shared}"


def run_ablation(options: Options) -> int:
    """Train every (variant, seed) not finished yet, then write the table; the exit status."""
    shared = options.shared()
    jobs = [(v, s) for v in options.variants for s in options.seeds]
    if options.dry_run:
        for variant, seed in jobs:
            print(" ".join(trainer_command(options, variant, seed)))
        return 0
    validate(options)
    check_out_dir(options.out, shared)
    for folder in options.reuse_from:
        check_out_dir(folder, shared, flag="reuse_from")
    os.makedirs(options.out, exist_ok=True)
    with open(os.path.join(options.out, "ablation.json"), "w") as handle:
        json.dump({"settings": shared, "variants": [v.name for v in options.variants],
                   "seeds": list(options.seeds), "command": sys.argv}, handle, indent=2)

    status = {}
    timings = []
    started = time.monotonic()
    for index, (variant, seed) in enumerate(jobs, start=1):
        path = ablation.run_dir(options.out, variant, seed)
        header = f"[{index}/{len(jobs)}] {variant.name} seed {seed}"
        reused = reuse_finished_run(options, variant, seed)
        if reused:
            print(f"{header}: finished in {reused}, linked", flush=True)
            continue
        if ablation.is_finished(path):
            print(f"{header}: finished earlier, skipped ({path})", flush=True)
            continue
        earlier = ablation.recorded_status(path)
        if earlier:
            print(f"{header}: {earlier} earlier, not trained again (delete {path} to retry)", flush=True)
            continue
        remaining = len(jobs) - index + 1
        eta = f", ablation ETA {format_duration(remaining * sorted(timings)[len(timings) // 2])}" if timings else ""
        print(f"{header} -> {path}{eta}", flush=True)
        os.makedirs(path, exist_ok=True)
        run_started = time.monotonic()
        code = run_trainer(trainer_command(options, variant, seed), path, header)
        timings.append(time.monotonic() - run_started)
        if code == EXIT_FLAG_ERROR:  # the same flags would fail every run: stop now
            raise FlagError("-", f"the trainer rejected its flags (see {path}/trainer.log); stopped.")
        if code == EXIT_DIVERGED:
            status[(variant, seed)] = "diverged"
            ablation.record_status(path, "diverged")
        elif code != 0:
            status[(variant, seed)] = f"failed (exit {code})"
        print(f"{header}: {status.get((variant, seed), 'finished')} in {format_duration(timings[-1])}", flush=True)

    results = [ablation.read_run(ablation.run_dir(options.out, v, s), v, s, status.get((v, s)))
               for v, s in jobs]
    rows = ablation.summarize(results)
    title = study_title(options)
    md_path, csv_path = ablation.write_table(rows, options.out, title)
    png_path = ablation.plot_ablation(results, os.path.join(options.out, "curves.png"), title)
    print()
    print(ablation.markdown_table(rows, title))
    print(f"Table: {md_path}, {csv_path}; curves: {png_path}; "
          f"{format_duration(time.monotonic() - started)} in this process.")
    return 1 if any(s.startswith("failed") for s in status.values()) else 0


def console_main(argv=None, flag_values: flags.FlagValues = flags.FLAGS) -> int:
    """The whole command line: ``--help`` exits 0; a bad flag (the runner's or a trainer flag
    after ``--``) is one line ``error: --flag: problem`` and exit 2, before anything is written."""
    argv = list(sys.argv if argv is None else argv)
    if train_cli.wants_help(argv):
        print(flag_values.main_module_help() or flag_values.get_help())
        return 0
    try:
        rest = train_cli.parse_command_line(flag_values, argv)
        options = options_from_flags(flag_values, rest)
        if options.dry_run:
            validate(options)
        return run_ablation(options)
    except FlagError as error:
        message = str(error)[5:] if error.flag == "-" else str(error)
        print(f"error: {message}", file=sys.stderr)
        return EXIT_FLAG_ERROR


if __name__ == "__main__":
    sys.exit(console_main())
