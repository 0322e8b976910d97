"""The Learner: a loop that owns the tensor math and publishes events for the rest."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

import torch
from torch import nn

from ._bus import EventBus
from ._callback import Callback, StateView, state_write_error
from ._data import DataLoaders
from ._events import Event, Stage
from ._state import LOOP_OWNED_FIELDS, STATE_FIELDS, TrainingState
from .callbacks._core import ProgressCallback, Recorder, TrainEvalCallback

__all__ = ["Learner", "Metric"]

C = TypeVar("C", bound=Callback)

Metric = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""A metric: ``metric(pred, target) -> Tensor`` (a batch mean), e.g. ``accuracy``."""

# Module constants: cheaper to read per batch than Enum class attributes.
_AFTER_PRED: Final = Event.after_pred
_AFTER_LOSS: Final = Event.after_loss
_AFTER_BACKWARD: Final = Event.after_backward
_AFTER_STEP: Final = Event.after_step
_BATCH: Final = Stage.batch


def _positive_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


@final
class Learner(StateView):
    """Trains ``model`` on ``dls``: the loop of the tensor math, publishing events.

    Args:
        model: The network; ``pred = model(*xb)``.
        dls: Training and validation batches.
        loss_func: ``loss = loss_func(pred, *yb)``.
        opt_func: Makes the optimizer, called as ``opt_func(model.parameters(), lr=lr)``.
        lr: Learning rate of the optimizer (``fit(lr=...)`` can change it).
        cbs: Callbacks besides the defaults (TrainEvalCallback, Recorder, ProgressCallback).
        metrics: ``metric(pred, target) -> Tensor`` functions, averaged over the
            validation set by the Recorder.
        n_inp: How many leading elements of a batch are the model's inputs.
    """

    def __init__(
        self,
        model: nn.Module,
        dls: DataLoaders,
        loss_func: Callable[..., torch.Tensor],
        opt_func: Callable[..., torch.optim.Optimizer] = torch.optim.SGD,
        lr: float = 0.1,
        cbs: Iterable[Callback] | None = None,
        metrics: Sequence[Metric] | None = None,
        *,
        n_inp: int = 1,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__qualname__}")
        if not isinstance(dls, DataLoaders):
            raise TypeError(f"dls must be trainbus.DataLoaders, got {type(dls).__qualname__}")
        if not callable(loss_func):
            raise TypeError(f"loss_func must be callable, got {type(loss_func).__qualname__}")
        if isinstance(n_inp, bool) or not isinstance(n_inp, int) or n_inp < 1:
            raise ValueError(f"n_inp must be a positive int, got {n_inp!r}")
        lr = _positive_float("lr", lr)
        metrics = list(metrics or ())
        for metric in metrics:
            if not callable(metric):
                raise TypeError(f"metrics must be callables, got {type(metric).__qualname__}")
        self.state: Final = TrainingState(
            model=model,
            dls=dls,
            loss_func=loss_func,
            opt_func=opt_func,
            opt=opt_func(model.parameters(), lr=lr),
        )
        self.bus: Final = EventBus()
        self.metrics: Final[list[Metric]] = metrics
        self.n_inp: Final = n_inp
        self._functions: dict[tuple[Event, Callable[[Learner], object]], Callable[[], object]] = {}
        # Bodies handed to the bus, bound once rather than on every batch.
        self._train_batch: Final = self._one_train_batch
        self._valid_batch: Final = self._one_valid_batch
        for cb in (TrainEvalCallback(), Recorder(), ProgressCallback(), *(cbs or ())):
            self.add_cb(cb)

    def _state(self) -> TrainingState:
        return self.state

    def __repr__(self) -> str:
        names = ", ".join(type(cb).__name__ for cb in self.state.callbacks)
        return f"Learner(model={type(self.model).__name__}, {self.dls!r}, cbs=[{names}])"

    # --------------------------------------------------------------- callbacks

    def add_cb(self, cb: C) -> C:
        """Register ``cb`` (ordered by its ``run_before``/``run_after``/``order``); returns it.

        Raises:
            TypeError: ``cb`` is not a Callback (use :meth:`subscribe` for a function).
            HookError: A method name of ``cb`` is a near miss of an event name.
            CallbackOrderError: Its constraints close a cycle (nothing is added).
        """
        candidate: object = cb  # untyped callers can pass anything
        if not isinstance(candidate, Callback):
            hint = " (use learn.subscribe(event, fn) for a function)" if callable(cb) else ""
            raise TypeError(
                f"add_cb expects a trainbus.Callback, got {type(cb).__qualname__}{hint}"
            )
        cb.set_learner(self)
        try:
            self.bus.add(cb)
        except BaseException:
            cb.set_learner(None)
            raise
        self._sync_cbs()
        return cb

    def remove_cb(self, cb: Callback) -> None:
        """Unregister ``cb``.

        Raises:
            ValueError: ``cb`` is not registered with this learner.
        """
        self.bus.remove(cb)
        cb.set_learner(None)
        self._sync_cbs()

    def subscribe(
        self, event: Event, function: Callable[[Learner], object], *, order: int = 0
    ) -> None:
        """Call ``function(learn)`` at every ``event`` (a plain-function subscriber)."""
        bound = functools.partial(function, self)
        self.bus.subscribe(event, bound, order=order)
        self._functions[(Event(event), function)] = bound

    def unsubscribe(self, event: Event, function: Callable[[Learner], object]) -> None:
        """Stop calling ``function`` at ``event``.

        Raises:
            ValueError: ``function`` was not subscribed to ``event``.
        """
        key = (Event(event), function)
        bound = self._functions.get(key)
        if bound is None:
            raise ValueError(f"{function!r} is not subscribed to {event}")
        self.bus.unsubscribe(key[0], bound)
        del self._functions[key]

    def get_cb(self, cls: type[C]) -> C:
        """The registered callback of class ``cls`` (or a subclass).

        Raises:
            LookupError: None is registered.
        """
        for cb in self.state.callbacks:
            if isinstance(cb, cls):
                return cb
        raise LookupError(f"no {cls.__qualname__} is registered with this learner")

    @property
    def recorder(self) -> Recorder:
        """The :class:`~trainbus.callbacks.Recorder`."""
        return self.get_cb(Recorder)

    def show_training_loop(self) -> None:
        """Print, event by event, which callbacks run and in what order."""
        print(self.bus.describe())

    def _sync_cbs(self) -> None:
        cbs = tuple(s for s in self.bus.subscribers if isinstance(s, Callback))
        self.state.set_trusted("cbs", cbs)

    # ------------------------------------------------------------------- the loop

    def fit(
        self, n_epoch: int, lr: float | None = None, cbs: Iterable[Callback] | None = None
    ) -> None:
        """Train for ``n_epoch`` epochs.

        Args:
            n_epoch: Number of epochs (0 runs begin_fit and after_fit only).
            lr: If given, the learning rate of every parameter group from now on.
            cbs: Callbacks for this fit only: removed when it returns or raises.
        """
        if isinstance(n_epoch, bool) or not isinstance(n_epoch, int) or n_epoch < 0:
            raise ValueError(f"n_epoch must be a non-negative int, got {n_epoch!r}")
        if lr is not None:
            lr = _positive_float("lr", lr)
            for group in self.opt.param_groups:
                group["lr"] = lr
        added: list[Callback] = []
        try:
            for cb in cbs or ():
                added.append(self.add_cb(cb))
            self.state.set_trusted("n_epoch", n_epoch)
            self.bus.run(Stage.fit, self._all_epochs)
        finally:
            self.state.drop_batch()
            for cb in reversed(added):
                if cb in self.state.cbs:
                    self.remove_cb(cb)

    def _all_epochs(self) -> None:
        state, run, one_epoch = self.state, self.bus.run, self._one_epoch
        for epoch in range(state.n_epoch):
            state.set_trusted("epoch", epoch)
            run(Stage.epoch, one_epoch)

    def _one_epoch(self) -> None:
        dls = self.state.dls
        self._phase(dls.train, Stage.train, self._train_batch)
        with torch.no_grad():
            self._phase(dls.valid, Stage.validate, self._valid_batch)

    def _phase(self, dl: Any, stage: Stage, one_batch: Callable[[], None]) -> None:
        state = self.state
        state.set_trusted("dl", dl)
        state.set_trusted("n_iter", len(dl))
        state.set_trusted("iter", 0)
        self.bus.run(stage, functools.partial(self._all_batches, one_batch))

    def _all_batches(self, one_batch: Callable[[], None]) -> None:
        state, run, n_inp = self.state, self.bus.run, self.n_inp
        for i, batch in enumerate(state.dl):
            if not isinstance(batch, tuple | list):
                raise TypeError(
                    "each batch must be a tuple or list (inputs..., targets...), got "
                    f"{type(batch).__qualname__}"
                )
            values = state.__dict__
            values["iter"] = i
            xb, yb = batch[:n_inp], batch[n_inp:]
            values["xb"] = xb if type(xb) is tuple else tuple(xb)
            values["yb"] = yb if type(yb) is tuple else tuple(yb)
            run(_BATCH, one_batch)

    # The batch bodies read the state again after every event: callbacks may replace
    # any field (self.learn.loss = ...), and the loop must use what they wrote.
    def _one_train_batch(self) -> None:
        state, emit = self.state, self.bus.emit
        state.__dict__["pred"] = state.model(*state.xb)
        emit(_AFTER_PRED)
        state.__dict__["loss"] = state.loss_func(state.pred, *state.yb)
        emit(_AFTER_LOSS)
        state.loss.backward()
        emit(_AFTER_BACKWARD)
        state.opt.step()
        emit(_AFTER_STEP)
        state.opt.zero_grad()

    def _one_valid_batch(self) -> None:
        state, emit = self.state, self.bus.emit
        state.__dict__["pred"] = state.model(*state.xb)
        emit(_AFTER_PRED)
        state.__dict__["loss"] = state.loss_func(state.pred, *state.yb)
        emit(_AFTER_LOSS)

    # ------------------------------------------------ state writes from callbacks

    @property
    def model(self) -> nn.Module:
        """The model being trained."""
        return self.state.model

    @model.setter
    def model(self, value: nn.Module) -> None:
        self.state.model = value

    @property
    def loss_func(self) -> Callable[..., torch.Tensor]:
        """``loss = loss_func(pred, *yb)``."""
        return self.state.loss_func

    @loss_func.setter
    def loss_func(self, value: Callable[..., torch.Tensor]) -> None:
        self.state.loss_func = value

    @property
    def opt(self) -> torch.optim.Optimizer:
        """The optimizer."""
        return self.state.opt

    @opt.setter
    def opt(self, value: torch.optim.Optimizer) -> None:
        self.state.opt = value

    @property
    def opt_func(self) -> Callable[..., torch.optim.Optimizer]:
        """Makes the optimizer: ``opt_func(params, lr=lr)``."""
        return self.state.opt_func

    @opt_func.setter
    def opt_func(self, value: Callable[..., torch.optim.Optimizer]) -> None:
        self.state.opt_func = value

    @property
    def xb(self) -> tuple[torch.Tensor, ...]:
        """The batch's inputs; assign a tuple of tensors to change what the model sees."""
        return self.state.xb

    @xb.setter
    def xb(self, value: tuple[torch.Tensor, ...]) -> None:
        self.state.xb = value

    @property
    def yb(self) -> tuple[torch.Tensor, ...]:
        """The batch's targets."""
        return self.state.yb

    @yb.setter
    def yb(self, value: tuple[torch.Tensor, ...]) -> None:
        self.state.yb = value

    @property
    def pred(self) -> torch.Tensor:
        """``model(*xb)``; assign to change what the loss sees."""
        return self.state.pred

    @pred.setter
    def pred(self, value: torch.Tensor) -> None:
        self.state.pred = value

    @property
    def loss(self) -> torch.Tensor:
        """The loss; assign to change what is back-propagated."""
        return self.state.loss

    @loss.setter
    def loss(self, value: torch.Tensor) -> None:
        self.state.loss = value

    @property
    def train_iter(self) -> int:
        """Training batches done since begin_fit."""
        return self.state.train_iter

    @train_iter.setter
    def train_iter(self, value: int) -> None:
        self.state.train_iter = value

    @property
    def pct_train(self) -> float:
        """Fraction of the fit's training done, 0.0..1.0."""
        return self.state.pct_train

    @pct_train.setter
    def pct_train(self, value: float) -> None:
        self.state.pct_train = value

    @property
    def training(self) -> bool:
        """True in the training phase."""
        return self.state.training

    @training.setter
    def training(self, value: bool) -> None:
        self.state.training = value

    @property
    def smooth_loss(self) -> torch.Tensor:
        """Exponentially averaged training loss."""
        return self.state.smooth_loss

    @smooth_loss.setter
    def smooth_loss(self, value: torch.Tensor) -> None:
        self.state.smooth_loss = value

    if not TYPE_CHECKING:  # invisible to type checkers, which report these themselves

        def __setattr__(self, name: str, value: Any) -> None:
            if name in LOOP_OWNED_FIELDS:
                raise AttributeError(state_write_error("Learner", name))
            object.__setattr__(self, name, value)

        def __getattr__(self, name: str) -> Any:
            if name.startswith("__"):
                raise AttributeError(name)
            if name in STATE_FIELDS:  # a property raised: report the state's own error
                return getattr(self.state, name)
            for cb in self.state.cbs:
                if cb.name == name:
                    return cb
            names = ", ".join(cb.name for cb in self.state.cbs)
            raise AttributeError(
                f"'Learner' has no attribute {name!r} and no callback named so (callbacks: {names})"
            )
