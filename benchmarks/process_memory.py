"""Peak resident memory of the current process, as the benchmark workers report it, and what
a worker's death says about memory.

``resource.getrusage(RUSAGE_SELF).ru_maxrss`` survives ``exec`` on Linux (the kernel keeps the
replaced image's high-water mark), so a worker started by a parent that has imported TensorFlow
reports at least the parent's resident memory at the fork, whatever the worker itself uses.
``VmHWM`` in /proc/self/status is the high-water mark of this process image alone. Imports
nothing but the standard library (the PyTorch worker must not import Keras).
"""

from __future__ import annotations

import os
import resource
import signal


def peak_rss_gb(status: str = "/proc/self/status") -> float:
    """This process's peak resident set in GiB: ``VmHWM`` on Linux, ``ru_maxrss`` elsewhere."""
    try:
        with open(status) as handle:
            for line in handle:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 2**20, 3)  # kB
    except OSError:
        pass
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)


def worker_failure(returncode: int, stderr: str) -> str:
    """One line for a worker process that failed: its last line of stderr, or, for a worker
    killed by a signal (no traceback to show), the signal, naming the likely out-of-memory kill
    for SIGKILL (the kernel's OOM killer sends it without a word)."""
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        why = f"killed by {name}"
        if -returncode == signal.SIGKILL:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
            why += f" (out of memory? this machine has {total:.0f} GiB; try a smaller --batch)"
        return why
    return (stderr.strip().splitlines() or [f"exit {returncode}, no output"])[-1]
