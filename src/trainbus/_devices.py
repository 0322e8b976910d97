"""Devices: which one a Learner trains on, and moving batches (nested tensors) onto it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeAlias, TypeVar, cast

import torch

__all__ = ["DeviceLike", "batch_mover", "pins_memory", "resolve_device", "to_device"]

T = TypeVar("T")

DeviceLike: TypeAlias = "str | torch.device"
"""A device as a user names it: ``"cpu"``, ``"cuda:1"``, ``"mps"``, a ``torch.device``."""

_CPU = torch.device("cpu")


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def resolve_device(device: DeviceLike | None) -> torch.device:
    """The ``torch.device`` to train on, with its index (``cuda`` -> ``cuda:<current>``).

    ``None`` picks the first available of CUDA, MPS, CPU. The index is made explicit so
    that comparing it with a tensor's device (which always has one) tells whether the
    tensor is there already.

    Raises:
        TypeError: ``device`` is neither a string nor a ``torch.device``.
        ValueError: The name is not a device torch knows, the device is not available on
            this machine, or it is a kind trainbus does not train on.
    """
    if device is None:
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("mps", 0) if _mps_available() else _CPU
    if isinstance(device, str):
        try:
            parsed = torch.device(device)
        except RuntimeError:
            raise ValueError(
                f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:<index>', 'mps', a "
                "torch.device, or None for the first available of CUDA, MPS and CPU"
            ) from None
    elif isinstance(device, torch.device):  # pyright: ignore[reportUnnecessaryIsInstance]
        parsed = device
    else:  # checked although annotated: callers without a type checker exist
        raise TypeError(
            f"device must be a str, a torch.device or None, got {type(device).__qualname__}"
        )
    # torch's stubs say int, but a device named without an index has None.
    kind, index = parsed.type, cast("int | None", parsed.index)
    if kind == "cpu":
        return _CPU
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device {device!r} is not available: torch.cuda.is_available() is False "
                f"(no CUDA GPU or driver, or a CPU-only torch {torch.__version__})"
            )
        count = torch.cuda.device_count()
        cuda_index = torch.cuda.current_device() if index is None else index
        if cuda_index >= count:
            raise ValueError(
                f"device {device!r} is not available: this machine has {count} CUDA "
                f"device(s), cuda:0 to cuda:{count - 1}"
            )
        return torch.device("cuda", cuda_index)
    if kind == "mps":
        if not _mps_available() or index not in (None, 0):
            raise ValueError(
                f"device {device!r} is not available: torch.backends.mps.is_available() is "
                f"{_mps_available()} and MPS has one device, mps:0"
            )
        return torch.device("mps", 0)
    raise ValueError(
        f"device {device!r} is not supported: trainbus trains on 'cpu', 'cuda' or 'mps'"
    )


def to_device(value: T, device: torch.device, *, non_blocking: bool = False) -> T:
    """``value`` with every tensor in it (nested in tuples, lists, dicts) on ``device``.

    A tensor already on ``device`` is returned as it is, not copied. Containers are
    rebuilt with their type (named tuples too); anything else is returned unchanged.
    ``device`` must carry its index (see :func:`resolve_device`).
    """
    if isinstance(value, torch.Tensor):
        if value.device == device:
            return cast("T", value)
        return cast("T", value.to(device, non_blocking=non_blocking))
    if isinstance(value, tuple | list):
        sequence = cast("tuple[object, ...] | list[object]", value)
        items = [to_device(item, device, non_blocking=non_blocking) for item in sequence]
        if isinstance(sequence, list):
            return cast("T", items)
        if hasattr(sequence, "_fields"):  # a named tuple takes its fields as arguments
            make = cast("Callable[..., T]", type(sequence))
            return make(*items)
        return cast("T", tuple(items))
    if isinstance(value, Mapping):
        mapping = cast("Mapping[object, object]", value)
        moved = {k: to_device(v, device, non_blocking=non_blocking) for k, v in mapping.items()}
        return cast("T", moved)
    return value


def pins_memory(loader: object) -> bool:
    """Whether ``loader`` yields batches in pinned memory (a ``DataLoader(pin_memory=True)``)."""
    return getattr(loader, "pin_memory", False) is True


def batch_mover(device: torch.device, loader: object) -> Callable[[object], object]:
    """The function that moves one element of ``loader``'s batches onto ``device``.

    Copies are ``non_blocking`` when the loader pins memory and the device is not the
    CPU. A tensor already on the device costs one device comparison.
    """
    non_blocking = device.type != "cpu" and pins_memory(loader)

    def move(value: object) -> object:
        if isinstance(value, torch.Tensor) and value.device == device:
            return value
        return to_device(value, device, non_blocking=non_blocking)

    def move_to_cpu(value: object) -> object:  # is_cpu: no device object made per batch
        if isinstance(value, torch.Tensor) and value.is_cpu:
            return value
        return to_device(value, device, non_blocking=False)

    return move_to_cpu if device.type == "cpu" else move
