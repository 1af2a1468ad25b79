"""Training recipes (``training/recipes.py``): the paper's settings and the short-run forms."""

import numpy as np
import pytest

from keras_preact.training import recipes, schedules


def test_recipes_follow_the_paper_appendix():
    """SGD momentum 0.9, batch 128, wd 1e-4, 0.1 /10 at 32k and 48k of 64k iterations (CIFAR);
    batch 256, /10 at epochs 30 and 60 of 90 (ImageNet), tested at 224 and 320 (Table 5)."""
    cifar, imagenet = recipes.get_recipe("cifar"), recipes.get_recipe("imagenet")
    assert (cifar.batch_size, cifar.base_lr, cifar.momentum, cifar.weight_decay) == (128, 0.1, 0.9, 1e-4)
    assert cifar.decay_bn and not cifar.nesterov
    assert cifar.total_steps(390) == 64000
    assert schedules.resolve_boundaries(cifar.lr_boundaries, 64000) == (32000, 48000)
    assert (imagenet.batch_size, imagenet.lr_reference_batch, imagenet.epochs) == (256, 256, 90)
    assert schedules.resolve_boundaries(imagenet.lr_boundaries, 90 * 5005, 5005) == (30 * 5005, 60 * 5005)
    assert imagenet.eval_sizes == (224, 320)


def test_recipe_replace_keeps_unset_values_and_one_run_length():
    cifar = recipes.get_recipe("cifar")
    short = cifar.replace(epochs=2, base_lr=None)
    assert short.train_steps is None and short.total_steps(100) == 200 and short.base_lr == 0.1
    assert short.replace(train_steps=7).total_steps(100) == 7
    with pytest.raises(ValueError, match="'cifar', 'imagenet'"):
        recipes.get_recipe("mnist")


def test_sample_recipe_keeps_the_cifar_shape():
    sample = recipes.recipe_for_dataset("cifar10_sample", "cifar")
    total = sample.total_steps(39)
    boundaries = np.array(schedules.resolve_boundaries(sample.lr_boundaries, total, 39))
    assert np.allclose(boundaries / total, [32000 / 64000, 48000 / 64000], atol=0.01)
    assert recipes.recipe_for_dataset("cifar10", "cifar") is recipes.get_recipe("cifar")
