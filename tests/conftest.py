"""Shared helpers of the kernel tests: tiny data, a tiny learner, and a tracing callback.

Test modules import these (``from conftest import tiny_learner``): pytest puts ``tests/``
on ``sys.path``, and the helpers are plain functions so hypothesis tests can use them
without function-scoped fixtures.
"""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterable, Iterator
from typing import Final

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor
from typing_extensions import override

from trainbus import Callback, DataLoaders, Event, Learner

N_EPOCH: Final = 2
N_TRAIN: Final = 3  # training batches per epoch
N_VALID: Final = 2  # validation batches per epoch
BS: Final = 2

TraceEntry = tuple[str, Event, int, int, bool]
"""``(tag, event, epoch, iter, training)``, as a :class:`TraceCallback` sees it."""


def tiny_tensors(
    n_batches: int, bs: int = BS, *, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs (n, 2), targets (n, 1))`` for ``n = n_batches * bs``, from a seeded generator."""
    generator = torch.Generator().manual_seed(seed)
    n = n_batches * bs
    return torch.randn(n, 2, generator=generator), torch.randn(n, 1, generator=generator)


def tiny_dls(n_train: int = N_TRAIN, n_valid: int = N_VALID, bs: int = BS) -> DataLoaders:
    """Unshuffled batches of ``bs`` samples: ``n_train`` to train on, ``n_valid`` to validate."""
    return DataLoaders.from_tensors(
        tiny_tensors(n_train, bs, seed=1),
        tiny_tensors(n_valid, bs, seed=2),
        bs=bs,
        valid_bs=bs,
        shuffle=False,
    )


def tiny_model(seed: int = 0) -> nn.Linear:
    """``nn.Linear(2, 1)`` with weights drawn from a seeded generator (global RNG untouched)."""
    model = nn.Linear(2, 1)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, 2, generator=generator))
        model.bias.copy_(torch.randn(1, generator=generator))
    return model


def tiny_learner(
    cbs: Iterable[Callback] = (),
    *,
    n_train: int = N_TRAIN,
    n_valid: int = N_VALID,
    bs: int = BS,
    lr: float = 0.1,
    model: nn.Module | None = None,
) -> Learner:
    """A Learner of :func:`tiny_model` on :func:`tiny_dls` with MSE loss and SGD."""
    return Learner(
        model if model is not None else tiny_model(),
        tiny_dls(n_train, n_valid, bs),
        nn.functional.mse_loss,
        opt_func=torch.optim.SGD,
        lr=lr,
        cbs=list(cbs),
    )


def live_tensors() -> list[torch.Tensor]:
    """Every tensor object alive in this process that owns memory, after a collection.

    Fake tensors (left alive by ``torch.compile``'s tracing in this process) own none.
    """
    gc.collect()
    # type(), not isinstance(): some torch objects warn when their __class__ is read.
    tensors = [o for o in gc.get_objects() if issubclass(type(o), torch.Tensor)]
    return [t for t in tensors if not _is_fake(t)]


def _is_fake(tensor: torch.Tensor) -> bool:
    if issubclass(type(tensor), FakeTensor):
        return True
    # Other storage-less subclasses (functional tensors) raise here; some torch versions warn
    # first, and pytest turns warnings into errors, so the probe is made with them silenced.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            tensor.untyped_storage().data_ptr()
        except RuntimeError:  # "Cannot access data pointer of Tensor (e.g. FakeTensor, ...)"
            return True
    return False


def storage_bytes(tensors: list[torch.Tensor]) -> int:
    """Bytes of the distinct storages behind ``tensors``."""
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One intra-op thread and the global RNG restored after: every fit of a test does the
    same arithmetic (as the resume tests' subprocesses, which run with one thread)."""
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.set_rng_state(rng)


class TraceCallback(Callback):
    """Overrides every hook; each appends ``(tag, event, epoch, iter, training)`` to ``log``.

    Subclasses extend :meth:`_seen`, which runs after the entry is appended.
    """

    def __init__(self, log: list[TraceEntry], tag: str = "trace") -> None:
        self.log = log
        self.tag = tag

    def _record(self, event: Event) -> None:
        self.log.append((self.tag, event, self.epoch, self.iter, self.training))
        self._seen(event)

    def _seen(self, event: Event) -> None:
        """Called after every recorded event."""

    @override
    def begin_fit(self) -> None:
        self._record(Event.begin_fit)

    @override
    def begin_epoch(self) -> None:
        self._record(Event.begin_epoch)

    @override
    def begin_train(self) -> None:
        self._record(Event.begin_train)

    @override
    def begin_batch(self) -> None:
        self._record(Event.begin_batch)

    @override
    def after_pred(self) -> None:
        self._record(Event.after_pred)

    @override
    def after_loss(self) -> None:
        self._record(Event.after_loss)

    @override
    def after_backward(self) -> None:
        self._record(Event.after_backward)

    @override
    def after_step(self) -> None:
        self._record(Event.after_step)

    @override
    def after_batch(self) -> None:
        self._record(Event.after_batch)

    @override
    def after_train(self) -> None:
        self._record(Event.after_train)

    @override
    def begin_validate(self) -> None:
        self._record(Event.begin_validate)

    @override
    def after_validate(self) -> None:
        self._record(Event.after_validate)

    @override
    def after_epoch(self) -> None:
        self._record(Event.after_epoch)

    @override
    def after_fit(self) -> None:
        self._record(Event.after_fit)

    @override
    def after_cancel_batch(self) -> None:
        self._record(Event.after_cancel_batch)

    @override
    def after_cancel_train(self) -> None:
        self._record(Event.after_cancel_train)

    @override
    def after_cancel_valid(self) -> None:
        self._record(Event.after_cancel_valid)

    @override
    def after_cancel_epoch(self) -> None:
        self._record(Event.after_cancel_epoch)

    @override
    def after_cancel_fit(self) -> None:
        self._record(Event.after_cancel_fit)
