"""Per-sample losses: the loss function of a Learner called without reduction."""

from __future__ import annotations

import copy
import functools
import inspect
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["LossFunc", "per_sample_loss"]

LossFunc = Callable[..., torch.Tensor]


def per_sample_loss(loss_func: LossFunc, who: str) -> tuple[LossFunc, str]:
    """A version of ``loss_func`` that does not reduce, and the reduction it had.

    A loss module with a ``reduction`` attribute (``nn.CrossEntropyLoss``, ...) is copied
    with ``reduction="none"``, so the user's module is left as it is; a function that
    takes a ``reduction`` keyword (the ``torch.nn.functional`` losses) is called with
    ``reduction="none"``, its reduction being the default ``"mean"``.

    Args:
        loss_func: The loss function.
        who: What needs the per-sample losses, as the error names it (``"MixUp"``).

    Raises:
        TypeError: ``loss_func`` allows neither.
    """
    reduction: object = getattr(loss_func, "reduction", None)
    if isinstance(loss_func, nn.Module):
        if isinstance(reduction, str):
            unreduced = copy.copy(loss_func)
            setattr(unreduced, "reduction", "none")  # noqa: B010 (not declared on nn.Module)
            return unreduced, reduction
    elif _takes_reduction(loss_func):
        return functools.partial(loss_func, reduction="none"), "mean"
    raise TypeError(
        f"{who} needs per-sample losses: loss_func must be a loss module with a `reduction` "
        "attribute, or a function accepting reduction='none' (as the torch.nn.functional "
        f"losses do); {_describe(loss_func)} is neither"
    )


def _takes_reduction(function: LossFunc) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a builtin): let the call tell
        return True
    return any(
        p.kind is p.VAR_KEYWORD or (p.name == "reduction" and p.kind is not p.POSITIONAL_ONLY)
        for p in parameters
    )


def _describe(loss_func: object) -> str:
    name = getattr(loss_func, "__qualname__", None) or type(loss_func).__qualname__
    return (
        f"{name} ({type(loss_func).__qualname__})" if name != type(loss_func).__qualname__ else name
    )
