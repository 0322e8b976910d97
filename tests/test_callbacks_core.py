"""The default callbacks (Recorder, ProgressCallback, TrainEvalCallback) and TerminateOnNaN."""

from __future__ import annotations

import contextlib
import math
import re

import pytest
import torch
from torch import nn
from typing_extensions import override

from conftest import (
    N_TRAIN,
    N_VALID,
    TraceCallback,
    TraceEntry,
    tiny_learner,
    tiny_model,
    tiny_tensors,
)
from trainbus import (
    Callback,
    CancelBatchException,
    DataLoaders,
    Event,
    Learner,
    UnsetFieldError,
)
from trainbus.callbacks import (
    ProgressCallback,
    Recorder,
    TerminateOnNaNCallback,
    TrainEvalCallback,
)

BETA = 0.98


class LossLog(Callback):
    """Keeps ``(training, loss, batch size)`` of every batch that reaches after_batch."""

    run_after = Recorder

    def __init__(self) -> None:
        self.rows: list[tuple[bool, float, int]] = []

    @override
    def after_batch(self) -> None:
        self.rows.append((self.training, self.loss.item(), len(self.y)))

    def train_losses(self) -> list[float]:
        return [loss for training, loss, _ in self.rows if training]


def mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).abs().mean()


def uneven_learner(cbs: list[Callback]) -> tuple[Learner, torch.Tensor, torch.Tensor]:
    """4 training batches of 2; validation batches of 3 and 2 samples. Returns the valid set."""
    train = tiny_tensors(4, 2, seed=1)
    xv, yv = tiny_tensors(5, 1, seed=2)
    dls = DataLoaders.from_tensors(train, (xv, yv), bs=2, valid_bs=3, shuffle=False)
    learn = Learner(tiny_model(), dls, nn.functional.mse_loss, lr=0.1, cbs=cbs, metrics=[mae])
    return learn, xv, yv


# ------------------------------------------------------------------- Recorder


def test_recorder_keeps_one_loss_per_training_batch() -> None:
    log = LossLog()
    learn = tiny_learner([log])
    learn.fit(2)
    assert learn.recorder.losses == log.train_losses()
    assert len(learn.recorder.losses) == 2 * N_TRAIN
    assert learn.recorder.loss_tensor().shape == (2 * N_TRAIN,)


def test_recorder_losses_across_storage_chunks() -> None:
    log = LossLog()
    learn = tiny_learner([log], n_train=300, n_valid=1, bs=1, lr=0.01)
    learn.fit(1)
    assert learn.recorder.losses == log.train_losses()
    assert len(learn.recorder.losses) == 300


class LinearLr(Callback):
    @override
    def begin_batch(self) -> None:
        if self.training:
            for group in self.opt.param_groups:
                group["lr"] = 0.01 * (self.train_iter + 1)


def test_recorder_keeps_the_lr_of_every_training_batch() -> None:
    learn = tiny_learner([LinearLr()])
    learn.fit(2)
    assert learn.recorder.lrs == [0.01 * (k + 1) for k in range(2 * N_TRAIN)]


def test_recorder_values_are_train_mean_and_size_weighted_valid_values() -> None:
    log = LossLog()
    learn, xv, yv = uneven_learner([log])
    learn.fit(2)
    recorder = learn.recorder
    assert recorder.metric_names == ["train_loss", "valid_loss", "mae"]
    assert len(recorder.values) == 2 and len(recorder.times) == 2
    train = log.train_losses()
    valid = [(loss, bs) for training, loss, bs in log.rows if not training]
    assert [bs for _, bs in valid] == [3, 2, 3, 2]
    for epoch, row in enumerate(recorder.values):
        assert row[0] == pytest.approx(sum(train[4 * epoch : 4 * epoch + 4]) / 4, rel=1e-6)
        (l1, n1), (l2, n2) = valid[2 * epoch : 2 * epoch + 2]
        assert row[1] == pytest.approx((l1 * n1 + l2 * n2) / (n1 + n2), rel=1e-6)
    # The last epoch's values are those of the whole validation set under the final model.
    with torch.no_grad():
        pred = learn.model(xv)
        whole_loss = nn.functional.mse_loss(pred, yv).item()
        whole_mae = mae(pred, yv).item()
    assert recorder.values[-1][1] == pytest.approx(whole_loss, rel=1e-6)
    assert recorder.values[-1][2] == pytest.approx(whole_mae, rel=1e-6)
    unweighted = (valid[2][0] + valid[3][0]) / 2
    assert abs(unweighted - whole_loss) > 1e-3  # so the weighting above is really checked


class CancelSecondBatch(Callback):
    """Cancels training batch 1 and validation batch 0 of every epoch, after the loss."""

    @override
    def after_loss(self) -> None:
        if self.iter == (1 if self.training else 0):
            raise CancelBatchException


def test_cancelled_batches_are_not_recorded() -> None:
    log = LossLog()
    learn = tiny_learner([CancelSecondBatch(), log])
    learn.fit(2)
    assert len(log.rows) == 2 * (N_TRAIN + N_VALID)  # LossLog sees every after_batch ...
    kept = [loss for k, loss in enumerate(log.train_losses()) if k % N_TRAIN != 1]
    assert learn.recorder.losses == kept  # ... the Recorder skips the cancelled ones
    assert len(learn.recorder.lrs) == 2 * (N_TRAIN - 1)
    valid = [loss for training, loss, _ in log.rows if not training]
    assert [row[1] for row in learn.recorder.values] == pytest.approx([valid[1], valid[3]])


class SmoothLog(Callback):
    run_after = Recorder

    def __init__(self) -> None:
        self.values: list[float] = []
        self.early: list[str] = []

    @override
    def begin_train(self) -> None:
        if self.epoch == 0:
            try:
                _ = self.smooth_loss
            except UnsetFieldError as error:
                self.early.append(str(error))

    @override
    def after_batch(self) -> None:
        if self.training:
            self.values.append(self.smooth_loss.item())


def test_smooth_loss_is_the_debiased_ema_of_the_losses() -> None:
    smooth = SmoothLog()
    learn = tiny_learner([smooth], lr=0.05)
    learn.fit(3)
    expected: list[float] = []
    average = 0.0
    for k, loss in enumerate(learn.recorder.losses, start=1):
        average = BETA * average + (1 - BETA) * loss
        expected.append(average / (1 - BETA**k))
    assert smooth.values == pytest.approx(expected, rel=1e-5)
    assert len(smooth.values) == 3 * N_TRAIN
    assert len(smooth.early) == 1 and "smooth_loss" in smooth.early[0]


def test_recorder_restarts_with_every_fit() -> None:
    learn = tiny_learner()
    learn.fit(2)
    learn.fit(1)
    assert len(learn.recorder.losses) == N_TRAIN
    assert len(learn.recorder.values) == 1


def test_recorder_rejects_a_bad_beta() -> None:
    with pytest.raises(ValueError, match=r"beta must be in \[0, 1\), got 1.0"):
        Recorder(beta=1.0)


# ------------------------------------------------------------ TerminateOnNaN


class PoisonLoss(Callback):
    """Multiplies the loss of batch ``iter`` of the phase by ``factor`` (NaN or inf)."""

    def __init__(self, factor: float, training: bool, iter: int = 1) -> None:
        self.factor, self.when = factor, (training, iter)

    @override
    def after_loss(self) -> None:
        if (self.training, self.iter) == self.when and self.epoch == 0:
            self.learn.loss = self.loss * self.factor


@pytest.mark.parametrize("factor", [math.nan, math.inf])
def test_terminate_on_nan_stops_the_fit_before_recording(factor: float) -> None:
    log: list[TraceEntry] = []
    learn = tiny_learner([TraceCallback(log), PoisonLoss(factor, True), TerminateOnNaNCallback()])
    learn.fit(2)
    events = [entry[1] for entry in log]
    assert events[-2:] == [Event.after_cancel_fit, Event.after_fit]
    assert events.count(Event.begin_batch) == 2  # stopped in the second batch
    assert Event.after_train not in events
    losses = learn.recorder.losses
    assert len(losses) == 1 and math.isfinite(losses[0])


def test_terminate_on_nan_ignores_validation_losses() -> None:
    learn = tiny_learner([PoisonLoss(math.nan, False, iter=0), TerminateOnNaNCallback()])
    learn.fit(2)
    assert len(learn.recorder.losses) == 2 * N_TRAIN
    assert math.isnan(learn.recorder.values[0][1])
    assert not math.isnan(learn.recorder.values[1][1])


# ------------------------------------------------------------ access by name


def test_default_callbacks_by_name_and_class() -> None:
    learn = tiny_learner()
    recorder = learn.get_cb(Recorder)
    assert learn.recorder is recorder
    names = {"train_eval": TrainEvalCallback, "recorder": Recorder, "progress": ProgressCallback}
    for name, cls in names.items():
        assert getattr(learn, name) is learn.get_cb(cls)
    assert [cb.name for cb in learn.cbs] == ["train_eval", "recorder", "progress"]
    with pytest.raises(LookupError, match="no TerminateOnNaNCallback is registered"):
        learn.get_cb(TerminateOnNaNCallback)
    unknown = "nope"
    with pytest.raises(AttributeError) as info:
        getattr(learn, unknown)
    assert str(info.value) == (
        "'Learner' has no attribute 'nope' and no callback named so "
        "(callbacks: train_eval, recorder, progress)"
    )
    nan_cb = learn.add_cb(TerminateOnNaNCallback())
    attribute = "terminate_on_nan"  # one word: not "terminate_on_na_n"
    assert getattr(learn, attribute) is nan_cb


def test_removing_a_default_callback() -> None:
    learn = tiny_learner()
    progress = learn.get_cb(ProgressCallback)
    learn.remove_cb(progress)
    assert progress not in learn.cbs
    attribute = "progress"
    with pytest.raises(AttributeError, match="no callback named so"):
        getattr(learn, attribute)
    with pytest.raises(RuntimeError, match="not attached"):
        _ = progress.learn
    learn.fit(1)
    learn.remove_cb(learn.recorder)
    with pytest.raises(LookupError, match="no Recorder is registered"):
        _ = learn.recorder
    learn.fit(1)  # the loop needs neither
    with pytest.raises(ValueError, match="Recorder instance is not registered"):
        learn.remove_cb(Recorder())


# ------------------------------------------------------------ ProgressCallback


def test_progress_is_silent_when_not_in_a_terminal(capsys: pytest.CaptureFixture[str]) -> None:
    learn = tiny_learner()
    learn.fit(2)
    assert capsys.readouterr() == ("", "")
    assert not learn.get_cb(ProgressCallback).bars_open


def test_progress_shows_bars_and_a_table(capsys: pytest.CaptureFixture[str]) -> None:
    learn = tiny_learner()
    learn.remove_cb(learn.get_cb(ProgressCallback))
    progress = learn.add_cb(ProgressCallback(show=True))
    opened: list[bool] = []
    learn.subscribe(Event.after_batch, lambda _: opened.append(progress.bars_open))
    learn.fit(2)
    assert opened == [True] * (2 * (N_TRAIN + N_VALID))
    assert not progress.bars_open
    out, err = capsys.readouterr()
    assert "epoch" in err and "train" in err and "valid" in err
    lines = out.splitlines()
    assert lines[0].split() == ["epoch", "train_loss", "valid_loss", "time"]
    for epoch, (line, values) in enumerate(zip(lines[1:], learn.recorder.values, strict=True)):
        cells = line.split()
        assert cells[0] == str(epoch)
        assert cells[1:3] == [f"{v:.6f}" for v in values]
        assert re.fullmatch(r"\d\d:\d\d", cells[3])
    assert len(lines) == 3


@pytest.mark.parametrize("show", [True, False])
@pytest.mark.parametrize("fails", [False, True])
def test_progress_advances_its_bar_only_in_the_fits_it_shows(show: bool, fails: bool) -> None:
    learn = tiny_learner()
    learn.remove_cb(learn.get_cb(ProgressCallback))
    learn.add_cb(ProgressCallback(show=show, table=False))
    seen: list[bool] = []

    def during_fit(learn: Learner) -> None:
        seen.append("ProgressCallback._advance_bar" in learn.bus.describe())
        if fails:
            raise ZeroDivisionError

    learn.subscribe(Event.begin_train, during_fit)
    with pytest.raises(ZeroDivisionError) if fails else contextlib.nullcontext():
        learn.fit(1)
    assert seen == [show]
    assert "_advance_bar" not in learn.bus.describe()  # unsubscribed however the fit ended
    assert len(learn.bus.handlers(Event.after_batch)) == 2  # TrainEvalCallback, Recorder


def test_progress_table_without_bars(capsys: pytest.CaptureFixture[str]) -> None:
    learn = tiny_learner()
    learn.remove_cb(learn.get_cb(ProgressCallback))
    learn.add_cb(ProgressCallback(show=False, table=True))
    learn.fit(1)
    out, err = capsys.readouterr()
    assert err == ""
    assert len(out.splitlines()) == 2


def test_recorder_restore_puts_back_the_records_of_a_snapshot() -> None:
    learn = tiny_learner()
    learn.fit(2)
    recorder = learn.recorder
    losses, values, lrs = recorder.losses, recorder.values, list(recorder.lrs)
    smooth = learn.smooth_loss.item()
    snapshot = recorder.snapshot()
    learn.fit(1, lr=0.01)
    assert len(recorder.values) == 1
    recorder.restore(snapshot)
    learn.state.invalidate("smooth_loss")
    assert (recorder.losses, recorder.values, recorder.lrs) == (losses, values, lrs)
    assert learn.smooth_loss.item() == smooth
    learn.fit(1)  # a later fit records afresh, and the snapshot is untouched by it
    recorder.restore(snapshot)
    assert recorder.losses == losses
