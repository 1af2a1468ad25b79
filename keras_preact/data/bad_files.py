"""Bookkeeping for undecodable files met while a pipeline runs: count them, log each once.

"Undecodable" includes files the image-safety guard refuses (``keras_preact.data.guard``:
a header declaring more pixels than the limits, e.g. a decompression bomb).

A corrupt JPEG among a million must not end a multi-hour run with an opaque decoder error,
so by default the pipeline drops it and reports it here; ``strict=True`` fails instead.
"""

from __future__ import annotations

import logging
import threading

logger = logging.getLogger("keras_preact.data")


class BadFileLog:
    """The undecodable files a pipeline skipped, each logged (WARNING) the first time only.

    ``files``: distinct file names, in the order first seen; ``count``: how many distinct
    files; ``skips``: how many times any file was skipped (a bad file is met every epoch);
    ``unnamed``: skips whose file could not be named (only after more than 32 bad files in
    a row of the shuffled stream).
    """

    def __init__(self):
        self._lock = threading.Lock()  # tf.data calls in from several threads
        self.files = []
        self._seen = set()
        self.skips = 0
        self.unnamed = 0

    @property
    def count(self) -> int:
        return len(self.files)

    def record(self, names) -> None:
        """Record skipped files (an iterable of str or bytes)."""
        for name in names:
            if isinstance(name, bytes):
                name = name.decode("utf-8", "replace")
            with self._lock:
                self.skips += 1
                first_time = name not in self._seen
                if first_time:
                    self._seen.add(name)
                    self.files.append(name)
            if first_time:
                logger.warning(
                    "Skipping unreadable or undecodable image file (not an image, truncated, corrupt, or above the image-size limits): %s", name
                )

    def record_unnamed(self, n: int) -> None:
        """Record ``n`` skipped files whose names were lost (a run of many bad files in a row)."""
        with self._lock:
            self.skips += n
            self.unnamed += n
        logger.warning("Skipped %d more undecodable image file(s) in a row; names not recorded.", n)

    def __repr__(self) -> str:
        return f"BadFileLog(count={self.count}, skips={self.skips})"
