"""The standard callbacks.

Defaults (every Learner has them): :class:`TrainEvalCallback`, :class:`Recorder`,
:class:`ProgressCallback`. From the source design: :class:`ModelResetter`,
:class:`RNNRegularizer`, :class:`TerminateOnNaNCallback`. Loggers follow :class:`Logger`:
:class:`CSVLogger`, :class:`TensorBoardLogger`, :class:`MLflowLogger`.
"""

from ._checkpoint import Checkpoint
from ._core import Recorder, RecorderSnapshot, TrainEvalCallback
from ._csv import CSVLogger
from ._gradients import GradientAccumulation, GradientClip
from ._logger import HParam, Logger
from ._lr_finder import LRFinder, LRFinderResult
from ._mixup import MixUp
from ._mlflow import MLflowLogger
from ._nan import TerminateOnNaNCallback
from ._plots import plot_schedule
from ._precision import MixedPrecision
from ._progress import ProgressCallback
from ._rnn import ModelResetter, RNNRegularizer
from ._schedule import (
    ParamScheduler,
    SchedConst,
    SchedCos,
    SchedExp,
    SchedLin,
    SchedNo,
    Schedule,
    combine_schedules,
    one_cycle_schedules,
)
from ._tensorboard import TensorBoardLogger
from ._tracker import (
    EarlyStoppingCallback,
    ReduceLROnPlateau,
    SaveModelCallback,
    TrackerCallback,
)

__all__ = [
    "CSVLogger",
    "Checkpoint",
    "EarlyStoppingCallback",
    "GradientAccumulation",
    "GradientClip",
    "HParam",
    "LRFinder",
    "LRFinderResult",
    "Logger",
    "MLflowLogger",
    "MixUp",
    "MixedPrecision",
    "ModelResetter",
    "ParamScheduler",
    "ProgressCallback",
    "RNNRegularizer",
    "Recorder",
    "RecorderSnapshot",
    "ReduceLROnPlateau",
    "SaveModelCallback",
    "SchedConst",
    "SchedCos",
    "SchedExp",
    "SchedLin",
    "SchedNo",
    "Schedule",
    "TensorBoardLogger",
    "TerminateOnNaNCallback",
    "TrackerCallback",
    "TrainEvalCallback",
    "combine_schedules",
    "one_cycle_schedules",
    "plot_schedule",
]
