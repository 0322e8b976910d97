"""CSVLogger: one parsed row per epoch, flushed as it goes, appended or not, always closed."""

from __future__ import annotations

import csv
import gc
import math
import os
from pathlib import Path

import pytest
import torch
from typing_extensions import override

from conftest import tiny_dls, tiny_model
from trainbus import Callback, CancelFitException, Learner
from trainbus.callbacks import CSVLogger


def mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error (a metric, so the log gets a column for it)."""
    return (pred - target).abs().mean()


def learner(*cbs: Callback) -> Learner:
    return Learner(
        tiny_model(), tiny_dls(), torch.nn.functional.mse_loss, lr=0.1, cbs=cbs, metrics=[mae]
    )


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as file:
        return list(csv.DictReader(file))


def open_paths() -> set[str]:
    """Files this process holds open (Linux)."""
    fds = Path("/proc/self/fd")
    return {os.path.realpath(fd) for fd in fds.iterdir()}


needs_proc = pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc")


def test_one_row_per_epoch_with_the_recorders_values(tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    learn = learner(CSVLogger(path))
    learn.fit(3)
    with path.open(newline="", encoding="utf-8") as file:
        header = next(csv.reader(file))
    assert header == ["epoch", "train_loss", "valid_loss", "mae", "time"]
    rows = read_rows(path)
    assert [row["epoch"] for row in rows] == ["0", "1", "2"]
    recorder = learn.recorder
    for row, values, seconds in zip(rows, recorder.values, recorder.times, strict=True):
        # Full precision: the file parses back to exactly what the Recorder holds.
        assert [float(row[k]) for k in ("train_loss", "valid_loss", "mae")] == values
        assert float(row["time"]) == seconds


def test_each_row_is_on_disk_when_its_epoch_ends(tmp_path: Path) -> None:
    path = tmp_path / "history.csv"

    class ReadBack(Callback):
        run_after = CSVLogger

        def __init__(self) -> None:
            self.seen: list[list[str]] = []

        @override
        def after_epoch(self) -> None:
            self.seen.append([row["epoch"] for row in read_rows(path)])

    reader = ReadBack()
    learner(reader, CSVLogger(path)).fit(3)
    assert reader.seen == [["0"], ["0", "1"], ["0", "1", "2"]]


def test_append_keeps_rows_and_writes_the_header_once(tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    learn = learner()
    learn.fit(2, cbs=[CSVLogger(path)])
    learn.fit(1, cbs=[CSVLogger(path, append=True)])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert sum(line.startswith("epoch,") for line in lines) == 1
    assert [row["epoch"] for row in read_rows(path)] == ["0", "1", "0"]
    # Without append, a new fit starts the file afresh.
    learn.fit(1, cbs=[CSVLogger(path)])
    assert [row["epoch"] for row in read_rows(path)] == ["0"]


def test_append_creates_a_missing_file_with_its_header(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "run1" / "history.csv"  # parent directories are created
    learner(CSVLogger(path, append=True)).fit(1)
    assert [row["epoch"] for row in read_rows(path)] == ["0"]


def test_append_refuses_a_file_with_other_columns(tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    path.write_text("epoch,train_loss,valid_loss,time\n0,1.0,2.0,0.5\n", encoding="utf-8")
    learn = learner(CSVLogger(path, append=True))
    with pytest.raises(ValueError, match=r"CSVLogger cannot append to .*history.csv: its header"):
        learn.fit(1)
    assert path.read_text(encoding="utf-8") == "epoch,train_loss,valid_loss,time\n0,1.0,2.0,0.5\n"


def test_a_missing_validation_loss_is_written_as_nan(tmp_path: Path) -> None:
    path = tmp_path / "history.csv"
    Learner(tiny_model(), tiny_dls(n_valid=0), torch.nn.functional.mse_loss).fit(
        1, cbs=[CSVLogger(path)]
    )
    (row,) = read_rows(path)
    assert row["valid_loss"] == "nan" and math.isnan(float(row["valid_loss"]))


class StopAt(Callback):
    """Ends the fit in the given epoch: with CancelFitException, or with an error."""

    def __init__(self, epoch: int, error: bool) -> None:
        self.stop_epoch = epoch
        self.error = error

    @override
    def begin_epoch(self) -> None:
        if self.epoch == self.stop_epoch:
            if self.error:
                raise RuntimeError("callback failed")
            raise CancelFitException


@needs_proc
@pytest.mark.parametrize("error", [False, True])
def test_the_file_is_closed_however_the_fit_ends(tmp_path: Path, error: bool) -> None:
    path = tmp_path / "history.csv"
    logger = CSVLogger(path)
    learn = learner(logger, StopAt(2, error))
    if error:
        with pytest.raises(RuntimeError, match="callback failed"):
            learn.fit(5)
    else:
        learn.fit(5)
    assert str(path.resolve()) not in open_paths()
    assert [row["epoch"] for row in read_rows(path)] == ["0", "1"]
    del learn, logger
    gc.collect()  # an unclosed file would warn here (and warnings are errors)


@needs_proc
def test_the_file_is_open_only_during_the_fit(tmp_path: Path) -> None:
    path = tmp_path / "history.csv"

    class CheckOpen(Callback):
        def __init__(self) -> None:
            self.open_in_fit = False

        @override
        def after_train(self) -> None:
            self.open_in_fit = str(path.resolve()) in open_paths()

    check = CheckOpen()
    learner(CSVLogger(path), check).fit(1)
    assert check.open_in_fit
    assert str(path.resolve()) not in open_paths()
