"""The serving side's name for the shared image-safety guard (``keras_preact.data.guard``).

The checks live in the data layer, so training, evaluation, the diagnostics batch, ``classify``
and the serving signature all apply the same limits; the exporter imports them from there.
"""

from __future__ import annotations

from keras_preact.data.guard import (  # noqa: F401
    BMP_MAGIC,
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIDE,
    FORMATS,
    GIF_MAGICS,
    JPEG_MAGIC,
    PNG_MAGIC,
    checked_image_bytes,
    image_format,
)
