"""A state tree packed for a fast save: its tensors as one tensor of bytes, the rest as JSON.

``torch.save`` spends some tens of microseconds on every tensor it writes (Python-level
pickling hooks, one zip record each) and a microsecond or two on every other object it
pickles (a Python ``persistent_id`` call each), so a training checkpoint of a small
network (~40 tensors among ~500 dicts, lists, numbers and strings) took about 2 ms to
serialize, almost all of it per-object overhead. Packed, it writes one tensor (of bytes)
and one string.

:func:`packed` is also the checkpoint's one copy of the state: it encodes every container
and copies every tensor (one ``torch.cat`` per dtype, then one transfer to the CPU), so the
result can be written on another thread while training changes the live state.

A packed tree (format version 3) is plain data that ``torch.load(weights_only=True)``
reads::

    {"data": one uint8 tensor: the bytes of each dtype's flat tensor, in turn,
     "json": '{"groups": [[dtype, byte offset, number of elements], ...],
               "tree": the tree (below)}',
     "objects": [what neither holds (see below), ...]}

In the JSON, lists, strings, numbers (``NaN`` and infinities included), booleans and
``None`` are themselves, and so is a plain ``dict`` with string keys; everything else is
an object ``{KIND: kind, "v": payload}`` (a dict that has the key ``KIND`` is one too)::

    "t"        a packed tensor: [its group, offset in the group's elements, shape]
    "tuple"    [items]
    "dict"     [[key, value], ...]: a dict with keys other than strings
    "odict"    [[key, value], ...] and "m": a state dict's ``_metadata`` (an OrderedDict)
    "ref"      n: the n-th container or packed tensor met (depth first), met again
    "obj"      i: ``objects[i]``, an object JSON does not hold (saved as it is)
    "dtype", "device", "size", "complex", "bytes"   torch.dtype, torch.device,
               torch.Size, complex and bytes values

Version 2 files hold the tree itself, tensors replaced by marks; :func:`unpacked` reads
both (see ``_packing_v2.py``).
"""

from __future__ import annotations

import copy
import json
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Final, cast

import torch

from ._packing_v2 import tensor_at, unpacked_v2

__all__ = ["KIND", "packed", "unpacked"]

KIND: Final = "trainbus.kind"
"""The key of an object that encodes a value JSON has no form for (see the module doc)."""

# Leaves JSON holds as they are (exact: floats are written with repr).
_JSON_LEAVES: Final[frozenset[type]] = frozenset({str, int, float, bool, type(None)})
_STR_KEYS: Final = frozenset({str})
_ALIGN: Final = 64


def _packable(tensor: torch.Tensor, device: torch.device) -> bool:
    """Plain dense tensors (of class ``torch.Tensor``, on ``device``); sparse, quantized,
    meta and autograd leaves are saved as they are (copied), as are subclasses, since a
    flat buffer would lose what makes them so."""
    return (
        not tensor.requires_grad
        and tensor.layout == torch.strided
        and not tensor.is_quantized
        and device.type != "meta"
    )


def _own_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A copy of a tensor that is not packed: of its class (a ``Parameter`` stays one) and
    ``requires_grad`` for a leaf; a non-leaf (which cannot be deep-copied) detached."""
    return copy.deepcopy(tensor) if tensor.is_leaf else tensor.detach().clone()


def _tagged(kind: str, payload: object) -> dict[str, object]:
    return {KIND: kind, "v": payload}


def packed(tree: object) -> dict[str, Any]:
    """A copy of ``tree`` (dicts, lists, tuples, tensors, numbers, strings...): the bytes
    of its plain tensors in one CPU tensor (a run per dtype), the rest encoded as JSON;
    see :func:`unpacked`.

    ``dict`` s and ``OrderedDict`` s (with a state dict's ``_metadata``), ``list`` s,
    ``tuple`` s and the leaves JSON holds are encoded; other objects are deep-copied and
    saved as they are. An object that appears twice (the same tensor or container) is
    copied once and appears twice in the copy; distinct tensors that shared a storage are
    copied separately.
    """
    # Each (device, dtype) met gets a group: its index, its tensors, and their size so far.
    groups: dict[tuple[torch.device, torch.dtype], int] = {}
    parts: list[list[torch.Tensor]] = []
    sizes: list[int] = []
    objects: list[object] = []
    # Containers and packed tensors are numbered as met (depth first): met again, each is
    # a "ref" to its number. Other objects met again are encoded as they were.
    seen: dict[int, object] = {}
    n_numbered = 0

    def walk(value: object) -> object:
        kind = type(value)
        if kind in _JSON_LEAVES:
            return value
        done = seen.get(id(value))
        if done is not None:
            return done
        nonlocal n_numbered
        if kind is dict or kind is list or kind is tuple or kind is OrderedDict:
            seen[id(value)] = {KIND: "ref", "v": n_numbered}
            n_numbered += 1
            return container(value, kind)
        if kind is torch.Tensor:
            tensor = cast("torch.Tensor", value)
            device = tensor.device
            if _packable(tensor, device):
                seen[id(value)] = {KIND: "ref", "v": n_numbered}
                n_numbered += 1
                return mark(tensor, device)
        done = seen[id(value)] = leaf(value, kind)
        return done

    def container(value: object, kind: type) -> object:
        if kind is dict:
            mapping = cast("dict[object, object]", value)
            if set(map(type, mapping)) <= _STR_KEYS and KIND not in mapping:
                return {key: walk(item) for key, item in mapping.items()}
            return {KIND: "dict", "v": [[walk(key), walk(item)] for key, item in mapping.items()]}
        if kind is list:
            return [walk(item) for item in cast("list[object]", value)]
        if kind is tuple:
            return {KIND: "tuple", "v": [walk(item) for item in cast("tuple[object, ...]", value)]}
        mapping = cast("dict[object, object]", value)
        pairs = [[walk(key), walk(item)] for key, item in mapping.items()]
        encoded: dict[str, object] = {KIND: "odict", "v": pairs}
        metadata: object = getattr(value, "_metadata", None)
        if metadata is not None:
            encoded["m"] = walk(metadata)
        return encoded

    def mark(tensor: torch.Tensor, device: torch.device) -> object:
        group = groups.setdefault((device, tensor.dtype), len(groups))
        if group == len(parts):
            parts.append([])
            sizes.append(0)
        offset = sizes[group]
        parts[group].append(tensor.reshape(-1))
        sizes[group] = offset + tensor.numel()
        return {KIND: "t", "v": [group, offset, tensor.shape]}  # a tuple: JSON writes a list

    def leaf(value: object, kind: type) -> object:
        if kind is torch.dtype:
            return _tagged("dtype", str(value).removeprefix("torch."))
        if kind is torch.device:
            return _tagged("device", str(value))
        if kind is torch.Size:
            return _tagged("size", list(cast("torch.Size", value)))
        if kind is complex:
            number = cast("complex", value)
            return _tagged("complex", [number.real, number.imag])
        if kind is bytes:
            return _tagged("bytes", cast("bytes", value).hex())
        copied = _own_copy(value) if isinstance(value, torch.Tensor) else copy.deepcopy(value)
        objects.append(copied)
        return _tagged("obj", len(objects) - 1)

    encoded = walk(tree)
    # Each group's bytes in one buffer, at a multiple of _ALIGN (a view of any dtype fits).
    layout: list[list[object]] = []
    end = 0
    for (_, dtype), group in groups.items():
        start = -(-end // _ALIGN) * _ALIGN
        layout.append([str(dtype).removeprefix("torch."), start, sizes[group]])
        end = start + sizes[group] * dtype.itemsize
    data = torch.empty(end, dtype=torch.uint8)
    for (device, dtype), group in groups.items():
        start = cast("int", layout[group][1])
        target = data[start : start + sizes[group] * dtype.itemsize].view(dtype)
        if device.type == "cpu":
            torch.cat(parts[group], out=target)  # the one copy
        else:
            target.copy_(torch.cat(parts[group]))  # one copy on the device, one transfer
    text = json.dumps(
        {"groups": layout, "tree": encoded},
        ensure_ascii=False,
        check_circular=False,
        separators=(",", ":"),
    )
    return {"data": data, "json": text, "objects": objects}


def unpacked(packed_tree: dict[str, Any]) -> object:
    """The tree :func:`packed` packed (of format version 3, or 2), each tensor its own
    (contiguous) copy.

    Raises:
        ValueError: ``packed_tree`` is not what :func:`packed` returns, or does not fit
            (a mark points outside its flat tensors, a reference to nothing...).
    """
    if "json" not in packed_tree:
        return unpacked_v2(packed_tree)
    data, text, objects = (packed_tree.get(key) for key in ("data", "json", "objects"))
    if not isinstance(data, torch.Tensor) or data.dtype != torch.uint8 or data.dim() != 1:
        raise ValueError("not a packed state: its 'data' is not a 1-d uint8 tensor")
    if not isinstance(text, str) or not isinstance(objects, list):
        raise ValueError("not a packed state: its 'json' is not a str or 'objects' not a list")
    try:
        document: object = json.loads(text)
    except ValueError as error:
        raise ValueError(f"its packed tree is not JSON ({error})") from error
    try:
        root = cast("dict[str, Any]", document)
        flats = [_group(data, spec) for spec in cast("list[object]", root["groups"])]
        return _Decoder(flats, cast("list[object]", objects)).walk(root["tree"])
    except (TypeError, IndexError, KeyError, AttributeError, RuntimeError) as error:
        raise ValueError(f"its packed tree does not fit the packed state ({error!r})") from error


def _group(data: torch.Tensor, spec: object) -> torch.Tensor:
    """A group's flat tensor: ``[dtype, byte offset, number of elements]`` in ``data``."""
    name, start, numel = cast("list[Any]", spec)
    dtype = _dtype(name)
    stop = start + numel * dtype.itemsize
    if not 0 <= start <= stop <= data.numel():
        raise ValueError(f"a packed group {spec!r} does not fit the packed state")
    return data[start:stop].view(dtype)


class _Decoder:
    """Rebuilds a tree from its JSON form, numbering containers and tensors as
    :func:`packed` did."""

    __slots__ = ("_decode", "numbered", "objects", "tensors")

    def __init__(self, tensors: Sequence[object], objects: list[object]) -> None:
        self.tensors = tensors
        self.objects = objects
        self.numbered: list[object] = []  # by number; None while one is being built
        self._decode: dict[str, Callable[[object], object]] = {
            "t": self._tensor,
            "ref": self._ref,
            "obj": lambda index: self.objects[cast("int", index)],
            "dtype": _dtype,
            "device": lambda name: torch.device(cast("str", name)),
            "size": lambda dims: torch.Size(cast("list[int]", dims)),
            "complex": lambda parts: complex(*cast("list[float]", parts)),
            "bytes": lambda text: bytes.fromhex(cast("str", text)),
        }

    def walk(self, value: object) -> object:
        kind = type(value)
        if kind is list:
            number = self._number()
            return self._built(number, [self.walk(item) for item in cast("list[object]", value)])
        if kind is not dict:
            return value
        mapping = cast("dict[str, object]", value)
        tag = mapping.get(KIND)
        if tag is None:
            number = self._number()
            return self._built(number, {key: self.walk(item) for key, item in mapping.items()})
        payload = mapping["v"]
        if tag == "tuple":
            number = self._number()
            items = cast("list[object]", payload)
            return self._built(number, tuple(self.walk(item) for item in items))
        if tag == "dict" or tag == "odict":
            number = self._number()
            rebuilt: dict[object, object] = {} if tag == "dict" else OrderedDict()
            for key, item in cast("list[list[object]]", payload):
                rebuilt[self.walk(key)] = self.walk(item)
            if "m" in mapping:
                rebuilt._metadata = self.walk(mapping["m"])  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]
            return self._built(number, rebuilt)
        decode = self._decode.get(cast("str", tag))
        if decode is None:
            raise ValueError(f"unknown kind {tag!r}")
        return decode(payload)

    def _number(self) -> int:
        self.numbered.append(None)
        return len(self.numbered) - 1

    def _built(self, number: int, value: object) -> object:
        self.numbered[number] = value
        return value

    def _ref(self, number: object) -> object:
        found = self.numbered[cast("int", number)]
        if found is None:
            raise ValueError(f"a reference to {number!r}, which is not built yet")
        return found

    def _tensor(self, spec: object) -> torch.Tensor:
        tensor = tensor_at(self.tensors, spec)
        self.numbered.append(tensor)
        return tensor


def _dtype(name: object) -> torch.dtype:
    dtype: object = getattr(torch, cast("str", name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"{name!r} is not a torch dtype")
    return dtype
