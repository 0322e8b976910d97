# mypy: disable-error-code="no-untyped-def, no-untyped-call"
# pyright: basic
"""Callbacks of the source design, written untyped as there, run unchanged.

``ModelResetter``, ``RNNRegularizer`` and ``TerminateOnNaNCallback`` below keep the
source's bodies (fastai style: no annotations, ``self.learn.loss += ...``); only the
layout is the formatter's. The same checks run on the library's own versions.
"""

import math

import pytest
import torch
from torch import nn

from trainbus import Callback, CancelFitException, DataLoaders, Event, Learner
from trainbus.callbacks import ModelResetter as LibModelResetter
from trainbus.callbacks import Recorder
from trainbus.callbacks import RNNRegularizer as LibRNNRegularizer
from trainbus.callbacks import TerminateOnNaNCallback as LibTerminateOnNaN

# ------------------------------------------------- as written in the source design


class ModelResetter(Callback):
    def begin_train(self):
        self.model.reset()  # type: ignore[operator]  # Module.__getattr__ says Tensor | Module

    def begin_validate(self):
        self.model.reset()  # type: ignore[operator]  # Module.__getattr__ says Tensor | Module


class RNNRegularizer(Callback):
    def __init__(self, alpha=0.0, beta=0.0):
        self.alpha, self.beta = alpha, beta

    def after_pred(self):
        self.raw_out, self.out = self.pred[1], self.pred[2]
        self.learn.pred = self.pred[0]

    def after_loss(self):
        if not self.training:
            return
        if self.alpha != 0.0:
            self.learn.loss += self.alpha * self.out[-1].float().pow(2).mean()
        if self.beta != 0.0:
            h = self.raw_out[-1]
            if len(h) > 1:
                self.learn.loss += self.beta * (h[:, 1:] - h[:, :-1]).float().pow(2).mean()


class TerminateOnNaNCallback(Callback):
    run_before = Recorder

    def after_batch(self):
        if torch.isinf(self.loss) or torch.isnan(self.loss):
            raise CancelFitException


# ----------------------------------------------------------------- a tiny "RNN"

SEQ, BS = 4, 2


class TinyRNN(nn.Module):
    """Returns ``(out, raw_outs, outs)`` like an AWD-LSTM; counts ``reset()`` calls."""

    def __init__(self):
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.inp = nn.Linear(2, 3)
        self.head = nn.Linear(3, 1)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=generator))
        self.resets = 0

    def reset(self):
        self.resets += 1

    def forward(self, x):
        raw = torch.tanh(self.inp(x))  # (bs, seq, 3)
        dropped = raw * 0.5  # a deterministic stand-in for dropout
        return self.head(dropped[:, -1]), [raw], [dropped]


def rnn_data(n_batches, seed):
    generator = torch.Generator().manual_seed(seed)
    n = n_batches * BS
    return torch.randn(n, SEQ, 2, generator=generator), torch.randn(n, 1, generator=generator)


def rnn_learner(cbs):
    dls = DataLoaders.from_tensors(
        rnn_data(3, 1), rnn_data(2, 2), bs=BS, valid_bs=BS, shuffle=False
    )
    return Learner(TinyRNN(), dls, nn.functional.mse_loss, lr=0.1, cbs=cbs)


def expected_loss(model, x, y, alpha, beta, training):
    """The penalised loss, from the model's weights by hand."""
    with torch.no_grad():
        raw = torch.tanh(x @ model.inp.weight.T + model.inp.bias)
        dropped = raw * 0.5
        out = dropped[:, -1] @ model.head.weight.T + model.head.bias
        loss = ((out - y) ** 2).mean()
        if training:
            loss = loss + alpha * (dropped**2).mean()
            loss = loss + beta * ((raw[:, 1:] - raw[:, :-1]) ** 2).mean()
    return loss.item()


class LossCheck(Callback):
    run_after = (RNNRegularizer, LibRNNRegularizer)

    def __init__(self, alpha, beta):
        self.alpha, self.beta = alpha, beta
        self.rows = []

    def after_loss(self):
        assert isinstance(self.pred, torch.Tensor) and self.pred.shape == (BS, 1)
        args = (self.model, self.x, self.y, self.alpha, self.beta)
        by_hand = expected_loss(*args, training=self.training)
        unpenalised = expected_loss(*args, training=False)
        self.rows.append((self.training, self.loss.item(), by_hand, unpenalised))


PAIRS = [
    pytest.param(ModelResetter, RNNRegularizer, id="source"),
    pytest.param(LibModelResetter, LibRNNRegularizer, id="library"),
]


@pytest.mark.parametrize(("resetter", "regularizer"), PAIRS)
@pytest.mark.parametrize(("alpha", "beta"), [(0.0, 0.0), (2.0, 0.0), (0.0, 3.0), (2.0, 3.0)])
def test_ar_tar_add_exactly_the_penalty_in_training_only(resetter, regularizer, alpha, beta):
    check = LossCheck(alpha, beta)
    learn = rnn_learner([resetter(), regularizer(alpha=alpha, beta=beta), check])
    learn.fit(2)
    assert [row[0] for row in check.rows] == ([True] * 3 + [False] * 2) * 2
    penalised = alpha != 0.0 or beta != 0.0
    for training, loss, by_hand, unpenalised in check.rows:
        assert loss == pytest.approx(by_hand, rel=1e-6)
        if training and penalised:
            assert by_hand > unpenalised + 1e-3
        else:
            assert loss == pytest.approx(unpenalised, rel=1e-6)


class ResetLog(Callback):
    run_after = (ModelResetter, LibModelResetter)

    def __init__(self):
        self.seen = []

    def begin_train(self):
        self.seen.append(("begin_train", self.model.resets))

    def begin_validate(self):
        self.seen.append(("begin_validate", self.model.resets))

    def after_batch(self):
        self.seen.append(("after_batch", self.model.resets))


@pytest.mark.parametrize(("resetter", "regularizer"), PAIRS)
def test_model_resetter_resets_at_begin_train_and_begin_validate(resetter, regularizer):
    log = ResetLog()
    learn = rnn_learner([resetter(), regularizer(), log])
    learn.fit(2)
    expected = []
    for epoch in range(2):
        expected += [("begin_train", 2 * epoch + 1)] + [("after_batch", 2 * epoch + 1)] * 3
        expected += [("begin_validate", 2 * epoch + 2)] + [("after_batch", 2 * epoch + 2)] * 2
    assert log.seen == expected
    assert learn.model.resets == 4


class PoisonSecondBatch(Callback):
    def after_loss(self):
        if self.training and self.iter == 1:
            self.learn.loss = self.loss * math.nan


class CancelLog(Callback):
    def __init__(self):
        self.events = []

    def after_cancel_fit(self):
        self.events.append(Event.after_cancel_fit)

    def after_fit(self):
        self.events.append(Event.after_fit)


@pytest.mark.parametrize("terminate", [TerminateOnNaNCallback, LibTerminateOnNaN])
def test_terminate_on_nan_from_the_source(terminate):
    log = CancelLog()
    learn = rnn_learner(
        [LibModelResetter(), LibRNNRegularizer(), PoisonSecondBatch(), terminate(), log]
    )
    learn.fit(2)
    assert log.events == [Event.after_cancel_fit, Event.after_fit]
    assert len(learn.recorder.losses) == 1
    assert math.isfinite(learn.recorder.losses[0])
