"""Many processes: two Gloo ranks on the CPU train as one process with twice the batch.

Each scenario runs ``tests/ddp_worker.py`` on two processes with torchrun's environment
variables (a free port; every process is killed if the scenario outlives its bound, so a
hang fails the test rather than CI), and the tests compare what the ranks saw with a
single-process reference run here.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import tiny_learner
from ddp_worker import EXACT_N_ACC, exact_fit, exact_learner, learner, weights
from resume_driver import assert_identical
from trainbus import CheckpointError, DataLoaders, Learner, read_checkpoint
from trainbus._checkpoint import FORMAT_VERSION
from trainbus._distributed import any_rank, gathered
from trainbus._sharding import ShardedBatches, ShardedTensorBatches, shard_dataloaders
from trainbus.callbacks import (
    Checkpoint,
    CSVLogger,
    EarlyStoppingCallback,
    GradientAccumulation,
    GradientClip,
    ProgressCallback,
    SaveModelCallback,
    TrainEvalCallback,
)

WORKER: Final = Path(__file__).with_name("ddp_worker.py")
BOUND_S: Final = 240  # the whole scenario, both processes: a hang ends here


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def launch(
    scenario: str, out: Path, world_size: int = 2, *, phase: str = "", killed: bool = False
) -> list[dict[str, Any]]:
    """Run ``scenario`` on ``world_size`` processes; each rank's result, by rank (none
    when ``killed``: then every process must have ended with an error)."""
    env = {
        "PHASE": phase,
        **os.environ,
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(free_port()),
        "WORLD_SIZE": str(world_size),
        "TRAINBUS_DIST_TIMEOUT": "60",
        "OMP_NUM_THREADS": "1",
    }
    with contextlib.ExitStack() as files:
        procs = [
            subprocess.Popen(
                [sys.executable, str(WORKER), scenario, str(out)],
                env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
                stdout=files.enter_context(open(out / f"out{phase}{rank}.txt", "w")),
                stderr=subprocess.STDOUT,
            )
            for rank in range(world_size)
        ]
        try:
            codes = [proc.wait(timeout=BOUND_S) for proc in procs]
        finally:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
    logs = [(out / f"out{phase}{rank}.txt").read_text() for rank in range(world_size)]
    if killed:
        assert all(code != 0 for code in codes), "\n\n".join(logs)
        return []
    assert codes == [0] * world_size, "\n\n".join(logs)
    return [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(world_size)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("ddp-train")
    return out, launch("train", out)


def assert_weights_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.slow
def test_two_ranks_of_16_train_as_one_process_of_32(
    trained: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, (r0, r1) = trained
    assert (r0["rank"], r1["rank"], r0["world_size"]) == (0, 1, 2)
    assert r0["owns_group"] is False  # the worker initialised it
    assert r0["model_is_users"] and r1["model_is_users"]
    assert r0["n_train_batches"] == r1["n_train_batches"] == 3  # 96 samples / 2 ranks / 16
    assert (r0["n_valid_batches"], r1["n_valid_batches"]) == (3, 3)  # 19 and 18 samples
    for key in r0["weights"]:
        assert torch.equal(r0["weights"][key], r1["weights"][key]), key
    assert r0["values"] == r1["values"]  # reduced: identical on every rank

    reference = learner(32, cbs=[])
    reference.fit(3)
    assert_weights_close(r0["weights"], weights(reference.model))
    # validate() reduces the shards too: the last epoch's values, the same on every rank.
    assert r0["validate"] == r1["validate"]
    assert list(r0["validate"].values()) == r0["values"][-1][1:]
    expected = reference.validate()
    for name, value in r0["validate"].items():
        assert value == pytest.approx(expected[name], abs=1e-6), name
    torch.testing.assert_close(
        torch.tensor(r0["values"]), torch.tensor(reference.recorder.values), rtol=0, atol=1e-6
    )


@pytest.mark.slow
def test_rank_zero_only_callbacks_run_on_rank_zero(
    trained: tuple[Path, list[dict[str, Any]]],
) -> None:
    out, (_, r1) = trained
    assert (out / "history0.csv").is_file()
    assert not (out / "history1.csv").exists()  # CSVLogger is rank_zero_only
    table0 = (out / "out0.txt").read_text().splitlines()
    assert table0[0].split() == ["epoch", "train_loss", "valid_loss", "accuracy", "time"]
    assert "epoch" not in (out / "out1.txt").read_text()  # one table
    # Muted on rank 1 during the fit, yet still registered there afterwards.
    assert "CSVLogger" in r1["cbs"] and "ProgressCallback" in r1["cbs"]
    assert (out / "models0").is_dir() and not (out / "models1").exists()


@pytest.mark.slow
def test_early_stopping_stops_every_rank_at_the_same_epoch(
    trained: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, (r0, r1) = trained
    assert r0["stopped_epoch"] is not None
    assert r0["stopped_epoch"] == r1["stopped_epoch"] < 11
    assert r0["stop_values"] == r1["stop_values"]
    assert len(r0["stop_values"]) == r0["stopped_epoch"] + 1
    reference = learner(32, lr=0.5)
    stopper = EarlyStoppingCallback("valid_loss", patience=1, min_delta=0.05)
    reference.fit(12, cbs=[stopper])
    assert stopper.stopped_epoch == r0["stopped_epoch"]


@pytest.mark.slow
def test_clipping_and_mixed_precision_under_ddp(
    trained: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, (r0, r1) = trained
    reference = learner(32, cbs=[GradientClip(max_norm=0.05)])
    reference.fit(1)  # clipping the averaged gradient is clipping the batch of 32's
    assert_weights_close(r0["clip_weights"], weights(reference.model))
    assert_weights_close(r1["clip_weights"], weights(reference.model))
    for key, value in r0["amp_weights"].items():
        assert torch.equal(r1["amp_weights"][key], value) and bool(value.isfinite().all())
    assert r0["amp_values"] == r1["amp_values"]


@pytest.mark.slow
def test_a_nan_loss_on_one_rank_stops_every_rank_after_the_same_batch(
    trained: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, (r0, r1) = trained
    assert r0["nan_stopped_at"] == r1["nan_stopped_at"] == (0, 1, 2)  # epoch, iter, train_iter


@pytest.mark.slow
def test_gradient_accumulation_all_reduces_once_per_step(
    trained: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, (r0, r1) = trained
    # 48 samples per rank and epoch in batches of 8; a step every 32 samples (4 batches):
    # 12 batches in 2 epochs, 3 steps; one bucket (a small model) all-reduced per step.
    assert r0["acc_allreduces"] == r1["acc_allreduces"] == 3
    reference = learner(16, lr=0.5)  # the same 64 samples per step on one process
    reference.fit(2, cbs=[GradientAccumulation(n_acc=64)])
    assert_weights_close(r0["acc_weights"], weights(reference.model))
    assert_weights_close(r1["acc_weights"], weights(reference.model))


@pytest.mark.slow
def test_dataloaders_are_remade_on_distributed_samplers(
    trained: tuple[Path, list[dict[str, Any]]],
) -> None:
    _, (r0, r1) = trained
    assert r0["loader_sampler"] == r1["loader_sampler"] == "_EpochDistributedSampler"
    assert r0["loader_batch_size"] == 16
    # Validation: every sample on exactly one rank, none repeated.
    assert sorted(r0["valid_indices"] + r1["valid_indices"]) == list(range(37))
    for key in r0["loader_weights"]:
        assert torch.equal(r0["loader_weights"][key], r1["loader_weights"][key]), key
    assert r0["loader_values"] == r1["loader_values"]


@pytest.mark.slow
def test_a_failure_on_one_rank_ends_both_naming_the_rank(tmp_path: Path) -> None:
    r0, r1 = launch("fail", tmp_path)
    assert r0["owns_group"] and r1["owns_group"]  # initialised from the environment
    assert (r1["error"], r1["message"]) == ("RuntimeError", "boom")
    assert "trainbus: raised on rank 1 of 2" in r1["notes"]
    assert r0["error"] == "RankFailedError"
    assert r0["failed_rank"] == 1
    assert r0["message"].startswith("rank 1 of 2 failed: RuntimeError: boom")
    assert r1["group_left"] is False  # the rank that failed destroyed the group it owned


@pytest.mark.slow
def test_torchrun_runs_the_demo_with_one_table(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "-m", "trainbus", "demo", "--epochs", "2",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRAINBUS_DIST_TIMEOUT": "60"}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=BOUND_S, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[0] for line in lines if line.startswith("epoch")] == ["epoch"]
    assert len([line for line in lines if line.startswith("valid accuracy: ")]) == 1
    assert len([line for line in lines if line[:1].isdigit()]) == 2  # one row per epoch


@pytest.mark.slow
def test_resume_under_two_ranks_after_a_kill_matches_the_uninterrupted_run(
    tmp_path: Path,
) -> None:
    full = launch("resume", tmp_path, phase="full")
    launch("resume", tmp_path, phase="kill", killed=True)  # both killed in epoch 1
    assert (tmp_path / "ckpt" / "epoch-0000.pt").is_file()  # written by rank 0
    resumed = launch("resume", tmp_path, phase="resume")
    for rank in range(2):
        for key, value in full[rank]["weights"].items():
            assert torch.equal(resumed[rank]["weights"][key], value), (rank, key)
        assert resumed[rank]["values"] == full[rank]["values"]
    assert resumed[0]["values"] == resumed[1]["values"]


@pytest.fixture(scope="module")
def exact_runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Any], list[Any]]:
    """The exact scenario: uninterrupted, killed after step 10 (step 8's checkpoint is
    inside epoch 1 and inside a step of gradient accumulation), resumed from ``latest``."""
    out = tmp_path_factory.mktemp("ddp-exact")
    full = launch("exact", out, phase="full")
    launch("exact", out, phase="kill", killed=True)
    ckpt = out / "ckpt"
    (ckpt / "killed").write_text((ckpt / "latest").read_text())  # where the resume starts
    return out, full, launch("exact", out, phase="resume")


@pytest.mark.slow
def test_a_mid_epoch_resume_on_two_ranks_is_exact_on_each(
    exact_runs: tuple[Path, list[Any], list[Any]],
) -> None:
    out, full, resumed = exact_runs
    assert (out / "ckpt" / "killed").read_text() == "step-00000008.pt"
    for rank in range(2):
        assert_identical(full[rank], resumed[rank])
    # The ranks drew different random numbers: their own batch losses differ.
    assert not torch.equal(full[0]["losses"], full[1]["losses"])
    assert torch.equal(full[0]["values"], full[1]["values"])  # reduced once an epoch


@pytest.mark.slow
def test_torchrun_restarts_a_killed_fit_that_resumes_exactly(
    exact_runs: tuple[Path, list[Any], list[Any]], tmp_path: Path
) -> None:
    _, full, _ = exact_runs
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
        "--max-restarts=1", str(WORKER), "restart", str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TRAINBUS_DIST_TIMEOUT": "60"}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=BOUND_S, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert all((tmp_path / f"marks{rank}" / "killed-step10").exists() for rank in range(2))
    restarted = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for rank in range(2):
        assert restarted[rank]["attempt"] == 1  # the second attempt finished the fit
        assert restarted[rank]["owns_group"]  # initialised from torchrun's environment
        assert_identical(full[rank], restarted[rank])


@pytest.mark.slow
def test_a_mid_epoch_resume_on_two_ranks_is_exact_with_torch_loaders(tmp_path: Path) -> None:
    # DataLoader(shuffle=True), re-made on a DistributedSampler: skipped ahead by index.
    full = launch("exact_loaders", tmp_path, phase="full")
    launch("exact_loaders", tmp_path, phase="kill", killed=True)
    assert (tmp_path / "ckpt" / "latest").read_text() == "step-00000008.pt"
    resumed = launch("exact_loaders", tmp_path, phase="resume")
    for rank in range(2):
        assert_identical(full[rank], resumed[rank])


@pytest.mark.slow
def test_a_checkpoint_on_two_ranks_holds_each_ranks_own_state(
    exact_runs: tuple[Path, list[Any], list[Any]],
) -> None:
    out, _, _ = exact_runs
    ckpt = read_checkpoint(out / "full" / "step-00000016.pt")
    assert ckpt["trainbus_checkpoint"] == FORMAT_VERSION
    assert ckpt["world_size"] == 2 and len(ckpt["ranks"]) == 2
    r0, r1 = ckpt["ranks"]
    assert ckpt["train"] is r0  # stored once
    assert r0["loop"] == r1["loop"]
    assert r0["loop"]["phase"] == "train" and r0["loop"]["iter"] == 3  # inside epoch 2
    # Inside a step of accumulation: each rank's own, unsynchronised gradients.
    assert r0["callbacks"]["GradientAccumulation"] == {"count": 8}
    assert r0["grads"].keys() == r1["grads"].keys() and r0["grads"]
    for name, grad in r0["grads"].items():
        assert not torch.equal(grad, r1["grads"][name]), name
    assert not torch.equal(r0["rng"]["torch"], r1["rng"]["torch"])
    assert not torch.equal(
        r0["callbacks"]["Recorder"]["losses"], r1["callbacks"]["Recorder"]["losses"]
    )


@pytest.mark.slow
def test_a_checkpoint_runs_on_rank_zero_and_its_stand_in_in_its_place_on_the_others(
    exact_runs: tuple[Path, list[Any], list[Any]],
) -> None:
    out, (full0, full1), _ = exact_runs
    # Rank 0's Checkpoint wrote the files (each with both ranks' entries, above); rank 1's
    # never ran (rank_zero_only): it wrote nothing and kept no list of files.
    assert full0["written"] == ["epoch-0001.pt", "step-00000016.pt", "epoch-0002.pt"]
    files = sorted(path.name for path in (out / "full").iterdir())
    assert files == sorted([*full0["written"], "latest"])
    assert full1["written"] == []
    # On rank 1 the stand-in holds the Checkpoint's place; the progress bar sits out.
    assert "CheckpointStandIn" not in full0["subscribed"]
    expected = [
        "CheckpointStandIn" if name == "Checkpoint" else name
        for name in full0["subscribed"]
        if name != "ProgressCallback"
    ]
    assert full1["subscribed"] == expected


def on_one_process() -> Learner:
    """The exact scenario on one process, with as many batches an epoch as each rank had."""
    return exact_learner(16, n_acc=2 * EXACT_N_ACC, valid_bs=16)


@pytest.mark.slow
def test_a_mid_epoch_checkpoint_of_two_ranks_does_not_resume_on_one(
    exact_runs: tuple[Path, list[Any], list[Any]], tmp_path: Path
) -> None:
    out, _, _ = exact_runs
    path = out / "full" / "step-00000016.pt"
    learn = on_one_process()
    before = weights(learn.model)
    message = (
        f"{path} was written inside an epoch by a fit on 2 processes; this fit runs on 1: a "
        "mid-epoch checkpoint resumes only on as many processes"
    )
    with pytest.raises(CheckpointError, match=re.escape(message)):
        exact_fit(learn, tmp_path, rank=0, resume=path)
    for key, value in weights(learn.model).items():  # nothing changed
        assert torch.equal(before[key], value), key
    assert learn.recorder.values == []


@pytest.mark.slow
def test_an_epoch_checkpoint_of_two_ranks_resumes_on_one(
    exact_runs: tuple[Path, list[Any], list[Any]], tmp_path: Path
) -> None:
    out, full, _ = exact_runs
    path = out / "full" / "epoch-0001.pt"
    learn = on_one_process()
    exact_fit(learn, tmp_path, rank=0, resume=path)
    values = torch.tensor(learn.recorder.values, dtype=torch.float64)
    assert torch.equal(values[:2], full[0]["values"][:2])  # epochs 0 and 1, from the file
    assert values.shape == (3, 3) and bool(values.isfinite().all())  # epoch 2 trained here
    # The same batch size would give this process twice the batches: named as the cause.
    halves = exact_learner(8, valid_bs=16)
    with pytest.raises(
        CheckpointError, match="written by a fit on 2 processes, this fit runs on 1"
    ):
        exact_fit(halves, tmp_path, rank=0, resume=path)


@pytest.mark.slow
def test_interrupts_on_two_ranks_save_at_the_epoch_end_then_end_the_fit(
    exact_runs: tuple[Path, list[Any], list[Any]], tmp_path: Path
) -> None:
    _, full, _ = exact_runs
    # SIGTERM at different batches on the two ranks: one all-reduce at the epoch's end
    # agrees to save; then each process ends by its signal.
    launch("interrupt", tmp_path, phase="both", killed=True)
    for rank in range(2):
        assert "Terminated" not in (tmp_path / f"outboth{rank}.txt").read_text()
    assert (tmp_path / "both" / "latest").read_text() == "epoch-0000.pt"
    resumed = launch("interrupt", tmp_path, phase="resume")
    for rank in range(2):
        assert_identical(full[rank], resumed[rank])
    # The Checkpoint's hooks ran on rank 0 only (its list restored there); the file has
    # both ranks' entries, sent by rank 1's stand-in.
    assert resumed[0]["heard"] > 0 and resumed[0]["written"] == ["epoch-0000.pt"]
    assert resumed[1]["heard"] == 0 and resumed[1]["written"] == []
    ckpt = read_checkpoint(tmp_path / "both" / "epoch-0000.pt")
    assert ckpt["world_size"] == 2
    assert not torch.equal(ckpt["ranks"][0]["rng"]["torch"], ckpt["ranks"][1]["rng"]["torch"])
    # On rank 1 only: both ranks save, rank 1 ends by its signal, rank 0 with an error
    # naming it at its next collective (never a hang).
    launch("interrupt", tmp_path, phase="one", killed=True)
    assert (tmp_path / "one" / "latest").read_text() == "epoch-0000.pt"
    log0 = (tmp_path / "outone0.txt").read_text()
    cause = "RankFailedError: rank 1 of 2 failed: ended by SIGTERM after its checkpoint"
    assert cause in log0, log0


# ------------------------------------------------------------- in one process


def test_one_process_has_rank_zero_of_one_and_no_wrapper() -> None:
    learn = learner(16)
    assert (learn.rank, learn.world_size) == (0, 1)
    assert learn.distributed.ddp is None and not learn.distributed.active
    learn.fit(1)
    assert learn.distributed.ddp is None


def test_rank_zero_only_defaults() -> None:
    assert ProgressCallback.rank_zero_only and CSVLogger.rank_zero_only
    assert SaveModelCallback.rank_zero_only
    assert not TrainEvalCallback.rank_zero_only
    assert not EarlyStoppingCallback.rank_zero_only  # decides on reduced values, on all ranks
    assert Checkpoint.rank_zero_only is True  # rank 0 writes; a stand-in sends the others'


def test_tensor_shards_split_each_global_batch_and_pad_training() -> None:
    x = torch.arange(10.0)
    dls = DataLoaders.from_tensors((x, x), (x, x), bs=2, valid_bs=4, shuffle=False)
    shards = [
        shard_dataloaders(dls, rank=r, world_size=3, seed=0, epoch_of=lambda: 0) for r in range(3)
    ]
    assert all(isinstance(s.train, ShardedTensorBatches) for s in shards)
    train = [[b[0].tolist() for b in s.train] for s in shards]
    # 10 samples padded to 12 (repeating the first two), rank r takes r::3, in batches of 2.
    assert train == [[[0, 3], [6, 9]], [[1, 4], [7, 0]], [[2, 5], [8, 1]]]
    valid = [[b[0].tolist() for b in s.valid] for s in shards]
    assert valid == [[[0, 3, 6, 9]], [[1, 4, 7]], [[2, 5, 8]]]  # no padding


def test_shuffled_shards_agree_on_one_order_per_epoch() -> None:
    x = torch.arange(12.0)
    epoch = [0]
    dls = DataLoaders(DataLoaders.from_tensors((x, x), bs=3, seed=None).train)

    def orders() -> list[float]:
        shards = [
            shard_dataloaders(dls, rank=r, world_size=2, seed=7, epoch_of=lambda: epoch[0])
            for r in range(2)
        ]
        return [float(v) for s in shards for b in s.train for v in b[0]]

    first = orders()
    every = [float(v) for v in x]
    assert sorted(first) == every  # the two shards partition the samples
    assert orders() == first  # the same epoch gives the same order
    epoch[0] = 1
    assert sorted(orders()) == every and orders() != first  # set_epoch reshuffles


def test_other_batch_sources_are_strided_with_equal_training_shards() -> None:
    batches = [(torch.full((2,), float(i)), torch.zeros(2)) for i in range(5)]
    shards = [
        shard_dataloaders(
            DataLoaders(batches, batches), rank=r, world_size=2, seed=0, epoch_of=lambda: 0
        )
        for r in range(2)
    ]
    assert all(isinstance(s.train, ShardedBatches) for s in shards)
    train = [[int(b[0][0]) for b in s.train] for s in shards]
    assert train == [[0, 2], [1, 3]]  # 2 each: the fifth batch is left out
    valid = [[int(b[0][0]) for b in s.valid] for s in shards]
    assert valid == [[0, 2, 4], [1, 3]]


def test_a_loader_with_a_custom_sampler_is_a_clear_error() -> None:
    from torch.utils.data import DataLoader, TensorDataset

    data = TensorDataset(torch.zeros(4, 1), torch.zeros(4))
    loader = DataLoader(data, batch_size=2, sampler=[3, 2, 1, 0])
    with pytest.raises(ValueError, match=r"custom sampler.*DistributedSampler yourself"):
        shard_dataloaders(DataLoaders(loader), rank=0, world_size=2, seed=0, epoch_of=lambda: 0)


def test_a_stateful_dataloader_is_remade_as_one_on_its_shard() -> None:
    stateful = pytest.importorskip("torchdata.stateful_dataloader")
    data = TensorDataset(torch.arange(12.0).unsqueeze(1), torch.arange(12))
    loader = stateful.StatefulDataLoader(data, batch_size=2, shuffle=True)
    shards = [
        shard_dataloaders(DataLoaders(loader), rank=r, world_size=2, seed=0, epoch_of=lambda: 0)
        for r in range(2)
    ]
    assert all(type(s.train) is stateful.StatefulDataLoader for s in shards)
    rows = [sorted(int(y) for _, yb in s.train for y in yb) for s in shards]
    assert sorted(rows[0] + rows[1]) == list(range(12))  # each sample on one rank


class _NeedsMore(DataLoader[Any]):
    def __init__(self, dataset: TensorDataset, extra: int, **options: Any) -> None:
        super().__init__(dataset, **options)  # pyright: ignore[reportUnknownMemberType]
        self.extra = extra


def test_a_loader_class_that_cannot_be_remade_is_a_clear_error() -> None:
    data = TensorDataset(torch.zeros(4, 1), torch.zeros(4))
    loader = _NeedsMore(data, 1, batch_size=2)
    with pytest.raises(ValueError, match="cannot shard the train _NeedsMore by rank: it could not"):
        shard_dataloaders(DataLoaders(loader), rank=0, world_size=2, seed=0, epoch_of=lambda: 0)


def test_learner_is_unchanged_without_a_group() -> None:
    model = nn.Linear(2, 1)
    learn = Learner(model, DataLoaders([(torch.zeros(1, 2), torch.zeros(1, 1))]), nn.MSELoss())
    assert learn.model is model and learn.rank == 0


def written_checkpoint(tmp_path: Path, name: str) -> tuple[Path, dict[str, Any]]:
    """A 2-epoch fit of the tiny learner with Checkpoint(every_n_steps=2): file ``name``."""
    tiny_learner().fit(2, cbs=[Checkpoint(tmp_path / "run", every_n_steps=2, keep_last=9)])
    path = tmp_path / "run" / name
    return path, read_checkpoint(path)


def test_one_process_checkpoints_hold_one_entry_and_version_1_files_resume(
    tmp_path: Path,
) -> None:
    path, ckpt = written_checkpoint(tmp_path, "step-00000002.pt")  # inside epoch 0
    assert ckpt["trainbus_checkpoint"] == FORMAT_VERSION == 3
    assert "world_size" not in ckpt and "ranks" not in ckpt  # one process: "train" only
    ckpt["trainbus_checkpoint"] = 1  # written before the per-rank entries: one process's
    torch.save(ckpt, path)
    learn = tiny_learner()
    learn.fit(2, cbs=[Checkpoint(tmp_path / "again")], resume=path)
    assert len(learn.recorder.values) == 2


def test_a_file_of_two_ranks_resumes_on_one_from_an_epoch_end_only(tmp_path: Path) -> None:
    for name in ("epoch-0000.pt", "step-00000004.pt"):
        path, ckpt = written_checkpoint(tmp_path, name)
        ckpt["world_size"], ckpt["ranks"] = 2, [ckpt["train"], ckpt["train"]]
        torch.save(ckpt, path)
        learn = tiny_learner()
        if name.startswith("epoch"):
            learn.fit(2, cbs=[Checkpoint(tmp_path / "again")], resume=path)
            assert len(learn.recorder.values) == 2
            continue
        message = f"{path} was written inside an epoch by a fit on 2 processes; this fit runs on 1"
        with pytest.raises(CheckpointError, match=re.escape(message)):
            learn.fit(2, cbs=[Checkpoint(tmp_path / "again")], resume=path)
        assert learn.recorder.values == []


@pytest.mark.parametrize(
    "change", [{"world_size": 2}, {"ranks": []}, {"world_size": True}, {"ranks": [1]}]
)
def test_malformed_per_rank_entries_are_named(tmp_path: Path, change: dict[str, Any]) -> None:
    path, ckpt = written_checkpoint(tmp_path, "epoch-0001.pt")
    torch.save({**ckpt, **change}, path)
    with pytest.raises(CheckpointError, match=f"{re.escape(str(path))} has malformed per-rank"):
        tiny_learner().fit(2, resume=path)


def test_gathers_and_flags_on_one_process_need_no_group() -> None:
    assert gathered({"a": 1}) == [{"a": 1}]
    assert any_rank(True) and not any_rank(False)
