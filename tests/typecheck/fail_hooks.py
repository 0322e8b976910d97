"""Hook declarations a checker must reject; see test_typecheck.py for the markers."""

from __future__ import annotations

from typing_extensions import override

from trainbus import Callback, Event, Learner, Subscriber
from trainbus.callbacks import ProgressCallback, Recorder


class Misspelled(Callback):
    """``@override`` turns a hook name that is no event into an error."""

    @override
    def after_los(self) -> None:  # E: hook-name
        pass

    @override
    def before_batch(self) -> None:  # E: hook-name
        pass

    @override
    def after_loss(self) -> None:
        pass


class WrongSignature(Callback):
    """Hooks take only ``self`` and return ``None``."""

    @override
    def after_pred(self, scale: float) -> None:  # E: hook-signature
        pass

    @override
    def after_batch(self) -> bool:  # E: hook-signature
        return True

    @override
    def on_exception(self) -> None:  # E: hook-signature
        pass


class WrongOrdering(Subscriber):
    """``run_before``/``run_after`` take callback classes, ``order`` an int."""

    run_before = 3  # E: ordering-type
    run_after = "Recorder"  # E: ordering-type
    order = 0.5  # E: ordering-type


class RightOrdering(Callback):
    run_before = (Recorder, ProgressCallback)
    run_after = WrongSignature
    order = -1


def events(learn: Learner) -> None:
    learn.subscribe(Event.after_los, print)  # E: unknown-event
    learn.bus.emit(Event.before_fit)  # E: unknown-event
    learn.bus.emit(Event.begin_fit)
