"""Per-epoch values written to a CSV file as the fit goes."""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from typing_extensions import override

from .._callback import Callback
from .._hooks import SubscriberClasses
from ._core import Recorder

if TYPE_CHECKING:
    from io import TextIOWrapper

__all__ = ["CSVLogger"]


class CSVLogger(Callback):
    """Writes one row per epoch: ``epoch``, the Recorder's columns, ``time``.

    The columns are ``epoch`` (0-based, within the fit), ``train_loss``,
    ``valid_loss``, one per metric, and ``time`` (the epoch's seconds). Numbers are
    written in full precision (``repr``), so they parse back to the recorded floats; a
    missing value (no validation batches) is ``nan``. The row is flushed at the end of
    every epoch, so the file can be read while the fit runs; the file is closed when the
    fit ends, however it ends.

    Args:
        fname: The CSV file (parent directories are created).
        append: Keep the rows already in the file and add to them; the header is
            written only when the file is new or empty.

    Raises:
        ValueError: At begin_fit with ``append``, the file's header names other columns
            than this fit's.
    """

    run_after: ClassVar[SubscriberClasses] = Recorder
    run_in_auxiliary: ClassVar[bool] = False  # lr_find, validate, ...: detached

    def __init__(self, fname: str | os.PathLike[str] = "history.csv", append: bool = False) -> None:
        self.fname: Path = Path(fname)
        self.append = append
        self._file: TextIOWrapper | None = None
        self._writer: csv.DictWriter[str] | None = None

    @property
    def columns(self) -> list[str]:
        """The header of the file for this learner."""
        return ["epoch", *self.learn.recorder.metric_names, "time"]

    @override
    def begin_fit(self) -> None:
        self._close()  # a previous fit that neither ended nor raised through the bus
        columns = self.columns
        path = self.fname
        path.parent.mkdir(parents=True, exist_ok=True)
        write_header = True
        if self.append and path.exists() and path.stat().st_size > 0:
            with path.open(newline="", encoding="utf-8") as existing:
                no_header: list[str] = []
                header = next(csv.reader(existing), no_header)
            if header != columns:
                raise ValueError(
                    f"CSVLogger cannot append to {path}: its header {header} differs from "
                    f"this fit's columns {columns}; use another file or append=False"
                )
            write_header = False
        self._file = path.open("a" if self.append else "w", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=columns)
        if write_header:
            self._writer.writeheader()
            self._file.flush()

    @override
    def after_epoch(self) -> None:
        if self._file is None or self._writer is None:
            return
        recorder = self.learn.recorder
        values = dict(zip(recorder.metric_names, recorder.values[-1], strict=True))
        row = {"epoch": str(self.epoch), **{k: repr(v) for k, v in values.items()}}
        row["time"] = repr(recorder.times[-1])
        self._writer.writerow(row)
        self._file.flush()

    @override
    def teardown(self) -> None:
        self._close()

    def _close(self) -> None:
        file, self._file, self._writer = self._file, None, None
        if file is not None:
            file.close()
