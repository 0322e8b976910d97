"""A fit with every stateful part, to be killed and resumed (tests/test_resume*.py).

``python tests/resume_driver.py KIND DIR OUT [--kill-at STEP ...] [--kill-at-epoch E ...]
[--kill-in-write FSYNC]``
runs ``fit_one_cycle(4, resume="latest")`` with ``Checkpoint(DIR, every_n_steps=7)`` on
shuffled data of KIND, dropout, Recorder, EarlyStoppingCallback, GradientAccumulation,
MixedPrecision (bfloat16 on the CPU), MixUp and a callback drawing from Python's and
NumPy's generators. It SIGKILLs itself after training batch STEP (``train_iter``) or at
the end of epoch E, or at its FSYNCth fsync (in a checkpoint write), once each (a marker file
in DIR remembers the kills done), and otherwise writes the results to OUT. The module
also holds the helpers of the resume tests: the uninterrupted fit's results, and the
comparison.
"""

from __future__ import annotations

import argparse
import functools
import os
import random
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any, Final, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

from trainbus import Callback, DataLoaders, Learner
from trainbus.callbacks import (
    Checkpoint,
    EarlyStoppingCallback,
    GradientAccumulation,
    MixedPrecision,
    MixUp,
)

Kind = Literal["loader", "loader_generator", "tensors", "tensors_seeded", "workers"]
KINDS: Final[tuple[Kind, ...]] = (
    "loader",
    "loader_generator",
    "tensors",
    "tensors_seeded",
    "workers",
)
N_EPOCH: Final = 4
BS: Final = 8
N_TRAIN: Final = 88  # 11 batches an epoch, the last one of 8 too
EVERY: Final = 7


def data(kind: Kind) -> DataLoaders:
    """Shuffled training data of ``kind`` (3 classes, 4 features), unshuffled validation."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN + 24, 4, generator=generator)
    y = torch.randint(0, 3, (N_TRAIN + 24,), generator=generator)
    train, valid = (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])
    if kind in ("tensors", "tensors_seeded"):
        seed = 5 if kind == "tensors_seeded" else None
        return DataLoaders.from_tensors(train, valid, bs=BS, valid_bs=12, seed=seed)
    workers = 1 if kind == "workers" else 0
    shuffler = torch.Generator().manual_seed(5) if kind == "loader_generator" else None
    return DataLoaders(
        DataLoader(
            TensorDataset(*train),
            batch_size=BS,
            shuffle=True,
            generator=shuffler,
            num_workers=workers,
        ),
        DataLoader(TensorDataset(*valid), batch_size=12),
    )


class Jitter(Callback):
    """Scales each training batch by factors from Python's and NumPy's generators."""

    @override
    def begin_batch(self) -> None:
        if self.training:
            scale = 1.0 + 0.01 * random.random() + 0.01 * float(np.random.rand())
            self.learn.xb = (self.xb[0] * scale,)


class Killer(Callback):
    """SIGKILLs the process after the chosen training batches and epochs, once each."""

    order = 2000  # after Checkpoint: a kill right after a save is one of the cases

    def __init__(self, folder: Path, steps: list[int], epochs: list[int]) -> None:
        self.folder, self.steps, self.epochs = folder, steps, epochs

    def _kill_once(self, tag: str) -> None:
        marker = self.folder / f"killed-{tag}"
        if not marker.exists():
            marker.write_text("")
            os.kill(os.getpid(), signal.SIGKILL)

    @override
    def after_batch(self) -> None:
        if self.training and self.train_iter in self.steps:
            self._kill_once(f"step{self.train_iter}")

    @override
    def after_epoch(self) -> None:
        if self.epoch in self.epochs:
            self._kill_once(f"epoch{self.epoch}")


def kill_while_writing(folder: Path, nth: int) -> None:
    """SIGKILL this process at its ``nth`` fsync (once per folder): with ``nth = 4k + 1``,
    when checkpoint ``k + 1``'s temporary file is written but not yet renamed (each
    checkpoint fsyncs its file, its folder, the ``latest`` file and the folder again)."""
    real_fsync = os.fsync
    calls = 0

    def fsync(fd: int) -> None:
        nonlocal calls
        calls += 1
        marker = folder / "killed-write"
        if calls == nth and not marker.exists():
            marker.write_text("")
            os.kill(os.getpid(), signal.SIGKILL)
        real_fsync(fd)

    patched: Any = os
    patched.fsync = fsync


def make_learner(kind: Kind) -> Learner:
    """The learner (seeded), with the callbacks that keep state."""
    random.seed(1)
    np.random.seed(2)
    torch.default_generator.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.2), nn.Linear(16, 3))
    cbs = [
        EarlyStoppingCallback(patience=3),
        GradientAccumulation(n_acc=2 * BS),
        MixedPrecision(torch.bfloat16, "cpu"),
        MixUp(0.4),
        Jitter(),
    ]
    return Learner(
        model, data(kind), nn.functional.cross_entropy, torch.optim.Adam, lr=1e-2, cbs=cbs
    )


def fit(learn: Learner, folder: Path, extra: list[Callback] | None = None) -> None:
    checkpoint = Checkpoint(folder, every_n_steps=EVERY, keep_last=2)
    learn.fit_one_cycle(N_EPOCH, cbs=[checkpoint, *(extra or [])], resume="latest")


def results(learn: Learner) -> dict[str, Any]:
    """What must be identical to an uninterrupted fit."""
    recorder = learn.recorder
    return {
        "weights": learn.model.state_dict(),
        "opt": learn.opt.state_dict(),
        "losses": torch.tensor(recorder.losses, dtype=torch.float64),
        "values": torch.tensor(recorder.values, dtype=torch.float64),
        "lrs": torch.tensor(recorder.lrs, dtype=torch.float64),
    }


@functools.cache
def reference(kind: Kind) -> dict[str, Any]:
    """The uninterrupted fit's results (one per kind, shared by the tests)."""
    with tempfile.TemporaryDirectory() as folder:
        learn = make_learner(kind)
        fit(learn, Path(folder))
        return results(learn)


def assert_identical(expected: dict[str, Any], actual: dict[str, Any]) -> None:
    """Weights, optimizer state, losses, values and learning rates: torch.equal."""
    for name in ("losses", "values", "lrs"):
        assert torch.equal(expected[name], actual[name]), name
    weights = expected["weights"]
    assert weights.keys() == actual["weights"].keys()
    for key in weights:
        assert torch.equal(weights[key], actual["weights"][key]), key
    assert expected["opt"]["param_groups"] == actual["opt"]["param_groups"]
    for index, state in expected["opt"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, actual["opt"]["state"][index][key]), (index, key)


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("folder", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--kill-at", type=int, nargs="*", default=[])
    parser.add_argument("--kill-at-epoch", type=int, nargs="*", default=[])
    parser.add_argument("--kill-in-write", type=int, default=0)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.kill_in_write:
        kill_while_writing(args.folder, args.kill_in_write)
    learn = make_learner(args.kind)
    fit(learn, args.folder, [Killer(args.folder, args.kill_at, args.kill_at_epoch)])
    torch.save(results(learn), args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
