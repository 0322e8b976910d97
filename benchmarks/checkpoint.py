"""What checkpoints cost on the demo network: save, resume, and the fit's slow-down.

Usage::

    python benchmarks/checkpoint.py            # the full run (about half a minute)
    python benchmarks/checkpoint.py --quick    # a smoke run (a few seconds; figures are rough)
    python benchmarks/checkpoint.py --check    # exit status 1 when the slow-down target is missed
    python benchmarks/checkpoint.py --instructions   # the slow-down in instructions (callgrind)

The network is the demo's (``trainbus demo``: a 64-128-64-10 perceptron with Adam on the
8x8 digits, 23 batches of 64 an epoch), in one process with ``torch.set_num_threads(1)``,
checkpoints written to a temporary folder on the disk of ``--dir`` (default: the system's
temporary folder). Reported:

* ``save``: one training checkpoint (model, optimizer, callbacks, counters, random states
  and data position; written, fsynced, renamed, ``latest`` updated): the extra time of a
  fit with ``Checkpoint(every_n_steps=1)``, per batch;
* ``learn.save``: the weights and optimizer alone;
* ``resume``: a fit resumed from its final checkpoint (read, checked, restored; no batch
  left to train);
* ``slow-down``: a one-cycle fit of 24 epochs with ``Checkpoint(every_n_steps=50,
  every_epoch=False)`` against the same fit without it, the median over rounds of their
  ratio (the two take turns, in alternating order, which cancels the slow drifts of a
  shared machine), in wall-clock time and in the process's CPU time (all threads: the
  writer's work counts). Target: at most 5 %. On a machine shared with other jobs the
  wall-clock figure wanders by more than that between runs; the CPU-time figure (what the
  checkpoints add in work) is what ``--check`` tests.

``--instructions`` counts instead, under callgrind (valgrind; a few minutes), the
instructions of the same two fits (each in a process of its own, both threads, after a
warm-up fit): what the checkpoints add in the process's own code, the same from run to
run, but without the kernel's work for the writes and without what the training thread
loses to a busy second thread or to caches the checkpoint emptied. With ``--check``, it
is that figure that is tested.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import torch
from torch import nn

from trainbus import Callback, Learner
from trainbus._demo import digits_dataloaders, digits_model
from trainbus.callbacks import Checkpoint

sys.path.insert(0, str(Path(__file__).parent))
import callgrind  # a sibling script, not a package

SLOWDOWN_TARGET: Final = 1.05
N_EPOCH: Final = 24
EVERY_N_STEPS: Final = 50


def make_learner() -> Learner:
    torch.manual_seed(0)  # pyright: ignore[reportUnknownMemberType]
    learn = Learner(
        digits_model(),
        digits_dataloaders(64, 0),
        nn.functional.cross_entropy,
        opt_func=torch.optim.Adam,
        lr=1e-2,
        device="cpu",
    )
    return learn


Clock = Callable[[], float]


def timed(run: Callable[[], object]) -> tuple[float, float, float]:
    """Wall-clock, process CPU and this thread's CPU seconds of ``run()``."""
    wall, cpu, thread = time.perf_counter(), time.process_time(), time.thread_time()
    run()
    return time.perf_counter() - wall, time.process_time() - cpu, time.thread_time() - thread


def fit_time(n_epoch: int, cbs: list[Callback]) -> tuple[float, float, float]:
    learn = make_learner()
    return timed(functools.partial(learn.fit_one_cycle, n_epoch, cbs=cbs))


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1e3:8.2f} ms"


def slow_down_checkpoint(folder: Path) -> Checkpoint:
    """The checkpoints whose cost the slow-down measures."""
    return Checkpoint(folder, every_n_steps=EVERY_N_STEPS, every_epoch=False)


def measured_fit(kind: str, folder: Path) -> None:
    """In a process under callgrind: a warm-up fit (checkpoints included), then the fit of
    ``kind`` (``"bare"`` or ``"checkpoint"``) with instrumentation on."""
    make_learner().fit(1, cbs=[Checkpoint(folder / "warm-up", every_n_steps=10)])
    learn = make_learner()
    cbs: list[Callback] = [slow_down_checkpoint(folder / "fit")] if kind == "checkpoint" else []
    callgrind.control("-i", "on")
    learn.fit_one_cycle(N_EPOCH, cbs=cbs)
    callgrind.control("-i", "off")


def instructions(folder: Path, check: bool) -> int:
    """Count both fits' instructions (in two processes at once); print the slow-down."""
    if not callgrind.available():
        print(callgrind.NEEDED, file=sys.stderr)
        return 1
    runs: dict[str, tuple[Path, subprocess.Popen[bytes]]] = {}
    for kind in ("bare", "checkpoint"):
        out = folder / f"callgrind.{kind}.out"
        line = [sys.executable, __file__, "--measured", kind, "--dir", str(folder / kind)]
        process = subprocess.Popen(
            callgrind.command(out) + line,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=callgrind.environment(),
        )
        runs[kind] = (out, process)
    for kind, (_, process) in runs.items():
        if process.wait() != 0:
            print(f"the {kind} fit failed under callgrind", file=sys.stderr)
            return 1
    bare, checkpointed = (callgrind.total(runs[kind][0]) for kind in ("bare", "checkpoint"))
    n_checkpoints = N_EPOCH * len(make_learner().dls.train) // EVERY_N_STEPS
    extra = checkpointed - bare
    print(
        f"instructions, every_n_steps={EVERY_N_STEPS} ({n_checkpoints} checkpoints): "
        f"fit {bare:,}, with checkpoints {checkpointed:,}: {extra / bare * 100:+.2f} % "
        f"({extra // n_checkpoints:,} a checkpoint) (target <= "
        f"{(SLOWDOWN_TARGET - 1) * 100:.0f} %)"
    )
    if check and checkpointed > bare * SLOWDOWN_TARGET:
        print("slow-down target missed", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description="What checkpoints cost on the demo network.")
    parser.add_argument("--quick", action="store_true", help="a smoke run: rough figures")
    parser.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    parser.add_argument("--dir", type=Path, default=None, help="where to write checkpoints")
    parser.add_argument(
        "--instructions", action="store_true", help="count instructions under callgrind"
    )
    parser.add_argument("--measured", choices=["bare", "checkpoint"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    if args.measured is not None:  # a process of --instructions, under callgrind
        measured_fit(args.measured, args.dir)
        return 0
    if args.instructions:
        with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
            return instructions(Path(scratch), args.check)
    rounds, n_epoch = (3, 4) if args.quick else (9, N_EPOCH)
    with tempfile.TemporaryDirectory(dir=args.dir) as scratch:
        folder = Path(scratch)
        n_batches = len(make_learner().dls.train)
        fit_time(1, [])  # warm-up

        # One checkpoint: a fit that saves after every batch, against one that does not.
        per_save: list[float] = []
        for i in range(rounds):
            plain = fit_time(2, [])[0]
            every = Checkpoint(folder / f"every{i}", every_n_steps=1, every_epoch=False)
            saving = fit_time(2, [every])[0]
            per_save.append((saving - plain) / (2 * n_batches))
        learn = make_learner()
        learn.fit(1)
        weights = [timed(functools.partial(learn.save, folder / "w.pt"))[0] for _ in range(rounds)]

        # Resume: from the final checkpoint of a fit (nothing left to train).
        make_learner().fit_one_cycle(2, cbs=[Checkpoint(folder / "done")])
        resumes: list[float] = []
        for _ in range(rounds):
            resumed, cbs = make_learner(), [Checkpoint(folder / "done")]
            run = functools.partial(resumed.fit_one_cycle, 2, cbs=cbs, resume="latest")
            resumes.append(timed(run)[0])

        # Slow-down with every_n_steps=50, the two fits taking turns (the order alternates).
        wall: list[float] = []
        cpu: list[float] = []
        thread: list[float] = []
        for i in range(rounds):
            ckpt = slow_down_checkpoint(folder / f"fifty{i}")
            if i % 2:
                checked, bare = fit_time(n_epoch, [ckpt]), fit_time(n_epoch, [])
            else:
                bare, checked = fit_time(n_epoch, []), fit_time(n_epoch, [ckpt])
            wall.append(checked[0] / bare[0])
            cpu.append(checked[1] / bare[1])
            thread.append(checked[2] / bare[2])
    n_steps = n_epoch * n_batches
    n_params = sum(p.numel() for p in make_learner().model.parameters())
    print(f"demo network: {n_params} parameters, Adam, {n_batches} batches an epoch")
    print(f"save (a training checkpoint, written back to back) {ms(per_save)}")
    print(f"learn.save (model and optimizer)                   {ms(weights)}")
    print(f"resume (read, check, restore)                      {ms(resumes)}")
    target = (SLOWDOWN_TARGET - 1) * 100
    print(
        f"fit slow-down, every_n_steps={EVERY_N_STEPS} ({n_steps} steps, "
        f"{n_steps // EVERY_N_STEPS} checkpoints): "
        f"wall {(statistics.median(wall) - 1) * 100:+.1f} %, "
        f"CPU {(statistics.median(cpu) - 1) * 100:+.1f} %, "
        f"training thread's CPU {(statistics.median(thread) - 1) * 100:+.1f} % "
        f"(target <= {target:.0f} %)"
    )
    if args.check and statistics.median(cpu) > SLOWDOWN_TARGET:
        print("slow-down target missed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
