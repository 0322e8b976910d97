"""A loop other than the Learner's driving the same bus through the same stages.

An evaluation-only loop: ``validate`` and ``batch`` stages around its own tensor math,
with a subscriber that knows nothing of the Learner and reads the loop's own state.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import torch
from torch import Tensor, nn
from typing_extensions import override

from trainbus import CancelValidException, Event, EventBus, Stage, Subscriber


class Evaluator:
    """Runs ``model`` over batches under ``no_grad`` and publishes events on ``bus``."""

    def __init__(self, model: nn.Module, bus: EventBus) -> None:
        self.model, self.bus = model, bus
        self.pred: Tensor = torch.empty(0)

    def evaluate(self, batches: Iterable[tuple[Tensor, Tensor]]) -> None:
        with torch.no_grad():
            self.bus.run(Stage.validate, functools.partial(self._all, batches))

    def _all(self, batches: Iterable[tuple[Tensor, Tensor]]) -> None:
        for xb, _ in batches:
            self.bus.run(Stage.batch, functools.partial(self._one, xb))

    def _one(self, xb: Tensor) -> None:
        self.pred = self.model(xb)
        self.bus.emit(Event.after_pred)


class Collector(Subscriber):
    """Keeps the predictions of the first ``limit`` batches, then ends the pass."""

    def __init__(self, evaluator: Evaluator, limit: int) -> None:
        self.evaluator = evaluator
        self.limit = limit
        self.preds: list[Tensor] = []

    @override
    def after_pred(self) -> None:
        self.preds.append(self.evaluator.pred)

    @override
    def after_batch(self) -> None:
        if len(self.preds) == self.limit:
            raise CancelValidException


def main() -> None:
    bus = EventBus()
    evaluator = Evaluator(nn.Linear(3, 1), bus)
    collector = Collector(evaluator, limit=2)
    bus.add(collector)
    events: list[Event] = []
    for event in (Event.after_cancel_valid, Event.after_validate):
        bus.subscribe(event, functools.partial(events.append, event))
    evaluator.evaluate([(torch.randn(4, 3), torch.randn(4)) for _ in range(5)])
    assert [tuple(p.shape) for p in collector.preds] == [(4, 1), (4, 1)]
    assert events == [Event.after_cancel_valid, Event.after_validate]


if __name__ == "__main__":
    main()
