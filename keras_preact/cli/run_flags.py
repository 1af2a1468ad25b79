"""The flags of a training run, shared by both trainers: one per setting of the run configuration.

``keras_preact.cli.train`` (the tf.distribute trainer, ``trainers/cifar.py``) and
``keras_preact.cli.fit`` (the fit trainer on every Keras backend, ``trainers/fit.py``) take the
same flags, defaults, ``--recipe`` and ``--config`` file, generated here from the fields of
``keras_preact.training.run_config.RunConfig``, so a recipe tuned with one trainer repeats on the
other. A setting only one engine honours says so in its help, and the other engine refuses it
when it is set (``RunConfig.engine_conflicts``). No TensorFlow here.

* ``define_flags(family, flag_values)`` declares one absl flag per setting of the run
  configuration, generated from its fields (name, type, default, help text, choices); the
  recipe settings default to the chosen ``--recipe``'s values, which ``--help`` lists. Plus
  ``--recipe`` (the preset) and ``--config`` (a configuration file, JSON or YAML).
* ``config_from_flags(family, flag_values)`` is the only code that reads flag values: the
  file's values, then the preset, then every flag given, resolved and checked by
  ``run_config.resolve`` without building a model or reading data.
"""

from __future__ import annotations

import re

from absl import flags
from absl import logging as absl_logging

from keras_preact.common import FAMILIES
from keras_preact.training import recipes as recipes_lib
from keras_preact.training import run_config
from keras_preact.training import settings as settings_lib
from keras_preact.training.run_config import RunConfig

FLAGS = flags.FLAGS
FlagError = settings_lib.SettingError

_DEFINERS = {
    "boolean": flags.DEFINE_bool,
    "integer": flags.DEFINE_integer,
    "number": flags.DEFINE_float,
    "text": flags.DEFINE_string,
    "items": flags.DEFINE_list,
}


def _shown(field, value) -> str:
    """A setting's value as ``--help`` shows it."""
    if value is None:
        return field.metadata["unset"] or "unset"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    return f"{value:g}" if isinstance(value, float) else str(value)


def recipe_default_help(family: str, field) -> str:
    """``--help``'s default of a recipe setting: each preset's value, e.g. ``from --recipe (cifar,
    fast: 128)``."""
    by_value = {}
    for name in recipes_lib.family_recipes(family):
        shown = _shown(field, getattr(recipes_lib.RECIPES[name], field.name))
        by_value.setdefault(shown, []).append(name)
    return "from --recipe (" + "; ".join(f"{', '.join(names)}: {value}" for value, names in by_value.items()) + ")"


def define_flags(family: str, flag_values: flags.FlagValues = FLAGS) -> None:
    """Declare the trainer flags for ``family`` (``"cifar"`` or ``"imagenet"``) in ``flag_values``:
    one per setting of ``run_config.RunConfig`` (``run_config.flag_settings``), and
    ``--recipe`` and ``--config``."""
    if family not in FAMILIES:
        raise ValueError(f"Unknown family {family!r}. Valid choices: {', '.join(map(repr, FAMILIES))}.")
    if "verbosity" in flag_values:  # absl's; TF's INFO chatter would break the progress bar
        flag_values.set_default("verbosity", absl_logging.WARNING)
    defaults = run_config.sections_for(family)
    for section, field, flag in run_config.flag_settings(family):
        meta = field.metadata
        help_text = meta["help"]
        if section == "recipe":  # unset: the recipe's value
            default = None
            help_text += f" (default: {recipe_default_help(family, field)})"
        else:
            default = defaults[section][field.name]
            if default is None:
                help_text += f" (default: {_shown(field, None)})"
        if meta["engines"]:
            help_text += f" [{' and '.join(meta['engines'])} trainer only]"
        choices = run_config.DATASETS[family] if flag == "dataset" else meta["choices"]
        if meta["kind"] == "choice":
            flags.DEFINE_enum(flag, default, list(choices), help_text, flag_values=flag_values)
        else:
            if meta["kind"] == "items" and default is not None:
                default = [str(v) for v in default]
            _DEFINERS[meta["kind"]](flag, default, help_text, flag_values=flag_values)
    dataset_recipes = ", ".join(
        f"{recipes_lib.recipe_for_dataset(d, family).name} for --dataset={d}" for d in run_config.DATASETS[family])
    flags.DEFINE_enum(
        "recipe", None, list(recipes_lib.family_recipes(family)),
        "Training recipe: a preset of the recipe settings (batch size, rate, schedule, length, "
        "evaluation views), which their flags override; 'fast' is the short-budget CIFAR recipe "
        f"(docs/training.md). Replaces the recipe of --config. (default: the dataset's: "
        f"{dataset_recipes}; the {family} recipe for --data_dir)", flag_values=flag_values)
    flags.DEFINE_string(
        "config", None, "A run configuration file: the config.json a run writes into its directory "
        "(which repeats that run), or any subset of its sections as JSON, or YAML if PyYAML is "
        "installed. Flags given override its values. (default: none)", flag_values=flag_values)


def config_from_flags(family: str, flag_values: flags.FlagValues = FLAGS, argv=(),
                      look_at_devices: bool = True) -> RunConfig:
    """The parsed flags of the ``family`` trainer as a resolved, checked :class:`RunConfig`.

    The only function that reads flag values: ``--config``'s file, then ``--recipe``, then every
    flag given on the command line. Cheap checks only (no model built, no data read); a
    ``FlagError`` names the first bad flag. ``argv`` is recorded in ``results.json``.
    """
    F = flag_values
    overrides = {}
    for section, field, flag in run_config.flag_settings(family):
        if not F[flag].using_default_value:
            overrides[(section, field.name)] = settings_lib.coerce(field, F[flag].value)
    file_values = run_config.read_file(F.config) if F.config else None
    return run_config.resolve(family, file_values, overrides, recipe=F.recipe, argv=argv,
                              look_at_devices=look_at_devices)


HELP_ARGUMENTS = ("-h", "-help", "--help", "-?", "--helpshort", "--helpfull")


def wants_help(argv) -> bool:
    """Whether the command line asks for help (before ``--``)."""
    arguments = list(argv[1:])
    if "--" in arguments:
        arguments = arguments[: arguments.index("--")]
    return any(a in HELP_ARGUMENTS for a in arguments)


def parse_command_line(flag_values: flags.FlagValues, argv) -> list:
    """Parse ``argv`` into ``flag_values``; a FlagError naming the flag for a malformed one.

    Returns the remaining arguments (``argv[0]`` first), as absl does.
    """
    try:
        return flag_values(list(argv))
    except flags.UnrecognizedFlagError as error:
        hint = str(error).split(". ", 1)[1].strip() if ". " in str(error) else "see --help"
        raise FlagError(error.flagname, f"unknown flag ({hint}).") from None
    except flags.Error as error:
        text = " ".join(str(error).split())
        match = re.match(r"flag --(\w+)(=\S*)?: (.*)", text) or re.search(r"flag --(\w+)()(.*)", text)
        if match:
            raise FlagError(match.group(1), match.group(3).strip(" :") or text) from None
        raise FlagError("?", text) from None
