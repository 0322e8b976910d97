"""The Logger interface: what a fit sends, when, with how many host reads, and closing."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import torch
from typing_extensions import override

from conftest import tiny_dls, tiny_model
from test_host_sync import BATCH_EVENTS, SyncLog, classifier
from trainbus import Callback, CancelFitException, Event, Learner
from trainbus.callbacks import (
    Checkpoint,
    CSVLogger,
    HParam,
    Logger,
    MLflowLogger,
    ParamScheduler,
    SchedLin,
    TensorBoardLogger,
)


class ListLogger(Logger):
    """A destination in a few lines: every call kept in lists."""

    def __init__(self, every_n_steps: int | None = None, **hparams: HParam) -> None:
        self.every_n_steps = every_n_steps
        self.hparams = hparams
        self.events: list[str] = []  # start, hparams, metrics, flush, close, in order
        self.logged: list[tuple[int, dict[str, float]]] = []  # log_metrics' arguments
        self.sent_hparams: list[dict[str, HParam]] = []
        self.closed_with: list[BaseException | None] = []

    @override
    def start(self) -> None:
        self.events.append("start")

    @override
    def log_hparams(self, hparams: Mapping[str, HParam]) -> None:
        self.events.append("hparams")
        self.sent_hparams.append(dict(hparams))

    @override
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        self.events.append("metrics")
        self.logged.append((step, dict(metrics)))

    @override
    def flush(self) -> None:
        self.events.append("flush")

    @override
    def close(self, error: BaseException | None) -> None:
        self.events.append("close")
        self.closed_with.append(error)

    def metrics(self, *, steps: bool) -> list[tuple[int, dict[str, float]]]:
        """The per-step (or per-epoch) log_metrics calls, as ``(step, metrics)``."""
        return [(i, m) for i, m in self.logged if ("step/train_loss" in m) == steps]


def mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).abs().mean()


def sgd_learner(*cbs: Callback, n_train: int = 3) -> Learner:
    """Tiny regression, SGD with momentum 0.9, a metric: every kind of value is logged."""

    def opt(params: object, lr: float) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=lr, momentum=0.9)  # type: ignore[arg-type]

    return Learner(
        tiny_model(),
        tiny_dls(n_train=n_train),
        torch.nn.functional.mse_loss,
        opt_func=opt,
        lr=0.05,
        cbs=cbs,
        metrics=[mae],
    )


def test_per_epoch_values_are_the_recorders() -> None:
    logger = ListLogger()
    learn = sgd_learner(logger)
    learn.fit(3)
    epochs = logger.metrics(steps=False)
    assert [step for step, _ in epochs] == [0, 1, 2]
    recorder = learn.recorder
    for (_, metrics), row, seconds in zip(epochs, recorder.values, recorder.times, strict=True):
        assert metrics == {**dict(zip(recorder.metric_names, row, strict=True)), "time": seconds}
    assert logger.metrics(steps=True) == []  # every_n_steps None: per-epoch values only


def test_per_step_values_are_the_recorders_losses_lrs_and_momentum() -> None:
    logger = ListLogger(every_n_steps=2)
    sched = ParamScheduler({"lr": SchedLin(0.1, 0.01), "mom": SchedLin(0.95, 0.85)})
    learn = sgd_learner(sched, logger)
    learn.fit(2)
    steps = logger.metrics(steps=True)
    recorder = learn.recorder
    assert [step for step, _ in steps] == list(range(6))
    assert [m["step/train_loss"] for _, m in steps] == recorder.losses
    assert [m["step/lr"] for _, m in steps] == recorder.lrs == sched.hps["lr"]
    assert [m["step/mom"] for _, m in steps] == sched.hps["mom"]


def test_steps_are_sent_every_n_and_the_rest_at_the_end() -> None:
    logger = ListLogger(every_n_steps=4)
    sgd_learner(logger, n_train=3).fit(3)  # 9 steps: sent after steps 4 and 8, then 9 at the end
    groups: list[list[int]] = [[]]
    logged = iter(logger.logged)
    for event in logger.events:
        if event == "flush":
            groups.append([])
        elif event == "metrics":
            step, metrics = next(logged)
            if "step/train_loss" in metrics:
                groups[-1].append(step)
    assert [group for group in groups if group] == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]


@pytest.mark.parametrize(
    ("opt_func", "momentum"),
    [(torch.optim.Adam, 0.9), (torch.optim.SGD, 0.0), (torch.optim.Adagrad, None)],
    ids=["adam-first-beta", "sgd-momentum", "adagrad-none"],
)
def test_the_momentum_is_the_optimizers(
    opt_func: Callable[..., torch.optim.Optimizer], momentum: float | None
) -> None:
    logger = ListLogger(every_n_steps=1)
    loss = torch.nn.functional.mse_loss
    Learner(tiny_model(), tiny_dls(), loss, opt_func=opt_func, cbs=[logger]).fit(1)
    moms = {m.get("step/mom") for _, m in logger.metrics(steps=True)}
    assert moms == {momentum}


def test_hyper_parameters_are_collected_and_the_users_win() -> None:
    logger = ListLogger(note="baseline", lr=1.5)
    sgd_learner(logger).fit(2)
    (hparams,) = logger.sent_hparams
    expected: dict[str, HParam] = {
        "n_epoch": 2,
        "model": "Linear",
        "opt": "SGD",
        "loss_func": "mse_loss",
        "bs": 2,
        "momentum": 0.9,
        "weight_decay": 0,
        "lr": 1.5,  # the user's, over the optimizer's 0.05
        "note": "baseline",
    }
    assert expected.items() <= hparams.items()
    # Only what every tracker stores: no parameters, no None (SGD's foreach, fused).
    assert "params" not in hparams and "foreach" not in hparams
    assert all(isinstance(v, bool | int | float | str) for v in hparams.values())


class StopAt(Callback):
    def __init__(self, epoch: int, error: BaseException | None) -> None:
        self.stop_epoch = epoch
        self.error = error

    @override
    def begin_epoch(self) -> None:
        if self.epoch == self.stop_epoch:
            raise self.error or CancelFitException()


@pytest.mark.parametrize(
    "error", [None, RuntimeError("callback failed"), KeyboardInterrupt()], ids=str
)
def test_closed_once_however_the_fit_ends(error: BaseException | None) -> None:
    logger = ListLogger(every_n_steps=2)
    learn = sgd_learner(logger, StopAt(1, error))
    if error is None:
        learn.fit(3)
    else:
        with pytest.raises(type(error)):
            learn.fit(3)
    events = logger.events
    assert events[:2] == ["start", "hparams"]
    assert events.count("close") == 1 and events[-1] == "close"
    assert logger.closed_with == [error]
    assert [step for step, _ in logger.metrics(steps=False)] == [0]
    # The bus no longer calls the step hook: a later fit without the logger is untouched.
    learn.remove_cb(logger)
    learn.fit(1)
    assert logger.events.count("close") == 1


def test_per_step_values_take_one_host_read_every_n_steps(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # 2 epochs of 4 training batches: a read every n steps, the rest at the end of the fit.
    for every, n_reads, at_end in ((3, 2, 1), (1, 8, 0), (None, 0, 0)):
        learn = classifier(4, 3, cbs=[ListLogger(every_n_steps=every)])
        log = SyncLog(monkeypatch)
        log.attach(learn)
        learn.fit(2)
        monkeypatch.undo()
        in_batches = [
            (w, c) for w, c in zip(log.where, log.calls, strict=True) if w in BATCH_EVENTS
        ]
        assert in_batches == [(Event.after_batch.value, "tolist")] * n_reads, every
        assert log.where.count(Event.after_fit.value) == at_end, every


def test_a_tensor_learning_rate_is_read_with_the_losses(monkeypatch: pytest.MonkeyPatch) -> None:
    logger = ListLogger(every_n_steps=3)
    learn = sgd_learner(logger)
    learn.opt.param_groups[0]["lr"] = torch.tensor(0.05)
    log = SyncLog(monkeypatch)
    log.attach(learn)
    learn.fit(1)
    monkeypatch.undo()
    assert [c for w, c in zip(log.where, log.calls, strict=True) if w in BATCH_EVENTS] == ["tolist"]
    lrs = [m["step/lr"] for _, m in logger.metrics(steps=True)]
    assert lrs == [pytest.approx(0.05)] * 3 and all(type(lr) is float for lr in lrs)


def test_every_n_steps_must_be_a_positive_int() -> None:
    with pytest.raises(ValueError, match="every_n_steps"):
        TensorBoardLogger("runs", every_n_steps=0)
    with pytest.raises(ValueError, match=r"every_n_steps must be a positive int, got 2\.5"):
        MLflowLogger("exp", every_n_steps=2.5)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


def test_loggers_run_on_rank_zero_only_and_not_in_auxiliary_runs() -> None:
    for cls in (Logger, CSVLogger, TensorBoardLogger, MLflowLogger):
        assert cls.rank_zero_only is True and cls.run_in_auxiliary is False
    assert Callback.rank_zero_only is False and Callback.run_in_auxiliary is True


def test_auxiliary_runs_log_nothing() -> None:
    logger = ListLogger(every_n_steps=1)
    learn = sgd_learner(logger)
    learn.lr_find(num_it=5)
    learn.validate()
    learn.get_preds(with_loss=True)
    learn.predict(torch.zeros(3, 2))
    assert logger.events == []
    learn.fit(1)  # still attached, in its place, for the fits
    assert logger.events[:2] == ["start", "hparams"] and logger.events[-1] == "close"


def test_a_logger_without_log_metrics_says_so() -> None:
    class Incomplete(Logger):
        pass

    with pytest.raises(NotImplementedError, match="Incomplete must define log_metrics"):
        sgd_learner(Incomplete()).fit(1)


class CrashAt(Callback):
    """Raises at the end of training step ``step`` (after the Checkpoint wrote its file)."""

    order = 2000

    def __init__(self, step: int) -> None:
        self.step = step

    @override
    def after_batch(self) -> None:
        if self.training and self.train_iter == self.step:
            raise RuntimeError("crash")


def test_a_resumed_fit_sends_the_steps_the_interrupted_one_had_not(tmp_path: Path) -> None:
    first = ListLogger(every_n_steps=3)
    # Checkpoints after steps 2 and 4; steps 1-3 are sent at step 3, then the fit fails at 5.
    with pytest.raises(RuntimeError, match="crash"):
        sgd_learner(first, Checkpoint(tmp_path, every_n_steps=2), CrashAt(5)).fit(3)
    assert [step for step, _ in first.metrics(steps=True)] == [0, 1, 2]
    resumed = ListLogger(every_n_steps=3)
    learn = sgd_learner(resumed, Checkpoint(tmp_path, every_n_steps=2))
    learn.fit(3, resume="latest")
    steps = resumed.metrics(steps=True)
    assert [step for step, _ in steps] == list(range(3, 9))  # from the checkpoint's n_sent
    assert [m["step/train_loss"] for _, m in steps] == learn.recorder.losses[3:]
    assert [m["step/mom"] for _, m in steps] == [0.9] * 6
    assert [step for step, _ in resumed.metrics(steps=False)] == [1, 2]
