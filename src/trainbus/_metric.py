"""Metric values: what a metric may return, and its conversion to a tensor on the device."""

from __future__ import annotations

import numbers
from collections.abc import Callable
from typing import TypeAlias

import torch

__all__ = ["Metric", "metric_name", "metric_tensor", "not_a_tensor"]

Metric: TypeAlias = Callable[[torch.Tensor, torch.Tensor], "torch.Tensor | float"]
"""A metric: ``metric(pred, target)``, the batch mean as a tensor (``accuracy``) or a
Python or NumPy number (converted to a tensor on the device)."""


def metric_name(metric: object) -> str:
    """The column name of ``metric``: its ``__name__``, else its class's name."""
    name = getattr(metric, "__name__", None)
    return name if isinstance(name, str) else type(metric).__name__


def metric_tensor(metric: object, value: object, device: torch.device) -> torch.Tensor:
    """What ``metric`` returned, as a detached tensor; a number goes to ``device`` once.

    Raises:
        TypeError: ``value`` is neither a tensor nor a real number; the message names the
            metric.
    """
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, bool):  # a Real to Python, but no mean of a batch
        pass
    elif isinstance(value, numbers.Real):
        return torch.tensor(float(value), dtype=torch.float32, device=device)
    raise TypeError(
        f"metric {metric_name(metric)} returned {type(value).__qualname__}; a metric must "
        "return a tensor or a number (the batch mean)"
    )


def not_a_tensor(what: str, value: object) -> TypeError:
    """The error for a loss (or other value the loop computes with) that is no tensor."""
    source = "loss_func" if what == "loss" else "the model"
    return TypeError(
        f"the {what} must be a torch.Tensor, but {source} returned a "
        f"{type(value).__qualname__}; a loss function returns a tensor (the batch mean)"
    )
