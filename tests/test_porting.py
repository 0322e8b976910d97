"""Porting habits from fastai, Lightning and Keras: what trainbus accepts, what it names."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from typing_extensions import override

from conftest import tiny_dls, tiny_learner, tiny_model
from trainbus import Callback, DataLoaders, EventBus, HookError, Learner
from trainbus._porting import FOREIGN_HOOKS
from trainbus.callbacks import (
    EarlyStoppingCallback,
    ModelResetter,
    ProgressCallback,
    Recorder,
    RNNRegularizer,
    TrainEvalCallback,
)
from trainbus.metrics import accuracy

# ------------------------------------------------------------ classes as callbacks


class Resettable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)
        self.resets = 0

    def reset(self) -> None:
        self.resets += 1

    @override
    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = x.unsqueeze(1).expand(-1, 3, -1)  # (bs, seq, 2)
        return self.lin(x), h, h


def test_a_callback_class_is_instantiated_with_no_arguments() -> None:
    # fastbook writes cbs=[ModelResetter, RNNRegularizer(alpha=2, beta=1)]
    learn = Learner(
        Resettable(),
        tiny_dls(),
        nn.functional.mse_loss,
        cbs=[ModelResetter, RNNRegularizer(alpha=2, beta=1)],
    )
    resetter = learn.get_cb(ModelResetter)
    assert isinstance(resetter, ModelResetter) and resetter.learn is learn
    learn.fit(1)
    model = learn.model
    assert isinstance(model, Resettable) and model.resets == 2
    added = learn.add_cb(EarlyStoppingCallback)  # typed EarlyStoppingCallback
    assert added.monitor == "valid_loss" and added in learn.cbs


class NeedsArgs(Callback):
    def __init__(self, n: int) -> None:
        self.n = n


def test_a_class_that_needs_arguments_is_a_clear_error() -> None:
    with pytest.raises(TypeError, match=r"NeedsArgs was given as a class.*pass an instance"):
        tiny_learner([NeedsArgs])  # type: ignore[list-item]  # pyright: ignore[reportArgumentType]
    with pytest.raises(TypeError, match=r"expected a trainbus\.Callback, got the class int"):
        tiny_learner().add_cb(int)  # type: ignore[type-var]  # pyright: ignore[reportArgumentType]


def test_a_fit_only_callback_class_is_removed_after_the_fit() -> None:
    learn = tiny_learner()
    before = learn.cbs
    learn.fit(1, cbs=[EarlyStoppingCallback])
    assert learn.cbs == before


# -------------------------------------------------------------- foreign hook names


@pytest.mark.parametrize("name", sorted(FOREIGN_HOOKS))
def test_another_librarys_hook_name_is_rejected_naming_the_event(name: str) -> None:
    library, event, _ = FOREIGN_HOOKS[name]

    def hook(self: Callback) -> None:
        pass

    cls = type(f"Ported_{name}", (Callback,), {name: hook})
    with pytest.raises(HookError) as info:
        tiny_learner([cls()])
    message = str(info.value)
    assert f"{name} is {library}'s hook name; trainbus calls it {event}" in message


def test_before_step_points_to_after_backward() -> None:
    class Clip(Callback):
        def before_step(self) -> None: ...

    with pytest.raises(HookError, match=r"Clip\.before_step .*trainbus calls it after_backward"):
        EventBus([Clip()])


def test_an_async_hook_is_rejected() -> None:
    class Awaiting(Callback):
        @override
        async def after_batch(self) -> None:  # type: ignore[override]  # pyright: ignore[reportIncompatibleMethodOverride]
            pass

    with pytest.raises(HookError, match=r"Awaiting\.after_batch is an async def"):
        tiny_learner([Awaiting()])


def test_an_async_function_subscriber_is_rejected() -> None:
    async def log(learn: Learner) -> None:
        pass

    with pytest.raises(TypeError, match=r"log is an async def"):
        tiny_learner().subscribe("after_batch", log)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


# ----------------------------------------------------- replacing a default callback


def count(learn: Learner, kind: type[Callback]) -> int:
    return sum(isinstance(cb, kind) for cb in learn.cbs)


def test_a_default_of_the_same_class_is_replaced() -> None:
    bar = ProgressCallback()
    learn = tiny_learner([bar])
    assert count(learn, ProgressCallback) == 1 and learn.get_cb(ProgressCallback) is bar
    recorder = Recorder(beta=0.5)
    old = learn.recorder
    learn.add_cb(recorder)
    assert count(learn, Recorder) == 1 and learn.recorder is recorder
    with pytest.raises(RuntimeError, match="not attached"):
        _ = old.learn
    learn.fit(1)
    assert len(recorder.values) == 1
    assert [type(cb) for cb in learn.cbs] == [TrainEvalCallback, Recorder, ProgressCallback]


def test_a_fit_only_replacement_gives_the_default_back() -> None:
    learn = tiny_learner()
    default = learn.recorder
    order = learn.cbs
    for_fit = Recorder()
    learn.fit(1, cbs=[for_fit])
    assert len(for_fit.values) == 1
    assert learn.cbs == order and learn.recorder is default


# ------------------------------------------------------------------------ metrics


def test_one_metric_callable_is_a_list_of_one() -> None:
    x = torch.randn(8, 2)
    y = torch.randint(0, 2, (8,))
    dls = DataLoaders.from_tensors((x, y), (x, y), bs=4, shuffle=False)
    learn = Learner(nn.Linear(2, 2), dls, nn.functional.cross_entropy, metrics=accuracy)
    assert learn.metrics == [accuracy]
    learn.fit(1)
    assert learn.recorder.metric_names == ["train_loss", "valid_loss", "accuracy"]


def python_mae(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float((pred - target).abs().mean())


def numpy_mae(pred: torch.Tensor, target: torch.Tensor) -> float:
    return float(np.float32(np.abs(pred.numpy() - target.numpy()).mean()))


def numpy_scalar_mae(pred: torch.Tensor, target: torch.Tensor) -> Any:
    return np.abs(pred.numpy() - target.numpy()).mean()  # a numpy.float32


def tensor_mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).abs().mean()


def test_metrics_returning_python_or_numpy_numbers() -> None:
    metrics = [tensor_mae, python_mae, numpy_mae, numpy_scalar_mae]
    learn = Learner(tiny_model(), tiny_dls(), nn.functional.mse_loss, metrics=metrics)
    learn.fit(2)
    for row in learn.recorder.values:
        assert row[3:] == pytest.approx([row[2]] * 3, rel=1e-6)


def test_a_metric_returning_something_else_is_named() -> None:
    def label(pred: torch.Tensor, target: torch.Tensor) -> Any:
        return "good"

    learn = Learner(tiny_model(), tiny_dls(), nn.functional.mse_loss, metrics=[label])
    with pytest.raises(TypeError, match="metric label returned str"):
        learn.fit(1)
