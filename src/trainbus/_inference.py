"""Evaluation and inference: what ``validate``, ``get_preds`` and ``predict`` gather.

Each runs one validate stage of the Learner (``begin_validate``, the batch events,
``after_validate``) as an auxiliary run; a gathering callback, attached for that run
only, collects what it returns, batch by batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, NamedTuple, cast

import torch
from typing_extensions import override

from ._callback import Callback
from ._devices import to_device
from ._events import Event
from ._hooks import SubscriberClasses
from ._losses import LossFunc, per_sample_loss
from ._metric import Metric, metric_name
from .callbacks._core import TrainEvalCallback
from .callbacks._rows import (
    MetricSums,
    ValidationLosses,
    add_validation_batch,
    validation_row,
    values_to_host,
)

if TYPE_CHECKING:
    from ._bus import EventBus

__all__ = ["Gather", "Preds", "prediction_body"]

_CPU: Final = torch.device("cpu")


class Preds(NamedTuple):
    """What ``learn.get_preds()`` returns, on the CPU.

    Attributes:
        preds: The model's outputs (as callbacks left them after ``after_pred``), batch
            after batch, concatenated along the first dimension.
        targets: The targets as the loader gives them, concatenated: one tensor for one
            target, a tuple for several, containers (dicts, lists) kept with their
            tensors concatenated; ``None`` when the batches have no targets.
        losses: With ``with_loss=True``, one loss per sample (shape ``(n,)``), else ``None``.
    """

    preds: torch.Tensor
    targets: Any
    losses: torch.Tensor | None


def prediction_body(values: dict[str, Any], bus: EventBus) -> Callable[[], None]:
    """The body of a batch without targets: the forward pass and ``after_pred``, no loss."""
    emit, after_pred = bus.emit, bus.live_handlers(Event.after_pred)

    def predict_batch() -> None:
        values["pred"] = values["model"](*values["xb"])
        if after_pred:
            emit(Event.after_pred)

    return predict_batch


def either_body(
    values: dict[str, Any], with_targets: Callable[[], None], without: Callable[[], None]
) -> Callable[[], None]:
    """A batch body that runs ``with_targets`` for batches that have targets, else ``without``."""

    def batch() -> None:
        (with_targets if values["yb"] else without)()

    return batch


class Gather(Callback):
    """Collects, batch by batch, what an auxiliary validate stage returns.

    With ``metrics`` it adds up the losses and metric values as the Recorder does for
    its validation row (on the device); with ``keep`` it keeps the predictions and
    targets, moved to the CPU batch by batch; with ``losses`` it keeps per-sample losses
    computed by that function. Cancelled batches are left out, as by the Recorder.
    """

    run_after: ClassVar[SubscriberClasses] = TrainEvalCallback

    def __init__(
        self,
        *,
        sums: bool = False,
        keep: bool = False,
        losses: LossFunc | None = None,
        n_metrics: int = 0,
    ) -> None:
        self.sums, self.keep, self.per_sample = sums, keep, losses
        self.valid: ValidationLosses = []
        self.metric_sums: MetricSums = [[] for _ in range(n_metrics)]
        self.preds: list[object] = []
        self.targets: list[tuple[object, ...]] = []
        self.losses: list[torch.Tensor] = []
        self._cancelled = False

    @override
    def after_cancel_batch(self) -> None:
        self._cancelled = True

    @override
    def after_batch(self) -> None:
        if self._cancelled:
            self._cancelled = False
            return
        state = self.learn.state
        if self.sums:
            add_validation_batch(self.learn, state.loss.data, self.valid, self.metric_sums)
        if not self.keep:
            return
        pred = state.pred.detach()
        yb = cast("tuple[object, ...]", state.yb)  # any nesting: kept as given
        self.preds.append(to_device(pred, _CPU))
        self.targets.append(to_device(yb, _CPU))
        if self.per_sample is not None:
            if not yb:
                raise ValueError(
                    "get_preds(with_loss=True) needs targets, but the batches have none "
                    f"(n_inp={self.learn.n_inp}: every element of a batch is an input)"
                )
            self.losses.append(to_device(_per_sample(self.per_sample, pred, yb), _CPU))

    def metrics(self, learn_metrics: Sequence[Metric]) -> dict[str, float]:
        """``{"valid_loss": ..., "<metric name>": ...}``, as the Recorder's row has them."""
        (row,) = values_to_host([validation_row(self.valid, self.metric_sums)])
        names = ["valid_loss", *map(metric_name, learn_metrics)]
        return dict(zip(names, row, strict=True))

    def result(self) -> Preds:
        """The kept predictions, targets and losses, concatenated."""
        preds = cast("torch.Tensor", concat(self.preds)) if self.preds else torch.empty(0)
        targets: object = None
        if self.targets and self.targets[0]:
            gathered = cast("tuple[object, ...]", concat(self.targets))
            targets = gathered[0] if len(gathered) == 1 else gathered
        losses: torch.Tensor | None = None
        if self.per_sample is not None:
            losses = torch.cat(self.losses) if self.losses else torch.empty(0)
        return Preds(preds, targets, losses)


def per_sample_losses(loss_func: LossFunc) -> LossFunc:
    """``loss_func`` without reduction, for ``get_preds(with_loss=True)``.

    Raises:
        TypeError: ``loss_func`` can give no per-sample losses.
    """
    unreduced, _ = per_sample_loss(loss_func, "get_preds(with_loss=True)")
    return unreduced


def _per_sample(loss_func: LossFunc, pred: torch.Tensor, yb: tuple[object, ...]) -> torch.Tensor:
    """One loss per sample: the unreduced loss, averaged over all but the first dimension."""
    losses = loss_func(pred, *yb)
    bs = pred.shape[0]
    if losses.dim() == 0 or losses.shape[0] != bs:
        raise ValueError(
            f"get_preds(with_loss=True) needs one loss per sample from loss_func with "
            f"reduction='none'; got shape {tuple(losses.shape)} for a batch of {bs}"
        )
    return losses if losses.dim() == 1 else losses.reshape(bs, -1).mean(1)


def concat(items: Sequence[object]) -> object:
    """Batches of one structure joined into one: tensors concatenated along the first
    dimension (0-d ones stacked); dicts key by key; named tuples, and tuples or lists of
    tensors or containers, position by position; other tuples and lists (one item per
    sample, such as file names) joined into one."""
    first: object = items[0]
    if isinstance(first, torch.Tensor):
        tensors = cast("Sequence[torch.Tensor]", items)
        return torch.cat([t.reshape(1) if t.dim() == 0 else t for t in tensors])
    if isinstance(first, Mapping):
        mappings = cast("Sequence[Mapping[object, object]]", items)
        return {key: concat([m[key] for m in mappings]) for key in mappings[0]}
    if isinstance(first, tuple | list):
        first = cast("tuple[object, ...] | list[object]", first)
        sequences = cast("Sequence[Sequence[object]]", items)
        if not hasattr(first, "_fields") and not all(
            isinstance(item, torch.Tensor | tuple | list | Mapping) for item in first
        ):  # one item per sample (file names, ...): joined
            joined_items = [item for sequence in sequences for item in sequence]
            return tuple(joined_items) if isinstance(first, tuple) else joined_items
        joined = [concat([s[i] for s in sequences]) for i in range(len(first))]
        if isinstance(first, list):
            return joined
        if hasattr(first, "_fields"):  # a named tuple takes its fields as arguments
            make = cast("Callable[..., object]", type(first))
            return make(*joined)
        return tuple(joined)
    return list(items)
