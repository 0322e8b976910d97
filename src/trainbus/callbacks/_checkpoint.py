"""Checkpoint: training checkpoints a killed fit resumes from, bit for bit."""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, ClassVar, Final

from typing_extensions import override

from .._callback import Callback
from .._checkpoint import CheckpointError, checkpoint_dict, packed_checkpoint, write_checkpoint
from .._checks import checked_int
from .._files import BackgroundWriter, atomic_write, is_temporary
from .._ranks import training_entries
from .._resume import Phase, training_state
from ._checkpoint_schedule import CheckpointSchedule, CheckpointStandIn

__all__ = ["Checkpoint"]

_LATEST: Final = "latest"
_STEMS: Final = ("step-", "epoch-", _LATEST)


class Checkpoint(CheckpointSchedule):
    """Writes training checkpoints to ``dir``; ``fit(..., resume="latest")`` goes on from the last.

    A checkpoint holds everything the rest of the fit depends on: the model, the
    optimizer, every callback's ``state_dict()``, the loop counters, the random states
    (Python, torch CPU and CUDA, NumPy) and the position in the data. A fit killed at any
    moment and resumed from its last checkpoint ends with the same weights, losses and
    values, bit for bit, as the fit run without interruption (same machine and data).

    Files: ``step-<train_iter>.pt`` after a training batch, ``epoch-<epoch>.pt`` after an
    epoch, ``epoch-<epoch>-valid-<n>.pt`` after ``n`` validation batches (on interrupt
    only), and ``latest``, a text file naming the newest. Each is written to a temporary
    file, fsynced and renamed, and ``latest`` is updated (the same way) after it, so a
    crash leaves the previous checkpoint and ``latest`` intact; then the oldest files
    beyond ``keep_last`` are removed. The state is copied at the batch boundary (one copy
    of it, packed into a few flat tensors) and saved by a background thread while training
    goes on; an epoch's checkpoints are on disk before the next epoch begins (a kill early
    in an epoch finds the last epoch's end saved), and the fit's before it returns.

    It runs last in every event (``order = 1000``), so it saves what the other callbacks
    did with the batch or epoch. A callback that stops the fit in ``after_epoch``
    (early stopping) runs before it: that epoch is not saved, and a resumed fit repeats it.

    On many processes it runs on rank 0 only (``rank_zero_only``), which alone writes;
    every other rank runs a stand-in in its place that, at each checkpoint, sends that
    rank's own training state (random states, gradients, callbacks' state, data
    position) to rank 0, and each rank resumes from its own. A signal is acted on at the
    next checkpoint every rank takes (``every_n_steps`` or the epoch's end), not at the
    next batch (see docs/distributed.md).

    Args:
        dir: Folder of the checkpoints (created if missing).
        every_n_steps: Also save after every this many training batches (``train_iter``).
        every_epoch: Save at the end of every epoch.
        keep_last: How many checkpoints of this fit to keep.
        save_on_interrupt: On SIGTERM or SIGINT (Ctrl-C) during the fit, save at the next
            batch boundary (on many processes: the next ``every_n_steps`` step or epoch
            end), then let the signal act as it would have (the previous handlers are
            restored; main thread only). A second signal acts at once.

    Attributes:
        written: File names of the checkpoints of this fit still kept, oldest first.
    """

    rank_zero_only: ClassVar[bool] = True  # the other ranks run its stand-in

    def __init__(
        self,
        dir: str | os.PathLike[str],
        *,
        every_n_steps: int | None = None,
        every_epoch: bool = True,
        keep_last: int = 3,
        save_on_interrupt: bool = False,
    ) -> None:
        super().__init__(
            every_n_steps=every_n_steps,
            every_epoch=every_epoch,
            save_on_interrupt=save_on_interrupt,
        )
        self.dir: Path = Path(dir)
        self.keep_last: int = checked_int("Checkpoint keep_last", keep_last)
        self.written: list[str] = []
        # What the last write removes, and what a killed process's last write had yet to.
        self._dropping: list[str] = []
        self._unremoved: list[str] = []
        self._writer = BackgroundWriter()

    @property
    def latest(self) -> Path | None:
        """The newest checkpoint in ``dir`` (named by its ``latest`` file), or ``None``.

        Raises:
            CheckpointError: The ``latest`` file does not name a checkpoint file.
        """
        pointer = self.dir / _LATEST
        try:
            name = pointer.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        if not name or name != Path(name).name or name.startswith("."):
            raise CheckpointError(f"{pointer} does not name a checkpoint file: {name!r}")
        return self.dir / name

    @override
    def begin_fit(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        for path in self.dir.iterdir():  # left by a process killed while writing
            if any(is_temporary(path, stem) for stem in _STEMS):
                path.unlink(missing_ok=True)
        self.written = []
        self._dropping = []
        self._unremoved = []
        super().begin_fit()

    @override
    def begin_epoch(self) -> None:
        self._writer.wait()  # the last epoch's checkpoints are on disk before this one starts

    @override
    def teardown(self) -> None:
        super().teardown()
        self._writer.close()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"written": list(self.written), "dropping": list(self._dropping)}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.written = [str(name) for name in state["written"]]
        # A process killed after writing this file and `latest` but before removing the
        # files it replaced left them: the resumed fit's first write removes them.
        self._unremoved = [str(name) for name in state.get("dropping", ())]

    @override
    def _stand_in(self) -> Callback:
        return CheckpointStandIn(
            every_n_steps=self.every_n_steps,
            every_epoch=self.every_epoch,
            save_on_interrupt=self.save_on_interrupt,
        )

    def _file_name(self, phase: Phase) -> str:
        values = self._fields
        if phase == "train":
            return f"step-{values['train_iter']:08d}.pt"
        if phase == "valid":
            return f"epoch-{values['epoch']:04d}-valid-{values['iter'] + 1:06d}.pt"
        return f"epoch-{values['epoch']:04d}.pt"

    @override
    def _save(self, phase: Phase) -> None:
        """Copy the state now (packed: one copy of it); save it on the writer thread meanwhile."""
        self._writer.wait()  # one write at a time; a failed one is raised here
        name = self._file_name(phase)
        previous = self.written
        kept = [*(n for n in previous if n != name), name][-self.keep_last :]
        dropped = [n for n in (*self._unremoved, *previous) if n not in kept]
        # The file records the list it belongs to and the files its write removes.
        self.written, self._dropping = kept, dropped
        try:
            # Every rank's: the other ranks' stand-ins send theirs now.
            entries = training_entries(self.learn, training_state(self.learn, phase))
            ckpt = {**checkpoint_dict(self.learn, with_opt=True), **entries}
            state = packed_checkpoint(ckpt)
        except BaseException:
            self.written = previous
            raise
        self._unremoved = []
        self._writer.submit(functools.partial(self._write, state, name, dropped))

    def _write(self, state: dict[str, Any], name: str, dropped: list[str]) -> None:
        """The file, then ``latest`` naming it, then the files beyond ``keep_last`` removed."""
        write_checkpoint(state, self.dir / name)
        atomic_write(self.dir / _LATEST, lambda file: file.write(name.encode()))
        for old in dropped:
            (self.dir / old).unlink(missing_ok=True)

    @override
    def _flush(self) -> None:
        self._writer.wait()
