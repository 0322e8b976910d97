"""When a training checkpoint is taken, and what a signal does meanwhile.

Shared by :class:`~trainbus.callbacks.Checkpoint`, which writes the files (on rank 0 of
many processes), and by its stand-in, which ranks other than 0 run in its place: at the
same points, it sends its rank's training state to rank 0 (a collective, so every rank
must take part at each checkpoint, and none may take one the others skip).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any, ClassVar, Final

from typing_extensions import override

from .._callback import Callback
from .._checks import checked_int
from .._distributed import announce_failure, any_rank
from .._hooks import SubscriberClasses
from .._ranks import send_training_state
from .._resume import PHASE_START, Phase, phase_start, training_state
from ._core import Recorder, TrainEvalCallback

__all__ = ["CheckpointSchedule", "CheckpointStandIn"]

_SIGNALS: Final = (signal.SIGTERM, signal.SIGINT)

_SignalHandler = Any  # what signal.getsignal returns: a callable, SIG_DFL, SIG_IGN or None


class CheckpointSchedule(Callback):
    """Takes a checkpoint after every ``every_n_steps`` training batches and at every
    epoch's end (``every_epoch``); subclasses say what taking one is (:meth:`_save`).

    With ``save_on_interrupt``, a SIGTERM or SIGINT is held until the next checkpoint
    (on one process: the next batch boundary; on many: the next one every rank takes,
    with one all-reduce of the ranks' flags at an epoch's end when ``every_epoch`` is
    off), then given to the handlers it would have reached. It publishes
    :data:`~trainbus._resume.PHASE_START` at the start of every phase in which it may
    take a checkpoint (a mid-phase checkpoint records it; taking it costs a tenth of a
    millisecond or more, so phases without a checkpoint skip it).

    Runs last in every event (``order = 1000``), after the Recorder.
    """

    run_after: ClassVar[SubscriberClasses] = (TrainEvalCallback, Recorder)
    order: ClassVar[int] = 1000
    run_in_auxiliary: ClassVar[bool] = False

    def __init__(
        self, *, every_n_steps: int | None, every_epoch: bool, save_on_interrupt: bool
    ) -> None:
        self.every_n_steps: int | None = (
            None
            if every_n_steps is None
            else checked_int("Checkpoint every_n_steps", every_n_steps)
        )
        self.every_epoch = every_epoch
        self.save_on_interrupt = save_on_interrupt
        self._fields: dict[str, Any] = {}
        self._signal: int | None = None
        self._many = False  # whether the fit runs on many processes
        self._previous: dict[int, _SignalHandler] = {}

    @override
    def begin_fit(self) -> None:
        self._many = self.learn.distributed.active
        self._signal = None
        self._fields = self.learn.state.trusted_values
        if self.save_on_interrupt:
            self._install()

    @override
    def begin_train(self) -> None:
        every, values = self.every_n_steps, self._fields
        done, last = values["train_iter"], values["train_iter"] + values["n_iter"]
        self._publish_phase_start(every is not None and last // every > done // every)

    @override
    def begin_validate(self) -> None:
        self._publish_phase_start(False)

    def _publish_phase_start(self, saves_in_phase: bool) -> None:
        """Publish the phase's start when a checkpoint may be taken inside the phase (a
        step falls in it, or a signal may come); else drop the last phase's, so that a
        checkpoint taken anyway fails rather than records the wrong phase's start."""
        extras = self.learn.state.extras
        if saves_in_phase or self.save_on_interrupt:
            extras[PHASE_START] = phase_start(self.learn.state.dl)
        elif PHASE_START in extras:
            del extras[PHASE_START]

    @override
    def after_batch(self) -> None:
        values = self._fields
        if self._signal is not None and not self._many:
            self._save("train" if values["training"] else "valid")
            self._redeliver(resume_watching=True)
            return
        every = self.every_n_steps
        if every is not None and values["training"] and values["train_iter"] % every == 0:
            self._save("train")  # on every rank at once: a signal waits for such a boundary
            if self._signal is not None:
                self._redeliver(resume_watching=True)

    @override
    def after_epoch(self) -> None:
        interrupted = self._signal is not None
        save = self.every_epoch or interrupted
        if self._many and self.save_on_interrupt and not self.every_epoch:
            save = any_rank(interrupted)  # one all-reduce an epoch: all ranks save, or none
        if save:
            self._save("end")
        if interrupted:
            self._redeliver(resume_watching=True)

    @override
    def after_fit(self) -> None:
        self._flush()  # the fit ends with its checkpoints on disk (or their error)
        if self._signal is not None:  # came after the last boundary: nothing left to save
            self._redeliver(resume_watching=False)

    @override
    def teardown(self) -> None:
        self._uninstall()

    def _save(self, phase: Phase) -> None:
        """Take a checkpoint now (at the end of a batch of ``phase``, or of the epoch)."""
        raise NotImplementedError

    def _flush(self) -> None:
        """Wait until the checkpoints taken are on disk (nothing to wait for here)."""

    # ------------------------------------------------------------- interrupts

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread() or self._previous:
            return
        for signum in _SIGNALS:
            current = signal.getsignal(signum)
            if current is None:  # installed outside Python: it could not be put back
                continue
            self._previous[signum] = current
            signal.signal(signum, self._on_signal)

    def _uninstall(self) -> None:
        previous, self._previous = self._previous, {}
        for signum, handler in previous.items():
            signal.signal(signum, handler)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        if self._signal is None:
            self._signal = signum  # acted on at the next checkpoint's boundary
            return
        self._signal = None  # a second one: as if this callback were not there
        self._uninstall()
        signal.raise_signal(signum)

    def _redeliver(self, *, resume_watching: bool) -> None:
        """Give the pending signal to the handlers it would have reached without this callback."""
        signum, self._signal = self._signal, None
        if signum is None:
            return
        self._uninstall()
        self._flush()  # the checkpoint is on disk before the signal acts
        if self._many and signal.getsignal(signum) is signal.SIG_DFL:  # the process ends now
            announce_failure(f"ended by {signal.Signals(signum).name} after its checkpoint")
        signal.raise_signal(signum)  # ends the fit, unless the handler returns (SIG_IGN, ...)
        if resume_watching:
            self._install()


class CheckpointStandIn(CheckpointSchedule):
    """What ranks other than 0 run in the place of a ``Checkpoint`` (rank-zero-only):
    at each of its checkpoints, this rank's training state goes to rank 0, which writes
    it into the file with its own; a signal is held and acted on as there."""

    @override
    def _save(self, phase: Phase) -> None:
        send_training_state(self.learn, training_state(self.learn, phase))
