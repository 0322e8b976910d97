"""The Learner: callback writes reach the loop, fit-only callbacks, and cleanup on errors."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from typing_extensions import override

from conftest import BS, N_TRAIN, N_VALID, tiny_dls, tiny_learner, tiny_model, tiny_tensors
from trainbus import Callback, DataLoaders, Event, HookError, Learner, UnsetFieldError
from trainbus.callbacks import ProgressCallback

# ------------------------------------------------------- writes reach the loop


class ZeroLoss(Callback):
    @override
    def after_loss(self) -> None:
        self.learn.loss = self.loss * 0


def test_loss_written_in_after_loss_is_what_is_back_propagated() -> None:
    learn = tiny_learner([ZeroLoss()])
    before = [p.detach().clone() for p in learn.model.parameters()]
    learn.fit(2)
    after = list(learn.model.parameters())
    assert all(torch.equal(a.detach(), b) for a, b in zip(after, before, strict=True))
    # Without the callback the same fit moves the weights.
    plain = tiny_learner()
    plain.fit(2)
    assert not torch.equal(next(plain.model.parameters()).detach(), before[0])


class InputRecorder(nn.Module):
    """``nn.Linear(2, 1)`` that keeps a copy of every input it is called with."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = tiny_model()
        self.inputs: list[torch.Tensor] = []

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inputs.append(x.detach().clone())
        out: torch.Tensor = self.lin(x)
        return out


class ScaleInputs(Callback):
    @override
    def begin_batch(self) -> None:
        self.learn.xb = (self.x * 10,)


def test_xb_written_in_begin_batch_is_what_the_model_sees() -> None:
    model = InputRecorder()
    tiny_learner([ScaleInputs()], model=model).fit(1)
    xs, _ = tiny_tensors(N_TRAIN, BS, seed=1)
    xv, _ = tiny_tensors(N_VALID, BS, seed=2)
    expected = [xs[i * BS : (i + 1) * BS] * 10 for i in range(N_TRAIN)]
    expected += [xv[i * BS : (i + 1) * BS] * 10 for i in range(N_VALID)]
    assert len(model.inputs) == len(expected)
    assert all(torch.equal(a, b) for a, b in zip(model.inputs, expected, strict=True))


class ReplacePredAndTargets(Callback):
    @override
    def after_pred(self) -> None:
        self.learn.pred = self.pred * 0 + 5.0
        self.learn.yb = (torch.full_like(self.y, 2.0),)


def test_pred_and_yb_written_in_after_pred_are_what_the_loss_sees() -> None:
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []

    def loss_func(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        seen.append((pred.detach().clone(), target.clone()))
        return nn.functional.mse_loss(pred, target)

    learn = Learner(tiny_model(), tiny_dls(), loss_func, cbs=[ReplacePredAndTargets()])
    learn.fit(1)
    assert len(seen) == N_TRAIN + N_VALID
    for pred, target in seen:
        assert torch.equal(pred, torch.full((BS, 1), 5.0))
        assert torch.equal(target, torch.full((BS, 1), 2.0))
    assert learn.recorder.losses == [9.0] * N_TRAIN


# --------------------------------------------------------- fit-only callbacks


class Counter(Callback):
    def __init__(self) -> None:
        self.batches = 0

    @override
    def after_batch(self) -> None:
        self.batches += 1


def test_fit_callbacks_run_for_that_fit_only() -> None:
    learn = tiny_learner()
    defaults = learn.cbs
    extra = Counter()
    learn.fit(1, cbs=[extra])
    assert extra.batches == N_TRAIN + N_VALID
    assert learn.cbs == defaults
    with pytest.raises(RuntimeError, match="Counter is not attached to a Learner"):
        _ = extra.learn
    learn.fit(1)
    assert extra.batches == N_TRAIN + N_VALID


class NearMiss(Callback):
    def after_los(self) -> None:
        """Misspelled: would never run."""


def test_fit_callbacks_are_all_removed_when_one_cannot_be_added() -> None:
    learn = tiny_learner()
    defaults = learn.cbs
    good = Counter()
    with pytest.raises(HookError, match="did you mean after_loss"):
        learn.fit(1, cbs=[good, NearMiss()])
    assert learn.cbs == defaults
    assert good.batches == 0


def test_fit_lr_sets_every_group() -> None:
    learn = tiny_learner(lr=0.1)
    learn.fit(1, lr=0.05)
    assert [group["lr"] for group in learn.opt.param_groups] == [0.05]
    assert learn.recorder.lrs == [0.05] * N_TRAIN


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_epoch": -1}, "n_epoch must be a non-negative int, got -1"),
        ({"n_epoch": 1.5}, "n_epoch must be a non-negative int, got 1.5"),
        ({"n_epoch": True}, "n_epoch must be a non-negative int, got True"),
        ({"n_epoch": 1, "lr": 0.0}, "lr must be a positive number, got 0.0"),
        ({"n_epoch": 1, "lr": float("inf")}, "lr must be finite, got inf"),
    ],
)
def test_fit_rejects_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    learn = tiny_learner()
    with pytest.raises(ValueError) as info:
        learn.fit(**kwargs)
    assert str(info.value) == message


def test_a_callback_belongs_to_one_learner() -> None:
    cb = Counter()
    tiny_learner([cb])
    with pytest.raises(ValueError, match="Counter is attached to another Learner already"):
        tiny_learner([cb])


def test_add_cb_rejects_a_function_with_a_hint() -> None:
    learn = tiny_learner()
    not_a_callback: Any = lambda: None  # noqa: E731
    with pytest.raises(TypeError, match=r"use learn\.subscribe\(event, fn\) for a function"):
        learn.add_cb(not_a_callback)


# ------------------------------------------------------------- cleanup on errors


class Boom(Callback):
    """Raises ``error`` in after_loss of the second training batch; keeps weakrefs to the batch."""

    def __init__(self, error: BaseException) -> None:
        self.error = error
        self.loss_ref: weakref.ref[torch.Tensor] | None = None
        self.batch_refs: list[weakref.ref[torch.Tensor]] = []

    @override
    def after_loss(self) -> None:
        if self.training and self.iter == 1:
            self.loss_ref = weakref.ref(self.loss)
            self.batch_refs = [weakref.ref(t) for t in (self.x, self.y, self.pred, self.loss)]
            raise self.error


class Cleanup(Callback):
    """Records the error its on_exception receives, in a log shared by instances."""

    def __init__(self, log: list[tuple[str, BaseException]], tag: str) -> None:
        self.log = log
        self.tag = tag

    @override
    def on_exception(self, error: BaseException) -> None:
        self.log.append((self.tag, error))


class LateCleanup(Cleanup):
    order = 5


@pytest.mark.parametrize(
    "error", [ZeroDivisionError("division by zero"), KeyboardInterrupt()], ids=type
)
def test_error_in_a_callback_releases_everything(
    error: BaseException, capsys: pytest.CaptureFixture[str]
) -> None:
    log: list[tuple[str, BaseException]] = []
    boom = Boom(error)
    learn = tiny_learner([LateCleanup(log, "late"), boom])
    learn.remove_cb(learn.get_cb(ProgressCallback))
    progress = learn.add_cb(ProgressCallback(show=True))
    extra = Cleanup(log, "extra")
    with pytest.raises(type(error)) as info:
        learn.fit(2, cbs=[extra])
    assert info.value is error
    assert error.__notes__ == ["trainbus: raised in callback Boom during event after_loss"]
    # Every subscriber's on_exception ran once, in subscriber order, with the error.
    assert log == [("extra", error), ("late", error)]
    assert not progress.bars_open
    assert "train" in capsys.readouterr().err  # the bar was shown, then closed
    for name in ("xb", "yb", "pred", "loss"):
        with pytest.raises(UnsetFieldError):
            getattr(learn.state, name)
    gc.collect()
    # Released although the exception (its traceback, the loop's frames) is still alive.
    assert boom.loss_ref is not None and boom.loss_ref() is None
    assert [ref() for ref in boom.batch_refs] == [None] * 4
    assert extra not in learn.cbs
    with pytest.raises(RuntimeError, match="not attached"):
        _ = extra.learn
    # The learner still works.
    log.clear()
    boom.error = ZeroDivisionError("again")
    with pytest.raises(ZeroDivisionError, match="again"):
        learn.fit(1)
    assert log == [("late", boom.error)]


def test_error_in_the_loop_body_releases_everything() -> None:
    log: list[tuple[str, BaseException]] = []
    calls: list[int] = []

    def failing_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 2:
            raise FloatingPointError("loss overflow")
        return nn.functional.mse_loss(pred, target)

    learn = Learner(tiny_model(), tiny_dls(), failing_loss, cbs=[Cleanup(log, "cleanup")])
    with pytest.raises(FloatingPointError, match="loss overflow") as info:
        learn.fit(1)
    # No callback was involved: the note names the batch body, the phase and the batch.
    assert info.value.__notes__ == [
        "trainbus: raised in the model, loss_func, backward or optimizer step of training "
        "batch 1, epoch 0"
    ]
    assert log == [("cleanup", info.value)]
    with pytest.raises(UnsetFieldError):
        _ = learn.state.pred


class Shout(Callback):
    @override
    def begin_fit(self) -> None:
        raise OSError("disk full")


class BrokenCleanup(Callback):
    @override
    def on_exception(self, error: BaseException) -> None:
        raise RuntimeError("cleanup failed too")


def test_a_failing_on_exception_does_not_hide_the_error() -> None:
    log: list[tuple[str, BaseException]] = []
    learn = tiny_learner([BrokenCleanup(), Shout(), LateCleanup(log, "late")])
    with pytest.raises(OSError, match="disk full") as info:
        learn.fit(1)
    assert info.value.__notes__ == [
        "trainbus: raised in callback Shout during event begin_fit",
        "trainbus: BrokenCleanup.on_exception failed while releasing: "
        "RuntimeError: cleanup failed too",
    ]
    assert log == [("late", info.value)]  # later subscribers still released


def test_repr_lists_the_callbacks() -> None:
    learn = tiny_learner([Counter()])
    assert repr(learn) == (
        "Learner(model=Linear, DataLoaders(train=3 batches, valid=2 batches), "
        "cbs=[TrainEvalCallback, Recorder, ProgressCallback, Counter])"
    )


def test_fit_zero_epochs_runs_fit_events_only() -> None:
    seen: list[Event] = []
    learn = tiny_learner()

    def recorder_of(event: Event) -> Callable[[Learner], None]:
        return lambda _: seen.append(event)

    for event in Event:
        learn.subscribe(event, recorder_of(event))
    learn.fit(0)
    assert seen == [Event.begin_fit, Event.after_fit]


# ------------------------------------------------------------------ batch shapes


class _Seen(Callback):
    """Records the batch as the state publishes it in begin_batch."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []

    @override
    def begin_batch(self) -> None:
        self.batches.append((len(self.xb), len(self.yb)))


def _two_targets_loss(pred: torch.Tensor, y: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return (weight * (pred - y) ** 2).mean()


def _pair_tuple(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return (x, y)


def _pair_list(x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    return [x, y]


def _weighted_list(x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    return [x, y, torch.ones_like(y)]


def _weighted_tuple(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    return tuple(_weighted_list(x, y))


@pytest.mark.parametrize(
    ("make_batch", "loss_func", "expected"),
    [
        (_pair_tuple, nn.functional.mse_loss, (1, 1)),
        (_pair_list, nn.functional.mse_loss, (1, 1)),
        (_weighted_tuple, _two_targets_loss, (1, 2)),
        (_weighted_list, _two_targets_loss, (1, 2)),
    ],
    ids=["tuple", "list", "two-targets-tuple", "two-targets-list"],
)
def test_batches_of_every_shape_reach_the_model_and_the_loss(
    make_batch: Callable[[torch.Tensor, torch.Tensor], Any],
    loss_func: Callable[..., torch.Tensor],
    expected: tuple[int, int],
) -> None:
    x, y = tiny_tensors(3, BS, seed=3)
    batches = [make_batch(x[i : i + BS], y[i : i + BS]) for i in range(0, 3 * BS, BS)]
    seen = _Seen()
    learn = Learner(tiny_model(), DataLoaders(batches), loss_func, cbs=[seen])
    learn.fit(1)
    assert seen.batches == [expected] * len(batches)
    assert len(learn.recorder.losses) == len(batches)
    assert all(isinstance(v, float) for v in learn.recorder.losses)


@pytest.mark.parametrize(
    ("batch", "name"),
    [(torch.zeros(2, 3), "Tensor"), ({"x": 1, "y": 2}, "dict"), ("xy", "str")],
    ids=["tensor", "dict", "str"],
)
def test_a_batch_that_is_not_a_sequence_is_refused(batch: object, name: str) -> None:
    learn = Learner(tiny_model(), DataLoaders([batch]), nn.functional.mse_loss)
    with pytest.raises(TypeError, match=rf"each batch must be a sequence .*, got {name}\n") as info:
        learn.fit(1)
    assert info.value.__notes__ == [
        "trainbus: raised in the training data while loading batch 0 of epoch 0"
    ]
    for field in ("xb", "yb", "pred", "loss"):
        with pytest.raises(UnsetFieldError):
            getattr(learn.state, field)
