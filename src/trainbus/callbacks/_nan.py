"""Stop a fit whose loss is no longer finite."""

from __future__ import annotations

from typing import ClassVar

import torch

from .._callback import Callback
from .._hooks import SubscriberClasses
from .._signals import CancelFitException
from ._core import Recorder

__all__ = ["TerminateOnNaNCallback"]


class TerminateOnNaNCallback(Callback):
    """Raises ``CancelFitException`` when a training loss is inf or NaN.

    Runs before the Recorder, so a non-finite loss is never recorded. Checking the loss
    reads one value from the device per training batch: the price of stopping at once.

    On many processes a rank's loss is its own, so the ranks could decide differently;
    it checks the weights instead, which DistributedDataParallel keeps equal on every
    rank: a non-finite loss on any rank makes the averaged gradient, and so the stepped
    weights, non-finite on all of them, and every rank stops after the same batch.
    """

    run_before: ClassVar[SubscriberClasses] = Recorder

    def after_batch(self) -> None:
        if not self.training:
            return
        if self.learn.world_size > 1:
            weights = [p.detach().sum() for p in self.model.parameters()]
            finite = not weights or bool(torch.isfinite(torch.stack(weights).sum()))
        else:
            finite = bool(torch.isfinite(self.loss).all())
        if not finite:
            raise CancelFitException
