"""MixUp: train on convex combinations of pairs of samples and of their losses."""

from __future__ import annotations

import torch
from typing_extensions import override

from .._callback import Callback
from .._checks import checked_float
from .._losses import LossFunc, per_sample_loss

__all__ = ["MixUp"]


class MixUp(Callback):
    """MixUp (Zhang et al., 2018) for training batches; validation is left untouched.

    At ``begin_batch`` of each training batch of ``bs`` samples it draws, from the global
    torch RNG, ``lam = Beta(alpha, alpha).sample((bs,))`` and keeps ``max(lam, 1 - lam)``
    (so each mixed sample is closest to its own original, as in fastai), then a
    permutation ``perm = torch.randperm(bs)``. Every input becomes
    ``torch.lerp(x[perm], x, lam)``, i.e. ``lam * x + (1 - lam) * x[perm]`` per sample.

    For the fit, ``learn.loss_func`` is replaced by a wrapper (restored at ``teardown``,
    however the fit ends). In training it computes per-sample losses
    against the original targets ``yb`` and the partners' targets :attr:`yb1`
    (``y[perm]``), mixes them as ``lam * loss(yb) + (1 - lam) * loss(yb1)`` and reduces
    them as the original loss function does (mean, sum, or batchmean). In validation it calls the
    original loss function. Per-sample losses come from a copy of a loss module with
    ``reduction="none"`` (``nn.CrossEntropyLoss``, ...) or from calling a loss function
    with ``reduction="none"`` (``torch.nn.functional.cross_entropy``, ...).

    Args:
        alpha: Concentration of the Beta distribution of ``lam`` (larger mixes more).

    Attributes:
        lam: This batch's mixing weights, shape ``(bs,)`` (``None`` outside a training
            batch).
        perm: This batch's partner indices (``None`` outside a training batch).
        yb1: The partners' targets, ``tuple(y[perm] for y in yb)``.
    """

    def __init__(self, alpha: float = 0.4) -> None:
        self.alpha: float = checked_float("MixUp alpha", alpha, what="a positive finite number")
        concentration = torch.tensor(self.alpha)
        self._distribution = torch.distributions.Beta(concentration, concentration)
        self.lam: torch.Tensor | None = None
        self.perm: torch.Tensor | None = None
        self.yb1: tuple[torch.Tensor, ...] = ()
        self._original: LossFunc | None = None
        self._per_sample: LossFunc | None = None
        self._reduction = "mean"
        self._wrapper: LossFunc = self._mixed_loss

    @override
    def begin_fit(self) -> None:
        original = self.loss_func
        self._per_sample, self._reduction = per_sample_loss(original, "MixUp")
        self._original = original
        self.learn.loss_func = self._wrapper

    @override
    def begin_batch(self) -> None:
        if not self.training:
            return
        xb, yb = self.xb, self.yb
        bs = len(xb[0])
        lam = self._distribution.sample((bs,))
        lam = torch.maximum(lam, 1 - lam)
        perm = torch.randperm(bs)
        mixed: list[torch.Tensor] = []
        for i, x in enumerate(xb):
            if not x.is_floating_point():
                raise TypeError(
                    f"MixUp mixes inputs linearly, so they must be floating point; xb[{i}] "
                    f"has dtype {x.dtype}"
                )
            perm_x = _on_device_of(perm, x)
            mixed.append(
                torch.lerp(x[perm_x], x, _per_row(_on_device_of(lam, x, x.dtype), x.dim()))
            )
        self.lam, self.perm = lam, perm
        self.yb1 = tuple(y[_on_device_of(perm, y)] for y in yb)
        self.learn.xb = tuple(mixed)

    @override
    def after_batch(self) -> None:
        self.lam, self.perm, self.yb1 = None, None, ()

    @override
    def teardown(self) -> None:
        self._restore()

    def _restore(self) -> None:
        original, self._original = self._original, None
        self.lam, self.perm, self.yb1 = None, None, ()
        if original is not None and self.learn.loss_func is self._wrapper:
            self.learn.loss_func = original

    def _mixed_loss(self, pred: torch.Tensor, *yb: torch.Tensor) -> torch.Tensor:
        original, per_sample, lam = self._original, self._per_sample, self.lam
        if original is None or per_sample is None:
            raise RuntimeError("MixUp's loss function was called outside the fit it wraps")
        if lam is None or not self.training:
            return original(pred, *yb)
        try:
            loss = per_sample(pred, *yb)
            loss_shuffled = per_sample(pred, *self.yb1)
        except TypeError as error:
            raise TypeError(
                "MixUp needs per-sample losses: loss_func must be a loss module with a "
                "`reduction` attribute, or a function accepting reduction='none' (as the "
                "torch.nn.functional losses do)"
            ) from error
        if loss.dim() == 0 or loss.shape[0] != lam.shape[0]:
            raise ValueError(
                f"MixUp needs one loss per sample from loss_func with reduction='none'; got "
                f"shape {tuple(loss.shape)} for a batch of {lam.shape[0]}"
            )
        mixed = torch.lerp(
            loss_shuffled, loss, _per_row(_on_device_of(lam, loss, loss.dtype), loss.dim())
        )
        reduction = self._reduction
        if reduction == "none":
            return mixed
        if reduction == "sum":
            return mixed.sum()
        if reduction == "batchmean":  # nn.KLDivLoss
            return mixed.sum() / lam.shape[0]
        return mixed.mean()


def _on_device_of(
    value: torch.Tensor, other: torch.Tensor, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """``value`` (drawn on the CPU) on ``other``'s device, copied without a host sync."""
    return value.to(device=other.device, dtype=dtype, non_blocking=True)


def _per_row(weights: torch.Tensor, ndim: int) -> torch.Tensor:
    """``weights`` of shape ``(bs,)`` viewed as ``(bs, 1, ..., 1)`` with ``ndim`` dims."""
    return weights.view(-1, *([1] * (ndim - 1)))
