"""Peak resident memory of the current process, as the benchmark workers report it.

``resource.getrusage(RUSAGE_SELF).ru_maxrss`` survives ``exec`` on Linux (the kernel keeps the
replaced image's high-water mark), so a worker started by a parent that has imported TensorFlow
reports at least the parent's resident memory at the fork, whatever the worker itself uses.
``VmHWM`` in /proc/self/status is the high-water mark of this process image alone. Imports
nothing but the standard library (the PyTorch worker must not import Keras).
"""

from __future__ import annotations

import resource


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
