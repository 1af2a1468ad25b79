"""The lowest module: choice checking, strided shapes, the command-line checks."""

import os
import re

import pytest

from keras_preact.common import ORDERS, check_choice, strided_shape


def test_check_choice_names_the_valid_choices():
    check_choice("order", "full_preact", ORDERS)
    with pytest.raises(ValueError, match="Unknown order 'preact'. Valid choices: 'original'"):
        check_choice("order", "preact", ORDERS)


def test_strided_shape_rounds_up_like_same_padding():
    assert strided_shape((None, 7, 8, 3), 2, 16) == (None, 4, 4, 16)
    assert strided_shape((2, None, None, 3), 2, 5) == (2, None, None, 5)


def test_check_writable_dir_names_the_flag(tmp_path, monkeypatch):
    from keras_preact.common import FlagValueError, check_writable_dir

    check_writable_dir("out", None)  # not given: nothing to check
    check_writable_dir("out", str(tmp_path))
    check_writable_dir("out", str(tmp_path / "new" / "deeper"))  # can be created
    assert not (tmp_path / "new").exists()  # ... but is not
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(FlagValueError, match="^--model_dir: .*exists and is not a directory") as error:
        check_writable_dir("model_dir", str(tmp_path / "a_file"))
    assert error.value.flag == "model_dir" and isinstance(error.value, ValueError)
    assert str(error.value) == f"--model_dir: {error.value.message}"
    with pytest.raises(FlagValueError, match="cannot create .*is not a directory"):
        check_writable_dir("out", str(tmp_path / "a_file" / "below"))
    # A folder the user may not write to (simulated: the tests may run as root).
    locked = str(tmp_path / "locked")
    os.mkdir(locked)
    monkeypatch.setattr(os, "access", lambda path, mode: path != locked)
    with pytest.raises(FlagValueError, match=re.escape(f"--out: cannot write to '{locked}' (permission denied)")):
        check_writable_dir("out", os.path.join(locked, "sub"))
