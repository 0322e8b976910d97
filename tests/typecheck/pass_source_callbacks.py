"""The source design's callbacks, written by a user with annotations and ``@override``.

Must pass ``mypy --strict`` and pyright strict with no error; ``main()`` runs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, cast, runtime_checkable

import torch
from torch import Tensor, nn
from typing_extensions import override

from trainbus import Callback, CancelFitException, DataLoaders, Learner
from trainbus.callbacks import Recorder


@runtime_checkable
class Resettable(Protocol):
    """A model with hidden state to clear between phases (an RNN)."""

    def reset(self) -> None: ...


class ModelResetter(Callback):
    """Calls ``model.reset()`` at the start of training and of validation."""

    @override
    def begin_train(self) -> None:
        self._reset()

    @override
    def begin_validate(self) -> None:
        self._reset()

    def _reset(self) -> None:
        model = self.model
        if not isinstance(model, Resettable):
            raise TypeError(f"{type(model).__name__} has no reset() method")
        model.reset()


class RNNRegularizer(Callback):
    """AR (``alpha``) on the last layer's dropped output, TAR (``beta``) on the raw output."""

    def __init__(self, alpha: float = 0.0, beta: float = 0.0) -> None:
        self.alpha, self.beta = alpha, beta
        self.raw_outs: Sequence[Tensor] = ()
        self.outs: Sequence[Tensor] = ()

    @override
    def after_pred(self) -> None:
        # The model returns (out, raw_outs, outs) here, not the Tensor the state declares.
        out, self.raw_outs, self.outs = cast(
            "tuple[Tensor, Sequence[Tensor], Sequence[Tensor]]", self.pred
        )
        self.learn.pred = out

    @override
    def after_loss(self) -> None:
        if not self.training:
            return
        if self.alpha:
            self.learn.loss = self.loss + self.alpha * self.outs[-1].pow(2).mean()
        if self.beta:
            h = self.raw_outs[-1]
            self.learn.loss = self.loss + self.beta * (h[:, 1:] - h[:, :-1]).pow(2).mean()


class TerminateOnNaN(Callback):
    """Stops the fit at the first non-finite training loss, before the Recorder sees it."""

    run_before = Recorder

    @override
    def after_batch(self) -> None:
        if self.training and not bool(torch.isfinite(self.loss).all()):
            raise CancelFitException


class TinyRNN(nn.Module):
    """A one-layer RNN returning ``(out, raw_outs, outs)``, with state to reset."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.RNN(3, 4, batch_first=True)
        self.head = nn.Linear(4, 1)
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    @override
    def forward(self, x: Tensor) -> tuple[Tensor, list[Tensor], list[Tensor]]:
        raw, _ = self.rnn(x)
        return self.head(raw[:, -1]).squeeze(-1), [raw], [raw]


def main() -> None:
    x, y = torch.randn(8, 5, 3), torch.randn(8)
    dls = DataLoaders.from_tensors([x, y], [x, y], bs=4, seed=0)
    model = TinyRNN()
    learn = Learner(model, dls, nn.functional.mse_loss, cbs=[ModelResetter()])
    learn.fit(1, cbs=[RNNRegularizer(alpha=2.0, beta=1.0), TerminateOnNaN()])
    assert model.resets == 2
    assert len(learn.recorder.losses) == 2


if __name__ == "__main__":
    main()
