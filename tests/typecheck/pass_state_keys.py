"""Typed extension state: a publisher and a reader sharing a ``StateKey``.

The reader gets the key's type back, with no ``Any`` and no cast.
"""

from __future__ import annotations

import math
from typing import Final, assert_type

import torch
from torch import Tensor, nn
from typing_extensions import override

from trainbus import Callback, DataLoaders, Learner, StateKey

GRAD_NORM: Final = StateKey("grad_norm", Tensor)
"""The global gradient norm of the current training batch."""
STEPS: Final = StateKey("steps", int)


class GradNormPublisher(Callback):
    """Publishes the gradient norm after every backward pass."""

    @override
    def begin_fit(self) -> None:
        self.learn.extras[STEPS] = 0

    @override
    def after_backward(self) -> None:
        norm = nn.utils.clip_grad_norm_(self.model.parameters(), math.inf)
        self.learn.extras[GRAD_NORM] = norm
        self.learn.extras[STEPS] = self.extras[STEPS] + 1


class GradNormReader(Callback):
    """Collects what the publisher wrote; runs after it."""

    run_after = GradNormPublisher

    def __init__(self) -> None:
        self.norms: list[Tensor] = []

    @override
    def after_backward(self) -> None:
        norm = self.extras[GRAD_NORM]
        assert_type(norm, Tensor)
        assert_type(self.extras[STEPS], int)
        assert_type(self.extras.get(STEPS, -1), int)
        self.norms.append(norm)


def main() -> None:
    x, y = torch.randn(12, 2), torch.randn(12, 1)
    dls = DataLoaders.from_tensors([x, y], bs=4, seed=0)
    reader = GradNormReader()
    # Registered before its publisher: run_after puts it after anyway.
    learn = Learner(nn.Linear(2, 1), dls, nn.functional.mse_loss, cbs=[reader, GradNormPublisher()])
    learn.fit(2)
    assert len(reader.norms) == 6
    assert learn.extras[STEPS] == 6
    assert STEPS in learn.extras


if __name__ == "__main__":
    main()
