"""Strategies by name, and the one loop under default, mirrored and multi-worker strategies.

Runs with more than one replica happen in fresh processes (tests/training_worker.py): logical
CPU devices and the multi-worker runtime must be configured before TensorFlow starts.
"""

import json
import os
import signal
import time

import numpy as np
import pytest
import tensorflow as tf

import training_worker
from keras_preact.training import strategy as strategy_lib

STEPS = 8


def assert_replicas_identical(result):
    for path, replicas in result["variables"].items():
        for other in replicas[1:]:
            np.testing.assert_array_equal(other, replicas[0], err_msg=path)


def max_weight_difference(a, b):
    return max(
        float(np.max(np.abs(np.asarray(a["variables"][p][0]) - np.asarray(b["variables"][p][0]))))
        for p in a["variables"]
    )


def losses(result):
    return np.array([result["losses"][str(step)] for step in range(1, STEPS + 1)])


@pytest.fixture(scope="module")
def one_replica(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("default"))
    return training_worker.run_local(out, "--strategy=default", f"--steps={STEPS}", f"--model_dir={out}/run")


def test_default_strategy_trains(one_replica):
    assert one_replica["replicas"] == 1 and one_replica["final_step"] == STEPS
    curve = losses(one_replica)
    assert np.all(np.isfinite(curve)) and curve[-2:].mean() < curve[:2].mean()


def test_mirrored_two_cpus_sync_bn_matches_one_replica(one_replica, tmp_path):
    out = str(tmp_path)
    result = training_worker.run_local(
        out, "--strategy=mirrored", "--cpu_devices=2", "--sync_bn", f"--steps={STEPS}", f"--model_dir={out}/run"
    )
    assert result["replicas"] == 2
    assert_replicas_identical(result)
    # Same global batch: the loss curve and the weights match the one-replica run.
    np.testing.assert_allclose(losses(result), losses(one_replica), rtol=1e-4)
    assert max_weight_difference(result, one_replica) < 1e-4


def test_mirrored_without_sync_bn_keeps_replicas_identical(one_replica, tmp_path):
    # Keras 3 BN updates moving statistics per replica; the loop averages them every step.
    out = str(tmp_path)
    result = training_worker.run_local(
        out, "--strategy=mirrored", "--cpu_devices=2", f"--steps={STEPS}", f"--model_dir={out}/run"
    )
    assert_replicas_identical(result)
    moving = [p for p in result["variables"] if p.endswith("moving_mean")]
    assert moving and any(np.any(np.asarray(result["variables"][p][0]) != 0) for p in moving)
    # Per-replica BN statistics on half batches: close to, not equal to, one replica.
    np.testing.assert_allclose(losses(result), losses(one_replica), rtol=0.1)


@pytest.mark.slow
def test_mirrored_stacked_stages_keep_replicas_identical(tmp_path):
    """Stacked stages under the same loop: their BN statistics are averaged too."""
    out = str(tmp_path)
    result = training_worker.run_local(
        out, "--strategy=mirrored", "--cpu_devices=2", "--stacked", f"--steps={STEPS}",
        f"--model_dir={out}/run"
    )
    assert result["replicas"] == 2 and result["final_step"] == STEPS
    assert_replicas_identical(result)
    stacked = [p for p in result["variables"] if "units2to" in p and p.endswith("moving_mean")]
    assert stacked and all(np.any(np.asarray(result["variables"][p][0]) != 0) for p in stacked)
    assert np.all(np.isfinite(losses(result)))


@pytest.mark.slow
@pytest.mark.parametrize("policy", ["mixed_bfloat16", "mixed_float16"])
def test_mirrored_two_cpus_under_mixed_precision(one_replica, tmp_path, policy):
    """Mixed precision under MirroredStrategy with synchronised BN, 4 steps per loop (a log row
    every 4): replicas stay identical (float16: the loss-scale verdict is agreed across
    replicas) and the curve tracks the float32 one-replica run within half-precision rounding."""
    out = str(tmp_path)
    result = training_worker.run_local(
        out, "--strategy=mirrored", "--cpu_devices=2", "--sync_bn", f"--dtype_policy={policy}",
        "--steps_per_loop=4", "--log_every=4", f"--steps={STEPS}", f"--model_dir={out}/run"
    )
    assert result["replicas"] == 2 and result["final_step"] == STEPS
    assert_replicas_identical(result)
    assert (result["loss_scale"] is not None) == (policy == "mixed_float16")
    rows = np.array([result["losses"][step] for step in ("4", "8")])  # 4-step means
    np.testing.assert_allclose(rows, losses(one_replica).reshape(2, 4).mean(axis=1), rtol=0.05)


@pytest.mark.slow
def test_multi_worker_two_local_processes(one_replica, tmp_path):
    results = training_worker.run_cluster(
        str(tmp_path), 2, "--sync_bn", f"--steps={STEPS}", f"--model_dir={tmp_path}/run"
    )
    chief, other = results
    assert chief["chief"] and not other["chief"]
    assert chief["replicas"] == other["replicas"] == 2
    for path in chief["variables"]:  # one replica per worker: compare across processes
        np.testing.assert_array_equal(chief["variables"][path], other["variables"][path], err_msg=path)
    np.testing.assert_allclose(losses(chief), losses(one_replica), rtol=1e-4)
    assert max_weight_difference(chief, one_replica) < 1e-4
    # Only the chief writes into the run directory.
    assert os.listdir(os.path.join(tmp_path, "run", "checkpoints"))


@pytest.mark.slow
@pytest.mark.parametrize("killed", [1, 0])  # a worker, and the chief (which hosts the coordination service)
def test_a_killed_worker_stops_the_survivor_and_a_restart_resumes(tmp_path, killed):
    """Issue 14: kill -9 one of two workers mid-run. The survivor stops within the collective
    timeout with a clear error (exit 4, naming the checkpoint to resume from) instead of hanging;
    restarting both workers resumes from the last checkpoint, losing at most one interval."""
    run_dir = tmp_path / "run"
    args = ("--steps=60", f"--model_dir={run_dir}", "--checkpoint_every=4", "--step_delay=0.1",
            "--worker_timeout=30", "--log_every=1")
    processes = training_worker.start_cluster(str(tmp_path / "first"), 2, *args)
    try:
        deadline = time.monotonic() + 120
        saved = 0
        while time.monotonic() < deadline and saved < 8:
            latest = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
            saved = int(latest.rsplit("-", 1)[1]) if latest else 0
            time.sleep(0.05)
        assert saved >= 8, "the cluster never reached its second checkpoint"
        os.kill(processes[killed].pid, signal.SIGKILL)
        killed_at = time.monotonic()
        codes = training_worker.finish(processes, timeout=90)
        stopped_after = time.monotonic() - killed_at
    finally:
        training_worker.finish(processes, timeout=1)
    survivor = 1 - killed
    assert codes[killed] == -signal.SIGKILL
    assert codes[survivor] == 4, open(tmp_path / "first" / f"worker{survivor}" / "log.txt").read()[-3000:]
    assert stopped_after < 60, stopped_after
    with open(tmp_path / "first" / f"worker{survivor}" / "lost.json") as handle:
        lost = json.load(handle)
    assert lost["message"].startswith(f"Lost contact with another worker after step {lost['step']} ")
    assert "restart every worker with the same command to resume from" in lost["message"]
    assert lost["checkpoint"] and lost["checkpoint"] in lost["message"]
    resume_from = int(lost["checkpoint"].rsplit("-", 1)[1])
    assert lost["step"] - resume_from <= 4  # at most one checkpoint interval lost
    print(f"survivor stopped {stopped_after:.1f} s after the kill, at step {lost['step']}; "
          f"resuming from step {resume_from}")

    results = training_worker.run_cluster(str(tmp_path / "second"), 2, *args, timeout=150)
    assert [r["start_step"] for r in results] == [resume_from, resume_from]
    assert [r["final_step"] for r in results] == [60, 60]


@pytest.mark.slow
def test_one_device_strategy_runs_the_same_loop(one_replica, tmp_path):
    out = str(tmp_path)
    result = training_worker.run_local(
        out, "--strategy=one_device", f"--steps={STEPS}", f"--model_dir={out}/run"
    )
    assert result["replicas"] == 1 and result["final_step"] == STEPS
    # One replica on one device: the same computation as the default strategy.
    np.testing.assert_allclose(losses(result), losses(one_replica), rtol=1e-5)


def test_default_and_one_device_in_process():
    assert strategy_lib.build_strategy("default").num_replicas_in_sync == 1
    one = strategy_lib.build_strategy("one_device")
    assert isinstance(one, tf.distribute.OneDeviceStrategy)
    assert strategy_lib.is_chief(one) and strategy_lib.per_replica_batch(128, one) == 128


def test_unknown_strategy_names_the_choices():
    with pytest.raises(strategy_lib.StrategyError, match="'mirrored', 'multi_worker_mirrored', 'tpu'"):
        strategy_lib.build_strategy("horovod")


def test_tpu_without_a_tpu_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("TPU_NAME", raising=False)
    monkeypatch.setattr(strategy_lib, "local_tpu_present", lambda: False)
    # The resolver must not even be created: its fallback would query a metadata server.
    monkeypatch.setattr(tf.distribute.cluster_resolver, "TPUClusterResolver", None)
    with pytest.raises(strategy_lib.StrategyError, match="no TPU on this machine"):
        strategy_lib.build_strategy("tpu")


def test_multi_worker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(strategy_lib.StrategyError, match="TF_CONFIG"):
        strategy_lib.build_strategy("multi_worker_mirrored")
    monkeypatch.setenv("TF_CONFIG", '{"cluster": {"worker": ["127.0.0.1:1"]}, "task": {"type": "chief", "index": 0}}')
    with pytest.raises(strategy_lib.StrategyError, match="not in its cluster"):
        strategy_lib.build_strategy("multi_worker_mirrored")


def test_batch_must_divide_by_replicas():
    class TwoReplicas:
        num_replicas_in_sync = 2

    assert strategy_lib.per_replica_batch(128, TwoReplicas()) == 64
    with pytest.raises(strategy_lib.StrategyError, match="--batch_size=127 is not divisible by the 2 replicas"):
        strategy_lib.per_replica_batch(127, TwoReplicas())
