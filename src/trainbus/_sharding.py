"""Data sharding by rank for a fit on many processes (see :mod:`trainbus._distributed`).

Training shards have the same number of batches on every rank (DistributedDataParallel
makes one all-reduce per batch, so a rank with a batch more would wait for ever): a
shard is padded with samples from the start of the epoch's order, as
``DistributedSampler`` does. Validation shards are not padded: each sample is validated
on exactly one rank, and the Recorder reduces sums and counts, so the validation loss and
metrics are those of the whole validation set, unbiased.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any, Final, cast, final

import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

from ._data import BatchSource, DataLoaders, TensorBatches

__all__ = ["ShardedBatches", "ShardedTensorBatches", "shard_dataloaders"]

EpochOf = Callable[[], int]
"""Returns the epoch being run: seeds the shuffle of a shard (``set_epoch``)."""

_SEED_MASK: Final = (1 << 63) - 1


def _padded_order(order: torch.Tensor, total: int) -> torch.Tensor:
    """``order`` extended to ``total`` entries by repeating it from its start."""
    n = order.shape[0]
    if total <= n:
        return order
    repeats = -(-total // n)
    return order.repeat(repeats)[:total]


@final
class ShardedTensorBatches:
    """One rank's share of a :class:`~trainbus.TensorBatches`: samples ``rank::world_size``.

    Each pass draws the same order as the unsharded batches would (their generator, so a
    seeded ``from_tensors`` gives every rank the same order; without one, a seed shared by
    the ranks plus the epoch) and keeps every ``world_size``-th sample from ``rank``. So
    the union of the ranks' ``k``-th batches is the ``k``-th batch of one process with
    ``world_size`` times the batch size. With ``pad`` (training), the order is first
    padded by repeating its start to a multiple of ``world_size``, so every rank has as
    many batches.

    Args:
        source: The batches to shard (its ``bs``, ``shuffle``, ``drop_last`` apply per rank).
        rank: This process's rank.
        world_size: Number of processes.
        pad: Give every rank as many samples (training).
        seed: Seed of the shuffle when ``source`` has no generator (the same on all ranks).
        epoch_of: The current epoch, added to ``seed``.
    """

    __slots__ = ("epoch_of", "pad", "rank", "seed", "source", "world_size")

    def __init__(
        self,
        source: TensorBatches,
        *,
        rank: int,
        world_size: int,
        pad: bool,
        seed: int,
        epoch_of: EpochOf,
    ) -> None:
        self.source: Final = source
        self.rank: Final = rank
        self.world_size: Final = world_size
        self.pad: Final = pad
        self.seed: Final = seed
        self.epoch_of: Final = epoch_of

    @property
    def generator(self) -> torch.Generator | None:
        """The generator the order is drawn from (``source``'s; a resumed fit restores it)."""
        return self.source.generator

    @property
    def n_samples(self) -> int:
        """Samples in this rank's shard."""
        n = self.source.tensors[0].shape[0]
        if self.pad:
            return -(-n // self.world_size)
        return len(range(self.rank, n, self.world_size))

    def __len__(self) -> int:
        m, bs = self.n_samples, self.source.bs
        return m // bs if self.source.drop_last else -(-m // bs)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        source = self.source
        first = source.tensors[0]
        n = first.shape[0]
        if source.shuffle:
            generator = source.generator
            if generator is None:
                seed = (self.seed + self.epoch_of()) & _SEED_MASK
                generator = torch.Generator().manual_seed(seed)
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        if self.pad:
            order = _padded_order(order, self.n_samples * self.world_size)
        index = order[self.rank :: self.world_size].to(first.device)
        tensors = tuple(t[index] for t in source.tensors)
        bs = source.bs
        for start in range(0, len(self) * bs, bs):
            yield tuple([t[start : start + bs] for t in tensors])


@final
class ShardedBatches:
    """One rank's share of any sized iterable of batches: batches ``rank::world_size``.

    Every rank iterates the whole source and keeps its share. With ``equal`` (training)
    each rank keeps ``len(source) // world_size`` batches, so all step as often (up to
    ``world_size - 1`` batches at the end of an epoch are left out).
    """

    __slots__ = ("equal", "rank", "source", "world_size")

    def __init__(self, source: BatchSource, *, rank: int, world_size: int, equal: bool) -> None:
        self.source: Final = source
        self.rank: Final = rank
        self.world_size: Final = world_size
        self.equal: Final = equal

    def __len__(self) -> int:
        n = len(self.source)
        return n // self.world_size if self.equal else len(range(self.rank, n, self.world_size))

    def __iter__(self) -> Iterator[Any]:
        keep = len(self)
        if keep == 0:
            return
        for i, batch in enumerate(self.source):
            if i % self.world_size == self.rank:
                yield batch
                keep -= 1
                if keep == 0:
                    return


class _EpochDistributedSampler(DistributedSampler[Any]):
    """A ``DistributedSampler`` that calls its own ``set_epoch`` at the start of each pass."""

    def __init__(self, dataset: Any, *, epoch_of: EpochOf, **kwargs: Any) -> None:
        super().__init__(dataset, **kwargs)  # pyright: ignore[reportUnknownMemberType]
        self._epoch_of = epoch_of

    def __iter__(self) -> Iterator[Any]:
        self.set_epoch(self._epoch_of())
        return super().__iter__()


@final
class _UnpaddedShardSampler(Sampler[int]):
    """Indices ``rank::world_size`` of a map-style dataset, in order: no sample twice."""

    def __init__(self, n: int, rank: int, world_size: int) -> None:
        self._indices = range(rank, n, world_size)

    def __len__(self) -> int:
        return len(self._indices)

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices)


# torchdata's StatefulDataLoader makes its own versions of torch's samplers (which keep
# their position): a shard re-makes them as it re-makes torch's.
_STATEFUL_SAMPLERS: Final = "torchdata.stateful_dataloader.sampler"


def _plain(sampler: object, kind: type) -> bool:
    """Whether ``sampler`` is torch's ``kind`` (or torchdata's version of it), not a custom one."""
    found = type(sampler)
    return found is kind or (
        found.__module__ == _STATEFUL_SAMPLERS and found.__name__ == kind.__name__
    )


def _shard_loader(
    loader: Any, name: str, *, rank: int, world_size: int, seed: int, epoch_of: EpochOf
) -> DataLoader[Any]:
    """``loader`` (a DataLoader: typed Any, as torch leaves several of its attributes' types
    partly unknown) re-made on this rank's share of its dataset, with the same settings."""
    sampler: object = loader.sampler
    new_sampler: Sampler[Any]
    if isinstance(sampler, _EpochDistributedSampler):  # sharded already
        same: DataLoader[Any] = loader
        return same
    if isinstance(sampler, DistributedSampler):  # sharded by the user: set_epoch is added
        new_sampler = _EpochDistributedSampler(
            loader.dataset,
            epoch_of=epoch_of,
            num_replicas=loader.sampler.num_replicas,
            rank=loader.sampler.rank,
            shuffle=loader.sampler.shuffle,
            seed=loader.sampler.seed,
            drop_last=loader.sampler.drop_last,
        )
    elif isinstance(loader.dataset, IterableDataset):
        raise ValueError(
            f"cannot shard the {name} DataLoader by rank: its dataset is an IterableDataset; "
            "split it by torch.distributed.get_rank() in the dataset itself"
        )
    elif not _plain(loader.batch_sampler, BatchSampler) or not (
        _plain(sampler, RandomSampler) or _plain(sampler, SequentialSampler)
    ):
        raise ValueError(
            f"cannot shard the {name} DataLoader by rank: it has a custom sampler or batch "
            f"sampler ({type(sampler).__name__}); give it a "
            "torch.utils.data.DistributedSampler yourself and the Learner will keep it"
        )
    elif name == "train":
        new_sampler = _EpochDistributedSampler(
            loader.dataset,
            epoch_of=epoch_of,
            num_replicas=world_size,
            rank=rank,
            shuffle=_plain(sampler, RandomSampler),
            seed=seed,
            drop_last=False,
        )
    else:
        n = len(loader.dataset)
        new_sampler = _UnpaddedShardSampler(n, rank, world_size)
    names = ("batch_size", "drop_last", "num_workers", "collate_fn", "pin_memory", "timeout",
             "worker_init_fn", "multiprocessing_context", "generator", "persistent_workers",
             "pin_memory_device")  # fmt: skip
    options: dict[str, Any] = {name: getattr(loader, name) for name in names}
    if loader.num_workers > 0:
        options["prefetch_factor"] = loader.prefetch_factor
    kind = cast("type[DataLoader[Any]]", type(loader))  # a StatefulDataLoader stays one
    try:
        return kind(loader.dataset, sampler=new_sampler, **options)
    except TypeError as error:
        raise ValueError(
            f"cannot shard the {name} {kind.__qualname__} by rank: it could not be re-made "
            f"with a DistributedSampler ({error}); give it a "
            "torch.utils.data.DistributedSampler yourself and the Learner will keep it"
        ) from error


def _shard(
    source: BatchSource, name: str, *, rank: int, world_size: int, seed: int, epoch_of: EpochOf
) -> BatchSource:
    train = name == "train"
    if isinstance(source, ShardedTensorBatches | ShardedBatches):
        return source
    if isinstance(source, TensorBatches):
        return ShardedTensorBatches(
            source, rank=rank, world_size=world_size, pad=train, seed=seed, epoch_of=epoch_of
        )
    if isinstance(source, DataLoader):
        return _shard_loader(
            source,
            name,
            rank=rank,
            world_size=world_size,
            seed=seed,
            epoch_of=epoch_of,
        )
    if train and 0 < len(source) < world_size:
        raise ValueError(
            f"cannot shard {len(source)} training batches over {world_size} processes: "
            "every rank needs at least one"
        )
    return ShardedBatches(source, rank=rank, world_size=world_size, equal=train)


def shard_dataloaders(
    dls: DataLoaders, *, rank: int, world_size: int, seed: int, epoch_of: EpochOf
) -> DataLoaders:
    """``dls`` with each loader replaced by this rank's shard.

    Args:
        dls: The loaders of one process.
        rank: This process's rank.
        world_size: Number of processes.
        seed: Shuffle seed, the same on every rank.
        epoch_of: The current epoch (``set_epoch``), read at the start of each pass.

    Raises:
        ValueError: A loader cannot be sharded (an iterable dataset, a custom sampler).
    """
    shards = [
        _shard(source, name, rank=rank, world_size=world_size, seed=seed, epoch_of=epoch_of)
        for name, source in (("train", dls.train), ("valid", dls.valid))
    ]
    return DataLoaders(shards[0], shards[1])
