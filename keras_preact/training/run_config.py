"""One typed run configuration: every value a training run needs, each default and check once.

A :class:`RunConfig` is nested frozen dataclasses, one per concern, in the style of the
TensorFlow Model Garden's experiment configs::

    RunConfig(family="cifar",
              model=ModelSettings(...),        # the network (keras_preact.registry, ResNetConfig)
              data=DataSettings(...),          # what to train and evaluate on
              recipe=Recipe(...),              # optimisation, schedule, evaluation views
              speed=SpeedSettings(...),        # XLA, steps per loop
              distribution=DistributionSettings(...),
              checkpointing=CheckpointSettings(...),
              run=RunSettings(...))            # run directory, logging, seed, export, safety

Every field is a setting (``keras_preact.training.settings``): its default is the dataclass
default (the ImageNet trainer's few different ones are in ``FAMILY_DEFAULTS``), its flag, help
text and range sit in its metadata, and constructing a section checks it. The trainer's flags
(``keras_preact.cli.train``) are generated from these fields; the recipe presets
(``recipes.RECIPES``) fill the ``recipe`` section and explicit values override them.

:func:`resolve` builds the configuration of a run from a family, an optional file (the JSON a
run writes into its directory, :func:`write`, or a hand-written JSON/YAML subset) and explicit
overrides (the flags given); it resolves what the defaults leave open (the recipe, the unit
order, the dtype policy, the run directory) so that the written file repeats the run exactly.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os

from keras_preact import hardware, registry
from keras_preact.common import (DATA_FORMATS, DEFAULT_WORKER_TIMEOUT, DTYPE_POLICIES, FAMILIES, KERAS_DISTRIBUTIONS,
                                 KINDS, ORDERS, SHORTCUT_OPTIONS, SHORTCUTS, STRATEGIES, check_writable_dir)
from keras_preact.config import ResNetConfig, resolve_order
from keras_preact.data.arrays import DEFAULT_MAX_BYTES
from keras_preact.padding import PADDINGS
from keras_preact.training import divergence
from keras_preact.training import recipes as recipes_lib
from keras_preact.training import settings
from keras_preact.training.schedules import resolve_boundaries
from keras_preact.training.settings import ENGINES, SettingError
from keras_preact.weights import file_architecture

CIFAR_DATASETS = ("cifar10_sample", "cifar10", "cifar100")
IMAGENET_DATASETS = ("imagenet2012",)
DATASETS = {"cifar": CIFAR_DATASETS, "imagenet": IMAGENET_DATASETS}
# --input: where training batches come from (data.InMemorySplit or data.build_dataset).
INPUTS = ("auto", "memory", "stream")
# --steps_per_loop under TPUStrategy when unset: a host round-trip per step would idle the TPU
# (loops still stop at every log row, evaluation and checkpoint).
TPU_STEPS_PER_LOOP = 100
CONFIG_FILE = "config.json"  # the resolved configuration, in the run directory

# The network's own defaults (keras_preact.config.ResNetConfig), which the model section keeps.
NETWORK_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ResNetConfig)}


def _network_default(name: str) -> str:
    return f"the network's, {NETWORK_DEFAULTS[name]}"


@dataclasses.dataclass(frozen=True)
class ModelSettings:
    """The network: a registry name and the architecture flags (paper Fig. 2 and 4, Table 1)."""

    model: str = settings.text(
        "resnet20", f"One of {', '.join(registry.list_models())}, or resnet<depth> for any valid "
        "CIFAR depth.")
    preact: bool | None = settings.boolean(
        None, "Pre-activation (full_preact) or original units.",
        unset="full_preact, or what --order says")
    order: str | None = settings.choice(
        None, ORDERS, "Unit order (paper Fig. 4).", unset="from --preact: full_preact, or original")
    shortcut: str = settings.choice(NETWORK_DEFAULTS["shortcut"], SHORTCUTS, "Shortcut (paper Fig. 2).")
    shortcut_scale: float | None = settings.number(
        None, "--shortcut=constant_scaling: lambda on the shortcut (paper Table 1).", low=0,
        unset=_network_default("shortcut_scale"))
    scale_residual: bool | None = settings.boolean(
        None, "--shortcut=constant_scaling: also scale F by 1 - lambda (Table 1's 0.5 / 0.5 row).",
        unset=_network_default("scale_residual"))
    gate_bias_init: float | None = settings.number(
        None, "Gating shortcuts: initial gate bias b_g (Table 1 also tries 0).",
        unset=_network_default("gate_bias_init"))
    dropout_rate: float | None = settings.number(
        None, "--shortcut=dropout: drop rate of the shortcut (Table 1).", low=0, high=1, high_open=True,
        unset=_network_default("dropout_rate"))
    unit: str | None = settings.choice(None, KINDS, "Unit kind (CIFAR models).", unset="the model's")
    stacked_stages: bool = settings.boolean(
        False, "Run each stage's repeated units as one loop over stacked weights (very deep nets).")
    recompute: bool = settings.boolean(
        False, "With --stacked_stages: recompute units in the backward pass (less memory).")
    padding: str = settings.choice(
        NETWORK_DEFAULTS["padding"], PADDINGS, "Padding of strided convs: symmetric (Torch's, as the "
        "paper's code) or same (TensorFlow's; runs of keras_preact 0.1 used it).")
    init_weights: str | None = settings.text(
        None, "Start from these weights: a file (timm ResNetV2 or PyTorch .safetensors/.pth, .keras), "
        "a preset folder, an hf:// or kaggle:// handle, or a name (imagenet, cifar10): "
        "its backbone, and a fresh classifier when its class count differs (fine-tuning). Options "
        "the file fixes (timm: stem, padding) are taken from it. A resumed run continues from its "
        "checkpoint instead.", unset="none (random initialisation)")
    dtype_policy: str = settings.choice(
        "auto", ("auto", *DTYPE_POLICIES), "Keras dtype policy: float32, or mixed precision (float32 "
        "weights; mixed_float16 with dynamic loss scaling for GPUs, mixed_bfloat16 for TPUs and CPUs "
        "with bf16). auto: mixed_bfloat16 on TPUs and on CPUs with bf16 instructions (avx512_bf16, "
        "AMX) where no GPU is visible, else float32.")
    data_format: str = settings.choice(
        "channels_last", DATA_FORMATS, "Layout of the network's tensors: channels_last (NHWC) or "
        "channels_first (NCHW, PyTorch's own; the fit trainer transposes its batches to it). The "
        "weights are the same in both (keras_preact.model.with_data_format); exports take NHWC.",
        engines=("fit",))
    dtype_auto: bool = settings.boolean(
        False, "Whether --dtype_policy=auto chose dtype_policy (the resolved configuration holds "
        "the chosen policy).", flag=None)

    def __post_init__(self):
        settings.check_fields(self)


@dataclasses.dataclass(frozen=True)
class DataSettings:
    """What to train and evaluate on: a TFDS dataset or the embedded sample, or an image folder."""

    dataset: str = settings.choice(
        "cifar10_sample", CIFAR_DATASETS + IMAGENET_DATASETS, "TFDS dataset, or the CIFAR-10 sample "
        "shipped in the package (no download). Ignored when --data_dir is given.")
    data_dir: str | None = settings.text(
        None, "An image folder <root>/<split>/<class>/<image> to train on instead.", unset="none: --dataset")
    tfds_dir: str | None = settings.text(
        None, "TensorFlow Datasets data directory.", unset="TensorFlow Datasets' own")
    manual_dir: str | None = settings.text(
        None, "Where the ILSVRC2012 tar files are (TFDS).", families=("imagenet",),
        unset="TensorFlow Datasets' own")
    train_split: str = settings.text("train", "Training split.")
    eval_split: str = settings.text("test", "Evaluation split.")
    input: str = settings.choice(
        "auto", INPUTS, "memory: decode the splits once into memory, batches a pure function of "
        "--seed and the step (exact resume); stream: decode every epoch; auto: memory for "
        f"CIFAR-sized data (up to {DEFAULT_MAX_BYTES // 2**30} GiB decoded), else stream.")
    augment: str = settings.choice(
        "scale", ("scale", "inception"), "Scale jitter 256-480 + 224 crop (the paper's) or Inception "
        "scale/aspect crops.", families=("imagenet",))
    color: bool = settings.boolean(True, "Colour and lighting augmentation.", families=("imagenet",))
    strict: bool = settings.boolean(
        False, "Fail on the first unreadable, corrupt or oversized image instead of skipping and "
        "counting it.")

    def __post_init__(self):
        settings.check_fields(self)

    @property
    def source(self) -> str:
        """What ``build_dataset`` reads: the image folder, else the dataset name."""
        return self.data_dir or self.dataset

    @property
    def flag(self) -> str:
        """The flag that chose the data, to blame when it cannot be read."""
        return "data_dir" if self.data_dir else "dataset"


@dataclasses.dataclass(frozen=True)
class SpeedSettings:
    """Speed levers that keep the numbers of the plain loop (docs/training.md)."""

    jit_compile: bool = settings.boolean(False, "Compile the train and evaluation steps with XLA.")
    steps_per_loop: int | None = settings.integer(
        None, "Training steps per tf.function call (one host sync). Logs, evaluations and "
        "checkpoints stay on their steps.", low=1, engines=("tf.distribute",),
        unset=f"1, {TPU_STEPS_PER_LOOP} under --strategy=tpu")

    def __post_init__(self):
        settings.check_fields(self)

    def loop_length(self, strategy: str) -> int:
        """``steps_per_loop``, or its default: 1, ``TPU_STEPS_PER_LOOP`` under TPUStrategy."""
        if self.steps_per_loop:
            return self.steps_per_loop
        return TPU_STEPS_PER_LOOP if strategy == "tpu" else 1


@dataclasses.dataclass(frozen=True)
class DistributionSettings:
    """How a run spreads over devices and processes: a ``tf.distribute`` strategy (the
    tf.distribute trainer) or a Keras distribution over JAX processes (the fit trainer)."""

    strategy: str = settings.choice("default", STRATEGIES, "tf.distribute strategy.", engines=("tf.distribute",))
    cpu_devices: int | None = settings.integer(
        None, "Split the CPU into this many logical devices (mirrored on a CPU machine).", low=1,
        unset="the CPU unsplit", engines=("tf.distribute",))
    tpu: str | None = settings.text(
        None, "TPU name or grpc:// address (--strategy=tpu).", unset="$TPU_NAME, or the local TPU",
        engines=("tf.distribute",))
    worker_timeout: float = settings.number(
        DEFAULT_WORKER_TIMEOUT, "--strategy=multi_worker_mirrored: seconds a collective waits for the "
        "other workers before the run stops (exit status 4) instead of hanging; longer than any "
        "step, evaluation or save.", low=0, low_open=True, engines=("tf.distribute",))
    sync_bn: bool = settings.boolean(False, "Synchronise BatchNorm batch statistics across replicas "
                                     "(the fit trainer's data parallelism on JAX always does).",
                                     engines=("tf.distribute",))
    keras_distribution: str = settings.choice(
        "auto", KERAS_DISTRIBUTIONS, "The fit trainer's Keras distribution (JAX): data_parallel "
        "splits every batch over all devices of all processes (keras.distribution.DataParallel); "
        "auto does so when there is more than one device; none: one device.", engines=("fit",))
    coordinator_address: str | None = settings.text(
        None, "Several JAX processes (fit trainer): host:port of process 0, the same in every "
        "process (keras.distribution.initialize).", unset="one process, or what JAX reads from a "
        "TPU slice or a SLURM/Open MPI launch", engines=("fit",))
    num_processes: int | None = settings.integer(
        None, "Several JAX processes (fit trainer): how many take part.", low=1,
        unset="1, or what JAX detects", engines=("fit",))
    process_id: int | None = settings.integer(
        None, "Several JAX processes (fit trainer): this process's index, 0 .. --num_processes - 1; "
        "process 0 writes the run directory.", low=0, unset="0, or what JAX detects", engines=("fit",))

    def __post_init__(self):
        settings.check_fields(self)
        if self.num_processes is not None and self.process_id is not None and self.process_id >= self.num_processes:
            raise SettingError("process_id", f"must be below --num_processes={self.num_processes}, "
                                             f"got {self.process_id}.")
        if (self.num_processes or 1) > 1 and not self.coordinator_address:
            raise SettingError("coordinator_address", f"--num_processes={self.num_processes} needs the "
                                                      "host:port of process 0 in every process.")


@dataclasses.dataclass(frozen=True)
class CheckpointSettings:
    """How often a run checkpoints, and how many checkpoints it keeps."""

    checkpoint_every: int = settings.integer(
        1000, "Also checkpoint every N steps (0: epoch ends only).", low=0)
    keep_checkpoints: int = settings.integer(3, "Checkpoints to keep.", low=1)

    def __post_init__(self):
        settings.check_fields(self)


@dataclasses.dataclass(frozen=True)
class RunSettings:
    """The run directory, logging, seed, the export at the end, and the divergence stop."""

    model_dir: str | None = settings.text(
        None, "Run directory.", unset="runs/<dataset>_<model>")
    log_every: int = settings.integer(50, "metrics.csv / TensorBoard row every N steps.", low=1)
    eval_every: int = settings.integer(0, "Evaluate every N steps (0: every epoch).", low=0)
    seed: int = settings.integer(0, "Random seed (initialisation, shuffling, augmentation).", low=0)
    export: bool = settings.boolean(False, "Export a TF Serving SavedModel at the end.")
    export_dir: str = settings.text("saved_models", "Base directory of exports.")
    divergence_factor: float = settings.number(
        divergence.DEFAULT_FACTOR, "Stop when a step's loss exceeds this many times its recent "
        "average (0: only NaN/inf stop).")
    divergence_window: int = settings.integer(
        divergence.DEFAULT_WINDOW, "Steps in the recent average of --divergence_factor.", low=1)

    def __post_init__(self):
        settings.check_fields(self)
        try:
            divergence.check_settings(self.divergence_factor, self.divergence_window)
        except ValueError as error:
            raise SettingError("divergence_factor", str(error)) from None


# Section name -> its dataclass, in the order of RunConfig's fields.
SECTIONS = {
    "model": ModelSettings,
    "data": DataSettings,
    "recipe": recipes_lib.Recipe,
    "speed": SpeedSettings,
    "distribution": DistributionSettings,
    "checkpointing": CheckpointSettings,
    "run": RunSettings,
}
# The ImageNet trainer's defaults where they differ from the fields' (CIFAR) ones.
FAMILY_DEFAULTS = {
    "cifar": {},
    "imagenet": {
        ("model", "model"): "resnet50",
        ("data", "dataset"): "imagenet2012",
        ("data", "eval_split"): "validation",
        ("data", "input"): "stream",
    },
}


def check_jit_sync_bn(jit_compile: bool, sync_bn: bool) -> None:
    """XLA cannot hold synchronised BatchNorm's all-reduce inside the compiled step."""
    if jit_compile and sync_bn:
        raise SettingError("jit_compile", "not with --sync_bn: synchronised BatchNorm all-reduces "
                                          "inside the compiled step, which XLA cannot hold; drop one of them.")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Every value a training run needs (see the module docstring); constructing one checks it.

    ``argv`` is the command line that made it, recorded in ``results.json`` (not a setting).
    """

    family: str = "cifar"  # which trainer: data pipeline and evaluation ("cifar" or "imagenet")
    model: ModelSettings = ModelSettings()
    data: DataSettings = DataSettings()
    recipe: recipes_lib.Recipe = recipes_lib.RECIPES["cifar10_sample"]
    speed: SpeedSettings = SpeedSettings()
    distribution: DistributionSettings = DistributionSettings()
    checkpointing: CheckpointSettings = CheckpointSettings()
    run: RunSettings = RunSettings()
    argv: tuple = ()

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"Unknown family {self.family!r}. Valid choices: {', '.join(map(repr, FAMILIES))}.")
        if self.data.dataset not in DATASETS[self.family]:
            raise SettingError("dataset", f"the {self.family} trainer takes "
                                          f"{', '.join(DATASETS[self.family])}, got {self.data.dataset!r}.")
        if self.recipe.family != self.family:
            raise SettingError("recipe", f"the {self.recipe.name} recipe is for the {self.recipe.family} "
                                         f"trainer, not the {self.family} one.")
        if self.model.stacked_stages and self.distribution.sync_bn:
            raise SettingError("sync_bn", "not supported with --stacked_stages (its BN is per replica).")
        check_jit_sync_bn(self.speed.jit_compile, self.distribution.sync_bn)

    def to_dict(self) -> dict:
        """The configuration as JSON-ready data (``argv`` left out): what :func:`write` saves."""
        record = {"family": self.family}
        for name in SECTIONS:
            section = getattr(self, name)
            record[name] = {f.name: _plain(getattr(section, f.name), f) for f in settings.setting_fields(section)}
        return record

    def engine_conflicts(self, engine: str) -> list:
        """``SettingError``s, one per setting that ``engine`` (``settings.ENGINES``) does not
        honour but this configuration sets to other than its default; empty if it runs as is.

        A default value is no conflict: the config.json of one engine's run configures the other
        unchanged (its ``strategy`` is ``default``, its ``keras_distribution`` is ``auto``)."""
        if engine not in ENGINES:
            raise ValueError(f"Unknown engine {engine!r}; engines: {', '.join(ENGINES)}.")
        defaults = sections_for(self.family)
        conflicts = []
        for name, cls in SECTIONS.items():
            if name == "recipe":
                continue
            for field in settings.setting_fields(cls):
                engines = field.metadata["engines"]
                value = getattr(getattr(self, name), field.name)
                if engines is None or engine in engines or value == defaults[name][field.name]:
                    continue
                owner = " and ".join(f"the {e} trainer" for e in engines)
                conflicts.append(SettingError(
                    settings.flag_name(field) or field.name,
                    f"only {owner} honours it, not the {engine} one; leave it unset "
                    f"(got {_plain(value, field)!r}, default {_plain(defaults[name][field.name], field)!r})."))
        return conflicts

    @property
    def model_name(self) -> str:
        """The registry's canonical name of the model."""
        return model_arguments(self.model)[0]

    @property
    def model_kwargs(self) -> dict:
        """The keyword arguments of ``registry.get_model`` (with what ``init_weights`` fixes)."""
        name, kwargs = model_arguments(self.model)
        return init_weights_options(name, self.model.init_weights, kwargs)


def _plain(value, field=None):
    """JSON-ready ``value``. A whole number of a ``number`` setting is written as an integer
    (``15``, not ``15.0``): reading coerces it back to a float, so repeating a run with
    ``--config`` writes its config.json unchanged."""
    if isinstance(value, tuple):
        return list(value)
    if (field is not None and field.metadata.get("kind") == "number" and isinstance(value, float)
            and value.is_integer()):
        return int(value)
    return value


def sections_for(family: str) -> dict:
    """``{section: {field: default}}`` of ``family``'s trainer (the recipe section excepted)."""
    defaults = {}
    for name, cls in SECTIONS.items():
        if name == "recipe":
            continue
        defaults[name] = {f.name: FAMILY_DEFAULTS[family].get((name, f.name), f.default)
                          for f in settings.setting_fields(cls)}
    return defaults


def flag_settings(family: str) -> list:
    """``(section, field, flag)`` of every setting ``family``'s trainer has a flag for."""
    found = []
    for name, cls in SECTIONS.items():
        for field in settings.setting_fields(cls):
            flag = settings.flag_name(field)
            families = field.metadata["families"]
            if flag and (families is None or family in families):
                found.append((name, field, flag))
    return found


def resolve(family: str, file_values: dict | None = None, overrides: dict | None = None,
            recipe: str | None = None, argv=(), look_at_devices: bool = True) -> RunConfig:
    """The checked, resolved configuration of a run.

    ``file_values``: ``{section: {field: value}}`` (a configuration file; any subset);
    ``overrides``: ``{(section, field): value}`` (the flags given), applied on top;
    ``recipe``: a preset name that replaces the file's recipe section (``--recipe``). Without
    either, the recipe is the file's, else the dataset's (``recipes.recipe_for_dataset``).
    Raises ``SettingError`` naming the flag of the first bad value. ``look_at_devices=False``
    leaves ``--dtype_policy=auto`` for :func:`resolve_devices` (a JAX process must join its
    peers before anything looks at its devices).
    """
    if family not in FAMILIES:
        raise ValueError(f"Unknown family {family!r}. Valid choices: {', '.join(map(repr, FAMILIES))}.")
    file_values = dict(file_values or {})
    overrides = dict(overrides or {})
    unknown = set(file_values) - set(SECTIONS) - {"family"}
    if unknown:
        raise SettingError("config", f"unknown section {sorted(unknown)[0]!r}; sections: {', '.join(SECTIONS)}.")
    if file_values.get("family", family) != family:
        raise SettingError("config", f"a configuration of the {file_values['family']} trainer, "
                                     f"not the {family} one.")
    values = sections_for(family)
    for section, fields in values.items():
        given = _section_values(section, file_values.get(section))
        fields.update(given)
        fields.update({f: v for (s, f), v in overrides.items() if s == section})
    built = {name: SECTIONS[name](**fields) for name, fields in values.items()}
    built["recipe"] = _resolve_recipe(family, built["data"], file_values.get("recipe"), recipe,
                                      {f: v for (s, f), v in overrides.items() if s == "recipe"})
    config = RunConfig(family=family, argv=tuple(argv), **built)
    config = _resolve_open_values(config)
    return resolve_devices(config) if look_at_devices else config


def resolve_devices(config: RunConfig) -> RunConfig:
    """``config`` with what depends on the devices at hand resolved: ``--dtype_policy=auto``."""
    model = config.model
    if model.dtype_policy != "auto":
        return config
    model = dataclasses.replace(
        model, dtype_policy=resolve_dtype_policy("auto", config.distribution.strategy), dtype_auto=True)
    return dataclasses.replace(config, model=model)


def _section_values(section: str, given) -> dict:
    """A file's values of one section, in the fields' types; unknown names refused."""
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise SettingError("config", f"section {section!r} must be a mapping of settings, got {given!r}.")
    fields = {f.name: f for f in settings.setting_fields(SECTIONS[section])}
    unknown = sorted(set(given) - set(fields))
    if unknown:
        raise SettingError("config", f"unknown setting {section}.{unknown[0]}; "
                                     f"{section} has {', '.join(fields)}.")
    return {name: settings.coerce(fields[name], value) for name, value in given.items()}


def _resolve_recipe(family, data: DataSettings, file_recipe, preset: str | None, overrides: dict):
    """The recipe section: a preset (``--recipe``, else the file's, else the dataset's), the
    file's values (unless ``--recipe`` replaced them), then the explicit overrides."""
    given = _section_values("recipe", file_recipe)
    if preset is None and given:
        base_name = given.get("name")
        if base_name in recipes_lib.RECIPES:
            recipe = recipes_lib.RECIPES[base_name].replace(**given)
        else:  # a recipe of its own, complete in the file
            recipe = recipes_lib.Recipe(**{"family": family, **given})
    elif preset is not None:
        try:
            recipe = recipes_lib.get_recipe(preset)
        except ValueError as error:
            raise SettingError("recipe", str(error)) from None
    else:
        recipe = recipes_lib.recipe_for_dataset(None if data.data_dir else data.dataset, family)
    return recipe.replace(**overrides)


def resolve_dtype_policy(policy: str, strategy: str) -> str:
    """``--dtype_policy``, with ``auto`` resolved for the hardware at hand.

    bfloat16 is chosen only where it was measured to win: on an AMD EPYC with avx512_bf16,
    training ran 1.45x (ResNet-20, ResNet-56) to 1.75x (ResNet-110, ResNet-164) faster than
    float32 (docs/training.md), and TPUs compute in bfloat16 natively. On GPUs (float16 is
    their format, with loss scaling) and CPUs without bf16 (an Intel Xeon measured slower) it
    stays float32.
    """
    if policy != "auto":
        return policy
    if strategy == "tpu":
        return "mixed_bfloat16"
    if hardware.cpu_has_bf16() and not hardware.gpu_visible():
        return "mixed_bfloat16"
    return "float32"


def _resolve_open_values(config: RunConfig) -> RunConfig:
    """Fill in what the defaults leave open (unit order, data paths, run directory), and check
    the model, the weights file and the paths."""
    model = config.model
    name, kwargs = model_arguments(model)  # checks the architecture, naming the flag
    if model.init_weights:
        try:  # a name ("imagenet") becomes its hub handle or shipped preset, recorded as such
            where = registry.pretrained_weights(registry.resolve(name), model.init_weights)
        except ValueError as error:
            raise SettingError("init_weights", str(error)) from None
        model = dataclasses.replace(model, init_weights=os.path.expanduser(where))
    init_weights_options(name, model.init_weights, kwargs)  # reads the file; refuses a contradiction
    model = dataclasses.replace(model, order=resolve_order(model.preact, model.order))
    data = config.data
    if data.data_dir:
        data = dataclasses.replace(data, data_dir=os.path.expanduser(data.data_dir))
        check_image_folder(data)
    run = config.run
    check_writable_dir("model_dir", run.model_dir)
    if run.export:
        check_writable_dir("export_dir", run.export_dir)
    if run.model_dir is None:
        source = os.path.basename(os.path.normpath(data.data_dir)) if data.data_dir else data.dataset
        run = dataclasses.replace(run, model_dir=os.path.join("runs", f"{source}_{name}"))
    return dataclasses.replace(config, model=model, data=data, run=run)


def check_schedule_fits(recipe: recipes_lib.Recipe, steps_per_epoch: int) -> None:
    """A FlagError for a step-decay boundary or a warm-up that does not fit in the run.

    Only known once the data (hence the run's length in iterations) is: an iteration or epoch
    boundary at or after the last step blames ``--lr_boundaries``; a warm-up as long as the
    run blames ``--warmup_steps``.
    """
    total = recipe.total_steps(steps_per_epoch)
    if recipe.schedule == "step":
        try:
            resolve_boundaries(recipe.lr_boundaries, total, steps_per_epoch, within_run=True)
        except ValueError as error:
            raise SettingError("lr_boundaries", str(error)) from None
    if recipe.warmup_steps and recipe.warmup_steps >= total:
        raise SettingError(
            "warmup_steps", f"a warm-up of {recipe.warmup_steps} steps does not end inside the run "
            f"({total} steps); shorten it or lengthen the run."
        )


def model_arguments(model: ModelSettings) -> tuple:
    """``(canonical model name, keyword arguments of registry.get_model)``, checked without building.

    The name goes through ``keras_preact.registry`` only; its ``ModelNameError.argument`` says
    whether ``--model`` or ``--unit`` is wrong. The architecture is then checked by
    ``ResNetConfig`` with the settings added one at a time, so the flag whose addition it refuses
    is the one named. Shortcut options (``SHORTCUT_OPTIONS``, e.g. ``gate_bias_init``) are
    refused for a shortcut that does not use them: they would silently change nothing.
    """
    shortcut = model.shortcut
    options = {o: getattr(model, o) for o in SHORTCUT_OPTIONS if getattr(model, o) is not None}
    for option in options:
        users = SHORTCUT_OPTIONS[option]
        if shortcut not in users:
            raise SettingError(option, f"only used with --shortcut={' or '.join(users)}; "
                                       f"got --shortcut={shortcut}.")
    try:
        spec = registry.resolve(model.model, model.unit)
    except registry.ModelNameError as error:
        raise SettingError({"name": "model", "unit": "unit"}[error.argument], str(error)) from None
    try:
        order = resolve_order(model.preact, model.order)
    except ValueError as error:  # only an explicit --order can contradict --preact
        raise SettingError("order", str(error)) from None
    dtype_policy = model.dtype_policy if model.dtype_policy != "auto" else "float32"
    arguments = dict(family=spec.family, unit=spec.unit, order=order)
    for flag, added in (
        ("shortcut", {"shortcut": shortcut}),
        ("stacked_stages", {"stacked_stages": model.stacked_stages}),
        ("recompute", {"recompute": model.recompute}),
        ("dtype_policy", {"dtype_policy": dtype_policy}),
        ("padding", {"padding": model.padding}),
        ("data_format", {"data_format": model.data_format}),
        *((option, {option: value}) for option, value in options.items()),
    ):
        arguments.update(added)
        try:
            ResNetConfig(spec.units_per_stage, **arguments)
        except ValueError as error:
            raise SettingError(flag, str(error)) from None
    kwargs = {"shortcut": shortcut, "order": order, **options}
    if model.unit is not None:
        kwargs["unit"] = model.unit
    if model.stacked_stages:
        kwargs.update(stacked_stages=True, recompute=model.recompute)
    if dtype_policy != "float32":
        kwargs["dtype_policy"] = dtype_policy
    if model.padding != NETWORK_DEFAULTS["padding"]:
        kwargs["padding"] = model.padding
    # Always explicit: the trainers' images are NHWC whatever keras.config.image_data_format() says.
    kwargs["data_format"] = model.data_format
    return spec.name, kwargs


@functools.lru_cache(maxsize=4)
def _file_architecture(path: str, modified_ns: int, size: int) -> dict:
    # Keyed by the file's state: a run reads a weights file for its architecture once.
    return file_architecture(path)


def weights_file_architecture(path: str) -> dict:
    """The architecture arguments a weights file fixes (``keras_preact.weights``), read once."""
    try:
        status = os.stat(path)
    except OSError:
        return file_architecture(path)  # its own error names the missing file
    return dict(_file_architecture(path, status.st_mtime_ns, status.st_size))


def init_weights_options(model_name: str, path: str | None, model_kwargs: dict) -> dict:
    """``model_kwargs`` with the options ``init_weights`` fixes; SettingError if it cannot serve."""
    if not path:
        return model_kwargs
    path = os.path.expanduser(path)
    spec = registry.resolve(model_name)
    try:
        implied = weights_file_architecture(path)
        # The class count comes from the data (a different one gets a fresh head), so only
        # the architecture the file fixes is merged here.
        kwargs, _ = registry.weights_options(spec, path, {**model_kwargs, "include_top": False}, implied)
        kwargs.pop("include_top")
    except (FileNotFoundError, ValueError) as error:
        raise SettingError("init_weights", str(error)) from None
    return kwargs


def new_head(path: str, num_classes: int) -> bool:
    """Whether a model of ``num_classes`` classes starts ``init_weights``' backbone with a fresh
    classifier (the file's class count differs)."""
    implied = weights_file_architecture(os.path.expanduser(path))
    return "num_classes" in implied and implied["num_classes"] != num_classes


def check_image_folder(data: DataSettings) -> None:
    """An image folder has both splits, and its training split at least two class folders."""
    for split in (data.train_split, data.eval_split):
        if not os.path.isdir(os.path.join(data.data_dir, split)):
            raise SettingError(
                "data_dir", f"no folder {os.path.join(data.data_dir, split)!r}: expected <root>/<split>/<class>/<image>."
            )
    folder = os.path.join(data.data_dir, data.train_split)
    classes = sorted(d for d in os.listdir(folder) if os.path.isdir(os.path.join(folder, d)))
    if len(classes) < 2:
        raise SettingError(
            "data_dir", f"{folder!r} holds {len(classes)} class folder(s) {classes}: a classifier needs at least two."
        )


def read_file(path: str) -> dict:
    """A configuration file's values (``{section: {field: value}}``): JSON, or YAML when PyYAML is
    importable. SettingError naming ``--config`` if it cannot be read."""
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
        raise SettingError("config", f"no file {path!r}.")
    yaml_file = path.endswith((".yaml", ".yml"))
    if yaml_file:
        try:
            import yaml  # optional: the package does not depend on PyYAML
        except ImportError:
            raise SettingError("config", f"reading {os.path.basename(path)} needs PyYAML, which is not "
                                         "installed (pip install pyyaml), or give the configuration as .json.") from None
    try:
        with open(path) as handle:
            values = yaml.safe_load(handle) if yaml_file else json.load(handle)
    except (OSError, ValueError) as error:  # json.JSONDecodeError and yaml.YAMLError's parsers
        raise SettingError("config", f"cannot read {path!r}: {' '.join(str(error).split())}") from None
    except Exception as error:  # noqa: BLE001 -- yaml.YAMLError is not a ValueError
        raise SettingError("config", f"cannot read {path!r}: {' '.join(str(error).split())}") from None
    if not isinstance(values, dict):
        raise SettingError("config", f"{path!r} must hold a mapping of sections, got {type(values).__name__}.")
    return values


def write(config: RunConfig, directory: str) -> str:
    """``<directory>/config.json``: the resolved configuration; ``--config`` on it repeats the run."""
    path = os.path.join(directory, CONFIG_FILE)
    os.makedirs(directory, exist_ok=True)
    with open(path + ".tmp", "w") as handle:
        json.dump(config.to_dict(), handle, indent=2)
        handle.write("\n")
    os.replace(path + ".tmp", path)
    return path
