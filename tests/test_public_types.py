"""The public API is completely typed, and is the surface DESIGN.md names.

``pyright --verifytypes`` checks every symbol a user can reach from ``trainbus``: each
must have a declared (not inferred) type, so mypy, pyright and editors all see the same
API. A library class that assigns ``self.x = 0`` or ``run_after = Recorder`` without an
annotation fails this test; the message lists the symbols to annotate.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Final

import pytest

import trainbus
import trainbus.callbacks

ROOT: Final = Path(__file__).resolve().parent.parent

# The minimum public surface of DESIGN.md ("Public surface").
DESIGN_NAMES: Final = {
    "trainbus": [
        "Learner",
        "DataLoaders",
        "Callback",
        "Event",
        "event",
        "TrainingState",
        "EventBus",
        "CancelBatchException",
        "CancelTrainException",
        "CancelValidException",
        "CancelEpochException",
        "CancelFitException",
        "StateKey",
        "Extras",
        "Stage",
    ],
    "trainbus.callbacks": [
        "TrainEvalCallback",
        "Recorder",
        "ProgressCallback",
        "ModelResetter",
        "RNNRegularizer",
        "TerminateOnNaNCallback",
    ],
}


def test_type_completeness_is_100_percent(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "pyright",
        "--verifytypes",
        "trainbus",
        "--ignoreexternal",
        "--outputjson",
        "--pythonpath",
        sys.executable,
    ]
    # Run outside the project, so only the installed package (this checkout) is seen.
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, check=False)
    if not done.stdout.startswith("{"):
        pytest.fail(f"pyright --verifytypes failed ({done.returncode}):\n{done.stderr}")
    report = json.loads(done.stdout)["typeCompleteness"]
    assert Path(report["packageRootDirectory"]).resolve() == ROOT / "src" / "trainbus"
    problems = [
        f"{symbol['name']}: {diagnostic['message']}"
        for symbol in report["symbols"]
        for diagnostic in symbol["diagnostics"]
        if diagnostic["severity"] == "error"
    ]
    assert not problems, "annotate these (see pyright --verifytypes trainbus):\n" + "\n".join(
        problems
    )
    assert report["exportedSymbolCounts"]["withAmbiguousType"] == 0
    assert report["exportedSymbolCounts"]["withUnknownType"] == 0
    assert report["completenessScore"] == 1.0


@pytest.mark.parametrize("module", sorted(DESIGN_NAMES))
def test_design_names_are_exported(module: str) -> None:
    namespace = importlib.import_module(module)
    exported: list[str] = namespace.__all__
    missing = [name for name in DESIGN_NAMES[module] if name not in exported]
    assert not missing, f"{module}.__all__ lacks {missing}"
    unresolved = [name for name in exported if not hasattr(namespace, name)]
    assert not unresolved, f"{module}.__all__ names what it does not define: {unresolved}"


def test_package_ships_py_typed() -> None:
    package = Path(trainbus.__file__).parent
    assert (package / "py.typed").is_file()
    assert Path(trainbus.callbacks.__file__).parent.parent == package
    assert trainbus.event is trainbus.Event
