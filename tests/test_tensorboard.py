"""TensorBoardLogger: the event files, read back with TensorBoard's own reader."""

from __future__ import annotations

import gc
import importlib
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import tiny_dls, tiny_model
from test_csv import needs_proc, open_paths
from test_loggers import StopAt
from trainbus import Learner
from trainbus.callbacks import TensorBoardLogger

pytest.importorskip("tensorboard", reason='needs pip install "trainbus[tensorboard]"')


def mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).abs().mean()


def learner(logger: TensorBoardLogger) -> Learner:
    return Learner(
        tiny_model(),
        tiny_dls(n_train=4),
        torch.nn.functional.mse_loss,
        opt_func=torch.optim.Adam,
        lr=0.01,
        cbs=[logger],
        metrics=[mae],
    )


def untyped(module: str) -> Any:
    """A module of tensorboard's, which ships no type information."""
    return importlib.import_module(module)


def read_events(log_dir: Path) -> Any:
    """TensorBoard's EventAccumulator over ``log_dir``, loaded."""
    events: Any = untyped(
        "tensorboard.backend.event_processing.event_accumulator"
    ).EventAccumulator(str(log_dir))
    events.Reload()
    return events


def scalars(events: Any, tag: str) -> list[tuple[int, float]]:
    return [(int(e.step), float(e.value)) for e in events.Scalars(tag)]


def float32(values: list[float]) -> list[float]:
    """``values`` as TensorBoard keeps them: single precision."""
    return torch.tensor(values, dtype=torch.float32).tolist()  # pyright: ignore[reportUnknownMemberType, reportUnknownVariableType]


def test_scalars_are_the_recorders_values(tmp_path: Path) -> None:
    learn = learner(TensorBoardLogger(tmp_path, every_n_steps=3))
    learn.fit(2)
    events = read_events(tmp_path)
    recorder = learn.recorder
    for column, name in enumerate(recorder.metric_names):
        expected = [row[column] for row in recorder.values]
        assert scalars(events, name) == list(enumerate(float32(expected))), name
    assert scalars(events, "time") == list(enumerate(float32(recorder.times)))
    n = len(recorder.losses)
    assert n == 8
    assert scalars(events, "step/train_loss") == list(enumerate(float32(recorder.losses)))
    assert scalars(events, "step/lr") == list(enumerate(float32(recorder.lrs)))
    assert scalars(events, "step/mom") == list(enumerate(float32([0.9] * n)))  # Adam's beta1


def test_hyper_parameters_are_in_the_hparams_plugin(tmp_path: Path) -> None:
    plugin_data = untyped("tensorboard.plugins.hparams.plugin_data_pb2").HParamsPluginData

    learner(TensorBoardLogger(tmp_path, hparams={"note": "baseline"})).fit(1)
    content = read_events(tmp_path).PluginTagToContent("hparams")
    data: Any = plugin_data.FromString(content["_hparams_/session_start_info"])
    found: dict[str, Any] = {
        k: v.ListFields()[0][1] for k, v in data.session_start_info.hparams.items()
    }
    assert found["lr"] == pytest.approx(0.01)
    assert found["n_epoch"] == 1
    assert found["opt"] == "Adam" and found["note"] == "baseline"
    experiment: Any = plugin_data.FromString(content["_hparams_/experiment"]).experiment
    metric_tags: set[str] = {info.name.tag for info in experiment.metric_infos}
    assert metric_tags == {"train_loss", "valid_loss", "mae", "time"}


@needs_proc
@pytest.mark.parametrize("error", [None, RuntimeError("callback failed")], ids=str)
def test_the_writer_is_closed_however_the_fit_ends(
    tmp_path: Path, error: BaseException | None
) -> None:
    logger = TensorBoardLogger(tmp_path, every_n_steps=2)
    learn = learner(logger)
    learn.add_cb(StopAt(1, error))
    if error is None:
        learn.fit(3)
    else:
        with pytest.raises(RuntimeError, match="callback failed"):
            learn.fit(3)
    event_files = [str(p.resolve()) for p in tmp_path.glob("events.out.tfevents.*")]
    assert len(event_files) == 1
    assert not open_paths() & set(event_files)
    assert [step for step, _ in scalars(read_events(tmp_path), "train_loss")] == [0]
    del learn, logger
    gc.collect()


def test_a_missing_tensorboard_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match=r'pip install "trainbus\[tensorboard\]"'):
        learner(TensorBoardLogger(tmp_path)).fit(1)
