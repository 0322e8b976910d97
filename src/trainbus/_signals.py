"""Control-flow signals: exceptions that cancel a stage of the run.

Each signal names the stage it cancels (see the table in ``docs/signals.md``). The bus,
not the loop, turns them into skips: a signal ends the running event at once, unwinds
every inner stage without its ``after_*`` event, and is caught by the stage it names,
which publishes ``after_cancel_<stage>`` and then ``after_<stage>``.
"""

from __future__ import annotations

from typing import ClassVar, final

from ._events import Event, Stage

__all__ = [
    "CancelBatchException",
    "CancelEpochException",
    "CancelException",
    "CancelFitException",
    "CancelTrainException",
    "CancelValidException",
    "SignalUsageError",
]


class CancelException(Exception):
    """Base of the control-flow signals. Raise a subclass, never this class itself."""

    stage: ClassVar[Stage]

    # Set by the bus: the event during whose dispatch the signal was raised (``None`` when a
    # stage body raised it). Read it in ``after_cancel_*`` hooks as ``bus.cancelled_in``.
    event: Event | None = None


@final
class CancelBatchException(CancelException):
    """Skip the rest of this batch; ``after_cancel_batch``, ``after_batch`` follow."""

    stage: ClassVar[Stage] = Stage.batch


@final
class CancelTrainException(CancelException):
    """Skip the rest of this epoch's training phase; validation still runs."""

    stage: ClassVar[Stage] = Stage.train


@final
class CancelValidException(CancelException):
    """Skip the rest of this validation phase; ``after_epoch`` still runs."""

    stage: ClassVar[Stage] = Stage.validate


@final
class CancelEpochException(CancelException):
    """Skip the rest of this epoch; the next epoch starts."""

    stage: ClassVar[Stage] = Stage.epoch


@final
class CancelFitException(CancelException):
    """Skip the rest of the fit; ``after_cancel_fit``, ``after_fit`` follow and fit returns."""

    stage: ClassVar[Stage] = Stage.fit


@final
class SignalUsageError(RuntimeError):
    """A signal was raised where its stage is not running (it ended, or never began).

    For example ``CancelBatchException`` in ``after_batch``: the batch is already over,
    so nothing is left to skip. Raised instead of silently dropping the signal.
    """
