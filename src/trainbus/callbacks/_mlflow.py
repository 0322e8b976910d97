"""A fit as an MLflow run (``pip install "trainbus[mlflow]"``)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, cast

from typing_extensions import override

from .._checks import checked_int
from ._checkpoint import Checkpoint
from ._logger import HParam, Logger
from ._tracker import SaveModelCallback

if TYPE_CHECKING:
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

__all__ = ["MLflowLogger"]

# MLflow stores at most this many metrics per log_batch call.
_BATCH: Final = 1000


def _default_tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI`` when set, else a SQLite file ``mlflow.db`` in the current folder.

    A local store that needs no server (MLflow 3 refuses a plain ``file:`` store unless
    ``MLFLOW_ALLOW_FILE_STORE=true``). ``mlflow ui --backend-store-uri sqlite:///mlflow.db``
    shows it.
    """
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path('mlflow.db').resolve()}"


def _client(tracking_uri: str) -> MlflowClient:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError as error:
        raise ImportError(
            'MLflowLogger needs the mlflow package: pip install "trainbus[mlflow]"'
        ) from error
    return MlflowClient(tracking_uri=tracking_uri)


class MLflowLogger(Logger):
    """Logs each fit as an MLflow run of ``experiment``.

    Params: the collected hyper-parameters (see :class:`Logger`). Metrics: per epoch
    ``train_loss``, ``valid_loss``, each metric and ``time`` (step: the epoch); per
    training step ``step/train_loss``, ``step/lr``, ``step/mom`` (step: the step), sent
    every ``every_n_steps`` steps with one read from the device and one write to the
    store. When a :class:`SaveModelCallback` of the fit saved a model, its best file is
    logged as an artifact under ``model/``; when a :class:`Checkpoint` wrote checkpoints,
    the last one under ``checkpoint/``. The run ends ``FINISHED`` (also after a cancel
    signal), ``KILLED`` (KeyboardInterrupt) or ``FAILED`` (another exception). A fit
    resumed from a checkpoint goes on logging to the interrupted fit's run.

    Args:
        experiment: The experiment's name (created if missing).
        tracking_uri: Where runs are stored; ``None``: ``$MLFLOW_TRACKING_URI`` when set,
            else a SQLite file ``mlflow.db`` in the current folder (artifacts under
            ``./mlruns``): a local store that needs no server.
        every_n_steps: How often per-step values are sent; ``None``: per-epoch only.
        run_name: The runs' name (``None``: MLflow picks one).
        hparams: Hyper-parameters of your own to log with the collected ones.
        artifact_location: Where a new experiment keeps its artifacts (``None``: the
            store's default).

    Attributes:
        run_id: The last fit's run (``None`` before the first fit).

    Raises:
        ImportError: At the first fit, when mlflow is not installed.
    """

    def __init__(
        self,
        experiment: str = "trainbus",
        tracking_uri: str | None = None,
        every_n_steps: int | None = 50,
        *,
        run_name: str | None = None,
        hparams: Mapping[str, HParam] | None = None,
        artifact_location: str | None = None,
    ) -> None:
        if not isinstance(experiment, str) or not experiment:  # pyright: ignore[reportUnnecessaryIsInstance]
            raise ValueError(f"experiment must be a non-empty str, got {experiment!r}")
        self.experiment: str = experiment
        self.tracking_uri: str = tracking_uri or _default_tracking_uri()
        self.every_n_steps: int | None = (
            None if every_n_steps is None else checked_int("every_n_steps", every_n_steps)
        )
        self.run_name: str | None = run_name
        self.hparams: Mapping[str, HParam] = dict(hparams or {})
        self.artifact_location: str | None = artifact_location
        self.run_id: str | None = None
        self._client: MlflowClient | None = None
        self._pending: list[Metric] = []

    @property
    def client(self) -> MlflowClient:
        """The MLflow client of the store (made at the first fit)."""
        if self._client is None:
            self._client = _client(self.tracking_uri)
        return self._client

    @override
    def start(self) -> None:
        client = self.client
        found = client.get_experiment_by_name(self.experiment)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            experiment_id = client.create_experiment(
                self.experiment, artifact_location=self.artifact_location
            )
        run = client.create_run(experiment_id, run_name=self.run_name)
        self.run_id = run.info.run_id
        self._pending = []

    @override
    def log_hparams(self, hparams: Mapping[str, HParam]) -> None:
        from mlflow.entities import Param

        params = [Param(key, str(value)) for key, value in hparams.items()]
        for i in range(0, len(params), 100):  # MLflow's limit of params per call
            self.client.log_batch(self._run(), params=params[i : i + 100])

    @override
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._pending += [Metric(key, value, now, step) for key, value in metrics.items()]

    @override
    def flush(self) -> None:
        pending, self._pending = self._pending, []
        for i in range(0, len(pending), _BATCH):
            self.client.log_batch(self._run(), metrics=pending[i : i + _BATCH])

    @override
    def close(self, error: BaseException | None) -> None:
        run_id = self._run()
        if error is None:
            self.flush()
            # MlflowClient.log_artifact leaves its arguments unannotated.
            log = cast("Callable[..., None]", self.client.log_artifact)  # pyright: ignore[reportUnknownMemberType]
            for folder, path in self._model_files():
                log(run_id, str(path), artifact_path=folder)
        status = "FINISHED"
        if error is not None:
            status = "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED"
        self.client.set_terminated(run_id, status)

    @override
    def state_dict(self) -> dict[str, Any]:
        """The base's, and the run: a resumed fit goes on logging to it."""
        return {**super().state_dict(), "run_id": self.run_id}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Go on with the interrupted fit's run, when this store holds it.

        The run ``begin_fit`` opened for the resumed fit is deleted, and the interrupted
        one is marked running again.
        """
        super().load_state_dict(state)
        saved: str | None = state.get("run_id")
        if saved is None or saved == self.run_id:
            return
        from mlflow.exceptions import MlflowException

        client = self.client
        try:
            client.get_run(saved)
        except MlflowException:  # another store: keep this fit's new run
            return
        client.delete_run(self._run())
        client.update_run(saved, status="RUNNING")
        self.run_id = saved

    def _model_files(self) -> list[tuple[str, Path]]:
        """``(artifact folder, file)``: the best model of a SaveModelCallback (``model``),
        the last checkpoint of a Checkpoint (``checkpoint``), those written in this fit."""
        found: list[tuple[str, Path]] = []
        for cb in self.learn.cbs:
            if isinstance(cb, SaveModelCallback):
                best = cb.best_file
                if best is not None and best.is_file():
                    found.append(("model", best))
            elif isinstance(cb, Checkpoint) and cb.written:
                last = cb.dir / cb.written[-1]
                if last.is_file():
                    found.append(("checkpoint", last))
        return found

    def _run(self) -> str:
        if self.run_id is None:
            raise RuntimeError("MLflowLogger has no run: it logs during a fit")
        return self.run_id
