"""Per-epoch values written to a CSV file as the fit goes."""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from typing_extensions import override

from ._logger import Logger

if TYPE_CHECKING:
    from io import TextIOWrapper

__all__ = ["CSVLogger"]


class CSVLogger(Logger):
    """Writes one row per epoch: ``epoch``, the Recorder's columns, ``time``.

    A :class:`Logger` of per-epoch values only.

    The columns are ``epoch`` (0-based, within the fit), ``train_loss``,
    ``valid_loss``, one per metric, and ``time`` (the epoch's seconds). Numbers are
    written in full precision (``repr``), so they parse back to the recorded floats; a
    missing value (no validation batches) is ``nan``. The row is flushed at the end of
    every epoch, so the file can be read while the fit runs; the file is closed when the
    fit ends, however it ends. On many processes only rank 0 writes (the rows are the
    same on every rank).

    Args:
        fname: The CSV file (parent directories are created).
        append: Keep the rows already in the file and add to them; the header is
            written only when the file is new or empty.

    Raises:
        ValueError: At begin_fit with ``append``, the file's header names other columns
            than this fit's.
    """

    def __init__(self, fname: str | os.PathLike[str] = "history.csv", append: bool = False) -> None:
        self.fname: Path = Path(fname)
        self.append = append
        self._file: TextIOWrapper | None = None
        self._writer: csv.DictWriter[str] | None = None
        self._start = 0  # where this fit's rows start in the file

    @property
    def columns(self) -> list[str]:
        """The header of the file for this learner."""
        return ["epoch", *self.learn.recorder.metric_names, "time"]

    @override
    def start(self) -> None:
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
        self._start = path.stat().st_size if self.append and path.exists() else 0
        self._file = path.open("a" if self.append else "w", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, fieldnames=columns)
        if write_header:
            self._writer.writeheader()
            self._file.flush()

    @override
    def state_dict(self) -> dict[str, Any]:
        """The Logger's counters, where this fit's rows start in the file, and their text."""
        text = ""
        if self._file is not None:
            self._file.flush()
            with self.fname.open("rb") as file:
                file.seek(self._start)
                text = file.read().decode("utf-8")
        return {**super().state_dict(), "start": self._start, "text": text}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Cut the file back to the checkpoint's rows: later ones are written again."""
        super().load_state_dict(state)
        file = self._file
        if file is None:
            return
        self._start = int(state["start"])
        file.flush()
        file.truncate(self._start)
        file.seek(0, os.SEEK_END)
        file.write(str(state["text"]))
        file.flush()

    @override
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        if self._file is None or self._writer is None:
            return
        self._writer.writerow({"epoch": str(step), **{k: repr(v) for k, v in metrics.items()}})
        self._file.flush()

    @override
    def close(self, error: BaseException | None) -> None:
        file, self._file, self._writer = self._file, None, None
        if file is not None:
            file.close()
