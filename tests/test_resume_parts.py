"""Exact resume, part by part: skipping batches without loading them, loaders that keep
their own position, and the state of trackers and loggers."""

from __future__ import annotations

import csv
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from conftest import tiny_learner
from resume_driver import fit, make_learner
from test_resume import Crash
from trainbus import Callback, DataLoaders, Learner
from trainbus._resume import PHASE_START
from trainbus.callbacks import Checkpoint, CSVLogger, ReduceLROnPlateau, SaveModelCallback

pytestmark = pytest.mark.usefixtures("one_thread")

T = TypeVar("T")


class Counted(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    """A map-style dataset that records which samples were loaded."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x = torch.randn(32, 2, generator=generator)
        self.y = torch.randn(32, 1, generator=generator)
        self.loaded: list[int] = []

    def __len__(self) -> int:
        return 32

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        self.loaded.append(index)
        return self.x[index], self.y[index]


def counted_learner(cbs: list[Callback]) -> tuple[Learner, Counted]:
    torch.default_generator.manual_seed(0)
    data = Counted()
    dls = DataLoaders(DataLoader(data, batch_size=4, shuffle=True))
    learn = Learner(nn.Linear(2, 1), dls, nn.functional.mse_loss, lr=0.05, cbs=cbs, device="cpu")
    return learn, data


MakeLearner = Callable[[list[Callback]], tuple[Learner, T]]


def crash_and_resume(
    make: MakeLearner[T], folder: Path, n_epoch: int, every: int, crash: int
) -> tuple[T, Learner]:
    """A fit crashed after training batch ``crash``, resumed, compared to an uninterrupted
    one (losses and weights); the resumed fit's data source, and the resumed learner."""
    straight, _ = make([Checkpoint(folder / "straight", every_n_steps=every)])
    straight.fit(n_epoch)
    crashed, _ = make([Checkpoint(folder / "run", every_n_steps=every), Crash(step=crash)])
    with pytest.raises(RuntimeError, match="crash"):
        crashed.fit(n_epoch)
    resumed, data = make([Checkpoint(folder / "run", every_n_steps=every)])
    resumed.fit(n_epoch, resume="latest")
    assert resumed.recorder.losses == straight.recorder.losses
    for a, b in zip(resumed.model.parameters(), straight.model.parameters(), strict=True):
        assert torch.equal(a, b)
    return data, resumed


def test_a_dataloader_skips_the_batches_done_without_loading_them(tmp_path: Path) -> None:
    # From step 12 (every 3, crash at 13): the 4th of epoch 1's 8 batches.
    data, _ = crash_and_resume(counted_learner, tmp_path, n_epoch=2, every=3, crash=13)
    assert len(data.loaded) == 4 * 4  # its last 4 batches of 4 samples, nothing skipped loaded


class OwnPosition:
    """A loader that keeps its own position (as torchdata's StatefulDataLoader does)."""

    def __init__(self) -> None:
        generator = torch.Generator().manual_seed(0)
        self.x, self.y = (
            torch.randn(24, 2, generator=generator),
            torch.randn(24, 1, generator=generator),
        )
        self.shuffler = torch.Generator().manual_seed(1)
        self.order: torch.Tensor | None = None
        self.done = 0
        self.yielded = 0

    def __len__(self) -> int:
        return 6

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.order is None:
            self.order = torch.randperm(24, generator=self.shuffler)
        while self.done < len(self):
            rows = self.order[4 * self.done : 4 * self.done + 4]
            self.done += 1
            self.yielded += 1
            yield self.x[rows], self.y[rows]
        self.order, self.done = None, 0

    def state_dict(self) -> dict[str, Any]:
        return {"order": self.order, "done": self.done, "shuffler": self.shuffler.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.order, self.done = state["order"], state["done"]
        self.shuffler.set_state(state["shuffler"])


def stateful_learner(cbs: list[Callback]) -> tuple[Learner, OwnPosition]:
    torch.default_generator.manual_seed(0)
    loader = OwnPosition()
    learn = Learner(
        nn.Linear(2, 1), DataLoaders(loader), nn.functional.mse_loss, cbs=cbs, device="cpu"
    )
    return learn, loader


def test_a_loader_with_its_own_state_resumes_from_it(tmp_path: Path) -> None:
    # From step 8 (every 4, crash at 10): batch 2 of epoch 1.
    loader, _ = crash_and_resume(stateful_learner, tmp_path, n_epoch=3, every=4, crash=10)
    assert loader.yielded == 4 + 6  # the rest of epoch 1 and epoch 2: nothing replayed


class CountedStateful:
    """Makes learners over torchdata's ``StatefulDataLoader`` (shuffled by its own
    generator; ``workers`` processes) of a :class:`Counted` dataset, the last one kept."""

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self.data = Counted()

    def __call__(self, cbs: list[Callback]) -> tuple[Learner, Counted]:
        stateful = pytest.importorskip("torchdata.stateful_dataloader")
        torch.default_generator.manual_seed(0)
        self.data = Counted()
        loader = stateful.StatefulDataLoader(
            self.data,
            batch_size=4,
            shuffle=True,
            num_workers=self.workers,
            generator=torch.Generator().manual_seed(3),
        )
        dls = DataLoaders(loader)
        model = nn.Linear(2, 1)
        return Learner(
            model, dls, nn.functional.mse_loss, lr=0.05, cbs=cbs, device="cpu"
        ), self.data


@pytest.mark.parametrize("workers", [0, 2])
def test_a_torchdata_stateful_dataloader_resumes_from_its_own_state(
    tmp_path: Path, workers: int
) -> None:
    # From step 12 (every 3, crash at 13): the 4th of epoch 1's 8 batches.
    make = CountedStateful(workers)
    data, resumed = crash_and_resume(make, tmp_path, n_epoch=2, every=3, crash=13)
    if workers == 0:  # loaded in this process: it went on from its own position
        assert len(data.loaded) == 4 * 4  # the last 4 batches of epoch 1, none replayed
    assert len(resumed.recorder.values) == 2


def trackers(folder: Path) -> list[Callback]:
    return [
        SaveModelCallback(fname="best", path=folder / "models"),
        ReduceLROnPlateau(patience=1, factor=2.0),
        CSVLogger(folder / "history.csv"),
    ]


def rows(path: Path) -> list[dict[str, str]]:
    """The CSV rows without the wall-clock column."""
    with path.open(newline="") as file:
        return [{k: v for k, v in row.items() if k != "time"} for row in csv.DictReader(file)]


def test_trackers_and_the_csv_log_resume_exactly(tmp_path: Path) -> None:
    straight_cbs = trackers(tmp_path / "a")
    straight = make_learner("tensors")
    fit(straight, tmp_path / "a", straight_cbs)
    crash_cbs = [*trackers(tmp_path / "b"), Crash(step=31)]  # epoch 2: 3 rows written
    with pytest.raises(RuntimeError, match="crash"):
        fit(make_learner("tensors"), tmp_path / "b", crash_cbs)
    assert len(rows(tmp_path / "b" / "history.csv")) == 2
    resumed_cbs = trackers(tmp_path / "b")
    resumed = make_learner("tensors")
    fit(resumed, tmp_path / "b", resumed_cbs)  # from step 28, in epoch 2
    assert rows(tmp_path / "b" / "history.csv") == rows(tmp_path / "a" / "history.csv")
    assert len(rows(tmp_path / "a" / "history.csv")) == 4
    for expected, actual in zip(straight_cbs, resumed_cbs, strict=True):
        assert expected.state_dict().keys() == actual.state_dict().keys()
        for key, value in expected.state_dict().items():
            if key not in ("text",):  # the CSV text holds wall-clock times
                assert actual.state_dict()[key] == value, (type(expected).__name__, key)
    assert resumed.recorder.values == straight.recorder.values
    for a, b in zip(resumed.model.parameters(), straight.model.parameters(), strict=True):
        assert torch.equal(a, b)


class _PhaseStarts(Callback):
    """Whether a phase start was published, at each phase's start (after Checkpoint's)."""

    run_after = Checkpoint

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, bool]] = []

    def begin_train(self) -> None:
        self.seen.append(("train", self.epoch, PHASE_START in self.learn.state.extras))

    def begin_validate(self) -> None:
        self.seen.append(("valid", self.epoch, PHASE_START in self.learn.state.extras))


@pytest.mark.parametrize("save_on_interrupt", [False, True])
def test_a_phase_start_is_taken_only_for_a_phase_a_checkpoint_may_fall_in(
    tmp_path: Path, save_on_interrupt: bool
) -> None:
    # 3 training batches an epoch: steps 1-3, 4-6, 7-9, 10-12; a checkpoint every 5.
    watch = _PhaseStarts()
    every = Checkpoint(tmp_path, every_n_steps=5, save_on_interrupt=save_on_interrupt)
    tiny_learner([every, watch]).fit(4)
    expected = [(False, False), (True, False), (False, False), (True, False)]
    if save_on_interrupt:  # a signal may come in any phase
        expected = [(True, True)] * 4
    assert watch.seen == [
        (phase, epoch, published)
        for epoch, pair in enumerate(expected)
        for phase, published in zip(("train", "valid"), pair, strict=True)
    ]
