"""ProgressCallback: progress bars and a table of per-epoch values, in a terminal."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TextIO

from tqdm import tqdm

from .._callback import Callback
from .._events import Event
from .._hooks import SubscriberClasses
from .._state import UnsetFieldError
from ._core import Recorder

if TYPE_CHECKING:
    from .._bus import EventBus

__all__ = ["ProgressCallback"]


def _interactive(stream: TextIO) -> bool:
    if "ipykernel" in sys.modules:
        return True
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class ProgressCallback(Callback):
    """Progress bars for epochs and batches, and a table of per-epoch values.

    Shows only in a terminal or notebook (otherwise it is silent), on rank 0 only when
    training on many processes, and closes its bars
    however the fit ends. The batch bar shows the smooth loss, read from the device only
    when the bar refreshes. It advances the bar from a function it subscribes to
    ``after_batch`` for the fits it shows, so a silent one costs nothing per batch.

    Args:
        show: Show bars: ``None`` (default) decides by whether stderr is a terminal.
        table: Print a row of values after each epoch: ``None`` follows ``show``.
    """

    run_after: ClassVar[SubscriberClasses] = Recorder
    rank_zero_only: ClassVar[bool] = True

    def __init__(self, show: bool | None = None, table: bool | None = None) -> None:
        self.show = show
        self.table = table
        self._active = False
        self._epoch_bar: tqdm[Any] | None = None
        self._batch_bar: tqdm[Any] | None = None
        self._printed_header = False
        self._running = False  # between the start of a run and its teardown
        # Where _advance_bar is subscribed, and the bound method subscribed (the one to
        # unsubscribe: each attribute read makes a new bound method).
        self._subscribed: tuple[EventBus, Callable[[], None]] | None = None

    def begin_fit(self) -> None:
        self._start()
        self._printed_header = False
        if self._active:
            self._epoch_bar = tqdm(total=self.n_epoch, desc="epoch", unit="epoch", leave=False)

    def _start(self) -> None:
        """Decide whether this run shows, and if so subscribe the bar's advance."""
        self._active = _interactive(sys.stderr) if self.show is None else self.show
        self._running = True
        if self._active:
            # Subscribed after the callbacks registered so far (the Recorder among them),
            # it sees the smooth loss with this batch's loss folded in.
            bus, hook = self.learn.bus, self._advance_bar
            bus.subscribe(Event.after_batch, hook)
            self._subscribed = (bus, hook)

    def begin_train(self) -> None:
        self._open_batch_bar("train")

    def begin_validate(self) -> None:
        if not self._running:  # a validate stage of its own: learn.validate(), get_preds()
            self._start()
        self._open_batch_bar("valid")

    def _open_batch_bar(self, desc: str) -> None:
        self._close_batch_bar()
        if self._active:
            self._batch_bar = tqdm(total=self.n_iter, desc=desc, leave=False, unit="batch")

    def _advance_bar(self) -> None:
        bar = self._batch_bar
        if bar is not None and bar.update(1) and self.training:
            try:
                smooth_loss = self.smooth_loss
            except UnsetFieldError:  # every batch so far was cancelled before its backward pass
                return
            # types-tqdm leaves set_postfix's **kwargs untyped.
            bar.set_postfix(loss=f"{smooth_loss.item():.4f}", refresh=False)  # pyright: ignore[reportUnknownMemberType]

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

    def teardown(self) -> None:
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
        self._running = False
        self._close_batch_bar()
        if self._epoch_bar is not None:
            self._epoch_bar.close()
            self._epoch_bar = None
        if self._subscribed is not None:
            bus, hook = self._subscribed
            self._subscribed = None
            bus.unsubscribe(Event.after_batch, hook)

    @property
    def bars_open(self) -> bool:
        """Whether a progress bar is open (false whenever no fit is running)."""
        return self._epoch_bar is not None or self._batch_bar is not None


def _row(cells: Sequence[str]) -> str:
    return "  ".join(f"{cell:<11}" for cell in cells).rstrip()


def _format_time(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"
