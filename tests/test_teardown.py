"""Callback.teardown: the always-run clean-up hook, once per outermost stage."""

from __future__ import annotations

import pytest
from typing_extensions import override

from conftest import tiny_learner
from trainbus import Callback, CancelFitException, Event, EventBus, Stage, Subscriber


class Tracing(Callback):
    """Records its after_fit, on_exception and teardown calls in a shared log."""

    def __init__(self, log: list[str], tag: str = "") -> None:
        self.log = log
        self.tag = tag

    @override
    def after_fit(self) -> None:
        self.log.append(f"after_fit{self.tag}")

    @override
    def on_exception(self, error: BaseException) -> None:
        self.log.append(f"on_exception{self.tag}:{type(error).__name__}")

    @override
    def teardown(self) -> None:
        self.log.append(f"teardown{self.tag}")


class CancelAtEpochOne(Callback):
    @override
    def begin_epoch(self) -> None:
        if self.epoch == 1:
            raise CancelFitException


class FailInSecondBatch(Callback):
    @override
    def after_loss(self) -> None:
        if self.iter == 1:
            raise RuntimeError("boom")


class FailingTeardown(Callback):
    @override
    def teardown(self) -> None:
        raise OSError("disk gone")


def test_teardown_runs_once_after_a_normal_fit() -> None:
    log: list[str] = []
    tiny_learner([Tracing(log)]).fit(2)
    assert log == ["after_fit", "teardown"]


def test_teardown_runs_once_after_a_cancelled_fit() -> None:
    log: list[str] = []
    learn = tiny_learner([Tracing(log), CancelAtEpochOne()])
    learn.fit(3)
    assert learn.epoch == 1
    assert log == ["after_fit", "teardown"]


def test_teardown_runs_once_after_an_exception_following_on_exception() -> None:
    log: list[str] = []
    learn = tiny_learner([Tracing(log, "1"), Tracing(log, "2")])
    with pytest.raises(RuntimeError, match="boom"):
        learn.fit(2, cbs=[FailInSecondBatch()])
    assert log == [
        "on_exception1:RuntimeError",
        "on_exception2:RuntimeError",
        "teardown1",
        "teardown2",
    ]


def test_teardown_runs_for_every_fit_and_not_in_between() -> None:
    log: list[str] = []
    learn = tiny_learner([Tracing(log)])
    learn.fit(1)
    learn.fit(0)
    assert log == ["after_fit", "teardown", "after_fit", "teardown"]


def test_a_failing_teardown_does_not_hide_the_original_error() -> None:
    log: list[str] = []
    learn = tiny_learner([FailingTeardown(), Tracing(log)])
    with pytest.raises(RuntimeError, match="boom") as info:
        learn.fit(1, cbs=[FailInSecondBatch()])
    assert "trainbus: FailingTeardown.teardown failed while releasing: OSError: disk gone" in (
        info.value.__notes__
    )
    assert log == ["on_exception:RuntimeError", "teardown"]  # the next teardown still ran


def test_a_failing_teardown_after_a_good_fit_is_raised_once_all_ran() -> None:
    log: list[str] = []
    learn = tiny_learner([FailingTeardown(), Tracing(log)])
    with pytest.raises(OSError, match="disk gone") as info:
        learn.fit(1)
    assert "trainbus: raised in callback FailingTeardown during teardown" in info.value.__notes__
    assert log == ["after_fit", "teardown"]
    log.clear()
    learn.remove_cb(learn.get_cb(FailingTeardown))
    learn.fit(1)  # the learner is usable again
    assert log == ["after_fit", "teardown"]


def test_teardown_ends_the_outermost_stage_of_any_loop() -> None:
    log: list[str] = []

    class Sub(Subscriber):
        @override
        def after_batch(self) -> None:
            log.append("after_batch")

        @override
        def teardown(self) -> None:
            log.append("teardown")

    bus = EventBus([Sub()])
    bus.run(Stage.validate, lambda: bus.run_each(Stage.batch, range(2), lambda: None))
    assert log == ["after_batch", "after_batch", "teardown"]


def test_show_training_loop_lists_teardown_last() -> None:
    learn = tiny_learner([Tracing([])])
    text = learn.bus.describe()
    assert text.endswith("teardown:\n    ProgressCallback\n    Tracing")
    assert "after_fit:\n    Tracing" in text
    assert Event.after_fit.value in text
