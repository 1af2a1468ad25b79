"""What a training run shows: a progress bar, TensorBoard summaries, ``metrics.csv`` and a plot.

Only the chief process of a run observes; the other workers stay silent.

``metrics.csv`` has one row per logging interval (training columns) and one per evaluation
(test columns); empty cells are missing values. ``plot_curves`` draws it the way the paper's
figures do: test error (solid, left axis, %) and training loss (dashed, right axis) against
iterations.
"""

from __future__ import annotations

import csv
import math
import os
import sys
import time

from keras_preact.training.event_file import EventFileWriter

# A finished run's final evaluations (written by the trainer, read by the ablation runner).
RESULTS_FILE = "results.json"

METRIC_FIELDS = (
    "step",
    "epoch",
    "learning_rate",
    "train_loss",
    "train_error",
    "images_per_sec",
    "eval_name",
    "test_loss",
    "test_error",
    "wall_time",
    "train_seconds",
)


def format_duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


class ProgressBar:
    """``step 1200/64000 [==>   ] loss 0.5120 acc 82.1% 1234 img/s ETA 1:23:45``.

    On a terminal the line redraws in place; otherwise (logs, pipes) it prints a line every
    ``print_every`` steps. The rate and ETA come from the steps of this process only, so a
    resumed run does not credit itself with the steps it restored.
    """

    def __init__(self, total_steps: int, start_step: int = 0, *, stream=None, print_every=50):
        self.total = int(total_steps)
        self.start_step = int(start_step)
        self.stream = stream or sys.stdout
        self.interactive = hasattr(self.stream, "isatty") and self.stream.isatty()
        self.print_every = max(1, int(print_every))
        self.started = time.monotonic()
        self.last_line = ""
        self.drawn = False  # a bar is on the terminal's current line, without its newline

    def line(self, step: int, loss: float, accuracy: float, images_per_sec: float) -> str:
        done = step - self.start_step
        elapsed = time.monotonic() - self.started
        eta = elapsed / done * (self.total - step) if done > 0 else float("nan")
        width = 20
        filled = int(width * step / self.total) if self.total else width
        filled = min(max(filled, 0), width)
        bar = "=" * width if filled == width else "=" * filled + ">" + " " * (width - filled - 1)
        eta_text = format_duration(eta) if math.isfinite(eta) else "?"
        return (
            f"step {step}/{self.total} [{bar}] loss {loss:.4f} acc {100 * accuracy:.1f}% "
            f"{images_per_sec:.0f} img/s ETA {eta_text}"
        )

    def update(self, step, loss, accuracy, images_per_sec, force=False):
        self.last_line = self.line(step, loss, accuracy, images_per_sec)
        if self.interactive:
            self.stream.write("\r" + self.last_line + "\033[K")
            self.drawn = step < self.total  # the last step's bar ends its line
            if not self.drawn:
                self.stream.write("\n")
            self.stream.flush()
        elif force or step % self.print_every == 0 or step >= self.total:
            self.stream.write(self.last_line + "\n")
            self.stream.flush()

    def message(self, text: str):
        """Print ``text`` on its own line without breaking the bar (redrawn below it while the
        run goes on)."""
        if self.drawn:
            self.stream.write("\r\033[K")
        self.stream.write(text + "\n")
        if self.drawn:
            self.stream.write(self.last_line)
        self.stream.flush()

    def close(self):
        """End the bar's line, so that whatever is printed next starts a line of its own."""
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


class MetricsLog:
    """Appends rows to ``metrics.csv``; on resume drops rows past the restored step.

    Rows logged after the last checkpoint describe work the restart will redo, so keeping them
    would draw the same iterations twice.
    """

    def __init__(self, path: str, resume_step: int = 0):
        self.path = path
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        kept = [row for row in read_metrics(path) if int(row["step"]) <= resume_step]
        with open(path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=METRIC_FIELDS)
            writer.writeheader()
            writer.writerows(kept)

    def last_value(self, column: str, default: float = 0.0) -> float:
        """The last non-empty value of ``column`` in the kept rows (``default`` if none)."""
        for row in reversed(read_metrics(self.path)):
            if row.get(column):
                return float(row[column])
        return default

    def append(self, **row):
        unknown = set(row) - set(METRIC_FIELDS)
        if unknown:
            raise ValueError(f"Unknown metrics.csv columns {sorted(unknown)}.")
        row.setdefault("wall_time", f"{time.time():.3f}")
        with open(self.path, "a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=METRIC_FIELDS).writerow(
                {k: _format(v) for k, v in row.items()}
            )


def _format(value):
    if isinstance(value, float):
        return f"{value:.6g}"
    return value


def read_metrics(path: str) -> list:
    """The rows of a ``metrics.csv`` as dicts of strings (an empty list if there is none)."""
    if not os.path.exists(path):
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def train_seconds(rows: list) -> float | None:
    """A run's time in training steps, from its ``metrics.csv`` rows (None if none recorded).

    The trainer's clock adds up over every process of a resumed run, so the largest value is the
    whole run's, whatever pauses lie between the processes.
    """
    seconds = [float(r["train_seconds"]) for r in rows if r.get("train_seconds")]
    return max(seconds) if seconds else None


class TensorBoardLog:
    """Scalars under ``<log_dir>/train`` and ``<log_dir>/<eval name>`` for TensorBoard.

    The event files are written by ``event_file`` (no TensorFlow, no ``tensorboard``), so a run
    on any Keras backend logs them. Viewing them needs ``pip install tensorboard``; writing them
    does not.
    """

    def __init__(self, log_dir: str):
        self.log_dir = log_dir
        self.writers = {}

    def scalars(self, group: str, step: int, values: dict):
        if group not in self.writers:
            self.writers[group] = EventFileWriter(os.path.join(self.log_dir, group))
        self.writers[group].scalars(int(step), values)

    def close(self):
        for writer in self.writers.values():
            writer.close()


def plot_curves(metrics_path: str, png_path: str, title: str = "") -> str:
    """Draw training loss and test error against iterations (paper Fig. 1/4 style) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    rows = read_metrics(metrics_path)
    train = [(int(r["step"]), float(r["train_loss"])) for r in rows if r["train_loss"]]
    tests = {}
    for r in rows:
        if r["test_error"]:
            tests.setdefault(r["eval_name"] or "test", []).append(
                (int(r["step"]), 100 * float(r["test_error"]))
            )
    figure, error_axis = plt.subplots(figsize=(7, 4.5), dpi=100)
    loss_axis = error_axis.twinx()
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    if train:
        loss_axis.plot(*zip(*train), "--", color=colors[0], linewidth=1, label="training loss")
    for i, (name, points) in enumerate(sorted(tests.items())):
        error_axis.plot(
            *zip(*points), "-", marker="o", markersize=3, color=colors[(i + 1) % len(colors)], linewidth=2,
            label=f"{name} error",
        )
    error_axis.set_xlabel("iterations")
    error_axis.set_ylabel("test error (%)")
    loss_axis.set_ylabel("training loss")
    error_axis.set_ylim(bottom=0)
    loss_axis.set_ylim(bottom=0)
    handles = error_axis.get_legend_handles_labels()[0] + loss_axis.get_legend_handles_labels()[0]
    if handles:
        error_axis.legend(handles=handles, loc="upper center", framealpha=0.9)
    error_axis.grid(alpha=0.3)
    if title:
        error_axis.set_title(title)
    return save_figure(figure, png_path)


def save_figure(figure, png_path: str, tight_layout: bool = True) -> str:
    """Lay out (unless the caller placed the axes itself), write and close a matplotlib figure;
    readers never see a half-written PNG."""
    from matplotlib import pyplot as plt

    if tight_layout:
        figure.tight_layout()
    tmp_path = png_path + ".tmp.png"
    figure.savefig(tmp_path)
    plt.close(figure)
    os.replace(tmp_path, png_path)
    return png_path
