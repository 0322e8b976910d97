"""A fit's values as TensorBoard event files (``pip install "trainbus[tensorboard]"``)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from typing_extensions import override

from .._checks import checked_int
from ._logger import HParam, Logger

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

__all__ = ["TensorBoardLogger"]


def _summary_writer(log_dir: Path) -> SummaryWriter:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:  # torch's writer needs the tensorboard package
        raise ImportError(
            'TensorBoardLogger needs the tensorboard package: pip install "trainbus[tensorboard]"'
        ) from error
    return SummaryWriter(log_dir=str(log_dir))


class TensorBoardLogger(Logger):
    """Writes the fit's values to TensorBoard event files in ``log_dir``.

    Scalars: per epoch ``train_loss``, ``valid_loss``, each metric and ``time`` (x axis:
    the epoch); per training step ``step/train_loss``, ``step/lr`` and ``step/mom`` (x
    axis: the step), sent every ``every_n_steps`` steps with one read from the device.
    Hyper-parameters go to TensorBoard's HPARAMS tab, with the per-epoch scalars as its
    metrics. Each fit writes a new event file; the writer is closed however the fit
    ends. See it with ``tensorboard --logdir LOG_DIR``.

    Args:
        log_dir: The folder of the event files (created if missing).
        every_n_steps: How often per-step values are sent; ``None``: per-epoch only.
        hparams: Hyper-parameters of your own to log with the collected ones.

    Raises:
        ImportError: At the first fit, when tensorboard is not installed.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike[str] = "runs",
        every_n_steps: int | None = 50,
        hparams: Mapping[str, HParam] | None = None,
    ) -> None:
        self.log_dir: Path = Path(log_dir)
        self.every_n_steps: int | None = (
            None if every_n_steps is None else checked_int("every_n_steps", every_n_steps)
        )
        self.hparams: Mapping[str, HParam] = dict(hparams or {})
        self._writer: SummaryWriter | None = None

    @override
    def start(self) -> None:
        self._writer = _summary_writer(self.log_dir)

    @override
    def log_hparams(self, hparams: Mapping[str, HParam]) -> None:
        # torch leaves the summary functions unannotated.
        from torch.utils.tensorboard.summary import (
            hparams as hparams_summaries,  # pyright: ignore[reportUnknownVariableType]
        )

        writer = self._open_writer()
        metrics = {name: 0.0 for name in (*self.learn.recorder.metric_names, "time")}
        # The three summaries SummaryWriter.add_hparams writes, but in this run's own
        # folder (add_hparams makes a sub-folder run, apart from the scalars).
        file_writer: Any = writer.file_writer
        summaries = cast("tuple[object, ...]", hparams_summaries(dict(hparams), metrics))
        for summary in summaries:
            file_writer.add_summary(summary)

    @override
    def flush(self) -> None:
        self._open_writer().flush()

    @override
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        writer = self._open_writer()
        for name, value in metrics.items():
            writer.add_scalar(name, value, step)  # pyright: ignore[reportUnknownMemberType]

    @override
    def close(self, error: BaseException | None) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def _open_writer(self) -> SummaryWriter:
        if self._writer is None:
            raise RuntimeError("TensorBoardLogger has no open writer: it logs during a fit")
        return self._writer
