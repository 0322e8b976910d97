"""Trackers: early stopping, checkpoints (atomic, best reloaded), LR reduction on plateaus."""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from typing_extensions import override

from trainbus import Callback, DataLoaders, Event, Learner
from trainbus.callbacks import (
    EarlyStoppingCallback,
    ReduceLROnPlateau,
    SaveModelCallback,
    TrackerCallback,
)


class Scripted:
    """A metric named ``name`` whose value in epoch ``e`` is ``values[e]``, on every batch."""

    def __init__(self, values: Sequence[float], name: str = "score") -> None:
        self.values = list(values)
        self.__name__ = name
        self.learn: Learner | None = None

    def __call__(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        assert self.learn is not None
        return torch.tensor(self.values[self.learn.epoch])


def scripted_learner(
    values: Sequence[float], cbs: Sequence[Callback], *, name: str = "score", momentum: float = 0.0
) -> Learner:
    """Linear(2, 1), 2 training batches and 1 validation batch, one scripted metric."""
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 2, generator=generator), torch.randn(12, 1, generator=generator)
    dls = DataLoaders.from_tensors((x[:8], y[:8]), (x[8:], y[8:]), bs=4, shuffle=False)
    metric = Scripted(values, name)

    def sgd(params: Any, lr: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=lr, momentum=momentum)

    learn = Learner(
        nn.Linear(2, 1), dls, nn.functional.mse_loss, sgd, lr=0.1, cbs=cbs, metrics=[metric]
    )
    metric.learn = learn
    return learn


class Events(Callback):
    """Records the fit-level events and the epoch they came in."""

    def __init__(self) -> None:
        self.log: list[tuple[Event, int]] = []

    @override
    def after_epoch(self) -> None:
        self.log.append((Event.after_epoch, self.epoch))

    @override
    def after_cancel_fit(self) -> None:
        self.log.append((Event.after_cancel_fit, self.epoch))

    @override
    def after_fit(self) -> None:
        self.log.append((Event.after_fit, self.epoch))


# ------------------------------------------------------------------ TrackerCallback


def test_unknown_monitor_is_reported_with_the_valid_names() -> None:
    learn = scripted_learner([1.0], [TrackerCallback("acuracy")])
    with pytest.raises(
        ValueError,
        match=r"TrackerCallback cannot monitor 'acuracy': the recorded values are "
        r"'train_loss', 'valid_loss', 'score'",
    ):
        learn.fit(1)


def test_default_comparison_follows_the_name() -> None:
    assert TrackerCallback("valid_loss").comp is operator.lt
    assert TrackerCallback("error_rate").comp is operator.lt
    assert TrackerCallback("accuracy").comp is operator.gt
    assert TrackerCallback("accuracy", comp=operator.lt).comp is operator.lt


def test_tracker_reads_the_epochs_row_after_the_recorder() -> None:
    class Seen(TrackerCallback):
        def __init__(self) -> None:
            super().__init__("score", min_delta=0.05)
            self.trail: list[tuple[float | None, bool]] = []

        @override
        def after_epoch(self) -> None:
            super().after_epoch()
            self.trail.append((self.best, self.new_best))

    seen = Seen()
    # NaN never improves; 0.52 is better than 0.5 but not by more than min_delta.
    scripted_learner([float("nan"), 0.5, 0.52, 0.4, 0.7], [seen]).fit(5)
    assert seen.trail == [
        (None, False),
        (0.5, True),
        (0.5, False),
        (0.5, False),
        (pytest.approx(0.7), True),
    ]


def test_tracker_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=r"EarlyStoppingCallback patience must be a positive int"):
        EarlyStoppingCallback(patience=0)
    with pytest.raises(ValueError, match=r"TrackerCallback min_delta must be finite and >= 0"):
        TrackerCallback(min_delta=-0.1)
    with pytest.raises(ValueError, match=r"ReduceLROnPlateau factor must be greater than 1"):
        ReduceLROnPlateau(factor=0.5)
    with pytest.raises(ValueError, match=r"SaveModelCallback fname must be a non-empty str"):
        SaveModelCallback(fname="")


# ------------------------------------------------------------------ EarlyStopping


def test_early_stopping_stops_after_patience_epochs_without_improvement() -> None:
    events = Events()
    stop = EarlyStoppingCallback("score", patience=2)
    learn = scripted_learner([0.1, 0.5, 0.4, 0.45, 0.9, 0.95], [stop, events])
    learn.fit(6)
    # Epochs 2 and 3 do not beat 0.5: the fit ends after epoch 3.
    assert stop.stopped_epoch == 3
    assert len(learn.recorder.values) == 4
    assert events.log == [
        (Event.after_epoch, 0),
        (Event.after_epoch, 1),
        (Event.after_epoch, 2),
        (Event.after_epoch, 3),
        (Event.after_cancel_fit, 3),
        (Event.after_fit, 3),
    ]


def stop_epoch(values: Sequence[float], patience: int, min_delta: float) -> int | None:
    """Reference: the epoch after which early stopping ends the fit (higher is better)."""
    best: float | None = None
    wait = 0
    for epoch, value in enumerate(values):
        if best is None or (value > best and value - best > min_delta):
            best, wait = value, 0
        else:
            wait += 1
        if wait >= patience:
            return epoch
    return None


@settings(max_examples=30, deadline=None)
@given(
    values=st.lists(st.sampled_from([0.0, 0.25, 0.5, 0.75, 1.0]), min_size=1, max_size=6),
    patience=st.integers(1, 3),
    min_delta=st.sampled_from([0.0, 0.3]),
)
def test_early_stopping_matches_the_reference(
    values: list[float], patience: int, min_delta: float
) -> None:
    stop = EarlyStoppingCallback("score", patience=patience, min_delta=min_delta)
    learn = scripted_learner(values, [stop])
    learn.fit(len(values))
    want = stop_epoch(values, patience, min_delta)
    assert stop.stopped_epoch == want
    assert len(learn.recorder.values) == (len(values) if want is None else want + 1)


def test_early_stopping_runs_after_other_trackers_see_the_epoch(tmp_path: Path) -> None:
    # Registered first, it still raises after SaveModelCallback saved the last epoch.
    stop = EarlyStoppingCallback("score", patience=1)
    save = SaveModelCallback("score", every_epoch=True, path=tmp_path)
    learn = scripted_learner([0.5, 0.4], [stop, save])
    learn.fit(5)
    assert stop.stopped_epoch == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_0.pth", "model_1.pth"]
    owners = [
        type(getattr(h, "__self__", h)).__name__ for h in learn.bus.handlers(Event.after_epoch)
    ]
    assert owners[-2:] == ["SaveModelCallback", "EarlyStoppingCallback"]


# ------------------------------------------------------------------ SaveModelCallback


class Snapshots(Callback):
    """Copies the model's and optimizer's state at the end of every epoch."""

    def __init__(self) -> None:
        self.model_states: list[dict[str, torch.Tensor]] = []
        self.opt_states: list[dict[str, Any]] = []

    @override
    def after_epoch(self) -> None:
        self.model_states.append(copy.deepcopy(self.model.state_dict()))
        self.opt_states.append(copy.deepcopy(self.opt.state_dict()))


def assert_same_state(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for key in got:
        assert torch.equal(got[key], want[key]), key


def test_best_epoch_is_saved_and_reloaded(tmp_path: Path) -> None:
    snapshots = Snapshots()
    save = SaveModelCallback("score", path=tmp_path / "ckpt")
    learn = scripted_learner([0.2, 0.9, 0.5, 0.3], [save, snapshots])
    learn.fit(4)
    assert save.best_epoch == 1
    assert save.best_file == tmp_path / "ckpt" / "model.pth"
    assert_same_state(learn.model.state_dict(), snapshots.model_states[1])
    assert not torch.equal(snapshots.model_states[1]["weight"], snapshots.model_states[3]["weight"])
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["model.pth"]
    saved = torch.load(tmp_path / "ckpt" / "model.pth", weights_only=True)
    assert_same_state(saved, snapshots.model_states[1])


def test_with_opt_reloads_the_optimizer_too(tmp_path: Path) -> None:
    snapshots = Snapshots()
    save = SaveModelCallback("score", with_opt=True, fname="run", path=tmp_path)
    learn = scripted_learner([0.2, 0.9, 0.5], [save, snapshots], momentum=0.9)
    learn.fit(3)
    saved = torch.load(tmp_path / "run.pth", weights_only=True)
    assert set(saved) == {"model", "opt"}
    assert_same_state(learn.model.state_dict(), snapshots.model_states[1])
    buffers = [state["momentum_buffer"] for state in learn.opt.state_dict()["state"].values()]
    want = [state["momentum_buffer"] for state in snapshots.opt_states[1]["state"].values()]
    assert len(buffers) == 2
    assert all(torch.equal(b, w) for b, w in zip(buffers, want, strict=True))


def test_every_epoch_keeps_a_file_per_epoch_and_reloads_the_best(tmp_path: Path) -> None:
    snapshots = Snapshots()
    save = SaveModelCallback("score", every_epoch=True, path=tmp_path)
    learn = scripted_learner([0.2, 0.1, 0.6, 0.3], [save, snapshots])
    learn.fit(4)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"model_{e}.pth" for e in range(4)]
    for epoch in range(4):
        saved = torch.load(tmp_path / f"model_{epoch}.pth", weights_only=True)
        assert_same_state(saved, snapshots.model_states[epoch])
    assert save.best_epoch == 2
    assert_same_state(learn.model.state_dict(), snapshots.model_states[2])


def test_early_stopping_then_the_best_weights_are_reloaded(tmp_path: Path) -> None:
    snapshots = Snapshots()
    save = SaveModelCallback("score", path=tmp_path)
    stop = EarlyStoppingCallback("score", patience=2)
    learn = scripted_learner([0.3, 0.8, 0.7, 0.6, 0.9], [stop, save, snapshots])
    learn.fit(5)
    assert stop.stopped_epoch == 3
    assert_same_state(learn.model.state_dict(), snapshots.model_states[1])


def test_a_crash_while_saving_leaves_the_previous_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    snapshots = Snapshots()
    save = SaveModelCallback("score", path=tmp_path)
    learn = scripted_learner([0.1, 0.2, 0.3], [save, snapshots])
    real_save = torch.save
    calls: list[int] = []

    def failing_save(obj: object, f: Any, *args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 1:
            real_save(obj, f, *args, **kwargs)
            return
        f.write(b"PK\x03\x04 half a checkpoint")  # a part of the file, then the disk fills up
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(OSError, match="No space left on device") as raised:
        learn.fit(3)
    assert any("SaveModelCallback during event after_epoch" in n for n in raised.value.__notes__)
    assert [p.name for p in tmp_path.iterdir()] == ["model.pth"]  # no temporary file left
    previous = torch.load(tmp_path / "model.pth", weights_only=True)
    assert_same_state(previous, snapshots.model_states[0])


# ------------------------------------------------------------------ ReduceLROnPlateau


def lrs_per_epoch(learn: Learner) -> list[float]:
    lrs = learn.recorder.lrs
    per_epoch = len(learn.dls.train)
    return [lrs[i] for i in range(0, len(lrs), per_epoch)]


def test_lr_is_divided_after_patience_epochs_without_improvement() -> None:
    reduce = ReduceLROnPlateau("val_error", patience=2, factor=10.0)
    values = [1.0, 0.5, 0.6, 0.7, 0.4, 0.8, 0.9, 1.0]
    learn = scripted_learner(values, [reduce], name="val_error")
    learn.fit(len(values))
    # Reductions after epochs 3 and 6 (two epochs without beating the best each time).
    assert lrs_per_epoch(learn) == pytest.approx([0.1] * 4 + [0.01] * 3 + [0.001])
    assert learn.opt.param_groups[0]["lr"] == pytest.approx(0.001)
    assert reduce.wait == 1


def test_lr_never_goes_below_min_lr() -> None:
    reduce = ReduceLROnPlateau("score", patience=1, factor=10.0, min_lr=0.005)
    learn = scripted_learner([0.5, 0.4, 0.3, 0.2], [reduce])
    learn.fit(4)
    assert lrs_per_epoch(learn) == pytest.approx([0.1, 0.1, 0.01, 0.005])
    assert learn.opt.param_groups[0]["lr"] == pytest.approx(0.005)
