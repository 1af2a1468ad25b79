"""``data/labels.py``: the label map (labels.txt) written next to checkpoints and exports."""

import pytest

from keras_preact.data import read_label_map, write_label_map


def test_label_map_round_trip(tmp_path):
    path = write_label_map(["cat", "dog", "hot dog"], tmp_path / "ckpt")
    assert open(path).read() == "cat\ndog\nhot dog\n"
    assert read_label_map(tmp_path / "ckpt") == ["cat", "dog", "hot dog"]
    with pytest.raises(FileNotFoundError, match="labels.txt"):
        read_label_map(tmp_path)
    with pytest.raises(ValueError):
        write_label_map(["a\nb"], tmp_path)
