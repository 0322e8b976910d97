"""Memory: a fit keeps what it records and nothing else, and holds no batch once it returns."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from itertools import pairwise

import pytest
import torch
from torch import nn
from typing_extensions import override

from conftest import live_tensors, storage_bytes
from trainbus import Callback, CancelFitException, DataLoaders, Learner
from trainbus.callbacks import ProgressCallback, Recorder
from trainbus.metrics import accuracy


def classifier(
    n_train: int, n_valid: int = 2, bs: int = 4, cbs: list[Callback] | None = None
) -> Learner:
    g = torch.Generator().manual_seed(0)
    n, cut = bs * (n_train + n_valid), bs * n_train
    x, y = torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)
    dls = DataLoaders.from_tensors((x[:cut], y[:cut]), (x[cut:], y[cut:]), bs=bs, seed=0)
    return Learner(nn.Linear(6, 3), dls, nn.functional.cross_entropy, cbs=cbs, metrics=[accuracy])


class EpochCensus(Callback):
    """At the end of every epoch (after the Recorder), counts live tensors and their bytes."""

    run_after = (Recorder, ProgressCallback)

    def __init__(self) -> None:
        self.counts: list[int] = []
        self.bytes: list[int] = []

    @override
    def after_epoch(self) -> None:
        tensors = live_tensors()
        self.counts.append(len(tensors))
        self.bytes.append(storage_bytes(tensors))
        del tensors


@pytest.mark.parametrize("n_train", [3, 12])
def test_memory_grows_across_epochs_by_the_recorded_losses_only(n_train: int) -> None:
    census = EpochCensus()
    learn = classifier(n_train, n_valid=2, cbs=[census])
    learn.fit(5)
    # Each epoch adds its training losses and, until its row of `values` is read, its
    # validation losses and metric values: one float32 tensor each.
    per_epoch = n_train + len(learn.dls.valid) * (1 + len(learn.metrics))
    assert [b - a for a, b in pairwise(census.counts)] == [per_epoch] * 4
    assert [b - a for a, b in pairwise(census.bytes)] == [4 * per_epoch] * 4
    assert len(learn.recorder.values) == 5
    # Read, the rows release their validation tensors and the 0-d losses become one
    # 1-D tensor; the fit's views of the 2 parameters (see _accumulator_anchors) are gone.
    after = live_tensors()
    assert len(after) == census.counts[-1] - 5 * per_epoch + 1 - 2
    assert storage_bytes(after) == census.bytes[-1] - 4 * 5 * per_epoch + 4 * 5 * n_train
    del after


def test_a_long_epoch_keeps_its_recorded_losses_compact() -> None:
    counts: list[int] = []

    class MidEpochCensus(Callback):
        run_after = (Recorder, ProgressCallback)

        @override
        def after_batch(self) -> None:
            if self.training and self.iter in (299, 599):
                counts.append(len(live_tensors()))

    learn = classifier(600, bs=1, cbs=[MidEpochCensus()])
    learn.fit(1)
    # 300 batches later, the 0-d losses of 256 batches were stacked into one tensor.
    assert counts[1] - counts[0] == 300 - 256 + 1
    assert len(learn.recorder.losses) == 600


def test_repeated_fits_do_not_accumulate_tensors() -> None:
    learn = classifier(5)
    learn.fit(2)
    after_first = len(live_tensors())
    learn.fit(2)
    learn.fit(2)
    assert len(live_tensors()) == after_first


class BatchRefs(Callback):
    """Weak references to the tensors of the last batch of each phase that ran."""

    run_after = (Recorder, ProgressCallback)

    def __init__(self) -> None:
        self.refs: dict[str, weakref.ref[torch.Tensor]] = {}

    def keep(self) -> None:
        phase = "train" if self.training else "valid"
        tensors = {"x": self.x, "y": self.y, "pred": self.pred, "loss": self.loss}
        for name, tensor in tensors.items():
            self.refs[f"{phase}.{name}"] = weakref.ref(tensor)

    @override
    def after_batch(self) -> None:
        self.keep()

    def alive(self) -> list[str]:
        gc.collect()
        return [name for name, ref in self.refs.items() if ref() is not None]


def test_no_batch_tensor_is_held_after_fit() -> None:
    refs = BatchRefs()
    learn = classifier(3, cbs=[refs])
    learn.fit(2)
    assert sorted(refs.refs) == sorted(
        f"{phase}.{name}" for phase in ("train", "valid") for name in ("x", "y", "pred", "loss")
    )
    assert refs.alive() == []
    assert learn.recorder.losses  # ... while the recorded values are kept


class Boom(RuntimeError):
    pass


class RaiseInBatch(BatchRefs):
    """Keeps references to the batch in flight, then raises ``error()`` in ``after_loss``."""

    def __init__(self, error: Callable[[], BaseException]) -> None:
        super().__init__()
        self.error = error

    @override
    def after_batch(self) -> None:
        pass

    @override
    def after_loss(self) -> None:
        if self.training and self.iter == 1:
            self.keep()
            raise self.error()


def test_no_batch_tensor_is_held_after_a_fit_that_raised() -> None:
    refs = RaiseInBatch(lambda: Boom("in after_loss"))
    learn = classifier(3, cbs=[refs])
    try:
        learn.fit(2)
    except Boom:
        pass  # the traceback's frames (which see the batch) go with the exception
    else:
        pytest.fail("fit did not raise")
    assert len(refs.refs) == 4
    assert refs.alive() == []


def test_no_batch_tensor_is_held_after_a_cancelled_fit() -> None:
    refs = RaiseInBatch(CancelFitException)
    learn = classifier(3, cbs=[refs])
    learn.fit(2)
    assert len(refs.refs) == 4
    assert refs.alive() == []
