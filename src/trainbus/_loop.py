"""The loop's mechanics: epochs, phases, batches and the two batch bodies.

:class:`~trainbus.Learner` inherits them from :class:`LearnerLoop` and keeps the public
API (callbacks, fit, evaluation, checkpoints). This is the hot path: every line of a
batch body is paid once per step (docs/performance.md).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any, Final

import torch
from torch import Tensor, nn

from ._devices import batch_mover
from ._events import Event, Stage
from ._metric import not_a_tensor
from ._origins import note_loop_failure
from ._views import StateWriter

if TYPE_CHECKING:
    from ._bus import EventBus
    from ._learner import Learner
    from ._resume import ResumePlan
    from ._state import TrainingState

__all__ = ["LearnerLoop"]


# Read for every batch: a module constant costs a fraction of an Enum attribute read.
_AFTER_PRED: Final = Event.after_pred
_AFTER_LOSS: Final = Event.after_loss
_AFTER_BACKWARD: Final = Event.after_backward
_AFTER_STEP: Final = Event.after_step
_BATCH: Final = Stage.batch

BODY_EVENTS: Final = (_AFTER_PRED, _AFTER_LOSS, _AFTER_BACKWARD, _AFTER_STEP)
"""The events of a batch body, in the order of ``LearnerLoop._heard``."""


def _accumulator_anchors(opt: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Views of ``opt``'s trainable parameters that keep their gradient accumulators alive.

    Autograd keeps a parameter's accumulator node only while a graph references it. The
    loop drops each batch's loss before the next forward pass (a plain loop that rebinds
    ``loss`` after it keeps the previous graph alive instead), so without another
    reference every batch would build and free one node per parameter. A view's autograd
    node references the accumulator from C++; the node itself is never handed to Python,
    which would make every later lookup of it take the GIL. The fit holds these for its
    duration (after begin_fit, which may replace the optimizer); they share the
    parameters' storage and hold no batch tensor.
    """
    anchors: list[torch.Tensor] = []
    with torch.enable_grad():
        for group in opt.param_groups:
            for param in group["params"]:
                if isinstance(param, torch.Tensor) and param.requires_grad and param.is_leaf:
                    anchors.append(param.view_as(param))
    return anchors


class LearnerLoop(StateWriter):
    """The loop of :class:`~trainbus.Learner`: what it owns, and its epochs and batches."""

    __slots__ = ("_device", "_forward", "_heard", "_resume", "bus", "n_inp", "state")

    def __init__(
        self, state: TrainingState, bus: EventBus, *, n_inp: int, device: torch.device
    ) -> None:
        self.state: Final = state
        self.bus: Final = bus
        self.n_inp: Final = n_inp
        self._device: Final = device
        # The module of the training forward pass, when not the model (DDP's wrapper).
        self._forward: Final[list[nn.Module]] = []
        self._resume: ResumePlan | None = None
        # The handlers of the batch body's events, kept current by the bus: an event
        # nobody hears is not emitted (a truth test instead of a call).
        self._heard: Final = tuple(bus.live_handlers(event) for event in BODY_EVENTS)

    def _learner(self) -> Learner:
        """This loop as the Learner it is a part of (for a resumed fit's plan)."""
        raise NotImplementedError

    # The loop. No local variable of its frames holds a batch tensor while the batch runs
    # (the batch lives in the state, which fit empties however it ends), so a traceback
    # keeps none alive. Per batch it reads and writes the state's field dict (unvalidated,
    # like set_trusted): a fraction of the cost of attribute access on the pydantic model.

    def _all_epochs(self) -> None:
        state, run, one_epoch = self.state, self.bus.run, self._one_epoch
        anchors = _accumulator_anchors(state.opt)  # held for the fit: see there
        resume = self._resume
        for epoch in range(
            0 if resume is None else resume.first_epoch(self._learner()), state.n_epoch
        ):
            state.set_trusted("epoch", epoch)
            run(Stage.epoch, one_epoch)
        anchors.clear()

    def _one_epoch(self) -> None:
        dls = self.state.dls
        if self._resume is None or not self._resume.skips_train():
            self._phase(dls.train, Stage.train, self._train_batch)
        with torch.no_grad():
            self._phase(dls.valid, Stage.validate, self._valid_batch)

    def _phase(self, dl: Any, stage: Stage, one_batch: Callable[[], None]) -> None:
        state = self.state
        state.set_trusted("dl", dl)
        state.set_trusted("n_iter", len(dl))
        state.set_trusted("iter", 0)
        try:
            self.bus.run(stage, functools.partial(self._all_batches, one_batch))
        except Exception as error:  # not noted by a callback or the body: from the data
            values = state.trusted_values
            note_loop_failure(error, values, training=stage is Stage.train, from_data=True)
            raise

    def _all_batches(self, one_batch: Callable[[], None]) -> None:
        # One run_each over a generator rather than one run per batch: 2 400 instructions
        # a step less (docs/performance.md).
        batches = self._batches()
        try:
            self.bus.run_each(_BATCH, batches, one_batch)
        except Exception as error:
            # A generator that raised has finished: then it is the data's error (noted in
            # _phase), else the batch body's.
            if inspect.getgeneratorstate(batches) != inspect.GEN_CLOSED:
                values, training = self.state.trusted_values, one_batch == self._train_batch
                note_loop_failure(error, values, training=training, from_data=False)
            raise
        finally:
            batches.close()
        self.state.drop_batch()  # no batch is in flight in after_train / after_validate

    def _batches(self) -> Generator[None, None, None]:
        """Put each batch of the phase's loader into the state, on the device, then yield."""
        values, n_inp = self.state.trusted_values, self.n_inp
        move = batch_mover(self._device, values["dl"])
        # On the CPU a pair of plain CPU tensors is taken as it is, without two calls of
        # move: 1 600 instructions a step (docs/performance.md).
        on_cpu = self._device.type == "cpu"
        batch: Sequence[object]  # what a BatchSource yields; untyped sources may yield anything
        batches, first = values["dl"], 0
        if self._resume is not None:  # the first phase of a resumed fit goes on after its batch
            batches, first = self._resume.open(self._learner(), batches)
        for i, batch in enumerate(batches, first):
            match batch:
                case (x, y) if n_inp == 1:  # (input, target), split without slicing
                    if not (
                        on_cpu and type(x) is Tensor and type(y) is Tensor and x.is_cpu and y.is_cpu
                    ):
                        x, y = move(x), move(y)
                    values["xb"], values["yb"] = (x,), (y,)
                    del x, y
                case [*_]:
                    values["xb"] = tuple(map(move, batch[:n_inp]))
                    values["yb"] = tuple(map(move, batch[n_inp:]))
                case _:
                    raise TypeError(
                        "each batch must be a sequence such as a tuple or list "
                        f"(inputs..., targets...), got {type(batch).__qualname__}"
                    )
            del batch
            values["iter"] = i
            values.pop("pred", None)  # the previous batch's are not this one's
            values.pop("loss", None)
            yield

    # The two batch bodies are written out rather than sharing the forward pass through
    # a call. After an event is heard they read its fields again: a callback may have
    # replaced them (``self.learn.loss = ...``).

    def _train_batch(self) -> None:
        values, emit, forward = self.state.trusted_values, self.bus.emit, self._forward
        pred_heard, loss_heard, backward_heard, step_heard = self._heard
        # Through forward[0] when it holds a module (DistributedDataParallel).
        values["pred"] = (forward[0] if forward else values["model"])(*values["xb"])
        if pred_heard:
            emit(_AFTER_PRED)
        values["loss"] = values["loss_func"](values["pred"], *values["yb"])
        if loss_heard:
            emit(_AFTER_LOSS)
        try:
            values["loss"].backward()
        except AttributeError:
            if isinstance(values["loss"], torch.Tensor):
                raise
            raise not_a_tensor("loss", values["loss"]) from None
        if backward_heard:
            emit(_AFTER_BACKWARD)
        values["opt"].step()
        if step_heard:
            emit(_AFTER_STEP)
        values["opt"].zero_grad()

    def _valid_batch(self) -> None:
        values, emit = self.state.trusted_values, self.bus.emit
        pred_heard, loss_heard, _, _ = self._heard
        values["pred"] = values["model"](*values["xb"])
        if pred_heard:
            emit(_AFTER_PRED)
        values["loss"] = values["loss_func"](values["pred"], *values["yb"])
        if loss_heard:
            emit(_AFTER_LOSS)
