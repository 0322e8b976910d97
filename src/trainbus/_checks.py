"""Argument checks shared by the library: one wording for one kind of mistake."""

from __future__ import annotations

import math

__all__ = ["checked_float", "checked_int", "require_training_batches"]


def checked_int(label: str, value: object, minimum: int = 1, *, what: str | None = None) -> int:
    """``value`` when it is an ``int`` (not a ``bool``) of at least ``minimum``.

    Checked although callers annotate it: not every caller runs a type checker.

    Args:
        label: What the value is, as the error names it (``"bs"``, ``"LRFinder num_it"``).
        value: The argument given.
        minimum: The smallest value allowed.
        what: The error's description of a valid value; by default ``"a positive int"``
            for a minimum of 1, ``"an int >= <minimum>"`` otherwise.

    Raises:
        ValueError: ``<label> must be <what>, got <value!r>``.
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        what = what or ("a positive int" if minimum == 1 else f"an int >= {minimum}")
        raise ValueError(f"{label} must be {what}, got {value!r}")
    return value


def checked_float(
    label: str,
    value: object,
    minimum: float | None = 0.0,
    *,
    inclusive: bool = False,
    finite: bool = True,
    what: str | None = None,
) -> float:
    """``value`` as a ``float`` when it is a real number above ``minimum`` and finite.

    Checked although callers annotate it: not every caller runs a type checker.

    Args:
        label: What the value is, as the error names it (``"lr"``, ``"MixUp alpha"``).
        value: The argument given: an ``int`` or a ``float`` (not a ``bool``).
        minimum: The bound the value must exceed; ``None``: no bound.
        inclusive: Allow ``value == minimum`` too.
        finite: Reject ``inf`` and ``-inf`` (``nan`` is always rejected).
        what: The error's description of a valid value, for either mistake; by default
            ``"a positive number"`` (a bound of 0) or ``"a number > <minimum>"`` (``>=``
            when inclusive) when out of range, ``"finite"`` when infinite.

    Raises:
        TypeError: ``<label> must be a real number, got <type>``.
        ValueError: ``<label> must be <what>, got <value!r>``.
    """
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{label} must be a real number, got {type(value).__qualname__}")
    number = float(value)
    if math.isnan(number) or (
        minimum is not None and not (number >= minimum if inclusive else number > minimum)
    ):
        if what is None:
            if minimum is None:
                what = "finite"
            elif minimum == 0 and not inclusive:
                what = "a positive number"
            else:
                what = f"a number {'>=' if inclusive else '>'} {minimum:g}"
        raise ValueError(f"{label} must be {what}, got {value!r}")
    if finite and math.isinf(number):
        raise ValueError(f"{label} must be {what or 'finite'}, got {value!r}")
    return number


def require_training_batches(dl: object, what: str) -> None:
    """Reject a training loader with no batches before ``what`` (a fit, lr_find) starts.

    Raises:
        ValueError: ``len(dl) == 0`` (a loader without ``len`` is not checked).
    """
    try:
        n = len(dl)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    except TypeError:
        return
    if n == 0:
        raise ValueError(
            f"{what} needs training batches, but dls.train is empty (check the dataset's "
            "length, the batch size and drop_last)"
        )
