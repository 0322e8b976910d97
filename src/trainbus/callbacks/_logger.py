"""The logger interface: what a fit sends to an experiment tracker, and when."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Final, TypeAlias, cast

import torch
from typing_extensions import override

from .._callback import Callback
from .._checks import checked_int
from .._events import Event
from .._hooks import SubscriberClasses
from ._core import Recorder
from ._schedule import momentum_key

__all__ = ["HParam", "Logger"]

HParam: TypeAlias = bool | int | float | str
"""A hyper-parameter's value, as every tracker can store it."""

STEP_LOSS: Final = "step/train_loss"
STEP_LR: Final = "step/lr"
STEP_MOM: Final = "step/mom"

# Per-step values sent together: floats, or tensors (a tensor lr, a capturable optimizer's).
_Column: TypeAlias = Sequence[float | torch.Tensor]


class Logger(Callback):
    """Base class of loggers: sends a fit's values to a destination (a file, a tracker).

    A subclass writes :meth:`log_metrics` (and, as needed, :meth:`log_hparams`,
    :meth:`start`, :meth:`flush` and :meth:`close`); this class decides what is sent and
    when:

    * at ``begin_fit``: :meth:`start`, then :meth:`log_hparams` with
      :meth:`collect_hparams` (the optimizer's hyper-parameters, ``n_epoch``, names of the
      model, optimizer and loss, the batch size, and the logger's ``hparams``);
    * after each epoch: the Recorder's row (``train_loss``, ``valid_loss``, each metric)
      and ``time`` (the epoch's seconds), with ``step`` the epoch (0-based, within the
      fit); ``nan`` where there was nothing to average;
    * with ``every_n_steps`` set: every training step's ``step/train_loss``, ``step/lr``
      and ``step/mom`` (the first param group's momentum, or first beta; absent when the
      optimizer has neither), with ``step`` the index of the Recorder's loss. They are
      sent every ``every_n_steps`` recorded steps (the rest at the end of the fit), the
      losses read from the device in one transfer each time: no host sync on the other
      steps. A fit resumed from a :class:`Checkpoint` sends the steps the interrupted one
      had not sent;
    * :meth:`close` once, however the fit ends (``error`` is ``None`` unless an exception
      is ending it).

    Loggers run after the :class:`Recorder` (whose values they send), on rank 0 only in a
    distributed fit, and not during ``lr_find``, ``validate``, ``get_preds`` or
    ``predict``. Each fit is one run: steps and epochs count from 0, as the Recorder's.

    Example:
        >>> class PrintLogger(Logger):
        ...     def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        ...         print(step, dict(metrics))

    Attributes:
        every_n_steps: Send per-step values every this many training steps; ``None``: send
            only per-epoch values.
        hparams: Hyper-parameters of the user's own to log with the collected ones (they
            win on a clash of names).
    """

    run_after: ClassVar[SubscriberClasses] = Recorder
    run_in_auxiliary: ClassVar[bool] = False
    rank_zero_only: ClassVar[bool] = True

    # Class-level defaults: a subclass's __init__ need not call super().__init__().
    every_n_steps: int | None = None
    hparams: Mapping[str, HParam] = {}

    # Per fit: whether a run is open, the recorded steps seen and sent, their momentums,
    # and where the step hook is subscribed.
    _running: bool = False
    _n_seen: int = 0
    _n_sent: int = 0
    _moms: list[float | torch.Tensor]
    _mom_key: tuple[str, bool] | None  # (param group key, whether it is a tuple of betas)
    _step_hook: Callable[[], None] | None = None
    _error: BaseException | None = None  # the exception ending the fit, until teardown

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Send ``metrics`` (name to value) at ``step``: the destination's one must-have."""
        raise NotImplementedError(f"{type(self).__qualname__} must define log_metrics")

    def log_hparams(self, hparams: Mapping[str, HParam]) -> None:
        """Send the fit's hyper-parameters (at begin_fit, after :meth:`start`)."""

    def start(self) -> None:
        """Open the destination for a fit (at begin_fit)."""

    def flush(self) -> None:
        """Deliver what was sent so far: called after each epoch's and each group of steps'
        :meth:`log_metrics` calls (a destination may buffer them until then)."""

    def close(self, error: BaseException | None) -> None:
        """Release the destination: called once per fit, however it ends.

        Args:
            error: The exception ending the fit, ``None`` when it ended normally (or by a
                cancel signal).
        """

    def collect_hparams(self) -> dict[str, HParam]:
        """What :meth:`log_hparams` gets at begin_fit."""
        state = self.learn.state
        found: dict[str, HParam] = {
            "n_epoch": state.n_epoch,
            "model": type(state.model).__qualname__,
            "opt": type(state.opt).__qualname__,
            "loss_func": _name(state.loss_func),
        }
        for source in ("batch_size", "bs"):  # torch DataLoader's, trainbus TensorBatches'
            bs = getattr(state.dls.train, source, None)
            if isinstance(bs, int):
                found["bs"] = bs
                break
        for key, value in state.opt.param_groups[0].items():
            if key == "params":
                continue
            if isinstance(value, tuple):
                items: tuple[object, ...] = value  # pyright: ignore[reportUnknownVariableType]
                for i, item in enumerate(items):
                    _put(found, f"{key}_{i}", item)
            else:
                _put(found, key, value)
        found.update(self.hparams)
        return found

    @override
    def state_dict(self) -> dict[str, Any]:
        """The steps seen and sent so far (for an exact resume)."""
        return {"n_seen": self._n_seen, "n_sent": self._n_sent, "moms": list(self._moms)}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go on from :meth:`state_dict`: the resumed fit sends the steps not sent yet."""
        self._n_seen, self._n_sent = int(state["n_seen"]), int(state["n_sent"])
        self._moms = list(state["moms"])

    @override
    def begin_fit(self) -> None:
        self._end_run(None)  # a previous fit that neither ended nor raised through the bus
        self._error = None
        every = self.every_n_steps
        if every is not None:
            checked_int("every_n_steps", every)
        recorder = self.learn.recorder  # a LookupError names what is missing
        self._n_seen = self._n_sent = len(recorder.lrs)
        self._moms = []
        self._mom_key = momentum_key(self.learn.state.opt.param_groups[0])
        self.start()
        self._running = True
        self.log_hparams(self.collect_hparams())
        if every is not None:
            # Subscribed after the callbacks registered so far (the Recorder among them), so
            # it sees this batch's record; a logger without per-step values costs nothing.
            self._step_hook = self._after_step_recorded
            self.learn.bus.subscribe(Event.after_batch, self._step_hook)

    def _after_step_recorded(self) -> None:
        # Runs for every batch: list lengths and a dict read, no device work.
        n = len(self.learn.recorder.lrs)
        if n == self._n_seen:  # a validation batch, or a training batch not recorded
            return
        self._n_seen = n
        key = self._mom_key
        if key is not None:
            mom = self.learn.state.opt.param_groups[0][key[0]]
            self._moms.append(mom[0] if key[1] else mom)
        every = self.every_n_steps
        if every is not None and n - self._n_sent >= every:
            self._send_steps()

    def _send_steps(self) -> None:
        """Send the steps recorded since the last send, with one read from the device."""
        recorder = self.learn.recorder
        first, last = self._n_sent, len(recorder.lrs)
        if last == first:
            return
        columns: list[_Column] = [recorder.lrs[first:last]]
        names = [STEP_LR]
        if self._mom_key is not None:
            columns.append(self._moms)
            names.append(STEP_MOM)
        losses = recorder.last_losses(last - first)
        host = _to_host(losses, columns)
        self._n_sent, self._moms = last, []
        for i, row in enumerate(zip(*host, strict=True)):
            self.log_metrics(dict(zip([STEP_LOSS, *names], row, strict=True)), first + i)
        self.flush()

    @override
    def after_epoch(self) -> None:
        if not self._running:
            return
        recorder = self.learn.recorder
        values = dict(zip(recorder.metric_names, recorder.values[-1], strict=True))
        values["time"] = recorder.times[-1]
        self.log_metrics(values, self.epoch)
        self.flush()

    @override
    def after_fit(self) -> None:
        if self._running and self.every_n_steps is not None:
            self._send_steps()

    @override
    def on_exception(self, error: BaseException) -> None:
        self._error = error  # for close, in teardown

    @override
    def teardown(self) -> None:
        error, self._error = self._error, None
        self._end_run(error)

    def _end_run(self, error: BaseException | None) -> None:
        hook, self._step_hook = self._step_hook, None
        if hook is not None:
            self.learn.bus.unsubscribe(Event.after_batch, hook)
        if self._running:
            self._running = False
            self.close(error)


def _name(value: object) -> str:
    return str(getattr(value, "__qualname__", None) or type(value).__qualname__)


def _put(found: dict[str, HParam], key: str, value: object) -> None:
    """Keep ``value`` when a tracker can store it (a tensor as its float)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool | int | str) or (isinstance(value, float) and math.isfinite(value)):
        found[key] = value


def _to_host(losses: torch.Tensor, columns: Sequence[_Column]) -> list[list[float]]:
    """``losses`` and ``columns`` (floats, or tensors as a tensor lr may be) as floats.

    Every tensor among them is read in the same transfer as the losses.
    """
    on_device = [losses.float()]
    has_tensors = [any(isinstance(v, torch.Tensor) for v in column) for column in columns]
    for column, tensors in zip(columns, has_tensors, strict=True):
        if tensors:
            values = [torch.as_tensor(v, dtype=torch.float32, device=losses.device) for v in column]
            on_device.append(torch.stack([v.reshape(()) for v in values]))
    # torch types tolist() as list[Any]: a 2-D float tensor gives lists of floats.
    read = cast("list[list[float]]", torch.stack(on_device).tolist())  # pyright: ignore[reportUnknownMemberType]
    rows = iter(read)
    host = [next(rows)]
    for column, tensors in zip(columns, has_tensors, strict=True):
        host.append(next(rows) if tensors else [float(v) for v in column])
    return host
