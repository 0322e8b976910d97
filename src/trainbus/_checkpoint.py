"""The checkpoint file: what it holds, how it is written, read and checked against a learner.

A checkpoint is a ``dict`` saved with ``torch.save`` and read with
``torch.load(weights_only=True)`` (no code runs on load)::

    {"trainbus_checkpoint": FORMAT_VERSION,
     "model": model.state_dict(),            # of the unwrapped module (no torch.compile prefix)
     "opt": opt.state_dict(), "opt_type": "torch.optim.sgd.SGD",   # unless with_opt=False
     "train": {...},                         # training checkpoints only (see _resume.py)
     "world_size": 2, "ranks": [{...}, ...]} # and on many processes, every rank's entry

``learn.save`` writes it so (``torch.load(path)["model"]`` is a plain state dict). The
Checkpoint callback writes training checkpoints packed (format version 3), as
``{"trainbus_checkpoint": 3, "packed": packed(the rest)}`` (see ``_packing.py``): a
fraction of the time to copy and to save. :func:`read_checkpoint` reads both, and the
files of older versions.

Everything is checked before anything is changed, and every error names the file.
"""

from __future__ import annotations

import array
import errno
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

import torch
from torch import nn

from ._files import atomic_save
from ._packing import packed, unpacked

if TYPE_CHECKING:
    from ._learner import Learner

__all__ = [
    "FORMAT_KEY",
    "FORMAT_VERSION",
    "CheckpointError",
    "PathLike",
    "check_model",
    "check_optimizer",
    "checkpoint_dict",
    "cpu_copy",
    "load_checkpoint",
    "load_weights",
    "optimizer_type",
    "pack_floats",
    "packed_checkpoint",
    "read_checkpoint",
    "save_checkpoint",
    "tensor_of",
    "unpack_floats",
    "unwrap_model",
    "write_checkpoint",
]

FORMAT_KEY: Final = "trainbus_checkpoint"
FORMAT_VERSION: Final = 3
"""The newest format this trainbus reads. 3: a packed tree's non-tensor part is JSON text.
2: the per-rank entries of a fit on many processes (a reader of 1 would resume every rank
from rank 0's), and training checkpoints packed. Files of version 1 read as written by one
process, unpacked."""
_PACKED: Final = "packed"

PathLike = str | os.PathLike[str]

_PARALLEL_WRAPPERS: Final[tuple[type[nn.Module], ...]] = (
    nn.parallel.DistributedDataParallel,
    nn.DataParallel,
)


class CheckpointError(ValueError, RuntimeError):
    """A checkpoint cannot be used: unreadable, foreign, newer, or not fitting the learner.

    The message names the file and what does not match. It is raised before the learner
    changes. (A ``ValueError`` and a ``RuntimeError``, so either ``except`` catches it.)
    """


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside ``torch.compile``'s and data-parallel wrappers.

    Its ``state_dict`` has the plain parameter names (no ``_orig_mod.`` or ``module.``
    prefix), so checkpoints load into the model whether or not it is wrapped.
    """
    while True:
        inner: object = getattr(model, "_orig_mod", None)  # torch.compile's OptimizedModule
        if inner is None and _is_parallel(model):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def _is_parallel(model: nn.Module) -> bool:
    return isinstance(model, _PARALLEL_WRAPPERS)


def optimizer_type(opt: torch.optim.Optimizer) -> str:
    """``module.qualname`` of the optimizer's class, as a checkpoint records it."""
    kind = type(opt)
    return f"{kind.__module__}.{kind.__qualname__}"


_ARRAY_TYPECODES: Final = {torch.float64: "d", torch.int64: "q"}


def tensor_of(values: Sequence[float] | Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """``torch.tensor(values, dtype=dtype)`` for a float64 or int64 ``dtype``, through an
    array's buffer: a fifth of the time (it reads no Python object twice)."""
    if not values:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(array.array(_ARRAY_TYPECODES[dtype], values), dtype=dtype)


def pack_floats(values: Sequence[object]) -> torch.Tensor | list[object]:
    """A list of Python floats as one float64 tensor: exact, and one object to save
    rather than one per value (their number grows with the fit). Other lists unchanged."""
    if set(map(type, values)) <= {float}:
        return tensor_of(cast("Sequence[float]", values), torch.float64)
    return list(values)


def unpack_floats(packed: torch.Tensor | list[Any]) -> list[Any]:
    """The list :func:`pack_floats` packed."""
    if isinstance(packed, torch.Tensor):
        return cast("list[object]", packed.tolist())  # pyright: ignore[reportUnknownMemberType]
    return list(packed)


def cpu_copy(value: object) -> object:
    """A deep copy with every tensor copied to the CPU (restored bit for bit later)."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        mapping = cast("dict[object, object]", value)
        return {k: cpu_copy(v) for k, v in mapping.items()}
    if isinstance(value, list | tuple):
        items = cast("list[object] | tuple[object, ...]", value)
        return type(items)(cpu_copy(v) for v in items)
    return value


def checkpoint_dict(
    learn: Learner, *, with_opt: bool, train: dict[str, Any] | None = None
) -> dict[str, Any]:
    """What a checkpoint of ``learn`` holds now (its live tensors, not copies)."""
    ckpt: dict[str, Any] = {
        FORMAT_KEY: FORMAT_VERSION,
        "model": unwrap_model(learn.model).state_dict(),
    }
    if with_opt:
        ckpt["opt"] = learn.opt.state_dict()
        ckpt["opt_type"] = optimizer_type(learn.opt)
    if train is not None:
        ckpt["train"] = train
    return ckpt


def packed_checkpoint(ckpt: dict[str, Any]) -> dict[str, Any]:
    """``ckpt`` packed (see ``_packing.py``): its one copy, taken now, on the CPU and
    detached from the live state, so it can be written while training goes on."""
    rest = {key: value for key, value in ckpt.items() if key != FORMAT_KEY}
    return {FORMAT_KEY: FORMAT_VERSION, _PACKED: packed(rest)}


def write_checkpoint(ckpt: dict[str, Any], path: PathLike) -> Path:
    """Write ``ckpt`` to ``path`` atomically.

    Raises:
        OSError: The write failed (naming the file); what was there is left as it was.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        atomic_save(ckpt, target)
    except OSError as error:
        raise OSError(
            error.errno,
            f"could not write checkpoint {target} ({error.strerror or error}); the files "
            "already there are left as they were",
        ) from error
    return target


def save_checkpoint(learn: Learner, path: PathLike, *, with_opt: bool) -> Path:
    """``learn.save``: write ``learn``'s model (and optimizer) to ``path``, atomically."""
    return write_checkpoint(checkpoint_dict(learn, with_opt=with_opt), path)


def read_checkpoint(path: PathLike) -> dict[str, Any]:
    """The checkpoint in ``path``, read with ``weights_only=True`` onto the CPU.

    Raises:
        FileNotFoundError: No file at ``path``.
        CheckpointError: The file is truncated, corrupt, not a trainbus checkpoint, or of
            a newer format.
    """
    source = Path(path)
    if not source.is_file():
        raise FileNotFoundError(errno.ENOENT, f"no checkpoint file at {source}", str(source))
    try:
        loaded: object = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as error:
        detail = str(error).strip().splitlines()
        raise CheckpointError(
            f"cannot read checkpoint {source}: it is truncated, corrupt or not a file that "
            f"torch.load(weights_only=True) accepts ({type(error).__name__}: "
            f"{detail[0] if detail else 'no detail'})"
        ) from error
    kind = type(loaded).__name__
    if not isinstance(loaded, dict) or FORMAT_KEY not in cast("dict[str, Any]", loaded):
        raise CheckpointError(
            f"{source} is not a trainbus checkpoint (it holds a {kind} without "
            f"a {FORMAT_KEY!r} entry); write checkpoints with learn.save or Checkpoint, and "
            "load a plain state dict with model.load_state_dict(torch.load(...))"
        )
    ckpt = cast("dict[str, Any]", loaded)
    version: object = ckpt[FORMAT_KEY]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(f"{source} has an invalid checkpoint format version {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{source} has checkpoint format version {version}, newer than this trainbus reads "
            f"(up to {FORMAT_VERSION}): upgrade trainbus to load it"
        )
    if _PACKED in ckpt:
        ckpt = _unpacked(source, ckpt)
    if not isinstance(ckpt.get("model"), dict):
        raise CheckpointError(f"{source} is a trainbus checkpoint without model weights")
    return ckpt


def _unpacked(source: Path, ckpt: dict[str, Any]) -> dict[str, Any]:
    inner: object = ckpt[_PACKED]
    try:
        if not isinstance(inner, dict):
            raise ValueError(f"its {_PACKED!r} entry is a {type(inner).__name__}")
        tree = unpacked(cast("dict[str, Any]", inner))
        if not isinstance(tree, dict):
            raise ValueError(f"it packs a {type(tree).__name__}, not a dict")
    except ValueError as error:
        raise CheckpointError(f"cannot read checkpoint {source}: {error}") from error
    return {FORMAT_KEY: ckpt[FORMAT_KEY], **cast("dict[str, Any]", tree)}


def check_model(source: PathLike, saved: Mapping[str, Any], model: nn.Module, strict: bool) -> None:
    """Raise unless ``saved`` (a state dict) loads into ``model``: the first mismatch is named.

    Raises:
        CheckpointError: A key is missing or unexpected (only when ``strict``), or a
            tensor's shape differs.
    """
    current = unwrap_model(model).state_dict()
    kind = type(unwrap_model(model)).__name__
    for key, value in current.items():
        if key not in saved:
            if strict:
                raise CheckpointError(
                    f"checkpoint {source} does not fit the model ({kind}): it has no {key!r} "
                    "(pass strict=False to load the keys it has)"
                )
            continue
        other: object = saved[key]
        tensors = isinstance(value, torch.Tensor) and isinstance(other, torch.Tensor)
        if tensors and cast("torch.Tensor", other).shape != value.shape:
            shape = tuple(cast("torch.Tensor", other).shape)
            raise CheckpointError(
                f"checkpoint {source} does not fit the model ({kind}): {key!r} has shape "
                f"{shape} in the checkpoint and {tuple(value.shape)} in the model"
            )
    if strict:
        for key in saved:
            if key not in current:
                raise CheckpointError(
                    f"checkpoint {source} does not fit the model ({kind}): it has {key!r}, "
                    "which the model has not (pass strict=False to ignore it)"
                )


def check_optimizer(source: PathLike, ckpt: Mapping[str, Any], opt: torch.optim.Optimizer) -> None:
    """Raise unless the checkpoint's optimizer state loads into ``opt``.

    Raises:
        CheckpointError: The checkpoint has no optimizer state, or one of another optimizer
            class or with other param groups.
    """
    saved: object = ckpt.get("opt")
    if not isinstance(saved, dict):
        raise CheckpointError(
            f"checkpoint {source} holds no optimizer state (it was saved with with_opt=False): "
            "load it with with_opt=False"
        )
    saved_type, current_type = ckpt.get("opt_type"), optimizer_type(opt)
    if saved_type != current_type:
        raise CheckpointError(
            f"checkpoint {source} holds the state of a {saved_type} optimizer, but this "
            f"learner's optimizer is a {current_type}"
        )
    groups: object = cast("dict[str, Any]", saved).get("param_groups")
    if not isinstance(groups, list):
        raise CheckpointError(f"checkpoint {source} has an optimizer state without param_groups")
    saved_groups = cast("list[dict[str, Any]]", groups)
    saved_sizes = [len(group.get("params", ())) for group in saved_groups]
    sizes = [len(g["params"]) for g in opt.param_groups]
    if saved_sizes != sizes:
        raise CheckpointError(
            f"checkpoint {source} does not fit the optimizer: its param groups hold "
            f"{saved_sizes} parameters, this optimizer's hold {sizes}"
        )


def load_weights(learn: Learner, ckpt: Mapping[str, Any], *, with_opt: bool, strict: bool) -> None:
    """Load the checked ``ckpt``'s model (and optimizer) state into ``learn``."""
    model = unwrap_model(learn.model)
    model.load_state_dict(ckpt["model"], strict=strict)
    if with_opt:
        learn.opt.load_state_dict(ckpt["opt"])


def load_checkpoint(learn: Learner, path: PathLike, *, with_opt: bool, strict: bool) -> None:
    """``learn.load``: read and check the whole file first, then load model and optimizer."""
    ckpt = read_checkpoint(path)
    check_model(path, ckpt["model"], learn.model, strict)
    if with_opt:
        check_optimizer(path, ckpt, learn.opt)
    load_weights(learn, ckpt, with_opt=with_opt, strict=strict)
