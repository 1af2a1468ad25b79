"""Presets: a network and its weights as a folder in keras-hub's layout, saved and loaded by name.

A preset folder holds

* ``config.json`` -- ``keras.saving.serialize_keras_object(model)``, as keras-hub writes it
  (``compile_config`` and ``build_config`` left out): ``registered_name`` is
  ``keras_preact>ResNet`` and ``config`` the architecture arguments (``ResNet.get_config``);
* ``model.weights.h5`` -- ``model.save_weights``;
* ``metadata.json`` -- ``keras_version``, ``keras_preact_version``, ``parameter_count``,
  ``date_saved`` (keras-hub's keys, with the package's version in place of keras-hub's).

``from_preset`` loads such a folder, a keras-hub ResNetV2 preset (``ResNetBackbone`` with
``use_pre_activation=True``; ``keras_preact.keras_hub_presets``), or either by hub handle
(``hf://owner/repo``, ``kaggle://owner/model/framework/variation[/version]``;
``keras_preact.hub``), always as a :class:`keras_preact.ResNet`. Loading is safe by
construction: only our registered class is deserialized (``safe_mode=True``, no lambdas), and
a ``config.json`` naming any other class is refused before anything is built. Only Keras, NumPy
and JSON are used, so presets save and load on every backend.

    keras_preact.save_to_preset(model, "resnet56_cifar10")
    model = keras_preact.from_preset("resnet56_cifar10")
    model = keras_preact.from_preset("kaggle://keras/resnetv2/keras/resnet_v2_50_imagenet/3")
"""

from __future__ import annotations

import datetime
import json
import os

import keras

from keras_preact import hub, keras_hub_presets
from keras_preact.common import LEGACY_DATA_FORMAT, PACKAGE
from keras_preact.model import ResNet, as_resnet, through_units, unstack

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.weights.h5"
METADATA_FILE = "metadata.json"
REGISTERED_NAME = f"{PACKAGE}>ResNet"
# The keys keras-hub's preset saver drops from the serialized object.
_UNSAVED_KEYS = ("compile_config", "build_config")


def _package_version() -> str | None:
    """keras_preact's version, from the installed distribution (no import of the package root,
    which imports this module)."""
    from importlib import metadata

    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return None


def save_to_preset(model: ResNet, preset_dir: str) -> None:
    """Write ``model`` as a preset folder (``config.json``, ``model.weights.h5``,
    ``metadata.json``); an existing folder's files of those names are replaced."""
    model = as_resnet(model, "save_to_preset")
    os.makedirs(preset_dir, exist_ok=True)
    config = keras.saving.serialize_keras_object(model)
    for key in _UNSAVED_KEYS:
        config.pop(key, None)
    _write_json(os.path.join(preset_dir, CONFIG_FILE), config)
    model.save_weights(os.path.join(preset_dir, WEIGHTS_FILE))
    _write_json(os.path.join(preset_dir, METADATA_FILE), {
        "keras_version": keras.version(),
        "keras_preact_version": _package_version(),
        "parameter_count": model.count_params(),
        "date_saved": datetime.datetime.now().strftime("%Y-%m-%d@%H:%M:%S"),
    })


def _write_json(path: str, value: dict) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(value, handle, indent=4)
        handle.write("\n")


def is_preset(path) -> bool:
    """Whether ``path`` is a local folder with a preset's ``config.json``."""
    return isinstance(path, (str, os.PathLike)) and os.path.isfile(os.path.join(path, CONFIG_FILE))


def read_config(preset_dir: str) -> tuple:
    """``(kind, config)`` of a preset folder: ``"keras_preact"`` or ``"keras_hub"`` and its
    ``config.json``; a ValueError for any other class or a missing file, before anything is built."""
    path = os.path.join(preset_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise ValueError(f"{preset_dir!r} is not a preset: it has no {CONFIG_FILE}.")
    if not os.path.isfile(os.path.join(preset_dir, WEIGHTS_FILE)):
        raise ValueError(f"Preset {preset_dir!r} has no {WEIGHTS_FILE}.")
    config = hub.preset_config(path)
    if config is None:
        raise ValueError(f"{path} is not a serialized Keras object (no class_name): not a preset.")
    if config.get("registered_name") == REGISTERED_NAME:
        return "keras_preact", config
    if keras_hub_presets.is_keras_hub_resnet(config):
        return "keras_hub", config
    name = config.get("registered_name") or config.get("class_name")
    raise ValueError(f"Preset {preset_dir!r} holds a {name!r}, not a keras_preact ResNet "
                     f"({REGISTERED_NAME}) or keras-hub ResNetV2 (keras_hub>ResNetBackbone).")


def architecture(preset_dir: str) -> dict:
    """The :class:`ResNet` arguments a preset folder fixes (its name and flags left out)."""
    kind, config = read_config(preset_dir)
    if kind == "keras_hub":
        return keras_hub_presets.architecture(config)
    args = dict(config["config"])
    for key in ("name", "trainable"):
        args.pop(key, None)
    # A preset saved before the option existed holds an NHWC network (as ResNet.from_config).
    args.setdefault("data_format", LEGACY_DATA_FORMAT)
    args["units_per_stage"] = tuple(args["units_per_stage"])
    args["widths"] = tuple(args["widths"]) if args.get("widths") is not None else None
    if not args.get("include_top", True):
        args.pop("num_classes", None)
    return args


def _resolve(handle) -> str:
    """A local preset folder for a folder or hub handle."""
    if hub.is_handle(handle):
        path = hub.resolve(handle)
        if not os.path.isdir(path):
            raise ValueError(f"{handle!r} holds weights ({os.path.basename(path)}), not a preset: "
                             "load it with e.g. keras_preact.ResNet50(weights=...).")
        return path
    path = os.path.expanduser(os.fspath(handle))
    if not os.path.isdir(path):
        raise FileNotFoundError(f"No preset folder {path!r} (expected a folder, hf://... or kaggle://...).")
    return path


def from_preset(handle, **kwargs) -> ResNet:
    """The :class:`ResNet` of a preset folder or hub handle, its weights loaded.

    ``kwargs`` change architecture arguments that keep the weights valid (``include_top``,
    ``pooling``, ``num_classes`` -- a fresh classifier --, ``input_shape``, ``dtype_policy``,
    ``data_format``, ``stacked_stages``, ``name``, ...); without them the network keeps the
    preset's. A keras-hub ResNetV2 preset has no classifier: its network defaults to
    ``include_top=False, pooling=None`` (keras-hub's backbone output).
    """
    path = _resolve(handle)
    kind, config = read_config(path)
    if kind == "keras_preact" and not kwargs:
        model = keras.saving.deserialize_keras_object(config, safe_mode=True)
        model.load_weights(os.path.join(path, WEIGHTS_FILE))
        return model
    args = architecture(path)
    if kind == "keras_hub":
        args["pooling"] = None
    name = kwargs.pop("name", config["config"].get("name") if kind == "keras_preact" else None)
    args.update(kwargs)
    model = ResNet(args.pop("units_per_stage"), name=name, **args)
    load_weights(model, path, skip_head=_new_head(model, args, architecture(path)))
    return model


def _new_head(model: ResNet, args: dict, saved: dict) -> bool:
    """Whether ``model``'s classifier is not the preset's (none saved, or another class count)."""
    if not model.architecture.include_top:
        return True
    return saved.get("num_classes") != model.architecture.num_classes


def load_weights(model: ResNet, preset_dir: str, skip_head: bool = False) -> None:
    """Copy a preset's weights into ``model`` (a build of the same backbone; ``skip_head``
    leaves its classifier as it is). Raises ValueError naming the first mismatch."""
    kind, config = read_config(preset_dir)
    if kind == "keras_hub":
        keras_hub_presets.load_weights(model, preset_dir, skip_head)
        return
    # The source only holds the weights, which are the same in both layouts: built NHWC, which
    # every backend runs (TensorFlow without oneDNN refuses NCHW convolutions on a CPU).
    config = {**config, "config": {**config["config"], "data_format": "channels_last"}}
    source = keras.saving.deserialize_keras_object(config, safe_mode=True)
    source.load_weights(os.path.join(preset_dir, WEIGHTS_FILE))
    copy_weights(source, as_resnet(model, "presets.load_weights"), skip_head)


def copy_weights(source: ResNet, target: ResNet, skip_head: bool = False) -> None:
    """Copy every weight (the classifier's too unless ``skip_head``) between two builds of one
    network, stacked or not; a ValueError names the first variable that differs."""
    if target.architecture.stacked_stages:
        return through_units(target, lambda flat: copy_weights(source, flat, skip_head))
    source = unstack(source)
    keep = lambda path: not (skip_head and path.startswith("predictions/"))  # noqa: E731
    targets = {v.path: v for v in target.weights if keep(v.path)}
    sources = {v.path: v for v in source.weights if keep(v.path)}
    if sorted(targets) != sorted(sources):
        differ = sorted(set(targets) ^ set(sources))[0]
        where = "the model" if differ in targets else "the preset"
        raise ValueError(f"The preset's network differs from the model's: only {where} has "
                         f"{differ!r}.")
    for path, variable in targets.items():
        if tuple(sources[path].shape) != tuple(variable.shape):
            raise ValueError(f"{path!r} has shape {tuple(sources[path].shape)} in the preset, "
                             f"{tuple(variable.shape)} in the model: a different network.")
        variable.assign(sources[path])
