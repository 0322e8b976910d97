"""No per-batch device-to-host reads: the default callbacks move values only at epoch end.

Every Tensor method that reads a value back to the host (``item``, ``tolist``, ``cpu``,
``numpy``, ``bool(t)``, ``float(t)``, ``int(t)``, ``operator.index(t)``, ``format(t)``)
is replaced by a counting wrapper, and plain-function subscribers placed first and last
in every event note where each read happens: inside which event's dispatch, or in the
loop's own code between events. The fits run on the CPU and, where CUDA exists, on the GPU
too, with the data on the device and ``torch.cuda.set_sync_debug_mode("error")``, which
turns every synchronisation of the host with the GPU into an error.
"""

from __future__ import annotations

import contextlib
import io
import sys
from collections.abc import Callable, Generator, Iterator, Sequence
from typing import Final

import pytest
import torch
from torch import nn
from tqdm import tqdm

from trainbus import Callback, DataLoaders, Event, Learner
from trainbus.callbacks import ProgressCallback, TerminateOnNaNCallback
from trainbus.metrics import accuracy

SYNC_METHODS: Final = (
    "item", "tolist", "cpu", "numpy", "__bool__", "__float__", "__int__", "__index__",
    "__format__",
)  # fmt: skip
BATCH_EVENTS: Final = frozenset(
    {
        Event.begin_batch,
        Event.after_pred,
        Event.after_loss,
        Event.after_backward,
        Event.after_step,
        Event.after_batch,
        Event.after_cancel_batch,
    }
)
DEVICES: Final = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]
LOOP: Final = "loop"  # where a read happened outside every event's dispatch
OUTSIDE: Final = "outside"  # before begin_fit or after after_fit


class SyncLog:
    """Counts host reads, noting for each one the event whose dispatch was running."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.where: list[str] = []  # for each read: the event running, or LOOP / OUTSIDE
        self.calls: list[str] = []  # for each read: the method called
        self.current = OUTSIDE
        for name in SYNC_METHODS:
            original = getattr(torch.Tensor, name)
            monkeypatch.setattr(torch.Tensor, name, self._counted(name, original))

    def _counted(self, name: str, method: Callable[..., object]) -> Callable[..., object]:
        def wrapper(*args: object, **kwargs: object) -> object:
            self.where.append(self.current)
            self.calls.append(name)
            return method(*args, **kwargs)

        return wrapper

    def attach(self, learn: Learner) -> None:
        """Subscribe probes that run first and last in every event."""
        for event in Event:
            learn.subscribe(event, self._enter(event), order=-(10**6))
            learn.subscribe(event, self._leave(event), order=10**6)

    def _enter(self, event: Event) -> Callable[[Learner], None]:
        def enter(_: Learner) -> None:
            self.current = event.value

        return enter

    def _leave(self, event: Event) -> Callable[[Learner], None]:
        def leave(_: Learner) -> None:
            self.current = OUTSIDE if event is Event.after_fit else LOOP

        return leave

    def in_batches(self) -> list[str]:
        return [where for where in self.where if where in BATCH_EVENTS or where == LOOP]


def classifier(
    n_train: int, n_valid: int, cbs: Sequence[Callback] = (), device: str = "cpu"
) -> Learner:
    """Linear(4, 3) with cross-entropy and accuracy, on ``n_*`` shuffled batches of 5 rows.

    The data is on ``device`` (``from_tensors(device=...)``), as is the model.
    """
    g = torch.Generator().manual_seed(0)
    n, cut = 5 * (n_train + n_valid), 5 * n_train
    x, y = torch.randn(n, 4, generator=g), torch.randint(0, 3, (n,), generator=g)
    dls = DataLoaders.from_tensors(
        (x[:cut], y[:cut]), (x[cut:], y[cut:]), bs=5, valid_bs=5, seed=0, device=device
    )
    model = nn.Linear(4, 3)
    return Learner(
        model, dls, nn.functional.cross_entropy, cbs=cbs, metrics=[accuracy], device=device
    )


@contextlib.contextmanager
def no_device_sync(learn: Learner) -> Generator[None, None, None]:
    """On CUDA, make any host synchronisation an error inside the block (after a warm-up
    fit: CUDA initialises lazily); elsewhere, nothing."""
    if learn.device.type != "cuda":
        yield
        return
    learn.fit(1)
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode("default")


def fit_logged(monkeypatch: pytest.MonkeyPatch, learn: Learner, n_epoch: int = 2) -> SyncLog:
    with no_device_sync(learn):
        log = SyncLog(monkeypatch)
        log.attach(learn)
        learn.fit(n_epoch)
        monkeypatch.undo()
    return log


# --------------------------------------------------------------------------- tests


def test_the_counter_sees_every_kind_of_host_read(monkeypatch: pytest.MonkeyPatch) -> None:
    log = SyncLog(monkeypatch)
    t = torch.tensor([1.5])
    _ = t.item(), t.cpu(), t.numpy(), bool(t), float(t), int(t), f"{t[0]:.1f}"
    _ = t.tolist()  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]
    _ = [0, 1, 2][torch.tensor(2)]  # operator.index
    assert set(log.calls) == set(SYNC_METHODS)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("metrics", [True, False])
def test_reads_do_not_grow_with_the_number_of_batches(
    monkeypatch: pytest.MonkeyPatch, metrics: bool, device: str
) -> None:
    logs: list[SyncLog] = []
    for n_batches in (2, 7):
        learn = classifier(n_batches, n_batches, device=device)
        if not metrics:
            learn.metrics.clear()
        logs.append(fit_logged(monkeypatch, learn))
    few, many = logs
    assert many.calls == few.calls
    assert many.where == few.where


@pytest.mark.parametrize("device", DEVICES)
def test_default_callbacks_read_nothing_back_during_a_fit(
    monkeypatch: pytest.MonkeyPatch, device: str
) -> None:
    learn = classifier(4, 3, device=device)
    log = fit_logged(monkeypatch, learn, n_epoch=3)
    assert log.calls == []  # the per-epoch rows wait until they are read
    log = SyncLog(monkeypatch)
    values = learn.recorder.values
    assert log.calls == ["tolist"]  # every epoch's row, in one transfer
    assert len(values) == 3 and all(len(row) == 3 for row in values)
    assert learn.recorder.values is values and log.calls == ["tolist"]  # computed once


def test_unread_rows_are_computed_every_16_epochs(monkeypatch: pytest.MonkeyPatch) -> None:
    learn = classifier(1, 1)
    log = fit_logged(monkeypatch, learn, n_epoch=40)
    # Unread rows hold their validation tensors: they are computed in groups of 16.
    assert log.where == [Event.after_epoch.value] * 2
    assert len(learn.recorder.values) == 40


def test_a_shown_table_reads_each_row_at_its_epoch_end(monkeypatch: pytest.MonkeyPatch) -> None:
    learn = classifier(2, 2, cbs=[])
    learn.remove_cb(learn.get_cb(ProgressCallback))
    learn.add_cb(ProgressCallback(show=False, table=True))
    log = fit_logged(monkeypatch, learn, n_epoch=3)
    assert log.where == [Event.after_epoch.value] * 3


def test_recorded_values_reach_the_host_when_asked_for(monkeypatch: pytest.MonkeyPatch) -> None:
    learn = classifier(3, 2)
    learn.fit(2)
    log = SyncLog(monkeypatch)
    smooth = learn.smooth_loss  # a tensor: computed on the device, not read
    assert log.calls == []
    losses = learn.recorder.losses
    assert log.calls == ["tolist"]  # one transfer for all of them
    assert len(losses) == 6
    assert smooth.dim() == 0


def test_a_per_batch_read_is_seen_where_it_happens(monkeypatch: pytest.MonkeyPatch) -> None:
    # TerminateOnNaNCallback checks the loss on the host every training batch, by design:
    # the probes must catch that, or the tests above would prove nothing.
    learn = classifier(4, 2, cbs=[TerminateOnNaNCallback()])
    log = fit_logged(monkeypatch, learn)
    assert log.in_batches() == [Event.after_batch.value] * (2 * 4)


class FakeClock:
    """Stands in for tqdm's clock: each call returns ``step`` seconds more than the last."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 1000.0, step

    def __call__(self) -> float:
        self.now += self.step
        return self.now


@pytest.fixture
def updates(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[tuple[str, bool]]]:
    """For each tqdm.update call, in order: the bar's description, and whether it redrew."""
    seen: list[tuple[str, bool]] = []
    update = tqdm.update  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]

    def noted(bar: tqdm[object], n: float = 1) -> bool | None:
        redrawn = update(bar, n)
        seen.append((bar.desc, bool(redrawn)))
        return redrawn

    monkeypatch.setattr(tqdm, "update", noted)
    yield seen


@pytest.mark.parametrize("step", [0.0, 1.0], ids=["bar-never-redraws", "bar-redraws-always"])
def test_shown_progress_reads_the_loss_only_when_the_bar_redraws(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    updates: list[tuple[str, bool]],
    step: float,
) -> None:
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)  # where tqdm draws
    monkeypatch.setattr("tqdm.std.time", FakeClock(step))
    learn = classifier(4, 2)
    learn.remove_cb(learn.get_cb(ProgressCallback))  # the default one decides by the terminal
    learn.add_cb(ProgressCallback(show=True))
    log = SyncLog(monkeypatch)
    log.attach(learn)
    learn.fit(2)
    assert [desc for desc, _ in updates] == 2 * (["train"] * 4 + ["valid"] * 2 + ["epoch"])
    redraws = sum(redrawn for desc, redrawn in updates if desc == "train")
    assert redraws == (2 * 4 if step else 0)
    # One read (the smooth loss, for the bar's postfix) per redraw of a training bar.
    reads = [(where, call) for where, call in zip(log.where, log.calls, strict=True)]
    in_batches = [read for read in reads if read[0] in BATCH_EVENTS or read[0] == LOOP]
    assert in_batches == [(Event.after_batch.value, "item")] * redraws
    assert ("loss=" in stream.getvalue()) == bool(step)
    assert "train_loss" in capsys.readouterr().out  # the table of values was printed
