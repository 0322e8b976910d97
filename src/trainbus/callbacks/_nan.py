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
    """

    run_before: ClassVar[SubscriberClasses] = Recorder

    def after_batch(self) -> None:
        if self.training and not bool(torch.isfinite(self.loss).all()):
            raise CancelFitException
