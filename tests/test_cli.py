"""The command line's answers to bad paths, Ctrl-C and --version."""

from __future__ import annotations

from pathlib import Path

import pytest

import trainbus
import trainbus._demo
from trainbus.__main__ import main


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    status = main(argv)
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def no_training(**kwargs: object) -> object:
    raise AssertionError("the paths must be checked before training")


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--plot", "{tmp}", "is a folder; give a file name"),
        ("--plot", "{tmp}/missing/loss.png", "folder {tmp}/missing does not exist"),
        ("--plot", "{tmp}/afile/loss.png", "{tmp}/afile is not a folder"),
        ("--plot", "/proc/loss.png", "folder /proc is not writable"),
        ("--save-dir", "{tmp}/afile", "a file is there, not a folder"),
        ("--save-dir", "{tmp}/missing/models", "folder {tmp}/missing does not exist"),
        ("--save-dir", "/proc/models", "folder /proc is not writable"),
        ("--tensorboard", "{tmp}/afile", "a file is there, not a folder"),
    ],
)
def test_bad_paths_are_one_line_and_exit_2_before_training(
    option: str,
    value: str,
    message: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(trainbus._demo, "run_demo", no_training)
    (tmp_path / "afile").write_text("")
    path = value.format(tmp=tmp_path)
    status, out, err = run(["demo", option, path], capsys)
    assert status == 2 and out == ""
    assert err.count("\n") == 1
    assert err.startswith(f"trainbus demo: error: {option} {path}: ")
    assert message.format(tmp=tmp_path) in err


def test_good_paths_reach_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trainbus._demo, "run_demo", no_training)
    with pytest.raises(AssertionError, match="before training"):
        main(["demo", "--plot", str(tmp_path / "loss.png"), "--save-dir", str(tmp_path / "m")])


def interrupted(**kwargs: object) -> object:
    raise KeyboardInterrupt


def test_ctrl_c_prints_one_line_and_exits_130(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(trainbus._demo, "run_demo", interrupted)
    assert run(["demo"], capsys) == (130, "", "interrupted\n")


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out == f"trainbus {trainbus.__version__}\n"
