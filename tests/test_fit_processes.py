"""The fit trainer over several JAX processes (``keras.distribution`` over ``jax.distributed``).

Two local CPU processes, one device each, play the hosts of a multi-host slice: every batch is
split over both, each process feeding its own rows; process 0 writes the run directory.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

pytest.importorskip("jax")
# The processes run JAX whatever the backend of this test process; CI runs this module once, in
# its JAX-only tier (KERAS_BACKEND=jax), not again in the TensorFlow and PyTorch tiers.
pytestmark = pytest.mark.skipif(keras.backend.backend() != "jax",
                                reason="runs in the JAX tier: KERAS_BACKEND=jax pytest tests/test_fit_processes.py")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINER = os.path.join(ROOT, "trainers", "fit.py")
# A small rate: the two runs add the same numbers in another order, and a large one amplifies
# that float rounding from step to step (at --lr=0.1 it reaches 0.5 in 20 steps).
COMMON = ("--model=resnet8", "--recipe=fast", "--batch_size=32", "--dtype_policy=float32", "--lr=0.002",
          "--log_every=5")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("localhost", 0))
        return probe.getsockname()[1]


def start(arguments, process_id=None, processes=2, port=None):
    command = [sys.executable, TRAINER, *arguments]
    if process_id is not None:
        command += [f"--coordinator_address=localhost:{port}", f"--num_processes={processes}",
                    f"--process_id={process_id}"]
    return subprocess.Popen(command, env={**os.environ, "KERAS_BACKEND": "jax"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(processes, timeout=600):
    outputs = [p.communicate(timeout=timeout) for p in processes]
    return [p.returncode for p in processes], outputs


def checkpoint(run_dir, step) -> dict:
    with np.load(os.path.join(run_dir, "checkpoints", f"ckpt-{step:09d}.npz")) as stored:
        return {name: stored[name] for name in stored.files if name != "state"}


def test_two_processes_train_as_one_with_the_same_global_batch(tmp_path):
    arguments = (*COMMON, "--train_steps=12", "--checkpoint_every=6")
    codes, outputs = finish([start((*arguments, f"--model_dir={tmp_path / 'one'}"))])
    assert codes == [0], outputs[0][1][-3000:]
    port = free_port()
    codes, outputs = finish([start((*arguments, f"--model_dir={tmp_path / 'two'}"), i, port=port) for i in (0, 1)])
    assert codes == [0, 0], [err[-2000:] for _, err in outputs]
    assert "2 process(es)" in outputs[0][0]
    # Process 0 alone prints (gloo's own C++ line about its connection aside).
    assert [line for line in outputs[1][0].splitlines() if not line.startswith("[Gloo]")] == []
    one, two = checkpoint(tmp_path / "one", 12), checkpoint(tmp_path / "two", 12)
    assert sorted(one) == sorted(two)
    for name in one:
        np.testing.assert_allclose(two[name], one[name], rtol=1e-3, atol=1e-4, err_msg=name)


def test_a_lost_process_stops_the_other_and_the_run_resumes(tmp_path):
    run_dir = tmp_path / "run"
    arguments = (*COMMON, "--train_steps=60", "--checkpoint_every=4", f"--model_dir={run_dir}")
    port = free_port()
    survivor, lost = start(arguments, 0, port=port), start(arguments, 1, port=port)
    try:
        deadline = time.monotonic() + 300
        while not (run_dir / "checkpoints" / "ckpt-000000008.npz").exists():
            assert survivor.poll() is None and time.monotonic() < deadline, survivor.stderr.read()[-2000:]
            time.sleep(0.05)
        os.kill(lost.pid, signal.SIGKILL)
        killed_at = time.monotonic()
        _, error = survivor.communicate(timeout=60)
        stopped_after = time.monotonic() - killed_at
    finally:
        for process in (survivor, lost):
            if process.poll() is None:
                process.kill()
    assert survivor.returncode == 4, error[-2000:]
    assert stopped_after < 10  # measured: under 0.1 s (the collective fails at once)
    assert "start every process again to resume" in error.strip().splitlines()[-1]
    assert not (run_dir / "results.json").exists()

    port = free_port()
    codes, outputs = finish([start(arguments, i, port=port) for i in (0, 1)])
    assert codes == [0, 0], [err[-2000:] for _, err in outputs]
    assert "Resuming from" in outputs[0][0]
    assert (run_dir / "results.json").exists() and (run_dir / "checkpoints" / "ckpt-000000060.npz").exists()
