"""Argument checks shared by the library: one wording for one kind of mistake."""

from __future__ import annotations

__all__ = ["checked_int"]


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
