"""torch.compile: a compiled model trains under every library callback without graph breaks
that trainbus causes, and the files saved from it load into the plain model.

Graph breaks are counted by TorchDynamo (``torch._dynamo.utils.counters``), which traces the
model before any backend sees it, so the main test compiles with ``backend="aot_eager"``
(forward and backward graphs through AOTAutograd, no C compiler, about a second). The
default backend (Inductor, which compiles C++ on the CPU) runs in one slow test, skipped
where there is no C++ compiler.
"""

from __future__ import annotations

import gc
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import torch
from torch import nn
from typing_extensions import override

from trainbus import Callback, DataLoaders, Learner
from trainbus.callbacks import (
    CSVLogger,
    EarlyStoppingCallback,
    GradientAccumulation,
    GradientClip,
    MixedPrecision,
    MixUp,
    ModelResetter,
    ReduceLROnPlateau,
    RNNRegularizer,
    SaveModelCallback,
    TerminateOnNaNCallback,
)
from trainbus.metrics import accuracy

dynamo = pytest.importorskip("torch._dynamo")
from torch._dynamo.utils import counters  # noqa: E402  (after the skip)


@pytest.fixture(autouse=True)
def fresh_dynamo() -> Iterator[None]:
    """Forget compiled code and counters before and after each test."""
    dynamo.reset()
    counters.clear()
    yield
    dynamo.reset()
    counters.clear()
    gc.collect()  # the fake tensors of the traces (other tests count live tensors)


class Net(nn.Module):
    """A small classifier with a ``reset`` for ModelResetter."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 2))
        self.resets = 0

    @override
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out

    def reset(self) -> None:
        self.resets += 1


def quadrants(n: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 2, generator=g)
    return x, (x[:, 0] * x[:, 1] > 0).long()


def dataloaders() -> DataLoaders:
    x, y = quadrants()
    # Equal batches: a smaller last batch would only add a recompilation for its shape.
    return DataLoaders.from_tensors((x[:192], y[:192]), (x[192:], y[192:]), bs=32, seed=0)


def compiled(model: nn.Module, backend: str = "aot_eager") -> nn.Module:
    """``torch.compile(model)``: an ``OptimizedModule`` (torch types it as a function)."""
    return cast("nn.Module", torch.compile(model, backend=backend))  # pyright: ignore[reportUnknownMemberType]


def graph_breaks() -> dict[str, int]:
    return dict(counters["graph_break"])


@pytest.mark.slow  # about 5 s: a few graphs (train, eval, autocast) to compile
def test_a_compiled_model_trains_under_every_library_callback(tmp_path: Path) -> None:
    torch.manual_seed(0)  # pyright: ignore[reportUnknownMemberType]
    net = Net()
    model = compiled(net)
    cbs: list[Callback] = [
        MixedPrecision(torch.bfloat16),
        GradientAccumulation(n_acc=64),
        GradientClip(1.0),
        MixUp(0.4),
        TerminateOnNaNCallback(),
        ModelResetter(),
        EarlyStoppingCallback("accuracy", patience=10),
        SaveModelCallback("accuracy", path=tmp_path, fname="best"),
        ReduceLROnPlateau(patience=10),
        CSVLogger(tmp_path / "history.csv"),
    ]
    learn = Learner(model, dataloaders(), nn.functional.cross_entropy,
                    opt_func=torch.optim.Adam, lr=1e-2, cbs=cbs, metrics=[accuracy])  # fmt: skip
    learn.fit_one_cycle(4, lr_max=3e-2)
    learn.lr_find(num_it=10)
    result = learn.validate()
    preds, _, losses = learn.get_preds(with_loss=True)
    out = learn.predict(torch.randn(4, 2))
    assert graph_breaks() == {}
    assert counters["stats"]["unique_graphs"] >= 1  # the model did run compiled
    assert net.resets > 0
    values = learn.recorder.values
    assert len(values) == 4 and values[-1][2] > 0.7  # it learned
    best_epoch = learn.get_cb(SaveModelCallback).best_epoch
    assert best_epoch is not None  # its weights were reloaded at the end of the fit
    assert list(result.values()) == values[best_epoch][1:]
    assert preds.shape == (64, 2) and losses is not None and out.shape == (4, 2)
    assert len((tmp_path / "history.csv").read_text().splitlines()) == 5


@pytest.mark.slow  # a few seconds: the first compilation in a process warms Dynamo up
def test_a_compiled_model_with_rnn_regularization() -> None:
    class Tagger(nn.Module):
        """Returns ``(out, raw, dropped)`` as RNNRegularizer expects."""

        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.Linear(3, 8)  # per time step (Dynamo runs nn.GRU uncompiled)
            self.drop = nn.Dropout(0.2)
            self.head = nn.Linear(8, 2)

        @override
        def forward(self, x: torch.Tensor) -> Any:
            raw = torch.tanh(self.cell(x)).cumsum(dim=1)  # (bs, time, hidden)
            dropped = self.drop(raw)
            return self.head(dropped).mean(dim=1), raw, dropped

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 5, 3, generator=g), torch.randint(0, 2, (64,), generator=g)
    dls = DataLoaders.from_tensors((x[:48], y[:48]), (x[48:], y[48:]), bs=16, seed=0)
    regularizer = RNNRegularizer(alpha=2.0, beta=1.0)
    learn = Learner(compiled(Tagger()), dls, nn.functional.cross_entropy, cbs=[regularizer])
    learn.fit(2)
    assert graph_breaks() == {}
    assert counters["stats"]["unique_graphs"] >= 1
    assert regularizer.out is None  # released after the batch (the fit ran the hooks)
    assert all(v == v for v in learn.recorder.values[-1])  # no nan


def test_files_saved_from_a_compiled_model_load_into_the_plain_model(tmp_path: Path) -> None:
    net = Net()
    saver = SaveModelCallback(path=tmp_path, fname="best", with_opt=True)
    learn = Learner(compiled(net), dataloaders(),
                    nn.functional.cross_entropy, cbs=[saver])  # fmt: skip
    learn.fit(2)
    state = torch.load(tmp_path / "best.pth", weights_only=True)
    assert sorted(state["model"]) == [
        "body.0.bias",
        "body.0.weight",
        "body.2.bias",
        "body.2.weight",
    ]
    plain = Net()
    plain.load_state_dict(state["model"])  # strict: every key matches
    assert all(torch.equal(a, b) for a, b in zip(plain.parameters(), net.parameters(), strict=True))
    path = learn.save(tmp_path / "learner.pth")
    other = Learner(Net(), dataloaders(), nn.functional.cross_entropy)
    other.load(path)
    params = zip(other.model.parameters(), net.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in params)


def _has_cxx() -> bool:
    return shutil.which(os.environ.get("CXX", "g++")) is not None or shutil.which("c++") is not None


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")
@pytest.mark.skipif(not _has_cxx(), reason="torch.compile's default backend needs a C++ compiler")
def test_the_default_backend_trains_without_graph_breaks() -> None:
    torch.manual_seed(0)  # pyright: ignore[reportUnknownMemberType]
    learn = Learner(compiled(Net(), backend="inductor"), dataloaders(), nn.functional.cross_entropy,
                    opt_func=torch.optim.Adam, lr=1e-2, metrics=[accuracy])  # fmt: skip
    learn.fit(1)
    assert graph_breaks() == {}
    assert counters["stats"]["unique_graphs"] >= 1
    assert learn.recorder.values[-1][2] > 0.5
