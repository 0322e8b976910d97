"""Counting a process's instructions under callgrind: shared by instructions.py and ddp.py.

A measured process runs under ``valgrind --tool=callgrind --instr-atstart=no`` (see
:func:`command`), so nothing is counted until the process switches instrumentation on
itself (``control("-i", "on")``, which runs ``callgrind_control -i on PID``). A dump
(``control("-d")``) writes what was counted since the previous one to a file of its own,
``OUT.1``, ``OUT.2``, ... (:func:`parts`), and counting starts again from zero; what is
left when the process exits goes to ``OUT`` itself (:func:`total`). With ``threads``, each
thread of the process is counted apart, in ``OUT-01`` (the main thread), ``OUT-02``, ...
and ``OUT.1-01``, ... for the dumps.

Measured processes run with ``PYTHONHASHSEED=0`` (:func:`environment`): dict and set
layouts, and so the instructions, do not vary from run to run.
"""

from __future__ import annotations

import gc
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "NEEDED",
    "Mark",
    "available",
    "command",
    "control",
    "environment",
    "marks",
    "parts",
    "total",
]

Mark = Callable[[int], None]
"""Called by a measured training loop with each epoch's index as the epoch begins, and
with the number of epochs after the last one: where instrumentation is switched or
dumped."""

NEEDED = "valgrind (with callgrind_control) is needed: apt-get install valgrind"


def available() -> bool:
    """Whether valgrind and callgrind_control are installed."""
    return shutil.which("valgrind") is not None and shutil.which("callgrind_control") is not None


def control(*options: str) -> None:
    """Run ``callgrind_control OPTIONS`` on this process (which must run under callgrind)."""
    subprocess.run(
        ["callgrind_control", *options, str(os.getpid())], check=True, stdout=subprocess.DEVNULL
    )


def marks(n_epoch: int, *, dumps: bool) -> Mark:
    """The marks of a measured run of ``n_epoch`` epochs: instrumentation on as epoch 1
    begins (epoch 0 warms up) and off after the last.

    With ``dumps``, also a dump as each later epoch begins: part 1 holds epoch 1, and part
    ``k`` (``2 <= k <= n_epoch - 2``) epoch ``k``, from the dump that began it to the next,
    the same work as every other such part. Before each dump a full garbage collection
    (not counted) leaves the collector as it was at the start of the previous part, so
    that each part makes the same collections (those its allocations call for): without
    it, one of the collector's larger passes falls in one epoch and not in the next.
    """

    def mark(epoch: int) -> None:
        if epoch == 1:
            control("-i", "on")
        elif epoch == n_epoch:
            control("-i", "off")
        elif dumps and epoch > 1:
            control("-i", "off")
            gc.collect()
            control("-d")
            control("-i", "on")

    return mark


def command(out: Path, *, threads: bool = False) -> list[str]:
    """The valgrind command line that a measured command follows, its counts going to ``out``
    (with ``threads``, each thread's to a file of its own)."""
    line = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={out}"]
    return line + (["--separate-threads=yes"] if threads else [])


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment with a fixed hash seed (and ``extra``), for a measured one."""
    return {**os.environ, "PYTHONHASHSEED": "0", **(extra or {})}


def total(out: Path) -> int:
    """The instructions counted in the callgrind output file ``out``."""
    for line in out.read_text().splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {out}")


def parts(out: Path, *, thread: int | None = None) -> list[int]:
    """The instructions of each dump of a run whose output file is ``out``, in order: those
    of thread number ``thread`` only (1: the main thread) for a run with ``threads``."""
    suffix = "" if thread is None else f"-{thread:02d}"
    numbered = re.compile(re.escape(out.name) + r"\.(\d+)" + suffix)
    found = {
        int(match.group(1)): path
        for path in out.parent.iterdir()
        if (match := numbered.fullmatch(path.name))
    }
    return [total(found[i]) for i in sorted(found)]
