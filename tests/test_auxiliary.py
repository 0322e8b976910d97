"""Auxiliary runs (lr_find): callbacks with run_in_auxiliary = False sit them out."""

from __future__ import annotations

from pathlib import Path

import pytest
from typing_extensions import override

from conftest import tiny_learner
from trainbus import Callback, CancelFitException, Event, EventBus
from trainbus.callbacks import (
    CSVLogger,
    EarlyStoppingCallback,
    LRFinder,
    MixedPrecision,
    ModelResetter,
    ParamScheduler,
    ProgressCallback,
    Recorder,
    ReduceLROnPlateau,
    SaveModelCallback,
    TrainEvalCallback,
)


class Counter(Callback):
    """Counts the training batches it sees; acts in auxiliary runs (the default)."""

    def __init__(self) -> None:
        self.batches = 0

    @override
    def after_batch(self) -> None:
        if self.training:
            self.batches += 1


class QuietCounter(Counter):
    run_in_auxiliary = False


def test_the_shared_rule_of_the_standard_callbacks() -> None:
    for cls in (EarlyStoppingCallback, SaveModelCallback, ReduceLROnPlateau, CSVLogger):
        assert cls.run_in_auxiliary is False, cls
    assert ParamScheduler.run_in_auxiliary is False
    assert Recorder.run_in_auxiliary is False  # the fit's records: validate() computes its own
    for kind in (TrainEvalCallback, ProgressCallback, ModelResetter, MixedPrecision):
        assert kind.run_in_auxiliary is True, kind
    assert LRFinder.run_in_auxiliary is True
    assert Callback.run_in_auxiliary is True


def test_lr_find_runs_its_full_course_with_trackers_and_loggers(tmp_path: Path) -> None:
    # Before: the early stopper watched the finder's NaN validation loss and ended the
    # finder after the first epoch (8 of 80 steps), and the CSV of the fit was rewritten.
    csv_file = tmp_path / "history.csv"
    learn = tiny_learner(
        [
            EarlyStoppingCallback(patience=1),
            SaveModelCallback(path=tmp_path),
            CSVLogger(csv_file),
            ReduceLROnPlateau(patience=1),
        ],
        n_train=32,
    )
    learn.fit(2)
    csv_text = csv_file.read_text()
    saved = {p.name: p.read_bytes() for p in tmp_path.glob("*.pth")}
    order = learn.cbs
    result = learn.lr_find(start_lr=1e-5, end_lr=1e-3, num_it=80, stop_div=False)
    assert len(result.lrs) == 80
    assert csv_file.read_text() == csv_text
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.pth")} == saved
    assert learn.cbs == order  # re-attached, in their places


def test_quiet_callbacks_are_detached_and_reattached_in_place() -> None:
    loud, quiet = Counter(), QuietCounter()
    learn = tiny_learner([quiet, loud])
    order = learn.cbs
    learn.lr_find(num_it=5, stop_div=False)
    assert (loud.batches, quiet.batches) == (5, 0)
    assert learn.cbs == order
    assert quiet.learn is learn
    learn.fit(1)
    assert quiet.batches == loud.batches - 5 > 0


class Boom(Callback):
    @override
    def after_batch(self) -> None:
        if self.training and self.iter == 1:
            raise RuntimeError("boom")


def test_quiet_callbacks_come_back_when_the_auxiliary_run_fails() -> None:
    quiet = QuietCounter()
    learn = tiny_learner([quiet, Boom()])
    order = learn.cbs
    with pytest.raises(RuntimeError, match="boom"):
        learn.lr_find(num_it=5)
    assert learn.cbs == order
    assert quiet in learn.bus.subscribers


def test_bus_suspend_restores_registration_places() -> None:
    class Mid(Callback):
        @override
        def begin_fit(self) -> None:
            raise CancelFitException

    a, b, c = Counter(), Mid(), QuietCounter()
    bus = EventBus([a, b, c])
    restore = bus.suspend([b])
    assert list(bus.subscribers) == [a, c]
    d = Counter()
    bus.add(d)
    restore()
    assert list(bus.subscribers) == [a, b, c, d]
    with pytest.raises(ValueError, match="not registered"):
        bus.suspend([Counter()])


def test_a_stand_in_runs_in_the_place_of_the_subscriber_it_stands_for() -> None:
    heard: list[str] = []

    class Hears(Callback):
        @override
        def after_epoch(self) -> None:
            heard.append(type(self).__name__)

    class Writer(Hears):
        order = 1000

    class StandIn(Hears):  # no order nor constraint of its own
        pass

    class BeforeWriter(Hears):
        run_before = (Writer,)  # names the Writer's class: holds for its stand-in too

    class AfterWriter(Hears):
        run_after = (Writer,)

    writer, stand_in = Writer(), StandIn()
    before, after, plain = BeforeWriter(), AfterWriter(), Counter()
    bus = EventBus([writer, after, plain, before])
    assert list(bus.subscribers) == [plain, before, writer, after]
    restore = bus.suspend([writer], [(writer, stand_in)])
    assert list(bus.subscribers) == [plain, before, stand_in, after]
    bus.emit(Event.after_epoch)
    assert heard == ["BeforeWriter", "StandIn", "AfterWriter"]
    restore()
    assert list(bus.subscribers) == [plain, before, writer, after]
    with pytest.raises(ValueError, match="not suspended"):
        bus.suspend([after], [(writer, stand_in)])
    with pytest.raises(ValueError, match="registered already"):
        bus.suspend([writer], [(writer, plain)])
    assert list(bus.subscribers) == [plain, before, writer, after]  # nothing changed
