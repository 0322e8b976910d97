"""Callbacks: subscribers with typed, read-only shortcuts to the learner's state."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ._hooks import Subscriber
from ._state import LOOP_OWNED_FIELDS, STATE_FIELDS

if TYPE_CHECKING:
    from ._data import BatchSource, DataLoaders
    from ._learner import Learner
    from ._state import Extras, TrainingState

__all__ = ["Callback", "StateView", "state_write_error"]


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


class Callback(Subscriber, StateView):
    """Base class of callbacks: override the hooks (methods named after events) you need.

    Inside a hook, ``self.<field>`` reads the learner's state (``self.loss``,
    ``self.epoch``) with its type, and ``self.learn.<field> = value`` writes it, validated.
    ``self.<field> = value`` is an error: the shortcut is read-only, and a silent new
    attribute on the callback would hide the bug. ``__init__`` need not call
    ``super().__init__()``.

    Example:
        >>> class ClampLoss(Callback):
        ...     def after_loss(self) -> None:
        ...         self.learn.loss = self.loss.clamp(max=10.0)
    """

    _learner: Learner | None = None

    @property
    def learn(self) -> Learner:
        """The Learner this callback is attached to."""
        learner = self._learner
        if learner is None:
            raise RuntimeError(
                f"{type(self).__qualname__} is not attached to a Learner: pass it in "
                "Learner(cbs=[...]), learn.add_cb(...) or learn.fit(..., cbs=[...])"
            )
        return learner

    def set_learner(self, learn: Learner | None) -> None:
        """Attach to ``learn`` (``None``: detach). Called by ``Learner.add_cb``/``remove_cb``."""
        if learn is not None and self._learner is not None and self._learner is not learn:
            raise ValueError(
                f"{type(self).__qualname__} is attached to another Learner already; "
                "remove it there first"
            )
        object.__setattr__(self, "_learner", learn)

    def _state(self) -> TrainingState:
        return self.learn.state

    if not TYPE_CHECKING:  # type checkers report these writes themselves

        def __setattr__(self, name: str, value: Any) -> None:
            if name in STATE_FIELDS or name in ("learn", "extras"):
                raise AttributeError(state_write_error(type(self).__qualname__, name))
            object.__setattr__(self, name, value)


def state_write_error(owner: str, name: str) -> str:
    if name in LOOP_OWNED_FIELDS:
        return f"{owner}.{name} is owned by the training loop; callbacks can read it, not write it"
    if name == "extras":
        return f"{owner}.extras is a mapping: publish with self.learn.extras[KEY] = value"
    if name == "learn":
        return f"{owner}.learn is set by Learner.add_cb; it cannot be assigned"
    return (
        f"{owner}.{name} is a read-only view of the learner's state: "
        f"write self.learn.{name} = ... to change it"
    )
