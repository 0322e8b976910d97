"""Plain functions subscribed to single events, for apps that embed the loop."""

from __future__ import annotations

import torch
from torch import nn

from trainbus import DataLoaders, Event, EventBus, Learner, Stage


def main() -> None:
    x, y = torch.randn(8, 2), torch.randn(8, 1)
    learn = Learner(nn.Linear(2, 1), DataLoaders.from_tensors([x, y], bs=4), nn.MSELoss())
    losses: list[float] = []

    def record(learn: Learner) -> None:
        if learn.training:
            losses.append(learn.loss.item())

    learn.subscribe(Event.after_loss, record)
    epochs: list[int] = []
    learn.subscribe(Event.after_fit, lambda learn: epochs.append(learn.epoch + 1), order=1)
    learn.fit(2)
    learn.unsubscribe(Event.after_loss, record)
    learn.fit(1)
    assert len(losses) == 4
    assert epochs == [2, 1]

    # The bus alone: handlers take no argument.
    bus = EventBus()
    seen: list[str] = []
    bus.subscribe(Event.begin_fit, lambda: seen.append("begin"))
    bus.run(Stage.fit, lambda: seen.append("body"))
    assert seen == ["begin", "body"]


if __name__ == "__main__":
    main()
