"""Export and deployment: SavedModel for TF Serving, TFLite, ONNX, BN folding, verified parity.

    >>> from keras_preact import export
    >>> path = export.export_model(model, "saved_models", name="resnet20", preprocessing="cifar",
    ...                            class_names=["airplane", ..., "truck"])

The command line does the same from a ``.keras`` file or a training checkpoint::

    python -m keras_preact.export --model_file model.keras --name resnet20 --preprocessing cifar

``export_model(..., tta="flip")`` (``--tta=flip``) makes every artefact average the logits of
each image and its mirror image (``flip_averaged``); ``"flip_translate"`` also averages their
copies shifted by one pixel (``tta_averaged``, ten views). See ``docs/serving.md`` for the TF
Serving, TFLite (LiteRT) and ONNX usage.
"""

from keras_preact.export.exporter import (
    ExportParityError,
    existing_versions,
    export_model,
    load_model_file,
)
from keras_preact.export.fold import ChannelAffine, FoldReport, fold_batch_norm
from keras_preact.export.onnx import ONNX_FILE, OnnxRunner, convert_model as convert_to_onnx
from keras_preact.export.parity import FLOAT_TOLERANCE, format_report, parity_report
from keras_preact.data.guard import checked_image_bytes
from keras_preact.export.saved_model import (
    FLOAT_SIGNATURE,
    SERVING_SIGNATURE,
    serving_archive,
    write_saved_model,
)
from keras_preact.export.tflite import (
    VARIANTS as TFLITE_VARIANTS,
    TFLiteRunner,
    check_builtin_ops,
    convert_model as convert_to_tflite,
    op_counts,
)
from keras_preact.export.tta import (
    HorizontalFlip,
    Translate,
    ViewMean,
    flip_averaged,
    tta_averaged,
)
from keras_preact.tta import TTA_CHOICES

__all__ = [
    "ChannelAffine",
    "ExportParityError",
    "FLOAT_SIGNATURE",
    "FLOAT_TOLERANCE",
    "FoldReport",
    "HorizontalFlip",
    "ONNX_FILE",
    "OnnxRunner",
    "SERVING_SIGNATURE",
    "TFLITE_VARIANTS",
    "TFLiteRunner",
    "TTA_CHOICES",
    "Translate",
    "ViewMean",
    "check_builtin_ops",
    "checked_image_bytes",
    "convert_to_onnx",
    "convert_to_tflite",
    "existing_versions",
    "export_model",
    "flip_averaged",
    "fold_batch_norm",
    "format_report",
    "load_model_file",
    "op_counts",
    "parity_report",
    "serving_archive",
    "tta_averaged",
    "write_saved_model",
]
