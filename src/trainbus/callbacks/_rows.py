"""A validation phase's arithmetic: its batches' losses and metric values, weighted by
batch size, averaged into a row of the Recorder's ``values`` (also ``learn.validate()``'s).

Everything stays on the device until :func:`values_to_host` reads a whole row (or several)
in one transfer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, cast

import torch

from .._metric import metric_name, metric_tensor

if TYPE_CHECKING:
    from .._learner import Learner

__all__ = [
    "MetricSums",
    "ValidationLosses",
    "add_validation_batch",
    "validation_row",
    "values_to_host",
]

ValidationLosses = list[tuple[torch.Tensor, int]]
"""A validation phase's batch losses (device tensors), each with its batch size."""

MetricSums = list[list[tuple[torch.Tensor, int]]]
"""Per metric, its value on each validation batch (device tensors), with the batch size."""


def values_to_host(rows: Sequence[Sequence[torch.Tensor | None]]) -> list[list[float]]:
    """The values of ``rows`` as floats, in one transfer; ``None`` (nothing to average) is nan."""
    present = [value for row in rows for value in row if value is not None]
    floats: list[float] = []
    if present:
        try:
            stacked = torch.stack(present)  # on their device: one transfer below
        except RuntimeError:  # on several devices: one transfer each
            stacked = torch.stack([value.cpu() for value in present])
        # torch types tolist() as list[Any]: a 1-D float tensor gives floats.
        floats = cast("list[float]", stacked.float().tolist())  # pyright: ignore[reportUnknownMemberType]
    found = iter(floats)
    return [[math.nan if value is None else next(found) for value in row] for row in rows]


def add_validation_batch(
    learn: Learner, loss: torch.Tensor, valid: ValidationLosses, metric_sums: MetricSums
) -> None:
    """Add the validation batch in flight to what a row of the Recorder's values averages.

    ``loss`` is the batch's loss without its graph; ``metric_sums`` has one list per
    metric of ``learn``. Nothing is read from the device. ``learn.validate()`` adds up
    its batches with this too, so it returns what a fit's validation phase records.
    """
    values = learn.state.trusted_values
    try:
        target, inputs = values["yb"], values["xb"]
    except KeyError:  # not a batch of the Learner's: let the state say what is missing
        target, inputs = learn.state.yb, learn.state.xb
    bs = (target[0] if target else inputs[0]).shape[0]
    valid.append((loss, bs))
    if metric_sums:
        _add_metrics(learn, target, bs, metric_sums)


def _add_metrics(
    learn: Learner, target: tuple[torch.Tensor, ...], bs: int, metric_sums: MetricSums
) -> None:
    pred: object = learn.state.pred  # a model may return something else than a tensor
    if isinstance(pred, torch.Tensor):  # pyright: ignore[reportUnnecessaryIsInstance]
        pred = pred.detach()
    device = learn.device
    for sums, metric in zip(metric_sums, learn.metrics, strict=True):
        try:
            value = metric(pred, *target)  # type: ignore[arg-type]  # pred: see above
        except Exception as error:
            error.add_note(
                f"trainbus: raised by metric {metric_name(metric)}, called with the "
                f"model's output (a {type(pred).__qualname__}) and the targets"
            )
            raise
        sums.append((metric_tensor(metric, value, device), bs))


def validation_row(valid: ValidationLosses, metric_sums: MetricSums) -> list[torch.Tensor | None]:
    """``valid_loss`` and each metric: the batch-size-weighted means (``None``: no batch)."""
    return [_weighted_mean(valid), *(_weighted_mean(sums) for sums in metric_sums)]


def _weighted_mean(items: Sequence[tuple[torch.Tensor, int]]) -> torch.Tensor | None:
    if not items:
        return None
    values = torch.stack([value for value, _ in items]).float()
    sizes = [n for _, n in items]
    weights = torch.tensor(sizes, dtype=values.dtype, device=values.device)
    return (values * weights).sum() / sum(sizes)
