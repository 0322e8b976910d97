"""Devices: choosing one, moving the model once and each batch's tensors before begin_batch.

The CPU tests run everywhere; those marked ``cuda`` run where CUDA exists. Moving onto a
device is also checked without an accelerator, with the ``meta`` device (tensors without
data) as the destination of :func:`trainbus._devices.to_device`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
import torch
from torch import nn
from typing_extensions import override

from conftest import tiny_dls, tiny_learner, tiny_model
from trainbus import Callback, DataLoaders, Learner, TensorBatches
from trainbus._devices import batch_mover, resolve_device, to_device
from trainbus.callbacks import GradientClip, MixUp, ParamScheduler, SchedCos
from trainbus.metrics import accuracy

HAS_CUDA = torch.cuda.is_available()
HAS_MPS = torch.backends.mps.is_available()
cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device")

META = torch.device("meta")


class Pair(NamedTuple):
    image: torch.Tensor
    mask: torch.Tensor


class MoveLog:
    """Records the ``non_blocking`` flag of every ``Tensor.to`` call."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.non_blocking: list[bool] = []
        to = torch.Tensor.to

        def logged(tensor: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
            self.non_blocking.append(bool(kwargs.get("non_blocking", False)))
            return to(tensor, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, "to", logged)


# ------------------------------------------------------------------ choosing


def test_none_picks_the_first_available_of_cuda_mps_cpu() -> None:
    learn = tiny_learner()
    if HAS_CUDA:
        expected = torch.device("cuda", torch.cuda.current_device())
    else:
        expected = torch.device("mps", 0) if HAS_MPS else torch.device("cpu")
    assert learn.device == expected
    assert next(learn.model.parameters()).device == expected


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu"), "cpu:0"])
def test_the_cpu_by_any_name(device: str | torch.device) -> None:
    learn = Learner(tiny_model(), tiny_dls(), nn.functional.mse_loss, device=device)
    assert learn.device == torch.device("cpu")
    assert learn.device.index is None  # as a CPU tensor's device: comparable with it


@pytest.mark.parametrize(
    ("device", "message"),
    [
        ("tpu", r"unknown device 'tpu': use 'cpu', 'cuda', 'cuda:<index>', 'mps'"),
        ("cuda:x", r"unknown device 'cuda:x'"),
        ("", r"unknown device ''"),
        ("meta", r"device 'meta' is not supported: trainbus trains on 'cpu', 'cuda' or 'mps'"),
        pytest.param(
            "cuda",
            r"device 'cuda' is not available: torch.cuda.is_available\(\) is False",
            marks=pytest.mark.skipif(HAS_CUDA, reason="CUDA is available"),
        ),
        pytest.param(
            "cuda:99",
            r"device 'cuda:99' is not available: this machine has \d+ CUDA device",
            marks=cuda,
        ),
        pytest.param(
            "mps",
            r"device 'mps' is not available",
            marks=pytest.mark.skipif(HAS_MPS, reason="MPS is available"),
        ),
    ],
)
def test_an_unknown_or_unavailable_device_is_refused_at_construction(
    device: str, message: str
) -> None:
    model = tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(ValueError, match=message):
        Learner(model, tiny_dls(), nn.functional.mse_loss, device=device)
    with pytest.raises(ValueError, match=message):
        DataLoaders.from_tensors((torch.zeros(4, 2), torch.zeros(4)), bs=2, device=device)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))


def test_a_device_of_the_wrong_type_is_refused() -> None:
    with pytest.raises(TypeError, match=r"device must be a str, a torch\.device or None, got int"):
        resolve_device(0)  # type: ignore[arg-type]  # pyright: ignore[reportArgumentType]


# ------------------------------------------------------------------ moving batches


def test_nested_tensors_are_moved_and_containers_kept() -> None:
    on_meta = torch.zeros(2, device=META)
    batch = (
        torch.ones(2),
        [torch.ones(3), {"mask": torch.ones(4), "id": "sample-7", "meta": on_meta}],
        Pair(torch.ones(5), torch.ones(6)),
        7,
    )
    moved = to_device(batch, META)
    assert isinstance(moved, tuple) and len(moved) == 4
    first, (second, mapping), pair, number = moved
    assert first.device == META and first.shape == (2,)
    assert isinstance(second, torch.Tensor)
    assert second.device == META and second.shape == (3,)
    assert isinstance(mapping, dict)
    mask = mapping["mask"]
    assert isinstance(mask, torch.Tensor) and mask.device == META
    assert mapping["id"] == "sample-7"
    assert mapping["meta"] is on_meta  # already there: the same tensor, not a copy
    assert isinstance(pair, Pair) and pair.mask.device == META and pair.mask.shape == (6,)
    assert number == 7
    assert batch[0].device == torch.device("cpu")  # the original is left as it was


class Pinned:
    """A loader that says it pins memory, as ``DataLoader(pin_memory=True)`` does."""

    pin_memory = True

    def __init__(self, batches: list[tuple[torch.Tensor, ...]]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, ...]]:
        return iter(self.batches)


def test_copies_do_not_wait_when_the_loader_pins_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    log = MoveLog(monkeypatch)
    x = torch.ones(2)
    for loader in (Pinned([]), [(x,)]):
        moved = batch_mover(META, loader)(x)
        assert isinstance(moved, torch.Tensor) and moved.device == META
    assert log.non_blocking == [True, False]
    # To the CPU, copies always wait (a device-to-host copy must be complete when read).
    assert batch_mover(torch.device("cpu"), Pinned([]))(x) is x
    assert log.non_blocking == [True, False]


class SeesBatch(Callback):
    """Keeps, at begin_batch, the batch's inputs and targets as the model will see them."""

    def __init__(self) -> None:
        self.seen: list[tuple[tuple[Any, ...], tuple[Any, ...]]] = []

    @override
    def begin_batch(self) -> None:
        self.seen.append((self.xb, self.yb))


class DictModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 1)

    @override
    def forward(self, inputs: dict[str, list[torch.Tensor]]) -> torch.Tensor:
        out: torch.Tensor = self.linear(inputs["parts"][0] + inputs["parts"][1])
        return out


def test_tensors_already_on_the_device_reach_the_hooks_uncopied() -> None:
    parts = [torch.randn(4, 2), torch.randn(4, 2)]
    target = torch.randn(4, 1)
    batch = ({"parts": parts}, target)
    dls = DataLoaders([batch, batch], [batch])
    sees = SeesBatch()
    learn = Learner(DictModel(), dls, nn.functional.mse_loss, cbs=[sees], device="cpu")
    learn.fit(1)
    assert len(sees.seen) == 3
    for xb, yb in sees.seen:
        assert xb[0]["parts"][0] is parts[0] and xb[0]["parts"][1] is parts[1]
        assert yb[0] is target


def test_data_from_tensors_on_the_cpu_device_is_sliced_not_copied() -> None:
    x, y = torch.randn(8, 2), torch.randn(8, 1)
    dls = DataLoaders.from_tensors((x, y), (x, y), bs=4, shuffle=False, device="cpu")
    sees = SeesBatch()
    Learner(tiny_model(), dls, nn.functional.mse_loss, cbs=[sees], device="cpu").fit(1)
    for xb, _ in sees.seen:
        assert xb[0].untyped_storage().data_ptr() == x.untyped_storage().data_ptr()


# ------------------------------------------------------------------ CUDA


def classifier(
    device: str, dls: DataLoaders | None = None, cbs: list[Callback] | None = None
) -> Learner:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    dls = dls or DataLoaders.from_tensors((x[:48], y[:48]), (x[48:], y[48:]), bs=8, seed=0)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 3))
    return Learner(
        model, dls, nn.functional.cross_entropy, cbs=cbs, metrics=[accuracy], device=device
    )


@cuda
def test_cuda_training_moves_the_model_once_and_every_batch() -> None:
    sees = SeesBatch()
    learn = classifier("cuda", cbs=[sees])
    assert learn.device == torch.device("cuda", torch.cuda.current_device())
    learn.fit(2)
    assert all(p.device == learn.device for p in learn.model.parameters())
    assert all(
        xb[0].device == learn.device and yb[0].device == learn.device for xb, yb in sees.seen
    )
    assert all(v == v for v in learn.recorder.values[-1])  # no nan


@cuda
def test_cuda_resident_data_needs_no_copy_and_no_sync() -> None:
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 4, generator=g), torch.randint(0, 3, (64,), generator=g)
    dls = DataLoaders.from_tensors((x[:48], y[:48]), (x[48:], y[48:]), bs=8, seed=0, device="cuda")
    assert isinstance(dls.train, TensorBatches) and all(t.is_cuda for t in dls.train.tensors)
    cbs: list[Callback] = [MixUp(), GradientClip(), ParamScheduler({"lr": SchedCos(0.1, 0.01)})]
    learn = classifier("cuda", dls=dls, cbs=cbs)
    learn.fit(1)  # warm-up: CUDA initialises lazily, which may synchronise once
    torch.cuda.set_sync_debug_mode("error")
    try:
        learn.fit(2)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert len(learn.recorder.values) == 2


@cuda
def test_cuda_with_a_pinned_dataloader_copies_without_waiting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(32, 4, generator=g), torch.randint(0, 3, (32,), generator=g))
    dls = DataLoaders(
        DataLoader(data, batch_size=8, pin_memory=True), DataLoader(data, batch_size=8)
    )
    learn = classifier("cuda", dls=dls)
    log = MoveLog(monkeypatch)
    learn.fit(1)
    monkeypatch.undo()
    # 4 training batches of 2 tensors from the pinned loader, 4 validation batches from the other.
    assert log.non_blocking.count(True) == 8
    assert learn.recorder.values[-1][1] == learn.recorder.values[-1][1]


@pytest.mark.skipif(HAS_CUDA, reason="on a CUDA machine the script runs its full check")
def test_the_gpu_check_says_there_is_no_cuda_and_succeeds(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import runpy
    from pathlib import Path

    script = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_check.py"
    monkeypatch.setattr("sys.argv", [str(script)])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(str(script), run_name="__main__")
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("no CUDA device (torch ")
