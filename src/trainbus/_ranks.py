"""The per-rank entries of a training checkpoint written on many processes.

Random states, gradients under accumulation, callbacks' state and the data position
differ from rank to rank, so a checkpoint keeps every rank's own entry (each as
:func:`~trainbus._resume.training_state` makes it)::

    {"train": rank 0's entry, "world_size": 2, "ranks": [rank 0's, rank 1's]}

(``ranks[0]`` is ``train``, stored once). Rank 0 gathers them and writes the file; each
rank resumes from its own. A single process's checkpoint has ``"train"`` only.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from ._checkpoint import CheckpointError, cpu_copy
from ._distributed import gathered

if TYPE_CHECKING:
    from ._learner import Learner

__all__ = ["processes", "rank_entry", "send_training_state", "training_entries"]


def training_entries(learn: Learner, own: dict[str, Any]) -> dict[str, Any]:
    """The training entries of a checkpoint rank 0 writes now, given its ``own`` entry
    (of :func:`~trainbus._resume.training_state`).

    On one process ``{"train": own}``. On many, rank 0's side of a collective whose other
    ranks call :func:`send_training_state` at the same boundary: ``{"train": own,
    "world_size": n, "ranks": every rank's entry}``.

    Raises:
        RuntimeError: Called on a rank other than 0.
    """
    if not learn.distributed.active:
        return {"train": own}
    entries = gathered(own)
    if entries is None:
        raise RuntimeError("training_entries is rank 0's; other ranks send_training_state")
    return {"train": own, "world_size": len(entries), "ranks": entries}


def send_training_state(learn: Learner, own: dict[str, Any]) -> None:
    """Send this rank's ``own`` entry to rank 0, which calls :func:`training_entries` at
    the same boundary (a collective). A copy on the CPU travels, pickled."""
    gathered(cpu_copy(own))


def processes(n: int) -> str:
    """``"1 process"``, ``"2 processes"``."""
    return f"{n} process" if n == 1 else f"{n} processes"


def rank_entry(path: Path, ckpt: dict[str, Any], learn: Learner) -> dict[str, Any]:
    """The entry this rank resumes from: its own; with another number of processes, only
    from an epoch's end (then its own if the file has it, rank 0's otherwise).

    Raises:
        CheckpointError: The file's ranks are malformed, or it was written inside an
            epoch by another number of processes.
    """
    train: dict[str, Any] = ckpt["train"]
    saved: object = ckpt.get("world_size", 1)
    ranks: object = ckpt.get("ranks", [train])
    if (
        isinstance(saved, bool)
        or not isinstance(saved, int)
        or not isinstance(ranks, list)
        or len(cast("list[object]", ranks)) != saved
        or not all(isinstance(entry, dict) for entry in cast("list[object]", ranks))
    ):
        raise CheckpointError(f"{path} has malformed per-rank entries (world size {saved!r})")
    entries = cast("list[dict[str, Any]]", ranks)
    size, rank = learn.world_size, learn.rank
    if saved != size and train["loop"]["phase"] != "end":
        raise CheckpointError(
            f"{path} was written inside an epoch by a fit on {processes(saved)}; this fit "
            f"runs on {size}: a mid-epoch checkpoint resumes only on as many processes "
            "(resume from an epoch's checkpoint, epoch-<n>.pt, to change their number)"
        )
    return entries[rank] if rank < saved else train
