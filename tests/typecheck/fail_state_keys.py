"""Typed extension state misused; see test_typecheck.py for the markers."""

from __future__ import annotations

from typing import Final

import torch
from typing_extensions import override

from trainbus import Callback, StateKey

SCALE: Final = StateKey("scale", float)


class Publisher(Callback):
    @override
    def after_loss(self) -> None:
        self.learn.extras[SCALE] = 2.0
        self.learn.extras[SCALE] = "high"  # E: state-key-write
        self.learn.extras[SCALE] = torch.ones(())  # E: state-key-write
        self.learn.extras["scale"] = 2.0  # E: state-key-index


class Reader(Callback):
    @override
    def after_loss(self) -> None:
        scale: float = self.extras[SCALE]
        name: str = self.extras[SCALE]  # E: state-key-read
        self.learn.loss = self.loss * scale + len(name)
