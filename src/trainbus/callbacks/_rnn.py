"""Callbacks for recurrent models: state resets and activation regularization."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import torch

from .._callback import Callback

__all__ = ["ModelResetter", "RNNRegularizer"]


class ModelResetter(Callback):
    """Calls ``model.reset()`` at the start of training and of validation."""

    def begin_train(self) -> None:
        self._reset()

    def begin_validate(self) -> None:
        self._reset()

    def _reset(self) -> None:
        reset: Any = getattr(self.model, "reset", None)
        if not callable(reset):
            raise TypeError(
                f"ModelResetter needs a model with a reset() method; "
                f"{type(self.model).__qualname__} has none"
            )
        reset()


class RNNRegularizer(Callback):
    """Activation (AR) and temporal activation (TAR) regularization.

    The model returns ``(out, raw_outs, outs)``: the output, and per layer the raw and
    the dropped-out activations. After the prediction, ``pred`` becomes ``out``; during
    training the loss gains ``alpha * mean(outs[-1]**2)`` (AR, on the last layer's
    dropped output) and ``beta * mean((h[:, 1:] - h[:, :-1])**2)`` with
    ``h = raw_outs[-1]`` (TAR, on the raw output; sequence on dimension 1).

    Args:
        alpha: Weight of AR.
        beta: Weight of TAR.
    """

    def __init__(self, alpha: float = 0.0, beta: float = 0.0) -> None:
        self.alpha: float = alpha
        self.beta: float = beta
        self.raw_out: Sequence[torch.Tensor] = ()
        self.out: Sequence[torch.Tensor] = ()

    def after_pred(self) -> None:
        pred: Any = self.pred  # (out, raw_outs, outs) here, not the Tensor it is typed as
        parts = cast("Sequence[Any]", pred) if isinstance(pred, tuple | list) else None
        if parts is None or len(parts) != 3:
            raise TypeError(
                "RNNRegularizer needs a model returning (out, raw_outs, outs); "
                f"got {type(self.pred).__qualname__}"
            )
        self.raw_out, self.out = parts[1], parts[2]
        self.learn.pred = parts[0]

    def after_loss(self) -> None:
        if not self.training:
            return
        if self.alpha != 0.0:
            self.learn.loss = self.loss + self.alpha * self.out[-1].float().pow(2).mean()
        if self.beta != 0.0:
            h = self.raw_out[-1]
            if h.shape[1] > 1:
                self.learn.loss = (
                    self.loss + self.beta * (h[:, 1:] - h[:, :-1]).float().pow(2).mean()
                )
