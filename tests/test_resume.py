"""Exact resume in one process: a fit that fails at a chosen moment, resumed from its last
checkpoint, ends bit for bit as the fit run without interruption.

(The same, with SIGKILL in a subprocess, is in test_resume_kill.py.)
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from typing_extensions import override

from resume_driver import EVERY, Kind, assert_identical, fit, make_learner, reference, results
from trainbus import Callback, CheckpointError, Learner, read_checkpoint
from trainbus.callbacks import Checkpoint, EarlyStoppingCallback


class Crash(Callback):
    """Raises at the end of training batch ``step`` (after Checkpoint) or of epoch ``epoch``."""

    order = 2000

    def __init__(self, step: int | None = None, epoch: int | None = None) -> None:
        self.step, self.epoch_ = step, epoch

    @override
    def after_batch(self) -> None:
        if self.training and self.train_iter == self.step:
            raise RuntimeError("crash")

    @override
    def after_epoch(self) -> None:
        if self.epoch == self.epoch_:
            raise RuntimeError("crash")


pytestmark = pytest.mark.usefixtures("one_thread")


def crash_then_resume(kind: Kind, folder: Path, *crashes: Crash) -> Learner:
    """Fit with each crash in turn (each resuming from the last checkpoint), then to the end."""
    for crash in crashes:
        with pytest.raises(RuntimeError, match="crash"):
            fit(make_learner(kind), folder, [crash])
    learn = make_learner(kind)
    fit(learn, folder)
    return learn


@pytest.mark.parametrize("kind", ["loader", "loader_generator", "tensors", "tensors_seeded"])
def test_resume_mid_epoch_is_exact(kind: Kind, tmp_path: Path) -> None:
    learn = crash_then_resume(kind, tmp_path, Crash(step=2 * EVERY + 3))
    assert_identical(reference(kind), results(learn))


def test_resume_right_after_a_checkpoint_and_at_an_epoch_end(tmp_path: Path) -> None:
    learn = crash_then_resume("tensors", tmp_path / "a", Crash(step=2 * EVERY))
    assert_identical(reference("tensors"), results(learn))
    learn = crash_then_resume("loader", tmp_path / "b", Crash(epoch=1))
    assert_identical(reference("loader"), results(learn))


def test_resume_through_two_crashes(tmp_path: Path) -> None:
    learn = crash_then_resume("tensors_seeded", tmp_path, Crash(step=10), Crash(epoch=2))
    assert_identical(reference("tensors_seeded"), results(learn))


def test_resume_with_loader_workers(tmp_path: Path) -> None:
    learn = crash_then_resume("workers", tmp_path, Crash(step=EVERY + 2))
    assert_identical(reference("workers"), results(learn))


def test_checkpoint_files_latest_and_rotation(tmp_path: Path) -> None:
    learn = make_learner("tensors")
    checkpoint = Checkpoint(tmp_path, every_n_steps=10, keep_last=3)
    learn.fit(2, cbs=[checkpoint])  # 11 batches an epoch: step 10, epoch 0, step 20, epoch 1
    assert checkpoint.written == ["epoch-0000.pt", "step-00000020.pt", "epoch-0001.pt"]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["epoch-0000.pt", "epoch-0001.pt", "latest", "step-00000020.pt"]
    assert (tmp_path / "latest").read_text() == "epoch-0001.pt"
    assert checkpoint.latest == tmp_path / "epoch-0001.pt"
    ckpt = read_checkpoint(tmp_path / "epoch-0001.pt")
    assert ckpt["train"]["loop"] == {
        "n_epoch": 2,
        "epoch": 1,
        "phase": "end",
        "iter": 1,  # the last validation batch
        "train_iter": 22,
        "pct_train": 1.0,
        "training": False,
    }
    assert set(ckpt["train"]["callbacks"]) == {
        "Recorder",
        "EarlyStoppingCallback",
        "GradientAccumulation",
        "MixedPrecision",
        "Checkpoint",
    }
    # Any training checkpoint loads as weights too.
    other = make_learner("tensors")
    other.load(tmp_path / "step-00000020.pt")


def test_files_a_killed_write_had_yet_to_remove_go_with_the_resumed_fits_first_write(
    tmp_path: Path,
) -> None:
    def rotating() -> Checkpoint:
        return Checkpoint(tmp_path, every_n_steps=5, every_epoch=False, keep_last=1)

    with pytest.raises(RuntimeError, match="crash"):  # steps 5 and 10 written, 5 removed
        make_learner("tensors").fit(2, cbs=[rotating(), Crash(step=12)])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000010.pt"]
    # As if the process had died after writing step 10 and `latest`, before removing step 5.
    (tmp_path / "step-00000005.pt").write_bytes((tmp_path / "step-00000010.pt").read_bytes())
    checkpoint = rotating()
    make_learner("tensors").fit(2, cbs=[checkpoint], resume="latest")
    assert checkpoint.written == ["step-00000020.pt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "step-00000020.pt"]


def test_latest_without_a_checkpoint_starts_afresh_and_needs_the_callback(
    tmp_path: Path,
) -> None:
    learn = make_learner("tensors")
    with pytest.raises(ValueError, match=r"resume='latest' needs a trainbus.callbacks.Checkpoint"):
        learn.fit(1, resume="latest")
    learn.fit(1, cbs=[Checkpoint(tmp_path / "new", every_epoch=False)], resume="latest")
    assert len(learn.recorder.losses) == 11


def test_a_checkpoint_that_does_not_fit_the_fit_is_refused_before_anything_changes(
    tmp_path: Path,
) -> None:
    learn = make_learner("tensors")
    learn.fit(2, cbs=[Checkpoint(tmp_path)])
    path = tmp_path / "epoch-0000.pt"
    fresh = make_learner("tensors")
    weights = {k: v.clone() for k, v in fresh.model.state_dict().items()}

    def refused(match: str, run: Callable[[], None]) -> None:
        with pytest.raises(CheckpointError, match=match):
            run()
        assert all(torch.equal(v, fresh.model.state_dict()[k]) for k, v in weights.items())
        assert not fresh.opt.state

    refused(
        r"epoch-0000\.pt was written by a fit of 2 epochs; this fit has 3",
        lambda: fresh.fit(3, resume=path),
    )
    early = fresh.get_cb(EarlyStoppingCallback)
    fresh.remove_cb(early)
    refused(r"holds the state of callback EarlyStoppingCallback", lambda: fresh.fit(2, resume=path))
    fresh.add_cb(early)
    refused(
        r"holds no state for callback EarlyStoppingCallback#2",
        lambda: fresh.fit(2, cbs=[EarlyStoppingCallback()], resume=path),
    )
    fresh.save(tmp_path / "weights.pt")
    refused(r"weights\.pt holds weights only", lambda: fresh.fit(2, resume=tmp_path / "weights.pt"))
    with pytest.raises(FileNotFoundError, match=r"missing\.pt"):
        fresh.fit(2, resume=tmp_path / "missing.pt")
    fewer = make_learner("tensors")
    fewer.dls.train.tensors = tuple(t[:80] for t in fewer.dls.train.tensors)  # type: ignore[attr-defined]
    with pytest.raises(CheckpointError, match=r"11 train batches per epoch; .* has 10"):
        fewer.fit(2, resume=path)


def test_a_failed_checkpoint_write_leaves_the_last_one_and_latest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    learn = make_learner("tensors")
    learn.fit(1, cbs=[Checkpoint(tmp_path, every_n_steps=5)])  # steps 5, 10, then epoch 0
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def full_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)  # the writer's first fsync fails
    with pytest.raises(OSError, match=r"could not write checkpoint .*step-00000005\.pt") as info:
        make_learner("tensors").fit(1, cbs=[Checkpoint(tmp_path, every_n_steps=5)])
    assert info.value.errno == 28
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    monkeypatch.undo()
    assert (tmp_path / "latest").read_text() == "epoch-0000.pt"
    make_learner("tensors").load(tmp_path / "epoch-0000.pt")


class Interrupt(Callback):
    """Sends ``signum`` to this process at the start of a chosen batch."""

    def __init__(self, signum: int, step: int | None = None, valid: bool = False) -> None:
        self.signum, self.step, self.valid = signum, step, valid

    @override
    def begin_batch(self) -> None:
        due = (self.training and self.train_iter == self.step) or (
            self.valid and not self.training and self.iter == 0
        )
        if due:
            self.valid, self.step = False, None
            signal.raise_signal(self.signum)


def test_ctrl_c_saves_at_the_next_batch_boundary_then_interrupts(tmp_path: Path) -> None:
    # Python's own Ctrl-C handler, whatever this process inherited: a process started in
    # the background by a non-interactive shell ignores SIGINT, and then nothing interrupts.
    inherited = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        learn = make_learner("loader")
        checkpoint = Checkpoint(tmp_path, every_epoch=False, save_on_interrupt=True)
        with pytest.raises(KeyboardInterrupt):
            learn.fit_one_cycle(4, cbs=[checkpoint, Interrupt(signal.SIGINT, step=15)])
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    finally:
        signal.signal(signal.SIGINT, inherited)
    assert (tmp_path / "latest").read_text() == "step-00000016.pt"  # the batch it came in
    resumed = make_learner("loader")
    resumed.fit_one_cycle(4, cbs=[Checkpoint(tmp_path, every_n_steps=EVERY)], resume="latest")
    assert_identical(reference("loader"), results(resumed))


class Terminated(Exception):
    """Raised by the SIGTERM handler of the test."""


def test_sigterm_in_validation_saves_there_then_calls_the_previous_handler(tmp_path: Path) -> None:
    def on_term(signum: int, frame: object) -> None:
        raise Terminated

    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        learn = make_learner("tensors_seeded")
        checkpoint = Checkpoint(tmp_path, every_epoch=False, save_on_interrupt=True)
        with pytest.raises(Terminated):
            learn.fit_one_cycle(4, cbs=[checkpoint, Interrupt(signal.SIGTERM, valid=True)])
        assert signal.getsignal(signal.SIGTERM) is on_term
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert (tmp_path / "latest").read_text() == "epoch-0000-valid-000001.pt"
    resumed = make_learner("tensors_seeded")
    resumed.fit_one_cycle(4, cbs=[Checkpoint(tmp_path, every_n_steps=EVERY)], resume="latest")
    assert_identical(reference("tensors_seeded"), results(resumed))
