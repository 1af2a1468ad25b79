"""Weights from other frameworks: timm's ResNetV2 and PyTorch state dicts, exact by construction.

Two layouts of PyTorch tensors are understood, read from a ``.safetensors`` file or a PyTorch
state-dict file (``torch.save``; read without PyTorch, or with it when it is installed):

* ``"timm"`` -- timm's pre-activation ``ResNetV2`` with BatchNorm (``resnetv2_50``,
  ``resnetv2_101``, and any ResNetV2 built with ``BatchNormAct2d`` and the paper's bottleneck or
  basic unit): ``stem.conv.weight``, ``stages.<s>.blocks.<u>.norm1.weight``, ...,
  ``norm.weight``, ``head.fc.weight``. Its architecture differs from the paper's ImageNet code in
  two ways, both options of :class:`keras_preact.ResNet` that the file fixes: the stem has no
  BN-ReLU (``stem="timm"``; the first unit applies it before its split) and strided ops pad
  symmetrically (``padding="symmetric"``, Torch's convention).
* ``"torch"`` -- a state dict whose names are this package's own layer paths with dots
  (``stem_conv.weight``, ``stage1_unit1.conv1.weight``, ``stage1_unit1.preact_bn.running_mean``,
  ``predictions.weight``): what a PyTorch re-implementation of the paper's networks that mirrors
  the layer names writes, e.g. ``tools/make_torch_fixtures.py``.

Every variable of the Keras model must find its tensor with the right shape and every tensor
of the file must be used (``num_batches_tracked`` aside); otherwise a ValueError names the first
mismatching tensor. Convolution kernels are transposed from Torch's OIHW to Keras' HWIO, which
Keras keeps for both of its layouts, and the classifier follows a global average pool (no
flatten whose order would depend on the layout): every loader here fills a ``channels_first``
model exactly as a ``channels_last`` one.

``.keras`` and ``.weights.h5`` files load with Keras' own ``load_weights``; preset folders
(keras_preact's, or keras-hub's ResNetV2) with ``keras_preact.presets``. Every entry point also
takes a hub handle (``hf://...``, ``kaggle://...``), resolved to the hub's cache by
``keras_preact.hub``. ``.safetensors`` files are read and written by the ``safetensors``
package (its NumPy API).

    model = keras_preact.ResNet50(weights="resnetv2_50.safetensors")   # timm's logits, as is
    python -m keras_preact.cli.convert_weights resnetv2_50.safetensors --model resnet50 --out resnet50.keras
"""

from __future__ import annotations

import collections
import json
import os
import pickle
import re
import struct
import zipfile

import keras
import numpy as np

from keras_preact import hub, presets
from keras_preact.model import ResNet, as_resnet, through_units, unstack

FORMATS = ("timm", "torch")
KERAS_SUFFIXES = (".keras", ".weights.h5")
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")
SAFETENSORS_SUFFIX = ".safetensors"
_BN = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean",
       "moving_variance": "running_var"}
_IGNORED = re.compile(r"(^|\.)num_batches_tracked$")


# -- reading files ----------------------------------------------------------------------------
def _bf16_to_float32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def _safetensors_header(path: str) -> tuple:
    """(header dict, byte offset of the data) of a ``.safetensors`` file: 8 bytes of header
    length, the JSON header, then the tensors' bytes (the format's specification)."""
    with open(path, "rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        return json.loads(handle.read(size)), 8 + size


def read_safetensors(path: str) -> dict:
    """The tensors of a ``.safetensors`` file as numpy arrays; bfloat16 ones as float32.

    Read by the ``safetensors`` package (its NumPy API, no framework needed). NumPy has no
    bfloat16, so ``safetensors.numpy`` refuses such tensors (``safe_open(...).get_tensor``
    raises ``TypeError: data type 'bfloat16' not understood``); their raw bytes are read at the
    header's offsets instead and widened to float32, which is exact (bfloat16 is float32 with
    its low 16 mantissa bits dropped). timm publishes some checkpoints in bfloat16.
    """
    from safetensors import SafetensorError, safe_open

    tensors, bf16 = {}, []
    try:
        with safe_open(path, framework="numpy") as handle:
            for name in handle.keys():
                if handle.get_slice(name).get_dtype() == "BF16":
                    bf16.append(name)
                else:
                    tensors[name] = np.array(handle.get_tensor(name))
    except SafetensorError as error:
        raise ValueError(f"{path} is not a valid .safetensors file: {error}") from None
    if bf16:
        header, data_start = _safetensors_header(path)
        with open(path, "rb") as handle:
            for name in bf16:
                start, end = header[name]["data_offsets"]
                handle.seek(data_start + start)
                raw = np.frombuffer(handle.read(end - start), np.uint16)
                tensors[name] = _bf16_to_float32(raw).reshape(header[name]["shape"])
    return tensors


def write_safetensors(tensors: dict, path: str) -> None:
    """Write name -> numpy array as a ``.safetensors`` file (``safetensors.numpy.save_file``;
    readable by PyTorch's ``safetensors.torch.load_file`` and timm)."""
    from safetensors.numpy import save_file

    save_file({name: np.ascontiguousarray(array) for name, array in tensors.items()}, path)


# torch.save's storage classes -> numpy dtypes ("bf16" is converted to float32).
_TORCH_STORAGES = {"FloatStorage": np.float32, "DoubleStorage": np.float64,
                   "HalfStorage": np.float16, "BFloat16Storage": "bf16",
                   "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
                   "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


def _rebuild_tensor(storage, offset, size, stride, *unused):
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[offset:], shape=tuple(size), strides=tuple(s * itemsize for s in stride)
    )
    return np.array(view)


def _rebuild_parameter(data, *unused):
    return data


class _StateDictUnpickler(pickle.Unpickler):
    """Reads ``torch.save`` zip archives of tensors without PyTorch; refuses any other object."""

    _ALLOWED = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }

    def __init__(self, handle, archive: zipfile.ZipFile, prefix: str):
        super().__init__(handle)
        self.archive = archive
        self.prefix = prefix

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return self._ALLOWED[(module, name)]
        if module == "torch" and name in _TORCH_STORAGES:
            return name
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: only tensors and dicts of tensors are read"
        )

    def persistent_load(self, pid):
        _, storage, key, _location, _numel = pid
        dtype = _TORCH_STORAGES.get(storage if isinstance(storage, str) else "")
        if dtype is None:
            raise pickle.UnpicklingError(f"unsupported storage {storage!r}")
        raw = self.archive.read(f"{self.prefix}data/{key}")
        if dtype == "bf16":
            return _bf16_to_float32(np.frombuffer(raw, np.uint16))
        return np.frombuffer(raw, dtype)


def read_torch_state_dict(path: str) -> dict:
    """The tensors of a ``torch.save`` file (zip format, PyTorch 1.6+) as numpy arrays.

    Uses PyTorch (``weights_only=True``) when it is installed, a restricted reader otherwise.
    """
    try:
        import torch  # optional: only to read files the restricted reader cannot
    except ImportError:
        return read_torch_archive(path)
    loaded = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in _unwrap(loaded).items() if hasattr(v, "numpy")}


def read_torch_archive(path: str) -> dict:
    """The restricted reader: a ``torch.save`` zip archive read without PyTorch.

    Its unpickler only rebuilds tensors and ordered dicts; anything else is refused, not run.
    It stays beside the ``safetensors`` reader because many checkpoints (the paper-era Torch
    ports, ``pytorch_model.bin`` files, training checkpoints) exist only as ``torch.save``
    pickles, and the only other ways to read them are installing PyTorch (a large dependency
    for reading a few tensors) or ``pickle.load``, which runs whatever code the file names.
    """
    if not zipfile.is_zipfile(path):
        raise ValueError(f"{path} is not a PyTorch zip archive (legacy torch.save format): "
                         "install torch to read it, or save it as .safetensors.")
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
        if len(pickles) != 1:
            raise ValueError(f"{path} does not look like a torch.save archive (no single data.pkl).")
        prefix = pickles[0][: -len("data.pkl")]
        with archive.open(pickles[0]) as handle:
            loaded = _StateDictUnpickler(handle, archive, prefix).load()
    return {k: v for k, v in _unwrap(loaded).items() if isinstance(v, np.ndarray)}


def _unwrap(loaded) -> dict:
    """A bare state dict from a checkpoint dict ({"state_dict": ...}, "module." prefixes)."""
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(key), dict):
            loaded = loaded[key]
    if not isinstance(loaded, dict):
        raise ValueError(f"Expected a state dict (a dict of tensors), got {type(loaded).__name__}.")
    return {re.sub(r"^module\.", "", k): v for k, v in loaded.items()}


def read_tensors(path: str) -> dict:
    """Name -> numpy array for a ``.safetensors`` or PyTorch state-dict file."""
    path = os.path.expanduser(str(path))
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No weights file {path!r}.")
    if path.endswith(SAFETENSORS_SUFFIX):
        return read_safetensors(path)
    if path.endswith(TORCH_SUFFIXES) or zipfile.is_zipfile(path):
        return read_torch_state_dict(path)
    raise ValueError(
        f"Cannot tell the format of {path!r}: expected .safetensors, a PyTorch state dict "
        f"({', '.join(TORCH_SUFFIXES)}) or a Keras file ({', '.join(KERAS_SUFFIXES)})."
    )


# -- the two layouts ----------------------------------------------------------------------------
def detect_layout(tensors: dict) -> str:
    """``"timm"`` or ``"torch"`` (see the module docstring), or a ValueError."""
    if "stem.conv.weight" in tensors and any(k.startswith("stages.0.blocks.0.") for k in tensors):
        if any(k.startswith("stages.0.blocks.0.norm1.running_mean") for k in tensors):
            return "timm"
        raise ValueError("This timm ResNetV2 uses GroupNorm (BiT) or no pre-activation BatchNorm; "
                         "only BatchNorm ResNetV2 models (resnetv2_50, resnetv2_101, ...) match "
                         "the paper's units.")
    if "stem_conv.weight" in tensors:
        return "torch"
    first = next(iter(tensors), None)
    raise ValueError(
        f"Unknown weight layout (first tensor {first!r}): expected timm's ResNetV2 "
        "(stem.conv.weight, stages.0.blocks.0...) or keras_preact layer names (stem_conv.weight)."
    )


def implied_architecture(tensors: dict, layout: str) -> dict:
    """The architecture arguments a file fixes (timm: stem, padding, stages, widths, head;
    ``torch`` layout: the head)."""
    if layout != "timm":  # a keras_preact-named file fixes only its head
        head = tensors.get("predictions.weight")
        return {"num_classes": int(head.shape[0])} if head is not None else {"include_top": False}
    stages = []
    while f"stages.{len(stages)}.blocks.0.conv1.weight" in tensors:
        s = len(stages)
        count = 0
        while f"stages.{s}.blocks.{count}.conv1.weight" in tensors:
            count += 1
        stages.append(count)
    bottleneck = "stages.0.blocks.0.conv3.weight" in tensors
    widths = tuple(int(tensors[f"stages.{s}.blocks.0.conv1.weight"].shape[0])
                   for s in range(len(stages)))
    if bottleneck:
        outs = [int(tensors[f"stages.{s}.blocks.0.conv3.weight"].shape[0]) for s in range(len(stages))]
        if outs != [4 * w for w in widths]:
            raise ValueError(
                f"This ResNetV2's bottlenecks expand {widths} to {outs}, not 4x as the paper's "
                "(timm rounds narrow widths up to 8); it has no keras_preact equivalent."
            )
    stem = tensors["stem.conv.weight"]
    implied = dict(
        family="imagenet", stem="timm", padding="symmetric", order="full_preact",
        stride_at="3x3", downsample="projection", unit="bottleneck" if bottleneck else "basic",
        units_per_stage=tuple(stages), widths=widths, stem_width=int(stem.shape[0]),
        input_shape=(None, None, int(stem.shape[1])),
    )
    if "head.fc.weight" in tensors:
        implied["num_classes"] = int(tensors["head.fc.weight"].shape[0])
    else:
        implied["include_top"] = False
    return implied


def _timm_name(path: str) -> str | None:
    """timm's tensor name for a Keras variable path, or None where timm has none."""
    parts = path.split("/")
    var = parts[-1]
    torch_var = _BN.get(var, "weight" if var == "kernel" else var)
    if parts[0] == "stem_conv":
        return f"stem.conv.{torch_var}"
    if parts[0] == "final_bn":
        return f"norm.{torch_var}"
    if parts[0] == "predictions":
        return f"head.fc.{torch_var}"
    match = re.fullmatch(r"stage(\d+)_unit(\d+)", parts[0])
    if match and len(parts) == 3:
        block = f"stages.{int(match.group(1)) - 1}.blocks.{int(match.group(2)) - 1}"
        sub = {"preact_bn": "norm1", "shortcut_conv": "downsample.conv"}.get(parts[1], parts[1])
        sub = re.sub(r"^bn(\d)$", r"norm\1", sub)
        return f"{block}.{sub}.{torch_var}"
    return None


def _torch_name(path: str) -> str:
    parts = path.split("/")
    var = parts[-1]
    return ".".join(parts[:-1] + [_BN.get(var, "weight" if var == "kernel" else var)])


def torch_tensors(model: ResNet) -> dict:
    """The model's variables in the ``"torch"`` layout (names and Torch tensor layouts), e.g. to
    load into a PyTorch build that mirrors the layer names or to write with
    :func:`write_safetensors`."""
    model = unstack(as_resnet(model, "torch_tensors"))
    out = {}
    for variable in model.weights:
        value = np.asarray(variable)
        if value.ndim == 4:
            value = value.transpose(3, 2, 0, 1)
        elif value.ndim == 2:
            value = value.T
        out[_torch_name(variable.path)] = np.ascontiguousarray(value)
    return out


def _to_keras(array: np.ndarray, shape: tuple) -> np.ndarray:
    """Torch layout -> Keras layout for ``shape`` (conv OIHW -> HWIO, linear (O, I) -> (I, O))."""
    if len(shape) == 4 and array.ndim == 4:
        return array.transpose(2, 3, 1, 0)
    if len(shape) == 2 and array.ndim in (2, 4):  # Linear, or timm's 1x1-conv classifier
        return array.reshape(array.shape[0], -1).T
    return array


def load_tensors(model: ResNet, tensors: dict, layout: str | None = None,
                 skip_head: bool = False) -> str:
    """Assign ``tensors`` (one of ``FORMATS``' layouts) to ``model``; returns the layout used.

    ``skip_head=True`` leaves the classifier as it is (fine-tuning with another class count)
    and ignores the file's classifier tensors. Raises ValueError naming the first mismatch.
    """
    model = as_resnet(model, "load_tensors")
    layout = layout or detect_layout(tensors)
    if model.architecture.stacked_stages:
        return through_units(model, lambda flat: load_tensors(flat, tensors, layout, skip_head))
    name_of = _timm_name if layout == "timm" else _torch_name
    head_prefix = "head.fc." if layout == "timm" else "predictions."
    used, assignments = set(), []
    for variable in model.weights:
        if skip_head and variable.path.startswith("predictions/"):
            continue
        name = name_of(variable.path)
        if name is None:
            raise ValueError(
                f"A {layout} ResNetV2 has no tensor for {variable.path!r}: build the model with "
                "the architecture the file fixes (keras_preact.weights.implied_architecture)."
            )
        if name not in tensors:
            raise ValueError(f"The weights file has no tensor {name!r} (for {variable.path!r}, "
                             f"shape {tuple(variable.shape)}): a different architecture.")
        value = _to_keras(np.asarray(tensors[name]), tuple(variable.shape))
        if tuple(value.shape) != tuple(variable.shape):
            raise ValueError(
                f"Tensor {name!r} has shape {tuple(tensors[name].shape)}, but {variable.path!r} "
                f"needs {tuple(variable.shape)}: a different architecture."
            )
        used.add(name)
        assignments.append((variable, value))
    unused = [k for k in tensors if k not in used and not _IGNORED.search(k)
              and not (skip_head and k.startswith(head_prefix))]
    if unused:
        raise ValueError(f"The model has no variable for tensor {unused[0]!r} of the weights file "
                         f"({len(unused)} unused): a different architecture.")
    for variable, value in assignments:
        variable.assign(value.astype(variable.dtype))
    return layout


def local_weights(weights) -> str:
    """A local path for ``weights``: a hub handle (``hf://``, ``kaggle://``; ``keras_preact.hub``)
    is resolved to the files in the hub's cache, downloading them if needed; a path is
    returned as is (``~`` expanded)."""
    if hub.is_handle(weights):
        return hub.resolve(weights)
    return os.path.expanduser(os.fspath(weights))


def load_weights(model: ResNet, path: str, skip_head: bool = False) -> None:
    """Load weights into ``model``: Keras files by Keras, preset folders (keras_preact's or
    keras-hub's ResNetV2) by ``keras_preact.presets``, the others by their layout. ``path``
    may be a hub handle."""
    path = local_weights(path)
    if os.path.isdir(path):
        presets.load_weights(model, path, skip_head=skip_head)
        return
    if path.endswith(KERAS_SUFFIXES):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No weights file {path!r}.")
        if skip_head:
            source = keras.saving.load_model(path, safe_mode=True) if path.endswith(".keras") else None
            if source is None:
                raise ValueError("skip_head needs a .keras file (a .weights.h5 file has no architecture).")
            _copy_backbone(source, model)
            return
        model.load_weights(path)
        return
    load_tensors(model, read_tensors(path), skip_head=skip_head)


def _copy_backbone(source, target) -> None:
    """Copy every weight but the classifier's between two builds of one backbone."""
    targets = {v.path: v for v in target.weights if not v.path.startswith("predictions/")}
    sources = {v.path: v for v in source.weights if not v.path.startswith("predictions/")}
    if sorted(targets) != sorted(sources):
        missing = sorted(set(targets) ^ set(sources))
        raise ValueError(f"The weights file's backbone differs from the model's: {missing[0]!r}.")
    for path, variable in targets.items():
        if tuple(sources[path].shape) != tuple(variable.shape):
            raise ValueError(f"{path!r} has shape {tuple(sources[path].shape)} in the weights "
                             f"file, {tuple(variable.shape)} in the model.")
        variable.assign(sources[path])


def file_architecture(path: str) -> dict:
    """The architecture arguments a weights file or preset folder fixes (empty for Keras
    files); ``path`` may be a hub handle."""
    path = local_weights(path)
    if os.path.isdir(path):
        return presets.architecture(path)
    if path.endswith(KERAS_SUFFIXES):
        return {}
    tensors = read_tensors(path)
    return implied_architecture(tensors, detect_layout(tensors))


def model_from_file(path: str, **kwargs) -> ResNet:
    """A ResNet with the architecture a timm file fixes, its weights loaded."""
    tensors = read_tensors(path)
    layout = detect_layout(tensors)
    arch = implied_architecture(tensors, layout)
    if layout != "timm":
        raise ValueError(f"{path}: a {layout!r} file does not fix an architecture; build the "
                         "model and call keras_preact.weights.load_weights.")
    arch.update(kwargs)
    model = ResNet(arch.pop("units_per_stage"), **arch)
    load_tensors(model, tensors, layout)
    return model
