"""State access a checker must reject: writes to read-only fields, wrong types, typos.

Each line marked ``# E: <rule>`` must be reported, and no other line (see test_typecheck.py).
"""

from __future__ import annotations

import torch
from typing_extensions import override

from trainbus import Callback, Extras, Learner


class ReadOnlyShortcuts(Callback):
    """On a callback, ``self.<field>`` reads the state; writing it is an error."""

    @override
    def after_loss(self) -> None:
        self.loss = self.loss * 2  # E: read-only-state
        self.training = False  # E: read-only-state
        self.pred = self.pred.detach()  # E: read-only-state
        self.extras = Extras()  # E: read-only-state
        self.learn = self.learn  # E: read-only-state


class TypedWrites(Callback):
    """Writes go through ``self.learn``, checked against the field's type."""

    @override
    def after_loss(self) -> None:
        self.learn.loss = self.loss * 2
        self.learn.loss = "high"  # E: state-write-type
        self.learn.xb = (self.x,)
        self.learn.xb = self.x  # E: state-write-type
        self.learn.pct_train = 0.5
        self.learn.training = None  # E: state-write-type
        self.learn.model = torch.nn.Linear(1, 1)
        self.learn.model = torch.zeros(1)  # E: state-write-type


class LoopOwned(Callback):
    """Fields the loop owns are read-only even through the learner."""

    @override
    def begin_batch(self) -> None:
        self.learn.epoch = 3  # E: loop-owned
        self.learn.iter = 0  # E: loop-owned
        self.learn.n_epoch = 1  # E: loop-owned
        self.learn.n_iter = 3  # E: loop-owned
        self.learn.dl = self.dls.valid  # E: loop-owned
        self.learn.state.epoch = 3  # E: loop-owned
        self.learn.state.iter = 0  # E: loop-owned
        self.learn.state.dl = self.dls.valid  # E: loop-owned
        self.learn.state.dls = self.dls  # E: loop-owned
        self.learn.dls = self.dls  # E: loop-owned
        self.learn.cbs = ()  # E: loop-owned
        self.learn.x = self.x  # E: loop-owned
        self.learn.y = self.y  # E: loop-owned


class Typos(Callback):
    """No ``__getattr__`` is visible to checkers, so a misspelled name is an error."""

    @override
    def after_loss(self) -> None:
        loss: torch.Tensor = self.lossx  # E: unknown-attribute
        self.learn.lossx = loss  # E: unknown-attribute
        self.learn.recorderx.values.clear()  # E: unknown-attribute


def learner_typos(learn: Learner) -> None:
    learn.fitt(1)  # E: unknown-attribute
    learn.state.losss = learn.loss  # E: unknown-attribute
