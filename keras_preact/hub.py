"""Weights by name: a Hugging Face or Kaggle handle resolved to files in the hubs' own caches.

Handles:

* ``hf://<owner>/<repo>`` -- a Hugging Face model repository: its ``config.json`` decides what
  it holds. A Keras preset (keras_preact's or keras-hub's: ``config.json`` is a serialized
  Keras object, with ``class_name``) resolves to the snapshot folder holding ``config.json``
  and ``model.weights.h5``; a timm repository (timm's ``config.json`` has an
  ``"architecture"`` key and no ``class_name``) or one without a ``config.json`` resolves to its
  ``model.safetensors``.
* ``hf://<owner>/<repo>/<file>`` -- one file of a repository (e.g. ``.../model.safetensors``).
* ``kaggle://<owner>/<model>/<framework>/<variation>[/<version>]`` -- a Kaggle model (e.g.
  keras-hub's ``kaggle://keras/resnetv2/keras/resnet_v2_50_imagenet/3``): its folder.

Files are fetched by ``huggingface_hub.hf_hub_download`` and ``kagglehub.model_download``, into
their caches (``HF_HUB_CACHE`` / ``HF_HOME``, ``KAGGLEHUB_CACHE``), so a second call, or any other
library using those caches, finds them there. Offline:

* Hugging Face: ``HF_HUB_OFFLINE=1`` (read by huggingface_hub when it is first imported) makes
  ``hf_hub_download`` answer from the cache only.
* Kaggle: kagglehub (1.0) has no offline switch. A versioned handle is looked up in its cache
  first (``<KAGGLEHUB_CACHE>/models/<owner>/<model>/<framework>/<variation>/<version>`` with
  its ``<version>.complete`` marker: what ``model_download`` itself checks), which needs no
  network; an unversioned one asks Kaggle for the latest version, and when that fails falls
  back to the newest complete version in the cache.

Any failure to get the files -- not cached while offline, no network, no such repository or
file -- raises :class:`WeightsUnavailableError` (a ValueError) with one line naming the handle
and the command that fetches it. huggingface_hub and kagglehub are optional (the ``hub``
extra) and imported only here, only when a handle is resolved.
"""

from __future__ import annotations

import json
import os
import re

SCHEMES = ("hf://", "kaggle://")
HUB_EXTRA = 'pip install "keras_preact[hub]"'
PRESET_FILES = ("config.json", "model.weights.h5")
TIMM_FILE = "model.safetensors"


class WeightsUnavailableError(ValueError):
    """A handle whose files are neither in the hub's cache nor downloadable now."""

    def __init__(self, handle: str, reason: str, fetch: str):
        reason = " ".join(str(reason).split())  # one line, whatever the hub library said
        super().__init__(f"Weights {handle!r} are not available: {reason}. {fetch}")
        self.handle = handle


def is_handle(weights) -> bool:
    """Whether ``weights`` names hub weights (``hf://`` or ``kaggle://``) rather than a path."""
    return isinstance(weights, str) and weights.startswith(SCHEMES)


def resolve(handle: str) -> str:
    """The local path of ``handle``'s files: a preset folder or a ``.safetensors`` file."""
    if handle.startswith("hf://"):
        return _resolve_hf(handle)
    if handle.startswith("kaggle://"):
        return _resolve_kaggle(handle)
    raise ValueError(f"{handle!r} is not a hub handle: expected hf://<owner>/<repo> or "
                     "kaggle://<owner>/<model>/<framework>/<variation>[/<version>].")


# -- Hugging Face -----------------------------------------------------------------------------
def _import_huggingface_hub():
    try:
        import huggingface_hub  # optional: the "hub" extra
    except ImportError:
        raise ImportError(f"Weights from hf:// handles need huggingface_hub: {HUB_EXTRA}") from None
    return huggingface_hub


def _split_hf(handle: str) -> tuple:
    parts = handle[len("hf://"):].strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise ValueError(f"{handle!r} is not a Hugging Face handle: expected hf://<owner>/<repo>"
                         "[/<file>].")
    return "/".join(parts[:2]), "/".join(parts[2:]) or None


def _hf_fetch_hint(repo_id: str, files) -> str:
    command = " ".join(["hf download", repo_id, *files])  # huggingface_hub's command-line tool
    return f"Run once with network access: `{command}`, or unset HF_HUB_OFFLINE."


def _hf_file(repo_id: str, filename: str, handle: str, fetch_files, missing_ok: bool = False):
    """Local path of one file of a repository; None if ``missing_ok`` and the repo lacks it."""
    hub = _import_huggingface_hub()
    from huggingface_hub import errors

    try:
        return hub.hf_hub_download(repo_id, filename)
    except errors.EntryNotFoundError as error:
        # Online and the repository has no such file; LocalEntryNotFoundError (also an
        # EntryNotFoundError) is its offline counterpart: not cached, so "unavailable".
        if missing_ok and not isinstance(error, errors.LocalEntryNotFoundError):
            return None
        reason = (f"{repo_id}/{filename} is not in the Hugging Face cache and the hub is not "
                  "reachable (offline)" if isinstance(error, errors.LocalEntryNotFoundError)
                  else f"{repo_id} has no file {filename}")
        raise WeightsUnavailableError(handle, reason, _hf_fetch_hint(repo_id, fetch_files)) from None
    except Exception as error:  # noqa: BLE001 -- every hub failure is one error type
        raise WeightsUnavailableError(handle, f"{type(error).__name__}: {error}",
                                      _hf_fetch_hint(repo_id, fetch_files)) from None


def _resolve_hf(handle: str) -> str:
    repo_id, filename = _split_hf(handle)
    if filename is not None:
        return _hf_file(repo_id, filename, handle, [filename])
    config_path = _hf_file(repo_id, "config.json", handle, [], missing_ok=True)
    if config_path is not None and preset_config(config_path) is not None:
        _hf_file(repo_id, PRESET_FILES[1], handle, [])
        return os.path.dirname(config_path)  # the snapshot folder: config.json + weights
    return _hf_file(repo_id, TIMM_FILE, handle, [])


def preset_config(path: str) -> dict | None:
    """The ``config.json`` at ``path`` if it is a serialized Keras object (a preset), else None
    (timm's ``config.json`` has ``architecture`` and no ``class_name``)."""
    try:
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    except (OSError, ValueError):
        return None
    return config if isinstance(config, dict) and "class_name" in config else None


# -- Kaggle -----------------------------------------------------------------------------------
def _import_kagglehub():
    try:
        import kagglehub  # optional: the "hub" extra
    except ImportError:
        raise ImportError(f"Weights from kaggle:// handles need kagglehub: {HUB_EXTRA}") from None
    return kagglehub


_KAGGLE = re.compile(r"^[^/\s]+/[^/\s]+/[^/\s]+/[^/\s]+(/\d+)?$")


def _resolve_kaggle(handle: str) -> str:
    slug = handle[len("kaggle://"):].strip("/")
    if not _KAGGLE.match(slug):
        raise ValueError(f"{handle!r} is not a Kaggle model handle: expected "
                         "kaggle://<owner>/<model>/<framework>/<variation>[/<version>].")
    kagglehub = _import_kagglehub()
    fetch = (f"Run once with network access: `python -c \"import kagglehub; "
             f"kagglehub.model_download('{slug}')\"`.")
    cached = _kaggle_cached(slug)
    if cached is not None and slug.count("/") == 4:
        return cached  # a versioned handle in the cache: no network needed
    try:
        return kagglehub.model_download(slug)
    except Exception as error:  # noqa: BLE001 -- every hub failure is one error type
        if cached is not None:  # offline: the newest version the cache holds
            return cached
        raise WeightsUnavailableError(handle, f"{type(error).__name__}: {error}", fetch) from None


def _kaggle_cached(slug: str) -> str | None:
    """The cached folder of a Kaggle model (the given version, or the newest complete one)."""
    from kagglehub.cache import Cache
    from kagglehub.handle import parse_model_handle

    h = parse_model_handle(slug)
    if h.is_versioned():
        return Cache().load_from_cache(h)
    from kagglehub.config import get_cache_folder

    folder = os.path.join(get_cache_folder(), "models", h.owner, h.model, h.framework, h.variation)
    versions = sorted((int(n[: -len(".complete")]) for n in _listdir(folder)
                       if re.fullmatch(r"\d+\.complete", n)), reverse=True)
    for version in versions:
        path = Cache().load_from_cache(h.with_version(version))
        if path is not None:
            return path
    return None


def _listdir(folder: str) -> list:
    try:
        return os.listdir(folder)
    except OSError:
        return []
