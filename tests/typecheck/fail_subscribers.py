"""Plain-function subscribers with the wrong signature; see test_typecheck.py for markers."""

from __future__ import annotations

from torch import Tensor

from trainbus import Event, EventBus, Learner


def takes_learner(learn: Learner) -> None:
    pass


def takes_nothing() -> None:
    pass


def takes_loss(loss: Tensor) -> None:
    pass


def register(learn: Learner, bus: EventBus) -> None:
    learn.subscribe(Event.after_loss, takes_learner)
    learn.subscribe(Event.after_loss, takes_loss)  # E: subscriber-signature
    learn.subscribe(Event.after_loss, takes_nothing)  # E: subscriber-signature
    bus.subscribe(Event.after_loss, takes_nothing)
    bus.subscribe(Event.after_loss, takes_learner)  # E: subscriber-signature
    learn.subscribe("after_loss", takes_learner)  # E: event-type
    learn.add_cb(takes_learner)  # E: callback-type
