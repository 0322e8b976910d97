"""Reading the packed trees of format version 2: the tree itself, each tensor a mark.

Version 2 files hold ``{"tensors": [flat tensor per dtype, ...], "tree": tree}``, where
each packed tensor of the tree is replaced by ``{TENSOR_MARK: [group, offset, shape]}``
and a state dict's ``_metadata`` is kept on its ``OrderedDict``. Version 3 (see
``_packing.py``) writes the tree as JSON instead; this module only reads.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any, Final, cast

import torch

__all__ = ["TENSOR_MARK", "tensor_at", "unpacked_v2"]

TENSOR_MARK: Final = "trainbus.packed_tensor"
"""The key of the one-entry dict that stands for a packed tensor in a version 2 tree."""


def unpacked_v2(packed_tree: dict[str, Any]) -> object:
    """The tree a version 2 packed state holds, each tensor its own (contiguous) copy.

    Raises:
        ValueError: ``packed_tree`` has no ``tensors`` list or no ``tree``, or a mark
            points outside the flat tensors.
    """
    flats: object = packed_tree.get("tensors")
    if not isinstance(flats, list) or "tree" not in packed_tree:
        raise ValueError("not a packed state: it needs a 'tensors' list and a 'tree'")
    tensors = cast("list[object]", flats)
    memo: dict[int, object] = {}  # a container met twice was one object: it stays one

    def walk(value: object) -> object:
        kind = type(value)
        if kind is not dict and kind is not OrderedDict and kind is not list and kind is not tuple:
            return value  # what a load gives: containers of these types, or leaves
        done = memo.get(id(value))
        if done is None:
            done = memo[id(value)] = restored(value, kind)
        return done

    def restored(value: object, kind: type) -> object:
        if kind is dict:
            mapping = cast("dict[object, object]", value)
            if len(mapping) == 1 and TENSOR_MARK in mapping:
                return tensor_at(tensors, mapping[TENSOR_MARK])
        if kind is dict or kind is OrderedDict:
            mapping = cast("dict[object, object]", value)
            rebuilt: dict[object, object] = OrderedDict() if kind is OrderedDict else {}
            for key, item in mapping.items():
                rebuilt[key] = walk(item)
            metadata: object = getattr(value, "_metadata", None)
            if metadata is not None:
                rebuilt._metadata = metadata  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]
            return rebuilt
        if kind is list:
            return [walk(item) for item in cast("list[object]", value)]
        return tuple(walk(item) for item in cast("tuple[object, ...]", value))

    return walk(packed_tree["tree"])


def tensor_at(flats: Sequence[object], spec: object) -> torch.Tensor:
    """The tensor a mark's spec ``[group, offset, shape]`` names in the flat tensors.

    Raises:
        ValueError: The spec does not fit the flat tensors.
    """
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
