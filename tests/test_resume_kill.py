"""The promise, with real kills: a fit SIGKILLed at chosen moments (mid-epoch, at an epoch
end, three times in one run, halfway through a checkpoint write), resumed with resume="latest"
until it completes, ends bit for bit as the fit run without interruption.

Each run is a subprocess of tests/resume_driver.py; the uninterrupted fit runs here.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from resume_driver import Kind, assert_identical, reference

DRIVER = Path(__file__).with_name("resume_driver.py")

# A few subprocesses each; one thread here too, as in the driver: the same arithmetic.
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]


def run_until_done(kind: Kind, folder: Path, *kills: str) -> list[int]:
    """Run the driver with ``kills`` until it completes; the exit status of every run."""
    statuses: list[int] = []
    out = folder / "results.pt"
    while not statuses or statuses[-1] != 0:
        assert len(statuses) < 5, statuses
        command = [sys.executable, str(DRIVER), kind, str(folder / "ckpt"), str(out), *kills]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
        assert done.returncode in (0, -signal.SIGKILL), done.stderr
        statuses.append(done.returncode)
    return statuses


def check(kind: Kind, folder: Path) -> None:
    results = torch.load(folder / "results.pt", weights_only=True)
    assert_identical(reference(kind), results)
    names = sorted(p.name for p in (folder / "ckpt").iterdir() if not p.name.startswith("killed"))
    assert len(names) == 3 and "latest" in names  # keep_last=2 checkpoints, and the pointer


def test_killed_mid_epoch(tmp_path: Path) -> None:
    # Step 17: three batches after the checkpoint of step 14, in epoch 1.
    assert run_until_done("loader", tmp_path, "--kill-at", "17") == [-9, 0]
    check("loader", tmp_path)


def test_killed_at_an_epoch_end(tmp_path: Path) -> None:
    assert run_until_done("loader_generator", tmp_path, "--kill-at-epoch", "1") == [-9, 0]
    check("loader_generator", tmp_path)


def test_killed_three_times(tmp_path: Path) -> None:
    kills = ("--kill-at", "9", "30", "--kill-at-epoch", "0")
    assert run_until_done("tensors", tmp_path, *kills) == [-9, -9, -9, 0]
    check("tensors", tmp_path)


def test_killed_while_writing_a_checkpoint(tmp_path: Path) -> None:
    # The 13th fsync is the 4th checkpoint's (step 21's) first: its temporary file is
    # written, not renamed; latest names step 14.
    statuses = run_until_done("tensors_seeded", tmp_path, "--kill-in-write", "13")
    assert statuses == [-9, 0]
    check("tensors_seeded", tmp_path)
    assert not list((tmp_path / "ckpt").glob(".*.tmp"))  # the resumed fit removed it
