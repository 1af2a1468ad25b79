"""``export_model``: one call from a trained model to every deployable artefact, verified.

Layout written (``<version>`` is an integer, the next free one by default)::

    <base_dir>/<name>/<version>/             the SavedModel TF Serving loads as is
        saved_model.pb, variables/, fingerprint.pb
        assets.extra/                        ignored by TF Serving
            parity.json                      the parity report (keras_preact.export.parity)
            labels.txt                       class names, one per line, in label order
            tflite/float32.tflite, float16.tflite, int8.tflite
            model.onnx                       with onnx=True (``pip install "keras_preact[onnx]"``)

With ``tta`` other than ``"none"`` every artefact (both SavedModel signatures, each TFLite file,
the ONNX model) computes the test-time augmentation of ``keras_preact.tta``: the mean of the
logits over the views of each image (``"flip"``: the image and its mirror image, two forward
passes; ``"translate"``: the image and its copies shifted one pixel up, down, left and right,
five; ``"flip_translate"``: those five and their mirror images, ten). The parity report then
compares each artefact with that averaged Keras model and names it in ``reference``.

An export runs in stages, one function each: :func:`plan_export` (every check, and
:func:`prepare_model`), :func:`build_archive` (the SavedModel), :func:`write_artefacts` (BN
folding, TFLite, ONNX), :func:`check_parity` (``parity.json``) and :func:`publish`.

The version directory is assembled in a hidden staging directory next to it and renamed into
place only once everything is written and the float32 parity checks passed, so a TF Serving
instance polling ``<base_dir>/<name>`` never loads a half-written or unverified version.

Held-out images for the parity report and calibration images for int8 come from the caller;
without them, preprocessing ``"cifar"`` uses the CIFAR-10 sample shipped in the package (test
split for parity, train split for calibration: real images, no download). The other
preprocessings fall back to random images, which checks parity but says nothing about accuracy;
the report records which.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

import keras_preact  # noqa: F401  (registers the package's serializable layers for load_model_file)
from keras_preact.data import cifar10_sample_dir, guard, list_image_folder, write_label_map
from keras_preact.export import onnx as onnx_lib
from keras_preact.export import parity as parity_lib
from keras_preact.export import tflite as tflite_lib
from keras_preact.export.fold import fold_batch_norm
from keras_preact.export.tta import apply_tta
from keras_preact.model import ResNet, float32_model, unstack, with_data_format
from keras_preact.tta import check_tta
from keras_preact.export.saved_model import (
    DEFAULT_TOP_K,
    check_model_for_export,
    write_saved_model,
)

EXTRA_DIR = "assets.extra"  # TF Serving ignores it (it only reads warm-up requests from it)
PARITY_FILE = "parity.json"
TFLITE_DIR = "tflite"
DEFAULT_EVAL_LIMIT = 1000
DEFAULT_CALIBRATION_SIZE = 200
SYNTHETIC_IMAGES = 64


class ExportParityError(RuntimeError):
    """An exported float32 artefact does not reproduce the Keras model; nothing was published."""


def existing_versions(model_dir: str) -> list:
    """Integer version directories under ``model_dir``, sorted."""
    if not os.path.isdir(model_dir):
        return []
    return sorted(int(d) for d in os.listdir(model_dir) if d.isdigit())


def resolve_version(model_dir: str, version) -> int:
    """``version`` as an int, or the next free one; an existing version is never overwritten."""
    versions = existing_versions(model_dir)
    if version is None:
        return (versions[-1] + 1) if versions else 1
    if isinstance(version, bool) or not str(version).isdigit() or int(version) < 1:
        raise ValueError(f"version must be a positive integer (TF Serving's layout), got {version!r}.")
    version = int(version)
    if version in versions:
        raise ValueError(
            f"Version {version} already exists in {model_dir}; a served version is never "
            f"overwritten. Pass version=None for the next one ({versions[-1] + 1})."
        )
    return version


def load_model_file(path: str) -> keras.Model:
    """Load a ``.keras`` file (importing keras_preact registers its layers)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No model file at {path!r}.")
    if not path.endswith(".keras"):
        raise ValueError(f"Expected a .keras file, got {path!r}.")
    return keras.saving.load_model(path, compile=False)


def _read_files(paths) -> list:
    out = []
    for path in paths:
        with open(path, "rb") as f:
            out.append(f.read())
    return out


def _spread(items: list, limit: int) -> list:
    """``limit`` items evenly spread over ``items`` (image folders are sorted by class)."""
    if limit is None or len(items) <= limit:
        return list(items)
    index = np.linspace(0, len(items) - 1, limit).round().astype(int)
    return [items[i] for i in index]


def image_folder_split(root: str, split: str, limit: int, class_names=None):
    """``(encoded images, labels or None)`` of ``root/<split>/<class>/*``, ``limit`` spread over classes.

    Labels are kept only if the folder's classes are ``class_names`` (same names, same order).
    """
    paths, labels, folder_classes = list_image_folder(root, split)
    pairs = _spread(list(zip(paths, labels)), limit)
    images = _read_files(p for p, _ in pairs)
    keep = class_names is not None and list(folder_classes) == [str(c) for c in class_names]
    return images, (np.array([l for _, l in pairs], np.int64) if keep else None)


def synthetic_images(size: int, count: int, seed: int = 0) -> list:
    """Random RGB images as PNG bytes (lossless, so the two preprocessing paths see equal pixels)."""
    rng = np.random.RandomState(seed)
    pixels = rng.randint(0, 256, size=(count, size, size, 3), dtype=np.uint8)
    return [tf.io.encode_png(p).numpy() for p in pixels]


def default_data(preprocessing: str, class_names, eval_limit: int, calibration_size: int, size: int):
    """Held-out and calibration data when the caller gives none (see the module docstring)."""
    if preprocessing == "cifar":
        root = cifar10_sample_dir()
        eval_images, eval_labels = image_folder_split(root, "test", eval_limit, class_names)
        calibration, _ = image_folder_split(root, "train", calibration_size)
        return eval_images, eval_labels, calibration, "keras_preact CIFAR-10 sample (JPEG copy)"
    images = synthetic_images(size, SYNTHETIC_IMAGES)
    return images, None, images, "random images (no held-out set given: parity only, no accuracy)"


class _Steps:
    """One progress line per export stage, ``[k/N] elapsed what`` (an export takes a minute)."""

    def __init__(self, total: int, verbose: bool):
        self.total = total
        self.verbose = verbose
        self.count = 0
        self.start = time.time()

    def note(self, what: str):
        """A line within the current stage (no step counted)."""
        if self.verbose:
            print(f"      {time.time() - self.start:6.1f}s  {what}", file=sys.stderr, flush=True)

    def done(self, what: str):
        self.count += 1
        if self.verbose:
            print(
                f"[{self.count}/{self.total}] {time.time() - self.start:6.1f}s  {what}",
                file=sys.stderr,
                flush=True,
            )


# What the parity report calls its reference, per test-time augmentation (the Keras model that
# every artefact must reproduce).
TTA_REFERENCE = {
    "none": "keras",
    "flip": "keras, flip test-time augmentation (2 views: the image and its mirror image)",
    "translate": "keras, translate test-time augmentation (5 views: the image and its copies shifted "
                 "one pixel up, down, left and right)",
    "flip_translate": "keras, flip_translate test-time augmentation (10 views: the five one-pixel "
                      "translations and their mirror images)",
}


@dataclasses.dataclass
class ExportJob:
    """What the stages of one export share, settled by :func:`plan_export` before anything is written."""

    network: keras.Model  # the bare classifier: what BN folding works on
    model: keras.Model  # what every artefact computes: ``network`` or its TTA wrapper
    name: str
    version: int
    model_dir: str
    preprocessing: str
    image_size: int
    class_names: list
    tta: str
    top_k: int
    tflite_variants: tuple
    onnx: bool
    fold: bool
    eval_images: list
    eval_labels: object  # int64 [N] or None
    calibration_images: list
    calibration_size: int
    data_source: str
    max_image_pixels: int
    max_image_side: int


@dataclasses.dataclass
class Artefacts:
    """What :func:`write_artefacts` converted and wrote, for the parity check and its report."""

    folded: keras.Model | None = None
    fold_report: object = None
    tflite_models: dict = dataclasses.field(default_factory=dict)
    tflite_info: dict = dataclasses.field(default_factory=dict)
    onnx_model: bytes | None = None
    onnx_info: dict | None = None
    calibration_count: int = 0


def prepare_model(model, tta: str) -> tuple:
    """``(network, served)``: the classifier to export and what every artefact will compute.

    ``model`` is a Keras classifier that outputs logits, or the path of a ``.keras`` file. A
    :class:`~keras_preact.model.ResNet` is converted to channels_last (a channels_first network
    is rebuilt NHWC with the same weights: every artefact takes NHWC images, and TensorFlow's
    CPU kernels, TFLite and the ONNX converter run NHWC natively, where an NCHW graph would
    need a transpose around every convolution or a oneDNN build), to float32 (trained in mixed
    precision, served in float32 all the same) and its stacked stages to residual units (one
    while loop over stacked weights cannot be saved as a SavedModel; the units hold the same
    weights and compute the same results). ``served`` is ``network`` itself for
    ``tta="none"``, else its test-time augmentation wrapper
    (:func:`keras_preact.export.tta.tta_averaged`).
    """
    check_tta(tta)
    if isinstance(model, (str, os.PathLike)):
        model = load_model_file(os.fspath(model))
    if isinstance(model, ResNet):
        model = unstack(float32_model(with_data_format(model, "channels_last")))
    return model, apply_tta(model, tta)


def plan_export(
    model,
    base_dir: str,
    *,
    name: str,
    version=None,
    preprocessing: str,
    class_names,
    top_k: int = DEFAULT_TOP_K,
    tflite_variants=tflite_lib.VARIANTS,
    onnx: bool = False,
    fold: bool = True,
    eval_images=None,
    eval_labels=None,
    calibration_images=None,
    eval_limit: int = DEFAULT_EVAL_LIMIT,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    max_image_pixels: int = guard.DEFAULT_MAX_PIXELS,
    max_image_side: int = guard.DEFAULT_MAX_SIDE,
    tta: str = "none",
) -> ExportJob:
    """Check every argument, prepare the model and pick the held-out data; write nothing.

    Arguments as :func:`export_model`'s. Raises ValueError (ImportError for ``onnx=True``
    without the ``[onnx]`` extra) before anything is written.
    """
    check_tta(tta)  # before any model is loaded
    network, served = prepare_model(model, tta)
    size, _ = check_model_for_export(served, preprocessing, class_names)
    class_names = [str(c) for c in class_names]
    tflite_variants = tuple(tflite_variants or ())
    for variant in tflite_variants:
        tflite_lib.check_variant(variant)
    if onnx:
        onnx_lib.require()  # fail before writing anything if the optional extra is missing
    if not name or os.sep in name or name.startswith("."):
        raise ValueError(f"name must be a plain directory name, got {name!r}.")
    model_dir = os.path.join(base_dir, name)
    version = resolve_version(model_dir, version)
    if eval_images is None:
        eval_images, eval_labels, default_calibration, data_source = default_data(
            preprocessing, class_names, eval_limit, calibration_size, size
        )
        calibration_images = calibration_images or default_calibration
    else:
        data_source = "caller-provided held-out images"
        eval_images = list(eval_images)
        if calibration_images is None:
            calibration_images = eval_images[:calibration_size]
    return ExportJob(
        network=network, model=served, name=name, version=version, model_dir=model_dir,
        preprocessing=preprocessing, image_size=size, class_names=class_names, tta=tta,
        top_k=min(int(top_k), len(class_names)), tflite_variants=tflite_variants, onnx=bool(onnx),
        fold=bool(fold), eval_images=eval_images, eval_labels=eval_labels,
        calibration_images=list(calibration_images), calibration_size=int(calibration_size),
        data_source=data_source, max_image_pixels=int(max_image_pixels),
        max_image_side=int(max_image_side),
    )


def build_archive(job: ExportJob, directory: str) -> None:
    """Write the SavedModel TF Serving loads into ``directory``, and ``assets.extra/labels.txt``.

    The SavedModel holds ``job.model`` (the original Keras weights, never the BN-folded copy)
    with the ``serving_default`` (encoded image bytes in, the export's preprocessing traced in)
    and ``predict_images`` (preprocessed floats in) signatures of
    :func:`keras_preact.export.saved_model.serving_archive`.
    """
    write_saved_model(
        job.model,
        directory,
        preprocessing=job.preprocessing,
        class_names=job.class_names,
        top_k=job.top_k,
        max_image_pixels=job.max_image_pixels,
        max_image_side=job.max_image_side,
    )
    os.makedirs(os.path.join(directory, EXTRA_DIR), exist_ok=True)
    write_label_map(job.class_names, os.path.join(directory, EXTRA_DIR))


def write_artefacts(job: ExportJob, directory: str, steps=None) -> Artefacts:
    """Fold BN, then write each TFLite variant and (``job.onnx``) the ONNX model under ``assets.extra/``.

    With ``job.fold`` the BN-folded network (:func:`~keras_preact.export.fold.fold_batch_norm`),
    wrapped in the same test-time augmentation, is what TFLite and ONNX convert; otherwise
    ``job.model``. Every TFLite file is checked to hold builtin ops only. The int8 variant is
    calibrated on ``job.calibration_images`` (at most ``job.calibration_size``), preprocessed
    by ``keras_preact.data`` as the float signature expects.
    """
    steps = steps or _Steps(0, verbose=False)
    extra = os.path.join(directory, EXTRA_DIR)
    os.makedirs(os.path.join(extra, TFLITE_DIR), exist_ok=True)
    out = Artefacts()
    if job.fold:
        out.folded, out.fold_report = fold_batch_norm(job.network, return_report=True)
        out.folded = apply_tta(out.folded, job.tta)  # fold_batch_norm needs the ResNet: fold, then wrap
        steps.done(
            f"BN folding: {len(out.fold_report.folded_into_conv)} folded into convs, "
            f"{len(out.fold_report.kept_as_affine)} kept as multiply-adds"
        )
    converted = out.folded if job.fold else job.model
    calibration = None
    if "int8" in job.tflite_variants:
        calibration = parity_lib.preprocess_encoded(
            job.calibration_images[: job.calibration_size], job.preprocessing
        )
        out.calibration_count = int(len(calibration))
    for variant in job.tflite_variants:
        flatbuffer = tflite_lib.convert_model(converted, variant, job.image_size, calibration)
        tflite_lib.check_builtin_ops(flatbuffer)
        with open(os.path.join(extra, TFLITE_DIR, f"{variant}.tflite"), "wb") as f:
            f.write(flatbuffer)
        out.tflite_models[variant] = flatbuffer
        out.tflite_info[variant] = {
            "file": f"{EXTRA_DIR}/{TFLITE_DIR}/{variant}.tflite",
            "bytes": len(flatbuffer),
            "ops": tflite_lib.op_counts(flatbuffer),
            "non_builtin_ops": tflite_lib.non_builtin_ops(flatbuffer),
        }
        steps.done(f"TFLite {variant}: {len(flatbuffer)} bytes, builtin ops only")
    if job.onnx:
        out.onnx_model = onnx_lib.convert_model(converted, job.image_size)
        with open(os.path.join(extra, onnx_lib.ONNX_FILE), "wb") as f:
            f.write(out.onnx_model)
        out.onnx_info = {
            "file": f"{EXTRA_DIR}/{onnx_lib.ONNX_FILE}",
            "from": "bn_folded_model" if job.fold else "keras_model",
            "bytes": len(out.onnx_model),
            "opset": onnx_lib.OPSET,
            "input": onnx_lib.INPUT_NAME,
            "output": onnx_lib.OUTPUT_NAME,
            "ops": onnx_lib.op_counts(out.onnx_model),
        }
        steps.done(f"ONNX: {len(out.onnx_model)} bytes, opset {onnx_lib.OPSET}")
    return out


def check_parity(job: ExportJob, directory: str, artefacts: Artefacts, steps=None) -> dict:
    """Run every artefact in ``directory`` on the held-out images; write and return the parity report.

    The reference is ``job.model`` in Keras (with the export's test-time augmentation, which
    the report's ``reference`` names); :func:`keras_preact.export.parity.parity_report` gives
    the comparisons, ONNX's against ``serving_default`` included. The report, with the export's
    settings (``export``: preprocessing, test-time augmentation, class names, ...), the TFLite
    and ONNX files and the BN folding, is written to ``assets.extra/parity.json``.
    """
    steps = steps or _Steps(0, verbose=False)
    report = parity_lib.parity_report(
        job.model,
        preprocessing=job.preprocessing,
        encoded_images=job.eval_images,
        labels=job.eval_labels,
        saved_model_dir=directory,
        folded_model=artefacts.folded,
        tflite_models=artefacts.tflite_models,
        onnx_model=artefacts.onnx_model,
        progress=lambda artefact: steps.note(f"parity: {artefact} compared"),
    )
    report["reference"] = TTA_REFERENCE[job.tta]
    report["data"] = job.data_source
    report["export"] = {
        "name": job.name,
        "version": job.version,
        "preprocessing": job.preprocessing,
        "image_size": job.image_size,
        "class_names": job.class_names,
        "top_k": job.top_k,
        "tflite_from": "bn_folded_model" if job.fold else "keras_model",
        "tta": job.tta,
        "calibration_images": artefacts.calibration_count,
        "max_image_pixels": job.max_image_pixels,
        "max_image_side": job.max_image_side,
    }
    report["tflite"] = artefacts.tflite_info
    if artefacts.onnx_info is not None:
        report["onnx"] = artefacts.onnx_info
    if artefacts.fold_report is not None:
        report["fold"] = artefacts.fold_report.as_dict()
    with open(os.path.join(directory, EXTRA_DIR, PARITY_FILE), "w") as f:
        json.dump(report, f, indent=2)
    steps.done("parity report:\n" + parity_lib.format_report(report))
    return report


def publish(staging: str, final: str) -> str:
    """Rename the finished ``staging`` directory to ``final`` (the version directory); return it.

    The rename is atomic: a TF Serving instance polling the model directory sees the whole
    version or none of it, and it fails if another export took the version meanwhile.
    ``mkdtemp`` made the staging directory private (0700); a TF Serving process running as
    another user (e.g. in a container) must be able to read the published version, so it
    becomes 0755 first.
    """
    os.chmod(staging, 0o755)
    os.rename(staging, final)
    return final


def export_model(
    model,
    base_dir: str,
    *,
    name: str,
    version=None,
    preprocessing: str,
    class_names,
    top_k: int = DEFAULT_TOP_K,
    tflite_variants=tflite_lib.VARIANTS,
    onnx: bool = False,
    fold: bool = True,
    eval_images=None,
    eval_labels=None,
    calibration_images=None,
    eval_limit: int = DEFAULT_EVAL_LIMIT,
    calibration_size: int = DEFAULT_CALIBRATION_SIZE,
    max_image_pixels: int = guard.DEFAULT_MAX_PIXELS,
    max_image_side: int = guard.DEFAULT_MAX_SIDE,
    tta: str = "none",
    strict: bool = True,
    verbose: bool = True,
) -> str:
    """Export ``model`` to ``base_dir/<name>/<version>/`` with TFLite variants and a parity report.

    The stages, each a function of this module: :func:`plan_export` (checks, and
    :func:`prepare_model`), :func:`build_archive` (the SavedModel), :func:`write_artefacts`
    (BN folding, TFLite, ONNX), :func:`check_parity` (parity.json) and :func:`publish`. All but
    the last write into a hidden staging directory next to the version directory.

    Args:
      model: a Keras classifier that outputs logits, or the path of a ``.keras`` file.
      base_dir: the TF Serving model base (e.g. ``"saved_models"``).
      name: the model's name under ``base_dir`` (TF Serving's model name).
      version: positive integer; None picks the next free one. Existing versions are never
        overwritten.
      preprocessing: the evaluation preprocessing of ``keras_preact.data`` (``"cifar"``,
        ``"imagenet_224"``, ``"imagenet_320"``) the serving signature applies.
      class_names: one name per output, in label order.
      top_k: how many classes the signatures return (capped at the number of classes).
      tflite_variants: which of ``"float32"``, ``"float16"``, ``"int8"`` to write (empty: none).
      onnx: also write ``assets.extra/model.onnx`` (Keras' ``model.export(format="onnx")``;
        input: the preprocessed float batch, output: logits) and check it with ONNX Runtime,
        against Keras and against ``serving_default``. Needs ``pip install
        "keras_preact[onnx]"``; without it an ImportError is raised before anything is written.
      fold: convert the BN-folded model (``fold_batch_norm``) to TFLite and ONNX; the
        SavedModel always holds the original Keras model.
      eval_images, eval_labels: held-out encoded images (JPEG/PNG bytes) and labels for the
        parity report; calibration_images: encoded images for int8 calibration (training
        images, ideally; default with ``eval_images`` given: the first of those). Defaults
        without ``eval_images``: see the module docstring.
      eval_limit, calibration_size: how many default images to use.
      max_image_pixels, max_image_side: the serving signature's decompression-bomb limits.
      tta: test-time augmentation computed by every artefact (``keras_preact.tta``):
        ``"none"`` (default, one forward pass per image); ``"flip"``, the mean of the logits
        of the image and its mirror image (two); ``"translate"``, of the image and its copies
        shifted one pixel up, down, left and right with zero fill (five);
        ``"flip_translate"``, of those five and their mirror images (ten). BN folding applies
        to the network inside the wrapper. Recorded as ``export.tta`` and named in
        ``reference`` in the parity report.
      strict: raise ``ExportParityError`` (and publish nothing) if a float32 artefact differs
        from Keras by more than the tolerance.
      verbose: print progress to stderr.

    Returns:
      The path of the new version directory.
    """
    job = plan_export(
        model, base_dir, name=name, version=version, preprocessing=preprocessing,
        class_names=class_names, top_k=top_k, tflite_variants=tflite_variants, onnx=onnx,
        fold=fold, eval_images=eval_images, eval_labels=eval_labels,
        calibration_images=calibration_images, eval_limit=eval_limit,
        calibration_size=calibration_size, max_image_pixels=max_image_pixels,
        max_image_side=max_image_side, tta=tta,
    )
    steps = _Steps(3 + len(job.tflite_variants) + int(job.onnx) + int(job.fold), verbose)
    os.makedirs(job.model_dir, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".staging-{job.version}-", dir=job.model_dir)
    try:
        build_archive(job, staging)
        steps.done(f"SavedModel written ({job.name}, version {job.version})")
        artefacts = write_artefacts(job, staging, steps)
        report = check_parity(job, staging, artefacts, steps)
        if strict and not report["float32_parity_passed"]:
            raise ExportParityError(
                "float32 artefacts differ from the Keras model beyond the tolerance:\n"
                + parity_lib.format_report(report)
            )
        final = publish(staging, os.path.join(job.model_dir, str(job.version)))
        staging = None
        steps.done(f"published {final}")
        return final
    finally:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
