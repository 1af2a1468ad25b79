"""Training: strategies, the paper's recipes and schedules, one custom loop, checkpoints, logs.

    >>> import keras_preact
    >>> from keras_preact import training
    >>> strategy = training.build_strategy("mirrored", cpu_devices=2)
    >>> recipe = training.get_recipe("cifar").replace(train_steps=2000, lr_boundaries=("0.5", "0.75"))
    >>> trainer = training.Trainer(strategy, lambda: keras_preact.ResNet20(), recipe,
    ...                            steps_per_epoch=390, global_batch=128, model_dir="runs/r20")
    >>> trainer.fit(train_ds, {"test": test_ds})

The command-line trainers (``trainers/cifar.py``, ``trainers/imagenet.py``) are thin front-ends
over ``keras_preact.cli.train``.
"""

from keras_preact.training.averaging import WeightAverage
from keras_preact.training.checkpoints import RunCheckpoints, check_finite_checkpoint, non_finite_tensors
from keras_preact.training.divergence import LossMonitor, NonFiniteCheckpointError
from keras_preact.training.loop import DivergenceError, Trainer, WorkerLostError, enable_sync_batch_norm
from keras_preact.training.observe import MetricsLog, ProgressBar, TensorBoardLog, plot_curves, read_metrics
from keras_preact.training.recipes import RECIPES, Recipe, get_recipe
from keras_preact.training.schedules import (
    SCHEDULES,
    CosineDecay,
    StepDecay,
    build_schedule,
    resolve_boundaries,
    scale_learning_rate,
)
from keras_preact.training.strategy import (
    STRATEGIES,
    StrategyError,
    build_strategy,
    configure_cpu_devices,
    is_chief,
    per_replica_batch,
)

__all__ = [
    "WorkerLostError",
    "WeightAverage",
    "CosineDecay",
    "DivergenceError",
    "LossMonitor",
    "NonFiniteCheckpointError",
    "MetricsLog",
    "ProgressBar",
    "RECIPES",
    "Recipe",
    "RunCheckpoints",
    "SCHEDULES",
    "STRATEGIES",
    "StepDecay",
    "StrategyError",
    "TensorBoardLog",
    "Trainer",
    "build_schedule",
    "build_strategy",
    "check_finite_checkpoint",
    "configure_cpu_devices",
    "enable_sync_batch_norm",
    "get_recipe",
    "is_chief",
    "non_finite_tensors",
    "per_replica_batch",
    "plot_curves",
    "read_metrics",
    "resolve_boundaries",
    "scale_learning_rate",
]
