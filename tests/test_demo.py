"""The main job: ``trainbus demo`` trains on the bundled digits and reports accuracy."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from trainbus.__main__ import main


def test_demo_defaults_reach_095_and_print_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["epoch", "train_loss", "valid_loss", "accuracy", "time"]
    rows = [line.split() for line in out[1:-2]]
    assert [int(row[0]) for row in rows] == list(range(len(rows)))
    assert 1 <= len(rows) <= 12
    assert all(re.fullmatch(r"\d\d:\d\d", row[-1]) for row in rows)
    best = re.fullmatch(r"best epoch: (\d+) of (\d+) run", out[-2])
    assert best is not None, out[-2]
    assert int(best.group(2)) == len(rows)
    final = re.fullmatch(r"valid accuracy: (0\.\d{3}|1\.000)", out[-1])
    assert final is not None, out[-1]
    accuracy = float(final.group(1))
    assert accuracy >= 0.95
    # The reported accuracy is the best epoch's, whose weights SaveModelCallback reloaded.
    accuracies = [float(row[3]) for row in rows]
    assert accuracy == pytest.approx(max(accuracies), abs=5e-4)
    assert accuracies[int(best.group(1))] == max(accuracies)


def test_demo_options_change_the_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--epochs", "2", "--lr", "0.01", "--bs", "128", "--seed", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 + 2 + 2  # header, two epochs, best epoch, final line


def test_demo_saves_best_model_and_plots(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    plot = tmp_path / "loss.png"
    argv = ["demo", "--epochs", "2", "--save-dir", str(tmp_path / "run"), "--plot", str(plot)]
    assert main(argv) == 0
    assert (tmp_path / "run" / "digits.pth").is_file()
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert capsys.readouterr().out.splitlines()[-1].startswith("valid accuracy: ")


def test_demo_stops_early_without_improvement(capsys: pytest.CaptureFixture[str]) -> None:
    # A tiny learning rate barely moves the accuracy: patience 1 ends the fit early.
    assert main(["demo", "--epochs", "12", "--lr", "1e-7", "--patience", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    best = re.fullmatch(r"best epoch: (\d+) of (\d+) run", out[-2])
    assert best is not None
    assert int(best.group(2)) < 12
    assert int(best.group(2)) == int(best.group(1)) + 2  # one epoch after the best, then stop


def test_demo_is_reproducible_for_a_seed(capsys: pytest.CaptureFixture[str]) -> None:
    main(["demo", "--epochs", "1", "--seed", "7"])
    first = capsys.readouterr().out.splitlines()[1].split()[:4]
    main(["demo", "--epochs", "1", "--seed", "7"])
    second = capsys.readouterr().out.splitlines()[1].split()[:4]
    assert first == second


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--epochs", "0"], "must be a positive integer"),
        (["demo", "--lr", "-1"], "must be a positive number"),
        (["demo", "--bs", "x"], "argument --bs: must be a positive integer, got 'x'"),
        ([], "required: COMMAND"),
    ],
)
def test_bad_arguments_are_named(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_console_entry_point_runs_as_module(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "trainbus", "demo", "--help"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    )
    assert "--epochs" in done.stdout and "--plot" in done.stdout


@pytest.mark.slow  # a new MLflow store runs its schema migrations: seconds
def test_demo_logs_to_tensorboard_and_mlflow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("tensorboard")
    pytest.importorskip("mlflow")
    monkeypatch.chdir(tmp_path)  # a SQLite store keeps its artifacts in ./mlruns
    from mlflow.tracking import MlflowClient

    from test_mlflow import artifacts

    uri = f"sqlite:///{tmp_path / 'runs.db'}"
    argv = ["demo", "--epochs", "2", "--tensorboard", str(tmp_path / "tb"), "--mlflow", uri]
    assert main(argv) == 0
    rows = capsys.readouterr().out.splitlines()[1:3]
    assert len(list((tmp_path / "tb").glob("events.out.tfevents.*"))) == 1
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("trainbus-demo")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    accuracy = [f"{m.value:.6f}" for m in client.get_metric_history(run.info.run_id, "accuracy")]
    assert accuracy == [row.split()[3] for row in rows]  # the printed table's column
    assert artifacts(client, run.info.run_id, "model") == ["model/digits.pth"]
    assert (tmp_path / "mlruns").is_dir()


def test_demo_names_a_missing_logger_package(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    assert main(["demo", "--epochs", "1", "--tensorboard", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "trainbus: TensorBoardLogger needs the tensorboard package: pip install" in err
