"""Events: the 19 contract events, the five stages, and the exact trace of a plain fit."""

from __future__ import annotations

import enum

import pytest

import trainbus
from conftest import N_EPOCH, N_TRAIN, N_VALID, TraceCallback, TraceEntry, tiny_learner
from trainbus import Event, Stage

# The contract's list, in its order: the fit's events, then the five cancel events.
CONTRACT_EVENTS = [
    "begin_fit",
    "begin_epoch",
    "begin_train",
    "begin_batch",
    "after_pred",
    "after_loss",
    "after_backward",
    "after_step",
    "after_batch",
    "after_train",
    "begin_validate",
    "after_validate",
    "after_epoch",
    "after_fit",
    "after_cancel_batch",
    "after_cancel_train",
    "after_cancel_valid",
    "after_cancel_epoch",
    "after_cancel_fit",
]


def test_event_is_a_str_enum_of_exactly_the_contract_events() -> None:
    assert issubclass(Event, enum.StrEnum)
    assert [e.value for e in Event] == CONTRACT_EVENTS
    assert [e.name for e in Event] == CONTRACT_EVENTS
    assert len(Event) == 19
    assert Event.after_loss == "after_loss"
    assert Event("begin_batch") is Event.begin_batch


def test_event_alias_is_the_enum() -> None:
    assert trainbus.event is Event
    assert "event" in trainbus.__all__


def test_event_docstring_shows_the_loop_in_order() -> None:
    doc = Event.__doc__
    assert doc is not None
    in_fit_order = [*CONTRACT_EVENTS[:14], "loss.backward()", "opt.step()", "opt.zero_grad()"]
    positions = {name: doc.index(name) for name in in_fit_order}
    fit_events = CONTRACT_EVENTS[:14]
    assert [positions[n] for n in fit_events] == sorted(positions[n] for n in fit_events)
    # The batch body: backward before after_backward, step before after_step, zero_grad
    # after after_step and before after_batch.
    assert positions["after_loss"] < positions["loss.backward()"] < positions["after_backward"]
    assert positions["after_backward"] < positions["opt.step()"] < positions["after_step"]
    assert positions["after_step"] < positions["opt.zero_grad()"] < positions["after_batch"]
    for cancel_event in CONTRACT_EVENTS[14:]:
        assert cancel_event in doc


def test_stages_pair_begin_cancel_and_after_events() -> None:
    table = [(s.name, s.begin.value, s.after_cancel.value, s.after.value) for s in Stage.all()]
    assert table == [
        ("fit", "begin_fit", "after_cancel_fit", "after_fit"),
        ("epoch", "begin_epoch", "after_cancel_epoch", "after_epoch"),
        ("train", "begin_train", "after_cancel_train", "after_train"),
        ("validate", "begin_validate", "after_cancel_valid", "after_validate"),
        ("batch", "begin_batch", "after_cancel_batch", "after_batch"),
    ]
    assert repr(Stage.validate) == "Stage.validate"


def expected_plain_trace(n_epoch: int, n_train: int, n_valid: int) -> list[TraceEntry]:
    """The contract's loop, written out: ``(tag, event, epoch, iter, training)`` per event.

    ``iter`` restarts at 0 with each phase and keeps its last value after it; ``training``
    switches at begin_train / begin_validate (TrainEvalCallback runs first) and stays.
    """
    e = Event
    trace: list[TraceEntry] = [("trace", e.begin_fit, 0, 0, False)]
    epoch = it = 0
    training = False
    for epoch in range(n_epoch):
        trace.append(("trace", e.begin_epoch, epoch, it, training))
        it, training = 0, True
        trace.append(("trace", e.begin_train, epoch, it, training))
        for it in range(n_train):
            for event in (
                e.begin_batch,
                e.after_pred,
                e.after_loss,
                e.after_backward,
                e.after_step,
                e.after_batch,
            ):
                trace.append(("trace", event, epoch, it, training))
        trace.append(("trace", e.after_train, epoch, it, training))
        it, training = 0, False
        trace.append(("trace", e.begin_validate, epoch, it, training))
        for it in range(n_valid):
            for event in (e.begin_batch, e.after_pred, e.after_loss, e.after_batch):
                trace.append(("trace", event, epoch, it, training))
        trace.append(("trace", e.after_validate, epoch, it, training))
        trace.append(("trace", e.after_epoch, epoch, it, training))
    trace.append(("trace", e.after_fit, epoch, it, training))
    return trace


def test_plain_fit_emits_the_contract_trace() -> None:
    log: list[TraceEntry] = []
    learn = tiny_learner([TraceCallback(log)])
    learn.fit(N_EPOCH)
    expected = expected_plain_trace(N_EPOCH, N_TRAIN, N_VALID)
    assert log == expected
    # Spelled out for the first training batch, so the model above is checked by eye too.
    assert [entry[1].value for entry in log[3:9]] == [
        "begin_batch",
        "after_pred",
        "after_loss",
        "after_backward",
        "after_step",
        "after_batch",
    ]
    assert len(log) == 2 + N_EPOCH * (6 + 6 * N_TRAIN + 4 * N_VALID)


@pytest.mark.parametrize(
    ("n_epoch", "n_train", "n_valid"), [(0, 3, 2), (1, 1, 0), (3, 1, 1), (1, 2, 3)]
)
def test_fit_trace_for_other_sizes(n_epoch: int, n_train: int, n_valid: int) -> None:
    log: list[TraceEntry] = []
    learn = tiny_learner([TraceCallback(log)], n_train=n_train, n_valid=n_valid)
    learn.fit(n_epoch)
    assert log == expected_plain_trace(n_epoch, n_train, n_valid)


def test_second_fit_repeats_the_trace_with_the_same_learner() -> None:
    log: list[TraceEntry] = []
    learn = tiny_learner([TraceCallback(log)])
    learn.fit(1)
    first = list(log)
    log.clear()
    learn.fit(1)
    assert [entry[1] for entry in log] == [entry[1] for entry in first]
    # From begin_train on, the loop has reset every counter it owns.
    assert log[2:] == first[2:]
