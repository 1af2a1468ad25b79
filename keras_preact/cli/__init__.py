"""The command lines: the top layer of the package.

``keras_preact.cli.train`` is the trainer command line behind ``trainers/cifar.py`` and
``trainers/imagenet.py``. It sits above every other layer because it uses all of them: the
model registry, the data pipelines, the training loop and, at the end of a run, the exporter
(``keras_preact.export``, which itself builds on ``keras_preact.training``). Nothing in the
package imports this layer.
"""
