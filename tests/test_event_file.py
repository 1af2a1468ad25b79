"""TensorBoard event files written by hand: read back by TensorFlow (and ``tensorboard`` if any)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.core.framework import summary_pb2
from tensorflow.core.util import event_pb2

from keras_preact.training import event_file
from keras_preact.training.event_file import EventFileWriter
from keras_preact.training.observe import TensorBoardLog

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_events(path) -> list:
    return list(tf.compat.v1.train.summary_iterator(str(path)))


def scalars_of(directory) -> dict:
    """``{tag: {step: value}}`` of every event file under ``directory``, read by TensorFlow."""
    scalars = {}
    for name in sorted(os.listdir(directory)):
        for event in read_events(os.path.join(directory, name)):
            for value in event.summary.value:
                assert value.metadata.plugin_data.plugin_name == "scalars"
                scalars.setdefault(value.tag, {})[event.step] = tf.make_ndarray(value.tensor)
    return scalars


def test_crc32c_check_value_and_masking(tmp_path):
    assert event_file.crc32c(b"123456789") == 0xE3069283
    assert event_file.crc32c(b"") == 0
    assert event_file.crc32c(b"56789", event_file.crc32c(b"1234")) == 0xE3069283
    # TensorFlow's own framing of a record, as TFRecordWriter writes it.
    path = str(tmp_path / "record.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(b"some record data")
    with open(path, "rb") as handle:
        assert handle.read() == event_file.tfrecord(b"some record data")


def test_events_are_those_tensorflow_writes(tmp_path):
    """Byte for byte the records ``tf.summary.write`` with the scalars plugin writes."""
    metadata = summary_pb2.SummaryMetadata(
        plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
    )
    writer = tf.summary.create_file_writer(str(tmp_path))
    with writer.as_default(step=3):
        tf.summary.write("loss", tf.constant(0.1, tf.float32), metadata=metadata)
    writer.close()
    (name,) = os.listdir(tmp_path)
    records = [r.numpy() for r in tf.data.TFRecordDataset(str(tmp_path / name))]
    with open(tmp_path / name, "rb") as handle:
        assert handle.read() == b"".join(event_file.tfrecord(r) for r in records)  # the framing
    written = event_pb2.Event.FromString(records[1])
    assert written.summary.value[0].tensor.tensor_content  # TF 2.21: the float's 4 bytes here
    assert event_file.scalar_event(3, {"loss": 0.1}, wall_time=written.wall_time) == records[1]
    negative = event_pb2.Event.FromString(event_file.scalar_event(-7, {"a": 1.0}, wall_time=1.0))
    assert negative.step == -7 and tf.make_ndarray(negative.summary.value[0].tensor) == 1.0


def test_written_file_reads_back_with_steps_tags_and_float32_values(tmp_path):
    values = {
        1: {"loss": 2.302585, "error": 0.9, "learning_rate": 0.1},
        100: {"loss": 0.123456789, "error": 1 / 3, "learning_rate": np.float64(0.01)},
        2**40: {"loss": float("inf"), "error": 1e39, "learning_rate": -1e-45},
    }
    writer = EventFileWriter(tmp_path / "new" / "train")  # directories created
    for step, row in values.items():
        writer.scalars(step, row)
    writer.close()
    writer.close()  # closing twice is harmless
    with pytest.raises(ValueError, match="closed"):
        writer.scalars(5, {"loss": 1.0})

    (name,) = os.listdir(tmp_path / "new" / "train")
    assert name.startswith("events.out.tfevents.") and str(os.getpid()) in name
    events = read_events(writer.path)
    assert events[0].file_version == "brain.Event:2" and not events[0].HasField("summary")
    assert [e.step for e in events[1:]] == list(values)
    for event, row in zip(events[1:], values.values()):
        assert [v.tag for v in event.summary.value] == list(row)
        for value in event.summary.value:
            assert value.tensor.dtype == tf.float32.as_datatype_enum
            assert not value.tensor.tensor_shape.dim
            got = tf.make_ndarray(value.tensor)
            assert got.dtype == np.float32 and got.shape == ()
            want = row[value.tag]
            if want == 1e39:
                assert got == np.inf  # beyond float32: infinity, as a float32 cast gives
            else:
                assert got == np.float32(want)  # float32-exact
    assert scalars_of(tmp_path / "new" / "train")["loss"][100] == np.float32(0.123456789)

    if importlib.util.find_spec("tensorboard") is not None:
        from tensorboard.backend.event_processing.event_accumulator import (
            EventAccumulator,
        )
        from tensorboard.util.tensor_util import make_ndarray

        accumulator = EventAccumulator(str(tmp_path / "new" / "train"), size_guidance={"tensors": 0})
        accumulator.Reload()
        assert set(accumulator.Tags()["tensors"]) == {"loss", "error", "learning_rate"}
        loss = {t.step: make_ndarray(t.tensor_proto) for t in accumulator.Tensors("loss")}
        assert loss[1] == np.float32(2.302585) and loss[100] == np.float32(0.123456789)


def test_a_resumed_run_appends_a_second_readable_file(tmp_path):
    first = EventFileWriter(tmp_path)
    first.scalars(1, {"loss": 1.0})
    first.scalars(2, {"loss": 0.5})
    # Killed here: nothing closed, but every call was flushed.
    assert [e.step for e in read_events(first.path)] == [0, 1, 2]
    second = EventFileWriter(tmp_path)  # the resumed run
    assert second.path != first.path
    second.scalars(3, {"loss": 0.25})
    second.flush()
    first.close()
    second.close()
    assert len(os.listdir(tmp_path)) == 2
    assert scalars_of(tmp_path) == {"loss": {1: 1.0, 2: 0.5, 3: 0.25}}
    # Appending to an existing file (same name) adds records after the old ones, with no
    # second version record.
    with open(first.path, "ab") as handle:
        handle.write(event_file.tfrecord(event_file.scalar_event(4, {"loss": 0.125})))
    assert [e.step for e in read_events(first.path)] == [0, 1, 2, 4]


def test_tensorboard_log_writes_a_folder_per_group(tmp_path):
    board = TensorBoardLog(str(tmp_path))
    board.scalars("train", 2, {"loss": tf.constant(0.75), "error": np.float32(0.5)})
    board.scalars("test", 4, {"error": 0.25})
    board.scalars("train", 4, {"loss": 0.5, "error": 0.25})
    board.close()
    assert sorted(os.listdir(tmp_path)) == ["test", "train"]
    assert scalars_of(tmp_path / "train") == {"loss": {2: 0.75, 4: 0.5}, "error": {2: 0.5, 4: 0.25}}
    assert scalars_of(tmp_path / "test") == {"error": {4: 0.25}}


def test_observe_imports_without_tensorflow():
    environment = {k: v for k, v in os.environ.items()
                   if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLE_ONEDNN_OPTS")}
    environment.update(KERAS_BACKEND="jax", PYTHONPATH=ROOT)
    code = (
        "import sys, tempfile\n"
        "import keras_preact.training.observe as observe\n"
        "board = observe.TensorBoardLog(tempfile.mkdtemp())\n"
        "board.scalars('train', 1, {'loss': 1.0})\n"
        "board.close()\n"
        "print('tensorflow' in sys.modules, 'tensorboard' in sys.modules, 'google.protobuf' in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], env=environment, cwd=ROOT,
                            capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["False", "False", "False"]
