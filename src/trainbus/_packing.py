"""A state tree's tensors packed into one flat tensor per dtype: cheap to copy and to save.

``torch.save`` spends some tens of microseconds on every tensor it writes (Python-level
pickling hooks, one zip record each), so a training checkpoint of a small network (~40
tensors: weights, optimizer moments, gradients, random states) took about 1.5 ms to
serialize, almost all of it per-tensor overhead. Packed, it writes a handful of tensors.

:func:`packed` is also the checkpoint's one copy of the state: it rebuilds every container
and copies every tensor (one ``torch.cat`` per dtype, then one transfer to the CPU), so the
result can be written on another thread while training changes the live state.

A packed tree is plain data that ``torch.load(weights_only=True)`` reads::

    {"tensors": [flat tensor per dtype, ...],
     "tree": the tree, each packed tensor replaced by {TENSOR_MARK: [group, offset, shape]}}
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final, cast

import torch

__all__ = ["TENSOR_MARK", "packed", "unpacked"]

TENSOR_MARK: Final = "trainbus.packed_tensor"
"""The key of the one-entry dict that stands for a packed tensor in a packed tree."""

# Leaves that cannot change after the checkpoint is taken: kept, not copied.
_IMMUTABLE: Final[tuple[type, ...]] = (
    bool,
    int,
    float,
    complex,
    str,
    bytes,
    type(None),
    torch.dtype,
    torch.device,
    torch.Size,
)


def _packable(tensor: torch.Tensor) -> bool:
    """Plain dense tensors; subclasses, sparse, quantized, meta and autograd leaves are
    saved as they are (copied), since a flat buffer would lose what makes them so."""
    return (
        type(tensor) is torch.Tensor
        and tensor.layout == torch.strided
        and not tensor.is_quantized
        and not tensor.requires_grad
        and tensor.device.type != "meta"
    )


def _own_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of a tensor that is not packed: of its class (a ``Parameter`` stays one) and
    ``requires_grad`` for a leaf; a non-leaf (which cannot be deep-copied) detached."""
    return copy.deepcopy(tensor) if tensor.is_leaf else tensor.detach().clone()


def packed(tree: object) -> dict[str, Any]:
    """A copy of ``tree`` (dicts, lists, tuples, tensors, numbers, strings...) with its plain
    tensors packed into one flat CPU tensor per dtype; see :func:`unpacked`.

    ``dict`` s and ``OrderedDict`` s (with a state dict's ``_metadata``), ``list`` s and
    ``tuple`` s are rebuilt; other objects are deep-copied. An object that appears twice
    (the same tensor or container) is copied once and appears twice in the copy; distinct
    tensors that shared a storage are copied separately.
    """
    # Each (device, dtype) met gets a group: its index, its tensors, and their size so far.
    groups: dict[tuple[torch.device, torch.dtype], int] = {}
    parts: list[list[torch.Tensor]] = []
    sizes: list[int] = []
    memo: dict[int, object] = {}  # an object met twice is copied once: sharing is kept

    def walk(value: object) -> object:
        kind = type(value)
        if kind in _IMMUTABLE:
            return value
        done = memo.get(id(value))
        if done is None:
            done = memo[id(value)] = copied(value, kind)
        return done

    def copied(value: object, kind: type) -> object:
        if kind is torch.Tensor and _packable(cast("torch.Tensor", value)):
            tensor = cast("torch.Tensor", value)
            group = groups.setdefault((tensor.device, tensor.dtype), len(groups))
            if group == len(parts):
                parts.append([])
                sizes.append(0)
            offset = sizes[group]
            parts[group].append(tensor.reshape(-1))
            sizes[group] += tensor.numel()
            return {TENSOR_MARK: [group, offset, list(tensor.shape)]}
        if isinstance(value, torch.Tensor):
            return _own_copy(value)
        return _rebuilt(value, walk)

    tree_copy = walk(tree)
    # One copy per group (a group of one is cloned), then one transfer from an accelerator.
    flats = [(torch.cat(ts) if len(ts) > 1 else ts[0].clone()).to("cpu") for ts in parts]
    return {"tensors": flats, "tree": tree_copy}


def unpacked(packed_tree: dict[str, Any]) -> object:
    """The tree :func:`packed` packed, each tensor its own (contiguous) copy.

    Raises:
        ValueError: ``packed_tree`` is not what :func:`packed` returns, or a mark points
            outside its flat tensors.
    """
    flats: object = packed_tree.get("tensors")
    if not isinstance(flats, list) or "tree" not in packed_tree:
        raise ValueError("not a packed state: it needs a 'tensors' list and a 'tree'")
    tensors = cast("list[object]", flats)

    memo: dict[int, object] = {}

    def walk(value: object) -> object:
        kind = type(value)
        if kind is not dict and kind is not OrderedDict and kind is not list and kind is not tuple:
            return value  # what a load gives: containers of these types, or leaves
        done = memo.get(id(value))
        if done is None:
            done = memo[id(value)] = restored(value)
        return done

    def restored(value: object) -> object:
        spec = _mark(value)
        return _rebuilt(value, walk) if spec is None else _tensor(tensors, spec)

    return walk(packed_tree["tree"])


def _mark(value: object) -> object:
    """The spec of a packed tensor's mark, or ``None`` when ``value`` is not one."""
    if type(value) is not dict:
        return None
    mapping = cast("dict[object, object]", value)
    return mapping.get(TENSOR_MARK) if len(mapping) == 1 else None


def _tensor(flats: list[object], spec: object) -> torch.Tensor:
    try:
        group, offset, shape = cast("list[Any]", spec)
        flat = flats[group]
        if not isinstance(flat, torch.Tensor):
            raise TypeError(type(flat).__name__)
        size = torch.Size(shape)
        if offset < 0 or offset + size.numel() > flat.numel():
            raise IndexError(offset)
        return flat[offset : offset + size.numel()].view(size).clone()
    except (TypeError, ValueError, IndexError) as error:
        message = f"a packed tensor's mark {spec!r} does not fit the packed state"
        raise ValueError(message) from error


def _rebuilt(value: object, walk: Callable[[object], object]) -> object:
    """``value`` with ``walk`` applied to its items: dicts (plain, or ordered with a state
    dict's ``_metadata``), lists and tuples of exactly those types; others deep-copied."""
    kind = type(value)
    if kind is dict or kind is OrderedDict:
        mapping = cast("dict[object, object]", value)
        rebuilt: dict[object, object] = OrderedDict() if kind is OrderedDict else {}
        for key, item in mapping.items():
            rebuilt[key] = walk(item)
        metadata: object = getattr(value, "_metadata", None)
        if metadata is not None:
            rebuilt._metadata = copy.deepcopy(metadata)  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]
        return rebuilt
    if kind is list:
        return [walk(item) for item in cast("list[object]", value)]
    if kind is tuple:
        return tuple(walk(item) for item in cast("tuple[object, ...]", value))
    return copy.deepcopy(value)
