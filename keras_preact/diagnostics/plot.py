"""The propagation figure: norms against unit index, one colour per variant.

matplotlib is imported inside :func:`plot_propagation` (with the non-interactive Agg backend),
so importing ``keras_preact.diagnostics`` never needs it or a display.
"""

from __future__ import annotations

import numpy as np


def plot_propagation(results: dict, path: str, title: str, dpi: int = 100) -> None:
    """Write a PNG with three log-scale panels, one line per variant.

    Args:
      results: ``{variant label: propagation_norms(...) output}``.
      path: the PNG to write.
      title: figure title (model, batch, BN mode).

    Panels: forward ``||x_l||``; backward ``||dE/dx_l||`` (solid) with its shortcut-path term
    (dashed, same colour); and the scale-free product ``||x_l|| * ||dE/dx_l||``, which is what
    BN-normalised networks can be compared on (BN makes E invariant to the scale of x_l).
    Dotted vertical lines mark the first unit of each later stage (dimension-changing units).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (label, norms) in enumerate(results.items()):
        colour = colours[k % len(colours)]
        index = np.arange(1, len(norms["forward"]) + 1)
        axes[0].plot(index, norms["forward"], color=colour, label=label)
        axes[1].plot(index, norms["backward"], color=colour, label=label)
        axes[1].plot(index, norms["backward_direct"], color=colour, linestyle="--")
        axes[2].plot(index, norms["forward"] * norms["backward"], color=colour, label=label)
    axes[0].set_title("forward: ||x_l|| (unit input)")
    axes[1].set_title("backward: ||dE/dx_l||  (dashed: shortcut-path term)")
    axes[2].set_title("scale-free product ||x_l|| * ||dE/dx_l||")
    # A stage's first unit changes dimensions (its shortcut subsamples): mark where they sit.
    first_units = next(iter(results.values()))["units"]
    boundaries = [i + 1 for i, name in enumerate(first_units) if i and name.endswith("_unit1")]
    for ax in axes:
        for boundary in boundaries:
            ax.axvline(boundary, color="grey", linestyle=":", linewidth=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("residual unit l")
        ax.grid(True, which="major", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
