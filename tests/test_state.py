"""The state a callback sees: its values at every event, and the validation of writes."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pydantic
import pytest
import torch
from torch import nn
from typing_extensions import override

from conftest import BS, N_EPOCH, N_TRAIN, N_VALID, TraceCallback, tiny_learner, tiny_tensors
from trainbus import (
    Callback,
    DataLoaders,
    Event,
    Extras,
    Learner,
    StateKey,
    TrainingState,
    UnsetFieldError,
)

E = Event
TRAIN_BATCH = (E.begin_batch, E.after_pred, E.after_loss, E.after_backward, E.after_step)
VALID_BATCH = (E.begin_batch, E.after_pred, E.after_loss)


@dataclass(frozen=True)
class Snap:
    """What a callback reads at one event."""

    event: Event
    epoch: int
    iter: int
    n_iter: int
    n_epoch: int
    training: bool
    model_training: bool
    train_iter: int
    pct_train: float
    grad_enabled: bool


def expected_snaps(n_epoch: int, n_train: int, n_valid: int) -> list[Snap]:
    """The contract's state at each event of a plain fit, computed independently."""
    snaps: list[Snap] = []
    epoch = it = n_iter = train_iter = 0
    pct = 0.0
    training, model_training, grad = False, True, True  # nn.Module starts in train mode

    def snap(event: Event) -> None:
        snaps.append(
            Snap(event, epoch, it, n_iter, n_epoch, training, model_training, train_iter, pct, grad)
        )

    snap(E.begin_fit)
    for epoch in range(n_epoch):
        snap(E.begin_epoch)
        it, n_iter, training, model_training = 0, n_train, True, True
        pct = epoch / n_epoch
        snap(E.begin_train)
        for i in range(n_train):
            it = i
            for event in TRAIN_BATCH:
                snap(event)
            train_iter += 1
            pct = train_iter / (n_epoch * n_train)
            snap(E.after_batch)
        snap(E.after_train)
        it, n_iter, training, model_training, grad = 0, n_valid, False, False, False
        snap(E.begin_validate)
        for i in range(n_valid):
            it = i
            for event in (*VALID_BATCH, E.after_batch):
                snap(event)
        snap(E.after_validate)
        grad = True
        snap(E.after_epoch)
    snap(E.after_fit)
    return snaps


class StateProbe(TraceCallback):
    """Snapshots the state at every event; checks the batch views while a batch runs."""

    def __init__(self) -> None:
        super().__init__([])
        self.snaps: list[Snap] = []
        self.batches: list[tuple[bool, str, torch.Tensor, torch.Tensor]] = []
        self._in_batch = False

    @override
    def _seen(self, event: Event) -> None:
        self.snaps.append(
            Snap(
                event,
                self.epoch,
                self.iter,
                self.n_iter,
                self.n_epoch,
                self.training,
                self.model.training,
                self.train_iter,
                self.pct_train,
                torch.is_grad_enabled(),
            )
        )
        if event is E.begin_batch:
            self._in_batch = True
        if self._in_batch:
            views_ok = (
                type(self.xb) is tuple
                and type(self.yb) is tuple
                and len(self.xb) == len(self.yb) == 1
                and self.x is self.xb[0]
                and self.y is self.yb[0]
            )
            self.batches.append((views_ok, event.value, self.x, self.y))
        if event is E.after_batch:
            self._in_batch = False


def test_state_values_at_every_event() -> None:
    probe = StateProbe()
    tiny_learner([probe]).fit(N_EPOCH)
    assert probe.snaps == expected_snaps(N_EPOCH, N_TRAIN, N_VALID)


def test_pct_train_runs_from_zero_to_exactly_one() -> None:
    probe = StateProbe()
    tiny_learner([probe]).fit(3)
    values = [snap.pct_train for snap in probe.snaps]
    assert values[0] == 0.0
    assert values == sorted(values)
    last_train_batch = max(
        i for i, s in enumerate(probe.snaps) if s.event is E.after_batch and s.training
    )
    assert probe.snaps[last_train_batch].pct_train == 1.0
    assert values[last_train_batch:] == [1.0] * (len(values) - last_train_batch)


def test_grad_mode_is_off_in_the_whole_validation_phase() -> None:
    probe = StateProbe()
    tiny_learner([probe]).fit(1)
    phase_of = {True: set[bool](), False: set[bool]()}
    in_validation = False
    for snap in probe.snaps:
        in_validation = in_validation or snap.event is E.begin_validate
        phase_of[in_validation].add(snap.grad_enabled)
        in_validation = in_validation and snap.event is not E.after_validate
    assert phase_of == {True: {False}, False: {True}}


def test_batch_views_are_the_batch_from_the_data() -> None:
    probe = StateProbe()
    learn = tiny_learner([probe])
    learn.fit(1)
    assert all(ok for ok, *_ in probe.batches)
    xs, ys = tiny_tensors(N_TRAIN, BS, seed=1)
    xv, yv = tiny_tensors(N_VALID, BS, seed=2)
    per_batch = len(TRAIN_BATCH) + 1
    for i in range(N_TRAIN):
        _, event, x, y = probe.batches[i * per_batch]
        assert event == "begin_batch"
        assert torch.equal(x, xs[i * BS : (i + 1) * BS])
        assert torch.equal(y, ys[i * BS : (i + 1) * BS])
    first_valid = probe.batches[N_TRAIN * per_batch]
    assert torch.equal(first_valid[2], xv[:BS]) and torch.equal(first_valid[3], yv[:BS])


class _TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)

    @override
    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.lin(a + b)
        return out


class _ReadX(Callback):
    @override
    def after_pred(self) -> None:
        _ = self.x


def test_x_of_a_two_input_batch_says_to_read_xb() -> None:
    x, y = tiny_tensors(2)
    dls = DataLoaders.from_tensors((x, x, y), bs=2, shuffle=False)
    learn = Learner(_TwoInputs(), dls, nn.functional.mse_loss, cbs=[_ReadX()], n_inp=2)
    with pytest.raises(ValueError, match="x is defined for batches with one element") as info:
        learn.fit(1)
    assert "xb has 2: read xb instead" in str(info.value)
    assert info.value.__notes__ == ["trainbus: raised in callback _ReadX during event after_pred"]


# --------------------------------------------------------------- validated writes


class _Write(Callback):
    """Writes ``value`` to ``self.learn.<field>`` at ``event``."""

    def __init__(self, event: Event, field: str, value: object) -> None:
        self.event = event
        self.field = field
        self.value = value

    def _write(self, event: Event) -> None:
        if event is self.event:
            setattr(self.learn, self.field, self.value)

    @override
    def begin_batch(self) -> None:
        self._write(E.begin_batch)

    @override
    def after_pred(self) -> None:
        self._write(E.after_pred)

    @override
    def after_loss(self) -> None:
        self._write(E.after_loss)


class BadLoss(Callback):
    @override
    def after_loss(self) -> None:
        high: Any = "high"  # what an untyped caller could pass
        self.learn.loss = high


def test_wrong_type_raises_validation_error_naming_field_callback_event() -> None:
    learn = tiny_learner([BadLoss()])
    with pytest.raises(pydantic.ValidationError) as info:
        learn.fit(1)
    errors = info.value.errors()
    assert [error["loc"] for error in errors] == [("loss",)]
    assert errors[0]["input"] == "high"
    assert info.value.__notes__ == ["trainbus: raised in callback BadLoss during event after_loss"]


@pytest.mark.parametrize(
    ("event", "field", "value"),
    [
        (E.begin_batch, "xb", [torch.zeros(2, 2)]),  # a list, not a tuple
        (E.begin_batch, "xb", (1.0, 2.0)),  # not tensors
        (E.begin_batch, "yb", torch.zeros(2, 1)),  # a bare tensor, not a tuple
        (E.after_pred, "pred", [0.0, 1.0]),
        (E.after_loss, "loss", 0.5),
        (E.after_loss, "training", "yes"),
        (E.after_loss, "train_iter", "3"),
    ],
)
def test_invalid_writes_are_rejected(event: Event, field: str, value: object) -> None:
    learn = tiny_learner([_Write(event, field, value)])
    with pytest.raises(pydantic.ValidationError) as info:
        learn.fit(1)
    assert {error["loc"][0] for error in info.value.errors()} == {field}
    assert info.value.__notes__ == [f"trainbus: raised in callback _Write during event {event}"]


def test_validated_writes_land_in_the_dict_the_loop_holds() -> None:
    state = tiny_learner().state
    values = state.trusted_values
    state.loss = torch.tensor(2.0)
    state.training = True
    assert state.trusted_values is values
    assert values["loss"].item() == 2.0 and values["training"] is True
    with pytest.raises(pydantic.ValidationError):
        state.loss = 3.0  # type: ignore[assignment]  # pyright: ignore[reportAttributeAccessIssue]
    assert state.trusted_values is values and values["loss"].item() == 2.0  # unchanged


def test_valid_writes_are_accepted() -> None:
    learn = tiny_learner([_Write(E.begin_batch, "xb", (torch.zeros(BS, 2),))])
    learn.fit(1)
    # With zero inputs the model predicts its bias; validation ran with the final bias.
    _, yv = tiny_tensors(N_VALID, BS, seed=2)
    bias = learn.model.get_parameter("bias").item()
    assert learn.recorder.values[0][1] == pytest.approx(((bias - yv) ** 2).mean().item())


class _AssignOwnField(Callback):
    """Assigns ``self.<name>`` in begin_batch, as a user might by mistake."""

    def __init__(self, name: str) -> None:
        self._name = name

    @override
    def begin_batch(self) -> None:
        setattr(self, self._name, torch.zeros(1))


@pytest.mark.parametrize("name", ["loss", "pred", "xb", "yb", "smooth_loss", "training"])
def test_writing_a_view_on_the_callback_says_write_self_learn(name: str) -> None:
    cb = _AssignOwnField(name)
    learn = tiny_learner([cb])
    with pytest.raises(AttributeError) as info:
        learn.fit(1)
    assert str(info.value) == (
        f"_AssignOwnField.{name} is a read-only view of the learner's state: "
        f"write self.learn.{name} = ... to change it"
    )
    assert info.value.__notes__ == [
        "trainbus: raised in callback _AssignOwnField during event begin_batch"
    ]
    assert name not in vars(cb)


class _AssignLoss(Callback):
    @override
    def after_loss(self) -> None:
        self.loss = self.loss * 2  # type: ignore[misc]  # the mistake under test


def test_self_loss_assignment_never_creates_an_attribute() -> None:
    cb = _AssignLoss()
    with pytest.raises(AttributeError, match=r"write self\.learn\.loss = \.\.\."):
        tiny_learner([cb]).fit(1)
    assert "loss" not in vars(cb)


LOOP_OWNED = ["epoch", "iter", "n_epoch", "n_iter", "dl", "dls", "x", "y", "cbs"]


@pytest.mark.parametrize("name", LOOP_OWNED)
def test_loop_owned_fields_cannot_be_written(name: str) -> None:
    learn = tiny_learner()
    with pytest.raises(AttributeError) as on_learner:
        setattr(learn, name, 3)
    assert str(on_learner.value) == (
        f"Learner.{name} is owned by the training loop; callbacks can read it, not write it"
    )
    cb = _AssignOwnField(name)
    with pytest.raises(AttributeError) as on_callback:
        tiny_learner([cb]).fit(1)
    assert str(on_callback.value) == (
        f"_AssignOwnField.{name} is owned by the training loop; callbacks can read it, not write it"
    )
    assert name not in vars(cb)


def test_learn_attribute_of_a_callback_cannot_be_assigned() -> None:
    cb = _AssignOwnField("learn")
    with pytest.raises(AttributeError, match=r"_AssignOwnField\.learn is set by Learner\.add_cb"):
        tiny_learner([cb]).fit(1)


# ------------------------------------------------------------------ unset fields


@pytest.mark.parametrize(
    ("name", "when"),
    [
        ("loss", "after_loss on while a batch is in flight"),
        ("pred", "after_pred on while a batch is in flight"),
        ("xb", "begin_batch on while a batch is in flight"),
        ("yb", "begin_batch on while a batch is in flight"),
        ("dl", "begin_train on"),
        ("smooth_loss", "the first recorded training batch (Recorder, after_batch) on"),
    ],
)
def test_unset_fields_say_when_they_are_available(name: str, when: str) -> None:
    learn = tiny_learner()
    expected = f"TrainingState.{name} has no value here: it is set from {when}"
    with pytest.raises(UnsetFieldError) as before:
        getattr(learn, name)
    assert str(before.value) == expected
    assert isinstance(before.value, AttributeError)


@pytest.mark.parametrize("name", ["xb", "yb", "pred", "loss", "x", "y"])
def test_batch_fields_are_dropped_when_fit_returns(name: str) -> None:
    learn = tiny_learner()
    learn.fit(1)
    with pytest.raises(UnsetFieldError, match="while a batch is in flight"):
        getattr(learn, name)
    with pytest.raises(UnsetFieldError):
        getattr(learn.state, name)


class EarlyReader(Callback):
    @override
    def begin_batch(self) -> None:
        _ = self.loss


def test_reading_loss_before_the_first_after_loss_in_a_callback() -> None:
    with pytest.raises(UnsetFieldError, match="set from after_loss on") as info:
        tiny_learner([EarlyReader()]).fit(1)
    assert info.value.__notes__ == [
        "trainbus: raised in callback EarlyReader during event begin_batch"
    ]


# --------------------------------------------------- providers, extras, drop_batch


def _state() -> TrainingState:
    return tiny_learner().state


def test_provider_computes_at_every_read_until_a_value_is_written() -> None:
    state = _state()
    calls: list[int] = []

    def provider() -> torch.Tensor:
        calls.append(1)
        return torch.tensor(float(len(calls)))

    state.provide("smooth_loss", provider)
    assert calls == []
    assert state.smooth_loss.item() == 1.0
    assert state.smooth_loss.item() == 2.0  # the state keeps nothing that could go stale
    state.set_trusted("smooth_loss", torch.tensor(-1.0))
    assert state.smooth_loss.item() == -1.0
    assert len(calls) == 2
    state.invalidate("smooth_loss")  # the provider again
    assert state.smooth_loss.item() == 3.0
    state.provide("smooth_loss", None)
    with pytest.raises(UnsetFieldError):
        _ = state.smooth_loss


def test_drop_batch_forgets_the_batch_tensors_only() -> None:
    state = _state()
    t = torch.zeros(1)
    for name in ("xb", "yb"):
        state.set_trusted(name, (t,))
    state.set_trusted("pred", t)
    state.set_trusted("loss", t)
    state.set_trusted("epoch", 4)
    state.drop_batch()
    for name in ("xb", "yb", "pred", "loss"):
        with pytest.raises(UnsetFieldError):
            getattr(state, name)
    assert state.epoch == 4


def test_set_trusted_skips_validation_but_assignment_validates() -> None:
    state = _state()
    state.set_trusted("epoch", 2)
    assert state.epoch == 2
    bad: Any = "three"
    with pytest.raises(pydantic.ValidationError):
        state.train_iter = bad


EMA = StateKey("ema", float)


def test_extras_are_typed_by_their_key() -> None:
    extras = Extras()
    assert EMA not in extras and len(extras) == 0
    with pytest.raises(KeyError, match=r"no value was published for StateKey\('ema', float\)"):
        _ = extras[EMA]
    assert extras.get(EMA, 1.5) == 1.5
    extras[EMA] = 0.25
    assert extras[EMA] == 0.25 and list(extras) == [EMA]
    wrong: Any = "x"
    with pytest.raises(TypeError, match=r"StateKey\('ema', float\) holds float, got str"):
        extras[EMA] = wrong


def test_an_extra_is_withdrawn_with_del() -> None:
    extras = Extras()
    extras[EMA] = 0.25
    del extras[EMA]
    assert EMA not in extras and len(extras) == 0
    with pytest.raises(KeyError, match=r"no value was published for StateKey\('ema', float\)"):
        del extras[EMA]


class _Publisher(Callback):
    @override
    def after_batch(self) -> None:
        self.learn.extras[EMA] = float(self.iter)


class _Reader(Callback):
    run_after = _Publisher

    def __init__(self) -> None:
        self.seen: list[float] = []

    @override
    def after_batch(self) -> None:
        self.seen.append(self.extras[EMA])


def test_callbacks_share_extras_through_the_state() -> None:
    reader = _Reader()
    tiny_learner([reader, _Publisher()]).fit(1)
    assert reader.seen == [0.0, 1.0, 2.0, 0.0, 1.0]


class _BatchFieldProbe(Callback):
    """Records, per event, which batch fields can be read."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, tuple[str, ...]]] = []

    def _probe(self, event: str) -> None:
        readable: list[str] = []
        for name in ("xb", "yb", "pred", "loss"):
            try:
                getattr(self.learn, name)
            except UnsetFieldError:
                continue
            readable.append(name)
        self.seen.append((event, tuple(readable)))

    @override
    def begin_train(self) -> None:
        self._probe("begin_train")

    @override
    def begin_batch(self) -> None:
        self._probe("begin_batch")

    @override
    def after_loss(self) -> None:
        self._probe("after_loss")

    @override
    def after_batch(self) -> None:
        self._probe("after_batch")

    @override
    def after_train(self) -> None:
        self._probe("after_train")

    @override
    def begin_validate(self) -> None:
        self._probe("begin_validate")

    @override
    def after_epoch(self) -> None:
        self._probe("after_epoch")


def test_batch_fields_are_readable_only_while_their_batch_is_in_flight() -> None:
    probe = _BatchFieldProbe()
    tiny_learner([probe]).fit(1)
    by_event: dict[str, set[tuple[str, ...]]] = {}
    for event, readable in probe.seen:
        by_event.setdefault(event, set()).add(readable)
    assert by_event == {
        "begin_train": {()},
        # A new batch has its inputs and targets, not the previous batch's pred and loss.
        "begin_batch": {("xb", "yb")},
        "after_loss": {("xb", "yb", "pred", "loss")},
        "after_batch": {("xb", "yb", "pred", "loss")},
        "after_train": {()},
        "begin_validate": {()},
        "after_epoch": {()},
    }


def test_a_second_fit_starts_from_fresh_counters() -> None:
    seen: list[tuple[int, int, int, bool]] = []

    def at_begin_fit(learn: Learner) -> None:
        seen.append((learn.epoch, learn.iter, learn.n_iter, learn.training))

    learn = tiny_learner()
    learn.subscribe(Event.begin_fit, at_begin_fit)
    learn.fit(2)
    learn.fit(1)
    assert seen == [(0, 0, 0, False), (0, 0, 0, False)]


def test_assigning_an_unknown_learner_attribute_is_an_error() -> None:
    learn: Any = tiny_learner()
    with pytest.raises(AttributeError) as error:
        learn.lossx = torch.zeros(())
    assert str(error.value).startswith(
        "Learner has no attribute 'lossx' to assign; the fields callbacks can write are "
    )
    assert "loss, loss_func, model" in str(error.value)
    assert not hasattr(learn, "lossx")
