"""The standard callbacks.

Defaults (every Learner has them): :class:`TrainEvalCallback`, :class:`Recorder`,
:class:`ProgressCallback`. From the source design: :class:`ModelResetter`,
:class:`RNNRegularizer`, :class:`TerminateOnNaNCallback`.
"""

from ._core import ProgressCallback, Recorder, TrainEvalCallback
from ._nan import TerminateOnNaNCallback
from ._rnn import ModelResetter, RNNRegularizer

__all__ = [
    "ModelResetter",
    "ProgressCallback",
    "RNNRegularizer",
    "Recorder",
    "TerminateOnNaNCallback",
    "TrainEvalCallback",
]
