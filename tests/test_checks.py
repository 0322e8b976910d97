"""checked_int and checked_float: one wording per kind of bad argument."""

from __future__ import annotations

import math

import pytest

from trainbus._checks import checked_float


@pytest.mark.parametrize("value", [1, 0.5, 1e300])
def test_checked_float_accepts_positive_finite_numbers(value: float) -> None:
    result = checked_float("lr", value)
    assert result == value and type(result) is float


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (0, "lr must be a positive number, got 0"),
        (-1.5, "lr must be a positive number, got -1.5"),
        (math.nan, "lr must be a positive number, got nan"),
        (math.inf, "lr must be finite, got inf"),
    ],
)
def test_checked_float_names_the_argument_and_what_was_wrong(value: float, message: str) -> None:
    with pytest.raises(ValueError) as info:
        checked_float("lr", value)
    assert str(info.value) == message


@pytest.mark.parametrize(("value", "kind"), [(True, "bool"), ("0.1", "str"), (None, "NoneType")])
def test_checked_float_rejects_what_is_not_a_real_number(value: object, kind: str) -> None:
    with pytest.raises(TypeError) as info:
        checked_float("lr", value)
    assert str(info.value) == f"lr must be a real number, got {kind}"


def test_checked_float_bounds_and_descriptions() -> None:
    assert checked_float("min_lr", 0, inclusive=True) == 0.0
    assert checked_float("norm_type", math.inf, finite=False) == math.inf
    assert checked_float("start", -3.0, None) == -3.0
    with pytest.raises(ValueError, match=r"^factor must be a number > 1, got 1$"):
        checked_float("factor", 1, 1.0)
    with pytest.raises(ValueError, match=r"^min_lr must be a number >= 0, got -1$"):
        checked_float("min_lr", -1, inclusive=True)
    with pytest.raises(ValueError, match=r"^start must be finite, got -inf$"):
        checked_float("start", -math.inf, None)
    with pytest.raises(ValueError, match=r"^alpha must be a positive finite number, got inf$"):
        checked_float("alpha", math.inf, what="a positive finite number")
