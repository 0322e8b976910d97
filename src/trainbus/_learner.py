"""The Learner: a loop that owns the tensor math and publishes events for the rest."""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Generator, Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, TypeVar, final

import torch
from torch import nn
from typing_extensions import override

from ._bus import EventBus
from ._callback import Callback, state_write_error
from ._checkpoint import load_checkpoint, save_checkpoint
from ._checks import checked_float, checked_int, require_training_batches
from ._data import BatchSource, DataLoaders
from ._devices import DeviceLike, resolve_device
from ._distributed import Distributed, detect, reduced_row
from ._events import Event, Stage
from ._inference import Gather, Preds, either_body, per_sample_losses, prediction_body
from ._inputs import (
    CallbackLike,
    Metric,
    as_callback,
    checked_loss_func,
    checked_metrics,
    defaults_replaced_by,
)
from ._loop import LearnerLoop
from ._resume import ResumePlan
from ._sharding import shard_dataloaders
from ._state import LOOP_OWNED_FIELDS, STATE_FIELDS, WRITABLE_FIELDS, TrainingState
from .callbacks._core import Recorder, TrainEvalCallback
from .callbacks._progress import ProgressCallback

if TYPE_CHECKING:
    from .callbacks._lr_finder import LRFinderResult
    from .callbacks._schedule import ParamScheduler

__all__ = ["Learner"]

C = TypeVar("C", bound=Callback)


@final
class Learner(LearnerLoop):
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
        device: Where to train (``"cuda"``, ``"cuda:1"``, ``"mps"``, ``"cpu"``, a
            ``torch.device``); ``None``: the first available of CUDA, MPS, CPU. The model
            is moved there once; each batch's tensors are moved there before
            ``begin_batch`` (not copied when there already).

    Raises:
        ValueError: ``device`` is unknown or not available on this machine.
    """

    # No __dict__: assigning a misspelt name (learn.los = ...) is an error, never a new
    # attribute that the loop would ignore.
    __slots__ = ("_dist", "_functions", "metrics")

    def __init__(
        self,
        model: nn.Module,
        dls: DataLoaders,
        loss_func: Callable[..., torch.Tensor],
        opt_func: Callable[..., torch.optim.Optimizer] = torch.optim.SGD,
        lr: float = 0.1,
        cbs: Iterable[CallbackLike] | None = None,
        metrics: Sequence[Metric] | Metric | None = None,
        *,
        n_inp: int = 1,
        device: DeviceLike | None = None,
    ) -> None:
        # Checks of what the annotations promise: callers without a type checker exist.
        if not isinstance(model, nn.Module):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__qualname__}")
        if not isinstance(dls, DataLoaders):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"dls must be trainbus.DataLoaders, got {type(dls).__qualname__}")
        checked_loss_func(loss_func)
        checked_int("n_inp", n_inp)
        lr = checked_float("lr", lr)
        metric_list = checked_metrics(metrics)
        # The process group first: initialising it from torchrun's environment selects
        # this process's GPU, which the default device then is.
        self._dist: Final = detect()
        resolved = resolve_device(device)
        model.to(resolved)  # before the optimizer is made: it holds the parameters
        if self._dist.active:
            dls = shard_dataloaders(
                dls,
                rank=self._dist.rank,
                world_size=self._dist.world_size,
                seed=self._dist.seed,
                epoch_of=lambda: self.state.trusted_values["epoch"],
            )
        # Validated from a mapping: dls is read-only to type checkers (the loop owns it).
        state = TrainingState.model_validate(
            {
                "model": model,
                "dls": dls,
                "loss_func": loss_func,
                "opt_func": opt_func,
                "opt": opt_func(model.parameters(), lr=lr),
            }
        )
        super().__init__(state, EventBus(), n_inp=n_inp, device=resolved)
        self.metrics: Final[list[Metric]] = metric_list
        self._functions: dict[tuple[Event, Callable[[Learner], object]], Callable[[], object]] = {}
        for cb in (TrainEvalCallback(), Recorder(), ProgressCallback(), *(cbs or ())):
            self.add_cb(cb)

    def _state(self) -> TrainingState:
        return self.state

    @override
    def _learner(self) -> Learner:
        return self

    @property
    def device(self) -> torch.device:
        """The device the model and each batch are on (with its index: ``cuda:0``)."""
        return self._device

    def __repr__(self) -> str:
        names = ", ".join(type(cb).__name__ for cb in self.state.callbacks)
        return f"Learner(model={type(self.model).__name__}, {self.dls!r}, cbs=[{names}])"

    # --------------------------------------------------------------- callbacks

    def add_cb(self, cb: C | type[C]) -> C:
        """Register ``cb`` (ordered by its ``run_before``/``run_after``/``order``); returns it.

        A Callback class is instantiated with no arguments. A callback of a default's
        class (``Recorder``, ``ProgressCallback``, ``TrainEvalCallback``) replaces the
        registered one of that class.

        Raises:
            TypeError: ``cb`` is not a Callback (use :meth:`subscribe` for a function).
            HookError: A method name of ``cb`` is a near miss of an event name.
            CallbackOrderError: Its constraints close a cycle (nothing is added).
        """
        new, replaced, _ = self._attach(cb)
        for old in replaced:
            old.set_learner(None)
        return new

    def _attach(self, cb: C | type[C]) -> tuple[C, list[Callback], Callable[[], None]]:
        """Register ``cb``, detaching the defaults it replaces; returns it, them, and a
        function that puts them back in their places (for callbacks of one fit)."""
        new = as_callback(cb)
        replaced = defaults_replaced_by(new, self.state.callbacks)
        restore = self.bus.suspend(replaced)
        new.set_learner(self)
        try:
            self.bus.add(new)
        except BaseException:
            new.set_learner(None)
            restore()
            self._sync_cbs()
            raise
        self._sync_cbs()
        return new, replaced, restore

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
    def rank(self) -> int:
        """This process's rank in the process group (0 on a single process)."""
        return self._dist.rank

    @property
    def world_size(self) -> int:
        """Number of processes training together (1 on a single process)."""
        return self._dist.world_size

    @property
    def distributed(self) -> Distributed:
        """The process group as this learner uses it (see docs/distributed.md)."""
        return self._dist

    @property
    def recorder(self) -> Recorder:
        """The :class:`~trainbus.callbacks.Recorder`."""
        return self.get_cb(Recorder)

    def show_training_loop(self) -> None:
        """Print, event by event, which callbacks run and in what order."""
        print(self.bus.describe())

    @contextlib.contextmanager
    def _auxiliary_run(self) -> Generator[None, None, None]:
        """Detach the callbacks with ``run_in_auxiliary = False`` for an auxiliary run
        (``lr_find``, ``validate``, ``get_preds``, ``predict``), and put them back in their
        original places however it ends; the loop counters are put back too.

        Raises:
            RuntimeError: A fit or another run is in progress (called from a callback).
        """
        if self.bus.running:
            raise RuntimeError(
                "lr_find, validate, get_preds and predict cannot run while a fit or another "
                "of them is running: call it after fit returns, not from a callback"
            )
        other_rank = self._dist.rank != 0  # rank-zero-only callbacks sit out there too
        restore = self.bus.suspend(
            cb
            for cb in self.state.cbs
            if not cb.run_in_auxiliary or (other_rank and cb.rank_zero_only)
        )
        self._sync_cbs()
        try:
            with self.state.counters_kept():
                yield
        finally:
            restore()
            self._sync_cbs()

    def _sync_cbs(self) -> None:
        cbs = tuple(s for s in self.bus.subscribers if isinstance(s, Callback))
        self.state.set_trusted("cbs", cbs)

    # ------------------------------------------------------------------ checkpoints

    def save(self, path: str | os.PathLike[str], *, with_opt: bool = True) -> Path:
        """Write the model's weights (and the optimizer's state) to ``path``, atomically.

        The file is written under a temporary name, flushed and renamed, so ``path`` holds
        the old file or the new one, never half of one. The weights are those of the
        module inside ``torch.compile`` or data-parallel wrappers. A resumable training
        checkpoint (with callbacks, counters, RNG and data position) is written by
        :class:`~trainbus.callbacks.Checkpoint`; ``learn.load`` reads the weights of both.

        Returns:
            The path written.
        """
        return save_checkpoint(self, path, with_opt=with_opt)

    def load(
        self, path: str | os.PathLike[str], *, with_opt: bool = True, strict: bool = True
    ) -> None:
        """Load the model's weights (and the optimizer's state) from ``path``.

        The file is read with ``torch.load(weights_only=True)`` and checked against the
        model and optimizer before anything changes.

        Args:
            path: A file written by :meth:`save` or :class:`~trainbus.callbacks.Checkpoint`.
            with_opt: Load the optimizer's state too.
            strict: The checkpoint's parameter names must be exactly the model's.

        Raises:
            FileNotFoundError: No file at ``path``.
            CheckpointError: The file is truncated, corrupt, not a trainbus checkpoint, of a
                newer format, or does not fit the model (the first mismatching key and its
                shapes are named) or the optimizer.
        """
        load_checkpoint(self, path, with_opt=with_opt, strict=strict)

    # ------------------------------------------------------------------- the loop

    def fit(
        self,
        n_epoch: int,
        lr: float | None = None,
        cbs: Iterable[CallbackLike] | None = None,
        *,
        resume: str | os.PathLike[str] | None = None,
    ) -> None:
        """Train for ``n_epoch`` epochs.

        Args:
            n_epoch: Number of epochs (0 runs begin_fit and after_fit only).
            lr: If given, the learning rate of every parameter group from now on.
            cbs: Callbacks for this fit only: removed when it returns or raises (the
                defaults they replace come back).
            resume: Go on from a training checkpoint (a path, or ``"latest"``: the newest
                in the dir of the :class:`~trainbus.callbacks.Checkpoint` callback, or a
                fresh start when there is none yet). The fit ends as the one that wrote
                it would have, bit for bit; see docs/checkpoints.md.

        Raises:
            FileNotFoundError: ``resume`` names no file.
            CheckpointError: The checkpoint cannot be read or does not fit this fit (its
                model, optimizer, callbacks, data or ``n_epoch``); nothing has changed.
        """
        checked_int("n_epoch", n_epoch, 0, what="a non-negative int")
        if n_epoch > 0:
            require_training_batches(self.dls.train, "a fit")
        if lr is not None:
            lr = checked_float("lr", lr)
        added: list[tuple[Callback, Callable[[], None]]] = []
        try:
            for cb in cbs or ():
                new, _, restore = self._attach(cb)
                added.append((new, restore))
            if resume is not None:
                self._resume = ResumePlan.prepare(self, resume, n_epoch)
            if lr is not None:
                for group in self.opt.param_groups:
                    group["lr"] = lr
            state = self.state
            # Counters of a previous fit must not leak into this one's begin_fit.
            for counter in ("epoch", "iter", "n_iter"):
                state.set_trusted(counter, 0)
            state.set_trusted("n_epoch", n_epoch)
            if self._dist.active:
                with self._dist.fit_scope(self, self._forward):
                    self.bus.run(Stage.fit, self._all_epochs)
            else:
                self.bus.run(Stage.fit, self._all_epochs)
        finally:
            self._resume = None
            self.state.drop_batch()
            for cb, restore in reversed(added):
                if cb in self.state.cbs:
                    self.remove_cb(cb)
                restore()
            self._sync_cbs()

    def fit_one_cycle(
        self,
        n_epoch: int,
        lr_max: float | None = None,
        div: float = 25.0,
        div_final: float = 1e5,
        pct_start: float = 0.25,
        moms: tuple[float, float, float] | None = (0.95, 0.85, 0.95),
        cbs: Iterable[CallbackLike] | None = None,
        *,
        resume: str | os.PathLike[str] | None = None,
    ) -> ParamScheduler:
        """Train for ``n_epoch`` epochs with the one-cycle policy.

        The learning rate warms up from ``lr_max / div`` to ``lr_max`` (half cosine) over
        the first ``pct_start`` of the training batches, then anneals to
        ``lr_max / div_final``; the momentum (SGD's ``momentum``, Adam's first beta) goes
        ``moms[0] -> moms[1] -> moms[2]`` over the same phases (``moms=None``: untouched).

        Args:
            n_epoch: Number of epochs.
            lr_max: Peak learning rate; default: the ``lr`` the optimizer was made with.
            div: ``lr_max / div`` is the first learning rate.
            div_final: ``lr_max / div_final`` is the last learning rate.
            pct_start: Fraction of the training batches spent warming up.
            moms: Momentum at the start, the peak of the learning rate, and the end.
            cbs: More callbacks for this fit only.
            resume: Go on from a training checkpoint, as for :meth:`fit`.

        Returns:
            The fit's :class:`~trainbus.callbacks.ParamScheduler` (``.hps``, ``.plot``).
        """
        from .callbacks._schedule import ParamScheduler, one_cycle_schedules

        if lr_max is None:
            # The optimizer's construction default, not its current lr: a previous
            # one-cycle fit leaves that at lr_max / div_final.
            lr_max = self.opt.defaults.get("lr")
            if not isinstance(lr_max, int | float):
                raise ValueError("fit_one_cycle needs lr_max: the optimizer has no default lr")
        scheds = one_cycle_schedules(
            lr_max, div=div, div_final=div_final, pct_start=pct_start, moms=moms
        )
        scheduler = ParamScheduler(scheds)
        self.fit(n_epoch, cbs=[scheduler, *(cbs or ())], resume=resume)
        return scheduler

    def lr_find(
        self,
        start_lr: float = 1e-7,
        end_lr: float = 10.0,
        num_it: int = 100,
        stop_div: bool = True,
    ) -> LRFinderResult:
        """Find a learning rate: see :class:`~trainbus.callbacks.LRFinder`.

        Trains for up to ``num_it`` batches at learning rates growing geometrically from
        ``start_lr`` to ``end_lr``, then puts the model, the optimizer, the Recorder's
        records and the loop counters back as they were.

        Returns:
            The curve and the suggested learning rates (``valley``, ``steep``,
            ``minimum``); ``result.plot(path)`` draws it.
        """
        from .callbacks._lr_finder import lr_find

        with self._auxiliary_run():
            return lr_find(self, start_lr, end_lr, num_it, stop_div)

    # ------------------------------------------------------- evaluation and inference

    def validate(self, dl: BatchSource | None = None) -> dict[str, float]:
        """The loss and metrics of the model as it is, on ``dl`` (default: ``dls.valid``).

        Runs one validate stage, as a fit's validation phase does (``training`` False,
        under ``no_grad``), so it returns exactly what that phase would record for the
        same weights and data, without recording it (see :meth:`get_preds`).

        On many processes, the default loader is this rank's shard: the values are
        reduced over the ranks (every rank must call it), as a fit's are.

        Returns:
            ``{"valid_loss": ..., "<metric name>": ...}``; ``nan`` without batches.
        """
        gather = Gather(sums=True, n_metrics=len(self.metrics))
        self._auxiliary_phase(dl, self._valid_batch, gather)
        result = gather.metrics(self.metrics)
        if dl is None and self._dist.active:  # this rank's shard: reduced over the ranks
            row = reduced_row(torch.zeros(0), gather.valid, gather.metric_sums)[1:]
            result = dict(zip(result, row, strict=True))
        return result

    def get_preds(self, dl: BatchSource | None = None, *, with_loss: bool = False) -> Preds:
        """The model's outputs on ``dl`` (default: ``dls.valid``), with targets, on the CPU.

        One validate stage (``begin_validate``, the batch events, ``after_validate``) with
        ``training`` False, under ``no_grad``; the model's train/eval modes are put back
        afterwards. It is an auxiliary run: callbacks with ``run_in_auxiliary = False``
        (Recorder, trackers, loggers, schedulers) are detached for it, so no record of
        the fit changes. Each batch's outputs go to the CPU as the batch ends, so device
        memory does not grow with the data. Batches without targets run the forward pass
        only (no loss events).

        Args:
            dl: Batches of inputs and targets (or inputs only).
            with_loss: Also return one loss per sample: the loss function called with
                ``reduction="none"`` (a loss module's ``reduction`` is ``"none"`` for the
                call), averaged over all but the first dimension.

        Raises:
            TypeError: ``with_loss`` and the loss function allows no ``reduction="none"``.
        """
        losses = per_sample_losses(self.loss_func) if with_loss else None
        gather = Gather(keep=True, losses=losses)
        values = self.state.trusted_values
        body = either_body(values, self._valid_batch, prediction_body(values, self.bus))
        self._auxiliary_phase(dl, body, gather)
        return gather.result()

    def predict(self, *inputs: Any) -> torch.Tensor:
        """The model's output for one batch of ``inputs`` (``n_inp`` of them), on the CPU.

        The inputs are moved to the device and run as a one-batch validate stage without
        targets (``begin_batch``, ``after_pred``, ``after_batch``): see :meth:`get_preds`.

        Raises:
            TypeError: Not ``n_inp`` inputs.
            RuntimeError: A callback cancelled the batch, so there is no prediction.
        """
        if len(inputs) != self.n_inp:
            raise TypeError(
                f"predict takes the model's inputs, n_inp={self.n_inp} of them, got {len(inputs)}"
            )
        gather = Gather(keep=True)
        body = prediction_body(self.state.trusted_values, self.bus)
        self._auxiliary_phase([inputs], body, gather)
        if not gather.preds:
            raise RuntimeError("predict has no prediction: a callback cancelled the batch")
        return gather.result().preds

    def _auxiliary_phase(
        self, dl: BatchSource | None, one_batch: Callable[[], None], gather: Gather
    ) -> None:
        """Run one validate stage over ``dl`` as an auxiliary run, ``gather`` attached."""
        source = self.dls.valid if dl is None else dl
        if not isinstance(source, BatchSource):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(f"dl must be a sized iterable of batches, got {type(dl).__qualname__}")
        model, state = self.model, self.state
        modes = [module.training for module in model.modules()]
        with self._auxiliary_run():
            gather.set_learner(self)
            self.bus.add(gather)
            try:
                state.set_trusted("training", False)
                with torch.no_grad():
                    self._phase(source, Stage.validate, one_batch)
            finally:
                self.bus.remove(gather)
                gather.set_learner(None)
                state.drop_batch()
                for module, mode in zip(model.modules(), modes, strict=True):
                    module.training = mode

    if not TYPE_CHECKING:  # invisible to type checkers, which report these themselves

        def __setattr__(self, name: str, value: Any) -> None:
            if name in LOOP_OWNED_FIELDS:
                raise AttributeError(state_write_error("Learner", name))
            try:
                object.__setattr__(self, name, value)
            except AttributeError:
                if hasattr(type(self), name):  # a read-only property
                    raise
                raise AttributeError(
                    f"Learner has no attribute {name!r} to assign; the fields callbacks can "
                    f"write are {', '.join(sorted(WRITABLE_FIELDS))} (publish other values "
                    "through learn.extras[StateKey(...)])"
                ) from None

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
