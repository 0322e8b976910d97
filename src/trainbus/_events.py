"""The events a training loop publishes, and the stages that group them."""

from __future__ import annotations

import enum
from typing import ClassVar, Final, final

__all__ = ["Event", "Stage"]


class Event(enum.StrEnum):
    """Every point of a fit at which subscribers run.

    ``Learner.fit(n_epoch)`` publishes them in this order (``stage X`` reads
    ``try: begin_X; body  except CancelXException: after_cancel_X`` then ``after_X``)::

        begin_fit
        for epoch in range(n_epoch):
            begin_epoch
            begin_train                          # TrainEvalCallback: model.train()
            for xb, yb in dls.train:
                begin_batch                      # change the batch, schedule hyper-parameters
                pred = model(*xb);        after_pred
                loss = loss_func(pred, *yb); after_loss
                loss.backward();          after_backward
                opt.step();               after_step
                opt.zero_grad()
                after_batch                      # (after_cancel_batch first if cancelled)
            after_train                          # (after_cancel_train first if cancelled)
            with torch.no_grad():
                begin_validate                   # TrainEvalCallback: model.eval()
                for xb, yb in dls.valid:
                    begin_batch
                    pred = model(*xb);        after_pred
                    loss = loss_func(pred, *yb); after_loss
                    after_batch
                after_validate                   # (after_cancel_valid first if cancelled)
            after_epoch                          # (after_cancel_epoch first if cancelled)
        after_fit                                # (after_cancel_fit first if cancelled)

    Members are strings, so ``Event.after_loss == "after_loss"``; each one names the hook
    method of :class:`~trainbus.Callback` that runs at that point.
    """

    begin_fit = "begin_fit"
    begin_epoch = "begin_epoch"
    begin_train = "begin_train"
    begin_batch = "begin_batch"
    after_pred = "after_pred"
    after_loss = "after_loss"
    after_backward = "after_backward"
    after_step = "after_step"
    after_batch = "after_batch"
    after_train = "after_train"
    begin_validate = "begin_validate"
    after_validate = "after_validate"
    after_epoch = "after_epoch"
    after_fit = "after_fit"
    after_cancel_batch = "after_cancel_batch"
    after_cancel_train = "after_cancel_train"
    after_cancel_valid = "after_cancel_valid"
    after_cancel_epoch = "after_cancel_epoch"
    after_cancel_fit = "after_cancel_fit"


@final
class Stage:
    """A cancellable span of a run: a ``begin`` event, a body, then an ``after`` event.

    There are five, as class attributes: ``Stage.fit``, ``Stage.epoch``, ``Stage.train``,
    ``Stage.validate`` and ``Stage.batch``. :meth:`EventBus.run <trainbus.EventBus.run>`
    publishes ``begin`` before the body it is handed, ``after_cancel`` when the stage's
    own signal ended it early, and ``after`` in both cases.
    """

    # A slotted class, not an Enum: the bus reads these events for every batch, and
    # slot access is several times cheaper than Enum's ``value`` property.
    __slots__ = ("after", "after_cancel", "begin", "name")

    fit: ClassVar[Stage]
    epoch: ClassVar[Stage]
    train: ClassVar[Stage]
    validate: ClassVar[Stage]
    batch: ClassVar[Stage]

    def __init__(self, name: str, begin: Event, after_cancel: Event, after: Event) -> None:
        self.name: Final = name
        self.begin: Final = begin
        self.after_cancel: Final = after_cancel
        self.after: Final = after

    def __repr__(self) -> str:
        return f"Stage.{self.name}"

    @staticmethod
    def all() -> tuple[Stage, ...]:
        """The five stages, outermost first."""
        return (Stage.fit, Stage.epoch, Stage.train, Stage.validate, Stage.batch)


Stage.fit = Stage("fit", Event.begin_fit, Event.after_cancel_fit, Event.after_fit)
Stage.epoch = Stage("epoch", Event.begin_epoch, Event.after_cancel_epoch, Event.after_epoch)
Stage.train = Stage("train", Event.begin_train, Event.after_cancel_train, Event.after_train)
Stage.validate = Stage(
    "validate", Event.begin_validate, Event.after_cancel_valid, Event.after_validate
)
Stage.batch = Stage("batch", Event.begin_batch, Event.after_cancel_batch, Event.after_batch)
