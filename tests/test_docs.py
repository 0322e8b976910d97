"""Run every ```python block of README.md and docs/**/*.md.

The blocks of one file run in order and share one namespace, so a later block may
use what an earlier one defined; each file gets its own temporary working
directory.  A block is skipped only when its fence reads ```python no-run or
the line before it is ``<!-- no-run -->`` -- keep that escape rare.

Tests are parametrized per block (ids like ``docs/events.md:block3``).  Blocks
run as ``__main__`` (``sys.modules["__main__"]`` is swapped in while one runs,
as ``runpy`` does), so ``if __name__ == "__main__":`` bodies run too.  When the
blocks of a file reach a process out of order (pytest-xdist), the earlier blocks
are replayed first, so every block always sees the state its file built for it.
"""

from __future__ import annotations

import re
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Fences may be indented (e.g. inside list items); the indentation is removed from
# the block's lines.
_FENCE_OPEN = re.compile(r"^(?P<indent> *)(?P<fence>`{3,}|~{3,})(?P<info>.*)$")
_NO_RUN_COMMENT = re.compile(r"^\s*<!--\s*no-run\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    """One ```python block of a Markdown file."""

    path: Path
    """Absolute path of the Markdown file."""
    index: int
    """0-based position among the file's python blocks."""
    first_line: int
    """1-based line number, in the Markdown file, of the block's first code line."""
    source: str
    no_run: bool

    @property
    def id(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:block{self.index + 1}"


def doc_files() -> list[Path]:
    """README.md, then docs/**/*.md in sorted order; those that exist."""
    files = [ROOT / "README.md"] if (ROOT / "README.md").is_file() else []
    docs = ROOT / "docs"
    if docs.is_dir():
        files.extend(sorted(p for p in docs.rglob("*.md") if p.is_file()))
    return files


def python_blocks(path: Path) -> list[Block]:
    """The fenced ```python blocks of one Markdown file.

    Fences follow CommonMark: ``` or ~~~ (3 or more), closed by a fence of the same
    character at least as long; other fenced blocks are skipped whole, so a ```python
    fence shown inside a ```markdown block is not run.
    """
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    i = 0
    previous = ""  # the last non-blank line before the current one
    while i < len(lines):
        line = lines[i]
        opened = _FENCE_OPEN.match(line)
        if opened is None or (opened["fence"][0] == "`" and "`" in opened["info"]):
            if line.strip():
                previous = line
            i += 1
            continue
        indent = len(opened["indent"])
        fence = opened["fence"]
        words = opened["info"].split()
        closing = re.compile(rf"^ *{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        body: list[str] = []
        j = i + 1
        while j < len(lines) and closing.match(lines[j]) is None:
            text = lines[j]
            strip = len(text) - len(text.lstrip(" "))
            body.append(text[min(indent, strip) :])
            j += 1
        if words and words[0] == "python":
            blocks.append(
                Block(
                    path=path,
                    index=len(blocks),
                    first_line=i + 2,
                    source="\n".join(body) + "\n",
                    no_run="no-run" in words[1:] or _NO_RUN_COMMENT.match(previous) is not None,
                )
            )
        previous = lines[j] if j < len(lines) else ""
        i = j + 1
    return blocks


BLOCKS: list[Block] = [block for path in doc_files() for block in python_blocks(path)]


@dataclass
class _FileRun:
    """What the blocks of one file have built so far, in this process."""

    module: types.ModuleType
    workdir: Path
    done: int = 0
    """How many of the file's blocks have run (successfully or not)."""
    failed: list[str] = field(default_factory=list[str])
    """Ids of the file's blocks that raised."""


_RUNS: dict[Path, _FileRun] = {}


def _new_run(path: Path, tmp_path_factory: pytest.TempPathFactory) -> _FileRun:
    module = types.ModuleType("__main__")
    workdir = tmp_path_factory.mktemp(re.sub(r"\W", "_", path.relative_to(ROOT).as_posix()))
    return _FileRun(module=module, workdir=workdir)


def _execute(block: Block, run: _FileRun, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run ``block`` in ``run``'s namespace; tracebacks point into the Markdown file."""
    code = compile("\n" * (block.first_line - 1) + block.source, str(block.path), "exec")
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "__main__", run.module)
        try:
            exec(code, run.module.__dict__)
        except BaseException:
            run.failed.append(block.id)
            raise
        finally:
            run.done = block.index + 1


def _close_figures() -> None:
    if "matplotlib.pyplot" in sys.modules:
        import matplotlib.pyplot as plt

        plt.close("all")


@pytest.mark.parametrize("block", BLOCKS, ids=[block.id for block in BLOCKS])
def test_doc_block(
    block: Block, tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    siblings = [b for b in BLOCKS if b.path == block.path]
    run = _RUNS.get(block.path)
    if run is None or run.done > block.index:
        # First block of this file seen by this process, or a rerun: start afresh.
        run = _RUNS[block.path] = _new_run(block.path, tmp_path_factory)
    if run.failed:
        pytest.fail(f"an earlier block of this file failed: {', '.join(run.failed)}")
    monkeypatch.chdir(run.workdir)
    try:
        for earlier in siblings[run.done : block.index]:
            if earlier.no_run:
                run.done = earlier.index + 1
                continue
            try:
                _execute(earlier, run, monkeypatch)
            except Exception as error:
                pytest.fail(f"replaying earlier block {earlier.id} failed: {error!r}")
        if block.no_run:
            run.done = block.index + 1
            pytest.skip("marked no-run")
        _execute(block, run, monkeypatch)
    finally:
        if run.done == len(siblings) or run.failed:
            _close_figures()
        if run.done == len(siblings):
            _RUNS.pop(block.path, None)
