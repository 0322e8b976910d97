"""``assert_type`` checks of the public API: what a user's editor and checkers infer."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final, Literal, assert_type

import torch
from torch import Tensor, nn
from typing_extensions import override

import trainbus
from trainbus import (
    BatchSource,
    Callback,
    CancelFitException,
    DataLoaders,
    Event,
    EventBus,
    Extras,
    Handler,
    Learner,
    Stage,
    StateKey,
    TrainingState,
    event,
)
from trainbus.callbacks import ProgressCallback, Recorder, TerminateOnNaNCallback
from trainbus.metrics import accuracy

SCALE: Final = StateKey("scale", float)


class Reads(Callback):
    """Reads every state field, each with its declared type."""

    @override
    def after_loss(self) -> None:
        assert_type(self.model, nn.Module)
        assert_type(self.dls, DataLoaders)
        assert_type(self.loss_func, Callable[..., Tensor])
        assert_type(self.opt, torch.optim.Optimizer)
        assert_type(self.opt_func, Callable[..., torch.optim.Optimizer])
        assert_type(self.cbs, tuple[Callback, ...])
        assert_type(self.dl, BatchSource)
        assert_type(self.xb, tuple[Tensor, ...])
        assert_type(self.yb, tuple[Tensor, ...])
        assert_type(self.x, Tensor)
        assert_type(self.y, Tensor)
        assert_type(self.pred, Tensor)
        assert_type(self.loss, Tensor)
        assert_type(self.n_epoch, int)
        assert_type(self.epoch, int)
        assert_type(self.n_iter, int)
        assert_type(self.iter, int)
        assert_type(self.train_iter, int)
        assert_type(self.pct_train, float)
        assert_type(self.training, bool)
        assert_type(self.smooth_loss, Tensor)
        assert_type(self.extras, Extras)
        assert_type(self.extras[SCALE], float)
        assert_type(self.learn, Learner)
        assert_type(self.name, str)
        assert_type(self.order, int)


def check_learner(learn: Learner) -> None:
    assert_type(learn.state, TrainingState)
    assert_type(learn.bus, EventBus)
    assert_type(learn.recorder, Recorder)
    assert_type(learn.recorder.losses, list[float])
    assert_type(learn.recorder.values, list[list[float]])
    assert_type(learn.get_cb(ProgressCallback), ProgressCallback)
    assert_type(learn.add_cb(TerminateOnNaNCallback()), TerminateOnNaNCallback)
    assert_type(learn.loss, Tensor)
    assert_type(learn.xb, tuple[Tensor, ...])
    assert_type(learn.epoch, int)
    assert_type(learn.extras[SCALE], float)
    assert_type(learn.fit(1), None)
    # Writable fields take their own type.
    learn.loss = learn.loss * 2
    learn.xb = (learn.x,)
    learn.pred = learn.pred.detach()
    learn.training = False
    learn.pct_train = 0.5
    learn.extras[SCALE] = 2.0


def check_events_and_stages() -> None:
    assert_type(Event.after_loss, Literal[Event.after_loss])
    assert_type(event.after_loss, Literal[Event.after_loss])
    assert_type(Event("after_loss"), Event)
    assert_type(list(Event), list[Event])
    assert_type(Stage.fit, Stage)
    assert_type(Stage.batch.begin, Event)
    assert_type(Stage.all(), tuple[Stage, ...])
    assert_type(CancelFitException.stage, Stage)
    assert_type(trainbus.__version__, str)


def check_data_and_bus() -> None:
    x, y = torch.randn(4, 2), torch.randn(4)
    assert_type(DataLoaders.from_tensors([x, y], [x, y], bs=2, seed=0), DataLoaders)
    assert_type(DataLoaders([(x, y)]).train, BatchSource)
    assert_type(accuracy(x, y), Tensor)
    bus = EventBus()
    assert_type(bus.handlers(Event.begin_fit), tuple[Handler, ...])
    assert_type(bus.subscribers, tuple[trainbus.Subscriber, ...])
    assert_type(StateKey("n", int), StateKey[int])
