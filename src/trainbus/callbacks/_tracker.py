"""Callbacks that watch a recorded value per epoch: early stopping, checkpoints, LR plateaus."""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import torch
from typing_extensions import override

from .._callback import Callback
from .._checkpoint import unwrap_model
from .._checks import checked_float, checked_int
from .._files import atomic_save
from .._hooks import SubscriberClasses
from .._signals import CancelFitException
from ._core import Recorder

__all__ = [
    "EarlyStoppingCallback",
    "ReduceLROnPlateau",
    "SaveModelCallback",
    "TrackerCallback",
]

Comparison = Callable[[float, float], bool]
"""``comp(a, b)`` is true when ``a`` is better than ``b`` (``operator.lt`` for losses)."""


def _require(ok: object, owner: str, name: str, what: str, value: object) -> None:
    if not ok:
        raise ValueError(f"{owner} {name} must be {what}, got {value!r}")


def _name(value: object) -> bool:
    return isinstance(value, str) and value != ""


class TrackerCallback(Callback):
    """Base of callbacks that act on whether a monitored per-epoch value improved.

    In ``after_epoch``, after the Recorder has appended the epoch's row, it reads
    ``monitor`` from ``learn.recorder.values[-1]`` (the columns are
    ``learn.recorder.metric_names``: ``train_loss``, ``valid_loss``, then each metric's
    ``__name__``) and sets :attr:`new_best`. A value improves on :attr:`best` when
    ``comp(value, best)`` holds and it differs from ``best`` by more than ``min_delta``;
    the first value that is not NaN is always an improvement. Subclasses override
    ``after_epoch``, call ``super().after_epoch()`` first, then read :attr:`new_best`.

    Args:
        monitor: Name of the recorded value to watch.
        comp: ``comp(a, b)`` is true when ``a`` is better than ``b``. ``None``:
            ``operator.lt`` when ``monitor`` contains ``"loss"`` or ``"error"``,
            ``operator.gt`` otherwise.
        min_delta: Margin by which a value must beat the best to count as better.
        reset_on_fit: Forget the best value at the start of every fit.

    Attributes:
        best: The best value so far (``None`` before the first one).
        new_best: Whether the last epoch's value improved on the best.

    Raises:
        ValueError: At ``begin_fit``, ``monitor`` is not a recorded name (the message
            lists them).
    """

    run_after: ClassVar[SubscriberClasses] = Recorder
    run_in_auxiliary: ClassVar[bool] = False  # lr_find, validate, ...: detached

    def __init__(
        self,
        monitor: str = "valid_loss",
        *,
        comp: Comparison | None = None,
        min_delta: float = 0.0,
        reset_on_fit: bool = True,
    ) -> None:
        owner = type(self).__name__
        _require(_name(monitor), owner, "monitor", "a non-empty name", monitor)
        min_delta = checked_float(
            f"{owner} min_delta", min_delta, inclusive=True, what="finite and >= 0"
        )
        self.monitor = monitor
        lower_is_better = "loss" in monitor or "error" in monitor
        self.comp: Comparison = comp or (operator.lt if lower_is_better else operator.gt)
        self.min_delta: float = min_delta
        self.reset_on_fit = reset_on_fit
        self.best: float | None = None
        self.new_best: bool = False
        self._index = 0

    @override
    def begin_fit(self) -> None:
        names = self.learn.recorder.metric_names
        if self.monitor not in names:
            raise ValueError(
                f"{type(self).__name__} cannot monitor {self.monitor!r}: the recorded values "
                f"are {', '.join(repr(n) for n in names)}"
            )
        self._index = names.index(self.monitor)
        if self.reset_on_fit:
            self.best = None
        self.new_best = False

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "new_best": self.new_best}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.new_best = state["best"], bool(state["new_best"])

    @override
    def after_epoch(self) -> None:
        value = self.learn.recorder.values[-1][self._index]
        best = self.best
        if best is None:
            improved = not math.isnan(value)
        else:
            improved = bool(self.comp(value, best)) and abs(value - best) > self.min_delta
        self.new_best = improved
        if improved:
            self.best = value


class SaveModelCallback(TrackerCallback):
    """Saves the model when the monitored value improves, and reloads the best at the end.

    Saves ``model.state_dict()`` (with ``with_opt``: ``{"model": ..., "opt":
    opt.state_dict()}``) to ``path/fname.pth`` whenever the value improves; with
    ``every_epoch``, to ``path/fname_<epoch>.pth`` after every epoch instead. At
    ``after_fit`` (also after early stopping or another cancel, not after an error) the
    best epoch's file is loaded back into the model (and optimizer). Files are written
    atomically: to a temporary file in the same folder, flushed and fsynced, then renamed
    over the target, so a crash while saving leaves the previous file intact and no
    temporary file behind. The weights are those of the module inside ``torch.compile``
    or data-parallel wrappers, so a file saved from a compiled model loads into the plain
    one (no ``_orig_mod.`` prefix).

    Args:
        monitor: As for :class:`TrackerCallback`.
        comp: As for :class:`TrackerCallback`.
        min_delta: As for :class:`TrackerCallback`.
        reset_on_fit: As for :class:`TrackerCallback`.
        fname: File name without the ``.pth`` suffix.
        every_epoch: Save every epoch (to a file per epoch), not only improvements.
        with_opt: Save and reload the optimizer's state too.
        path: Folder of the files (created if missing).

    Attributes:
        best_epoch: The epoch of the best value (``None`` before the first one).

    On many processes it runs on rank 0 only: rank 0 writes the files and ends the fit
    with the best weights; the other ranks keep the last epoch's.
    """

    rank_zero_only: ClassVar[bool] = True

    def __init__(
        self,
        monitor: str = "valid_loss",
        *,
        comp: Comparison | None = None,
        min_delta: float = 0.0,
        fname: str = "model",
        every_epoch: bool = False,
        with_opt: bool = False,
        path: str | os.PathLike[str] = ".",
        reset_on_fit: bool = True,
    ) -> None:
        super().__init__(monitor, comp=comp, min_delta=min_delta, reset_on_fit=reset_on_fit)
        _require(_name(fname), "SaveModelCallback", "fname", "a non-empty str", fname)
        self.fname = fname
        self.every_epoch = every_epoch
        self.with_opt = with_opt
        self.path: Path = Path(path)
        self.best_epoch: int | None = None

    def file(self, epoch: int | None = None) -> Path:
        """``path/fname.pth``, or ``path/fname_<epoch>.pth`` for an epoch's file."""
        stem = self.fname if epoch is None else f"{self.fname}_{epoch}"
        return self.path / f"{stem}.pth"

    @property
    def best_file(self) -> Path | None:
        """The file holding the best epoch's weights (``None`` before the first one)."""
        if self.best_epoch is None:
            return None
        return self.file(self.best_epoch if self.every_epoch else None)

    @override
    def begin_fit(self) -> None:
        super().begin_fit()
        if self.reset_on_fit:
            self.best_epoch = None
        self.path.mkdir(parents=True, exist_ok=True)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "best_epoch": self.best_epoch}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.best_epoch = state["best_epoch"]

    @override
    def after_epoch(self) -> None:
        super().after_epoch()
        if self.new_best:
            self.best_epoch = self.epoch
        if self.every_epoch:
            self._save(self.file(self.epoch))
        elif self.new_best:
            self._save(self.file())

    @override
    def after_fit(self) -> None:
        best = self.best_file
        if best is not None and best.is_file():
            self._load(best)

    def _save(self, target: Path) -> None:
        # The user's module inside torch.compile / data-parallel wrappers: the file's keys
        # have no `_orig_mod.` or `module.` prefix and load into the plain model.
        model_state = unwrap_model(self.model).state_dict()
        state: object = model_state
        if self.with_opt:
            state = {"model": model_state, "opt": self.opt.state_dict()}
        atomic_save(state, target)

    def _load(self, source: Path) -> None:
        state: dict[str, Any] = torch.load(source, map_location="cpu", weights_only=True)
        model = unwrap_model(self.model)
        if self.with_opt:
            model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["opt"])
        else:
            model.load_state_dict(state)


class ReduceLROnPlateau(TrackerCallback):
    """Divides the learning rate by ``factor`` after ``patience`` epochs without improvement.

    Every parameter group's ``lr`` becomes ``max(lr / factor, min_lr)``; the count of
    epochs without improvement then starts again.

    Args:
        monitor: As for :class:`TrackerCallback`.
        comp: As for :class:`TrackerCallback`.
        min_delta: As for :class:`TrackerCallback`.
        reset_on_fit: As for :class:`TrackerCallback`.
        patience: Epochs without improvement before a reduction.
        factor: Divisor of the learning rate (greater than 1).
        min_lr: Floor of the learning rate.

    Attributes:
        wait: Epochs without improvement since the last improvement or reduction.
    """

    def __init__(
        self,
        monitor: str = "valid_loss",
        *,
        comp: Comparison | None = None,
        min_delta: float = 0.0,
        patience: int = 1,
        factor: float = 10.0,
        min_lr: float = 0.0,
        reset_on_fit: bool = True,
    ) -> None:
        super().__init__(monitor, comp=comp, min_delta=min_delta, reset_on_fit=reset_on_fit)
        self.patience: int = checked_int("ReduceLROnPlateau patience", patience)
        self.factor: float = checked_float(
            "ReduceLROnPlateau factor", factor, 1.0, what="greater than 1"
        )
        self.min_lr: float = checked_float(
            "ReduceLROnPlateau min_lr", min_lr, inclusive=True, what=">= 0"
        )
        self.wait: int = 0

    @override
    def begin_fit(self) -> None:
        super().begin_fit()
        self.wait = 0

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "wait": self.wait}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.wait = int(state["wait"])

    @override
    def after_epoch(self) -> None:
        super().after_epoch()
        self.wait = 0 if self.new_best else self.wait + 1
        if self.wait >= self.patience:
            for group in self.opt.param_groups:
                group["lr"] = max(group["lr"] / self.factor, self.min_lr)
            self.wait = 0


class EarlyStoppingCallback(TrackerCallback):
    """Ends the fit (``CancelFitException``) after ``patience`` epochs without improvement.

    It raises in ``after_epoch`` after every other callback has seen the epoch: it runs
    after :class:`SaveModelCallback` and :class:`ReduceLROnPlateau`, and last among the
    callbacks free to run (``order = 100``), since a signal stops the event's dispatch.
    ``after_cancel_fit`` and ``after_fit`` follow (so ``SaveModelCallback`` reloads the
    best weights).

    Args:
        monitor: As for :class:`TrackerCallback`.
        comp: As for :class:`TrackerCallback`.
        min_delta: As for :class:`TrackerCallback`.
        reset_on_fit: As for :class:`TrackerCallback`.
        patience: Epochs without improvement before stopping.

    Attributes:
        wait: Epochs without improvement since the last improvement.
        stopped_epoch: The epoch after which the fit was stopped (``None``: not stopped).
    """

    run_after: ClassVar[SubscriberClasses] = (Recorder, SaveModelCallback, ReduceLROnPlateau)
    order = 100

    def __init__(
        self,
        monitor: str = "valid_loss",
        *,
        comp: Comparison | None = None,
        min_delta: float = 0.0,
        patience: int = 1,
        reset_on_fit: bool = True,
    ) -> None:
        super().__init__(monitor, comp=comp, min_delta=min_delta, reset_on_fit=reset_on_fit)
        self.patience: int = checked_int("EarlyStoppingCallback patience", patience)
        self.wait: int = 0
        self.stopped_epoch: int | None = None

    @override
    def begin_fit(self) -> None:
        super().begin_fit()
        self.wait = 0
        self.stopped_epoch = None

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "wait": self.wait, "stopped_epoch": self.stopped_epoch}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.wait, self.stopped_epoch = int(state["wait"]), state["stopped_epoch"]

    @override
    def after_epoch(self) -> None:
        super().after_epoch()
        self.wait = 0 if self.new_best else self.wait + 1
        if self.wait >= self.patience:
            self.stopped_epoch = self.epoch
            raise CancelFitException
