"""The static-checking promise: mypy --strict and pyright strict accept or reject callbacks.

``tests/typecheck/pass_*.py`` are typed callbacks and uses of the public API that both
checkers must accept with no error; they also run (``main()``), so they are real code.
``tests/typecheck/fail_*.py`` mark every line a checker must reject, and so does
``docs/writing-callbacks.md``, whose ```python blocks are checked as one module::

    self.learn.epoch = 3  # E: loop-owned
    self.learn.extras[KEY] = 1  # E[mypy]: some-rule     (one checker only)

A marker names a rule of :data:`RULES`, which says what each checker reports for it (its
mypy error codes, its pyright rules). For each file and checker, the reported lines must
be exactly the marked lines, and each marked line must carry its rule's codes; other
errors on a marked line (pyright's "type is unknown" after an unknown attribute) are
allowed. Each checker runs once per test session over all the files: it is slow.
"""

from __future__ import annotations

import json
import os
import re
import runpy
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, get_args

import pytest
from filelock import FileLock

ROOT: Final = Path(__file__).resolve().parent.parent
TYPECHECK: Final = ROOT / "tests" / "typecheck"
PASS_FILES: Final = sorted(TYPECHECK.glob("pass_*.py"))
FAIL_FILES: Final = sorted(TYPECHECK.glob("fail_*.py"))
DOC_FILES: Final = [ROOT / "docs" / "writing-callbacks.md"]
FILES: Final = PASS_FILES + FAIL_FILES + DOC_FILES

Checker = Literal["mypy", "pyright"]
CHECKERS: Final[tuple[Checker, ...]] = get_args(Checker)


@dataclass(frozen=True)
class Rule:
    """What each checker reports for one promise (``docs/writing-callbacks.md`` lists them)."""

    promise: str
    mypy: frozenset[str]
    pyright: frozenset[str]

    def codes(self, checker: Checker) -> frozenset[str]:
        return self.mypy if checker == "mypy" else self.pyright


def _rule(promise: str, mypy: str, pyright: str) -> Rule:
    return Rule(promise, frozenset(mypy.split()), frozenset(pyright.split()))


RULES: Final = {
    "read-only-state": _rule(
        "self.<field> = ... on a callback", "misc", "reportAttributeAccessIssue"
    ),
    "state-write-type": _rule(
        "self.learn.<field> = value of the wrong type", "assignment", "reportAttributeAccessIssue"
    ),
    "loop-owned": _rule(
        "self.learn.<loop-owned field> = ...", "misc", "reportAttributeAccessIssue"
    ),
    "unknown-attribute": _rule(
        "a misspelled attribute of a callback, the learner or the state",
        "attr-defined",
        "reportAttributeAccessIssue",
    ),
    "hook-name": _rule("@override on a method that is no hook", "misc", "reportGeneralTypeIssues"),
    "hook-signature": _rule(
        "a hook with arguments or a return value", "override", "reportIncompatibleMethodOverride"
    ),
    "ordering-type": _rule(
        "run_before/run_after not callback classes, order not an int",
        "assignment",
        "reportAssignmentType",
    ),
    "unknown-event": _rule("Event.<not an event>", "attr-defined", "reportAttributeAccessIssue"),
    "event-type": _rule("an event given as a string", "arg-type", "reportArgumentType"),
    "subscriber-signature": _rule(
        "a plain-function subscriber of the wrong signature", "arg-type", "reportArgumentType"
    ),
    "callback-type": _rule("add_cb(<not a Callback>)", "arg-type", "reportArgumentType"),
    "state-key-write": _rule("extras[key] = value of the wrong type", "misc", "reportArgumentType"),
    "state-key-index": _rule("extras[<not a StateKey>]", "index", "reportArgumentType"),
    "state-key-read": _rule(
        "extras[key] read into a variable of another type", "assignment", "reportAssignmentType"
    ),
}

_MARKER: Final = re.compile(r"#\s*E(?:\[(?P<checker>\w+)\])?:\s*(?P<rule>[\w-]+)\s*$")


@dataclass(frozen=True)
class Diagnostic:
    """One error a checker reported."""

    line: int
    code: str
    message: str


Report = dict[str, list[Diagnostic]]
"""The name of a checked file (see :func:`checked_name`) -> its errors."""


_FENCE: Final = re.compile(r"^```(?P<info>.*)$")


def python_source(path: Path) -> str:
    """What the checkers see of ``path``.

    A Python file as it is; of a Markdown file, the lines of its ```python blocks, in
    place, with every other line blank, so that line numbers are the page's.
    """
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".py":
        return text
    lines: list[str] = []
    in_python = in_other = False
    for line in text.splitlines():
        fence = _FENCE.match(line)
        if fence is not None and not in_python and not in_other:
            words = fence["info"].split()
            in_python, in_other = words[:1] == ["python"], words[:1] != ["python"]
            lines.append("")
        elif fence is not None and not fence["info"].strip():
            in_python = in_other = False
            lines.append("")
        else:
            lines.append(line if in_python else "")
    return "\n".join(lines) + "\n"


def checked_name(path: Path) -> str:
    """The module file name a checker is given for ``path``."""
    if path.suffix == ".py":
        return path.name
    return re.sub(r"\W", "_", path.stem) + "_md.py"


def write_sources(workdir: Path) -> list[Path]:
    """Write what the checkers see of every file into ``workdir``; returns the paths."""
    written: list[Path] = []
    for path in FILES:
        target = workdir / checked_name(path)
        target.write_text(python_source(path), encoding="utf-8")
        written.append(target)
    return written


def expected_errors(path: Path, checker: Checker) -> dict[int, str]:
    """Line -> rule name, for the lines of ``path`` that ``checker`` must reject."""
    expected: dict[int, str] = {}
    for number, line in enumerate(python_source(path).splitlines(), start=1):
        marker = _MARKER.search(line)
        if marker is None:
            continue
        if marker["rule"] not in RULES:
            raise ValueError(f"{path.name}:{number}: unknown rule {marker['rule']!r}")
        if marker["checker"] not in (None, *CHECKERS):
            raise ValueError(f"{path.name}:{number}: unknown checker {marker['checker']!r}")
        if marker["checker"] in (None, checker):
            expected[number] = marker["rule"]
    return expected


# ---------------------------------------------------------------- running the checkers

_MYPY_LINE: Final = re.compile(
    r"^(?P<path>.+?):(?P<line>\d+):(?:\d+:)? error: (?P<message>.*?)(?:  \[(?P<code>[\w-]+)\])?$"
)


def run_mypy(workdir: Path) -> Report:
    """``mypy --strict`` with the project's configuration, over every checked file.

    It runs in the project (mypy_path, and the cache in .mypy_cache, are relative to it)
    on copies in ``workdir``.
    """
    sources = write_sources(workdir)
    command = [
        sys.executable,
        "-m",
        "mypy",
        "--config-file",
        str(ROOT / "pyproject.toml"),
        "--strict",
        "--show-error-codes",
        "--no-pretty",
        "--no-color-output",
        "--no-error-summary",
        *map(str, sources),
    ]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1):
        pytest.fail(f"mypy crashed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    report: Report = {source.name: [] for source in sources}
    for text in done.stdout.splitlines():
        match = _MYPY_LINE.match(text)
        if match is None:
            continue
        # By file name: mypy's cache may repeat an error under the path of an earlier
        # copy of the same file. Errors in other modules are other tests' business.
        name = Path(match["path"]).name
        if name in report:
            report[name].append(
                Diagnostic(int(match["line"]), match["code"] or "", match["message"])
            )
    return report


def run_pyright(workdir: Path) -> Report:
    """Pyright strict over copies of every checked file.

    Copies, because pyright skips files that pyproject.toml excludes (the fail files)
    even when they are named on its command line.
    """
    sources = write_sources(workdir)
    config = workdir / "pyrightconfig.json"
    settings = {
        "typeCheckingMode": "strict",
        "pythonVersion": "3.11",
        "stubPath": str(ROOT / "typings"),
    }
    config.write_text(json.dumps(settings), encoding="utf-8")
    command = [
        sys.executable,
        "-m",
        "pyright",
        "--pythonpath",
        sys.executable,
        "-p",
        str(config),
        "--outputjson",
        *map(str, sources),
    ]
    done = subprocess.run(command, cwd=workdir, capture_output=True, text=True, check=False)
    if done.returncode not in (0, 1):
        pytest.fail(f"pyright failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    report: Report = {source.name: [] for source in sources}
    for item in json.loads(done.stdout)["generalDiagnostics"]:
        name = Path(item["file"]).name
        if item["severity"] == "error" and name in report:
            line = item["range"]["start"]["line"] + 1
            report[name].append(Diagnostic(line, item.get("rule", ""), item["message"]))
    return report


def _shared(name: str, run: Callable[[Path], Report], factory: pytest.TempPathFactory) -> Report:
    """``run`` once per test session, even across pytest-xdist workers (they share a file)."""
    if os.environ.get("PYTEST_XDIST_WORKER") is None:
        return run(factory.mktemp(name))
    shared = factory.getbasetemp().parent
    with FileLock(str(shared / f"{name}.lock")):
        saved = shared / f"{name}.json"
        if saved.is_file():
            raw: dict[str, list[list[int | str]]] = json.loads(saved.read_text("utf-8"))
            return {
                file: [Diagnostic(int(line), str(code), str(msg)) for line, code, msg in items]
                for file, items in raw.items()
            }
        report = run(factory.mktemp(name))
        encoded = {f: [[d.line, d.code, d.message] for d in ds] for f, ds in report.items()}
        saved.write_text(json.dumps(encoded), "utf-8")
        return report


@pytest.fixture(scope="session")
def mypy_report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    return _shared("mypy", run_mypy, tmp_path_factory)


@pytest.fixture(scope="session")
def pyright_report(tmp_path_factory: pytest.TempPathFactory) -> Report:
    return _shared("pyright", run_pyright, tmp_path_factory)


# ------------------------------------------------------------------------- the tests


def _check(checker: Checker, path: Path, report: Report) -> None:
    expected = expected_errors(path, checker)
    reported: dict[int, list[Diagnostic]] = {}
    for diagnostic in report[checked_name(path)]:
        reported.setdefault(diagnostic.line, []).append(diagnostic)
    problems: list[str] = []
    for line, diagnostics in sorted(reported.items()):
        if line not in expected:
            problems += [f"line {line}: unexpected [{d.code}] {d.message}" for d in diagnostics]
    for line, rule in sorted(expected.items()):
        codes = {d.code for d in reported.get(line, [])}
        wanted = RULES[rule].codes(checker)
        if not wanted <= codes:
            got = ", ".join(sorted(codes)) or "nothing"
            promise = RULES[rule].promise
            problems.append(
                f"line {line}: {rule} ({promise}): expected {sorted(wanted)}, got {got}"
            )
    assert not problems, f"{checker} on {path.name}:\n" + "\n".join(problems)


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_mypy(path: Path, mypy_report: Report) -> None:
    _check("mypy", path, mypy_report)


@pytest.mark.parametrize("path", FILES, ids=[p.name for p in FILES])
def test_pyright(path: Path, pyright_report: Report) -> None:
    _check("pyright", path, pyright_report)


@pytest.mark.parametrize("path", PASS_FILES, ids=[p.name for p in PASS_FILES])
def test_pass_file_runs(path: Path) -> None:
    """The accepted examples are real code: each runs its ``main()`` to the end."""
    assert not any(expected_errors(path, checker) for checker in CHECKERS)
    runpy.run_path(str(path), run_name="__main__")


@pytest.mark.parametrize("checker", CHECKERS)
def test_every_rule_is_exercised(checker: Checker) -> None:
    """Each rule of the promise has at least one marked line, and only known rules are used."""
    used = {rule for path in FAIL_FILES for rule in expected_errors(path, checker).values()}
    assert used == set(RULES)


def test_markers_are_read_per_checker(tmp_path: Path) -> None:
    path = tmp_path / "fail_sample.py"
    path.write_text("a = 1  # E: loop-owned\nb = 2  # E[pyright]: hook-name\nc = 3\n", "utf-8")
    assert expected_errors(path, "mypy") == {1: "loop-owned"}
    assert expected_errors(path, "pyright") == {1: "loop-owned", 2: "hook-name"}
    path.write_text("a = 1  # E: no-such-rule\n", "utf-8")
    with pytest.raises(ValueError, match=re.escape("fail_sample.py:1: unknown rule 'no-such")):
        expected_errors(path, "mypy")
