"""Check trainbus on a CUDA GPU: training, no host syncs per batch, the CUDA tests, step time.

Usage::

    python benchmarks/gpu_check.py            # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py --quick    # fewer timing rounds

What it does, on the first CUDA device:

1. Trains the demo network (digits, or random data of the same shape without
   scikit-learn) and a small CNN (random 3x32x32 images, 10 classes), with the data on the
   GPU (``DataLoaders.from_tensors(device="cuda")``) and, for the CNN, from a
   ``DataLoader(pin_memory=True)`` too. The fits run one-cycle with MixUp, GradientClip
   and bf16 MixedPrecision besides the default callbacks, and every training phase runs
   under ``torch.cuda.set_sync_debug_mode("error")``: a host sync per batch is an error.
2. Runs the test files with CUDA tests (``pytest -q``); their CUDA tests run here.
3. Prints the time per training step of trainbus and of a plain PyTorch loop doing the
   same work on the same GPU-resident data (medians over rounds).

On a machine without CUDA it says so and exits with status 0. Exit status 1 when a check
fails.
"""

from __future__ import annotations

import argparse
import math
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Final

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from typing_extensions import override

from trainbus import Callback, DataLoaders, Learner
from trainbus.callbacks import GradientClip, MixedPrecision, MixUp, ProgressCallback
from trainbus.metrics import accuracy

ROOT: Final = Path(__file__).resolve().parent.parent
CUDA_TEST_FILES: Final = (
    "tests/test_devices.py",
    "tests/test_host_sync.py",
    "tests/test_inference.py",
)


class NoSyncInTraining(Callback):
    """Makes every host synchronisation an error during training phases."""

    @override
    def begin_train(self) -> None:
        torch.cuda.set_sync_debug_mode("error")

    @override
    def after_train(self) -> None:
        torch.cuda.set_sync_debug_mode("default")

    @override
    def on_exception(self, error: BaseException) -> None:
        torch.cuda.set_sync_debug_mode("default")


def demo_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The digits (64 pixels, 10 classes), or random data of that shape."""
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        g = torch.Generator().manual_seed(0)
        return torch.rand(1797, 64, generator=g), torch.randint(0, 10, (1797,), generator=g)
    images, labels = load_digits(return_X_y=True)
    x = torch.as_tensor(images, dtype=torch.float32) / 16.0
    return x, torch.as_tensor(labels, dtype=torch.long)


def demo_net() -> nn.Module:
    from trainbus._demo import digits_model

    return digits_model()


def image_data(n: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 32, 32, generator=g), torch.randint(0, 10, (n,), generator=g)


def small_cnn() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1),
        nn.BatchNorm2d(64),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )


def split(x: torch.Tensor, y: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], ...]:
    cut = len(x) * 4 // 5
    return (x[:cut], y[:cut]), (x[cut:], y[cut:])


def check_training(name: str, make_model: Callable[[], nn.Module], dls: DataLoaders) -> bool:
    """Fit twice (the first warms CUDA up), the second with no sync allowed in training."""
    torch.manual_seed(0)  # pyright: ignore[reportUnknownMemberType]
    cbs: list[Callback] = [MixUp(), GradientClip(1.0), MixedPrecision(torch.bfloat16)]
    learn = Learner(
        make_model(), dls, nn.functional.cross_entropy, opt_func=torch.optim.AdamW,
        lr=3e-3, cbs=cbs, metrics=[accuracy], device="cuda",
    )  # fmt: skip
    learn.get_cb(ProgressCallback).show = False
    learn.fit_one_cycle(1)
    try:
        learn.fit_one_cycle(3, cbs=[NoSyncInTraining()])
    except RuntimeError as error:
        print(f"FAIL {name}: a host sync in a training batch: {error}")
        return False
    train_loss, valid_loss, acc = learn.recorder.values[-1]
    metrics = learn.validate()
    if not math.isclose(metrics["valid_loss"], valid_loss, rel_tol=1e-5):
        print(f"FAIL {name}: validate() {metrics} differs from the recorded {valid_loss}")
        return False
    print(
        f"ok   {name}: 3 epochs on {learn.device}, no host sync in training; last epoch "
        f"train_loss {train_loss:.4f}, valid_loss {valid_loss:.4f}, accuracy {acc:.4f}; "
        f"validate() agrees"
    )
    return True


def run_cuda_tests() -> bool:
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CUDA_TEST_FILES]
    print("$", " ".join(command))
    done = subprocess.run(command, cwd=ROOT, check=False)
    return done.returncode == 0


def step_times(rounds: int, steps: int) -> tuple[float, float]:
    """Median seconds per training step: (plain loop, trainbus), small CNN, GPU data."""
    device = torch.device("cuda")
    (x, y), valid = split(*image_data())
    bs = 128
    x, y = x.to(device), y.to(device)
    n_batches = len(x) // bs

    def plain(model: nn.Module) -> float:
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        model.train()
        torch.cuda.synchronize()
        start = time.perf_counter()
        done = 0
        while done < steps:
            for i in range(n_batches):
                if done == steps:
                    break
                xb, yb = x[i * bs : (i + 1) * bs], y[i * bs : (i + 1) * bs]
                loss = nn.functional.cross_entropy(model(xb), yb)
                loss.backward()  # pyright: ignore[reportUnknownMemberType]
                opt.step()  # pyright: ignore[reportUnknownMemberType]
                opt.zero_grad()
                done += 1
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / steps

    def trainbus(model: nn.Module) -> float:
        dls = DataLoaders.from_tensors((x, y), valid, bs=bs, shuffle=False, device=device)
        dls.valid = []
        learn = Learner(model, dls, nn.functional.cross_entropy, opt_func=torch.optim.SGD,
                        lr=0.01, device=device)  # fmt: skip
        learn.get_cb(ProgressCallback).show = False
        n_epoch = -(-steps // n_batches)
        torch.cuda.synchronize()
        start = time.perf_counter()
        learn.fit(n_epoch)
        torch.cuda.synchronize()
        return (time.perf_counter() - start) / (n_epoch * n_batches)

    plain_times: list[float] = []
    trainbus_times: list[float] = []
    plain(small_cnn().to(device))  # warm-up: kernels, cuDNN autotuning
    trainbus(small_cnn().to(device))
    for _ in range(rounds):
        plain_times.append(plain(small_cnn().to(device)))
        trainbus_times.append(trainbus(small_cnn().to(device)))
    return statistics.median(plain_times), statistics.median(trainbus_times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer timing rounds")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print(f"no CUDA device (torch {torch.__version__}): nothing to check here")
        return 0
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    ok = True
    train, valid = split(*demo_data())
    ok &= check_training("demo net", demo_net, DataLoaders.from_tensors(
        train, valid, bs=64, seed=0, device="cuda"))  # fmt: skip
    train, valid = split(*image_data())
    ok &= check_training("small CNN, data on the GPU", small_cnn, DataLoaders.from_tensors(
        train, valid, bs=128, seed=0, device="cuda"))  # fmt: skip
    pinned = DataLoaders(
        DataLoader(TensorDataset(*train), batch_size=128, shuffle=True, pin_memory=True),
        DataLoader(TensorDataset(*valid), batch_size=256, pin_memory=True),
    )
    ok &= check_training("small CNN, pinned DataLoader", small_cnn, pinned)
    ok &= run_cuda_tests()
    rounds, steps = (3, 50) if args.quick else (7, 200)
    plain, ours = step_times(rounds, steps)
    print(
        f"small CNN, bs 128, GPU-resident data, median of {rounds} rounds of {steps} steps: "
        f"plain loop {plain * 1e6:.1f} µs/step, trainbus {ours * 1e6:.1f} µs/step "
        f"(ratio {ours / plain:.3f})"
    )
    print("all checks passed" if ok else "SOME CHECKS FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
