"""The default callbacks TrainEvalCallback and Recorder (ProgressCallback: _progress.py)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, ClassVar, Final, cast, final

import attrs
import torch

from .._callback import Callback
from .._checkpoint import pack_floats, unpack_floats
from .._distributed import reduced_row
from .._events import Event
from .._hooks import SubscriberClasses
from .._metric import metric_name, not_a_tensor
from .._state import UnsetFieldError
from ._rows import (
    MetricSums,
    ValidationLosses,
    add_validation_batch,
    validation_row,
    values_to_host,
)

if TYPE_CHECKING:
    from pathlib import Path


__all__ = ["Recorder", "RecorderSnapshot", "TrainEvalCallback"]

# Recorded per-batch losses are stacked into one tensor every this many batches, so a
# long fit holds a few large tensors rather than one small tensor per batch.
_CHUNK: Final = 256


class TrainEvalCallback(Callback):
    """Switches the model between train and eval mode and keeps the progress counters.

    Keeps ``training``, ``train_iter`` (training batches done since begin_fit) and
    ``pct_train`` (0.0 at the start of the fit, 1.0 after its last training batch).
    """

    # Runs before every other callback in each event: any callback may read `training`
    # or `pct_train`, and must see this event's values.
    order = -100

    # Kept for the per-batch hook: the state's field dict (at begin_fit), and (at
    # begin_train) the training batches done in the fit after this epoch's first one and
    # in the whole fit: pct_train = (epoch * n_iter + iter + 1) / (n_epoch * n_iter).
    _fields: dict[str, Any]
    _done_after_first: int
    _total: int

    def begin_fit(self) -> None:
        state = self.learn.state
        self._fields = state.trusted_values
        state.set_trusted("train_iter", 0)
        state.set_trusted("pct_train", 0.0)
        state.set_trusted("training", False)

    def begin_train(self) -> None:
        state = self.learn.state
        state.model.train()
        state.set_trusted("training", True)
        state.set_trusted("pct_train", state.epoch / state.n_epoch)
        self._done_after_first = state.epoch * state.n_iter + 1
        self._total = state.n_epoch * state.n_iter

    def after_batch(self) -> None:
        # Runs for every batch: plain dict reads and trusted writes, no method calls.
        values = self._fields
        if values["training"]:
            values["train_iter"] += 1
            values["pct_train"] = (self._done_after_first + values["iter"]) / self._total

    def begin_validate(self) -> None:
        state = self.learn.state
        self._fields = state.trusted_values  # also for a validate run outside a fit
        state.model.eval()
        state.set_trusted("training", False)


@final
@attrs.frozen(eq=False)
class RecorderSnapshot:
    """The records of a :class:`Recorder` at one moment (``Recorder.snapshot()``).

    Attributes:
        attributes: The Recorder's attributes, lists copied.
    """

    attributes: dict[str, object]


@attrs.frozen
class _Epoch:
    """What the Recorder keeps of an epoch until its row of ``values`` is computed."""

    first_loss: int  # index of its first training loss in the loss record
    n_train: int
    valid: ValidationLosses
    metric_sums: MetricSums


# Epochs whose row of `values` may wait for a read: their validation losses and metric
# values stay on the device until then.
_MAX_PENDING: Final = 16

# Cancelling a training batch in these events skips only the step: its loss still counts.
_RECORDED_CANCELS: Final = frozenset({Event.after_backward, Event.after_step})


class Recorder(Callback):
    """Records losses, learning rates and per-epoch values, without per-batch host syncs.

    Per training batch it keeps the loss (a device tensor) and the learning rate; per
    epoch the mean training loss, the validation loss and every metric (averaged over
    the validation set, weighted by batch size) and the epoch's duration. Values reach
    the host only when asked for (``losses``, ``values``): the per-epoch rows are computed
    when ``values`` is read, every row not yet read in one transfer. On many processes
    each epoch's row is reduced over the ranks in ``after_epoch`` (one all-reduce of sums
    and counts), so every rank holds the same ``values``; ``losses`` stay this rank's. A batch ended
    by ``CancelBatchException`` is not recorded, unless it was cancelled after its
    backward pass (``after_backward``/``after_step``, as gradient accumulation does): its
    loss was trained on. It publishes ``smooth_loss``, the
    debiased exponential average of the training loss, computed when read.

    Args:
        beta: Smoothing factor of ``smooth_loss``.
    """

    run_after: ClassVar[SubscriberClasses] = TrainEvalCallback
    # Its records are the fit's: validate() computes its values with the same functions.
    run_in_auxiliary: ClassVar[bool] = False

    def __init__(self, beta: float = 0.98) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta!r}")
        self.beta: float = beta
        self.lrs: list[float] = []
        self.times: list[float] = []
        self._rows: list[list[float]] = []  # values, as far as computed
        self._pending: list[_Epoch] = []  # epochs whose row is not computed yet
        # Training losses: 1-D chunks, then the latest ones as 0-d tensors.
        self._chunks: list[torch.Tensor] = []
        self._recent: list[torch.Tensor] = []
        self._n_chunked = 0  # losses in _chunks
        self._ema: torch.Tensor | None = None
        self._ema_count = 0  # losses folded into _ema
        self._smooth: torch.Tensor | None = None  # the debiased _ema, once computed
        self._valid: ValidationLosses = []
        self._metric_sums: MetricSums = []
        self._epoch_first_loss = 0
        self._epoch_start = 0.0
        self._cancelled = False

    # The state's field dict, kept at begin_fit: the per-batch hook reads it directly.
    _fields: dict[str, Any]

    @property
    def metric_names(self) -> list[str]:
        """Names of the columns of :attr:`values`."""
        return ["train_loss", "valid_loss", *map(metric_name, self.learn.metrics)]

    @property
    def losses(self) -> list[float]:
        """The loss of every recorded training batch of the last fit (one host transfer)."""
        # torch types tolist() as list[Any]: a 1-D float tensor gives floats.
        return cast("list[float]", self.loss_tensor().tolist())  # pyright: ignore[reportUnknownMemberType]

    def loss_tensor(self) -> torch.Tensor:
        """The recorded training losses as one 1-D tensor, on the device they were on."""
        self._flush()
        if not self._chunks:
            return torch.zeros(0)
        if len(self._chunks) > 1:
            self._chunks = [torch.cat(self._chunks)]
        return self._chunks[0]

    def snapshot(self) -> RecorderSnapshot:
        """What the Recorder holds now, for :meth:`restore` (taken between fits).

        ``learn.lr_find()`` uses it to leave the previous fit's records in place.
        """
        attributes = {name: _copied(value) for name, value in vars(self).items()}
        attributes.pop("_learner", None)  # the attachment is not a record
        return RecorderSnapshot(attributes)

    def restore(self, snapshot: RecorderSnapshot) -> None:
        """Put back what :meth:`snapshot` saved: the records of the fit before it."""
        for name, value in snapshot.attributes.items():
            setattr(self, name, _copied(value))

    def begin_fit(self) -> None:
        state = self.learn.state
        self._fields = state.trusted_values
        self.lrs, self.times, self._rows, self._pending = [], [], [], []
        self._chunks, self._recent, self._n_chunked = [], [], 0
        self._ema, self._ema_count, self._smooth = None, 0, None
        self._cancelled = False
        state.provide("smooth_loss", self._smooth_loss)

    def state_dict(self) -> dict[str, Any]:
        """The records so far (tensors stay on their device), for an exact resume.

        The rows of ``values`` not read yet are computed first (as reading them would), so
        that the record is a few tensors whatever the length of the fit.
        """
        self._compute_rows()
        losses = [*self._chunks, torch.stack(self._recent)] if self._recent else self._chunks
        return {
            "losses": torch.cat(losses) if losses else None,
            "lrs": pack_floats(self.lrs),
            "times": pack_floats(self.times),
            "rows": pack_floats([value for row in self._rows for value in row]),
            "row_length": len(self._rows[0]) if self._rows else 0,
            "pending": [
                {
                    "first_loss": epoch.first_loss,
                    "n_train": epoch.n_train,
                    "valid": _pack_pairs(epoch.valid),
                    "metric_sums": [_pack_pairs(sums) for sums in epoch.metric_sums],
                }
                for epoch in self._pending
            ],
            "ema": self._ema,
            "ema_count": self._ema_count,
            "valid": _pack_pairs(self._valid),
            "metric_sums": [_pack_pairs(sums) for sums in self._metric_sums],
            "epoch_first_loss": self._epoch_first_loss,
            "epoch_elapsed": time.perf_counter() - self._epoch_start,
            "cancelled": self._cancelled,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`'s records, their tensors on the learner's device."""
        device = self.learn.device

        def moved(packed: dict[str, Any]) -> list[tuple[torch.Tensor, int]]:
            return _unpack_pairs(packed, device)

        losses: torch.Tensor | None = state["losses"]
        self._chunks = [] if losses is None else [losses.to(device)]
        self._recent, self._n_chunked = [], 0 if losses is None else losses.shape[0]
        self.lrs, self.times = unpack_floats(state["lrs"]), unpack_floats(state["times"])
        cells, width = unpack_floats(state["rows"]), int(state["row_length"])
        self._rows = [cells[i : i + width] for i in range(0, len(cells), width)] if width else []
        self._pending = [
            _Epoch(
                e["first_loss"],
                e["n_train"],
                moved(e["valid"]),
                [moved(m) for m in e["metric_sums"]],
            )
            for e in state["pending"]
        ]
        ema: torch.Tensor | None = state["ema"]
        self._ema = None if ema is None else ema.to(device)
        self._ema_count = int(state["ema_count"])
        self._smooth = None
        self._valid = moved(state["valid"])
        self._metric_sums = [moved(sums) for sums in state["metric_sums"]]
        self._epoch_first_loss = state["epoch_first_loss"]
        self._epoch_start = time.perf_counter() - state["epoch_elapsed"]
        self._cancelled = state["cancelled"]

    def begin_epoch(self) -> None:
        self._epoch_first_loss = self._n_losses
        self._epoch_start = time.perf_counter()
        self._valid = []
        self._metric_sums = [[] for _ in self.learn.metrics]

    def after_cancel_batch(self) -> None:
        # A batch cancelled after its backward pass (gradient accumulation) trained the
        # model with its loss: it is recorded. One cancelled earlier is not. The flag is
        # reset by the after_batch that always follows (rather than in begin_batch: a hook
        # that runs for every batch).
        self._cancelled = self.learn.bus.cancelled_in not in _RECORDED_CANCELS

    def after_batch(self) -> None:
        if self._cancelled:
            self._cancelled = False
            return
        # Runs for every batch: fields are read from the state's field dict (cheaper than
        # attribute reads on a pydantic model), and nothing is read from the device. `.data`
        # is the loss without its graph, like detach() but without a dispatched operation
        # (it is never written to, so detach's shared version counter is not needed).
        values = self._fields
        try:
            loss = values["loss"].data
        except KeyError:  # not a batch of the Learner's: let the state say what is missing
            loss = self.learn.state.loss.data
        except AttributeError:
            raise not_a_tensor("loss", values["loss"]) from None
        if values["training"]:
            recent = self._recent
            recent.append(loss)
            if len(recent) == _CHUNK:
                self._flush()
            self.lrs.append(values["opt"].param_groups[0]["lr"])
        else:
            add_validation_batch(self.learn, loss, self._valid, self._metric_sums)

    def after_epoch(self) -> None:
        # No tensor work here: the row is computed when `values` is read.
        first = self._epoch_first_loss
        n_train = self._n_losses - first
        if self.learn.world_size > 1:  # every rank's row: the reduction of all their values
            self._compute_rows()
            losses = self.loss_tensor()[first : first + n_train]
            self._rows.append(reduced_row(losses, self._valid, self._metric_sums))
        else:
            self._pending.append(_Epoch(first, n_train, self._valid, self._metric_sums))
        self._valid, self._metric_sums = [], []  # the record owns them now
        self.times.append(time.perf_counter() - self._epoch_start)
        if len(self._pending) == _MAX_PENDING:  # bounds what unread rows hold on the device
            self._compute_rows()

    @property
    def values(self) -> list[list[float]]:
        """Per epoch: ``train_loss``, ``valid_loss``, then each metric (see ``metric_names``).

        ``nan`` where there was nothing to average. Rows not read yet are computed now,
        with one transfer from the device for all of them.
        """
        self._compute_rows()
        return self._rows

    def _compute_rows(self) -> None:
        """Append the rows of the epochs in ``_pending`` to ``_rows``."""
        if self._pending:
            losses = self.loss_tensor()
            rows: list[list[torch.Tensor | None]] = []
            for epoch in self._pending:
                first, n = epoch.first_loss, epoch.n_train
                row = [losses[first : first + n].mean(dtype=torch.float32) if n else None]
                rows.append(row + validation_row(epoch.valid, epoch.metric_sums))
            self._pending = []
            self._rows.extend(values_to_host(rows))

    @property
    def _n_losses(self) -> int:
        return self._n_chunked + len(self._recent)

    def _flush(self) -> None:
        """Stack the 0-d losses of ``_recent`` into one chunk."""
        if self._recent:
            self._chunks.append(torch.stack(self._recent))
            self._n_chunked += len(self._recent)
            self._recent = []

    def last_losses(self, n: int) -> torch.Tensor:
        """The last ``n`` (>= 1) recorded training losses, as one 1-D tensor on their device.

        Nothing is read back to the host: loggers stack the recent losses with this and
        read them in one transfer.
        """
        parts: list[torch.Tensor] = []
        if self._recent:
            latest = self._recent[-n:]
            parts.append(torch.stack(latest))
            n -= len(latest)
        for chunk in reversed(self._chunks):
            if n <= 0:
                break
            size = chunk.shape[0]
            parts.append(chunk if size <= n else chunk[-n:])
            n -= size
        return parts[0] if len(parts) == 1 else torch.cat(parts[::-1])

    def _smooth_loss(self) -> torch.Tensor:
        k = self._n_losses - self._ema_count  # losses recorded since the last read
        if k:
            values = self.last_losses(k).float()
            beta = self.beta
            powers = torch.arange(k - 1, -1, -1, dtype=values.dtype, device=values.device)
            folded = (1 - beta) * (beta**powers * values).sum()
            self._ema = folded if self._ema is None else folded + beta**k * self._ema
            self._ema_count += k
            self._smooth = None
        if self._smooth is None:
            if self._ema is None:
                raise UnsetFieldError(
                    "smooth_loss has no value yet: it is set from the first recorded training "
                    "batch on (a batch cancelled before its backward pass is not recorded)"
                )
            self._smooth = self._ema / (1 - self.beta**self._ema_count)
        return self._smooth

    def plot_loss(self, path: str | Path, *, skip_start: int = 0, with_valid: bool = True) -> None:
        """Write the training loss per batch (and validation loss per epoch) to a PNG."""
        from ._plots import plot_losses

        plot_losses(self, path, skip_start=skip_start, with_valid=with_valid)


def _pack_pairs(items: list[tuple[torch.Tensor, int]]) -> dict[str, Any]:
    """``(value, batch size)`` pairs as one stacked tensor and a list of sizes, for saving."""
    values = [value for value, _ in items]
    try:
        stacked = torch.stack(values) if values else None
    except RuntimeError:  # values of several shapes or devices: kept as they are
        return {"pairs": list(items)}
    return {"values": stacked, "sizes": [n for _, n in items]}


def _unpack_pairs(packed: dict[str, Any], device: torch.device) -> list[tuple[torch.Tensor, int]]:
    """The pairs :func:`_pack_pairs` packed, their values on ``device``."""
    if "pairs" in packed:
        return [(value.to(device), n) for value, n in packed["pairs"]]
    values: torch.Tensor | None = packed["values"]
    if values is None:
        return []
    return list(zip(values.to(device).unbind(), packed["sizes"], strict=True))


def _copied(value: object) -> object:
    """``value``, or a copy of it when it is a list: records grow in place."""
    return list(cast("list[object]", value)) if isinstance(value, list) else value
