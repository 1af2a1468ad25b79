"""Image folders (``<root>/<split>/<class>/<image>``) listed without TensorFlow.

The listing is shared by the ``tf.data`` pipeline (:func:`keras_preact.data.sources.folder_source`)
and the NumPy one (:class:`keras_preact.data.arrays.ArraySplit`), so both number the classes
the same way: class folders sorted by name, label ``i`` for the ``i``-th. Only the standard
library is imported here, so a JAX- or PyTorch-only install can read image folders.
"""

from __future__ import annotations

import logging
import os

logger = logging.getLogger("keras_preact.data")

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# Source names the pipelines share: the CIFAR-10 sample shipped in the package, and the prefix
# that marks a source as an image folder whatever its name.
SAMPLE_SOURCE = "cifar10_sample"
FOLDER_PREFIX = "folder:"


def list_image_folder(root: str, split: str):
    """Files and labels of ``root/<split>/<class>/<image>``; class names sorted.

    Returns ``(paths, labels, class_names)``. Fails at once, naming the problem, on a missing
    directory, a split without class folders, or class folders without images. Files whose
    extension is not an image extension are ignored (and counted in one log line);
    hidden files and folders (starting with '.') are ignored.
    """
    if not os.path.isdir(root):
        raise FileNotFoundError(f"Image folder root {root!r} does not exist (expected root/<split>/<class>/<image>).")
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
        available = sorted(
            d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)) and not d.startswith(".")
        )
        raise FileNotFoundError(
            f"Split folder {split_dir!r} does not exist. Splits found under {root!r}: "
            f"{', '.join(available) if available else 'none'}."
        )
    class_names = sorted(
        d for d in os.listdir(split_dir) if not d.startswith(".") and os.path.isdir(os.path.join(split_dir, d))
    )
    if not class_names:
        raise ValueError(
            f"Split {split!r} is empty: {split_dir!r} holds no class folders (expected {split_dir}/<class>/<image>)."
        )
    paths, labels, empty, ignored = [], [], [], []
    for label, name in enumerate(class_names):
        class_dir = os.path.join(split_dir, name)
        files = []
        with os.scandir(class_dir) as entries:
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_file():
                    continue
                if entry.name.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(entry.path)
                else:
                    ignored.append(entry.path)
        if not files:
            empty.append(name)
        files.sort()
        paths.extend(files)
        labels.extend([label] * len(files))
    if empty:
        raise ValueError(
            f"Empty class folder(s) in {split_dir!r}: {', '.join(empty)}. Every class needs at least one image "
            f"({', '.join(IMAGE_EXTENSIONS)}); remove the folder or add images."
        )
    if ignored:
        logger.warning(
            "Ignored %d file(s) without an image extension under %s, e.g. %s", len(ignored), split_dir, ignored[0]
        )
    return paths, labels, class_names
