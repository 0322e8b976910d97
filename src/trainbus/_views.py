"""Typed views of the state: read-only for callbacks, writable (validated) for the learner.

A callback reads ``self.loss``; it writes through the learner, ``self.learn.loss = ...``,
where the assignment is validated by the pydantic :class:`~trainbus.TrainingState`.
Loop-owned fields (``epoch``, ``iter``, ``dl``, ...) have no setter anywhere, so type
checkers reject every write to them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from ._callback import Callback
    from ._data import BatchSource, DataLoaders
    from ._state import Extras, TrainingState

__all__ = ["StateView", "StateWriter"]


class StateView:
    """Typed read-only properties for every field of :class:`~trainbus.TrainingState`."""

    __slots__ = ()

    def _state(self) -> TrainingState:
        raise NotImplementedError

    @property
    def model(self) -> nn.Module:
        """The model being trained."""
        return self._state().model

    @property
    def dls(self) -> DataLoaders:
        """The training and validation batch sources."""
        return self._state().dls

    @property
    def loss_func(self) -> Callable[..., torch.Tensor]:
        """``loss = loss_func(pred, *yb)``."""
        return self._state().loss_func

    @property
    def opt(self) -> torch.optim.Optimizer:
        """The optimizer."""
        return self._state().opt

    @property
    def opt_func(self) -> Callable[..., torch.optim.Optimizer]:
        """Makes the optimizer: ``opt_func(params, lr=lr)``."""
        return self._state().opt_func

    @property
    def cbs(self) -> tuple[Callback, ...]:
        """The registered callbacks, in resolved order."""
        return self._state().callbacks

    @property
    def dl(self) -> BatchSource:
        """The batch source being iterated (``dls.train`` or ``dls.valid``)."""
        return self._state().dl

    @property
    def xb(self) -> tuple[torch.Tensor, ...]:
        """The batch's inputs (only while a batch is in flight)."""
        return self._state().xb

    @property
    def yb(self) -> tuple[torch.Tensor, ...]:
        """The batch's targets (only while a batch is in flight)."""
        return self._state().yb

    @property
    def x(self) -> torch.Tensor:
        """``xb[0]`` for a one-input batch."""
        return self._state().x

    @property
    def y(self) -> torch.Tensor:
        """``yb[0]`` for a one-target batch."""
        return self._state().y

    @property
    def pred(self) -> torch.Tensor:
        """``model(*xb)`` (from after_pred on)."""
        return self._state().pred

    @property
    def loss(self) -> torch.Tensor:
        """``loss_func(pred, *yb)`` (from after_loss on)."""
        return self._state().loss

    @property
    def n_epoch(self) -> int:
        """Epochs in this fit."""
        return self._state().n_epoch

    @property
    def epoch(self) -> int:
        """The current epoch, ``0..n_epoch-1``."""
        return self._state().epoch

    @property
    def n_iter(self) -> int:
        """Batches in ``dl``."""
        return self._state().n_iter

    @property
    def iter(self) -> int:
        """The current batch, ``0..n_iter-1``."""
        return self._state().iter

    @property
    def train_iter(self) -> int:
        """Training batches done since begin_fit (TrainEvalCallback)."""
        return self._state().train_iter

    @property
    def pct_train(self) -> float:
        """Fraction of the fit's training done, 0.0..1.0 (TrainEvalCallback)."""
        return self._state().pct_train

    @property
    def training(self) -> bool:
        """True in the training phase (TrainEvalCallback)."""
        return self._state().training

    @property
    def smooth_loss(self) -> torch.Tensor:
        """Exponentially averaged training loss (Recorder)."""
        return self._state().smooth_loss

    @property
    def extras(self) -> Extras:
        """Typed extension state published by callbacks (see StateKey)."""
        return self._state().extras


class StateWriter(StateView):
    """:class:`StateView` with setters for the fields callbacks may write (validated)."""

    __slots__ = ()

    @property
    def model(self) -> nn.Module:
        """The model being trained."""
        return self._state().model

    @model.setter
    def model(self, value: nn.Module) -> None:
        self._state().model = value

    @property
    def loss_func(self) -> Callable[..., torch.Tensor]:
        """``loss = loss_func(pred, *yb)``."""
        return self._state().loss_func

    @loss_func.setter
    def loss_func(self, value: Callable[..., torch.Tensor]) -> None:
        self._state().loss_func = value

    @property
    def opt(self) -> torch.optim.Optimizer:
        """The optimizer."""
        return self._state().opt

    @opt.setter
    def opt(self, value: torch.optim.Optimizer) -> None:
        self._state().opt = value

    @property
    def opt_func(self) -> Callable[..., torch.optim.Optimizer]:
        """Makes the optimizer: ``opt_func(params, lr=lr)``."""
        return self._state().opt_func

    @opt_func.setter
    def opt_func(self, value: Callable[..., torch.optim.Optimizer]) -> None:
        self._state().opt_func = value

    @property
    def xb(self) -> tuple[torch.Tensor, ...]:
        """The batch's inputs; assign a tuple of tensors to change what the model sees."""
        return self._state().xb

    @xb.setter
    def xb(self, value: tuple[torch.Tensor, ...]) -> None:
        self._state().xb = value

    @property
    def yb(self) -> tuple[torch.Tensor, ...]:
        """The batch's targets."""
        return self._state().yb

    @yb.setter
    def yb(self, value: tuple[torch.Tensor, ...]) -> None:
        self._state().yb = value

    @property
    def pred(self) -> torch.Tensor:
        """``model(*xb)``; assign to change what the loss sees."""
        return self._state().pred

    @pred.setter
    def pred(self, value: torch.Tensor) -> None:
        self._state().pred = value

    @property
    def loss(self) -> torch.Tensor:
        """The loss; assign to change what is back-propagated."""
        return self._state().loss

    @loss.setter
    def loss(self, value: torch.Tensor) -> None:
        self._state().loss = value

    @property
    def train_iter(self) -> int:
        """Training batches done since begin_fit."""
        return self._state().train_iter

    @train_iter.setter
    def train_iter(self, value: int) -> None:
        self._state().train_iter = value

    @property
    def pct_train(self) -> float:
        """Fraction of the fit's training done, 0.0..1.0."""
        return self._state().pct_train

    @pct_train.setter
    def pct_train(self, value: float) -> None:
        self._state().pct_train = value

    @property
    def training(self) -> bool:
        """True in the training phase."""
        return self._state().training

    @training.setter
    def training(self, value: bool) -> None:
        self._state().training = value

    @property
    def smooth_loss(self) -> torch.Tensor:
        """Exponentially averaged training loss."""
        return self._state().smooth_loss

    @smooth_loss.setter
    def smooth_loss(self, value: torch.Tensor) -> None:
        self._state().smooth_loss = value
