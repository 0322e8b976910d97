"""The learning-rate finder: its curve, its suggestions, its stops, and what it restores."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import cast

import attrs
import pytest
import torch
from torch import nn
from typing_extensions import override

from conftest import tiny_learner
from trainbus import Callback, DataLoaders, Learner
from trainbus.callbacks import LRFinder, LRFinderResult, ParamScheduler, Recorder, SchedConst


def regression_learner(
    *, bs: int = 64, opt_func: type[torch.optim.Optimizer] = torch.optim.SGD
) -> Learner:
    """``y = 2x + 1 + noise`` with ``x ~ N(0, 1)``, fitted by ``nn.Linear(1, 1)`` with MSE.

    The loss's Hessian is ``2 E[x x^T]``, about ``2 I``, so plain gradient descent
    diverges above lr 1 and converges fastest near lr 0.5.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 1, generator=generator)
    y = 2 * x + 1 + 0.1 * torch.randn(64, 1, generator=generator)
    dls = DataLoaders.from_tensors((x, y), (x[:16], y[:16]), bs=bs, shuffle=False)
    model = nn.Linear(1, 1)
    with torch.no_grad():
        model.weight.fill_(-0.5)
        model.bias.fill_(0.0)
    return Learner(model, dls, nn.functional.mse_loss, opt_func=opt_func, lr=0.01)


class BatchCounter(Callback):
    """Counts training and validation batches."""

    def __init__(self) -> None:
        self.train = 0
        self.valid = 0

    @override
    def after_batch(self) -> None:
        if self.training:
            self.train += 1
        else:
            self.valid += 1


@pytest.mark.parametrize("opt_func", [torch.optim.SGD, torch.optim.Adam])
def test_suggestions_on_a_toy_regression_lie_where_the_loss_falls(
    opt_func: type[torch.optim.Optimizer],
) -> None:
    # One full batch per epoch: the finder cycles the data for 100 epochs.
    result = regression_learner(opt_func=opt_func).lr_find()
    # Below 0.01, 100 steps barely move the loss; above 1, gradient descent diverges.
    for name, lr in result.suggestions().items():
        assert 0.01 < lr < 1.0, f"{name} suggests {lr}"
    assert result.valley == pytest.approx(0.2, rel=0.6)


def test_learning_rates_grow_geometrically_from_start_to_end() -> None:
    counter = BatchCounter()
    learn = tiny_learner([counter], n_train=3)
    result = learn.lr_find(start_lr=1e-4, end_lr=1e-2, num_it=10, stop_div=False)
    assert len(result.lrs) == len(result.losses) == 10
    assert result.lrs[0] == pytest.approx(1e-4)
    assert result.lrs[-1] == pytest.approx(1e-2)
    ratios = [b / a for a, b in zip(result.lrs, result.lrs[1:], strict=False)]
    assert ratios == pytest.approx([100 ** (1 / 9)] * 9)
    # 10 batches from 3 per epoch: the data was cycled (4 epochs), never validated.
    assert (counter.train, counter.valid) == (10, 0)


def test_losses_are_the_debiased_average_of_the_batch_losses() -> None:
    class LossSpy(Callback):
        def __init__(self) -> None:
            self.losses: list[float] = []

        @override
        def after_loss(self) -> None:
            self.losses.append(self.loss.item())

    spy = LossSpy()
    result = tiny_learner([spy]).lr_find(start_lr=1e-5, end_lr=1e-4, num_it=5)
    ema, expected = 0.0, list[float]()
    for i, loss in enumerate(spy.losses, start=1):
        ema = 0.98 * ema + 0.02 * loss
        expected.append(ema / (1 - 0.98**i))
    assert list(result.losses) == pytest.approx(expected, rel=1e-6)


def test_it_stops_when_the_loss_diverges() -> None:
    counter = BatchCounter()
    learn = regression_learner()
    learn.add_cb(counter)
    result = learn.lr_find(end_lr=1e4)
    assert len(result.lrs) < 100
    assert counter.train == len(result.lrs)  # not one batch more
    best_before = min(result.losses[:-1])
    assert result.losses[-1] > 4 * best_before or not math.isfinite(result.losses[-1])
    assert all(loss <= 4 * best_before for loss in result.losses[:-1])


def test_without_stop_div_it_stops_only_on_non_finite_losses() -> None:
    learn = regression_learner()
    result = learn.lr_find(end_lr=1e30, stop_div=False)
    assert not math.isfinite(result.losses[-1])
    assert all(math.isfinite(loss) for loss in result.losses[:-1])
    assert 4 * min(result.losses) < max(x for x in result.losses if math.isfinite(x))
    # The suggestions ignore the non-finite point.
    assert all(math.isfinite(lr) for lr in result.suggestions().values())


def snapshot(learn: Learner) -> dict[str, object]:
    """Everything lr_find must give back, deep-copied."""
    state = learn.state
    return {
        "model": copy.deepcopy(learn.model.state_dict()),
        "opt": copy.deepcopy(learn.opt.state_dict()),
        "modes": [m.training for m in learn.model.modules()],
        "losses": learn.recorder.losses,
        "values": copy.deepcopy(learn.recorder.values),
        "lrs": list(learn.recorder.lrs),
        "smooth_loss": learn.smooth_loss.item(),
        "counters": {
            k: state.__dict__.get(k)
            for k in ("epoch", "n_epoch", "iter", "n_iter", "train_iter", "training")
        },
        "pct_train": state.pct_train,
        "dl": state.dl,
        "cbs": learn.cbs,
    }


def assert_same(a: object, b: object, where: str = "") -> None:
    """Equal, with tensors compared bit for bit (torch.equal), recursively."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict), where
        da, db = cast("dict[object, object]", a), cast("dict[object, object]", b)
        assert list(da) == list(db), where
        for key in da:
            assert_same(da[key], db[key], f"{where}.{key}")
    elif isinstance(a, list | tuple):
        assert isinstance(b, list | tuple), where
        la, lb = cast("Sequence[object]", a), cast("Sequence[object]", b)
        assert len(la) == len(lb), where
        for i, (x, y) in enumerate(zip(la, lb, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


def trained_learner_with_state() -> Learner:
    """Adam (per-parameter state), BatchNorm (buffers), a frozen submodule in eval mode."""
    model = nn.Sequential(nn.Linear(2, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 1))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator))
    learn = tiny_learner(model=model, n_train=3, bs=4)
    learn.opt = torch.optim.Adam(model.parameters(), lr=0.01)
    learn.fit(2)
    model[1].eval()  # a mode lr_find must not switch back to train
    return learn


def test_lr_find_restores_the_learner_bit_for_bit() -> None:
    learn = trained_learner_with_state()
    before = snapshot(learn)
    result = learn.lr_find(end_lr=1e3, num_it=20)
    assert len(result.lrs) > 1
    assert_same(snapshot(learn), before)
    assert learn.opt.param_groups[0]["lr"] == 0.01
    assert learn.opt.state_dict()["state"][0]["step"].item() == 6  # two epochs of 3 steps


def test_lr_find_restores_the_learner_when_a_callback_fails() -> None:
    class FailOnThirdStep(Callback):
        def __init__(self) -> None:
            self.steps = 0

        @override
        def after_step(self) -> None:
            self.steps += 1
            if self.steps == 3:
                raise RuntimeError("boom")

    learn = trained_learner_with_state()
    before = snapshot(learn)
    learn.add_cb(FailOnThirdStep())
    with pytest.raises(RuntimeError, match="boom"):
        learn.lr_find(num_it=10)
    after = snapshot(learn)
    del after["cbs"], before["cbs"]
    assert_same(after, before)


def test_finder_as_a_callback_restores_model_and_optimizer() -> None:
    learn = trained_learner_with_state()
    model_before = copy.deepcopy(learn.model.state_dict())
    opt_before = copy.deepcopy(learn.opt.state_dict())
    finder = LRFinder(start_lr=1e-3, end_lr=1.0, num_it=5)
    learn.fit(1, cbs=[finder])  # 3 batches: fewer than num_it
    assert len(finder.lrs) == 3
    assert_same(learn.model.state_dict(), model_before)
    assert_same(learn.opt.state_dict(), opt_before)
    result = finder.result()
    assert result.lrs == tuple(finder.lrs)


def test_finder_sets_the_lr_after_other_schedulers() -> None:
    learn = tiny_learner()
    learn.add_cb(ParamScheduler({"lr": SchedConst(123.0)}))
    result = learn.lr_find(start_lr=1e-4, end_lr=1e-3, num_it=3, stop_div=False)
    assert result.lrs == pytest.approx((1e-4, 10**-3.5, 1e-3))
    order = [type(cb) for cb in learn.cbs]
    assert order.index(ParamScheduler) < order.index(Recorder)
    assert LRFinder.run_before is Recorder


def test_too_few_points_to_suggest_is_a_clear_error() -> None:
    learn = tiny_learner()
    with pytest.raises(ValueError, match=r"recorded 1 usable point\(s\), too few"):
        learn.lr_find(start_lr=1e30, end_lr=1e31, num_it=10)


def test_empty_training_data_is_a_clear_error() -> None:
    learn = tiny_learner(n_train=0)
    with pytest.raises(ValueError, match="lr_find needs training batches"):
        learn.lr_find()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start_lr": 1.0, "end_lr": 0.1}, r"end_lr \(0.1\) must exceed start_lr \(1.0\)"),
        ({"start_lr": -1.0}, "start_lr must be positive and finite"),
        ({"end_lr": math.inf}, "end_lr must be positive and finite"),
        ({"num_it": 1}, "num_it must be an int >= 2, got 1"),
        ({"beta": 1.0}, r"beta must be in \[0, 1\)"),
    ],
)
def test_arguments_are_validated(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        LRFinder(**kwargs)  # type: ignore[arg-type]


def test_result_is_immutable() -> None:
    result = LRFinderResult((1e-3, 1e-2), (1.0, 0.5), 1e-2, 1e-2, 1e-3)
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        result.valley = 1.0  # type: ignore[misc]
