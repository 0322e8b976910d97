"""The EventBus on its own: a toy loop, plain functions, dispatch tables, hook checks."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from typing_extensions import override

from conftest import N_TRAIN, N_VALID, tiny_learner
from trainbus import (
    Callback,
    CancelBatchException,
    CancelTrainException,
    CancelValidException,
    Event,
    EventBus,
    HookError,
    Learner,
    SignalUsageError,
    Stage,
    Subscriber,
)

E = Event

# ------------------------------------------------------------ a loop of its own


class Logger(Subscriber):
    """A subscriber that is not a Callback: no Learner, no state, no torch."""

    def __init__(self, log: list[str], skip: set[int] | None = None) -> None:
        self.log = log
        self.skip = skip or set()
        self.item = -1

    @override
    def begin_fit(self) -> None:
        self.log.append("logger:begin_fit")

    @override
    def begin_batch(self) -> None:
        self.item += 1
        self.log.append(f"logger:begin_batch {self.item}")
        if self.item in self.skip:
            raise CancelBatchException

    @override
    def after_cancel_batch(self) -> None:
        self.log.append("logger:after_cancel_batch")

    @override
    def after_batch(self) -> None:
        self.log.append("logger:after_batch")

    @override
    def after_fit(self) -> None:
        self.log.append("logger:after_fit")


def evaluate(bus: EventBus, items: list[int], results: list[int]) -> None:
    """An evaluation-only loop: fit > validate > batch, one batch per item."""

    def all_items() -> None:
        for item in items:

            def one_item(item: int = item) -> None:
                results.append(item * item)
                bus.emit(E.after_pred)

            bus.run(Stage.batch, one_item)

    bus.run(Stage.fit, lambda: bus.run(Stage.validate, all_items))


def test_toy_loop_drives_the_bus_through_stages() -> None:
    log: list[str] = []
    results: list[int] = []
    bus = EventBus([Logger(log, skip={1})])
    bus.subscribe(E.after_pred, lambda: log.append("fn:after_pred"))
    bus.subscribe(E.begin_validate, lambda: log.append("fn:begin_validate"))
    evaluate(bus, [2, 3, 4], results)
    assert results == [4, 16]  # item 1 was cancelled in begin_batch, before the body
    assert log == [
        "logger:begin_fit",
        "fn:begin_validate",
        "logger:begin_batch 0",
        "fn:after_pred",
        "logger:after_batch",
        "logger:begin_batch 1",
        "logger:after_cancel_batch",
        "logger:after_batch",
        "logger:begin_batch 2",
        "fn:after_pred",
        "logger:after_batch",
        "logger:after_fit",
    ]


def test_unsubscribe_stops_a_function() -> None:
    log: list[str] = []
    bus = EventBus()

    def note() -> None:
        log.append("note")

    bus.subscribe(E.after_pred, note)
    evaluate(bus, [1, 2], [])
    bus.unsubscribe(E.after_pred, note)
    evaluate(bus, [1, 2], [])
    assert log == ["note", "note"]
    with pytest.raises(ValueError, match="note is not subscribed to after_pred"):
        bus.unsubscribe(E.after_pred, note)


def test_subscribe_rejects_duplicates_and_unknown_events() -> None:
    bus = EventBus()

    def note() -> None: ...

    bus.subscribe(E.after_loss, note)
    with pytest.raises(ValueError, match="note is subscribed to after_loss already"):
        bus.subscribe(E.after_loss, note)
    bus.subscribe(E.after_pred, note)  # the same function at another event is fine
    misspelled: Any = "after_los"
    with pytest.raises(ValueError, match="'after_los' is not a trainbus Event"):
        bus.subscribe(misspelled, note)
    not_callable: Any = 3
    with pytest.raises(TypeError, match="subscribe expects a callable, got int"):
        bus.subscribe(E.after_loss, not_callable)


def test_functions_are_placed_by_order_then_registration() -> None:
    log: list[str] = []
    bus = EventBus([Logger(log)])

    def early() -> None:
        log.append("early")

    def late() -> None:
        log.append("late")

    bus.subscribe(E.begin_fit, late)
    bus.subscribe(E.begin_fit, early, order=-1)
    bus.run(Stage.fit, lambda: None)
    assert log == ["early", "logger:begin_fit", "late", "logger:after_fit"]


def test_signal_for_a_stage_the_loop_never_runs_is_a_usage_error() -> None:
    bus = EventBus()

    def cancel_train() -> None:
        raise CancelTrainException

    bus.subscribe(E.after_pred, cancel_train)
    with pytest.raises(SignalUsageError) as info:
        evaluate(bus, [1], [])
    assert str(info.value) == (
        "CancelTrainException raised by subscriber "
        "test_signal_for_a_stage_the_loop_never_runs_is_a_usage_error.<locals>.cancel_train "
        "in after_pred, where no train stage can be cancelled (it has ended or not begun): "
        "raise it between begin_train and the end of the train body instead"
    )


def test_signal_raised_by_the_body_itself() -> None:
    log: list[str] = []
    bus = EventBus([Logger(log)])
    bus.subscribe(E.after_cancel_valid, lambda: log.append("after_cancel_valid"))

    def cancel_valid() -> None:
        raise CancelValidException

    bus.run(Stage.fit, lambda: bus.run(Stage.validate, cancel_valid))
    assert log == ["logger:begin_fit", "after_cancel_valid", "logger:after_fit"]

    def cancel_train() -> None:
        raise CancelTrainException

    with pytest.raises(SignalUsageError) as info:
        bus.run(Stage.fit, cancel_train)
    assert str(info.value) == (
        "CancelTrainException was raised where no train stage is running (outermost stage: fit)"
    )


def test_bus_is_reusable_after_an_error() -> None:
    bus = EventBus()

    def fail() -> None:
        raise LookupError("nope")

    with pytest.raises(LookupError):
        bus.run(Stage.fit, lambda: bus.run(Stage.batch, fail))

    def cancel_batch() -> None:
        raise CancelBatchException

    # The batch stage of the failed run is not running any more.
    bus.subscribe(E.begin_fit, cancel_batch)
    with pytest.raises(SignalUsageError, match="CancelBatchException raised by subscriber"):
        bus.run(Stage.fit, lambda: None)


# ----------------------------------------------------------- dispatch tables


class AfterBatchOnly(Subscriber):
    @override
    def after_batch(self) -> None: ...


def test_only_overridden_hooks_are_subscribed() -> None:
    sub = AfterBatchOnly()
    bus = EventBus([sub])
    assert bus.handlers(E.after_batch) == (sub.after_batch,)
    assert [e for e in Event if bus.handlers(e)] == [E.after_batch]
    assert bus.subscribers == (sub,)


def test_dispatch_tables_change_only_with_subscribers() -> None:
    bus = EventBus([Logger([])])
    tables = {event: bus.handlers(event) for event in Event}
    for _ in range(3):
        evaluate(bus, [1, 2], [])
    assert all(bus.handlers(event) is tables[event] for event in Event)
    bus.subscribe(E.after_pred, lambda: None)
    assert bus.handlers(E.after_pred) is not tables[E.after_pred]
    assert len(bus.handlers(E.after_pred)) == 1


def test_live_handlers_follow_the_subscribers_in_place() -> None:
    bus = EventBus()
    live = bus.live_handlers(E.after_pred)
    assert not live
    first, second = (lambda: None), (lambda: None)
    bus.subscribe(E.after_pred, first)
    bus.subscribe(E.after_pred, second, order=-1)
    assert bus.live_handlers(E.after_pred) is live
    assert list(live) == [second, first] == list(bus.handlers(E.after_pred))
    bus.unsubscribe(E.after_pred, second)
    assert list(live) == [first]
    with pytest.raises(ValueError, match="is not a trainbus Event"):
        bus.live_handlers("after_pred_")  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def _each_trace(use_run_each: bool, cancel: set[int]) -> tuple[list[str], list[int]]:
    """A validate stage over four items, with the items in ``cancel`` cancelled."""
    log: list[str] = []
    done: list[int] = []
    bus = EventBus([Logger(log, skip=cancel)])
    bus.subscribe(E.after_pred, lambda: log.append("fn:after_pred"))
    items = [10, 11, 12, 13]
    position = iter(range(len(items)))

    def prepared() -> Iterator[int]:
        for item in items:
            log.append(f"loop:next {item}")
            yield item

    def one_item() -> None:
        done.append(next(position))
        bus.emit(E.after_pred)

    def all_items() -> None:
        if use_run_each:
            bus.run_each(Stage.batch, prepared(), one_item)
        else:
            for _ in prepared():
                bus.run(Stage.batch, one_item)

    bus.run(Stage.fit, lambda: bus.run(Stage.validate, all_items))
    return log, done


@pytest.mark.parametrize("cancel", [set[int](), {0}, {1, 3}])
def test_run_each_is_run_for_each_item(cancel: set[int]) -> None:
    assert _each_trace(True, cancel) == _each_trace(False, cancel)
    log, _ = _each_trace(True, cancel)
    assert log.count("logger:after_cancel_batch") == len(cancel)
    assert log.count("loop:next 13") == 1  # the items are drawn one stage at a time


def test_run_each_passes_outer_signals_and_catches_misplaced_ones() -> None:
    seen: list[int] = []
    bus = EventBus()

    def body() -> None:
        seen.append(len(seen))
        if len(seen) == 2:
            raise CancelValidException

    def batches() -> None:
        bus.run_each(Stage.batch, range(5), body)

    bus.run(Stage.fit, lambda: bus.run(Stage.validate, batches))
    assert seen == [0, 1]  # the validate stage took the signal, ending the items
    with pytest.raises(SignalUsageError, match="no train stage"):
        bus.run_each(Stage.batch, range(2), lambda: _raise(CancelTrainException()))


def _raise(error: BaseException) -> None:
    raise error


def test_learner_dispatch_tables_survive_fits() -> None:
    learn = tiny_learner()
    before = learn.bus.handlers(E.after_batch)
    learn.fit(2)
    assert learn.bus.handlers(E.after_batch) is before


def test_add_and_remove_errors() -> None:
    sub = AfterBatchOnly()
    bus = EventBus([sub])
    with pytest.raises(ValueError, match="AfterBatchOnly instance is registered already"):
        bus.add(sub)
    not_a_subscriber: Any = lambda: None  # noqa: E731
    with pytest.raises(TypeError, match=r"use subscribe\(\) for a plain function"):
        bus.add(not_a_subscriber)
    bus.remove(sub)
    assert bus.handlers(E.after_batch) == ()
    with pytest.raises(ValueError, match="AfterBatchOnly instance is not registered"):
        bus.remove(sub)


def test_describe_lists_event_by_event() -> None:
    bus = EventBus([AfterBatchOnly(), Logger([])])

    def tick() -> None: ...

    bus.subscribe(E.after_batch, tick, order=-1)
    assert bus.describe() == "\n".join(
        [
            "begin_fit:",
            "    Logger",
            "begin_batch:",
            "    Logger",
            "after_batch:",
            "    test_describe_lists_event_by_event.<locals>.tick",
            "    AfterBatchOnly",
            "    Logger",
            "after_fit:",
            "    Logger",
            "after_cancel_batch:",
            "    Logger",
        ]
    )


# ------------------------------------------------ plain functions on a Learner


def test_learner_subscribe_calls_function_with_the_learner() -> None:
    learn = tiny_learner()
    seen: list[tuple[bool, int]] = []

    def record_loss(learner: Learner) -> None:
        seen.append((learner is learn, learner.iter))

    learn.subscribe(E.after_loss, record_loss)
    assert "record_loss" in learn.bus.describe()
    learn.fit(1)
    assert seen == [(True, i) for i in range(N_TRAIN)] + [(True, i) for i in range(N_VALID)]
    learn.unsubscribe(E.after_loss, record_loss)
    learn.fit(1)
    assert len(seen) == N_TRAIN + N_VALID
    with pytest.raises(ValueError, match="is not subscribed to after_loss"):
        learn.unsubscribe(E.after_loss, record_loss)


# ------------------------------------------------------------------ hook names


class AfterLos(Callback):
    def after_los(self) -> None: ...


class BeginBatc(Callback):
    def begin_batc(self) -> None: ...


class BeforeBatch(Callback):
    def before_batch(self) -> None: ...


class BeginTraining(Callback):
    def begin_training(self) -> None: ...


class InheritsNearMiss(AfterLos):
    @override
    def after_loss(self) -> None: ...


@pytest.mark.parametrize(
    ("cls", "name", "suggestion"),
    [
        (AfterLos, "after_los", "after_loss"),
        (BeginBatc, "begin_batc", "begin_batch"),
        (BeforeBatch, "before_batch", "begin_batch"),
        (BeginTraining, "begin_training", "begin_train"),
        (InheritsNearMiss, "after_los", "after_loss"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else str(v),
)
def test_near_miss_hooks_are_rejected_at_registration(
    cls: type[Callback], name: str, suggestion: str
) -> None:
    expected = (
        f"{cls.__qualname__}.{name} is not an event, so it would never run: did you mean "
        f"{suggestion}? (Prefix a helper that is not a hook with '_'.)"
    )
    with pytest.raises(HookError) as on_bus:
        EventBus([cls()])
    assert str(on_bus.value) == expected
    learn = tiny_learner()
    defaults = learn.cbs
    cb = cls()
    with pytest.raises(HookError, match="did you mean"):
        learn.add_cb(cb)
    assert learn.cbs == defaults
    with pytest.raises(RuntimeError, match="not attached"):
        _ = cb.learn
    assert issubclass(HookError, TypeError)


class Helpers(Callback):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def _after_los(self) -> None:
        """Private helpers may look like hooks."""

    def plot(self) -> None: ...

    def reset_stats(self) -> None:
        self.calls.clear()

    @override
    def after_loss(self) -> None:
        self.calls.append("after_loss")


def test_helpers_and_unrelated_names_are_accepted() -> None:
    cb = Helpers()
    learn = tiny_learner([cb])
    learn.fit(1)
    assert cb.calls == ["after_loss"] * (N_TRAIN + N_VALID)
    assert [e for e in Event if cb.after_loss in learn.bus.handlers(e)] == [E.after_loss]


def _needs_value(self: Callback, value: int) -> None: ...


def _optional_value(self: Callback, value: int = 0, *rest: int, **named: int) -> None: ...


def test_hook_that_requires_an_argument_is_rejected() -> None:
    needs_arg: Any = type("NeedsArg", (Callback,), {"after_loss": _needs_value})
    with pytest.raises(
        HookError,
        match=r"^hook NeedsArg\.after_loss must take no arguments besides self, "
        r"but requires value$",
    ):
        tiny_learner([needs_arg()])
    optional: Any = type("Optional", (Callback,), {"after_loss": _optional_value})
    tiny_learner([optional()]).fit(1)
    not_a_method: Any = type("NotAMethod", (Callback,), {"after_loss": 3})
    with pytest.raises(HookError, match=r"NotAMethod\.after_loss must be a method, not int"):
        tiny_learner([not_a_method()])


class Regularizer(Callback):
    """``__init__`` without ``super().__init__()``, as in the source design."""

    def __init__(self, alpha: float = 0.0, beta: float = 0.0) -> None:
        self.alpha, self.beta = alpha, beta
        self.seen: list[int] = []

    @override
    def after_loss(self) -> None:
        self.seen.append(self.iter)


def test_subclass_init_need_not_call_super() -> None:
    cb = Regularizer(alpha=2.0)
    learn = tiny_learner([cb])
    learn.fit(1)
    assert cb.learn is learn and cb.alpha == 2.0
    assert cb.seen == [*range(N_TRAIN), *range(N_VALID)]
    assert cb.name == "regularizer"


@pytest.mark.parametrize(
    ("cls_name", "name"),
    [
        ("TerminateOnNaNCallback", "terminate_on_nan"),
        ("Recorder", "recorder"),
        ("TrainEvalCallback", "train_eval"),
        ("HTTPLogger", "http_logger"),
        ("Callback", "callback"),
    ],
)
def test_subscriber_names_are_snake_case(cls_name: str, name: str) -> None:
    cls: Callable[[], Subscriber] = type(cls_name, (Subscriber,), {})
    assert cls().name == name


@pytest.mark.parametrize(
    "raising_event", [Event.begin_batch, Event.after_pred, Event.after_loss, Event.after_backward]
)
def test_cancelled_in_names_the_event_that_raised(raising_event: Event) -> None:
    seen: list[Event | None] = []

    def cancel(learn: Learner) -> None:
        if learn.training and learn.iter == 0:
            raise CancelBatchException

    def record(learn: Learner) -> None:
        seen.append(learn.bus.cancelled_in)

    learn = tiny_learner()
    learn.subscribe(raising_event, cancel)
    learn.subscribe(Event.after_cancel_batch, record)
    learn.fit(1)
    assert seen == [raising_event]


def test_cancelled_in_is_none_when_a_stage_body_raised() -> None:
    bus = EventBus()
    seen: list[Event | None] = []
    bus.subscribe(Event.after_cancel_batch, lambda: seen.append(bus.cancelled_in))

    def body() -> None:
        raise CancelBatchException

    bus.run(Stage.fit, lambda: bus.run(Stage.batch, body))
    assert seen == [None]
