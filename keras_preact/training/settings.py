"""Typed settings: a dataclass field that carries its flag, help text and allowed values.

A run configuration (``keras_preact.training.run_config``) and a training recipe
(``keras_preact.training.recipes.Recipe``) are frozen dataclasses whose fields are made by the
functions below. Each field holds, once, everything the rest of the package needs to know about
one setting: its default (the dataclass default), its type, its command-line flag (the field's
name unless ``flag=`` says otherwise; ``flag=None``: none), its help text, and its allowed
values (``choices``, or a numeric range). :func:`check_fields` checks an instance against them
and names the flag of the first bad value (:class:`SettingError`); the trainer's absl flags are
generated from the same fields, so no second list of flags, defaults or checks exists.

No TensorFlow here: recipes are read on every Keras backend.
"""

from __future__ import annotations

import dataclasses
import math

from keras_preact.common import FlagValueError

# The training engines a setting can be honoured by: the ``tf.distribute`` trainer
# (``keras_preact.training.loop``, TensorFlow) and the ``fit`` trainer
# (``keras_preact.fit_loop``, Keras' ``model.fit`` on every backend). Both take the same
# run configuration; a setting with ``engines=`` is refused by the others unless left at its default.
ENGINES = ("tf.distribute", "fit")

# The kinds of value a setting holds, and so the absl flag type it gets.
KINDS = ("boolean", "integer", "number", "text", "choice", "items")
_NO_FLAG = object()


# A bad setting: ``str()`` is the one line shown (``--flag: message``), ``flag`` names it. The
# same class as every command line's (the exporter's and diagnostics' checks raise it too).
SettingError = FlagValueError


def _field(kind, default, help, *, flag=_NO_FLAG, choices=None, low=None, high=None,
           low_open=False, high_open=False, families=None, engines=None, unset=None, item_type=str):
    """A dataclass field with its setting metadata (see the module docstring).

    ``low``/``high``: the range (``low_open``/``high_open``: the bound itself is refused);
    ``families``: the trainer families that have the flag (None: every family); ``engines``:
    the training engines that honour it (None: both, see ``ENGINES``); ``unset``:
    what ``None`` means, for the help text of a field whose default is ``None``;
    ``item_type``: the type of the items of an ``items`` setting (``str`` or ``int``).
    """
    if kind not in KINDS:
        raise ValueError(f"Unknown setting kind {kind!r}.")
    if engines is not None and not set(engines) <= set(ENGINES):
        raise ValueError(f"Unknown engines {engines!r}; engines are {ENGINES}.")
    metadata = dict(kind=kind, help=help, choices=tuple(choices) if choices else None, low=low,
                    high=high, low_open=low_open, high_open=high_open, families=families,
                    engines=tuple(engines) if engines else None, unset=unset, item_type=item_type)
    if flag is not _NO_FLAG:
        metadata["flag"] = flag
    return dataclasses.field(default=default, metadata=metadata)


def boolean(default, help, **options):
    return _field("boolean", default, help, **options)


def integer(default, help, **options):
    return _field("integer", default, help, **options)


def number(default, help, **options):
    return _field("number", default, help, **options)


def text(default, help, **options):
    return _field("text", default, help, **options)


def choice(default, choices, help, **options):
    return _field("choice", default, help, choices=choices, **options)


def items(default, help, **options):
    """A tuple of strings, or of ``item_type`` (a comma-separated list on the command line)."""
    return _field("items", default, help, **options)


def is_setting(field: dataclasses.Field) -> bool:
    return "kind" in field.metadata


def flag_name(field: dataclasses.Field) -> str | None:
    """The command-line flag of a setting (None: it has none)."""
    return field.metadata.get("flag", field.name)


def setting_fields(cls_or_instance) -> list:
    """The setting fields of a settings dataclass, in order."""
    return [f for f in dataclasses.fields(cls_or_instance) if is_setting(f)]


def _describe_range(meta) -> str:
    low, high = meta["low"], meta["high"]
    if low is not None and high is not None:
        return f"in {'(' if meta['low_open'] else '['}{low:g}, {high:g}{')' if meta['high_open'] else ']'}"
    if low is not None:
        if low == 0 and meta["low_open"]:
            return "positive"
        return f"{'>' if meta['low_open'] else '>='} {low:g}"
    return f"{'<' if meta['high_open'] else '<='} {high:g}"


def check_value(field: dataclasses.Field, value) -> None:
    """``SettingError`` naming the field's flag unless ``value`` has its kind and lies in its
    range or choices. ``None`` passes: it means the setting is unset."""
    meta = field.metadata
    flag = flag_name(field) or field.name
    if value is None:
        return
    kind = meta["kind"]
    if kind == "boolean" and not isinstance(value, bool):
        raise SettingError(flag, f"must be true or false, got {value!r}.")
    if kind == "integer" and (isinstance(value, bool) or not isinstance(value, int)):
        raise SettingError(flag, f"must be an integer, got {value!r}.")
    if kind == "number" and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise SettingError(flag, f"must be a number, got {value!r}.")
    if kind in ("text", "choice") and not isinstance(value, str):
        raise SettingError(flag, f"must be a string, got {value!r}.")
    if kind == "items":
        item_type = meta["item_type"]
        if not isinstance(value, tuple) or not all(
                isinstance(v, item_type) and not isinstance(v, bool) for v in value):
            raise SettingError(flag, f"must be a list of {item_type.__name__}s, got {value!r}.")
    if kind == "choice" and value not in meta["choices"]:
        raise SettingError(flag, f"must be one of {', '.join(meta['choices'])}, got {value!r}.")
    if kind in ("integer", "number"):
        if isinstance(value, float) and not math.isfinite(value):
            raise SettingError(flag, f"must be a finite number, got {value}.")
        low, high = meta["low"], meta["high"]
        below = low is not None and (value < low or (value == low and meta["low_open"]))
        above = high is not None and (value > high or (value == high and meta["high_open"]))
        if below or above:
            raise SettingError(flag, f"must be {_describe_range(meta)}, got {value}.")


def check_fields(instance) -> None:
    """Check every setting of ``instance`` (kind, range, choices) in field order."""
    for field in setting_fields(instance):
        check_value(field, getattr(instance, field.name))


def coerce(field: dataclasses.Field, value):
    """``value`` from a flag or a file (JSON/YAML) in the field's Python type: lists become
    tuples of the item type, integers become floats for a number. A value that cannot be
    converted is left for :func:`check_value` to refuse, except items that are not integers."""
    kind = field.metadata["kind"]
    if kind == "items" and isinstance(value, (list, tuple)):
        if field.metadata["item_type"] is int:
            try:
                return tuple(int(v) for v in value)
            except (TypeError, ValueError):
                raise SettingError(flag_name(field) or field.name,
                                   f"must be integers, got {list(value)}.") from None
        return tuple(str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for v in value)
    if kind == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value
