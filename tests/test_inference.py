"""Evaluation and inference: learn.validate(), learn.get_preds(), learn.predict().

Each runs one validate stage as an auxiliary run: the events a validation phase has, with
``training`` False and no grad, the model's modes put back, and the fit's records (Recorder,
trackers, loggers, schedules) left as they were.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch
from torch import nn
from typing_extensions import override

from conftest import TraceCallback, TraceEntry, live_tensors, storage_bytes, tiny_learner
from trainbus import Callback, CancelBatchException, DataLoaders, Event, Learner, Preds
from trainbus.callbacks import (
    CSVLogger,
    EarlyStoppingCallback,
    ParamScheduler,
    ProgressCallback,
    ReduceLROnPlateau,
    SaveModelCallback,
    SchedLin,
)
from trainbus.metrics import accuracy, error_rate

HAS_CUDA = torch.cuda.is_available()
cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")


def classifier(
    cbs: list[Any] | None = None, device: str = "cpu", n_valid: int = 60, dropout: float = 0.0
) -> Learner:
    """A small MLP on quadrant data: 200 training rows, ``n_valid`` validation rows."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200 + n_valid, 2, generator=g)
    y = (x[:, 0] * x[:, 1] > 0).long()
    dls = DataLoaders.from_tensors(
        (x[:200], y[:200]), (x[200:], y[200:]), bs=16, valid_bs=25, seed=0
    )
    torch.manual_seed(0)  # pyright: ignore[reportUnknownMemberType]
    model = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 2))
    return Learner(
        model, dls, nn.functional.cross_entropy, opt_func=torch.optim.Adam, lr=1e-2,
        cbs=cbs, metrics=[accuracy, error_rate], device=device,
    )  # fmt: skip


def valid_tensors(learn: Learner) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*learn.dls.valid, strict=True)
    return torch.cat(xs), torch.cat(ys)


class Quiet(TraceCallback):
    """A tracer that keeps out of auxiliary runs."""

    run_in_auxiliary: ClassVar[bool] = False


class GradAndMode(TraceCallback):
    """A tracer that also notes, at after_pred, whether grad is on and the model trains."""

    def __init__(self, log: list[TraceEntry]) -> None:
        super().__init__(log)
        self.seen: list[tuple[bool, bool]] = []

    @override
    def after_pred(self) -> None:
        super().after_pred()
        self.seen.append((torch.is_grad_enabled(), self.model.training))


def events(log: list[TraceEntry]) -> list[Event]:
    return [entry[1] for entry in log]


# ------------------------------------------------------------------ validate


def test_validate_returns_exactly_what_the_fit_recorded_last() -> None:
    learn = classifier()
    learn.fit(3)
    names = learn.recorder.metric_names
    recorded = dict(zip(names[1:], learn.recorder.values[-1][1:], strict=True))
    assert list(recorded) == ["valid_loss", "accuracy", "error_rate"]
    assert learn.validate() == recorded  # same weights, same data: the same floats


def test_validate_on_another_loader_weights_batches_by_size() -> None:
    learn = classifier()
    learn.fit(1)
    x, y = valid_tensors(learn)
    uneven = [(x[:7], y[:7]), (x[7:], y[7:])]  # 7 and 53 rows
    result = learn.validate(uneven)
    with torch.no_grad():
        pred = learn.model(x)
    assert result["valid_loss"] == pytest.approx(nn.functional.cross_entropy(pred, y).item())
    assert result["accuracy"] == pytest.approx(accuracy(pred, y).item())


def test_validate_without_batches_is_nan() -> None:
    result = classifier().validate([])
    assert list(result) == ["valid_loss", "accuracy", "error_rate"]
    assert all(value != value for value in result.values())


def test_an_auxiliary_run_is_one_validate_stage_without_grad() -> None:
    log: list[TraceEntry] = []
    quiet_log: list[TraceEntry] = []
    tracer = GradAndMode(log)
    learn = classifier(cbs=[tracer, Quiet(quiet_log)])
    learn.model.train()
    learn.validate()
    batch = [Event.begin_batch, Event.after_pred, Event.after_loss, Event.after_batch]
    assert events(log) == [Event.begin_validate, *batch * 3, Event.after_validate]
    assert all(training is False for *_, training in log)
    assert tracer.seen == [(False, False)] * 3  # no grad, model in eval mode
    assert learn.model.training  # put back as it was
    assert all(module.training for module in learn.model.modules())
    assert quiet_log == []  # detached for the run


def test_auxiliary_runs_leave_the_fit_records_alone(tmp_path: Path) -> None:
    csv = tmp_path / "history.csv"
    saver = SaveModelCallback(path=tmp_path / "models", every_epoch=True)
    stopper = EarlyStoppingCallback(patience=5)
    plateau = ReduceLROnPlateau(patience=5)
    scheduler = ParamScheduler({"lr": SchedLin(1e-2, 1e-3)})
    learn = classifier(cbs=[CSVLogger(csv), saver, stopper, plateau, scheduler])
    learn.fit(2)
    before = {
        "values": [list(row) for row in learn.recorder.values],
        "losses": list(learn.recorder.losses),
        "lrs": list(learn.recorder.lrs),
        "csv": csv.read_text(),
        "files": sorted(p.name for p in (tmp_path / "models").iterdir()),
        "trackers": (stopper.wait, stopper.best, plateau.wait, saver.best_epoch),
        "hps": {k: list(v) for k, v in scheduler.hps.items()},
        "lr": learn.opt.param_groups[0]["lr"],
        "counters": (learn.epoch, learn.n_epoch, learn.iter, learn.n_iter, learn.train_iter),
        "order": learn.bus.describe(),
        "cbs": learn.cbs,
    }
    learn.validate()
    learn.get_preds(with_loss=True)
    learn.predict(torch.randn(4, 2))
    after = {
        "values": learn.recorder.values,
        "losses": learn.recorder.losses,
        "lrs": learn.recorder.lrs,
        "csv": csv.read_text(),
        "files": sorted(p.name for p in (tmp_path / "models").iterdir()),
        "trackers": (stopper.wait, stopper.best, plateau.wait, saver.best_epoch),
        "hps": scheduler.hps,
        "lr": learn.opt.param_groups[0]["lr"],
        "counters": (learn.epoch, learn.n_epoch, learn.iter, learn.n_iter, learn.train_iter),
        "order": learn.bus.describe(),
        "cbs": learn.cbs,
    }
    assert after == before
    assert learn.dl is learn.dls.valid  # the fit's last loader, put back
    assert learn.training is False


def test_an_error_in_an_auxiliary_run_puts_everything_back() -> None:
    class Boom(TraceCallback):
        @override
        def after_pred(self) -> None:
            raise RuntimeError("boom")

    learn = classifier(cbs=[EarlyStoppingCallback()])
    learn.fit(1)
    order, cbs = learn.bus.describe(), learn.cbs
    learn.model.train()
    boom = learn.add_cb(Boom([]))
    with pytest.raises(RuntimeError, match="boom"):
        learn.get_preds()
    learn.remove_cb(boom)
    assert learn.bus.describe() == order and learn.cbs == cbs
    assert learn.model.training
    assert len(learn.recorder.values) == 1
    with pytest.raises(AttributeError, match="no value here"):
        _ = learn.pred  # the batch was dropped


def test_no_auxiliary_run_inside_a_fit() -> None:
    class ValidatesInside(TraceCallback):
        @override
        def after_epoch(self) -> None:
            self.learn.validate()

    learn = classifier(cbs=[ValidatesInside([])])
    with pytest.raises(RuntimeError, match="cannot run while a fit or another of them is running"):
        learn.fit(1)


def test_a_progress_bar_shows_for_a_validate_run(monkeypatch: pytest.MonkeyPatch) -> None:
    from tqdm import tqdm

    seen: list[str] = []
    update = tqdm.update  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]

    def noted(bar: tqdm[object], n: float = 1) -> bool | None:
        seen.append(bar.desc)
        return update(bar, n)

    monkeypatch.setattr(tqdm, "update", noted)
    learn = classifier()
    learn.remove_cb(learn.get_cb(ProgressCallback))
    progress = learn.add_cb(ProgressCallback(show=True, table=False))
    handlers = learn.bus.handlers(Event.after_batch)
    learn.validate()
    assert seen == ["valid"] * 3
    assert not progress.bars_open
    assert learn.bus.handlers(Event.after_batch) == handlers  # its bar hook is gone again


# ------------------------------------------------------------------ get_preds


def test_get_preds_returns_outputs_targets_and_per_sample_losses() -> None:
    learn = classifier()
    learn.fit(1)
    _, y = valid_tensors(learn)
    result = learn.get_preds(with_loss=True)
    assert isinstance(result, Preds) and isinstance(result, tuple)
    preds, targets, losses = result
    with torch.no_grad():
        expected = torch.cat([learn.model.eval()(xb) for xb, _ in learn.dls.valid])
    assert torch.equal(preds, expected) and torch.equal(targets, y)
    assert losses is not None
    assert torch.allclose(losses, nn.functional.cross_entropy(expected, y, reduction="none"))
    assert preds.device == torch.device("cpu") and not preds.requires_grad
    assert learn.get_preds().losses is None


def test_per_sample_losses_from_a_loss_module_and_over_extra_dimensions() -> None:
    loss_module = nn.MSELoss()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10, 3, generator=g), torch.randn(10, 4, generator=g)
    dls = DataLoaders.from_tensors((x, y), (x, y), bs=4, shuffle=False)
    learn = Learner(nn.Linear(3, 4), dls, loss_module, device="cpu")
    _, _, losses = learn.get_preds(with_loss=True)
    with torch.no_grad():
        expected = ((learn.model(x) - y) ** 2).mean(dim=1)  # one per sample: (10,)
    assert losses is not None and losses.shape == (10,)
    assert torch.allclose(losses, expected)
    assert loss_module.reduction == "mean"  # the user's module is left as it was


def test_a_loss_without_reduction_is_a_clear_error_with_loss() -> None:
    def plain(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(pred, target)

    learn = classifier()
    learn.loss_func = plain
    with pytest.raises(TypeError, match=r"get_preds\(with_loss=True\) needs per-sample losses"):
        learn.get_preds(with_loss=True)
    assert learn.get_preds().preds.shape == (60, 2)  # without losses it is fine


def test_targets_of_any_nesting_are_kept_as_given() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 2, generator=g)
    labels, boxes = torch.arange(6), torch.randn(6, 4, generator=g)
    batches = [
        (x[i : i + 3], {"label": labels[i : i + 3], "extra": [boxes[i : i + 3], ("a", "b", "c")]})
        for i in (0, 3)
    ]

    def loss(pred: torch.Tensor, target: dict[str, Any]) -> torch.Tensor:
        return pred.sum()

    learn = Learner(nn.Linear(2, 3), DataLoaders(batches, batches), loss, device="cpu")
    preds, targets, _ = learn.get_preds()
    assert preds.shape == (6, 3)
    nested: dict[str, Any] = targets
    assert type(nested) is dict and list(nested) == ["label", "extra"]
    label: torch.Tensor = nested["label"]
    extra: list[Any] = nested["extra"]
    assert torch.equal(label, labels) and type(extra) is list and torch.equal(extra[0], boxes)
    assert extra[1] == ("a", "b", "c", "a", "b", "c")  # one item per sample: joined


def test_several_targets_are_a_tuple_and_no_targets_none() -> None:
    g = torch.Generator().manual_seed(0)
    x, y, w = torch.randn(8, 2, generator=g), torch.randn(8, 1, generator=g), torch.rand(8)
    dls = DataLoaders.from_tensors((x, y, w), (x, y, w), bs=4, shuffle=False)

    def weighted(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return (weight[:, None] * (pred - target) ** 2).mean()

    learn = Learner(nn.Linear(2, 1), dls, weighted, device="cpu")
    _, targets, _ = learn.get_preds()
    pair: tuple[torch.Tensor, torch.Tensor] = targets
    assert type(pair) is tuple and torch.equal(pair[0], y) and torch.equal(pair[1], w)
    log: list[TraceEntry] = []
    learn.add_cb(TraceCallback(log))
    preds, targets, _ = learn.get_preds([(x[:4],), (x[4:],)])  # inputs only
    assert targets is None and preds.shape == (8, 1)
    assert Event.after_loss not in events(log)  # no loss without targets
    with pytest.raises(ValueError, match=r"needs targets, but the batches have none"):
        tiny_learner().get_preds([(x,)], with_loss=True)


def test_cancelled_batches_are_left_out() -> None:
    class SkipFirst(TraceCallback):
        @override
        def begin_batch(self) -> None:
            if self.iter == 0:
                raise CancelBatchException

    learn = classifier(cbs=[SkipFirst([])])
    preds, targets, _ = learn.get_preds()
    assert preds.shape == (35, 2) and targets.shape == (35,)  # 25 + 10 of 25 + 25 + 10


def live_bytes() -> int:
    return storage_bytes(live_tensors())


class Census(TraceCallback):
    """Every 5 batches, the bytes of all live tensors."""

    def __init__(self) -> None:
        super().__init__([])
        self.bytes: list[int] = []

    @override
    def after_batch(self) -> None:
        if self.iter % 5 == 4:
            self.bytes.append(live_bytes())


def test_get_preds_on_10000_rows_holds_the_outputs_only() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10_000, 8, generator=g), torch.randint(0, 4, (10_000,), generator=g)
    dls = DataLoaders.from_tensors((x[:10], y[:10]), (x, y), bs=10, valid_bs=500)
    wide = nn.Sequential(nn.Linear(8, 256), nn.ReLU(), nn.Linear(256, 4))  # 0.5 MB a batch inside
    census = Census()
    learn = Learner(wide, dls, nn.functional.cross_entropy, cbs=[census], device="cpu")
    preds, _, losses = learn.get_preds(with_loss=True)
    assert preds.shape == (10_000, 4) and losses is not None
    # Per 5 batches of 500 rows: their outputs (4 floats), targets (1 int64), losses (1 float).
    kept = 5 * 500 * (4 * 4 + 8 + 4)
    growth = [b - a for a, b in zip(census.bytes, census.bytes[1:], strict=False)]
    assert len(growth) == 3
    assert all(step <= kept + 4096 for step in growth), growth


# ------------------------------------------------------------------ predict


def test_predict_one_batch_in_eval_mode_on_the_cpu() -> None:
    log: list[TraceEntry] = []
    learn = classifier(cbs=[TraceCallback(log)], dropout=0.5)
    learn.model.train()
    x = torch.randn(5, 2)
    out = learn.predict(x)
    learn.model.eval()
    with torch.no_grad():
        assert torch.equal(out, learn.model(x))  # dropout off: eval mode during predict
    assert out.device == torch.device("cpu")
    batch = [Event.begin_batch, Event.after_pred, Event.after_batch]
    assert events(log) == [Event.begin_validate, *batch, Event.after_validate]


def test_predict_takes_n_inp_inputs() -> None:
    class TwoInputs(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.scale = nn.Parameter(torch.ones(()))

        @override
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return (a + b) * self.scale

    x = torch.ones(2, 3)
    dls = DataLoaders([(x, x, x)])
    learn = Learner(TwoInputs(), dls, nn.functional.mse_loss, n_inp=2, device="cpu")
    assert torch.equal(learn.predict(x, x), 2 * x)
    with pytest.raises(
        TypeError, match=r"predict takes the model's inputs, n_inp=2 of them, got 1"
    ):
        learn.predict(x)


def test_predict_reports_a_cancelled_batch() -> None:
    class CancelAll(TraceCallback):
        @override
        def begin_batch(self) -> None:
            raise CancelBatchException

    learn = tiny_learner([CancelAll([])])
    with pytest.raises(RuntimeError, match="a callback cancelled the batch"):
        learn.predict(torch.ones(1, 2))


# ------------------------------------------------------------------ CUDA


@cuda
def test_cuda_validate_and_get_preds() -> None:
    learn = classifier(device="cuda")
    learn.fit(2)
    recorded = learn.recorder.values[-1][1:]
    assert list(learn.validate().values()) == pytest.approx(recorded)
    preds, targets, losses = learn.get_preds(with_loss=True)
    assert preds.device == targets.device == torch.device("cpu")
    assert losses is not None and losses.device == torch.device("cpu")
    assert learn.predict(torch.randn(3, 2)).device == torch.device("cpu")


@cuda
def test_cuda_memory_stays_flat_during_get_preds() -> None:
    class DeviceCensus(TraceCallback):
        def __init__(self) -> None:
            super().__init__([])
            self.allocated: list[int] = []

        @override
        def after_batch(self) -> None:
            self.allocated.append(torch.cuda.memory_allocated())

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(10_000, 8, generator=g), torch.randint(0, 4, (10_000,), generator=g)
    dls = DataLoaders.from_tensors((x[:10], y[:10]), (x, y), bs=10, valid_bs=500)
    census = DeviceCensus()
    model = nn.Sequential(nn.Linear(8, 1024), nn.ReLU(), nn.Linear(1024, 4))
    learn = Learner(model, dls, nn.functional.cross_entropy, cbs=[census], device="cuda")
    learn.get_preds(with_loss=True)
    assert max(census.allocated[1:]) == census.allocated[1]  # no growth after the first batch


# ------------------------------------------------------------------ the auxiliary rule


def test_which_library_callbacks_act_in_auxiliary_runs() -> None:
    from trainbus.callbacks import (
        GradientClip,
        MixedPrecision,
        ModelResetter,
        Recorder,
        TrainEvalCallback,
    )

    quiet: list[type[Callback]] = [
        Recorder,
        CSVLogger,
        EarlyStoppingCallback,
        SaveModelCallback,
        ReduceLROnPlateau,
        ParamScheduler,
    ]
    active: list[type[Callback]] = [
        TrainEvalCallback,
        ProgressCallback,
        MixedPrecision,
        ModelResetter,
        GradientClip,
    ]
    assert [cls.run_in_auxiliary for cls in quiet] == [False] * 6
    assert [cls.run_in_auxiliary for cls in active] == [True] * 5


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=cuda)])
def test_mixed_precision_acts_in_a_run_before_any_fit(device: str) -> None:
    from trainbus.callbacks import MixedPrecision

    learn = classifier(cbs=[MixedPrecision(torch.bfloat16)], device=device)
    out = learn.predict(torch.randn(3, 2))
    assert out.dtype == torch.bfloat16  # the forward pass ran under the device's autocast
    assert learn.get_preds().preds.dtype == torch.bfloat16
    assert not torch.is_autocast_enabled(device)  # and left no autocast behind
