"""Class ids read from text: one rule for JSON keys and URL segments."""

from __future__ import annotations

import pytest

from prelabel.errors import SchemaError
from prelabel.schema import class_id_in_key


@pytest.mark.parametrize(("key", "number"), [("0", 0), ("7", 7), ("007", 7), ("00000", 0)])
def test_ascii_digits_are_the_number_they_spell(key: str, number: int) -> None:
    assert class_id_in_key(key) == number


@pytest.mark.parametrize("key", ["", "1 ", " 1", "-1", "+1", "1.0", "\u00b2", "\u0661", "car"])
def test_anything_but_ascii_digits_is_no_id(key: str) -> None:
    # "²" is a digit to str.isdigit; ARABIC-INDIC DIGIT ONE is one to int() and isdecimal.
    assert class_id_in_key(key) is None


def test_numbers_up_to_five_digits_are_read_for_the_caller_to_check() -> None:
    # 70000 names no class, but saying so needs the schema: the caller's message lists it.
    assert class_id_in_key("70000") == 70000
    assert class_id_in_key("000099999") == 99999


@pytest.mark.parametrize("key", ["100000", "9" * 5000])
def test_more_digits_than_any_id_are_a_schema_error_without_int(key: str) -> None:
    # 5000 digits are past int()'s conversion limit: reading them would be a ValueError.
    with pytest.raises(SchemaError, match=r"class id \d+.* is not in the schema"):
        class_id_in_key(key)
