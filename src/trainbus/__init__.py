"""trainbus: a typed event-bus microkernel for PyTorch training loops.

The :class:`Learner` loop owns the tensor math and publishes :class:`Event` s on an
:class:`EventBus`; everything else is a :class:`Callback`. Callbacks are ordered by
their declared dependencies, and cancel stages with typed signals.
"""

from ._bus import EventBus, Handler
from ._callback import Callback
from ._checkpoint import CheckpointError, read_checkpoint
from ._data import BatchSource, DataLoaders, TensorBatches
from ._distributed import Distributed, RankFailedError
from ._events import Event, Stage
from ._hooks import HookError, Subscriber
from ._inference import Preds
from ._learner import Learner
from ._metric import Metric
from ._ordering import CallbackOrderError
from ._signals import (
    CancelBatchException,
    CancelEpochException,
    CancelException,
    CancelFitException,
    CancelTrainException,
    CancelValidException,
    SignalUsageError,
)
from ._state import Extras, StateKey, TrainingState, UnsetFieldError

event = Event
"""Alias of :class:`Event`, so that ``event.<Tab>`` lists the events."""

__version__ = "0.1.0"

__all__ = [
    "BatchSource",
    "Callback",
    "CallbackOrderError",
    "CancelBatchException",
    "CancelEpochException",
    "CancelException",
    "CancelFitException",
    "CancelTrainException",
    "CancelValidException",
    "CheckpointError",
    "DataLoaders",
    "Distributed",
    "Event",
    "EventBus",
    "Extras",
    "Handler",
    "HookError",
    "Learner",
    "Metric",
    "Preds",
    "RankFailedError",
    "SignalUsageError",
    "Stage",
    "StateKey",
    "Subscriber",
    "TensorBatches",
    "TrainingState",
    "UnsetFieldError",
    "__version__",
    "event",
    "read_checkpoint",
]
