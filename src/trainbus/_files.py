"""Atomic file writes: a file is either its old or its new content, never half of one."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

import torch

__all__ = ["atomic_save", "atomic_write", "is_temporary"]

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
    """``torch.save(obj, target)`` through :func:`atomic_write`."""
    atomic_write(target, lambda file: torch.save(obj, file))


def is_temporary(path: Path, stem: str) -> bool:
    """Whether ``path`` is a temporary file of :func:`atomic_write` for a name starting ``stem``."""
    return path.name.startswith(f".{stem}") and path.name.endswith(_TMP_SUFFIX)
