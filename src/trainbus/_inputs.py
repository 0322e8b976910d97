"""Checks and conversions of what users hand the Learner: callbacks, metrics, loss functions.

Each turns a common porting habit into what the loop needs, or into an error naming
the mistake, at the call that made it (not batches later, inside a callback).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Final, TypeAlias, TypeVar, cast

from torch import nn

from ._callback import Callback
from ._metric import Metric
from .callbacks._core import Recorder, TrainEvalCallback
from .callbacks._progress import ProgressCallback

__all__ = [
    "DEFAULT_CALLBACKS",
    "CallbackLike",
    "Metric",
    "as_callback",
    "checked_loss_func",
    "checked_metrics",
    "defaults_replaced_by",
]

C = TypeVar("C", bound=Callback)

CallbackLike: TypeAlias = "Callback | type[Callback]"
"""A callback, or a callback class (instantiated with no arguments, as fastai allows)."""

DEFAULT_CALLBACKS: Final[tuple[type[Callback], ...]] = (
    TrainEvalCallback,
    Recorder,
    ProgressCallback,
)
"""What every Learner has; a callback of one of these classes replaces the default."""


def as_callback(cb: C | type[C]) -> C:
    """``cb`` itself, or ``cb()`` when it is a Callback class.

    Raises:
        TypeError: ``cb`` is neither, or its class cannot be made without arguments.
    """
    if isinstance(cb, type):
        if not issubclass(cb, Callback):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"expected a trainbus.Callback, got the class {cb.__qualname__}")
        try:
            return cb()
        except TypeError as error:
            name = cb.__qualname__
            raise TypeError(
                f"{name} was given as a class, so it is made with no arguments, which failed "
                f"({error}): pass an instance, {name}(...)"
            ) from None
    value: object = cb  # untyped callers can pass anything
    if not isinstance(value, Callback):  # pyright: ignore[reportUnnecessaryIsInstance]
        hint = " (use learn.subscribe(event, fn) for a function)" if callable(value) else ""
        raise TypeError(f"expected a trainbus.Callback, got {type(value).__qualname__}{hint}")
    return cb


def defaults_replaced_by(cb: Callback, registered: Iterable[Callback]) -> list[Callback]:
    """The registered callbacks that ``cb`` replaces: those of its default's class."""
    kinds = [kind for kind in DEFAULT_CALLBACKS if isinstance(cb, kind)]
    return [old for old in registered if old is not cb and isinstance(old, tuple(kinds))]


def checked_loss_func(loss_func: object) -> None:
    """Reject a loss module's class given for an instance (``nn.CrossEntropyLoss``).

    Raises:
        TypeError: ``loss_func`` is a class, or not callable.
    """
    if isinstance(loss_func, type):
        name = loss_func.__qualname__
        what = "a loss module's class" if issubclass(loss_func, nn.Module) else "a class"
        raise TypeError(
            f"loss_func is {what}, {name}, not a loss function: pass an instance, {name}()"
        )
    if not callable(loss_func):
        raise TypeError(f"loss_func must be callable, got {type(loss_func).__qualname__}")


def checked_metrics(metrics: Sequence[Metric] | Metric | None) -> list[Metric]:
    """``metrics`` as a list: one callable is allowed for a list of one (as in fastai).

    Raises:
        TypeError: An item is not callable, or is a class.
    """
    if metrics is None:
        return []
    items: list[object] = [metrics] if callable(metrics) else list(metrics)
    checked: list[Metric] = []
    for metric in items:
        if isinstance(metric, type) or not callable(metric):
            what = (
                f"the class {metric.__qualname__}"
                if isinstance(metric, type)
                else (type(metric).__qualname__)
            )
            raise TypeError(f"metrics must be functions metric(pred, target), got {what}")
        checked.append(cast("Metric", metric))
    return checked
