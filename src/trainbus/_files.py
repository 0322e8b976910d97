"""Atomic file writes: a file is either its old or its new content, never half of one."""

from __future__ import annotations

import io
import os
import queue
import threading
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO, final

import torch

__all__ = ["BackgroundWriter", "atomic_save", "atomic_write", "is_temporary"]

_TMP_SUFFIX = ".tmp"


def atomic_write(target: Path, write: Callable[[BinaryIO], object]) -> None:
    """Call ``write(file)`` on a temporary file, then rename it over ``target``.

    The temporary file is in ``target``'s folder (``.<name>.<random>.tmp``); it is flushed
    and fsynced before the rename, and the folder is fsynced after it, so a crash at any
    moment leaves ``target`` either as it was or complete. On any failure the temporary
    file is removed and the error re-raised.
    """
    tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}{_TMP_SUFFIX}")
    try:
        with open(tmp, "xb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if os.name == "posix":  # make the rename itself durable
        folder = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def atomic_save(obj: object, target: Path) -> None:
    """``torch.save(obj, target)`` through :func:`atomic_write`.

    Serialized in memory, then written in one call: ``torch.save`` into a Python file
    object goes through a Python callback per record, twice the CPU time.
    """
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write(target, lambda file: file.write(buffer.getbuffer()))


def is_temporary(path: Path, stem: str) -> bool:
    """Whether ``path`` is a temporary file of :func:`atomic_write` for a name starting ``stem``."""
    return path.name.startswith(f".{stem}") and path.name.endswith(_TMP_SUFFIX)


@final
class BackgroundWriter:
    """Runs write jobs on a thread, one at a time, so that training goes on meanwhile.

    The thread starts with the first job and ends at :meth:`close`. A job's failure is
    raised in the caller's thread by the next :meth:`submit`, :meth:`wait` or
    :meth:`close`, so no error is lost.
    """

    __slots__ = ("_error", "_idle", "_jobs", "_thread")

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], object] | None] = queue.SimpleQueue()
        self._idle = threading.Event()
        self._idle.set()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, job: Callable[[], object]) -> None:
        """Wait for the previous job (raising its failure), then start ``job``."""
        self.wait()
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="trainbus-writer", daemon=True)
            self._thread.start()
        self._idle.clear()
        self._jobs.put(job)

    def _loop(self) -> None:
        while (job := self._jobs.get()) is not None:
            try:
                job()
            except BaseException as error:  # handed to the caller's thread by wait()
                self._error = error
            finally:
                self._idle.set()

    def wait(self) -> None:
        """Wait until the running job (if any) is done; raise its failure, once."""
        self._idle.wait()
        error, self._error = self._error, None
        if error is not None:
            raise error

    def close(self) -> None:
        """Wait for the running job, end the thread, then raise the job's failure, if any."""
        self._idle.wait()
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join()
        self.wait()
