"""Metrics: ``metric(pred, target) -> Tensor``, the mean over a batch.

The Recorder averages them over the validation set, weighted by batch size, on the
device.
"""

from __future__ import annotations

import torch

__all__ = ["accuracy", "error_rate"]


def accuracy(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Fraction of rows whose arg-max over the last dimension equals ``target``."""
    if pred.shape[:-1] != target.shape:
        raise ValueError(
            f"accuracy needs pred of shape (*, classes) and target of shape (*); got "
            f"{tuple(pred.shape)} and {tuple(target.shape)}"
        )
    return (pred.argmax(dim=-1) == target).float().mean()


def error_rate(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 - accuracy``."""
    return 1 - accuracy(pred, target)
