"""Everyday mistakes answered early, with an error that names the mistake."""

from __future__ import annotations

import re
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from typing_extensions import override

from conftest import TraceCallback, tiny_dls, tiny_learner, tiny_model
from trainbus import Callback, DataLoaders, Learner
from trainbus.metrics import accuracy

# ------------------------------------------------------------- empty training data


def test_an_empty_training_loader_is_an_error_when_the_fit_starts() -> None:
    # Before: the fit ran with train_loss = nan and no error.
    x, y = torch.zeros(0, 2), torch.zeros(0, 1)
    valid = tiny_dls().valid
    dls = DataLoaders(DataLoader(TensorDataset(x, y), batch_size=2), valid)
    log: list[Any] = []
    learn = Learner(tiny_model(), dls, nn.functional.mse_loss, cbs=[TraceCallback(log)])
    with pytest.raises(ValueError, match=r"a fit needs training batches, but dls\.train is empty"):
        learn.fit(1)
    assert log == []  # raised before begin_fit
    learn.fit(0)  # no epoch: nothing to train on is fine


# ------------------------------------------------------------ a loss module's class


def test_a_loss_class_for_an_instance_is_an_error_at_construction() -> None:
    with pytest.raises(TypeError, match=r"loss_func is a loss module's class, CrossEntropyLoss.*"
                       r"pass an instance, CrossEntropyLoss\(\)"):  # fmt: skip
        Learner(tiny_model(), tiny_dls(), nn.CrossEntropyLoss)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


# -------------------------------------------------- outputs and metrics of other types


class DictModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 3)

    @override
    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.lin(x)}


def dict_loss(pred: dict[str, torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(pred["logits"], target)


def class_dls() -> DataLoaders:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(8, 2, generator=generator)
    y = torch.randint(0, 3, (8,), generator=generator)
    return DataLoaders.from_tensors((x, y), (x, y), bs=4, shuffle=False)


def test_a_dict_output_with_a_dict_aware_loss_trains() -> None:
    learn = Learner(DictModel(), class_dls(), dict_loss)
    learn.fit(1)
    assert len(learn.recorder.values) == 1


def test_a_metric_that_cannot_take_the_output_is_named() -> None:
    # Before: AttributeError: 'dict' object has no attribute 'detach', from the Recorder.
    learn = Learner(DictModel(), class_dls(), dict_loss, metrics=[accuracy])
    with pytest.raises(AttributeError) as info:
        learn.fit(1)
    notes = getattr(info.value, "__notes__", [])
    assert any("raised by metric accuracy" in note and "a dict" in note for note in notes)


def test_a_loss_that_is_not_a_tensor_is_named() -> None:
    def float_loss(pred: torch.Tensor, target: torch.Tensor) -> Any:
        return float(((pred - target) ** 2).mean().detach())

    learn = Learner(tiny_model(), tiny_dls(), float_loss)
    expected = "the loss must be a torch.Tensor, but loss_func returned a float"
    with pytest.raises(TypeError, match=re.escape(expected)):
        learn.fit(1)


# ------------------------------------------------ where a data or model error was raised


class FailingAt(Dataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, bad: int) -> None:
        self.bad = bad

    def __len__(self) -> int:
        return 8

    @override
    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if index == self.bad:
            raise OSError(f"sample {index} is corrupt")
        return torch.ones(2) * index, torch.ones(1)


def test_a_data_error_notes_phase_epoch_and_batch() -> None:
    dls = DataLoaders(
        DataLoader(FailingAt(5), batch_size=1), DataLoader(FailingAt(-1), batch_size=4)
    )
    learn = Learner(tiny_model(), dls, nn.functional.mse_loss)
    with pytest.raises(OSError, match="sample 5 is corrupt") as info:
        learn.fit(1)
    assert info.value.__notes__ == [
        "trainbus: raised in the training data while loading batch 5 of epoch 0"
    ]


def test_a_data_error_in_the_first_batch_of_validation() -> None:
    dls = DataLoaders(
        DataLoader(FailingAt(-1), batch_size=4), DataLoader(FailingAt(0), batch_size=4)
    )
    learn = Learner(tiny_model(), dls, nn.functional.mse_loss)
    with pytest.raises(OSError) as info:
        learn.fit(1)
    assert info.value.__notes__ == [
        "trainbus: raised in the validation data while loading batch 0 of epoch 0"
    ]


class Fragile(nn.Module):
    """Raises in validation of the second epoch, at its second batch."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.calls = 0

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            self.calls += 1
            if self.calls == 4:  # 2 validation batches per epoch: epoch 1, batch 1
                raise RuntimeError("shape mismatch")
        out: torch.Tensor = self.lin(x)
        return out


def test_a_model_error_notes_phase_epoch_and_batch() -> None:
    learn = tiny_learner(model=Fragile())
    with pytest.raises(RuntimeError, match="shape mismatch") as info:
        learn.fit(2)
    assert info.value.__notes__ == [
        "trainbus: raised in the model or loss_func of validation batch 1, epoch 1"
    ]


class Broken(Callback):
    @override
    def after_pred(self) -> None:
        raise ValueError("bug")


def test_a_callback_error_keeps_its_own_note_only() -> None:
    learn = tiny_learner([Broken()])
    with pytest.raises(ValueError) as info:
        learn.fit(1)
    assert info.value.__notes__ == ["trainbus: raised in callback Broken during event after_pred"]


# ----------------------------------------------------------- loop-owned state fields


@pytest.mark.parametrize("name", ["epoch", "iter", "n_epoch", "n_iter", "dl", "dls", "cbs"])
def test_loop_owned_fields_cannot_be_written_through_the_state(name: str) -> None:
    state = tiny_learner().state
    before = getattr(state, name, None)
    with pytest.raises(AttributeError, match=f"TrainingState.{name} is owned by the training loop"):
        setattr(state, name, 3)
    assert getattr(state, name, None) is before
