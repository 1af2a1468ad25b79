"""keras_preact.training.checkpoints: no non-finite checkpoint is written or resumed, the last
known-good one survives rotation, a divergence rewinds the run to it, temp folders are swept."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_preact
from keras_preact.training import checkpoints as ckpt_lib
from keras_preact.training.divergence import NonFiniteCheckpointError


def make_run(model_dir, keep=1, confirm=2):
    keras.utils.set_random_seed(0)
    model = keras_preact.build_resnet((1, 1, 1), widths=(4, 8, 8), input_shape=(8, 8, 3))
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    run = ckpt_lib.RunCheckpoints(str(model_dir), model=model, optimizer=optimizer,
                                  strategy=tf.distribute.get_strategy(), max_to_keep=keep,
                                  confirm_steps=confirm)
    return run, model, optimizer


def moving_variance(model):
    return next(v for v in model.variables if v.path.endswith("moving_variance"))


def saved_steps(directory):
    return sorted(int(f.split("-")[1].split(".")[0]) for f in os.listdir(directory) if f.endswith(".index"))


def every_checkpoint_is_finite(model_dir):
    prefixes = [os.path.join(root, f[:-6]) for root, _, names in os.walk(model_dir) for f in names
                if f.endswith(".index")]
    assert prefixes
    return all(not ckpt_lib.non_finite_tensors(p) for p in prefixes)


def test_a_state_with_a_non_finite_variable_is_never_written(tmp_path):
    run, model, _ = make_run(tmp_path)
    run.save(1)
    # What the --lr=1e6 run did: BN moving variances overflowed while the loss was still finite.
    moving_variance(model).assign(np.full(moving_variance(model).shape, np.inf, np.float32))
    with pytest.raises(NonFiniteCheckpointError, match="not finite at step 2 .*moving_variance"):
        run.save(2)
    assert saved_steps(run.directory) == [1] and run.latest.endswith("ckpt-1")
    assert every_checkpoint_is_finite(tmp_path)


def test_the_known_good_checkpoint_survives_rotation_until_a_newer_one_is_confirmed(tmp_path):
    run, model, _ = make_run(tmp_path, keep=1, confirm=3)
    run.save(2)
    assert run.confirm(4) is None and run.known_good is None  # 2 steps: not judged yet
    assert run.confirm(5).endswith("ckpt-2")
    run.save(6)  # rotation (keep 1) deletes ckpt-2 from the run directory...
    run.save(8)
    assert saved_steps(run.directory) == [8]
    pinned = run.known_good
    assert pinned.endswith(os.path.join("known_good", "ckpt-2"))  # ...but not the pinned copy
    reader = tf.train.load_checkpoint(pinned)
    assert any("moving_variance" in name for name in reader.get_variable_to_shape_map())
    run.confirm(9)  # ckpt-6 is now known good: the pin moves on
    assert run.known_good.endswith("ckpt-6") and saved_steps(run.known_good_dir) == [6]


def test_rewind_makes_the_known_good_checkpoint_the_one_a_restart_resumes(tmp_path):
    run, model, optimizer = make_run(tmp_path, keep=1, confirm=2)
    weights_at_2 = [np.array(v.numpy()) for v in model.variables]
    optimizer.iterations.assign(2)
    run.save(2)
    run.confirm(4)
    for step in (4, 6):
        for v in model.trainable_variables:
            v.assign(v * 1e6)  # finite but exploding: unconfirmed checkpoints
        optimizer.iterations.assign(step)
        run.save(step)
    known = run.rewind()
    assert known == os.path.join(run.directory, "ckpt-2")
    assert saved_steps(run.directory) == [2] and tf.train.latest_checkpoint(run.directory) == known
    restarted, model2, _ = make_run(tmp_path, keep=1, confirm=2)
    assert restarted.restore() == 2
    for a, b in zip(weights_at_2, model2.variables):
        np.testing.assert_array_equal(a, b.numpy())


def test_a_non_finite_checkpoint_is_refused_at_resume(tmp_path):
    """A checkpoint written by an older version of a run that diverged (its ckpt-25)."""
    run, model, _ = make_run(tmp_path)
    moving_variance(model).assign(np.full(moving_variance(model).shape, np.nan, np.float32))
    run.manager.save(checkpoint_number=25)  # bypass the check, as the old code did
    again, _, _ = make_run(tmp_path)
    with pytest.raises(NonFiniteCheckpointError, match=r"ckpt-25 holds non-finite values in 1 tensor"):
        again.restore()


def test_orphan_temporary_folders_are_removed_on_start(tmp_path):
    directory = tmp_path / ckpt_lib.CHECKPOINT_SUBDIR
    (directory / "ckpt-7_temp").mkdir(parents=True)
    (directory / "ckpt-7_temp" / "part-00000-of-00001.index").write_bytes(b"half")
    run, _, _ = make_run(tmp_path)
    assert run.removed_temporaries == [str(directory / "ckpt-7_temp")]
    assert not (directory / "ckpt-7_temp").exists()
