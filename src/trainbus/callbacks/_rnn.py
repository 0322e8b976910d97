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


def _last_layer(part: Any, what: str) -> torch.Tensor:
    """The last layer's activations: ``part`` itself when it is a tensor (a model that
    returns one layer's activations, as fastbook's ``LMModel7``), else ``part[-1]`` (a
    per-layer list or tuple, AWD-LSTM style)."""
    if isinstance(part, torch.Tensor):
        return part
    if isinstance(part, list | tuple):
        layers = cast("Sequence[object]", part)
        if layers and isinstance(layers[-1], torch.Tensor):
            return layers[-1]
    raise TypeError(
        f"RNNRegularizer: {what} must be a tensor or a non-empty list/tuple of per-layer "
        f"tensors, got {type(cast(object, part)).__qualname__}"
    )


class RNNRegularizer(Callback):
    """Activation (AR) and temporal activation (TAR) regularization.

    The model returns ``(out, raw, dropped)``: the output, and the raw and the
    dropped-out activations of its recurrent layers, each either a tensor (the last
    layer's, as fastbook's ``LMModel7`` returns) or a list/tuple with one tensor per
    layer (AWD-LSTM style), of which the last is used. After the prediction, ``pred``
    becomes ``out``; during training the loss gains ``alpha * mean(d**2)`` (AR, with
    ``d`` the last layer's dropped output) and ``beta * mean((h[:, 1:] - h[:, :-1])**2)``
    (TAR, with ``h`` the last layer's raw output; batch first, time on dimension 1).

    Args:
        alpha: Weight of AR.
        beta: Weight of TAR.
    """

    def __init__(self, alpha: float = 0.0, beta: float = 0.0) -> None:
        self.alpha: float = alpha
        self.beta: float = beta
        self.raw_out: torch.Tensor | None = None
        self.out: torch.Tensor | None = None

    def after_pred(self) -> None:
        pred: Any = self.pred  # (out, raw, dropped) here, not the Tensor it is typed as
        parts = cast("Sequence[Any]", pred) if isinstance(pred, tuple | list) else None
        if parts is None or len(parts) != 3:
            raise TypeError(
                "RNNRegularizer needs a model returning (out, raw, dropped); "
                f"got {type(self.pred).__qualname__}"
            )
        self.raw_out = _last_layer(parts[1], "the raw output (second item)")
        self.out = _last_layer(parts[2], "the dropped output (third item)")
        self.learn.pred = parts[0]

    def after_loss(self) -> None:
        if not self.training or self.out is None or self.raw_out is None:
            return
        if self.alpha != 0.0:
            self.learn.loss = self.loss + self.alpha * self.out.float().pow(2).mean()
        if self.beta != 0.0:
            h = self.raw_out
            if h.dim() >= 2 and h.shape[1] > 1:
                self.learn.loss = (
                    self.loss + self.beta * (h[:, 1:] - h[:, :-1]).float().pow(2).mean()
                )

    def after_batch(self) -> None:
        self.raw_out = self.out = None  # hold no activations between batches
