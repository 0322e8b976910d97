"""MLflowLogger: runs read back with MLflow's own client."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from conftest import tiny_dls, tiny_model
from test_loggers import CrashAt, StopAt
from trainbus import Callback, Learner
from trainbus.callbacks import Checkpoint, MLflowLogger, SaveModelCallback

pytest.importorskip("mlflow", reason='needs pip install "trainbus[mlflow]"')

from mlflow.tracking import MlflowClient

# A new SQLite store runs MLflow's schema migrations: seconds, once for the module.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    """One SQLite store for the module's tests (creating one takes a second)."""
    return f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"


def mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return (pred - target).abs().mean()


def learner(*cbs: Callback) -> Learner:
    return Learner(
        tiny_model(),
        tiny_dls(n_train=4),
        torch.nn.functional.mse_loss,
        lr=0.05,
        cbs=cbs,
        metrics=[mae],
    )


def artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> list[str]:
    """The paths of the run's artifacts under ``path``."""
    # MlflowClient.list_artifacts leaves ``path`` unannotated.
    found = client.list_artifacts(run_id, path)  # pyright: ignore[reportUnknownMemberType]
    return [info.path for info in found]


def history(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in client.get_metric_history(run_id, key)]


def test_params_metrics_and_the_saved_model(store: str, tmp_path: Path) -> None:
    logger = MLflowLogger(
        "test-run", store, every_n_steps=3, artifact_location=str(tmp_path / "artifacts")
    )
    saver = SaveModelCallback(path=tmp_path / "models")
    learn = learner(logger, saver)
    learn.fit(2)
    assert logger.run_id is not None
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(logger.run_id)
    assert run.info.status == "FINISHED"
    experiment = client.get_experiment_by_name("test-run")
    assert experiment is not None and run.info.experiment_id == experiment.experiment_id
    params = run.data.params
    assert params["lr"] == "0.05" and params["n_epoch"] == "2" and params["opt"] == "SGD"
    recorder = learn.recorder
    for column, name in enumerate(recorder.metric_names):
        expected = [(epoch, row[column]) for epoch, row in enumerate(recorder.values)]
        assert history(client, logger.run_id, name) == expected, name
    assert history(client, logger.run_id, "time") == list(enumerate(recorder.times))
    steps = history(client, logger.run_id, "step/train_loss")
    assert steps == list(enumerate(recorder.losses)) and len(steps) == 8
    assert history(client, logger.run_id, "step/lr") == list(enumerate(recorder.lrs))
    assert history(client, logger.run_id, "step/mom") == [(i, 0.0) for i in range(8)]
    # The best model SaveModelCallback wrote, as an artifact that loads back.
    assert artifacts(client, logger.run_id, "model") == ["model/model.pth"]
    local = client.download_artifacts(logger.run_id, "model/model.pth", str(tmp_path / "dl"))
    assert saver.best_file is not None
    assert Path(local).read_bytes() == saver.best_file.read_bytes()


def test_each_fit_is_a_run_and_no_model_means_no_artifact(store: str) -> None:
    logger = MLflowLogger("two-fits", store, every_n_steps=None)
    learn = learner(logger)
    learn.fit(1)
    first = logger.run_id
    learn.fit(1)
    assert first is not None and logger.run_id is not None and logger.run_id != first
    client = MlflowClient(tracking_uri=store)
    assert artifacts(client, logger.run_id) == []
    assert history(client, logger.run_id, "step/train_loss") == []
    assert [step for step, _ in history(client, logger.run_id, "train_loss")] == [0]


@pytest.mark.parametrize(
    ("error", "status"),
    [
        (None, "FINISHED"),
        (RuntimeError("callback failed"), "FAILED"),
        (KeyboardInterrupt(), "KILLED"),
    ],
    ids=["cancelled", "error", "interrupt"],
)
def test_the_run_ends_however_the_fit_ends(
    store: str, error: BaseException | None, status: str
) -> None:
    logger = MLflowLogger("endings", store)
    learn = learner(logger, StopAt(1, error))
    if error is None:
        learn.fit(3)  # a CancelFitException in epoch 1
    else:
        with pytest.raises(type(error)):
            learn.fit(3)
    assert logger.run_id is not None
    client = MlflowClient(tracking_uri=store)
    run = client.get_run(logger.run_id)
    assert run.info.status == status and run.info.end_time is not None
    assert [step for step, _ in history(client, logger.run_id, "train_loss")] == [0]


def test_the_default_store_is_a_sqlite_file_in_the_current_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    # A SQLite file, as the other tests' stores: no server, and MLflow 3 accepts it.
    assert MLflowLogger().tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/runs.db")
    assert MLflowLogger().tracking_uri == "sqlite:////elsewhere/runs.db"


def test_the_experiment_must_be_named() -> None:
    with pytest.raises(ValueError, match="experiment must be a non-empty str, got ''"):
        MLflowLogger("")


def test_a_resumed_fit_goes_on_with_the_interrupted_run(store: str, tmp_path: Path) -> None:
    first = MLflowLogger("resumed", store, every_n_steps=3)
    with pytest.raises(RuntimeError, match="crash"):
        learner(first, Checkpoint(tmp_path, every_n_steps=2), CrashAt(6)).fit(3)
    client = MlflowClient(tracking_uri=store)
    assert first.run_id is not None
    assert client.get_run(first.run_id).info.status == "FAILED"
    resumed = MLflowLogger("resumed", store, every_n_steps=3)
    checkpoint = Checkpoint(tmp_path, every_n_steps=2)
    learn = learner(resumed, checkpoint)
    learn.fit(3, resume="latest")
    assert resumed.run_id == first.run_id  # one run for the whole fit
    run = client.get_run(first.run_id)
    assert run.info.status == "FINISHED"
    experiment = client.get_experiment_by_name("resumed")
    assert experiment is not None
    assert [r.info.run_id for r in client.search_runs([experiment.experiment_id])] == [
        first.run_id
    ]  # the resumed fit's own new run was deleted
    steps = history(client, first.run_id, "step/train_loss")
    assert steps == list(enumerate(learn.recorder.losses))  # every step once
    epochs = history(client, first.run_id, "valid_loss")
    assert epochs == [(epoch, row[1]) for epoch, row in enumerate(learn.recorder.values)]
    # The last checkpoint the fit wrote, as an artifact.
    assert checkpoint.written
    assert artifacts(client, first.run_id, "checkpoint") == [f"checkpoint/{checkpoint.written[-1]}"]
