"""Packed state trees: exact round trips through torch.save/torch.load(weights_only=True),
an own copy of the state, and a clear error for a packed state that does not fit."""

from __future__ import annotations

import io
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from conftest import tiny_learner
from trainbus import CheckpointError, read_checkpoint
from trainbus._checkpoint import FORMAT_KEY, checkpoint_dict, packed_checkpoint, write_checkpoint
from trainbus._packing import KIND, packed, unpacked
from trainbus._packing_v2 import TENSOR_MARK

DTYPES = (
    torch.float32,
    torch.float64,
    torch.bfloat16,
    torch.float16,
    torch.int64,
    torch.int32,
    torch.uint8,
    torch.bool,
    torch.complex64,
)


def saved_and_loaded(value: object) -> Any:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def assert_same_tree(a: object, b: object) -> None:
    """Equal values, containers of the same types, tensors equal in dtype, shape and values."""
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        b_tensor = cast("torch.Tensor", b)
        assert (a.dtype, a.shape, a.requires_grad) == (
            b_tensor.dtype,
            b_tensor.shape,
            b_tensor.requires_grad,
        )
        assert torch.equal(a, b_tensor)
    elif isinstance(a, dict):
        a_dict, b_dict = cast("dict[object, object]", a), cast("dict[object, object]", b)
        assert list(a_dict) == list(b_dict)
        for key in a_dict:
            assert_same_tree(a_dict[key], b_dict[key])
    elif isinstance(a, list | tuple):
        a_items, b_items = cast("list[object]", a), cast("list[object]", b)
        assert len(a_items) == len(b_items)
        for x, y in zip(a_items, b_items, strict=True):
            assert_same_tree(x, y)
    else:
        assert a == b


def a_tensor(dtype: torch.dtype, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    values = torch.randn(shape, generator=generator, dtype=torch.float64) * 100
    if dtype.is_complex:
        return torch.complex(values, -values).to(dtype)
    return values.to(dtype)


tensors = st.builds(
    a_tensor,
    st.sampled_from(DTYPES),
    st.lists(st.integers(0, 4), max_size=3).map(tuple),
    st.integers(0, 2**16),
)
leaves = st.one_of(
    tensors,
    st.none(),
    st.booleans(),
    st.integers(-(2**62), 2**62),
    st.floats(allow_nan=False),
    st.text(max_size=5),
)
trees = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(st.text(max_size=4), inner, max_size=4),
    ),
    max_leaves=25,
)


@settings(max_examples=150, deadline=None)
@given(trees)
def test_any_tree_round_trips_exactly_through_a_weights_only_load(tree: object) -> None:
    assert_same_tree(unpacked(saved_and_loaded(packed(tree))), tree)


def test_one_flat_tensor_per_dtype_holds_every_tensor_of_the_tree() -> None:
    tree = {
        "a": torch.arange(6.0).reshape(2, 3),
        "b": [torch.ones(()), torch.zeros(0), torch.arange(4.0).reshape(2, 2).t()],  # scalar,
        "c": (torch.tensor([1, 2, 3]), torch.tensor([True, False])),  # empty, non-contiguous
    }
    result = packed(tree)
    document = json.loads(result["json"])
    # float32 at 0 (11 values, 44 bytes), then int64 and bool each at a multiple of 64.
    assert document["groups"] == [["float32", 0, 6 + 1 + 0 + 4], ["int64", 64, 3], ["bool", 128, 2]]
    assert result["data"].dtype == torch.uint8 and result["data"].numel() == 128 + 2
    assert document["tree"]["a"] == {KIND: "t", "v": [0, 0, [2, 3]]}
    assert document["tree"]["b"][2] == {KIND: "t", "v": [0, 7, [2, 2]]}
    assert_same_tree(unpacked(result), tree)


def test_everything_but_the_tensors_is_one_json_string_of_plain_values() -> None:
    tree = {"loop": {"epoch": 3, "pct": 0.25, "phase": "train", "done": False, "ema": None}}
    result = packed(tree)
    assert json.loads(result["json"]) == {"groups": [], "tree": tree}
    assert result["data"].numel() == 0 and result["objects"] == []


def test_values_json_has_no_form_for_round_trip_exactly() -> None:
    tree = {
        "opt_state": {0: {"step": torch.tensor(3.0)}, 1: {}},  # int keys
        (1, "a"): [float("inf"), float("-inf"), -0.0, 2**80, 1e-310],  # a tuple key
        KIND: "a key the encoding uses",
        "leaves": [torch.float16, torch.device("cpu"), torch.Size([2, 3]), 1 - 2j, b"\x00\xff"],
        "rng": (3, torch.arange(4), None),
        "empty": {},
    }
    result = unpacked(saved_and_loaded(packed(tree)))
    assert_same_tree(result, tree)
    nan = cast("dict[str, list[float]]", unpacked(packed({"x": [float("nan")]})))["x"][0]
    assert nan != nan


def test_a_bool_stays_a_bool_and_a_float_a_float() -> None:
    result = cast("list[object]", unpacked(saved_and_loaded(packed([True, 1, 1.0, 0, False]))))
    assert [type(value) for value in result] == [bool, int, float, int, bool]


def test_the_packed_state_is_a_copy_the_live_state_can_change_under() -> None:
    weights, steps, moments = (
        torch.ones(3),
        [1, 2],
        OrderedDict[str, torch.Tensor](m=torch.zeros(2)),
    )
    result = packed({"weights": weights, "steps": steps, "moments": moments})
    weights.add_(5)
    steps.append(3)
    moments["m"].fill_(7)
    assert_same_tree(
        unpacked(result),
        {
            "weights": torch.ones(3),
            "steps": [1, 2],
            "moments": OrderedDict[str, torch.Tensor](m=torch.zeros(2)),
        },
    )


def test_a_state_dicts_metadata_is_kept_so_versioned_modules_load_as_saved() -> None:
    state = nn.BatchNorm1d(3).state_dict()
    loaded = cast("OrderedDict[str, torch.Tensor]", unpacked(saved_and_loaded(packed(state))))
    assert type(loaded) is OrderedDict
    assert loaded._metadata == state._metadata  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]
    assert_same_tree(loaded, state)


def test_tensors_a_flat_buffer_cannot_hold_are_copied_as_they_are() -> None:
    parameter = nn.Parameter(torch.ones(2))
    leaf = torch.zeros(2, requires_grad=True)
    result = packed({"p": parameter, "leaf": leaf, "again": parameter})
    assert result["data"].numel() == 0
    copied_parameter, copied_leaf = result["objects"]
    assert type(copied_parameter) is nn.Parameter
    assert copied_parameter is not parameter
    assert copied_leaf.requires_grad
    with torch.no_grad():
        parameter.add_(1)
    tree = cast("dict[str, torch.Tensor]", unpacked(result))
    assert torch.equal(tree["p"], torch.ones(2))
    assert tree["again"] is tree["p"]


def _v3(tree: str, data: torch.Tensor | None = None, groups: str = "[]") -> dict[str, Any]:
    """A version 3 packed state with the JSON tree ``tree``."""
    data = torch.zeros(0, dtype=torch.uint8) if data is None else data
    return {"data": data, "json": f'{{"groups":{groups},"tree":{tree}}}', "objects": []}


_FOUR_FLOATS = torch.zeros(16, dtype=torch.uint8)


@pytest.mark.parametrize(
    ("packed_state", "message"),
    [
        ({"tree": {}}, "needs a 'tensors' list and a 'tree'"),
        ({"tensors": [torch.zeros(2)], "tree": {TENSOR_MARK: [0, 1, [2]]}}, "does not fit"),
        ({"tensors": [torch.zeros(2)], "tree": {TENSOR_MARK: [1, 0, [1]]}}, "does not fit"),
        ({"tensors": [torch.zeros(2)], "tree": {TENSOR_MARK: "x"}}, "does not fit"),
        (_v3(f'{{"{KIND}":"t","v":[0,3,[2]]}}', _FOUR_FLOATS, '[["float32",0,4]]'), "mark"),
        (_v3("[]", _FOUR_FLOATS, '[["float32",8,4]]'), "group .* does not fit"),
        (_v3("[]", _FOUR_FLOATS, '[["float64",4,1]]'), "does not fit"),  # not aligned
        (_v3("[]", _FOUR_FLOATS, '[["nn",0,1]]'), "not a torch dtype"),
        (_v3(f'{{"{KIND}":"ref","v":0}}'), "does not fit"),
        (_v3(f'[{{"{KIND}":"ref","v":0}}]'), "not built yet"),
        (_v3(f'{{"{KIND}":"obj","v":0}}'), "does not fit"),
        (_v3(f'{{"{KIND}":"dtype","v":"nn"}}'), "not a torch dtype"),
        (_v3(f'{{"{KIND}":"what","v":0}}'), "unknown kind 'what'"),
        ({**_v3("[]"), "json": '{"a":'}, "not JSON"),
        ({**_v3("[]"), "json": "[]"}, "does not fit"),
        ({**_v3("[]"), "objects": {}}, "'objects' not a list"),
        ({**_v3("[]"), "data": torch.zeros(2)}, "not a 1-d uint8 tensor"),
    ],
)
def test_a_packed_state_that_does_not_fit_is_a_value_error(
    packed_state: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        unpacked(packed_state)


def test_a_packed_checkpoint_reads_back_as_the_checkpoint_it_packed(tmp_path: Path) -> None:
    learn = tiny_learner()
    learn.fit(1)
    ckpt = checkpoint_dict(learn, with_opt=True, train={"loop": {"epoch": 0}})
    write_checkpoint(packed_checkpoint(ckpt), tmp_path / "packed.pt")
    raw = torch.load(tmp_path / "packed.pt", weights_only=True)
    assert set(raw) == {FORMAT_KEY, "packed"}
    assert_same_tree(read_checkpoint(tmp_path / "packed.pt"), ckpt)


def test_a_corrupt_packed_checkpoint_is_an_error_naming_the_file(tmp_path: Path) -> None:
    learn = tiny_learner()
    state = packed_checkpoint(checkpoint_dict(learn, with_opt=False))
    state["packed"]["data"] = state["packed"]["data"][:10]
    write_checkpoint(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*bad\.pt: a packed group"):
        read_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*bad\.pt"):
        learn.load(tmp_path / "bad.pt", with_opt=False)


def test_a_version_2_checkpoint_still_loads(tmp_path: Path) -> None:
    learn = tiny_learner()
    learn.fit(1)
    state = learn.model.state_dict()
    marks: OrderedDict[str, object] = OrderedDict()
    offset = 0
    for name, tensor in state.items():
        marks[name] = {TENSOR_MARK: [0, offset, list(tensor.shape)]}
        offset += tensor.numel()
    marks._metadata = state._metadata  # type: ignore[attr-defined]  # pyright: ignore[reportAttributeAccessIssue]
    flat = torch.cat([tensor.reshape(-1) for tensor in state.values()])
    packed_v2 = {"tensors": [flat], "tree": {"model": marks, "ranks": [marks, marks]}}
    torch.save({FORMAT_KEY: 2, "packed": packed_v2}, tmp_path / "v2.pt")
    ckpt = read_checkpoint(tmp_path / "v2.pt")
    assert ckpt["ranks"][0] is ckpt["ranks"][1] is ckpt["model"]
    other = tiny_learner()
    other.load(tmp_path / "v2.pt", with_opt=False)
    assert_same_tree(other.model.state_dict(), state)


def test_a_version_1_checkpoint_still_loads(tmp_path: Path) -> None:
    learn = tiny_learner()
    learn.fit(1)
    ckpt = checkpoint_dict(learn, with_opt=True)
    torch.save({**ckpt, FORMAT_KEY: 1}, tmp_path / "v1.pt")
    other = tiny_learner()
    other.load(tmp_path / "v1.pt")
    assert_same_tree(other.model.state_dict(), learn.model.state_dict())


def test_an_object_met_twice_is_copied_once_and_stays_shared() -> None:
    weights = torch.arange(3.0)
    entry = {"w": weights, "steps": [1]}
    result = packed({"train": entry, "ranks": [entry], "again": weights})
    assert result["data"].numel() == 3 * 4
    tree = cast("dict[str, Any]", unpacked(saved_and_loaded(result)))
    assert tree["ranks"][0] is tree["train"]
    assert tree["again"] is tree["train"]["w"]
    assert torch.equal(tree["again"], weights)
