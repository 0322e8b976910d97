"""Gradient callbacks: accumulation over batches, and clipping by norm."""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar

import torch
from typing_extensions import override

from .._callback import Callback
from .._checks import checked_float, checked_int
from .._hooks import SubscriberClasses
from .._signals import CancelBatchException
from ._precision import MixedPrecision, on_gradient

__all__ = ["GradientAccumulation", "GradientClip"]


class GradientAccumulation(Callback):
    """Adds up gradients over batches until ``n_acc`` samples are seen, then steps once.

    The step sees the gradient of the mean loss over the accumulated samples, as if they
    had formed one batch: each training loss's gradient is weighted by ``bs / n_acc`` (a
    hook on the loss tensor, so the loss value, and what the Recorder records, stay
    unchanged), and when a group ends with ``N != n_acc`` samples (``bs`` does not divide
    ``n_acc``) the summed gradients are multiplied by ``n_acc / N`` before the step.
    Until a group is complete, ``after_backward`` raises ``CancelBatchException``, which
    skips ``opt.step()`` and ``opt.zero_grad()`` so the gradients keep adding up.

    The count carries over epoch ends (as in fastai); gradients of a group still
    unfinished when the fit ends are dropped. The loss is assumed to be a batch mean.
    It runs before :class:`MixedPrecision` (the scaler unscales the summed gradients once
    per step) and :class:`GradientClip` (which clips the summed gradient), and late in
    ``after_loss`` (``order = 10``) so that penalties added to the loss are weighted too.
    On many processes ``n_acc`` counts this rank's samples, and the forward and backward
    passes of a batch that does not complete a group run under DistributedDataParallel's
    ``no_sync()``: gradients are all-reduced once per step, not once per batch.

    Args:
        n_acc: Samples per optimizer step.

    Attributes:
        count: Samples whose gradients are accumulated but not stepped yet.
    """

    run_before: ClassVar[SubscriberClasses] = MixedPrecision
    order = 10

    def __init__(self, n_acc: int = 32) -> None:
        self.n_acc: int = checked_int("GradientAccumulation n_acc", n_acc)
        self.count: int = 0
        self._weighted_loss: torch.Tensor | None = None
        self._bs = 0
        self._no_sync = contextlib.ExitStack()

    @override
    def begin_fit(self) -> None:
        self.count = 0
        self.opt.zero_grad()

    @override
    def begin_batch(self) -> None:
        ddp = self.learn.distributed.ddp
        if ddp is not None and self.training:
            bs = len(self.yb[0]) if self.yb else len(self.xb[0])
            if self.count + bs < self.n_acc:  # not the group's last batch: no all-reduce
                self._no_sync.enter_context(ddp.no_sync())

    @override
    def after_batch(self) -> None:
        self._no_sync.close()

    @override
    def teardown(self) -> None:
        self._no_sync.close()

    @override
    def state_dict(self) -> dict[str, Any]:
        # The accumulated gradients themselves are in the checkpoint's parameters.
        return {"count": self.count}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count = int(state["count"])

    @override
    def after_loss(self) -> None:
        self._weighted_loss = None
        loss = self.loss
        if not self.training or not loss.requires_grad:
            return
        self._bs = bs = len(self.yb[0]) if self.yb else len(self.xb[0])
        weight = bs / self.n_acc

        def weigh(grad: torch.Tensor) -> torch.Tensor:
            return grad * weight

        on_gradient(loss, weigh)
        self._weighted_loss = loss

    @override
    def after_backward(self) -> None:
        weighted, self._weighted_loss = self._weighted_loss, None
        if weighted is None:
            return
        if self.loss is not weighted:
            raise RuntimeError(
                "learn.loss was replaced after GradientAccumulation weighted its gradient in "
                "after_loss: make the callback that changes the loss run before it "
                "(run_before = GradientAccumulation)"
            )
        self.count += self._bs
        if self.count < self.n_acc:
            raise CancelBatchException
        n_samples, self.count = self.count, 0
        if n_samples != self.n_acc:
            _scale_grads(self.opt, self.n_acc / n_samples)

    @override
    def after_cancel_batch(self) -> None:
        self._weighted_loss = None

    @override
    def after_fit(self) -> None:
        self._weighted_loss = None
        self.opt.zero_grad()  # an unfinished group is dropped, not carried into the next fit


class GradientClip(Callback):
    """Clips the gradients' total norm to ``max_norm`` before each optimizer step.

    Runs in ``after_backward``, after :class:`MixedPrecision` (so it clips unscaled
    gradients) and :class:`GradientAccumulation` (so it clips the summed gradient, only
    when a step is due), with ``torch.nn.utils.clip_grad_norm_`` over the model's
    parameters.

    Args:
        max_norm: Largest total norm the step may see.
        norm_type: Order of the norm (``math.inf`` for the max-abs norm).

    Attributes:
        grad_norm: The total norm before the last clipping (a device tensor, read from
            the device only when you read it), or ``None`` before the first step.
    """

    run_after: ClassVar[SubscriberClasses] = (MixedPrecision, GradientAccumulation)

    def __init__(self, max_norm: float = 1.0, norm_type: float = 2.0) -> None:
        self.max_norm: float = checked_float("GradientClip max_norm", max_norm)
        self.norm_type: float = checked_float("GradientClip norm_type", norm_type, finite=False)
        self.grad_norm: torch.Tensor | None = None

    @override
    def after_backward(self) -> None:
        self.grad_norm = torch.nn.utils.clip_grad_norm_(
            self.model.parameters(), self.max_norm, self.norm_type
        )


def _scale_grads(opt: torch.optim.Optimizer, factor: float) -> None:
    for group in opt.param_groups:
        params: list[torch.Tensor] = group["params"]
        for p in params:
            if p.grad is not None:
                p.grad.mul_(factor)
