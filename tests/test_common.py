"""The lowest module: choice checking and strided shapes."""

import pytest

from keras_preact.common import ORDERS, check_choice, strided_shape


def test_check_choice_names_the_valid_choices():
    check_choice("order", "full_preact", ORDERS)
    with pytest.raises(ValueError, match="Unknown order 'preact'. Valid choices: 'original'"):
        check_choice("order", "preact", ORDERS)


def test_strided_shape_rounds_up_like_same_padding():
    assert strided_shape((None, 7, 8, 3), 2, 16) == (None, 4, 4, 16)
    assert strided_shape((2, None, None, 3), 2, 5) == (2, None, None, 5)
