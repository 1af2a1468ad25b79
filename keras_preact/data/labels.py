"""The label map: ``labels.txt`` next to checkpoints and exports, one class name per line.

Line ``i`` (0-based) is the name of label ``i``, so a served model's output index can be
turned back into a class name without the training data.
"""

from __future__ import annotations

import os

LABEL_MAP_FILENAME = "labels.txt"


def write_label_map(class_names, directory: str) -> str:
    """Write ``directory/labels.txt`` (one class per line, in label order); returns its path."""
    names = [str(name) for name in class_names]
    if not names:
        raise ValueError("write_label_map needs at least one class name.")
    bad = [name for name in names if not name or "\n" in name or "\r" in name]
    if bad:
        raise ValueError(f"Class names must be non-empty single lines; got {bad!r}.")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LABEL_MAP_FILENAME)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n".join(names) + "\n")
    os.replace(tmp, path)  # atomic: a reader never sees a half-written map
    return path


def read_label_map(directory: str) -> list:
    """The class names stored in ``directory/labels.txt``, in label order."""
    path = os.path.join(directory, LABEL_MAP_FILENAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No label map at {path} (write one with write_label_map).")
    with open(path, encoding="utf-8") as f:
        names = [line.rstrip("\r\n") for line in f]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise ValueError(f"Label map {path} is empty.")
    return names
