"""Training: strategies, the paper's recipes and schedules, one custom loop, checkpoints, logs.

    >>> import keras_preact
    >>> from keras_preact import training
    >>> strategy = training.build_strategy("mirrored", cpu_devices=2)
    >>> recipe = training.get_recipe("cifar").replace(train_steps=2000, lr_boundaries=("0.5", "0.75"))
    >>> trainer = training.Trainer(strategy, lambda: keras_preact.ResNet20(), recipe,
    ...                            steps_per_epoch=390, global_batch=128, model_dir="runs/r20")
    >>> trainer.fit(train_ds, {"test": test_ds})

The command-line trainers (``trainers/cifar.py``, ``trainers/imagenet.py``) are thin front-ends
over ``keras_preact.cli.train``, which turns their flags into a ``RunConfig`` (``run_config``:
every setting of a run, with its default and check, once) and runs it.
"""

from keras_preact.common import lazy_exports

# Where each public name lives. They are imported on first use (PEP 562), so that the
# TensorFlow-free parts (the recipes as data, schedules, divergence checks) import without
# TensorFlow: keras_preact.recipes reads them on every Keras backend.
_EXPORTS = {
    "WeightAverage": "averaging",
    "RunCheckpoints": "checkpoints", "check_finite_checkpoint": "checkpoints",
    "non_finite_tensors": "checkpoints",
    "LossMonitor": "divergence", "NonFiniteCheckpointError": "divergence",
    "DivergenceError": "loop", "Trainer": "loop", "WorkerLostError": "loop",
    "enable_sync_batch_norm": "loop",
    "MetricsLog": "observe", "ProgressBar": "observe", "TensorBoardLog": "observe",
    "plot_curves": "observe", "read_metrics": "observe",
    "RECIPES": "recipes", "Recipe": "recipes", "get_recipe": "recipes",
    "RunConfig": "run_config", "SettingError": "settings",
    "SCHEDULES": "schedules", "CosineDecay": "schedules", "StepDecay": "schedules",
    "build_schedule": "schedules", "resolve_boundaries": "schedules",
    "scale_learning_rate": "schedules",
    "FusedSGD": "sgd",
    "STRATEGIES": "strategy", "StrategyError": "strategy", "build_strategy": "strategy",
    "configure_cpu_devices": "strategy", "is_chief": "strategy", "per_replica_batch": "strategy",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = [
    "WorkerLostError",
    "WeightAverage",
    "CosineDecay",
    "DivergenceError",
    "FusedSGD",
    "LossMonitor",
    "NonFiniteCheckpointError",
    "MetricsLog",
    "ProgressBar",
    "RECIPES",
    "Recipe",
    "RunCheckpoints",
    "RunConfig",
    "SCHEDULES",
    "STRATEGIES",
    "SettingError",
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
