"""keras_preact.training.divergence: which step losses stop a run."""

import math

import numpy as np
import pytest

from keras_preact.training.divergence import DivergenceError, LossMonitor, NonFiniteCheckpointError, non_finite


def test_nan_and_inf_are_divergence_from_the_first_step():
    for value in (math.nan, math.inf, -math.inf):
        assert "training loss is" in LossMonitor().problem(value)


def test_a_spike_far_above_the_recent_average_is_divergence():
    monitor = LossMonitor(factor=10, window=3)
    for loss in (2.3, 2.2, 2.4):
        assert monitor.problem(loss) is None
    assert monitor.reference == pytest.approx(2.3)
    assert monitor.problem(22.9) is None  # 9.96x: noisy but not an explosion
    problem = monitor.problem(5e9)  # the --lr=1e6 run's loss at step 12
    assert "5e+09" in problem and "more than 10x" in problem and "--divergence_factor" in problem


def test_the_floor_keeps_small_losses_from_looking_like_explosions():
    for loss, diverged in ((5.0, False), (10.5, True)):  # 300x / 630x the average
        monitor = LossMonitor(factor=10, window=5, floor=1.0)
        for small in (0.01, 0.02, 0.01):
            monitor.problem(small)
        assert (monitor.problem(loss) is not None) == diverged  # the bar is 10 x floor


def test_factor_zero_only_stops_on_non_finite():
    monitor = LossMonitor(factor=0)
    monitor.problem(1.0)
    assert monitor.problem(1e30) is None and monitor.problem(math.nan) is not None


@pytest.mark.parametrize("factor, window", [(0.5, 20), (1.0, 20), (math.inf, 20), (10, 0)])
def test_bad_settings_are_refused(factor, window):
    with pytest.raises(ValueError, match="divergence"):
        LossMonitor(factor, window)


def test_non_finite_names_only_float_arrays_with_nan_or_inf():
    arrays = [("a", np.ones(3)), ("b", np.array([1.0, np.inf])), ("c", np.array([np.nan])),
              ("steps", np.array([7]))]
    assert non_finite(arrays) == ["b", "c"]
    assert issubclass(NonFiniteCheckpointError, DivergenceError)
    assert DivergenceError("x", step=3, checkpoint="p").checkpoint == "p"
