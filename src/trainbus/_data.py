"""Data: the train/valid pair the Learner iterates, and a fast in-memory batcher."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol, final, runtime_checkable

import torch

from ._checks import checked_int
from ._devices import DeviceLike, resolve_device, to_device

__all__ = ["BatchSource", "DataLoaders", "TensorBatches"]


@runtime_checkable
class BatchSource(Protocol):
    """A sized iterable of batches: a ``torch.utils.data.DataLoader``, a list, ...

    Each batch is a tuple or list of tensors: the model's inputs, then the targets.
    """

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Any]: ...


@final
class TensorBatches:
    """Batches cut from whole tensors by slicing: no per-sample indexing, no collation.

    With ``shuffle``, the tensors are permuted once per pass (one gather each) and then
    sliced, so each batch is a view. Iterating yields ``tuple[Tensor, ...]`` with one
    element per tensor given.

    Args:
        tensors: Tensors with the same first dimension (samples).
        bs: Batch size (the last batch may be smaller unless ``drop_last``).
        shuffle: Permute the samples at the start of every pass.
        drop_last: Leave out a last, smaller batch.
        generator: Random source of the permutation (for reproducible runs).
    """

    __slots__ = ("bs", "drop_last", "generator", "shuffle", "tensors")

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        *,
        bs: int,
        shuffle: bool = False,
        drop_last: bool = False,
        generator: torch.Generator | None = None,
    ) -> None:
        tensors = tuple(tensors)
        # Checks of what the annotations promise: callers without a type checker exist.
        if not tensors or not all(isinstance(t, torch.Tensor) for t in tensors):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError("TensorBatches needs one or more tensors")
        sizes = {t.shape[0] if t.dim() else None for t in tensors}
        if len(sizes) != 1 or None in sizes:
            shapes = ", ".join(str(tuple(t.shape)) for t in tensors)
            raise ValueError(
                f"TensorBatches needs tensors with the same first dimension (one row per "
                f"sample); got shapes {shapes}"
            )
        self.tensors: tuple[torch.Tensor, ...] = tensors
        self.bs: int = checked_int("bs", bs)
        self.shuffle: bool = shuffle
        self.drop_last: bool = drop_last
        self.generator: torch.Generator | None = generator

    def __len__(self) -> int:
        n = self.tensors[0].shape[0]
        return n // self.bs if self.drop_last else -(-n // self.bs)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        tensors = self.tensors
        if self.shuffle:
            first = tensors[0]
            perm = torch.randperm(first.shape[0], generator=self.generator)
            # Drawn on the CPU (the generator's device, and the same order on every
            # device); copied without waiting, so a GPU-resident set costs no host sync.
            perm = perm.to(first.device, non_blocking=True)
            tensors = tuple(t[perm] for t in tensors)
        bs = self.bs
        for start in range(0, len(self) * bs, bs):
            stop = start + bs
            yield tuple([t[start:stop] for t in tensors])


@final
class DataLoaders:
    """The training and validation batch sources of a fit.

    Args:
        train: Batches for the training phase.
        valid: Batches for the validation phase (``None``: validation has no batches).
    """

    __slots__ = ("train", "valid")

    def __init__(self, train: BatchSource, valid: BatchSource | None = None) -> None:
        for name, source in (("train", train), ("valid", valid)):
            # Checked although annotated: callers without a type checker exist.
            if source is not None and not isinstance(source, BatchSource):  # pyright: ignore[reportUnnecessaryIsInstance]
                raise TypeError(
                    f"DataLoaders {name} must be a sized iterable of batches (len() and "
                    f"iteration), got {type(source).__qualname__}"
                )
        self.train: BatchSource = train
        self.valid: BatchSource = valid if valid is not None else ()

    def __repr__(self) -> str:
        return f"DataLoaders(train={len(self.train)} batches, valid={len(self.valid)} batches)"

    @classmethod
    def from_tensors(
        cls,
        train: Sequence[torch.Tensor],
        valid: Sequence[torch.Tensor] | None = None,
        *,
        bs: int = 64,
        valid_bs: int | None = None,
        shuffle: bool = True,
        seed: int | None = None,
        device: DeviceLike | None = None,
    ) -> DataLoaders:
        """Batches sliced from in-memory tensors: the fast path for data that fits.

        Args:
            train: ``(inputs, ..., targets)`` of the training set.
            valid: The same for the validation set.
            bs: Training batch size.
            valid_bs: Validation batch size (default: twice ``bs``, as it needs no grads).
            shuffle: Shuffle the training set every epoch (validation is never shuffled).
            seed: Seed of the shuffling, for reproducible runs.
            device: Move the tensors there once (``"cuda"``, ``"mps"``, ...): the whole
                data set stays on the device, and batches are views of it, so no batch
                is copied during the fit. ``None``: leave them where they are.

        Raises:
            ValueError: ``device`` is unknown or not available on this machine.
        """
        bs = checked_int("bs", bs)
        if device is not None:
            target = resolve_device(device)
            train = to_device(list(train), target)
            valid = None if valid is None else to_device(list(valid), target)
        valid_bs = 2 * bs if valid_bs is None else checked_int("valid_bs", valid_bs)
        generator = None
        if seed is not None:
            generator = torch.Generator().manual_seed(seed)
        train_batches = TensorBatches(train, bs=bs, shuffle=shuffle, generator=generator)
        valid_batches = None if valid is None else TensorBatches(valid, bs=valid_bs)
        return cls(train_batches, valid_batches)
