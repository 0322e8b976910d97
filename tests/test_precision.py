"""MixedPrecision: autocast span, bf16 on CPU, loss scaling, skipped steps, clean exits."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from typing_extensions import override

from trainbus import (
    Callback,
    CancelBatchException,
    CancelEpochException,
    CancelException,
    CancelFitException,
    CancelTrainException,
    CancelValidException,
    DataLoaders,
    Event,
    Learner,
)
from trainbus.callbacks import GradientClip, MixedPrecision

N_TRAIN_BATCHES = 3


def make_learner(
    cbs: list[Callback], *, seed: int = 0, momentum: float = 0.0, lr: float = 0.05
) -> Learner:
    """A seeded 2-layer MLP on 3 training and 2 validation batches of 4 samples."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(20, 3, generator=generator)
    y = torch.randn(20, 1, generator=generator)
    dls = DataLoaders.from_tensors(
        (x[:12], y[:12]), (x[12:], y[12:]), bs=4, valid_bs=4, shuffle=False
    )
    model = nn.Sequential(nn.Linear(3, 8), nn.ReLU(), nn.Linear(8, 1))
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=generator))

    def sgd(params: object, lr: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=lr, momentum=momentum)  # type: ignore[arg-type]

    return Learner(model, dls, nn.functional.mse_loss, opt_func=sgd, lr=lr, cbs=cbs)


def autocast_on() -> bool:
    return torch.is_autocast_enabled("cpu")


class Probe(Callback):
    """Runs after MixedPrecision; records what each hook sees."""

    run_after = MixedPrecision

    def __init__(self) -> None:
        self.pred_dtypes: list[tuple[bool, torch.dtype]] = []
        self.autocast_at: dict[str, list[bool]] = {"after_loss": [], "after_batch": []}
        self.grads: list[list[torch.Tensor]] = []
        self.loss_grad_fn: list[bool] = []

    @override
    def after_pred(self) -> None:
        assert autocast_on()
        self.pred_dtypes.append((self.training, self.pred.dtype))

    @override
    def after_loss(self) -> None:
        self.autocast_at["after_loss"].append(autocast_on())

    @override
    def after_backward(self) -> None:
        self.grads.append([p.grad.clone() for p in self.model.parameters() if p.grad is not None])

    @override
    def after_batch(self) -> None:
        self.autocast_at["after_batch"].append(autocast_on())


def params_of(learn: Learner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in learn.model.parameters()]


def test_bf16_on_cpu_trains_with_autocast_only_around_forward_and_loss() -> None:
    probe = Probe()
    learn = make_learner([MixedPrecision(torch.bfloat16), probe])
    before = params_of(learn)
    learn.fit(2)
    # The forward pass ran in bfloat16, in training and in validation.
    assert (
        probe.pred_dtypes
        == [(True, torch.bfloat16)] * 3
        + [(False, torch.bfloat16)] * 2
        + [(True, torch.bfloat16)] * 3
        + [(False, torch.bfloat16)] * 2
    )
    # Autocast ends at after_loss: the backward pass and later hooks run outside it.
    assert probe.autocast_at["after_loss"] == [False] * 10
    assert probe.autocast_at["after_batch"] == [False] * 10
    assert not autocast_on()
    losses = learn.recorder.losses
    assert len(losses) == 2 * N_TRAIN_BATCHES
    assert all(math.isfinite(v) for v in losses)
    assert all(math.isfinite(v) for v in learn.recorder.values[-1])
    assert all(not torch.equal(a, b) for a, b in zip(before, params_of(learn), strict=True))
    # The parameters stay float32: autocast casts per op, it does not convert the model.
    assert {p.dtype for p in learn.model.parameters()} == {torch.float32}


def test_scaled_backward_records_unscaled_losses_and_steps_unscaled_grads() -> None:
    """Scaling by a power of two is exact: with a scaler, every value equals the plain run."""
    plain_probe, scaled_probe = Probe(), Probe()
    plain = make_learner([MixedPrecision(torch.bfloat16), plain_probe])
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12, growth_interval=1)
    mp = MixedPrecision(torch.bfloat16, scaler=scaler)
    scaled = make_learner([mp, scaled_probe])
    plain.fit(2)
    scaled.fit(2)
    assert mp.scaler is scaler
    assert scaled.recorder.losses == plain.recorder.losses
    assert scaled.recorder.values == plain.recorder.values
    # Gradients seen after MixedPrecision's after_backward are the unscaled ones.
    for got, want in zip(scaled_probe.grads, plain_probe.grads, strict=True):
        assert all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(params_of(scaled), params_of(plain), strict=True))
    # update() ran once per step: the scale grew after each of the 6 finite steps.
    assert scaler.get_scale() == 2.0**12 * 2**6
    assert mp.skipped_steps == 0


class InfGrad(Callback):
    """Puts an inf into the first gradient in batch ``at_iter`` of epoch 0, before unscaling."""

    run_before = MixedPrecision

    def __init__(self, at_iter: int) -> None:
        self.at_iter = at_iter
        self.weights: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
        self._before: list[torch.Tensor] = []

    @override
    def begin_batch(self) -> None:
        self._before = [p.detach().clone() for p in self.model.parameters()]

    @override
    def after_backward(self) -> None:
        if self.epoch == 0 and self.iter == self.at_iter:
            grad = next(self.model.parameters()).grad
            assert grad is not None
            grad.view(-1)[0] = math.inf

    @override
    def after_batch(self) -> None:
        if self.training:
            after = [p.detach().clone() for p in self.model.parameters()]
            self.weights.append((self._before, after))


def test_step_with_inf_gradient_is_skipped_and_scale_backs_off() -> None:
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    mp = MixedPrecision(torch.bfloat16, scaler=scaler)
    spike = InfGrad(at_iter=1)
    probe = Probe()
    clip = GradientClip(max_norm=1e9)
    # Momentum would move the weights on a zero gradient: a skipped step must not.
    learn = make_learner([clip, spike, mp, probe], momentum=0.9)
    learn.fit(1)
    changed = [
        any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))
        for before, after in spike.weights
    ]
    assert changed == [True, False, True]
    assert mp.skipped_steps == 1
    assert probe.grads[1] == []  # the skipped step's gradients were dropped
    assert scaler.get_scale() == 2.0**9  # backoff 0.5, default growth interval not reached
    # The batch is still recorded, with a finite, unscaled loss.
    assert len(learn.recorder.losses) == N_TRAIN_BATCHES
    assert all(math.isfinite(v) for v in learn.recorder.losses)


def test_gradient_clip_runs_after_mixed_precision_whatever_the_registration_order() -> None:
    clip, mp = GradientClip(), MixedPrecision()
    learn = make_learner([clip, mp])
    names = [
        type(getattr(h, "__self__", h)).__name__ for h in learn.bus.handlers(Event.after_backward)
    ]
    assert names == ["MixedPrecision", "GradientClip"]


class Raiser(Callback):
    """Raises ``error`` in after_pred of the second batch of the phase it targets."""

    def __init__(self, error: BaseException, *, in_validation: bool = False) -> None:
        self.error = error
        self.in_validation = in_validation
        self.autocast_seen: list[bool] = []

    @override
    def after_pred(self) -> None:
        if self.training != self.in_validation and self.iter == 1:
            raise self.error

    @override
    def after_batch(self) -> None:
        self.autocast_seen.append(autocast_on())


@pytest.mark.parametrize(
    ("error", "in_validation"),
    [
        (CancelBatchException(), False),
        (CancelTrainException(), False),
        (CancelValidException(), True),
        (CancelEpochException(), False),
        (CancelFitException(), False),
        (CancelFitException(), True),
    ],
    ids=["batch", "train", "valid", "epoch", "fit", "fit-in-validation"],
)
def test_autocast_is_exited_when_a_signal_ends_the_batch(
    error: CancelException, in_validation: bool
) -> None:
    mp = MixedPrecision()
    raiser = Raiser(error, in_validation=in_validation)
    learn = make_learner([mp, raiser])
    learn.fit(2)
    assert not autocast_on()
    assert not mp.autocast_active
    # after_batch runs outside autocast, also after a cancelled batch.
    assert raiser.autocast_seen
    assert not any(raiser.autocast_seen)


def test_autocast_is_exited_when_a_callback_fails() -> None:
    mp = MixedPrecision()
    learn = make_learner([mp, Raiser(KeyError("boom"))])
    with pytest.raises(KeyError, match="boom"):
        learn.fit(1)
    assert not autocast_on()
    assert not mp.autocast_active


def test_replacing_the_loss_after_it_was_scaled_is_an_error() -> None:
    class LatePenalty(Callback):
        run_after = MixedPrecision

        @override
        def after_loss(self) -> None:
            self.learn.loss = self.loss + 0.0

    mp = MixedPrecision(scaler=torch.amp.GradScaler("cpu"))
    learn = make_learner([mp, LatePenalty()])
    with pytest.raises(RuntimeError, match=r"learn.loss was replaced after MixedPrecision"):
        learn.fit(1)
    assert not autocast_on()


def test_float16_on_cpu_is_refused_clearly() -> None:
    message = r"MixedPrecision\(dtype=torch.float16\) needs a CUDA device"
    with pytest.raises(ValueError, match=message):
        MixedPrecision(torch.float16, device_type="cpu")
    learn = make_learner([MixedPrecision(torch.float16)])  # device inferred at begin_fit
    with pytest.raises(ValueError, match=message):
        learn.fit(1)
    assert not autocast_on()


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match=r"dtype must be torch.bfloat16 or torch.float16"):
        MixedPrecision(torch.float64)
    with pytest.raises(ValueError, match=r"no autocast for device type 'nope'"):
        MixedPrecision(device_type="nope")
    learn = make_learner([MixedPrecision(device_type="cuda")])
    with pytest.raises(ValueError, match=r"device_type='cuda'\) does not match the model"):
        learn.fit(1)
