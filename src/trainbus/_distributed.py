"""Many processes: the process group, DistributedDataParallel for the fit, rank-zero
callbacks, the per-epoch reduction of recorded values, and failures that end every rank.

The Learner calls :func:`detect` once; everything here is inert on one process.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import math
import os
import time
from collections.abc import Callable, Generator, Sequence
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar, cast, final

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.constants import default_pg_timeout
from torch.distributed.distributed_c10d import PrefixStore
from torch.distributed.rendezvous import rendezvous  # pyright: ignore[reportUnknownVariableType]
from torch.nn.parallel import DistributedDataParallel

if TYPE_CHECKING:
    from ._callback import Callback
    from ._learner import Learner

__all__ = [
    "ENV_TIMEOUT",
    "Distributed",
    "RankFailedError",
    "announce_failure",
    "any_rank",
    "detect",
    "from_rank_zero",
    "gathered",
    "is_rank_zero",
    "reduced_row",
]

T = TypeVar("T")

ENV_TIMEOUT: Final = "TRAINBUS_DIST_TIMEOUT"
"""Seconds a collective may wait, for a group the Learner initialises (torch's default
otherwise)."""

# torchrun (and SLURM scripts that follow its conventions) set these.
_LAUNCH_VARS: Final = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")

_FAILED_KEY: Final = "trainbus/failed/"

# How long a rank whose collective failed waits for the rank that caused it to say so.
_FAILURE_WAIT_S: Final = 5.0


class RankFailedError(RuntimeError):
    """Another rank of the process group failed, so this one could not go on.

    Attributes:
        rank: The rank that failed first.
    """

    def __init__(self, message: str, rank: int) -> None:
        super().__init__(message)
        self.rank: int = rank


class _Store(Protocol):
    def set(self, key: str, value: str) -> None: ...
    def get(self, key: str) -> bytes: ...
    def check(self, keys: list[str]) -> bool: ...


def from_rank_zero(compute: Callable[[], T]) -> T:
    """``compute()`` on rank 0, broadcast to every rank (just ``compute()`` on one process).

    For a decision all ranks must share, such as which checkpoint to resume from. Every
    rank must call it. When ``compute`` raises on rank 0, rank 0 raises that error and
    the others a :class:`RankFailedError` naming it.
    """
    if not _grouped():
        return compute()
    box: list[object] = [None]
    failure: BaseException | None = None
    if dist.get_rank() == 0:
        try:
            box[0] = (True, compute())
        except Exception as error:
            failure = error
            box[0] = (False, f"{type(error).__name__}: {error}")
    dist.broadcast_object_list(box, src=0)
    if failure is not None:
        raise failure
    ok, value = cast("tuple[bool, Any]", box[0])
    if not ok:
        raise RankFailedError(f"rank 0 of {dist.get_world_size()} failed: {value}", 0)
    return cast("T", value)


def _grouped() -> bool:
    """Whether there is a default process group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def gathered(value: T) -> list[T] | None:
    """Every rank's ``value``, by rank, on rank 0 (``None`` on the others); ``[value]`` on
    one process.

    A collective (``gather_object``): every rank must call it at the same point. The
    values travel pickled, so give plain data with CPU tensors; rank 0's own is not copied.
    """
    if not _grouped():
        return [value]
    rank, size = dist.get_rank(), dist.get_world_size()
    # Rank 0 sends nothing: its own value is put in place as it is.
    sent: object = None if rank == 0 else value
    received: list[object] | None = None
    if rank == 0:
        received = [None for _ in range(size)]
    dist.gather_object(sent, received, dst=0)
    if received is None:
        return None
    received[0] = value
    return cast("list[T]", received)


def any_rank(flag: bool) -> bool:
    """Whether ``flag`` is true on any rank: one all-reduce (just ``flag`` on one process).

    A collective: every rank must call it at the same point.
    """
    if not _grouped():
        return flag
    total = torch.tensor([int(flag)], device=_collective_device())
    dist.all_reduce(total, op=dist.ReduceOp.MAX)  # pyright: ignore[reportUnknownMemberType]
    return bool(total.item())


def is_rank_zero() -> bool:
    """Whether this process is rank 0 of the default process group (or has none)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


@final
class Distributed:
    """The process group as a Learner sees it: ``world_size == 1`` on a single process.

    Attributes:
        rank: This process's rank (0 on a single process).
        world_size: Number of processes in the group (1 on a single process).
        owns_group: Whether the Learner initialised the group (from torchrun's
            environment) and so destroys it: when the process exits, or on failure.
        seed: Shuffle seed of the data shards, the same on every rank without a
            collective: 0, as ``DistributedSampler``'s (the epoch is added to it). A
            seeded ``DataLoaders.from_tensors`` shuffles with its own generator instead.
    """

    __slots__ = ("_ddp", "_wrapped", "owns_group", "rank", "seed", "world_size")

    def __init__(self, rank: int = 0, world_size: int = 1, *, owns_group: bool = False) -> None:
        self.rank: Final = rank
        self.world_size: Final = world_size
        self.owns_group: Final = owns_group
        self.seed: Final = 0
        self._ddp: DistributedDataParallel | None = None
        self._wrapped: nn.Module | None = None  # the model in _ddp

    @property
    def active(self) -> bool:
        """Whether there are other processes to train with."""
        return self.world_size > 1

    @property
    def ddp(self) -> DistributedDataParallel | None:
        """The wrapper of the model during a fit on many processes (``None`` otherwise)."""
        return self._ddp

    def wrap(self, model: nn.Module) -> DistributedDataParallel:
        """``model`` in a ``DistributedDataParallel`` (made once per model; it broadcasts
        rank 0's parameters and buffers, so every rank starts from the same weights)."""
        ddp = self._ddp
        if ddp is None or self._wrapped is not model:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            device_ids = [device] if device.type == "cuda" else None
            ddp = self._ddp = DistributedDataParallel(model, device_ids=device_ids)
            self._wrapped = model
        return ddp

    @contextlib.contextmanager
    def fit_scope(self, learn: Learner, forward: list[nn.Module]) -> Generator[None]:
        """Around a fit on many processes: the training forward pass goes through
        DistributedDataParallel (``forward``, read by the Learner's training batch),
        rank-zero-only callbacks hear nothing on other ranks (their stand-ins run in their
        places there), and a failure ends every rank.
        """
        muted = [] if self.rank == 0 else [cb for cb in learn.cbs if cb.rank_zero_only]
        stand_ins: list[tuple[Callback, Callback]] = []
        for cb in muted:
            stand_in = cb._stand_in()  # pyright: ignore[reportPrivateUsage]
            if stand_in is not None:
                stand_in.set_learner(learn)
                stand_ins.append((cb, stand_in))
        # Suspended on the bus but kept in learn.cbs: learn.get_cb still finds them.
        restore = learn.bus.suspend(muted, stand_ins)
        try:
            forward.append(self.wrap(learn.model))
            yield
        except BaseException as error:
            other = self._failure(error)
            if other is not None:
                raise other from error
            raise
        finally:
            forward.clear()
            restore()
            for _, stand_in in stand_ins:
                stand_in.set_learner(None)

    def _failure(self, error: BaseException) -> RankFailedError | None:
        """What to raise instead of ``error`` (``None``: ``error`` itself).

        When another rank published a failure (it may take a moment to, so a failed
        collective waits for it), this rank stopped because of it: a
        :class:`RankFailedError` names that rank. Otherwise this rank failed first: it
        notes its rank on ``error``, publishes it, and destroys the group it owns, so that
        the other ranks' collectives fail now rather than at the group's timeout.
        """
        store = _default_store()
        deadline = time.monotonic() + (_FAILURE_WAIT_S if _is_collective_error(error) else 0)
        while store is not None:
            for rank in range(self.world_size):
                if rank != self.rank and _check(store, _FAILED_KEY + str(rank)):
                    cause = _read(store, _FAILED_KEY + str(rank))
                    return RankFailedError(
                        f"rank {rank} of {self.world_size} failed: {cause} (this is rank "
                        f"{self.rank}, stopped by it: {type(error).__name__}: {error})",
                        rank,
                    )
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        error.add_note(f"trainbus: raised on rank {self.rank} of {self.world_size}")
        announce_failure(f"{type(error).__name__}: {error}")
        if self.owns_group:
            _destroy_group()
        return None


def announce_failure(cause: str) -> None:
    """Publish in the group's store that this rank ends because of ``cause``: the other
    ranks, whose next collective then fails, raise a :class:`RankFailedError` naming it."""
    store = _default_store()
    if store is not None:
        with contextlib.suppress(Exception):
            store.set(_FAILED_KEY + str(dist.get_rank()), cause)


def _is_collective_error(error: BaseException) -> bool:
    """Whether ``error`` looks like a collective that failed (a peer left or timed out)."""
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("gloo" in text or "NCCL" in text)


def _default_store() -> _Store | None:
    if not dist.is_initialized():
        return None
    get_store = getattr(dist.distributed_c10d, "_get_default_store", None)
    if get_store is None:
        return None
    try:
        return cast("_Store", get_store())
    except Exception:
        return None


def _check(store: _Store, key: str) -> bool:
    try:
        return store.check([key])
    except Exception:  # the store's host is gone
        return False


def _read(store: _Store, key: str) -> str:
    try:
        return store.get(key).decode(errors="replace")
    except Exception:
        return "(its message could not be read)"


def _destroy_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _launched() -> bool:
    """Whether torchrun (or a launcher that sets the same variables) started >1 process."""
    if not all(name in os.environ for name in _LAUNCH_VARS):
        return False
    try:
        return int(os.environ["WORLD_SIZE"]) > 1
    except ValueError:
        return False


def _timeout() -> datetime.timedelta | None:
    text = os.environ.get(ENV_TIMEOUT)
    if text is None:
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (seconds > 0 and math.isfinite(seconds)):
        raise ValueError(f"{ENV_TIMEOUT} must be a positive number of seconds, got {text!r}")
    return datetime.timedelta(seconds=seconds)


def _init_group() -> None:
    """Initialise the default group from the environment: NCCL for CUDA, Gloo for CPU."""
    backend = "gloo"
    if torch.cuda.is_available() and dist.is_nccl_available():
        backend = "cpu:gloo,cuda:nccl"
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = _timeout()
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None:
        if timeout is None:
            dist.init_process_group(backend)
        else:
            dist.init_process_group(backend, timeout=timeout)
    else:
        # torchrun keeps its store across restarts (--max-restarts), and a restarted Gloo
        # group would read the ended attempt's addresses from it and fail to connect: each
        # attempt's group keeps its keys apart.
        wait = default_pg_timeout if timeout is None else timeout
        handshake = rendezvous("env://", timeout=wait)
        store, rank, world_size = next(handshake)
        dist.init_process_group(
            backend,
            store=PrefixStore(f"trainbus/attempt_{attempt}", store),
            rank=rank,
            world_size=world_size,
            timeout=wait,
        )
    atexit.register(_destroy_group)


def detect() -> Distributed:
    """The process group to train with: the user's, or one started from torchrun's
    environment (then owned, and destroyed at exit), or none."""
    if not dist.is_available():
        return Distributed()
    owns = False
    if not dist.is_initialized():
        if not _launched():
            return Distributed()
        _init_group()
        owns = True
    return Distributed(dist.get_rank(), dist.get_world_size(), owns_group=owns)


def _collective_device() -> torch.device:
    """Where tensors of a collective live for the default group's backend."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _weighted_total(
    items: Sequence[tuple[torch.Tensor, int]], device: torch.device
) -> tuple[torch.Tensor, int]:
    if not items:
        return torch.zeros((), dtype=torch.float64, device=device), 0
    values = torch.stack([value for value, _ in items]).to(device, torch.float64)
    sizes = [n for _, n in items]
    weights = torch.tensor(sizes, dtype=torch.float64, device=device)
    return (values * weights).sum(), sum(sizes)


def reduced_row(
    train_losses: torch.Tensor,
    valid: Sequence[tuple[torch.Tensor, int]],
    metrics: Sequence[Sequence[tuple[torch.Tensor, int]]],
) -> list[float]:
    """One epoch's Recorder row over all ranks, with one all-reduce of sums and counts.

    Args:
        train_losses: This rank's recorded training losses of the epoch (batch means).
        valid: This rank's validation losses, with their batch sizes.
        metrics: Per metric, this rank's values with their batch sizes.

    Returns:
        ``train_loss`` (the mean of all ranks' batch losses), ``valid_loss`` and each
        metric (means over all ranks' samples): ``nan`` where no rank had a value.
    """
    device = _collective_device()
    sums = [train_losses.to(device, torch.float64).sum()]
    counts = [train_losses.shape[0]]
    for items in (valid, *metrics):
        total, count = _weighted_total(items, device)
        sums.append(total)
        counts.append(count)
    count_tensor = torch.tensor(counts, dtype=torch.float64, device=device)
    totals = torch.cat([torch.stack(sums), count_tensor])
    dist.all_reduce(totals)  # pyright: ignore[reportUnknownMemberType]
    # torch types tolist() as list[Any]: a 1-D float tensor gives floats.
    values = cast("list[float]", totals.tolist())  # pyright: ignore[reportUnknownMemberType]
    n = len(sums)
    return [s / c if c else math.nan for s, c in zip(values[:n], values[n:], strict=True)]
