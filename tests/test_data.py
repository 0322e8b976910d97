"""TensorBatches and DataLoaders: batch shapes, shuffling, seeds, and the errors on bad input."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from trainbus import DataLoaders, TensorBatches


def samples(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs (n, 3), targets (n,))`` where sample ``i`` is recognisable: targets are ``i``."""
    x = torch.arange(3 * n, dtype=torch.float32).reshape(n, 3)
    return x, torch.arange(n)


def order_of(batches: TensorBatches | DataLoaders) -> list[int]:
    """The sample indices (the targets) in the order the training batches hold them."""
    source = batches.train if isinstance(batches, DataLoaders) else batches
    return [int(i) for _, y in source for i in y]


# ------------------------------------------------------------------ batch shapes


@given(n=st.integers(0, 40), bs=st.integers(1, 12), drop_last=st.booleans())
def test_batches_have_bs_rows_but_the_last(n: int, bs: int, drop_last: bool) -> None:
    x, y = samples(n)
    batches = TensorBatches((x, y), bs=bs, drop_last=drop_last)
    full, rest = divmod(n, bs)
    expected = [bs] * full + ([rest] if rest and not drop_last else [])
    got = list(batches)
    assert len(batches) == len(expected)
    assert [len(xb) for xb, _ in got] == expected
    assert all(isinstance(batch, tuple) and len(batch) == 2 for batch in got)
    assert all(xb.shape[1:] == (3,) and yb.shape == (len(xb),) for xb, yb in got)
    # Unshuffled, the batches are the data in order (without the dropped tail).
    assert order_of(batches) == list(range(sum(expected)))


def test_last_partial_batch_and_drop_last() -> None:
    x, y = samples(10)
    assert [len(yb) for _, yb in TensorBatches((x, y), bs=4)] == [4, 4, 2]
    assert [len(yb) for _, yb in TensorBatches((x, y), bs=4, drop_last=True)] == [4, 4]
    assert len(TensorBatches((x, y), bs=4)) == 3
    assert len(TensorBatches((x, y), bs=4, drop_last=True)) == 2
    assert len(TensorBatches((x, y), bs=20, drop_last=True)) == 0
    assert list(TensorBatches((x, y), bs=20, drop_last=True)) == []


def test_one_element_per_tensor_in_each_batch() -> None:
    x, y = samples(6)
    weights = torch.ones(6, 1)
    batches = list(TensorBatches([x, y, weights], bs=4))
    assert [len(batch) for batch in batches] == [3, 3]
    assert [tuple(t.shape) for t in batches[1]] == [(2, 3), (2,), (2, 1)]
    single = list(TensorBatches([x], bs=6))
    assert len(single) == 1 and len(single[0]) == 1
    assert torch.equal(single[0][0], x)


def test_unshuffled_batches_are_views_of_the_tensors() -> None:
    x, y = samples(8)
    for k, (xb, yb) in enumerate(TensorBatches((x, y), bs=3)):
        assert xb.data_ptr() == x[3 * k].data_ptr()
        assert yb.data_ptr() == y[3 * k].data_ptr()


def test_an_empty_dataset_has_no_batches() -> None:
    batches = TensorBatches(samples(0), bs=4)
    assert len(batches) == 0
    assert list(batches) == []


# --------------------------------------------------------------------- shuffling


@given(n=st.integers(1, 60), bs=st.integers(1, 16), seed=st.integers(0, 2**32 - 1))
def test_shuffle_covers_every_sample_once(n: int, bs: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    batches = TensorBatches(samples(n), bs=bs, shuffle=True, generator=generator)
    for _ in range(2):  # every pass is a permutation
        assert sorted(order_of(batches)) == list(range(n))


def test_shuffle_keeps_inputs_and_targets_together() -> None:
    x, y = samples(20)
    generator = torch.Generator().manual_seed(0)
    for xb, yb in TensorBatches((x, y), bs=6, shuffle=True, generator=generator):
        assert torch.equal(xb, x[yb])


def test_shuffle_draws_a_new_permutation_every_pass() -> None:
    batches = TensorBatches(samples(50), bs=8, shuffle=True, generator=torch.Generator())
    passes = [order_of(batches) for _ in range(3)]
    assert passes[0] != passes[1] != passes[2] != passes[0]
    assert all(order != list(range(50)) for order in passes)


def test_shuffle_with_drop_last_takes_distinct_samples() -> None:
    generator = torch.Generator().manual_seed(3)
    batches = TensorBatches(samples(10), bs=4, shuffle=True, drop_last=True, generator=generator)
    seen = order_of(batches)
    assert len(seen) == 8 and len(set(seen)) == 8 and set(seen) <= set(range(10))


def test_without_shuffle_every_pass_is_the_same() -> None:
    batches = TensorBatches(samples(9), bs=4)
    assert order_of(batches) == order_of(batches) == list(range(9))


# --------------------------------------------------------- DataLoaders.from_tensors


def test_from_tensors_batch_sizes() -> None:
    dls = DataLoaders.from_tensors(samples(10), samples(7), bs=3, shuffle=False)
    assert [len(yb) for _, yb in dls.train] == [3, 3, 3, 1]
    assert [len(yb) for _, yb in dls.valid] == [6, 1]  # valid_bs defaults to 2 * bs
    dls = DataLoaders.from_tensors(samples(10), samples(7), bs=3, valid_bs=5)
    assert [len(yb) for _, yb in dls.valid] == [5, 2]
    assert repr(dls) == "DataLoaders(train=4 batches, valid=2 batches)"


def test_from_tensors_without_validation_has_no_validation_batches() -> None:
    dls = DataLoaders.from_tensors(samples(4), bs=2)
    assert len(dls.valid) == 0
    assert list(dls.valid) == []


def test_from_tensors_shuffles_training_but_never_validation() -> None:
    dls = DataLoaders.from_tensors(samples(40), samples(40), bs=4, seed=0)
    train = order_of(dls)
    assert sorted(train) == list(range(40)) and train != list(range(40))
    for _ in range(2):
        assert [int(i) for _, y in dls.valid for i in y] == list(range(40))


def test_from_tensors_with_a_seed_is_reproducible() -> None:
    def orders(seed: int) -> Iterator[list[int]]:
        dls = DataLoaders.from_tensors(samples(30), bs=4, seed=seed)
        return (order_of(dls) for _ in range(3))

    first, again, other = list(orders(7)), list(orders(7)), list(orders(8))
    assert first == again  # the same epochs, epoch after epoch
    assert first != other
    assert first[0] != first[1]  # and still a new permutation every epoch


def test_from_tensors_without_a_seed_follows_torch_manual_seed() -> None:
    torch.default_generator.manual_seed(5)  # what torch.manual_seed(5) does on the CPU
    first = order_of(DataLoaders.from_tensors(samples(30), bs=4))
    torch.default_generator.manual_seed(5)
    assert order_of(DataLoaders.from_tensors(samples(30), bs=4)) == first


def test_from_tensors_without_shuffle_keeps_the_order() -> None:
    dls = DataLoaders.from_tensors(samples(9), bs=2, shuffle=False, seed=1)
    assert order_of(dls) == list(range(9))


# ------------------------------------------------------------------------ errors


def test_mismatched_lengths_are_rejected() -> None:
    x, _ = samples(10)
    with pytest.raises(
        ValueError,
        match=r"^TensorBatches needs tensors with the same first dimension \(one row per "
        r"sample\); got shapes \(10, 3\), \(9,\)$",
    ):
        TensorBatches((x, torch.zeros(9)), bs=2)
    with pytest.raises(ValueError, match=r"same first dimension .* got shapes \(10, 3\), \(\)"):
        DataLoaders.from_tensors((x, torch.tensor(1.0)))
    with pytest.raises(ValueError, match=r"got shapes \(4, 3\), \(5,\)$"):
        DataLoaders.from_tensors(samples(4), (samples(4)[0], torch.zeros(5)))


def test_non_tensors_are_rejected() -> None:
    with pytest.raises(TypeError, match=r"^TensorBatches needs one or more tensors$"):
        TensorBatches((), bs=2)
    with pytest.raises(TypeError, match=r"^TensorBatches needs one or more tensors$"):
        TensorBatches([[1.0, 2.0]], bs=2)  # type: ignore[list-item]  # pyright: ignore[reportArgumentType]


@pytest.mark.parametrize("bs", [0, -1, 1.5, True, "4", None])
def test_a_bad_batch_size_is_rejected(bs: object) -> None:
    with pytest.raises(
        ValueError, match=rf"^bs must be a positive int, got {re.escape(repr(bs))}$"
    ):
        TensorBatches(samples(4), bs=bs)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(
        ValueError, match=rf"^bs must be a positive int, got {re.escape(repr(bs))}$"
    ):
        DataLoaders.from_tensors(samples(4), bs=bs)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


@pytest.mark.parametrize("valid_bs", [0, -3, 2.0])
def test_a_bad_validation_batch_size_is_rejected(valid_bs: object) -> None:
    with pytest.raises(ValueError, match=rf"^valid_bs must be a positive int, got {valid_bs!r}$"):
        DataLoaders.from_tensors(samples(4), samples(4), valid_bs=valid_bs)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def test_sources_without_a_length_are_rejected() -> None:
    batches = [samples(2)]
    with pytest.raises(
        TypeError,
        match=r"^DataLoaders train must be a sized iterable of batches \(len\(\) and "
        r"iteration\), got generator$",
    ):
        DataLoaders(batch for batch in batches)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match=r"^DataLoaders valid must be .* got int$"):
        DataLoaders(batches, 3)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def test_any_sized_iterable_of_batches_is_a_source() -> None:
    batches = [samples(2), samples(3)]
    dls = DataLoaders(batches, batches[:1])
    assert dls.train is batches and len(dls.valid) == 1
    assert len(DataLoaders(batches).valid) == 0
