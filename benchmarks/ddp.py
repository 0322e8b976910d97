"""Training throughput on 1 and 2 processes: trainbus next to a plain (DDP) loop.

Usage::

    python benchmarks/ddp.py             # 1 and 2 processes, 4 epochs a round, 3 rounds
    python benchmarks/ddp.py --quick     # a smoke run (1 epoch a round, 1 round)

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

CONTENDERS: Final = ("plain", "trainbus")


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


def launch(world: int, args: argparse.Namespace, out: Path) -> dict[str, Any]:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
    env.update(WORLD_SIZE=str(world), OMP_NUM_THREADS="1")
    command = [sys.executable, __file__, "--worker", str(out)]
    command += ["--bs", str(args.bs), "--epochs", str(args.epochs), "--rounds", str(args.rounds)]
    procs = [
        subprocess.Popen(command, env={**env, "RANK": str(r), "LOCAL_RANK": str(r)})
        for r in range(world)
    ]
    codes = [proc.wait(timeout=900) for proc in procs]
    if any(codes):
        raise SystemExit(f"a worker failed with exit status {codes}")
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--bs", type=int, default=64, help="batch size per process (64)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs a round (4)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (3)")
    parser.add_argument("--quick", action="store_true", help="1 epoch, 1 round")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quick:
        args.epochs, args.rounds = 1, 1
    if args.worker is not None:
        worker(args.bs, args.epochs, args.rounds, args.worker)
        return
    print(f"digits MLP, batches of {args.bs} per process, {args.epochs} epochs a round")
    print(f"{'processes':<10} {'contender':<10} {'samples/s':>10} {'µs/step':>9} {'overhead':>9}")
    with tempfile.TemporaryDirectory() as scratch:
        for world in (1, 2):
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
