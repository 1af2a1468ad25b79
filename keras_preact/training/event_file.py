"""TensorBoard event files written without TensorFlow, ``tensorboard`` or ``protobuf``.

A trainer on a JAX- or PyTorch-only install has neither ``tf.summary`` nor the ``tensorboard``
package, yet its scalars (loss, error, learning rate) should still show in TensorBoard. The
format is small enough to write by hand, so this module does, in the Python standard library:

    >>> writer = EventFileWriter("runs/r20/tensorboard/train")
    >>> writer.scalars(100, {"loss": 0.51, "learning_rate": 0.1})
    >>> writer.close()

What a file holds
-----------------
One file, ``events.out.tfevents.<seconds>.<host>.<pid>.<n>``, per writer (``<n>`` counts the
writers of the process, so two opened in the same second do not share a name). It is a TFRecord
file (https://www.tensorflow.org/tutorials/load_data/tfrecord#tfrecords_format_details): each
record is

    uint64 length (little-endian) | uint32 masked_crc32c(length bytes) | data | uint32 masked_crc32c(data)

with ``masked_crc = ((crc >> 15 | crc << 17) + 0xa282ead8) & 0xffffffff`` and CRC32C the
Castagnoli CRC (reflected polynomial 0x82F63B78; ``crc32c(b"123456789") == 0xE3069283``),
computed here from a 256-entry table. Each record's data is a serialized ``Event`` protocol
buffer, encoded by hand with the field numbers of tensorflow/core/util/event.proto and
tensorflow/core/framework/{summary,tensor,tensor_shape}.proto:

    Event           { double wall_time = 1; int64 step = 2; string file_version = 3;
                      Summary summary = 5; }
    Summary         { repeated Value value = 1; }
    Summary.Value   { string tag = 1; float simple_value = 2; TensorProto tensor = 8;
                      SummaryMetadata metadata = 9; }
    SummaryMetadata { PluginData plugin_data = 1; }   PluginData { string plugin_name = 1; }
    TensorProto     { DataType dtype = 1; TensorShapeProto tensor_shape = 2;
                      bytes tensor_content = 4; }

The first record of a file is ``Event{wall_time, file_version: "brain.Event:2"}``; then one
``Event{wall_time, step, summary}`` per ``scalars`` call, with one value per tag.

The encoding of a scalar
------------------------
A value is written the way TensorFlow 2.21's ``tf.summary.scalar`` (and ``tf.summary.write``
with the scalars plugin's metadata) writes it: ``tensor`` (field 8) a rank-0 ``DT_FLOAT``
TensorProto holding the float32 in ``tensor_content`` (4 bytes, little-endian), and
``metadata.plugin_data.plugin_name = "scalars"``. The events are byte-for-byte those TensorFlow
writes (the tests compare them), so every reader of TensorFlow's own files reads these:
TensorBoard's scalar plugin takes the tensor as it is, and ``tf.make_ndarray(value.tensor)``
on the events of ``tf.compat.v1.train.summary_iterator`` gives the value. The older
``simple_value`` (field 2) would also show in TensorBoard (its data-compat layer turns it into
this very tensor form), but a reader of the ``tensor`` field would find it empty.

Files are opened for appending and flushed after every call, so a run that is killed keeps every
event it logged; a resumed run opens a new file next to the old ones and TensorBoard reads them
all, in the order of their names.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
import time

FILE_VERSION = "brain.Event:2"
SCALARS_PLUGIN = "scalars"
_DT_FLOAT = 1  # tensorflow/core/framework/types.proto

# Writers opened by this process: the last part of their file names.
_file_numbers = itertools.count()


def _crc32c_table() -> tuple:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes, crc: int = 0) -> int:
    """The CRC32C (Castagnoli) of ``data``, continuing from ``crc`` (0 for a fresh start)."""
    table = _CRC32C_TABLE
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The CRC TFRecord stores: rotated right by 15 bits plus a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
    """``data`` framed as one TFRecord record."""
    length = struct.pack("<Q", len(data))
    return (
        length
        + struct.pack("<I", masked_crc32c(length))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


# Protocol-buffer wire format (https://protobuf.dev/programming-guides/encoding/).
_VARINT, _FIXED64, _LENGTH, _FIXED32 = 0, 1, 2, 5


def _varint(value: int) -> bytes:
    value &= 0xFFFFFFFFFFFFFFFF  # a negative int64 is its two's complement, 10 bytes
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint(field << 3 | wire_type)


def _bytes_field(field: int, payload: bytes) -> bytes:
    return _key(field, _LENGTH) + _varint(len(payload)) + payload


def _float32(value) -> bytes:
    value = float(value)
    try:
        return struct.pack("<f", value)
    except OverflowError:  # beyond float32's range: infinity, as a cast to float32 gives
        return struct.pack("<f", value * float("inf"))


def _scalar_value(tag: str, value) -> bytes:
    """A ``Summary.Value``: tag, rank-0 DT_FLOAT tensor, scalars-plugin metadata."""
    tensor = (
        _key(1, _VARINT) + _varint(_DT_FLOAT)
        + _bytes_field(2, b"")  # tensor_shape: no dimensions
        + _bytes_field(4, _float32(value))  # tensor_content
    )
    metadata = _bytes_field(1, _bytes_field(1, SCALARS_PLUGIN.encode()))
    return _bytes_field(1, str(tag).encode("utf-8")) + _bytes_field(8, tensor) + _bytes_field(9, metadata)


def _event(wall_time: float, step: int = 0, file_version: str = "", summary: bytes = b"") -> bytes:
    """An ``Event``; fields at their default value are left out, as protobuf leaves them."""
    out = _key(1, _FIXED64) + struct.pack("<d", wall_time)
    if step:
        out += _key(2, _VARINT) + _varint(int(step))
    if file_version:
        out += _bytes_field(3, file_version.encode())
    if summary:
        out += _bytes_field(5, summary)
    return out


def scalar_event(step: int, values: dict, wall_time: float | None = None) -> bytes:
    """The serialized ``Event`` of ``values`` (``{tag: number}``) at ``step``."""
    summary = b"".join(_bytes_field(1, _scalar_value(tag, value)) for tag, value in values.items())
    return _event(time.time() if wall_time is None else wall_time, step, summary=summary)


class EventFileWriter:
    """Scalars for TensorBoard in a new event file under ``log_dir`` (created if missing)."""

    def __init__(self, log_dir: str):
        self.log_dir = os.fspath(log_dir)
        os.makedirs(self.log_dir, exist_ok=True)
        name = (
            f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}"
            f".{os.getpid()}.{next(_file_numbers)}"
        )
        self.path = os.path.join(self.log_dir, name)
        self._file = open(self.path, "ab")  # noqa: SIM115 -- held open until close()
        if self._file.tell() == 0:  # a file of its own: it starts with its version
            self._write(_event(time.time(), file_version=FILE_VERSION))

    def _write(self, event: bytes):
        if self._file is None:
            raise ValueError(f"The event file {self.path} is closed.")
        self._file.write(tfrecord(event))
        self._file.flush()

    def scalars(self, step: int, values: dict):
        """One event at ``step`` holding every ``tag: value`` of ``values`` (as float32)."""
        if values:
            self._write(scalar_event(int(step), values))

    def flush(self):
        if self._file is not None:
            self._file.flush()

    def close(self):
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
