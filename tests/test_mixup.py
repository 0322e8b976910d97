"""MixUp: exact mixed inputs and losses for a seeded run; validation and loss_func untouched."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn
from typing_extensions import override

from trainbus import Callback, CancelFitException, DataLoaders, Learner
from trainbus.callbacks import MixUp

BS = 6


def seed_everything(seed: int) -> None:
    """Seed the global torch RNG, which MixUp draws from."""
    torch.manual_seed(seed)  # pyright: ignore[reportUnknownMemberType]


def classification_learner(
    cbs: list[Callback], loss_func: Callable[..., torch.Tensor], *, seed: int = 0
) -> Learner:
    """Linear(4, 3) on one training and one validation batch of 6 samples, 3 classes."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(2 * BS, 4, generator=generator)
    y = torch.randint(0, 3, (2 * BS,), generator=generator)
    dls = DataLoaders.from_tensors((x[:BS], y[:BS]), (x[BS:], y[BS:]), bs=BS, shuffle=False)
    model = nn.Linear(4, 3)
    with torch.no_grad():
        model.weight.copy_(torch.randn(3, 4, generator=generator))
        model.bias.zero_()
    return Learner(model, dls, loss_func, lr=0.1, cbs=cbs)


class Seen(Callback):
    """Runs after MixUp; keeps each batch's inputs, MixUp's draws and the loss."""

    run_after = MixUp

    def __init__(self) -> None:
        self.train_xb: list[torch.Tensor] = []
        self.valid_xb: list[torch.Tensor] = []
        self.draws: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.pred_and_loss: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.loss_funcs: list[object] = []

    @override
    def begin_batch(self) -> None:
        mixup = self.learn.get_cb(MixUp)
        if self.training:
            self.train_xb.append(self.x.clone())
            assert mixup.lam is not None and mixup.perm is not None
            self.draws.append((mixup.lam, mixup.perm, mixup.yb1[0]))
        else:
            self.valid_xb.append(self.x.clone())
            assert mixup.lam is None

    @override
    def after_loss(self) -> None:
        self.loss_funcs.append(self.loss_func)
        if self.training:
            self.pred_and_loss.append((self.pred.detach(), self.loss.detach()))


@pytest.mark.parametrize(
    "loss_func",
    [nn.CrossEntropyLoss(), nn.functional.cross_entropy],
    ids=["module", "function"],
)
def test_seeded_run_mixes_inputs_and_losses_exactly(loss_func: Callable[..., torch.Tensor]) -> None:
    seen = Seen()
    learn = classification_learner([MixUp(alpha=0.4), seen], loss_func)
    (x_train, y_train), (x_valid, _) = (next(iter(learn.dls.train)), next(iter(learn.dls.valid)))
    seed_everything(123)
    learn.fit(1)

    # The same draws, in the same order, from the same seed.
    seed_everything(123)
    lam = torch.distributions.Beta(torch.tensor(0.4), torch.tensor(0.4)).sample((BS,))
    lam = torch.maximum(lam, 1 - lam)
    perm = torch.randperm(BS)
    got_lam, got_perm, got_yb1 = seen.draws[0]
    assert torch.equal(got_lam, lam)
    assert torch.equal(got_perm, perm)
    assert bool((lam.sort().values.diff() > 0).all()) and bool(
        (lam >= 0.5).all()
    )  # one weight per sample
    assert torch.equal(got_yb1, y_train[perm])
    expected_x = lam[:, None] * x_train + (1 - lam[:, None]) * x_train[perm]
    torch.testing.assert_close(seen.train_xb[0], expected_x, rtol=1e-6, atol=1e-6)
    assert torch.equal(seen.train_xb[0], torch.lerp(x_train[perm], x_train, lam[:, None]))

    pred, loss = seen.pred_and_loss[0]
    per_sample = nn.functional.cross_entropy
    expected_loss = (
        lam * per_sample(pred, y_train, reduction="none")
        + (1 - lam) * per_sample(pred, y_train[perm], reduction="none")
    ).mean()
    torch.testing.assert_close(loss, expected_loss)

    # Validation is untouched: original inputs, and the original loss function.
    assert len(seen.valid_xb) == 1 and torch.equal(seen.valid_xb[0], x_valid)
    assert all(f is not loss_func for f in seen.loss_funcs)  # the fit ran with the wrapper
    assert learn.loss_func is loss_func  # ... and restored it
    with torch.no_grad():
        x_v, y_v = next(iter(learn.dls.valid))
        plain_valid = nn.functional.cross_entropy(learn.model(x_v), y_v).item()
    assert learn.recorder.values[0][1] == pytest.approx(plain_valid, rel=1e-6)


def test_sum_reduction_and_multi_dimensional_inputs() -> None:
    """A (bs, 2, 5) input and an MSE with reduction='sum' over (bs, 5) targets."""
    generator = torch.Generator().manual_seed(1)
    x, y = torch.randn(4, 2, 5, generator=generator), torch.randn(4, 5, generator=generator)
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 5))
    loss_func = nn.MSELoss(reduction="sum")
    seen = Seen()
    learn = Learner(
        model, DataLoaders.from_tensors((x, y), bs=4, shuffle=False), loss_func, cbs=[MixUp(), seen]
    )
    seed_everything(7)
    learn.fit(1)
    lam, perm, _ = seen.draws[0]
    assert torch.equal(seen.train_xb[0], torch.lerp(x[perm], x, lam[:, None, None]))
    pred, loss = seen.pred_and_loss[0]
    mse = nn.functional.mse_loss
    expected = (
        lam[:, None] * mse(pred, y, reduction="none")
        + (1 - lam[:, None]) * mse(pred, y[perm], reduction="none")
    ).sum()
    torch.testing.assert_close(loss, expected)
    assert loss_func.reduction == "sum"  # the user's module was not changed


class Stop(Callback):
    def __init__(self, error: BaseException) -> None:
        self.error = error

    @override
    def after_loss(self) -> None:
        raise self.error


@pytest.mark.parametrize("error", [CancelFitException(), RuntimeError("boom")], ids=repr)
def test_loss_func_is_restored_when_the_fit_ends_early(error: BaseException) -> None:
    loss_func = nn.CrossEntropyLoss()
    learn = classification_learner([MixUp(), Stop(error)], loss_func)
    if isinstance(error, RuntimeError):
        with pytest.raises(RuntimeError, match="boom"):
            learn.fit(1)
    else:
        learn.fit(1)
    assert learn.loss_func is loss_func
    assert learn.get_cb(MixUp).lam is None


def test_integer_inputs_are_refused() -> None:
    x, y = torch.arange(8).view(4, 2), torch.zeros(4)
    learn = Learner(
        nn.Sequential(nn.Embedding(8, 2), nn.Flatten(), nn.Linear(4, 1)),
        DataLoaders.from_tensors((x, y), bs=4),
        nn.functional.mse_loss,
        cbs=[MixUp()],
    )
    with pytest.raises(TypeError, match=r"must be floating point; xb\[0\] has dtype torch.int64"):
        learn.fit(1)


def test_a_loss_without_per_sample_values_is_refused() -> None:
    def plain_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(pred, target)

    learn = classification_learner([MixUp()], plain_loss)
    with pytest.raises(TypeError, match=r"MixUp needs per-sample losses"):
        learn.fit(1)
    assert learn.loss_func is plain_loss


def test_alpha_is_checked() -> None:
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"MixUp alpha must be a positive finite number"):
            MixUp(bad)
