"""One rank of the distributed tests: ``python tests/ddp_worker.py SCENARIO OUT_DIR``.

Started twice by ``tests/test_distributed.py`` with torchrun's environment variables
(``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``); each rank writes what it saw
to ``OUT_DIR/rank<R>.pt``. Not collected by pytest (no ``test_`` prefix).
"""

from __future__ import annotations

import functools
import math
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

from resume_driver import Killer, results
from trainbus import Callback, DataLoaders, Learner
from trainbus.callbacks import (
    Checkpoint,
    CSVLogger,
    EarlyStoppingCallback,
    GradientAccumulation,
    GradientClip,
    MixedPrecision,
    MixUp,
    ProgressCallback,
    SaveModelCallback,
    TerminateOnNaNCallback,
)
from trainbus.metrics import accuracy

N_TRAIN: Final = 96
N_VALID: Final = 37  # odd: the validation shards differ in size


def data(seed: int = 0) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, ...]]:
    """Train and validation ``(x (n, 4), y (n,))`` with 3 classes, from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(N_TRAIN + N_VALID, 4, generator=generator)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])


def model(seed: int = 0, *, dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(seed)  # pyright: ignore[reportUnknownMemberType]
    if dropout:
        return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Dropout(dropout), nn.Linear(8, 3))
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3))


def learner(
    bs: int,
    *,
    lr: float = 0.5,
    cbs: list[Callback] | None = None,
    dropout: float = 0.0,
    valid_bs: int = 8,
    torch_loaders: bool = False,
) -> Learner:
    """The tests' learner: ``bs`` samples per batch (per rank), validation batches of 8;
    shuffled ``from_tensors`` data, or torch ``DataLoader`` s with ``torch_loaders``."""
    train, valid = data()
    dls = DataLoaders.from_tensors(train, valid, bs=bs, valid_bs=valid_bs, shuffle=True, seed=0)
    if torch_loaders:
        dls = DataLoaders(
            DataLoader(TensorDataset(*train), batch_size=bs, shuffle=True),
            DataLoader(TensorDataset(*valid), batch_size=valid_bs),
        )
    loss = nn.functional.cross_entropy
    return Learner(model(dropout=dropout), dls, loss, lr=lr, cbs=cbs, metrics=[accuracy])


def weights(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class RaiseAt(Callback):
    """Raises ``RuntimeError("boom")`` on ``rank`` at training batch ``iter`` of epoch 0."""

    def __init__(self, rank: int, at: int) -> None:
        self.rank, self.at = rank, at

    @override
    def begin_batch(self) -> None:
        mine = self.learn.rank == self.rank and self.training
        if mine and self.epoch == 0 and self.iter == self.at:
            raise RuntimeError("boom")


def train(out: Path, rank: int) -> dict[str, Any]:
    """A user-initialised group: 2 ranks x 16 per batch, loggers, early stopping, a loader."""
    dist.init_process_group("gloo")
    csv = CSVLogger(out / f"history{rank}.csv")
    learn = learner(16, cbs=[csv, ProgressCallback(table=True)])
    result: dict[str, Any] = {
        "rank": learn.rank,
        "world_size": learn.world_size,
        "owns_group": learn.distributed.owns_group,
        "n_train_batches": len(learn.dls.train),
        "n_valid_batches": len(learn.dls.valid),
        "model_is_users": isinstance(learn.model, nn.Sequential),
    }
    learn.fit(3)
    result["weights"] = weights(learn.model)
    result["values"] = learn.recorder.values
    result["validate"] = learn.validate()
    result["cbs"] = [type(cb).__name__ for cb in learn.cbs]

    stopper = EarlyStoppingCallback("valid_loss", patience=1, min_delta=0.05)
    saver = SaveModelCallback("valid_loss", path=out / f"models{rank}")
    stopping = learner(16, lr=0.5)
    stopping.fit(12, cbs=[saver, stopper])
    result["stopped_epoch"] = stopper.stopped_epoch
    result["stop_values"] = stopping.recorder.values

    # Gradient accumulation: 4 batches of 8 per step on each rank; count the all-reduces.
    accumulating = learner(8, lr=0.5)
    calls = [0]

    def counting_hook(state: Any, bucket: Any) -> torch.futures.Future[torch.Tensor]:
        calls[0] += 1
        return allreduce_hook(state, bucket)

    # DDP checks these annotations as objects (this module's annotations are strings).
    bucket_type = "GradBucket"  # not in torch.distributed's declared exports
    counting_hook.__annotations__.update(
        bucket=getattr(dist, bucket_type), **{"return": torch.futures.Future[torch.Tensor]}
    )

    ddp = accumulating.distributed.wrap(accumulating.model)
    ddp.register_comm_hook(None, counting_hook)  # pyright: ignore[reportUnknownMemberType]
    accumulating.fit(2, cbs=[GradientAccumulation(n_acc=32)])
    result["acc_weights"] = weights(accumulating.model)
    result["acc_allreduces"] = calls[0]

    # Clipping clips the averaged gradient; mixed precision runs under DDP.
    clipped = learner(16, cbs=[GradientClip(max_norm=0.05)])
    clipped.fit(1)
    result["clip_weights"] = weights(clipped.model)
    mixed = learner(16, cbs=[MixedPrecision(torch.bfloat16)])
    mixed.fit(1)
    result["amp_weights"] = weights(mixed.model)
    result["amp_values"] = mixed.recorder.values

    # A NaN loss on rank 1 only: both ranks stop after the same batch (no hang).
    nan_learn = learner(16, cbs=[TerminateOnNaNCallback(), NanLossAt(rank=1, at=1)])
    nan_learn.fit(2)
    result["nan_stopped_at"] = (nan_learn.epoch, nan_learn.iter, nan_learn.train_iter)

    # A torch DataLoader: re-made on a DistributedSampler (train), an unpadded shard (valid).
    (xt, yt), (xv, yv) = data()
    train_dl = DataLoader(TensorDataset(xt, yt), batch_size=16, shuffle=True)
    valid_dl = DataLoader(TensorDataset(xv, yv), batch_size=8)
    loading = Learner(model(), DataLoaders(train_dl, valid_dl), nn.functional.cross_entropy)
    train_loader: Any = loading.dls.train
    valid_loader: Any = loading.dls.valid
    result["loader_sampler"] = type(train_loader.sampler).__name__
    result["valid_indices"] = [int(i) for i in valid_loader.sampler]
    result["loader_batch_size"] = int(train_loader.batch_size)
    loading.fit(2)
    result["loader_weights"] = weights(loading.model)
    result["loader_values"] = loading.recorder.values
    dist.destroy_process_group()
    return result


def fail(out: Path, rank: int) -> dict[str, Any]:
    """The Learner initialises the group from the environment; rank 1 raises at batch 3."""
    learn = learner(8, cbs=[RaiseAt(rank=1, at=3)])
    result: dict[str, Any] = {"owns_group": learn.distributed.owns_group}
    try:
        learn.fit(2)
    except Exception as error:
        result["error"] = type(error).__name__
        result["message"] = str(error)
        result["notes"] = list(getattr(error, "__notes__", []))
        result["failed_rank"] = getattr(error, "rank", None)
    result["group_left"] = dist.is_initialized()
    return result


class NanLossAt(Callback):
    """Makes the loss NaN on ``rank`` at training batch ``at`` of epoch 0."""

    def __init__(self, rank: int, at: int) -> None:
        self.rank, self.at = rank, at

    @override
    def after_loss(self) -> None:
        mine = self.learn.rank == self.rank and self.training
        if mine and self.epoch == 0 and self.iter == self.at:
            self.learn.loss = self.loss * math.nan


class KillAt(Callback):
    """Kills this process (SIGKILL: no clean-up) at training batch ``at`` of ``epoch``."""

    def __init__(self, epoch: int, at: int) -> None:
        self.at_epoch, self.at = epoch, at

    @override
    def begin_batch(self) -> None:
        if self.training and self.epoch == self.at_epoch and self.iter == self.at:
            os.kill(os.getpid(), signal.SIGKILL)


def resume(out: Path, rank: int) -> dict[str, Any]:
    """Phase ``full``, ``kill`` (at epoch 1, batch 2) or ``resume`` of a 3-epoch fit."""
    phase = os.environ["PHASE"]
    folder = out / ("full" if phase == "full" else "ckpt")
    cbs: list[Callback] = [Checkpoint(folder, every_epoch=True)]
    if phase == "kill":
        cbs.append(KillAt(epoch=1, at=2))
    learn = learner(16, cbs=cbs)
    learn.fit(3, resume="latest" if phase == "resume" else None)
    return {"weights": weights(learn.model), "values": learn.recorder.values}


EXACT_EVERY: Final = 4  # Checkpoint(every_n_steps=...) of the exact scenario
EXACT_KILL: Final = 10  # its kill: two batches after step 8's checkpoint, inside epoch 1
EXACT_N_ACC: Final = 24  # 3 batches of 8 a step: step 8's checkpoint is inside a step


def exact_learner(
    bs: int, n_acc: int = EXACT_N_ACC, valid_bs: int = 8, *, torch_loaders: bool = False
) -> Learner:
    """The exact scenario's learner: dropout, gradient accumulation, MixUp (no Checkpoint)."""
    cbs: list[Callback] = [GradientAccumulation(n_acc=n_acc), MixUp(0.4)]
    return learner(bs, lr=0.1, dropout=0.3, cbs=cbs, valid_bs=valid_bs, torch_loaders=torch_loaders)


def exact_fit(
    learn: Learner,
    folder: Path,
    *,
    rank: int,
    extra: list[Callback] | None = None,
    resume: Path | str | None = None,
    checkpoint: Checkpoint | None = None,
) -> None:
    """Seed this rank's random numbers (each its own), then a 3-epoch one-cycle fit with
    ``checkpoint`` (by default ``Checkpoint(folder, every_n_steps=4)``)."""
    torch.manual_seed(100 + rank)  # pyright: ignore[reportUnknownMemberType]
    if checkpoint is None:
        checkpoint = Checkpoint(folder, every_n_steps=EXACT_EVERY)
    learn.fit_one_cycle(3, lr_max=0.1, cbs=[checkpoint, *(extra or [])], resume=resume)


class KillAfterWrite(Killer):
    """Kills after training batch ``step`` on every rank; rank 0 first waits until ``latest``
    names ``expected`` (written by the writer thread), so the resume point is known."""

    def __init__(self, folder: Path, step: int, ckpt: Path, expected: str) -> None:
        super().__init__(folder, [step], [])
        self.latest, self.expected = ckpt / "latest", expected

    @override
    def _kill_once(self, tag: str) -> None:
        deadline = time.monotonic() + 60
        while self.learn.rank == 0 and time.monotonic() < deadline:
            if self.latest.is_file() and self.latest.read_text() == self.expected:
                break
            time.sleep(0.01)
        super()._kill_once(tag)


class Subscribed(Callback):
    """Records, when the fit starts, the classes of the bus's subscribers, in order."""

    def __init__(self) -> None:
        self.names: list[str] = []

    @override
    def begin_fit(self) -> None:
        self.names = [type(subscriber).__name__ for subscriber in self.learn.bus.subscribers]


def exact(out: Path, rank: int, *, torch_loaders: bool = False) -> dict[str, Any]:
    """Phase ``full``, ``kill`` (SIGKILL after step 10, inside epoch 1) or ``resume``
    (``resume="latest"``) of a 2-rank fit whose ranks draw different random numbers."""
    phase = os.environ["PHASE"]
    folder = out / ("full" if phase == "full" else "ckpt")
    learn = exact_learner(8, torch_loaders=torch_loaders)
    subscribed = Subscribed()
    extra: list[Callback] = [subscribed]
    if phase == "kill":
        marks = out / f"marks{rank}"
        marks.mkdir(exist_ok=True)
        extra.append(KillAfterWrite(marks, EXACT_KILL, folder, "step-00000008.pt"))
    checkpoint = Checkpoint(folder, every_n_steps=EXACT_EVERY)
    exact_fit(learn, folder, rank=rank, extra=extra, resume="latest", checkpoint=checkpoint)
    return {**results(learn), "written": checkpoint.written, "subscribed": subscribed.names}


def restart(out: Path, rank: int) -> dict[str, Any]:
    """The exact scenario under ``torchrun --max-restarts=1``: the first attempt is killed
    after step 10 (every rank), the restarted one resumes from ``latest`` and finishes."""
    folder = out / "ckpt"
    marks = out / f"marks{rank}"
    marks.mkdir(exist_ok=True)  # the kill happens once: the restart finds its mark
    killer = KillAfterWrite(marks, EXACT_KILL, folder, "step-00000008.pt")
    learn = exact_learner(8)
    exact_fit(learn, folder, rank=rank, extra=[killer], resume="latest")
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    return {**results(learn), "attempt": attempt, "owns_group": learn.distributed.owns_group}


class SignalAt(Callback):
    """Sends this process SIGTERM before training batch ``at`` of epoch 0 (as a scheduler
    would, at a different moment on each rank)."""

    def __init__(self, at: int) -> None:
        self.at = at

    @override
    def begin_batch(self) -> None:
        if self.training and self.epoch == 0 and self.iter == self.at:
            os.kill(os.getpid(), signal.SIGTERM)


class HeardCheckpoint(Checkpoint):
    """A Checkpoint that counts the fits and batches it hears."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.heard = 0

    @override
    def begin_fit(self) -> None:
        self.heard += 1
        super().begin_fit()

    @override
    def after_batch(self) -> None:
        self.heard += 1
        super().after_batch()


def interrupt(out: Path, rank: int) -> dict[str, Any]:
    """The exact scenario with ``Checkpoint(save_on_interrupt=True, every_epoch=False)``.

    Phase ``both``: SIGTERM on rank 0 at batch 1 and on rank 1 at batch 4 of epoch 0;
    ``one``: on rank 1 only; ``resume``: the ``both`` fit resumed from ``latest``.
    """
    phase = os.environ["PHASE"]
    folder = out / ("one" if phase == "one" else "both")
    learn = exact_learner(8)
    signalled: dict[str, list[int | None]] = {"both": [1, 4], "one": [None, 4]}
    at = signalled.get(phase, [None, None])[rank]
    extra: list[Callback] = [] if at is None else [SignalAt(at)]
    checkpoint = HeardCheckpoint(folder, every_epoch=False, save_on_interrupt=True)
    exact_fit(learn, folder, rank=rank, extra=extra, resume="latest", checkpoint=checkpoint)
    return {**results(learn), "heard": checkpoint.heard, "written": checkpoint.written}


Scenario = Callable[[Path, int], dict[str, Any]]
SCENARIOS: Final[dict[str, Scenario]] = {
    "train": train,
    "fail": fail,
    "resume": resume,
    "exact": exact,
    "exact_loaders": functools.partial(exact, torch_loaders=True),
    "interrupt": interrupt,
    "restart": restart,
}


def main() -> None:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    rank = int(os.environ["RANK"])
    result = SCENARIOS[scenario](out, rank)
    torch.save(result, out / f"rank{rank}.pt")


if __name__ == "__main__":
    main()
