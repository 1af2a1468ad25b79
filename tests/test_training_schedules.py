"""Learning-rate schedules (``training/schedules.py``): the paper's numbers and the short-run forms."""

import keras
import pytest

from keras_preact.training import schedules


def lr_at(schedule, step):
    return float(schedule(step))


def test_boundaries_as_iterations_fractions_and_epochs():
    assert schedules.resolve_boundaries(["32000", 48000], 64000) == (32000, 48000)
    assert schedules.resolve_boundaries(["0.5", "0.75"], 2000) == (1000, 1500)
    assert schedules.resolve_boundaries(["30ep", "60ep"], 90 * 5005, 5005) == (150150, 300300)


@pytest.mark.parametrize(
    "specs, match",
    [(["1.5"], "strictly between 0 and 1"), (["abc"], "Bad learning-rate boundary"),
     (["48000", "32000"], "must increase"), (["30ep"], "steps_per_epoch"), (["0"], ">= 1"), (["-0.5"], "strictly")],
)
def test_bad_boundaries_are_clear_errors(specs, match):
    with pytest.raises(ValueError, match=match):
        schedules.resolve_boundaries(specs, 64000)


def test_cifar_step_decay_with_paper_warmup():
    schedule = schedules.StepDecay(0.1, (32000, 48000), 0.1, warmup_steps=400, warmup_lr=0.01)
    expected = {0: 0.01, 399: 0.01, 400: 0.1, 31999: 0.1, 32000: 0.01, 47999: 0.01, 48000: 0.001, 63999: 0.001}
    for step, lr in expected.items():
        assert lr_at(schedule, step) == pytest.approx(lr, rel=1e-6), step


def test_cosine_decay_ends_at_zero_after_warmup():
    schedule = schedules.CosineDecay(0.1, total_steps=1100, warmup_steps=100, warmup_lr=0.01)
    assert lr_at(schedule, 50) == pytest.approx(0.01)
    assert lr_at(schedule, 100) == pytest.approx(0.1)
    assert lr_at(schedule, 600) == pytest.approx(0.05, rel=1e-5)
    assert lr_at(schedule, 1100) == pytest.approx(0.0, abs=1e-7)
    values = [lr_at(schedule, s) for s in range(100, 1101, 50)]
    assert all(a >= b for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("kind", schedules.SCHEDULES)
def test_schedules_round_trip_through_keras_serialization(kind):
    schedule = schedules.build_schedule(
        kind, base_lr=0.2, total_steps=1000, boundaries=(500, 750), warmup_steps=10
    )
    clone = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(schedule))
    assert type(clone) is type(schedule)
    for step in (0, 10, 499, 500, 800, 999):
        assert lr_at(clone, step) == pytest.approx(lr_at(schedule, step))


def test_unknown_schedule_names_the_choices():
    with pytest.raises(ValueError, match="'step', 'cosine'"):
        schedules.build_schedule("linear", base_lr=0.1, total_steps=10)


def test_linear_scaling_with_batch():
    assert schedules.scale_learning_rate(0.1, 1024, 256) == pytest.approx(0.4)
    assert schedules.scale_learning_rate(0.1, 64, None) == 0.1


def test_absolute_boundaries_become_fractions_of_the_run():
    # The paper's 32k and 48k of 64k iterations ([1] section 4.2) are 0.5 and 0.75 of the run;
    # ImageNet's epochs 30 and 60 of 90 are 1/3 and 2/3.
    assert schedules.relative_boundaries(["32000", "48000"], train_steps=64000) == ("0.5", "0.75")
    thirds = schedules.relative_boundaries(["30ep", "60ep"], epochs=90)
    assert [float(f) for f in thirds] == pytest.approx([1 / 3, 2 / 3])
    assert schedules.resolve_boundaries(thirds, 90 * 5005, 5005) == (150150, 300300)  # unchanged length
    # Fractions, and units that do not match the run's, stay as they are.
    assert schedules.relative_boundaries(["0.5", "30ep"], train_steps=1000) == ("0.5", "30ep")


def test_recipe_boundaries_follow_a_new_run_length():
    from keras_preact.training import recipes

    cifar = recipes.get_recipe("cifar")
    short = cifar.replace(train_steps=600)
    assert short.lr_boundaries == ("0.5", "0.75")
    assert schedules.resolve_boundaries(short.lr_boundaries, short.total_steps(100)) == (300, 450)
    by_epochs = cifar.replace(epochs=3)  # 3 epochs of 200 steps: decays at steps 300 and 450
    assert schedules.resolve_boundaries(by_epochs.lr_boundaries, by_epochs.total_steps(200)) == (300, 450)
    imagenet = recipes.get_recipe("imagenet").replace(epochs=9)
    assert schedules.resolve_boundaries(imagenet.lr_boundaries, imagenet.total_steps(10), 10) == (30, 60)
    # An explicit boundary is kept; the recipe's own length keeps the paper's iterations.
    assert cifar.replace(train_steps=600, lr_boundaries=("100",)).lr_boundaries == ("100",)
    assert cifar.replace(momentum=0.8).lr_boundaries == ("32000", "48000")


@pytest.mark.parametrize("spec", ["600", "700", "6ep"])
def test_absolute_boundary_at_or_after_the_end_is_an_error(spec):
    with pytest.raises(ValueError, match="after the end of the run"):
        schedules.resolve_boundaries([spec], 600, 100, within_run=True)
    assert schedules.resolve_boundaries(["599", "0.9999"], 600, 100, within_run=True) == (599, 600)
    # Without within_run (a library run that will be resumed into a longer one) it is kept.
    assert schedules.resolve_boundaries([spec], 600, 100)[0] >= 600
