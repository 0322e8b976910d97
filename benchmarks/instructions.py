"""Instructions per training step of trainbus next to a plain PyTorch loop (callgrind).

Usage::

    python benchmarks/instructions.py            # the table (a few minutes: valgrind is slow)
    python benchmarks/instructions.py --check    # exit status 1 when the budget is missed
    python benchmarks/instructions.py --only plain trainbus   # some contenders only

(``benchmarks/ddp.py --instructions`` runs the same contenders on two processes.)

Wall-clock figures on a shared machine swing by tens of percent between runs;
instruction counts do not. Each contender trains in its own process under
``valgrind --tool=callgrind --instr-atstart=no`` (callgrind.py); the process switches
instrumentation on (``callgrind_control -i on PID``) at the start of its second training
epoch and off (``-i off``) after its last, once with 2 and once with 6 measured epochs
(``PYTHONHASHSEED=0``, so that dict layouts do not vary). What the two counts share (the
switching itself, the first and last steps' extra work) cancels in their difference,
which divided by the extra steps (4 epochs of 64) is the cost of one training step.

Workload (overhead.py's zero-work one): ``nn.Linear(32, 10)``, SGD, 64 batches of one
row an epoch over ``DataLoader(TensorDataset)``, cross-entropy, no validation,
``torch.set_num_threads(1)``. What is left is the loop's own cost.

Contenders: the plain loop; ``Learner.fit`` with the default callbacks over the same
``DataLoader``; ``Learner.fit`` over ``DataLoaders.from_tensors``; and Ignite's
``create_supervised_trainer`` when ``pytorch-ignite`` is installed (it is not a
dependency). ``host reads`` counts device-to-host reads per training step, measured
once outside valgrind (see overhead.py).

The budget (docs/performance.md): trainbus with the default callbacks at most
+30 000 instructions a step over the plain loop, over ``from_tensors`` at most 0.90 of
the plain loop, and 0 host reads per training step.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from trainbus import Callback, DataLoaders, Learner

sys.path.insert(0, str(Path(__file__).parent))
import callgrind  # sibling scripts, not a package
from callgrind import Mark
from overhead import counting_syncs

N_BATCHES: Final = 64
SHORT, LONG = 2, 6  # measured epochs of the two runs
LR: Final = 0.01
DEFAULTS_EXCESS_BUDGET: Final = 30_000
TENSORS_RATIO_BUDGET: Final = 0.90

Train = Callable[[int, Mark], None]
"""Trains for ``n`` epochs, calling ``mark(epoch)`` as each begins and ``mark(n)`` after
the last."""

Contender = Callable[[int], Train]
"""Makes a contender's training run, with the given number of batches an epoch on each
process."""


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _data(batches: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``batches`` rows for each process."""
    n = batches * _world()
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def _model() -> nn.Module:
    torch.manual_seed(0)  # pyright: ignore[reportUnknownMemberType]
    return nn.Linear(32, 10)


def _loader(batches: int) -> DataLoader[Any]:
    return DataLoader(TensorDataset(*_data(batches)), batch_size=1)


def plain(batches: int) -> Train:
    """The plain loop; on many processes the plain DDP loop: the model in
    ``DistributedDataParallel``, the data through a ``DistributedSampler`` (``set_epoch``
    each epoch), as the torch tutorials write it."""
    model, data = _model(), TensorDataset(*_data(batches))
    sampler: DistributedSampler[Any] | None = None
    if _world() > 1:
        sampler = DistributedSampler(data, shuffle=False)
    dl = DataLoader(data, batch_size=1, sampler=sampler)
    forward = model if sampler is None else DistributedDataParallel(model)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_func = nn.functional.cross_entropy

    def train(n_epoch: int, mark: Mark) -> None:
        for epoch in range(n_epoch):
            mark(epoch)
            if sampler is not None:
                sampler.set_epoch(epoch)
            model.train()
            for xb, yb in dl:
                loss = loss_func(forward(xb), yb)
                loss.backward()  # pyright: ignore[reportUnknownMemberType]
                opt.step()  # pyright: ignore[reportUnknownMemberType]
                opt.zero_grad()
        mark(n_epoch)

    return train


class _Marks(Callback):
    """Calls ``mark`` at the epoch boundaries (one hook each, per epoch)."""

    def __init__(self, mark: Mark) -> None:
        self.mark = mark

    def begin_epoch(self) -> None:
        self.mark(self.epoch)

    def after_epoch(self) -> None:
        if self.epoch == self.n_epoch - 1:
            self.mark(self.n_epoch)


def _trainbus(dls: DataLoaders) -> Train:
    learn = Learner(_model(), dls, nn.functional.cross_entropy, lr=LR)

    def train(n_epoch: int, mark: Mark) -> None:
        learn.fit(n_epoch, cbs=[_Marks(mark)])

    return train


def trainbus(batches: int) -> Train:
    return _trainbus(DataLoaders(_loader(batches), None))


def trainbus_tensors(batches: int) -> Train:
    return _trainbus(DataLoaders.from_tensors(_data(batches), None, bs=1))


def ignite(batches: int) -> Train:
    # Imported by name: Ignite is optional, and the type checkers run without it.
    ignite_engine: Any = importlib.import_module("ignite.engine")
    events, create_trainer = ignite_engine.Events, ignite_engine.create_supervised_trainer

    model, dl = _model(), _loader(batches)
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    engine: Any = create_trainer(model, opt, nn.functional.cross_entropy)

    def train(n_epoch: int, mark: Mark) -> None:
        def started(run: Any) -> None:
            mark(run.state.epoch - 1)  # Ignite counts epochs from 1

        engine.add_event_handler(events.EPOCH_STARTED, started)
        engine.add_event_handler(events.EPOCH_COMPLETED(once=n_epoch), lambda: mark(n_epoch))
        engine.run(dl, max_epochs=n_epoch)

    return train


CONTENDERS: Final[dict[str, tuple[str, Contender]]] = {
    "plain": ("plain PyTorch loop", plain),
    "trainbus": ("trainbus, default callbacks", trainbus),
    "tensors": ("trainbus, from_tensors", trainbus_tensors),
    "ignite": ("Ignite create_supervised_trainer", ignite),
}


def _available(name: str) -> bool:
    return name != "ignite" or importlib.util.find_spec("ignite") is not None


def worker_command(name: str, n_epoch: int, batches: Sequence[int], *, dumps: bool) -> list[str]:
    """The command line of a process that trains contender ``name`` (see :func:`worker`)."""
    command = [sys.executable, __file__, "--worker", name, "--epochs", str(n_epoch)]
    return command + ["--batches", *map(str, batches)] + (["--dumps"] if dumps else [])


def worker(name: str, n_epoch: int, batches: Sequence[int], *, dumps: bool) -> None:
    """Run in a process under callgrind: for each number in ``batches``, a new copy of the
    contender trains ``n_epoch`` epochs of that many batches, the first a warm-up (see
    :func:`callgrind.marks`).

    Started with torchrun's variables and ``WORLD_SIZE > 1``, the process joins a Gloo
    group first; there only rank 0 is measured (the others do not run under callgrind).
    """
    torch.set_num_threads(1)
    group = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if group:
        dist.init_process_group("gloo")
    try:
        measured = not group or dist.get_rank() == 0
        for n in batches:
            train = CONTENDERS[name][1](n)
            train(n_epoch, callgrind.marks(n_epoch, dumps=dumps) if measured else _unmarked)
    finally:
        if group:
            dist.destroy_process_group()


def _unmarked(epoch: int) -> None:
    del epoch


def instructions(name: str, measured: int, directory: Path) -> int:
    """Instructions counted while instrumentation was on, in a run of ``measured`` epochs."""
    out = directory / f"{name}-{measured}.out"
    command = callgrind.command(out) + worker_command(name, 1 + measured, [N_BATCHES], dumps=False)
    subprocess.run(
        command,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=callgrind.environment(),
    )
    return callgrind.total(out)


def measure(name: str, directory: Path) -> float:
    """Instructions per training step of contender ``name`` (two runs under callgrind)."""
    short, long = (instructions(name, m, directory) for m in (SHORT, LONG))
    return (long - short) / ((LONG - SHORT) * N_BATCHES)


def host_reads(name: str) -> float:
    """Device-to-host reads per training step, measured over one epoch after a warm-up."""
    torch.set_num_threads(1)
    train = CONTENDERS[name][1](N_BATCHES)
    train(1, _unmarked)
    with counting_syncs() as count:
        train(1, _unmarked)
    return count[0] / N_BATCHES


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--only", nargs="+", choices=sorted(CONTENDERS), help="contenders")
    parser.add_argument("--check", action="store_true", help="exit 1 when the budget is missed")
    parser.add_argument("--worker", choices=sorted(CONTENDERS), help=argparse.SUPPRESS)
    parser.add_argument("--epochs", type=int, default=1 + SHORT, help=argparse.SUPPRESS)
    parser.add_argument(
        "--batches", type=int, nargs="+", default=[N_BATCHES], help=argparse.SUPPRESS
    )
    parser.add_argument("--dumps", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--per-step", choices=sorted(CONTENDERS), help="print one figure")
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.worker, args.epochs, args.batches, dumps=args.dumps)
        return 0
    if args.per_step:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"{measure(args.per_step, Path(tmp)):.0f}")
        return 0
    if not callgrind.available():
        print(callgrind.NEEDED)
        return 2
    names = [n for n in (args.only or CONTENDERS) if _available(n)]
    if "plain" not in names:
        names.insert(0, "plain")
    per_step: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            per_step[name] = measure(name, Path(tmp))
    base = per_step["plain"]
    print(f"instructions per training step ({LONG} - {SHORT} epochs of {N_BATCHES} steps)")
    print(f"{'contender':<34} {'instr/step':>11} {'excess':>10} {'ratio':>7} {'host reads':>11}")
    reads: dict[str, float] = {}
    for name in names:
        reads[name] = host_reads(name)
        value = per_step[name]
        print(
            f"{CONTENDERS[name][0]:<34} {value:>11,.0f} {value - base:>+10,.0f} "
            f"{value / base:>7.3f} {reads[name]:>11.2f}"
        )
    missed: list[str] = []
    if "trainbus" in per_step and per_step["trainbus"] - base > DEFAULTS_EXCESS_BUDGET:
        missed.append(f"default callbacks exceed the plain loop by > {DEFAULTS_EXCESS_BUDGET}")
    if "tensors" in per_step and per_step["tensors"] / base > TENSORS_RATIO_BUDGET:
        missed.append(f"from_tensors is above {TENSORS_RATIO_BUDGET} of the plain loop")
    # A torch DataLoader reads one value (its seed) per epoch: more than the plain loop's
    # reads is what counts.
    missed += [
        f"{n}: more host reads per step than the plain loop"
        for n in ("trainbus", "tensors")
        if reads.get(n, 0.0) > reads["plain"]
    ]
    for line in missed:
        print(f"budget missed: {line}")
    return 1 if args.check and missed else 0


if __name__ == "__main__":
    sys.exit(main())
