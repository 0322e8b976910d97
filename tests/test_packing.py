"""Packed state trees: exact round trips through torch.save/torch.load(weights_only=True),
an own copy of the state, and a clear error for a packed state that does not fit."""

from __future__ import annotations

import io
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
from trainbus._packing import TENSOR_MARK, packed, unpacked

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
    assert [(t.dtype, t.numel()) for t in result["tensors"]] == [
        (torch.float32, 6 + 1 + 0 + 4),
        (torch.int64, 3),
        (torch.bool, 2),
    ]
    assert result["tree"]["a"] == {TENSOR_MARK: [0, 0, [2, 3]]}
    assert result["tree"]["b"][2] == {TENSOR_MARK: [0, 7, [2, 2]]}
    assert_same_tree(unpacked(result), tree)


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
    result = packed({"p": parameter, "leaf": leaf})
    assert result["tensors"] == []
    assert type(result["tree"]["p"]) is nn.Parameter
    assert result["tree"]["p"] is not parameter
    assert result["tree"]["leaf"].requires_grad
    with torch.no_grad():
        parameter.add_(1)
    assert torch.equal(result["tree"]["p"], torch.ones(2))


@pytest.mark.parametrize(
    ("packed_state", "message"),
    [
        ({"tree": {}}, "needs a 'tensors' list and a 'tree'"),
        ({"tensors": [torch.zeros(2)], "tree": {TENSOR_MARK: [0, 1, [2]]}}, "does not fit"),
        ({"tensors": [torch.zeros(2)], "tree": {TENSOR_MARK: [1, 0, [1]]}}, "does not fit"),
        ({"tensors": [torch.zeros(2)], "tree": {TENSOR_MARK: "x"}}, "does not fit"),
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
    state["packed"]["tensors"] = []
    write_checkpoint(state, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*bad\.pt: a packed tensor"):
        read_checkpoint(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=r"cannot read checkpoint .*bad\.pt"):
        learn.load(tmp_path / "bad.pt", with_opt=False)


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
    assert [t.numel() for t in result["tensors"]] == [3]
    tree = cast("dict[str, Any]", unpacked(saved_and_loaded(result)))
    assert tree["ranks"][0] is tree["train"]
    assert tree["again"] is tree["train"]["w"]
    assert torch.equal(tree["again"], weights)
