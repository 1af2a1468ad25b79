"""A tiny training run in its own process, for the distribution, resume and kill tests.

Logical CPU devices and multi-worker collectives must be configured before TensorFlow starts,
which a pytest process may already have done, so these runs get fresh processes. The run
trains a 3-unit pre-activation ResNet at 8x8 on generated, learnable data (the label is the
brightest of ten colour bands) and writes ``result.json`` into ``--out``: the per-step
training loss and, for every variable, the value held by each local replica.

    python tests/training_worker.py --strategy=mirrored --cpu_devices=2 --steps=6 --out=DIR
"""

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

GLOBAL_BATCH = 16
STEPS_PER_EPOCH = 4
HERE = os.path.abspath(__file__)
ROOT = os.path.dirname(os.path.dirname(HERE))


def worker_env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=ROOT)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def launch(args, out_dir, env=None):
    """Start one worker process; its output goes to ``out_dir/log.txt``."""
    import subprocess

    os.makedirs(out_dir, exist_ok=True)
    log = open(os.path.join(out_dir, "log.txt"), "w")
    return subprocess.Popen(
        [sys.executable, HERE, f"--out={out_dir}", *args],
        stdout=log, stderr=subprocess.STDOUT, env=env or worker_env(), cwd=ROOT,
        start_new_session=True,
    )


def finish(processes, timeout):
    """Wait for every process; kill them all if any runs past ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    try:
        for process in processes:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    return [process.returncode for process in processes]


def read_result(out_dir):
    path = os.path.join(out_dir, "result.json")
    if not os.path.exists(path):
        with open(os.path.join(out_dir, "log.txt")) as handle:
            raise AssertionError(f"worker wrote no result; log tail:\n{handle.read()[-3000:]}")
    with open(path) as handle:
        return json.load(handle)


def run_local(out_dir, *args, timeout=120):
    """One training process; returns its result dict."""
    finish([launch(list(args), out_dir)], timeout)
    return read_result(out_dir)


def free_ports(count):
    import socket

    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def start_cluster(out_dir, workers, *args):
    """Start ``workers`` local processes under MultiWorkerMirroredStrategy (TF_CONFIG on
    localhost); worker ``i`` writes into ``out_dir/worker<i>``. Returns the processes."""
    addresses = [f"127.0.0.1:{port}" for port in free_ports(workers)]
    processes = []
    for index in range(workers):
        tf_config = {"cluster": {"worker": addresses}, "task": {"type": "worker", "index": index}}
        processes.append(
            launch(
                ["--strategy=multi_worker_mirrored", *args],
                os.path.join(out_dir, f"worker{index}"),
                env=worker_env(TF_CONFIG=json.dumps(tf_config)),
            )
        )
    return processes


def run_cluster(out_dir, workers, *args, timeout=150):
    """``start_cluster`` and wait; returns every worker's result dict."""
    finish(start_cluster(out_dir, workers, *args), timeout)
    return [read_result(os.path.join(out_dir, f"worker{index}")) for index in range(workers)]


def make_data(num_examples=GLOBAL_BATCH * STEPS_PER_EPOCH, seed=0):
    import numpy as np

    rng = np.random.RandomState(seed)
    labels = rng.randint(0, 10, num_examples).astype("int32")
    images = rng.normal(0.0, 0.5, (num_examples, 8, 8, 3)).astype("float32")
    for i, label in enumerate(labels):  # a bright band whose row encodes the class
        images[i, label % 8, :, label // 8] += 2.0
    return images, labels


def main(argv=None):
    parser = argparse.ArgumentParser()
    parser.add_argument("--strategy", default="default")
    parser.add_argument("--cpu_devices", type=int, default=0)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--model_dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--sync_bn", action="store_true")
    parser.add_argument("--checkpoint_every", type=int, default=0)
    parser.add_argument("--stacked", action="store_true", help="stacked stages + recompute")
    parser.add_argument("--step_delay", type=float, default=0.0, help="seconds slept per step")
    parser.add_argument("--dtype_policy", default="float32")
    parser.add_argument("--jit_compile", action="store_true")
    parser.add_argument("--steps_per_loop", type=int, default=1)
    parser.add_argument("--log_every", type=int, default=1)
    parser.add_argument("--worker_timeout", type=float, default=None)
    args = parser.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from keras_preact import training

    strategy = training.build_strategy(args.strategy, cpu_devices=args.cpu_devices or None,
                                       worker_timeout=args.worker_timeout)

    import keras

    import keras_preact

    images, labels = make_data()
    dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(GLOBAL_BATCH)
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    dataset = dataset.with_options(options)
    if args.step_delay:
        delay = args.step_delay
        dataset = dataset.map(
            lambda x, y: (tf.numpy_function(lambda a: (time.sleep(delay), a)[1], [x], tf.float32), y)
        ).map(lambda x, y: (tf.ensure_shape(x, [None, 8, 8, 3]), y))

    def build_model():
        keras.utils.set_random_seed(0)
        if args.stacked:
            return keras_preact.build_resnet((2, 3, 2), widths=(4, 8, 8), input_shape=(8, 8, 3),
                                             stacked_stages=True, recompute=True,
                                             dtype_policy=args.dtype_policy)
        return keras_preact.build_resnet((1, 1, 1), widths=(4, 8, 8), input_shape=(8, 8, 3),
                                         dtype_policy=args.dtype_policy)

    recipe = training.get_recipe("cifar").replace(
        train_steps=args.steps, lr_boundaries=("0.5",), label_smoothing=0.0
    )
    trainer = training.Trainer(
        strategy,
        build_model,
        recipe,
        steps_per_epoch=STEPS_PER_EPOCH,
        global_batch=GLOBAL_BATCH,
        model_dir=args.model_dir,
        sync_bn=args.sync_bn,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        verbose=True,
        jit_compile=args.jit_compile,
        steps_per_loop=args.steps_per_loop,
    )
    start_step = trainer.checkpoints.restore()
    try:
        trainer.fit(dataset)
    except training.WorkerLostError as error:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "lost.json"), "w") as handle:
            json.dump({"message": str(error), "step": error.step, "checkpoint": error.checkpoint,
                       "start_step": start_step}, handle)
        sys.exit(4)

    def replicas(variable):
        value = variable.value
        parts = getattr(value, "values", None) or (value,)
        return [np.asarray(part.numpy()).tolist() for part in parts]

    rows = training.read_metrics(os.path.join(args.model_dir, "metrics.csv"))
    result = {
        "start_step": start_step,
        "final_step": trainer.step,
        "replicas": strategy.num_replicas_in_sync,
        "chief": training.is_chief(strategy),
        "losses": {r["step"]: float(r["train_loss"]) for r in rows if r["train_loss"]},
        "variables": {v.path: replicas(v) for v in trainer.model.variables},
        "loss_scale": float(trainer.optimizer.dynamic_scale.numpy()) if trainer.loss_scaling else None,
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "result.json"), "w") as handle:
        json.dump(result, handle)


if __name__ == "__main__":
    main()
