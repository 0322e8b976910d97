"""Training throughput, and instructions a step, on 1 and 2 processes: trainbus next to a
plain (DDP) loop.

Usage::

    python benchmarks/ddp.py             # 1 and 2 processes, 4 epochs a round, 3 rounds
    python benchmarks/ddp.py --quick     # a smoke run (1 epoch a round, 1 round)
    python benchmarks/ddp.py --instructions           # instructions a step (a few minutes)
    python benchmarks/ddp.py --instructions --quick   # a smoke run of it (2 processes)

The workload is the demo's: the two-hidden-layer perceptron on scikit-learn's 8x8
digits (1,438 training images, 359 validation images), batches of ``--bs`` per process,
Adam, cross-entropy, accuracy on the validation set. For each process count the script
starts that many processes with torchrun's environment variables (Gloo on the CPU, one
thread each); in every process the contenders take turns, each round running each once:

* ``plain``: a hand-written loop; on 2 processes the model is wrapped in
  ``DistributedDataParallel``, the data sharded by rank, and the validation sums
  all-reduced once per epoch, as trainbus does;
* ``trainbus``: ``Learner.fit`` with the default callbacks (the progress bar silent).

``samples/s`` counts training samples of all processes per second of a fit (its
validation pass included), median over rounds; ``µs/step`` is the median time of one
training step (one batch on every process), and ``overhead`` trainbus's minus the plain
loop's, from the same round.

``--instructions`` counts instructions instead (callgrind.py), on instructions.py's
zero-work workload and contenders: ``nn.Linear(32, 10)``, SGD, batches of one row from a
``DataLoader(TensorDataset)``, no validation. On 2 processes the plain loop is the plain
DDP loop (``DistributedDataParallel``, a ``DistributedSampler`` with ``set_epoch``), and
trainbus shards the same loader itself (``tensors``: ``DataLoaders.from_tensors``, sharded
by slicing). Rank 0 runs under callgrind, the other rank at full speed; the count is that
of rank 0's main thread (Gloo's threads run DDP's all-reduces and wait for the other
rank: their count depends on how long they wait, and their work is DDP's, the same for
every contender). Instrumentation goes on as the second epoch begins; as each later epoch
begins, the garbage is collected (uncounted) and the count dumped, so that a count holds
one whole epoch: its steps and what is done once an epoch (the callbacks' epoch hooks,
the Recorder's all-reduce, the sampler's ``set_epoch``). The process trains one copy of
the contender with epochs of 16 batches, then one with epochs of 80 (``--batches``), and
counts 4 epochs of each (``--windows``): ``instr/step`` is the difference of their mean
epochs over the 64 extra steps, a step's cost with nothing done once an epoch in it (the
counted epochs differ by 256 steps, one stacking of the Recorder's 256-loss chunks, so a
step carries its share of that); ``instr/epoch`` is what an epoch of 16 batches costs
beyond its 16 steps. ``excess`` is trainbus's figure minus the plain loop's on as many
processes.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from trainbus import DataLoaders, Learner, TensorBatches
from trainbus._demo import digits_dataloaders, digits_model
from trainbus._sharding import ShardedTensorBatches
from trainbus.callbacks import ProgressCallback
from trainbus.metrics import accuracy

sys.path.insert(0, str(Path(__file__).parent))
import callgrind  # sibling scripts, not a package
import instructions

CONTENDERS: Final = ("plain", "trainbus")
COUNTED: Final = ("plain", "trainbus", "tensors")  # instructions.CONTENDERS under DDP


def _tensors(dls: DataLoaders) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...]]:
    """The whole training and validation tensors behind the learner's (sharded) batches."""
    found: list[tuple[torch.Tensor, ...]] = []
    for batches in (dls.train, dls.valid):
        if isinstance(batches, ShardedTensorBatches):
            found.append(batches.source.tensors)
        elif isinstance(batches, TensorBatches):
            found.append(batches.tensors)
        else:
            raise TypeError(f"expected tensor batches, got {type(batches).__name__}")
    return found[0], found[1]


def plain_fit(model: nn.Module, dls: DataLoaders, bs: int, epochs: int) -> None:
    """The same work as ``Learner.fit`` without trainbus: shards, DDP, one all-reduce."""
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    (x, y), (xv, yv) = _tensors(dls)
    forward: nn.Module = DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(0)
    n = x.shape[0]
    per_rank = -(-n // world)
    xv, yv = xv[rank::world], yv[rank::world]
    for _ in range(epochs):
        order = torch.randperm(n, generator=generator)
        order = order.repeat(2)[: per_rank * world][rank::world]
        xs, ys = x[order], y[order]
        model.train()
        for start in range(0, per_rank, bs):
            loss = nn.functional.cross_entropy(
                forward(xs[start : start + bs]), ys[start : start + bs]
            )
            loss.backward()  # pyright: ignore[reportUnknownMemberType]
            opt.step()  # pyright: ignore[reportUnknownMemberType]
            opt.zero_grad()
        model.eval()
        sums = torch.zeros(4, dtype=torch.float64)
        with torch.no_grad():
            for start in range(0, xv.shape[0], 2 * bs):
                pred = model(xv[start : start + 2 * bs])
                target = yv[start : start + 2 * bs]
                size = target.shape[0]
                sums[0] += nn.functional.cross_entropy(pred, target).double() * size
                sums[1] += size
                sums[2] += accuracy(pred, target).double() * size
                sums[3] += size
        if world > 1:
            dist.all_reduce(sums)  # pyright: ignore[reportUnknownMemberType]
        _ = (sums[0] / sums[1]).item(), (sums[2] / sums[3]).item()


def worker(bs: int, epochs: int, rounds: int, out: Path) -> None:
    torch.set_num_threads(1)
    learn = Learner(
        digits_model(),
        digits_dataloaders(bs, 0),
        nn.functional.cross_entropy,
        opt_func=torch.optim.Adam,
        lr=1e-3,
        metrics=[accuracy],
    )
    learn.get_cb(ProgressCallback).show = False
    plain_model = digits_model()
    steps = len(learn.dls.train) * epochs
    runs: dict[str, list[float]] = {name: [] for name in CONTENDERS}

    def run(name: str, n_epoch: int) -> float:
        if dist.is_initialized():
            dist.barrier()  # pyright: ignore[reportUnknownMemberType]
        start = time.perf_counter()
        if name == "plain":
            plain_fit(plain_model, learn.dls, bs, n_epoch)
        else:
            learn.fit(n_epoch)
        return time.perf_counter() - start

    for name in CONTENDERS:  # warm-up
        run(name, 1)
    for r in range(rounds):
        for name in CONTENDERS[r % 2 :] + CONTENDERS[: r % 2]:
            runs[name].append(run(name, epochs))
    if learn.rank == 0:
        n_train = len(_tensors(learn.dls)[0][0])
        result: dict[str, Any] = {
            "world_size": learn.world_size,
            "samples": n_train * epochs,
            "steps": steps,
            "runs": runs,
        }
        out.write_text(json.dumps(result))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_ranks(
    world: int,
    command: list[str],
    *,
    env: dict[str, str] | None = None,
    rank0_prefix: Sequence[str] = (),
    log: Path | None = None,
) -> None:
    """Run ``command`` in ``world`` processes with torchrun's variables, and wait for them.

    Rank 0's command line starts with ``rank0_prefix``; with ``log``, the output of each
    rank goes to ``LOG-RANK.log``, and is shown on failure.
    """
    base = {**(os.environ if env is None else env), "MASTER_ADDR": "127.0.0.1"}
    base.update(MASTER_PORT=str(_free_port()), WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    logs = [None if log is None else log.with_name(f"{log.name}-{r}.log") for r in range(world)]
    procs: list[subprocess.Popen[bytes]] = []
    for r, path in enumerate(logs):
        prefix = list(rank0_prefix) if r == 0 else []
        output = None if path is None else path.open("wb")
        procs.append(
            subprocess.Popen(
                prefix + command,
                env={**base, "RANK": str(r), "LOCAL_RANK": str(r)},
                stdout=output,
                stderr=None if output is None else subprocess.STDOUT,
            )
        )
        if output is not None:
            output.close()
    codes = [proc.wait(timeout=1800) for proc in procs]
    if any(codes):
        tails = [path.read_text()[-2000:] for path in logs if path is not None]
        raise SystemExit("\n".join([*tails, f"a worker failed with exit status {codes}"]))


def launch(world: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--worker", str(out)]
    command += ["--bs", str(args.bs), "--epochs", str(args.epochs), "--rounds", str(args.rounds)]
    start_ranks(world, command)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def epoch_instructions(
    world: int, name: str, args: argparse.Namespace, scratch: Path
) -> list[list[int]]:
    """For each epoch length of ``args.batches``: the instructions of ``args.windows``
    whole epochs on the main thread of rank 0 (one process trains a copy each)."""
    out = scratch / f"{name}-{world}.out"
    per_run = args.windows + 1  # the first holds the epoch in which instrumentation began
    command = instructions.worker_command(name, per_run + 2, args.batches, dumps=True)
    prefix = callgrind.command(out, threads=True)
    start_ranks(world, command, env=callgrind.environment(), rank0_prefix=prefix, log=out)
    counts = callgrind.parts(out, thread=1)
    if len(counts) != per_run * len(args.batches):
        raise SystemExit(f"{out}: {len(counts)} epochs counted, not {per_run} a run")
    return [counts[i + 1 : i + per_run] for i in range(0, len(counts), per_run)]


def costs(world: int, name: str, args: argparse.Namespace, scratch: Path) -> tuple[float, float]:
    """Instructions a step and once an epoch of contender ``name`` on ``world`` processes."""
    few, many = args.batches
    short, long = epoch_instructions(world, name, args, scratch)
    step = (statistics.mean(long) - statistics.mean(short)) / (many - few)
    return step, statistics.mean(short) - few * step


def count(args: argparse.Namespace) -> None:
    """The ``--instructions`` table: instructions a step and an epoch, on 1 and 2 processes."""
    if not callgrind.available():
        raise SystemExit(callgrind.NEEDED)
    names = ["plain", *(n for n in args.only if n != "plain")]
    few, many = args.batches
    print(f"instructions on rank 0 (callgrind): epochs of {few} and {many} steps a process")
    print(f"{'processes':<10} {'contender':<28} {'instr/step':>11} {'excess':>9} "
          f"{'instr/epoch':>12} {'excess':>10}")  # fmt: skip
    excess: dict[tuple[int, str], tuple[float, float]] = {}
    with tempfile.TemporaryDirectory() as scratch:
        for world in args.processes:
            found = {name: costs(world, name, args, Path(scratch)) for name in names}
            base_step, base_epoch = found["plain"]
            for name, (step, epoch) in found.items():
                excess[world, name] = (step - base_step, epoch - base_epoch)
                title = instructions.CONTENDERS[name][0]
                print(
                    f"{world:<10} {title:<28} {step:>11,.0f} {step - base_step:>+9,.0f} "
                    f"{epoch:>12,.0f} {epoch - base_epoch:>+10,.0f}",
                    flush=True,
                )
    for world in args.processes[1:]:
        for name in names[1:]:
            one_step, one_epoch = excess[args.processes[0], name]
            step, epoch = excess[world, name]
            print(f"{instructions.CONTENDERS[name][0]} on {world} processes: excess "
                  f"{step - one_step:+,.0f} a step, {epoch - one_epoch:+,.0f} an epoch over "
                  f"{args.processes[0]} process(es)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--bs", type=int, default=64, help="batch size per process (64)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs a round (4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (3)")
    parser.add_argument("--quick", action="store_true", help="1 epoch, 1 round")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="(1 2)")
    parser.add_argument(
        "--instructions", action="store_true", help="instructions a step (callgrind)"
    )
    parser.add_argument(
        "--batches", type=int, nargs=2, default=[16, 80], help="the two epoch lengths (16 80)"
    )
    parser.add_argument("--windows", type=int, default=4, help="epochs counted a run (4)")
    parser.add_argument("--only", nargs="+", choices=COUNTED, default=COUNTED, help="contenders")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.rounds = 1, 1
    if args.worker is not None:
        worker(args.bs, args.epochs, args.rounds, args.worker)
        return
    if args.instructions:
        if args.quick:
            args.processes, args.batches, args.windows = [2], [4, 12], 1
            args.only = ["plain", "trainbus"]
        count(args)
        return
    print(f"digits MLP, batches of {args.bs} per process, {args.epochs} epochs a round")
    print(f"{'processes':<10} {'contender':<10} {'samples/s':>10} {'µs/step':>9} {'overhead':>9}")
    with tempfile.TemporaryDirectory() as scratch:
        for world in args.processes:
            result = launch(world, args, Path(scratch) / f"world{world}.json")
            runs: dict[str, list[float]] = result["runs"]
            step_us = {k: [t / result["steps"] * 1e6 for t in v] for k, v in runs.items()}
            extra = [b - a for a, b in zip(step_us["plain"], step_us["trainbus"], strict=True)]
            for name in CONTENDERS:
                rate = result["samples"] / statistics.median(runs[name])
                cells = f"{rate:>10.0f} {statistics.median(step_us[name]):>9.0f}"
                over = f"{statistics.median(extra):>+9.0f}" if name == "trainbus" else ""
                print(f"{world:<10} {name:<10} {cells} {over}".rstrip())


if __name__ == "__main__":
    main()
