"""Signals: every signal at every event of a small fit, against a model of the contract.

``ContractModel`` below is the contract's wording turned into a tiny interpreter, written
without any trainbus code: each stage X runs ``try: begin_X; body  except Cancel<X>:
after_cancel_X`` then ``after_X``; a signal ends the event's dispatch at once; a signal
for a stage whose body is not running is a usage error that ends the run. The real fit
is traced by two callbacks, ``first`` (which raises) and ``second`` (registered to run
after it), and must match the model entry for entry.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import N_EPOCH, N_TRAIN, N_VALID, TraceCallback, TraceEntry, tiny_learner
from trainbus import (
    CancelBatchException,
    CancelEpochException,
    CancelException,
    CancelFitException,
    CancelTrainException,
    CancelValidException,
    Event,
    Learner,
    SignalUsageError,
    UnsetFieldError,
)
from trainbus.callbacks import ProgressCallback

E = Event
SIGNALS: Final[tuple[type[CancelException], ...]] = (
    CancelBatchException,
    CancelTrainException,
    CancelValidException,
    CancelEpochException,
    CancelFitException,
)
# The contract's cancel table: the stage each signal ends, and that stage's events.
STAGE_OF: Final[dict[type[CancelException], str]] = {
    CancelBatchException: "batch",
    CancelTrainException: "train",
    CancelValidException: "validate",
    CancelEpochException: "epoch",
    CancelFitException: "fit",
}
BEGIN: Final = {
    "fit": E.begin_fit,
    "epoch": E.begin_epoch,
    "train": E.begin_train,
    "validate": E.begin_validate,
    "batch": E.begin_batch,
}
AFTER_CANCEL: Final = {
    "fit": E.after_cancel_fit,
    "epoch": E.after_cancel_epoch,
    "train": E.after_cancel_train,
    "validate": E.after_cancel_valid,
    "batch": E.after_cancel_batch,
}
AFTER: Final = {
    "fit": E.after_fit,
    "epoch": E.after_epoch,
    "train": E.after_train,
    "validate": E.after_validate,
    "batch": E.after_batch,
}

Point = tuple[Event, int, int, bool]
"""``(event, epoch, iter, training)``: where in a fit an event is published."""


@dataclass(frozen=True)
class RaiseRule:
    """Raise ``signal`` at the first event matching ``event`` and the given coordinates."""

    signal: type[CancelException]
    event: Event
    epoch: int | None = None
    iter: int | None = None
    training: bool | None = None

    def matches(self, point: Point) -> bool:
        event, epoch, it, training = point
        return (
            event is self.event
            and self.epoch in (None, epoch)
            and self.iter in (None, it)
            and self.training in (None, training)
        )


class _ModelSignal(Exception):
    def __init__(self, stage: str) -> None:
        self.stage = stage


class _ModelMisuse(Exception):
    def __init__(self, signal: type[CancelException], event: Event) -> None:
        self.signal = signal
        self.event = event


class ContractModel:
    """The contract's semantics, as a recursive interpreter over a fit of tiny sizes.

    ``training`` switches at begin_train / begin_validate before the traced callbacks
    run (TrainEvalCallback runs first); ``iter`` restarts at 0 with each phase.
    """

    def __init__(
        self,
        rules: Sequence[RaiseRule],
        n_epoch: int = N_EPOCH,
        n_train: int = N_TRAIN,
        n_valid: int = N_VALID,
    ) -> None:
        self.rules = rules
        self.fired = [False] * len(rules)
        self.n_epoch, self.n_train, self.n_valid = n_epoch, n_train, n_valid
        self.epoch = self.iter = 0
        self.training = False
        self.running: list[str] = []  # stages whose begin event or body is running
        self.log: list[TraceEntry] = []
        self.points: list[tuple[Point, tuple[str, ...]]] = []
        self.misuse: _ModelMisuse | None = None

    def run(self) -> ContractModel:
        try:
            self.stage("fit", self.all_epochs)
        except _ModelMisuse as misuse:
            self.misuse = misuse
        return self

    def emit(self, event: Event) -> None:
        if event is E.begin_train:
            self.training = True
        elif event is E.begin_validate:
            self.training = False
        point: Point = (event, self.epoch, self.iter, self.training)
        self.points.append((point, tuple(self.running)))
        self.log.append(("first", *point))
        for k, rule in enumerate(self.rules):
            if not self.fired[k] and rule.matches(point):
                self.fired[k] = True
                stage = STAGE_OF[rule.signal]
                if stage not in self.running:
                    raise _ModelMisuse(rule.signal, event)
                raise _ModelSignal(stage)  # "second" does not see this event
        self.log.append(("second", *point))

    def stage(self, name: str, body: Callable[[], None]) -> None:
        self.running.append(name)
        try:
            self.emit(BEGIN[name])
            body()
        except _ModelSignal as signal:
            self.running.pop()
            if signal.stage != name:
                raise  # an outer stage's signal: no after_* event here
            self.emit(AFTER_CANCEL[name])
        else:
            self.running.pop()
        self.emit(AFTER[name])

    def all_epochs(self) -> None:
        for epoch in range(self.n_epoch):
            self.epoch = epoch
            self.stage("epoch", self.one_epoch)

    def one_epoch(self) -> None:
        self.iter = 0
        self.stage("train", lambda: self.batches(self.n_train, self.train_batch))
        self.iter = 0
        self.stage("validate", lambda: self.batches(self.n_valid, self.valid_batch))

    def batches(self, n: int, body: Callable[[], None]) -> None:
        for i in range(n):
            self.iter = i
            self.stage("batch", body)

    def train_batch(self) -> None:
        for event in (E.after_pred, E.after_loss, E.after_backward, E.after_step):
            self.emit(event)

    def valid_batch(self) -> None:
        for event in (E.after_pred, E.after_loss):
            self.emit(event)


class Raiser(TraceCallback):
    """Traces as ``first``, then raises the first unfired rule matching the event."""

    def __init__(self, log: list[TraceEntry], rules: Sequence[RaiseRule]) -> None:
        super().__init__(log, "first")
        self.rules = rules
        self.fired = [False] * len(rules)

    def _seen(self, event: Event) -> None:
        point: Point = (event, self.epoch, self.iter, self.training)
        for k, rule in enumerate(self.rules):
            if not self.fired[k] and rule.matches(point):
                self.fired[k] = True
                raise rule.signal


class Second(TraceCallback):
    """Traces as ``second``; runs after Raiser in every event."""

    run_after = Raiser

    def __init__(self, log: list[TraceEntry]) -> None:
        super().__init__(log, "second")


@dataclass
class RealRun:
    log: list[TraceEntry]
    learn: Learner
    error: SignalUsageError | None


def run_real(rules: Sequence[RaiseRule]) -> RealRun:
    log: list[TraceEntry] = []
    # Second is registered first: only run_after puts it behind Raiser.
    learn = tiny_learner([Second(log), Raiser(log, rules)])
    try:
        learn.fit(N_EPOCH)
    except SignalUsageError as error:
        return RealRun(log, learn, error)
    return RealRun(log, learn, None)


def check_against_model(rules: Sequence[RaiseRule]) -> RealRun:
    """Run the rules for real and in the model; assert the same trace and outcome."""
    model = ContractModel(rules).run()
    real = run_real(rules)
    assert real.log == model.log
    if model.misuse is None:
        assert real.error is None
    else:
        assert real.error is not None
        message = str(real.error)
        assert model.misuse.signal.__name__ in message
        assert model.misuse.event.value in message
        assert "Raiser" in message
    # However the fit ended, the state holds no batch tensors.
    for name in ("xb", "yb", "pred", "loss"):
        with pytest.raises(UnsetFieldError):
            getattr(real.learn.state, name)
    return real


# Every (signal, point of the plain fit), split by whether the signal's stage is running.
PLAIN_POINTS: Final = ContractModel([]).run().points
LEGAL: Final[list[tuple[type[CancelException], Point]]] = []
ILLEGAL: Final[list[tuple[type[CancelException], Point]]] = []
for _signal in SIGNALS:
    for _point, _running in PLAIN_POINTS:
        (LEGAL if STAGE_OF[_signal] in _running else ILLEGAL).append((_signal, _point))


def _case_id(case: tuple[type[CancelException], Point]) -> str:
    signal, (event, epoch, it, training) = case
    phase = "train" if training else "valid"
    return f"{signal.__name__.removesuffix('Exception')}@{event.value}-e{epoch}-i{it}-{phase}"


def test_plain_points_are_unique_and_cases_cover_them() -> None:
    points = [point for point, _ in PLAIN_POINTS]
    assert len(set(points)) == len(points) == 2 + N_EPOCH * (6 + 6 * N_TRAIN + 4 * N_VALID)
    assert len(LEGAL) + len(ILLEGAL) == len(SIGNALS) * len(points)
    # Spot checks of the split against the cancel table.
    assert (CancelBatchException, (E.after_step, 0, 0, True)) in LEGAL
    assert (CancelBatchException, (E.after_batch, 0, 0, True)) in ILLEGAL
    assert (CancelTrainException, (E.after_batch, 0, 2, True)) in LEGAL
    assert (CancelTrainException, (E.after_train, 0, 2, True)) in ILLEGAL
    assert (CancelValidException, (E.begin_batch, 0, 0, True)) in ILLEGAL
    assert (CancelEpochException, (E.after_validate, 1, 1, False)) in LEGAL
    assert (CancelEpochException, (E.after_epoch, 1, 1, False)) in ILLEGAL
    assert (CancelFitException, (E.after_epoch, 1, 1, False)) in LEGAL
    assert (CancelFitException, (E.after_fit, 1, 1, False)) in ILLEGAL


@pytest.mark.parametrize("case", LEGAL, ids=_case_id)
def test_signal_where_its_stage_runs(case: tuple[type[CancelException], Point]) -> None:
    signal, (event, epoch, it, training) = case
    real = check_against_model([RaiseRule(signal, event, epoch, it, training)])
    cancel_event = AFTER_CANCEL[STAGE_OF[signal]]
    assert [entry[1] for entry in real.log].count(cancel_event) == 2  # first and second
    assert real.error is None


@pytest.mark.parametrize("case", ILLEGAL, ids=_case_id)
def test_signal_where_its_stage_cannot_be_cancelled(
    case: tuple[type[CancelException], Point],
) -> None:
    signal, (event, epoch, it, training) = case
    real = check_against_model([RaiseRule(signal, event, epoch, it, training)])
    assert real.error is not None
    assert real.log[-1] == ("first", event, epoch, it, training)  # nothing ran after it


@pytest.mark.parametrize("cancelled", ["fit", "epoch", "train", "validate", "batch"])
@pytest.mark.parametrize("signal", SIGNALS, ids=lambda s: s.__name__)
def test_signal_in_after_cancel_event(cancelled: str, signal: type[CancelException]) -> None:
    """A second signal raised in after_cancel_X: legal for outer stages only."""
    first = {v: k for k, v in STAGE_OF.items()}[cancelled]
    rules = [
        RaiseRule(first, BEGIN[cancelled], epoch=0, iter=1 if cancelled == "batch" else None),
        RaiseRule(signal, AFTER_CANCEL[cancelled]),
    ]
    real = check_against_model(rules)
    # Stages still running during after_cancel_X (X itself has ended).
    running = {
        "batch": {"fit", "epoch", "train"},
        "train": {"fit", "epoch"},
        "validate": {"fit", "epoch"},
        "epoch": {"fit"},
        "fit": set[str](),
    }
    assert (real.error is None) == (STAGE_OF[signal] in running[cancelled])


_rules = st.builds(
    RaiseRule,
    signal=st.sampled_from(SIGNALS),
    event=st.sampled_from(list(Event)),
    epoch=st.sampled_from([None, 0, 1]),
    iter=st.sampled_from([None, 0, 1, 2]),
    training=st.sampled_from([None, True, False]),
)


@settings(max_examples=150, deadline=None)
@given(st.lists(_rules, min_size=1, max_size=4))
def test_any_combination_of_signals_follows_the_model(rules: list[RaiseRule]) -> None:
    check_against_model(rules)


# ------------------------------------------------------------ spelled-out traces


def events_of(log: list[TraceEntry], tag: str) -> list[str]:
    return [entry[1].value for entry in log if entry[0] == tag]


def test_outer_signal_skips_inner_after_events() -> None:
    rule = RaiseRule(CancelEpochException, E.after_loss, epoch=0, iter=1, training=True)
    log: list[TraceEntry] = []
    learn = tiny_learner([Raiser(log, [rule]), Second(log)])
    learn.fit(1)
    batch = ["begin_batch", "after_pred", "after_loss", "after_backward", "after_step"]
    assert events_of(log, "first") == [
        "begin_fit",
        "begin_epoch",
        "begin_train",
        *batch,
        "after_batch",
        "begin_batch",
        "after_pred",
        "after_loss",  # raised here: no after_batch, after_train, nor validation
        "after_cancel_epoch",
        "after_epoch",
        "after_fit",
    ]
    assert ("first", E.after_loss, 0, 1, True) in log
    assert ("second", E.after_loss, 0, 1, True) not in log  # dispatch stopped at once
    first = events_of(log, "first")
    assert events_of(log, "second") == first[:11] + first[12:]  # all but batch 1's after_loss


def test_cancel_train_in_begin_batch_goes_on_with_validation() -> None:
    rule = RaiseRule(CancelTrainException, E.begin_batch, iter=0)
    log: list[TraceEntry] = []
    tiny_learner([Raiser(log, [rule]), Second(log)]).fit(1)
    valid_batch = ["begin_batch", "after_pred", "after_loss", "after_batch"]
    expected = [
        "begin_fit",
        "begin_epoch",
        "begin_train",
        "begin_batch",
        "after_cancel_train",
        "after_train",
        "begin_validate",
        *valid_batch,
        *valid_batch,
        "after_validate",
        "after_epoch",
        "after_fit",
    ]
    assert events_of(log, "first") == expected
    assert events_of(log, "second") == expected[:3] + expected[4:]


def test_usage_error_names_signal_event_and_callback() -> None:
    rule = RaiseRule(CancelValidException, E.after_step)
    real = run_real([rule])
    assert real.error is not None
    assert str(real.error) == (
        "CancelValidException raised by callback Raiser in after_step, where no validate "
        "stage can be cancelled (it has ended or not begun): raise it between "
        "begin_validate and the end of the validate body instead"
    )


def test_usage_error_closes_bars_and_drops_the_batch(capsys: pytest.CaptureFixture[str]) -> None:
    rule = RaiseRule(CancelBatchException, E.after_batch, iter=1, training=True)
    log: list[TraceEntry] = []
    learn = tiny_learner([Raiser(log, [rule])])
    learn.remove_cb(learn.get_cb(ProgressCallback))
    progress = learn.add_cb(ProgressCallback(show=True))
    with pytest.raises(SignalUsageError, match="CancelBatchException raised by callback Raiser"):
        learn.fit(1)
    assert not progress.bars_open
    assert "train" in capsys.readouterr().err  # the bars did show
    with pytest.raises(UnsetFieldError):
        _ = learn.state.loss
    assert len(learn.recorder.losses) == 2  # the Recorder ran before Raiser in after_batch


# ------------------------------------------------------------ gradients and weights


def _grads_at(
    params: tuple[torch.Tensor, torch.Tensor], x: torch.Tensor, y: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients of the MSE of ``x @ w.T + b`` against ``y``, computed by hand."""
    w = params[0].detach().clone().requires_grad_(True)
    b = params[1].detach().clone().requires_grad_(True)
    loss = ((x @ w.T + b - y) ** 2).mean()
    gw, gb = torch.autograd.grad(loss, (w, b))
    return gw, gb


def _learner_with_rule(rule: RaiseRule) -> Learner:
    """A learner of two training batches (no validation) whose Raiser follows ``rule``."""
    return tiny_learner([Raiser([], [rule])], n_train=2, n_valid=0, lr=0.1)


def test_cancel_in_after_backward_skips_step_and_zero_grad() -> None:
    rule = RaiseRule(CancelBatchException, E.after_backward, iter=0)
    learn = _learner_with_rule(rule)
    weight, bias = learn.model.parameters()
    w0 = (weight.detach().clone(), bias.detach().clone())
    (x0, y0), (x1, y1) = list(learn.dls.train)
    seen: list[tuple[torch.Tensor, ...]] = []

    def snapshot(learner: Learner) -> None:
        grads = [p.grad.clone() if p.grad is not None else torch.zeros(0) for p in (weight, bias)]
        seen.append((weight.detach().clone(), bias.detach().clone(), *grads))

    learn.subscribe(E.begin_batch, snapshot)
    learn.fit(1)
    g0, g1 = _grads_at(w0, x0, y0), _grads_at(w0, x1, y1)
    # Batch 1 starts with batch 0's gradients still there, and the weights unmoved.
    assert torch.equal(seen[1][0], w0[0]) and torch.equal(seen[1][1], w0[1])
    assert torch.allclose(seen[1][2], g0[0]) and torch.allclose(seen[1][3], g0[1])
    # Batch 1's step used the sum of both batches' gradients, then zeroed them.
    assert torch.allclose(weight.detach(), w0[0] - 0.1 * (g0[0] + g1[0]))
    assert torch.allclose(bias.detach(), w0[1] - 0.1 * (g0[1] + g1[1]))
    assert weight.grad is None and bias.grad is None


def test_cancel_in_after_step_keeps_the_step_but_skips_zero_grad() -> None:
    rule = RaiseRule(CancelBatchException, E.after_step, iter=0)
    learn = _learner_with_rule(rule)
    weight, bias = learn.model.parameters()
    w0 = (weight.detach().clone(), bias.detach().clone())
    (x0, y0), (x1, y1) = list(learn.dls.train)
    learn.fit(1)
    g0 = _grads_at(w0, x0, y0)
    w1 = (w0[0] - 0.1 * g0[0], w0[1] - 0.1 * g0[1])
    g1 = _grads_at(w1, x1, y1)
    assert torch.allclose(weight.detach(), w1[0] - 0.1 * (g0[0] + g1[0]))
    assert torch.allclose(bias.detach(), w1[1] - 0.1 * (g0[1] + g1[1]))


def test_cancel_in_after_loss_skips_backward() -> None:
    rule = RaiseRule(CancelBatchException, E.after_loss, training=True)
    learn = _learner_with_rule(rule)
    weight, bias = learn.model.parameters()
    w0 = (weight.detach().clone(), bias.detach().clone())
    (_, _), (x1, y1) = list(learn.dls.train)
    learn.fit(1)
    g1 = _grads_at(w0, x1, y1)  # only batch 1 contributed
    assert torch.allclose(weight.detach(), w0[0] - 0.1 * g1[0])
    assert torch.allclose(bias.detach(), w0[1] - 0.1 * g1[1])
