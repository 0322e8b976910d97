"""Per-step cost of trainbus next to a plain PyTorch loop doing the same work.

Usage::

    python benchmarks/overhead.py            # the full run (about half a minute)
    python benchmarks/overhead.py --quick    # a smoke run (a few seconds; figures are rough)
    python benchmarks/overhead.py --check    # exit status 1 when a target is missed

Each contender trains its own copy of the same model (same initial weights) on the same
data, in one process with ``torch.set_num_threads(1)``. Contenders take turns: every
round runs each of them once (the order rotated from round to round), and the table
shows medians over the rounds. ``µs/step`` is the median time per step; ``overhead`` and
``ratio`` are medians of the per-round differences and ratios to the plain loop of the
same round, which cancels the slow drifts of a shared machine; ``±`` is half the
interquartile range of those differences. A second copy of the plain loop (the control)
shows how far apart two identical loops measure on the machine at hand.

A step is one training batch; where the workload has a validation set, a step's time
includes its share of the validation pass (run by every contender, under ``no_grad``).

Workloads:

(a) zero-work: ``nn.Linear(32, 10)`` on 1-row batches, 64 batches an epoch, over
    ``DataLoader(TensorDataset)`` on both sides: what is left is the loop's own cost.
(b) mlp: a small MLP on 64-row batches over ``DataLoader(TensorDataset)`` on both sides.
(c) mlp, trainbus over ``DataLoaders.from_tensors`` against the plain loop over
    ``DataLoader(TensorDataset)``: the end-to-end figure a user sees.

Ignite, Lightning and fastai join the table when they are importable (none of them is
a dependency). The ``syncs/step`` column counts device-to-host reads per training step
(``Tensor.item``, ``.tolist``, ``.cpu``, ``bool(t)``, ...), measured in one separate run.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import gc
import importlib
import io
import logging
import statistics
import sys
import time
import warnings
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, final

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from trainbus import DataLoaders, Learner

Timed = Callable[[], None]
"""One timed training run."""

Runner = Callable[[int], Timed]
"""Prepares (untimed) a run of the given number of epochs."""

LR: Final = 0.01
ZERO_WORK_TARGET_US: Final = 10.0
MLP_RATIO_TARGET: Final = 1.03

# Tensor methods that read a value back to the host (a device sync on an accelerator).
SYNC_METHODS: Final = (
    "item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__",
    "__format__",
)  # fmt: skip


@final
@dataclass(frozen=True)
class Workload:
    """A model, its data, and how it is batched."""

    name: str
    title: str
    model: Callable[[], nn.Module]
    n_train: int
    bs: int
    n_valid: int
    valid_bs: int
    n_in: int = 32
    n_out: int = 10
    shuffle: bool = False
    tensors: tuple[torch.Tensor, ...] = field(init=False, repr=False)
    template: nn.Module = field(init=False, repr=False)

    def __post_init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        n = self.n_train + self.n_valid
        x = torch.randn(n, self.n_in, generator=g)
        y = torch.randint(0, self.n_out, (n,), generator=g)
        object.__setattr__(self, "tensors", (x, y))
        object.__setattr__(self, "template", self.model())

    @property
    def n_batches(self) -> int:
        """Training batches an epoch."""
        return -(-self.n_train // self.bs)

    @property
    def train(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.tensors
        return x[: self.n_train], y[: self.n_train]

    @property
    def valid(self) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = self.tensors
        return x[self.n_train :], y[self.n_train :]

    def fresh_model(self) -> nn.Module:
        """The model, with the same initial weights every time."""
        return copy.deepcopy(self.template)

    def torch_loaders(self) -> tuple[DataLoader[Any], DataLoader[Any] | None]:
        """Plain ``DataLoader(TensorDataset)`` s for training and validation."""
        train = DataLoader(TensorDataset(*self.train), batch_size=self.bs, shuffle=self.shuffle)
        if not self.n_valid:
            return train, None
        return train, DataLoader(TensorDataset(*self.valid), batch_size=self.valid_bs)


def _mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(32, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(),
                         nn.Linear(128, 10))  # fmt: skip


ZERO_WORK: Final = Workload(
    "zero-work",
    "(a) zero-work: nn.Linear(32, 10), 1-row batches, 64 batches an epoch, no validation",
    lambda: nn.Linear(32, 10),
    n_train=64,
    bs=1,
    n_valid=0,
    valid_bs=1,
)
MLP: Final = Workload(
    "mlp",
    "(b) MLP 32-128-128-10, 64-row batches (64 an epoch, shuffled), validation 8 x 128 rows",
    _mlp,
    n_train=64 * 64,
    bs=64,
    n_valid=1024,
    valid_bs=128,
    shuffle=True,
)


# ------------------------------------------------------------------------- contenders


def plain_loop(w: Workload) -> Runner:
    """forward, loss, backward, step, zero_grad; validation forward and loss under no_grad."""
    model = w.fresh_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    loss_func = nn.functional.cross_entropy
    train_dl, valid_dl = w.torch_loaders()

    def train(n_epoch: int) -> None:
        for _ in range(n_epoch):
            model.train()
            for xb, yb in train_dl:
                loss = loss_func(model(xb), yb)
                loss.backward()  # pyright: ignore[reportUnknownMemberType]
                opt.step()  # pyright: ignore[reportUnknownMemberType]
                opt.zero_grad()
            if valid_dl is not None:
                model.eval()
                with torch.no_grad():
                    for xb, yb in valid_dl:
                        loss_func(model(xb), yb)

    return lambda n_epoch: lambda: train(n_epoch)


def _learner(w: Workload, dls: DataLoaders) -> Runner:
    learn = Learner(w.fresh_model(), dls, nn.functional.cross_entropy, lr=LR)
    return lambda n_epoch: lambda: learn.fit(n_epoch)


def trainbus_torch_data(w: Workload) -> Runner:
    """``Learner.fit`` with the default callbacks, over the same ``DataLoader`` s."""
    train_dl, valid_dl = w.torch_loaders()
    return _learner(w, DataLoaders(train_dl, valid_dl))


def trainbus_tensor_data(w: Workload) -> Runner:
    """``Learner.fit`` with the default callbacks, over ``DataLoaders.from_tensors``."""
    dls = DataLoaders.from_tensors(
        w.train, w.valid if w.n_valid else None, bs=w.bs, valid_bs=w.valid_bs,
        shuffle=w.shuffle, seed=0,
    )  # fmt: skip
    return _learner(w, dls)


def _optional(name: str) -> Any:
    """The module ``name``, or ``None`` when it is not installed."""
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def ignite_loop(w: Workload) -> Runner | None:
    """Ignite's ``create_supervised_trainer`` (and evaluator, when there is validation)."""
    engine: Any = _optional("ignite.engine")
    if engine is None:
        return None
    model = w.fresh_model()
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    trainer = engine.create_supervised_trainer(model, opt, nn.functional.cross_entropy)
    train_dl, valid_dl = w.torch_loaders()
    if valid_dl is not None:
        evaluator = engine.create_supervised_evaluator(model)

        def validate(_: object) -> None:
            evaluator.run(valid_dl)

        trainer.add_event_handler(engine.Events.EPOCH_COMPLETED, validate)

    return lambda n_epoch: lambda: trainer.run(train_dl, max_epochs=n_epoch)


def lightning_loop(w: Workload) -> Runner | None:
    """A ``LightningModule`` fitted by a ``Trainer`` with logging, bars and checkpoints off."""
    pl: Any = _optional("lightning.pytorch") or _optional("pytorch_lightning")
    if pl is None:
        return None
    model = w.fresh_model()

    class Module(pl.LightningModule):  # type: ignore[misc]  # Any base
        def __init__(self) -> None:
            super().__init__()  # pyright: ignore[reportUnknownMemberType]
            self.net = model

        def training_step(self, batch: Sequence[torch.Tensor], _: int) -> torch.Tensor:
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def validation_step(self, batch: Sequence[torch.Tensor], _: int) -> torch.Tensor:
            return nn.functional.cross_entropy(self.net(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=LR)

    module = Module()
    train_dl, valid_dl = w.torch_loaders()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)  # its set-up notices

    def prepare(n_epoch: int) -> Timed:
        # A Trainer is built per fit, outside the timing; what trainer.fit does is timed.
        trainer = pl.Trainer(
            max_epochs=n_epoch, accelerator="cpu", devices=1, logger=False,
            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
            num_sanity_val_steps=0,
        )  # fmt: skip

        def fit() -> None:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                trainer.fit(module, train_dl, valid_dl)

        return fit

    return prepare


def fastai_loop(w: Workload) -> Runner | None:
    """A fastai ``Learner`` over the same ``DataLoader`` s, bar and logging off."""
    basics: Any = _optional("fastai.basics")
    if basics is None:
        return None
    train_dl, valid_dl = w.torch_loaders()
    dls = basics.DataLoaders(train_dl, valid_dl if valid_dl is not None else [])
    learn = basics.Learner(
        dls, w.fresh_model(), loss_func=nn.functional.cross_entropy, opt_func=basics.SGD,
        lr=LR, cbs=[],
    )  # fmt: skip

    def fit(n_epoch: int) -> None:
        with learn.no_bar(), learn.no_logging():
            learn.fit(n_epoch)

    return lambda n_epoch: lambda: fit(n_epoch)


@final
@dataclass(frozen=True)
class Contender:
    label: str
    build: Callable[[Workload], Runner | None]


PLAIN: Final = Contender("plain PyTorch loop", plain_loop)
# The same plain loop again, with its own model and loaders: its "overhead" is the
# measurement's own bias and noise on this machine (an A/A test).
CONTROL: Final = Contender("plain loop again (control)", plain_loop)
TRAINBUS: Final = Contender("trainbus Learner.fit", trainbus_torch_data)
TRAINBUS_TENSORS: Final = Contender("trainbus, from_tensors", trainbus_tensor_data)
FRAMEWORKS: Final = (
    Contender("Ignite", ignite_loop),
    Contender("Lightning", lightning_loop),
    Contender("fastai", fastai_loop),
)


# -------------------------------------------------------------------------- measuring


@contextlib.contextmanager
def counting_syncs() -> Generator[list[int]]:
    """Count calls of the Tensor methods that read values back to the host."""
    count = [0]
    originals = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS}

    def counted(method: Callable[..., object]) -> Callable[..., object]:
        def wrapper(*args: object, **kwargs: object) -> object:
            count[0] += 1
            return method(*args, **kwargs)

        return wrapper

    for name, method in originals.items():
        setattr(torch.Tensor, name, counted(method))
    try:
        yield count
    finally:
        for name, method in originals.items():
            setattr(torch.Tensor, name, method)


@final
@dataclass
class Entry:
    label: str
    run: Runner
    seconds: list[float] = field(default_factory=list[float])  # per step, one a round
    syncs: float = 0.0


def measure(
    w: Workload, contenders: Sequence[Contender], *, rounds: int, epochs: int
) -> list[Entry]:
    """Interleaved timing: each round runs every contender for ``epochs`` epochs."""
    entries: list[Entry] = []
    for contender in contenders:
        run = contender.build(w)
        if run is not None:
            entries.append(Entry(contender.label, run))
    for entry in entries:
        entry.run(1)()  # warm-up: first-call costs (lazy init, allocator) are not per-step costs
        timed = entry.run(1)
        with counting_syncs() as count:
            timed()
        entry.syncs = count[0] / w.n_batches
    # What exists now (torch's objects, mostly) stays out of the collections from here on,
    # so that the collection before each run is quick and no run pays for a full one.
    gc.collect()
    gc.freeze()
    order = list(entries)
    try:
        for _ in range(rounds):
            for entry in order:
                timed = entry.run(epochs)
                gc.collect()
                start = time.perf_counter()
                timed()
                entry.seconds.append((time.perf_counter() - start) / (epochs * w.n_batches))
            order = order[1:] + order[:1]
    finally:
        gc.unfreeze()
    return entries


@final
@dataclass(frozen=True)
class Row:
    """One line of a table: µs per step (median), and its median excess over the baseline."""

    label: str
    us: float
    ratio: float
    overhead_us: float
    spread_us: float  # half the interquartile range of the per-round differences
    syncs: float


def summarize(entries: Sequence[Entry]) -> list[Row]:
    """Medians; the overhead is the median of the per-round differences to the first entry.

    Pairing each run with the baseline's run of the same round cancels the slow drifts of
    a shared machine's load, which the difference of two medians keeps.
    """
    base = entries[0]
    rows: list[Row] = []
    for entry in entries:
        us = statistics.median(entry.seconds) * 1e6
        paired = [a - b for a, b in zip(entry.seconds, base.seconds, strict=True)]
        over = statistics.median(paired) * 1e6
        quartiles = statistics.quantiles(paired, n=4) if len(paired) > 1 else [0.0, 0.0, 0.0]
        spread = (quartiles[2] - quartiles[0]) / 2 * 1e6
        ratio = statistics.median(a / b for a, b in zip(entry.seconds, base.seconds, strict=True))
        rows.append(Row(entry.label, us, ratio, over, spread, entry.syncs))
    return rows


def report(title: str, rows: Sequence[Row]) -> None:
    print(title)
    header = (
        f"{'µs/step':>9}{'ratio':>7}{'overhead µs/step':>18}{'± (IQR/2)':>11}{'syncs/step':>12}"
    )
    print(f"  {'loop':<26}{header}")
    for k, row in enumerate(rows):
        over, spread = (f"{row.overhead_us:+.1f}", f"{row.spread_us:.1f}") if k else ("", "")
        print(
            f"  {row.label:<26}{row.us:>9.1f}{row.ratio:>7.3f}{over:>18}{spread:>11}"
            f"{row.syncs:>12.2f}"
        )
    print()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="few rounds: a smoke run")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 60, quick 5)")
    parser.add_argument("--check", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    rounds: int = args.rounds or (5 if args.quick else 60)
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, Python {sys.version.split()[0]}, 1 thread, "
          f"{rounds} interleaved rounds, medians\n")  # fmt: skip

    zero = summarize(
        measure(ZERO_WORK, [PLAIN, TRAINBUS, CONTROL, *FRAMEWORKS], rounds=rounds, epochs=2)
    )
    report(ZERO_WORK.title, zero)
    mlp = summarize(
        measure(
            MLP, [PLAIN, TRAINBUS, TRAINBUS_TENSORS, CONTROL, *FRAMEWORKS], rounds=rounds, epochs=1
        )
    )
    report(MLP.title + "\n(c) = trainbus over from_tensors", mlp)

    overhead, ratio, tensors = zero[1].overhead_us, mlp[1].ratio, mlp[2].ratio
    checks = [
        (f"(a) overhead {overhead:.1f} µs/step <= {ZERO_WORK_TARGET_US:.0f}",
         overhead <= ZERO_WORK_TARGET_US),
        (f"(b) MLP ratio {ratio:.3f} <= {MLP_RATIO_TARGET}", ratio <= MLP_RATIO_TARGET),
        (f"(c) from_tensors ratio {tensors:.3f} < 1", tensors < 1),
    ]  # fmt: skip
    for text, ok in checks:
        print(f"  {'met   ' if ok else 'MISSED'} {text}")
    return 1 if args.check and not all(ok for _, ok in checks) else 0


if __name__ == "__main__":
    sys.exit(main())
