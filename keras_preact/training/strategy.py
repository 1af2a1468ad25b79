"""Building a ``tf.distribute`` strategy from its name.

Every strategy runs the same training loop (``keras_preact.training.loop``), so this module only
has to turn a name into a strategy and answer the questions the loop asks of it: how many
replicas, is this process the chief, does the global batch split evenly.

Names (``STRATEGIES``):

* ``default``: the no-op strategy of ``tf.distribute.get_strategy()`` (one device, whatever TF picks).
* ``one_device``: ``OneDeviceStrategy`` on the first GPU, else the CPU.
* ``mirrored``: ``MirroredStrategy`` over every local GPU; on a machine without GPUs, over every
  logical CPU device, so ``configure_cpu_devices(n)`` (``--cpu_devices=n``) lets one CPU machine
  run n synchronous replicas, for tests and for trying the strategy out.
* ``multi_worker_mirrored``: ``MultiWorkerMirroredStrategy``; the cluster comes from ``TF_CONFIG``.
  ``worker_timeout`` bounds every collective (all-reduce, broadcast) in seconds, so that a
  worker whose peer died stops with an error instead of waiting for ever (see
  ``training.loop.WorkerLostError``).
* ``tpu``: ``TPUStrategy`` through ``TPUClusterResolver``. Without ``tpu=`` and without a local TPU
  this raises ``StrategyError`` before touching the resolver, because the resolver's fallback
  asks the cloud metadata server over the network.
"""

from __future__ import annotations

import glob
import json
import os

import tensorflow as tf

from keras_preact.common import DEFAULT_WORKER_TIMEOUT, STRATEGIES  # noqa: F401 -- defined with the run settings


# What a StrategyError can be about (its ``argument``): the arguments of ``build_strategy`` and
# ``per_replica_batch``, plus the TF_CONFIG environment of a multi-worker run.
ERROR_ARGUMENTS = ("name", "cpu_devices", "tpu", "tf_config", "global_batch")


class StrategyError(ValueError):
    """A strategy that cannot be built here, with the reason and what to pass instead.

    ``argument`` (one of ``ERROR_ARGUMENTS``) says which input is wrong, so a command line can
    name its flag without reading the message.
    """

    def __init__(self, message: str, argument: str = "name"):
        if argument not in ERROR_ARGUMENTS:
            raise ValueError(f"Unknown StrategyError argument {argument!r}.")
        super().__init__(message)
        self.argument = argument


def configure_cpu_devices(count: int) -> None:
    """Split the physical CPU into ``count`` logical devices (call before any TF op runs)."""
    count = int(count)
    if count < 1:
        raise StrategyError(f"cpu_devices must be >= 1, got {count}.", "cpu_devices")
    cpus = tf.config.list_physical_devices("CPU")
    current = tf.config.get_logical_device_configuration(cpus[0])
    if current is not None and len(current) == count:
        return
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(count)]
        )
    except RuntimeError as error:  # TF refuses once its runtime has started
        have = len(tf.config.list_logical_devices("CPU"))
        if have != count:
            raise StrategyError(
                f"Cannot split the CPU into {count} logical devices: TensorFlow is already "
                f"initialised with {have}. Configure devices before running any TF op.",
                "cpu_devices",
            ) from error


def local_tpu_present() -> bool:
    """A TPU VM exposes its chips as /dev/accel* (v2-v4) or /dev/vfio/* (v5+)."""
    return bool(glob.glob("/dev/accel*")) or bool(glob.glob("/dev/vfio/[0-9]*"))




def build_strategy(
    name: str, *, cpu_devices: int | None = None, tpu: str | None = None,
    worker_timeout: float | None = DEFAULT_WORKER_TIMEOUT,
) -> tf.distribute.Strategy:
    """The ``tf.distribute.Strategy`` called ``name`` (see ``STRATEGIES``).

    Args:
      name: one of ``STRATEGIES``.
      cpu_devices: if set, split the CPU into this many logical devices first (must run before
        TensorFlow initialises); ``mirrored`` on a GPU-less machine then uses all of them.
      tpu: TPU name or ``grpc://`` address for ``name="tpu"``; ``"local"`` on a TPU VM.
      worker_timeout: ``multi_worker_mirrored`` only: seconds a collective may wait for the other
        workers before it fails (None: for ever). It must exceed the longest gap between two
        collectives of a healthy run (a step, an evaluation, a checkpoint save, the first
        step's tracing).
    """
    if name not in STRATEGIES:
        raise StrategyError(
            f"Unknown strategy {name!r}. Valid choices: {', '.join(map(repr, STRATEGIES))}.",
            "name",
        )
    if name == "multi_worker_mirrored":
        check_tf_config()
    # Device layout first: TensorFlow fixes it when its runtime starts.
    if cpu_devices:
        configure_cpu_devices(cpu_devices)
    if name == "multi_worker_mirrored":
        options = tf.distribute.experimental.CommunicationOptions(
            timeout_seconds=float(worker_timeout) if worker_timeout else None)
        return tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    if name == "mirrored":
        if tf.config.list_logical_devices("GPU"):
            return tf.distribute.MirroredStrategy()
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(
            devices=devices, cross_device_ops=tf.distribute.ReductionToOneDevice()
        )
    return build_tpu_strategy(tpu)


def build_tpu_strategy(tpu: str | None) -> tf.distribute.Strategy:
    if not tpu:
        if not local_tpu_present() and not os.environ.get("TPU_NAME"):
            raise StrategyError(
                "--strategy=tpu: no TPU on this machine (no /dev/accel*, no TPU_NAME) and no "
                "--tpu=<name or grpc://address> given. Use --strategy=default, one_device, "
                "mirrored or multi_worker_mirrored here.",
                "name",  # the strategy cannot run here; a --tpu address would also do
            )
        tpu = os.environ.get("TPU_NAME") or "local"
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu)
        if tpu != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise StrategyError(f"--strategy=tpu: cannot reach TPU {tpu!r}: {first_line}", "tpu") from error
    return tf.distribute.TPUStrategy(resolver)


def check_tf_config() -> dict:
    """Parse ``TF_CONFIG`` for a multi-worker run, or raise a StrategyError saying what is wrong."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        raise StrategyError(
            "--strategy=multi_worker_mirrored needs the cluster in the TF_CONFIG environment "
            'variable, e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
            '"task": {"type": "worker", "index": 0}}.',
            "tf_config",
        )
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config["task"]
        task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as error:
        raise StrategyError(f"TF_CONFIG is not a valid cluster description: {error}", "tf_config") from error
    if task["type"] not in cluster:
        raise StrategyError(f"TF_CONFIG task type {task['type']!r} is not in its cluster.", "tf_config")
    return config


def worker_count(strategy: tf.distribute.Strategy) -> int:
    """How many worker processes take part (1 for every single-process strategy)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy) or resolver is None:
        return 1
    return max(1, len(resolver.cluster_spec().as_dict().get("worker", [])) +
               len(resolver.cluster_spec().as_dict().get("chief", [])))


def is_chief(strategy: tf.distribute.Strategy) -> bool:
    """True in the process that writes checkpoints, logs and exports (the only one if local)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    task_type = getattr(resolver, "task_type", None) if resolver is not None else None
    if task_type is None or isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    if task_type == "chief":
        return True
    cluster = resolver.cluster_spec().as_dict()
    return task_type == "worker" and resolver.task_id == 0 and "chief" not in cluster


def worker_id(strategy: tf.distribute.Strategy) -> str:
    """A name for this process, unique in the cluster (``"chief"`` outside multi-worker runs)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or getattr(resolver, "task_type", None) is None:
        return "chief"
    return f"{resolver.task_type}{resolver.task_id}"


def per_replica_batch(global_batch: int, strategy: tf.distribute.Strategy) -> int:
    """The batch each replica sees; a StrategyError if the global batch does not divide evenly."""
    replicas = strategy.num_replicas_in_sync
    if global_batch < 1 or global_batch % replicas:
        raise StrategyError(
            f"--batch_size={global_batch} is not divisible by the {replicas} replicas of this "
            f"strategy; use a multiple of {replicas}.",
            "global_batch",
        )
    return global_batch // replicas
