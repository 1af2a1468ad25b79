"""Ablations in the style of the paper's Tables 1-3: variants x seeds, one schedule, one table.

``trainers/ablation.py`` is the command line; this module holds what it is made of, so each
piece is testable on its own:

* ``parse_variant`` -- ``"original/constant_scaling"``, ``"full_preact"`` or ``"conv1x1"`` to a
  ``Variant`` (a unit order of Fig. 4 and a shortcut of Fig. 2), optionally followed by trainer
  flags of that row alone (``"full_preact --label_smoothing=0"``): the same runner then
  ablates a training recipe element by element;
* ``run_dir`` -- where one (variant, seed) run lives, so an interrupted ablation resumes: a run
  with a ``results.json`` is finished and skipped, a run with checkpoints resumes from them;
* ``read_run`` / ``summarize`` -- read the runs back and reduce them to median and mean +- std
  of the final test error, as the paper reports (median of 5 runs in Table 1);
* ``write_table`` (Markdown + CSV) and ``plot_ablation`` (training loss and test error of every
  variant against epochs in one PNG, like Fig. 3 and Fig. 6).

Each run is an ordinary trainer run (``trainers/cifar.py`` in a subprocess): same data pipeline,
recipe, checkpoints and ``metrics.csv`` as any other training, nothing re-implemented here.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import re
import statistics

from keras_preact import common
from keras_preact.training.observe import RESULTS_FILE, read_metrics, save_figure, train_seconds


@dataclasses.dataclass(frozen=True)
class Variant:
    """One row of an ablation table: a unit order, a shortcut type and its options.

    ``options`` are ``(name, value)`` pairs of ``common.SHORTCUT_OPTIONS``, as text, e.g.
    ``(("gate_bias_init", "0"),)`` for Table 1's shortcut-only gating with b_g = 0. ``flags``
    are trainer flags of this row only, e.g. ``("--label_smoothing=0",)``: a row of a recipe
    ablation, where every row has the same unit and one training element changed.
    """

    order: str
    shortcut: str
    options: tuple = ()
    flags: tuple = ()

    @property
    def name(self) -> str:
        return (f"{self.order}/{self.shortcut}" + "".join(f":{k}={v}" for k, v in self.options)
                + "".join(f" {flag}" for flag in self.flags))

    @property
    def slug(self) -> str:
        """File-system name of the variant's folder."""
        return (f"{self.order}__{self.shortcut}" + "".join(f"__{k}_{v}" for k, v in self.options)
                + "".join("__" + re.sub(r"[^A-Za-z0-9.]+", "_", flag.lstrip("-")) for flag in self.flags))

    def trainer_flags(self) -> list:
        return [f"--order={self.order}", f"--shortcut={self.shortcut}",
                *(f"--{k}={v}" for k, v in self.options), *self.flags]


def _parse_options(shortcut: str, texts) -> tuple:
    """``["gate_bias_init=0", "scale_residual"]`` -> sorted ``(name, value)`` pairs, checked."""
    options = {}
    for text in texts:
        name, _, value = (part.strip() for part in text.partition("="))
        value = value or "true"  # a bare name switches a boolean option on
        common.check_choice("shortcut option", name, tuple(common.SHORTCUT_OPTIONS))
        users = common.SHORTCUT_OPTIONS[name]
        if shortcut not in users:
            raise ValueError(f"Option {name!r} is used by the {' and '.join(users)} shortcut(s), "
                             f"not by {shortcut!r}.")
        if name in options:
            raise ValueError(f"Option {name!r} is given twice.")
        if name == "scale_residual":
            if value.lower() not in ("true", "false"):
                raise ValueError(f"scale_residual takes true or false, got {value!r}.")
            value = value.lower()
        else:
            try:
                number = float(value)
            except ValueError:
                raise ValueError(f"Option {name!r} needs a number, got {value!r}.") from None
            value = f"{number:g}"
        options[name] = value
    return tuple(sorted(options.items()))


# Trainer flags a row may not set: the unit has its own syntax, the rest is one per study.
UNIT_FLAGS = ("order", "shortcut", *common.SHORTCUT_OPTIONS)
STUDY_FLAGS = ("model", "seed", "epochs", "model_dir", "data_dir", "dataset")


def flag_name(argument: str) -> str:
    """``"--label_smoothing=0"`` -> ``"label_smoothing"``; ``"--nonesterov"`` -> ``"nonesterov"``."""
    return argument[2:].split("=", 1)[0]


def _parse_row_flags(texts) -> tuple:
    """The trainer flags after a variant's unit, in the order given, checked."""
    seen = set()
    for text in texts:
        name = flag_name(text)
        if not text.startswith("--") or not name:
            raise ValueError(f"{text!r}: a row's trainer flags are written --name=value.")
        if name in UNIT_FLAGS:
            raise ValueError(f"{text!r}: give the unit in the variant itself (order/shortcut:option=value).")
        if name in STUDY_FLAGS:
            raise ValueError(f"{text!r}: --{name} is one per study; give it to the runner.")
        if name in seen:
            raise ValueError(f"{text!r}: --{name} is given twice in one row.")
        seen.add(name)
    return tuple(texts)


def parse_variant(spec: str, base_order: str = "original") -> Variant:
    """``"order/shortcut"``, ``"order"`` (identity shortcut) or ``"shortcut"`` (``base_order``),
    optionally followed by shortcut options: ``"shortcut_only_gating:gate_bias_init=0"``,
    ``"original/constant_scaling:scale_residual"`` (a bare name sets a boolean option), then by
    trainer flags of this row alone, separated by spaces: ``"full_preact --nonesterov"``.

    Raises ValueError naming the valid orders, shortcuts and options.
    """
    first_flag = re.search(r"(?:^|\s)--", spec)  # the unit may contain spaces, a flag starts with --
    unit, flag_text = (spec[:first_flag.start()], spec[first_flag.start():]) if first_flag else (spec, "")
    text, *option_texts = unit.strip().split(":")
    text = text.strip()
    common.check_choice("base order", base_order, common.ORDERS)
    if "/" in text:
        order, shortcut = (part.strip() for part in text.split("/", 1))
    elif text in common.ORDERS:
        order, shortcut = text, "identity"
    elif text in common.SHORTCUTS:
        order, shortcut = base_order, text
    else:
        raise ValueError(
            f"Unknown variant {spec!r}: give an order ({', '.join(common.ORDERS)}), a shortcut "
            f"({', '.join(common.SHORTCUTS)}) or order/shortcut, then optionally trainer flags of the row "
            f"(e.g. --label_smoothing=0)."
        )
    common.check_choice("order", order, common.ORDERS)
    common.check_choice("shortcut", shortcut, common.SHORTCUTS)
    return Variant(order, shortcut, _parse_options(shortcut, option_texts), _parse_row_flags(flag_text.split()))


def parse_variants(specs, base_order: str = "original") -> list:
    """Parse a list of specs; duplicates are an error (they would share one run folder)."""
    variants = [parse_variant(spec, base_order) for spec in specs if spec.strip()]
    if not variants:
        raise ValueError("No variants given.")
    seen = {}
    for variant in variants:
        if variant.slug in seen:  # two rows would share one run folder
            raise ValueError(f"Variant {variant.name} is listed twice"
                             + ("." if seen[variant.slug] == variant else f" (as {seen[variant.slug].name})."))
        seen[variant.slug] = variant
    return variants


def run_dir(out_dir: str, variant: Variant, seed: int) -> str:
    return os.path.join(out_dir, "runs", variant.slug, f"seed{seed}")


STATUS_FILE = "ablation_status.json"


def is_finished(path: str) -> bool:
    return os.path.exists(os.path.join(path, RESULTS_FILE))


def record_status(path: str, status: str) -> None:
    """Remember that a run ended without results (``diverged``), so that running the study again
    reports it instead of training it again: a diverged run diverges again with the same seed
    (Table 1's dropout shortcut did, twice, 10 minutes each). Delete the run's folder to retry."""
    with open(os.path.join(path, STATUS_FILE), "w") as handle:
        json.dump({"status": status}, handle)


def recorded_status(path: str) -> str | None:
    """The status ``record_status`` left in a run folder, or None."""
    try:
        with open(os.path.join(path, STATUS_FILE)) as handle:
            return json.load(handle)["status"]
    except FileNotFoundError:
        return None


@dataclasses.dataclass
class RunResult:
    """What one (variant, seed) run produced; ``status`` is finished, diverged, failed or missing."""

    variant: Variant
    seed: int
    status: str
    test_error: float | None = None  # final, as a fraction
    steps: int | None = None
    parameters: int | None = None
    train_minutes: float | None = None  # training wall time (evaluations and checkpoints left out)
    curves: dict = dataclasses.field(default_factory=dict)  # train_loss / test_error vs epoch

    @property
    def final_train_loss(self) -> float | None:
        """Mean training loss over the last tenth of the run's logged points.

        The paper's Fig. 6 compares training loss as well as test error; one logged batch
        loss is noisy, so the last tenth of the run is averaged (at least one point).
        """
        points = self.curves.get("train_loss") or []
        if self.status != "finished" or not points:
            return None
        last = points[-1][0]
        tail = [loss for epoch, loss in points if epoch >= 0.9 * last]
        return statistics.fmean(tail)


def read_run(path: str, variant: Variant, seed: int, status: str | None = None,
             eval_name: str = "test") -> RunResult:
    """Read a run folder back (results.json + metrics.csv)."""
    rows = read_metrics(os.path.join(path, "metrics.csv"))
    curves = {
        "train_loss": [(float(r["epoch"]), float(r["train_loss"])) for r in rows if r["train_loss"]],
        "test_error": [(float(r["epoch"]), float(r["test_error"])) for r in rows
                       if r["test_error"] and (r["eval_name"] or eval_name) == eval_name],
    }
    seconds = train_seconds(rows)
    result = RunResult(variant, seed, status or recorded_status(path) or "missing", curves=curves,
                       train_minutes=seconds / 60 if seconds is not None else None)
    results_path = os.path.join(path, RESULTS_FILE)
    if os.path.exists(results_path):
        with open(results_path) as handle:
            record = json.load(handle)
        final = record["final"].get(eval_name) or next(iter(record["final"].values()), None)
        result.status = "finished"
        result.test_error = final["error"] if final else None
        result.steps = record.get("steps")
        result.parameters = record.get("parameters")
    return result


def summarize(results) -> list:
    """One row per variant (in first-seen order): median, mean, std (sample, n-1) of the error.

    Runs that diverged or failed are counted and left out of the statistics; the paper marks
    such rows "fail" rather than averaging them in.
    """
    by_variant = {}
    for result in results:
        by_variant.setdefault(result.variant, []).append(result)
    rows = []
    for variant, runs in by_variant.items():
        errors = [100 * r.test_error for r in runs if r.status == "finished" and r.test_error is not None]
        losses = [r.final_train_loss for r in runs if r.final_train_loss is not None]
        minutes = [r.train_minutes for r in runs if r.status == "finished" and r.train_minutes]
        rows.append({
            "variant": variant.name,
            "order": variant.order,
            "shortcut": variant.shortcut,
            "runs": len(runs),
            "finished": len(errors),
            "not_finished": ", ".join(f"seed {r.seed}: {r.status}" for r in runs if r.status != "finished"),
            "median_error": statistics.median(errors) if errors else math.nan,
            "mean_error": statistics.fmean(errors) if errors else math.nan,
            "std_error": statistics.stdev(errors) if len(errors) > 1 else math.nan,
            "errors": [round(e, 4) for e in errors],
            "median_train_loss": statistics.median(losses) if losses else math.nan,
            "median_train_minutes": statistics.median(minutes) if minutes else math.nan,
            "parameters": next((r.parameters for r in runs if r.parameters), None),
        })
    return rows


CSV_FIELDS = ("variant", "order", "shortcut", "runs", "finished", "median_error", "mean_error",
              "std_error", "errors", "median_train_loss", "median_train_minutes", "parameters",
              "not_finished")


def _cell(value, digits=2):
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.{digits}f}"
    return "" if value is None else str(value)


def markdown_table(rows, title: str = "") -> str:
    lines = [f"**{title}**", ""] if title else []
    lines += [
        "| variant | runs | median test error (%) | mean +- std (%) | per-run errors (%) "
        "| final training loss (median) | training minutes (median) | parameters |",
        "|---|---:|---:|---:|---|---:|---:|---:|",
    ]
    for row in rows:
        runs = f"{row['finished']}/{row['runs']}"
        if row["not_finished"]:
            runs += f" ({row['not_finished']})"
        spread = (f"{_cell(row['mean_error'])} +- {_cell(row['std_error'])}"
                  if row["finished"] else "fail")
        lines.append(
            f"| {row['variant']} | {runs} | {_cell(row['median_error'])} | {spread} | "
            f"{', '.join(f'{e:.2f}' for e in row['errors'])} | {_cell(row['median_train_loss'], 3)} | "
            f"{_cell(row['median_train_minutes'], 1)} | "
            f"{'' if row['parameters'] is None else format(row['parameters'], ',')} |"
        )
    return "\n".join(lines) + "\n"


def write_table(rows, out_dir: str, title: str = "") -> tuple:
    """``results.md`` and ``results.csv`` in ``out_dir`` (written atomically); their paths."""
    md_path = os.path.join(out_dir, "results.md")
    csv_path = os.path.join(out_dir, "results.csv")
    with open(md_path + ".tmp", "w") as handle:
        handle.write(markdown_table(rows, title))
    with open(csv_path + ".tmp", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: (" ".join(map(str, row[k])) if k == "errors" else _cell(row[k], 4))
                             for k in CSV_FIELDS})
    os.replace(md_path + ".tmp", md_path)
    os.replace(csv_path + ".tmp", csv_path)
    return md_path, csv_path


def _median_curve(curves):
    """Point-wise median over runs, on the epochs every run has (runs log the same steps)."""
    if not curves:
        return [], []
    common = sorted(set.intersection(*(set(x for x, _ in c) for c in curves)))
    values = [statistics.median(dict(c)[x] for c in curves) for x in common]
    return common, values


def plot_ablation(results, png_path: str, title: str = "") -> str:
    """Training loss (dashed) and test error (solid) of every variant, median over its seeds.

    A variant none of whose runs finished (diverged, failed) is drawn too, labelled so; the loss
    axis stops a little above the finished runs' highest loss, so that a diverging curve does
    not flatten the others. The legend sits below both panels (Table 1 has 8 rows).
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.lines import Line2D

    by_variant = {}
    for result in results:
        by_variant.setdefault(result.variant, []).append(result)
    legend_rows = (len(by_variant) + 1) // 2
    figure, (loss_axis, error_axis) = plt.subplots(1, 2, figsize=(11, 4.2 + 0.22 * legend_rows), dpi=100)
    # Tables 1 and 2 have up to 9 rows: past the default cycle's 10 colours, take 20 distinct ones.
    colors = (plt.rcParams["axes.prop_cycle"].by_key()["color"] if len(by_variant) <= 10
              else [plt.get_cmap("tab20")(i) for i in range(20)])
    handles, finished_losses = [], []
    for i, (variant, runs) in enumerate(by_variant.items()):
        color = colors[i % len(colors)]
        finished = [r for r in runs if r.status == "finished"]
        for key, axis, style, scale in (("train_loss", loss_axis, "--", 1.0),
                                        ("test_error", error_axis, "-o", 100.0)):
            x, y = _median_curve([r.curves[key] for r in runs if r.curves.get(key)])
            if x:
                axis.plot(x, [scale * v for v in y], style, color=color, linewidth=1.5, markersize=3)
        finished_losses += [loss for r in finished for _, loss in r.curves.get("train_loss", [])]
        note = f"{len(finished)}/{len(runs)} runs" + ("" if finished else f", {runs[0].status}")
        handles.append(Line2D([], [], color=color, linewidth=1.5, label=f"{variant.name} ({note})"))
    if finished_losses:
        loss_axis.set_ylim(0, 1.1 * max(finished_losses))
    loss_axis.set_ylabel("training loss (median over seeds)")
    error_axis.set_ylabel("test error % (median over seeds)")
    for axis in (loss_axis, error_axis):
        axis.set_xlabel("epochs")
        axis.grid(alpha=0.3)
    figure.legend(handles=handles, loc="lower center", bbox_to_anchor=(0.5, 0.01), ncol=2,
                  fontsize=8, frameon=False)
    height = figure.get_figheight()  # inches: the x labels (0.6) and the legend rows (0.2 each)
    figure.subplots_adjust(left=0.07, right=0.98, wspace=0.22, top=1 - 0.5 / height,
                           bottom=(0.65 + 0.2 * legend_rows) / height)
    if title:
        figure.suptitle(title)
    return save_figure(figure, png_path, tight_layout=False)
