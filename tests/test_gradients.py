"""GradientClip and GradientAccumulation: what the optimizer step sees."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from typing_extensions import override

from trainbus import Callback, DataLoaders, Event, Learner
from trainbus.callbacks import GradientAccumulation, GradientClip, MixedPrecision


def data(n: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, generator=generator, dtype=torch.float64)
    return x, 3 * x.sum(dim=1, keepdim=True) + torch.randn(n, 1, generator=generator)


def make_learner(
    cbs: list[Callback], *, n: int, bs: int, lr: float = 0.1, dtype: torch.dtype = torch.float64
) -> Learner:
    """Linear(3, 1) with fixed weights on ``n`` unshuffled samples; plain SGD (no momentum)."""
    x, y = data(n)
    dls = DataLoaders.from_tensors((x.to(dtype), y.to(dtype)), bs=bs, shuffle=False)
    model = nn.Linear(3, 1).to(dtype)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[0.5, -1.0, 2.0]]))
        model.bias.fill_(0.25)
    return Learner(model, dls, nn.functional.mse_loss, lr=lr, cbs=cbs)


def params_of(learn: Learner) -> list[torch.Tensor]:
    return [p.detach().clone() for p in learn.model.parameters()]


class StepProbe(Callback):
    """Runs after the gradient callbacks; records the gradient norm each step sees."""

    run_after = (GradientClip, GradientAccumulation, MixedPrecision)

    def __init__(self, norm_type: float = 2.0) -> None:
        self.norm_type = norm_type
        self.norms: list[float] = []
        self.steps: list[tuple[int, int]] = []

    @override
    def after_backward(self) -> None:
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        self.norms.append(torch.nn.utils.get_total_norm(grads, self.norm_type).item())

    @override
    def after_step(self) -> None:
        self.steps.append((self.epoch, self.iter))


# ------------------------------------------------------------------- GradientClip


@settings(max_examples=25, deadline=None)
@given(
    max_norm=st.floats(min_value=1e-3, max_value=10.0),
    norm_type=st.sampled_from([1.0, 2.0, 3.0, math.inf]),
)
def test_the_step_sees_a_gradient_norm_at_most_max_norm(max_norm: float, norm_type: float) -> None:
    clip = GradientClip(max_norm, norm_type)
    probe = StepProbe(norm_type)
    learn = make_learner([probe, clip], n=16, bs=4, lr=1e-3)
    learn.fit(1)
    assert len(probe.norms) == 4
    for seen in probe.norms:
        assert seen <= max_norm * (1 + 1e-6)
    # grad_norm is the norm before clipping; where it exceeded max_norm, the step saw
    # max_norm (the data's gradients are large: norms here are tens to hundreds).
    assert clip.grad_norm is not None
    before = clip.grad_norm.item()
    if before > max_norm:
        assert probe.norms[-1] == pytest.approx(max_norm, rel=1e-5)


def test_large_gradients_are_scaled_down_to_max_norm() -> None:
    clip, probe, plain_probe = GradientClip(max_norm=0.5), StepProbe(), StepProbe()
    make_learner([clip, probe], n=16, bs=4).fit(1)
    make_learner([plain_probe], n=16, bs=4).fit(1)
    assert plain_probe.norms[0] > 10  # the unclipped first gradient
    assert probe.norms == pytest.approx([0.5] * 4, rel=1e-5)
    assert clip.grad_norm is not None and clip.grad_norm.item() > 0.5


def test_clip_leaves_small_gradients_alone() -> None:
    probe, plain_probe = StepProbe(), StepProbe()
    make_learner([GradientClip(max_norm=1e6), probe], n=16, bs=4).fit(1)
    make_learner([plain_probe], n=16, bs=4).fit(1)
    assert probe.norms == plain_probe.norms


def test_gradient_callbacks_are_ordered_by_their_dependencies() -> None:
    learn = make_learner(
        [GradientClip(), MixedPrecision(), GradientAccumulation(8)], n=16, bs=4, dtype=torch.float32
    )
    owners = [
        type(getattr(h, "__self__", h)).__name__ for h in learn.bus.handlers(Event.after_backward)
    ]
    assert owners == ["GradientAccumulation", "MixedPrecision", "GradientClip"]


def test_clip_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match=r"GradientClip max_norm must be a positive number, got 0"):
        GradientClip(0)
    with pytest.raises(ValueError, match=r"GradientClip norm_type must be a positive number"):
        GradientClip(1.0, -2.0)
    with pytest.raises(ValueError, match=r"GradientClip max_norm must be finite, got inf"):
        GradientClip(math.inf)


# ----------------------------------------------------------- GradientAccumulation


@pytest.mark.parametrize(
    ("n", "bs", "n_acc"),
    [(32, 8, 32), (36, 12, 32), (40, 16, 40)],
    ids=["4x8=32", "3x12=36>32", "16+16+8=40"],
)
def test_accumulated_step_equals_one_big_batch_step(n: int, bs: int, n_acc: int) -> None:
    """Plain SGD, float64: the accumulated step is the step on all samples at once."""
    probe = StepProbe()
    accumulated = make_learner([GradientAccumulation(n_acc), probe], n=n, bs=bs)
    one_batch = make_learner([], n=n, bs=n)
    accumulated.fit(1)
    one_batch.fit(1)
    assert probe.steps == [(0, len(accumulated.dls.train) - 1)]  # one step, after the last batch
    for got, want in zip(params_of(accumulated), params_of(one_batch), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_accumulation_over_several_epochs_matches_big_batches() -> None:
    """Groups of 32 samples, 8 at a time, across 3 epochs: one step per epoch."""
    probe = StepProbe()
    accumulated = make_learner([GradientAccumulation(32), probe], n=32, bs=8)
    one_batch = make_learner([], n=32, bs=32)
    accumulated.fit(3)
    one_batch.fit(3)
    assert probe.steps == [(0, 3), (1, 3), (2, 3)]
    for got, want in zip(params_of(accumulated), params_of(one_batch), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_accumulation_leaves_the_loss_value_unchanged() -> None:
    class LossProbe(Callback):
        run_after = GradientAccumulation

        def __init__(self) -> None:
            self.pairs: list[tuple[float, float]] = []

        @override
        def after_loss(self) -> None:
            if self.training:
                direct = nn.functional.mse_loss(self.model(self.x), self.y)
                self.pairs.append((self.loss.item(), direct.item()))

    probe = LossProbe()
    make_learner([GradientAccumulation(32), probe], n=32, bs=8).fit(1)
    assert len(probe.pairs) == 4
    assert all(seen == direct for seen, direct in probe.pairs)


def test_an_unfinished_group_is_dropped_at_the_end_of_the_fit() -> None:
    learn = make_learner([GradientAccumulation(32)], n=40, bs=8)  # 4 batches step, 1 is left
    learn.fit(1)
    assert all(p.grad is None for p in learn.model.parameters())
    assert learn.get_cb(GradientAccumulation).count == 8


def test_accumulation_composes_with_loss_scaling() -> None:
    """bf16 autocast with and without a scaler: the same accumulated steps, one update each."""
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8, growth_interval=1)
    scaled = make_learner(
        [GradientAccumulation(16), MixedPrecision(scaler=scaler)], n=32, bs=4, dtype=torch.float32
    )
    plain = make_learner(
        [GradientAccumulation(16), MixedPrecision()], n=32, bs=4, dtype=torch.float32
    )
    scaled.fit(1)
    plain.fit(1)
    for got, want in zip(params_of(scaled), params_of(plain), strict=True):
        assert torch.equal(got, want)
    assert scaler.get_scale() == 2.0**8 * 2**2  # two steps, one update each


def test_accumulation_arguments_are_checked() -> None:
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match=r"GradientAccumulation n_acc must be a positive int"):
            GradientAccumulation(bad)  # type: ignore[arg-type]


def test_recorder_keeps_every_accumulated_batch_loss() -> None:
    """Batches cancelled after their backward pass were trained on: all are recorded."""
    generator = torch.Generator().manual_seed(0)
    x, y = torch.randn(32, 3, generator=generator), torch.randn(32, 1, generator=generator)
    dls = DataLoaders.from_tensors((x, y), (x[:8], y[:8]), bs=8, shuffle=False)
    learn = Learner(nn.Linear(3, 1), dls, nn.functional.mse_loss, cbs=[GradientAccumulation(16)])
    learn.fit(1)
    assert len(learn.recorder.losses) == 4
    assert len(learn.recorder.lrs) == 4
    # The epoch's train_loss is the mean of all four batch losses.
    assert learn.recorder.values[0][0] == pytest.approx(sum(learn.recorder.losses) / 4)
