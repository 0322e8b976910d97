"""The default callbacks: TrainEvalCallback, Recorder, ProgressCallback."""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Final, TextIO

import torch
from tqdm import tqdm

from .._callback import Callback

if TYPE_CHECKING:
    from pathlib import Path

__all__ = ["ProgressCallback", "Recorder", "TrainEvalCallback"]

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

    def begin_fit(self) -> None:
        state = self.learn.state
        state.set_trusted("train_iter", 0)
        state.set_trusted("pct_train", 0.0)

    def begin_train(self) -> None:
        state = self.learn.state
        state.model.train()
        state.set_trusted("training", True)
        state.set_trusted("pct_train", state.epoch / state.n_epoch)

    def after_batch(self) -> None:
        state = self.learn.state
        if state.training:
            state.set_trusted("train_iter", state.train_iter + 1)
            done = state.epoch * state.n_iter + state.iter + 1
            state.set_trusted("pct_train", done / (state.n_epoch * state.n_iter))

    def begin_validate(self) -> None:
        state = self.learn.state
        state.model.eval()
        state.set_trusted("training", False)


class Recorder(Callback):
    """Records losses, learning rates and per-epoch values, without per-batch host syncs.

    Per training batch it keeps the loss (a device tensor) and the learning rate; per
    epoch the mean training loss, the validation loss and every metric (averaged over
    the validation set, weighted by batch size) and the epoch's duration. Values reach
    the host only when asked for (``losses``, ``values``) or at epoch end. Batches ended
    by ``CancelBatchException`` are not recorded. It publishes ``smooth_loss``, the
    debiased exponential average of the training loss, computed when first read.

    Args:
        beta: Smoothing factor of ``smooth_loss``.
    """

    run_after = TrainEvalCallback

    def __init__(self, beta: float = 0.98) -> None:
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {beta!r}")
        self.beta = beta
        self.lrs: list[float] = []
        self.values: list[list[float]] = []
        self.times: list[float] = []
        self._chunks: list[torch.Tensor] = []
        self._recent: list[torch.Tensor] = []
        self._n_losses = 0
        self._pending: list[torch.Tensor] = []  # losses not folded into the average yet
        self._ema: torch.Tensor | None = None
        self._ema_count = 0
        self._valid: list[tuple[torch.Tensor, int]] = []
        self._metric_sums: list[list[tuple[torch.Tensor, int]]] = []
        self._epoch_first_loss = 0
        self._epoch_start = 0.0
        self._cancelled = False

    @property
    def metric_names(self) -> list[str]:
        """Names of the columns of :attr:`values`."""
        names = [getattr(m, "__name__", type(m).__name__) for m in self.learn.metrics]
        return ["train_loss", "valid_loss", *names]

    @property
    def losses(self) -> list[float]:
        """The loss of every recorded training batch of the last fit (one host transfer)."""
        return self.loss_tensor().tolist()

    def loss_tensor(self) -> torch.Tensor:
        """The recorded training losses as one 1-D tensor, on the device they were on."""
        if self._recent:
            self._chunks.append(torch.stack(self._recent))
            self._recent = []
        if not self._chunks:
            return torch.zeros(0)
        if len(self._chunks) > 1:
            self._chunks = [torch.cat(self._chunks)]
        return self._chunks[0]

    def begin_fit(self) -> None:
        self.lrs, self.values, self.times = [], [], []
        self._chunks, self._recent, self._n_losses = [], [], 0
        self._pending, self._ema, self._ema_count = [], None, 0
        self.learn.state.provide("smooth_loss", self._smooth_loss)

    def begin_epoch(self) -> None:
        self._epoch_first_loss = self._n_losses
        self._epoch_start = time.perf_counter()
        self._valid = []
        self._metric_sums = [[] for _ in self.learn.metrics]

    def begin_batch(self) -> None:
        self._cancelled = False

    def after_cancel_batch(self) -> None:
        self._cancelled = True

    def after_batch(self) -> None:
        if self._cancelled:
            return
        state = self.learn.state
        loss = state.loss.detach()
        if state.training:
            self._recent.append(loss)
            self._pending.append(loss)
            self._n_losses += 1
            if len(self._recent) == _CHUNK:
                self._chunks.append(torch.stack(self._recent))
                self._recent = []
            self.lrs.append(state.opt.param_groups[0]["lr"])
            state.invalidate("smooth_loss")
        else:
            bs = len(state.yb[0]) if state.yb else len(state.xb[0])
            self._valid.append((loss, bs))
            pred, target = state.pred.detach(), state.yb
            for sums, metric in zip(self._metric_sums, self.learn.metrics, strict=True):
                sums.append((metric(pred, *target).detach(), bs))

    def after_epoch(self) -> None:
        row = [self._train_mean(), _weighted_mean(self._valid)]
        row += [_weighted_mean(sums) for sums in self._metric_sums]
        on_host = torch.stack([v.float().cpu() for v in row]).tolist()  # one transfer an epoch
        self.values.append(on_host)
        self.times.append(time.perf_counter() - self._epoch_start)

    def _train_mean(self) -> torch.Tensor:
        if self._n_losses == self._epoch_first_loss:
            return torch.tensor(math.nan)
        return self.loss_tensor()[self._epoch_first_loss :].float().mean()

    def _smooth_loss(self) -> torch.Tensor:
        if self._pending:
            values = torch.stack(self._pending).float()
            k, beta = len(self._pending), self.beta
            powers = torch.arange(k - 1, -1, -1, dtype=values.dtype, device=values.device)
            folded = (1 - beta) * (beta**powers * values).sum()
            self._ema = folded if self._ema is None else folded + beta**k * self._ema
            self._ema_count += k
            self._pending = []
        if self._ema is None:
            raise RuntimeError("smooth_loss is available after the first recorded training batch")
        return self._ema / (1 - self.beta**self._ema_count)

    def plot_loss(self, path: str | Path, *, skip_start: int = 0, with_valid: bool = True) -> None:
        """Write the training loss per batch (and validation loss per epoch) to a PNG."""
        from ._plots import plot_losses

        plot_losses(self, path, skip_start=skip_start, with_valid=with_valid)


def _weighted_mean(items: Sequence[tuple[torch.Tensor, int]]) -> torch.Tensor:
    if not items:
        return torch.tensor(math.nan)
    total = sum(n for _, n in items)
    weighted = torch.stack([value.float() * n for value, n in items]).sum()
    return weighted / total


def _interactive(stream: TextIO) -> bool:
    if "ipykernel" in sys.modules:
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class ProgressCallback(Callback):
    """Progress bars for epochs and batches, and a table of per-epoch values.

    Shows only in a terminal or notebook (otherwise it is silent), and closes its bars
    however the fit ends. The batch bar shows the smooth loss, read from the device only
    when the bar refreshes.

    Args:
        show: Show bars: ``None`` (default) decides by whether stderr is a terminal.
        table: Print a row of values after each epoch: ``None`` follows ``show``.
    """

    run_after = Recorder

    def __init__(self, show: bool | None = None, table: bool | None = None) -> None:
        self.show = show
        self.table = table
        self._active = False
        self._epoch_bar: tqdm[Any] | None = None
        self._batch_bar: tqdm[Any] | None = None
        self._printed_header = False

    def begin_fit(self) -> None:
        self._active = _interactive(sys.stderr) if self.show is None else self.show
        self._printed_header = False
        if self._active:
            self._epoch_bar = tqdm(total=self.n_epoch, desc="epoch", unit="epoch", leave=False)

    def begin_train(self) -> None:
        self._open_batch_bar("train")

    def begin_validate(self) -> None:
        self._open_batch_bar("valid")

    def _open_batch_bar(self, desc: str) -> None:
        self._close_batch_bar()
        if self._active:
            self._batch_bar = tqdm(total=self.n_iter, desc=desc, leave=False, unit="batch")

    def after_batch(self) -> None:
        bar = self._batch_bar
        if bar is not None and bar.update(1) and self.training:
            bar.set_postfix(loss=f"{self.smooth_loss.item():.4f}", refresh=False)

    def after_train(self) -> None:
        self._close_batch_bar()

    def after_validate(self) -> None:
        self._close_batch_bar()

    def after_epoch(self) -> None:
        if self._epoch_bar is not None:
            self._epoch_bar.update(1)
        if self.table if self.table is not None else self._active:
            recorder = self.learn.recorder
            if not self._printed_header:
                self._write(_row(["epoch", *recorder.metric_names, "time"]))
                self._printed_header = True
            cells = [f"{v:.6f}" for v in recorder.values[-1]]
            self._write(_row([str(self.epoch), *cells, _format_time(recorder.times[-1])]))

    def after_fit(self) -> None:
        self._close_all()

    def on_exception(self, error: BaseException) -> None:
        self._close_all()

    def _write(self, line: str) -> None:
        if self._epoch_bar is not None:
            tqdm.write(line, file=sys.stdout)
        else:
            print(line, file=sys.stdout, flush=True)

    def _close_batch_bar(self) -> None:
        if self._batch_bar is not None:
            self._batch_bar.close()
            self._batch_bar = None

    def _close_all(self) -> None:
        self._close_batch_bar()
        if self._epoch_bar is not None:
            self._epoch_bar.close()
            self._epoch_bar = None

    @property
    def bars_open(self) -> bool:
        """Whether a progress bar is open (false whenever no fit is running)."""
        return self._epoch_bar is not None or self._batch_bar is not None


def _row(cells: Sequence[str]) -> str:
    return "  ".join(f"{cell:<11}" for cell in cells).rstrip()


def _format_time(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"
