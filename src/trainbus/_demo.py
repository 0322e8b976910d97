"""The demo: a small network on scikit-learn's bundled 8x8 handwritten digits."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Final, final

import attrs
import torch
from torch import nn

from ._data import DataLoaders
from ._learner import Learner
from .callbacks import (
    EarlyStoppingCallback,
    Logger,
    MLflowLogger,
    ProgressCallback,
    SaveModelCallback,
    TensorBoardLogger,
)
from .metrics import accuracy

__all__ = ["DemoResult", "digits_dataloaders", "run_demo"]

VALID_FRACTION: Final = 0.2
DEMO_EXPERIMENT: Final = "trainbus-demo"  # the MLflow experiment of --mlflow


@final
@attrs.frozen
class DemoResult:
    """What the demo measured.

    Attributes:
        valid_accuracy: Validation accuracy of the weights the model ends with (the best
            epoch's, reloaded by SaveModelCallback).
        best_epoch: The epoch those weights come from.
        epochs_run: Epochs trained (fewer than asked when early stopping ended the fit).
    """

    valid_accuracy: float
    best_epoch: int
    epochs_run: int


def digits_dataloaders(bs: int, seed: int) -> DataLoaders:
    """The digits (1,797 images, 64 pixels scaled to [0, 1]) split 80/20 at random.

    Raises:
        RuntimeError: scikit-learn, which ships the data, is not installed.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as error:
        raise RuntimeError(
            "the demo's data ships with scikit-learn: pip install scikit-learn"
        ) from error
    images, labels = load_digits(return_X_y=True)
    x = torch.as_tensor(images, dtype=torch.float32) / 16.0
    y = torch.as_tensor(labels, dtype=torch.long)
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(x), generator=generator)
    n_valid = int(len(x) * VALID_FRACTION)
    valid, train = order[:n_valid], order[n_valid:]
    return DataLoaders.from_tensors(
        (x[train], y[train]), (x[valid], y[valid]), bs=bs, shuffle=True, seed=seed
    )


def digits_model() -> nn.Module:
    """A two-hidden-layer perceptron for 64 pixels and 10 classes."""
    return nn.Sequential(
        nn.Linear(64, 128),
        nn.ReLU(),
        nn.Dropout(0.1),
        nn.Linear(128, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def run_demo(
    *,
    epochs: int = 12,
    lr: float = 1e-2,
    bs: int = 64,
    seed: int = 0,
    patience: int = 3,
    save_dir: Path | None = None,
    plot: Path | None = None,
    tensorboard: Path | None = None,
    mlflow: str | None = None,
) -> DemoResult:
    """Train on the digits with one-cycle, printing a per-epoch table.

    The best epoch's weights (by validation accuracy) are saved and reloaded at the end;
    the fit stops early after ``patience`` epochs without improvement. Under
    ``torchrun --nproc_per_node=N -m trainbus demo`` the processes share the work (each
    with batches of ``bs``) and rank 0 prints the table.

    Args:
        epochs: Most epochs to train.
        lr: Peak learning rate of the one-cycle schedule (Adam).
        bs: Training batch size.
        seed: Seed of the weights, the split and the shuffling.
        patience: Epochs without a better accuracy before stopping.
        save_dir: Keep the best model's file there (default: a temporary folder).
        plot: Write the loss curve to this PNG.
        tensorboard: Log the run to TensorBoard event files in this folder.
        mlflow: Log the run to MLflow (experiment ``trainbus-demo``) at this tracking URI;
            ``""``: the default store (``./mlflow.db``, or ``$MLFLOW_TRACKING_URI``).

    Raises:
        ImportError: A logger asked for needs a package that is not installed.
    """
    torch.manual_seed(seed)  # pyright: ignore[reportUnknownMemberType]
    learn = Learner(
        digits_model(),
        digits_dataloaders(bs, seed),
        nn.functional.cross_entropy,
        opt_func=torch.optim.Adam,
        lr=lr,
        metrics=[accuracy],
    )
    learn.get_cb(ProgressCallback).table = True
    with tempfile.TemporaryDirectory(prefix="trainbus-demo-") as scratch:
        saver = SaveModelCallback("accuracy", fname="digits", path=save_dir or scratch)
        stopper = EarlyStoppingCallback("accuracy", patience=patience)
        loggers: list[Logger] = []
        if tensorboard is not None:
            loggers.append(TensorBoardLogger(tensorboard, every_n_steps=10))
        if mlflow is not None:
            loggers.append(MLflowLogger(DEMO_EXPERIMENT, mlflow or None, every_n_steps=10))
        learn.fit_one_cycle(epochs, lr_max=lr, cbs=[saver, stopper, *loggers])
    if plot is not None:
        learn.recorder.plot_loss(plot)
    # From the Recorder, not the saver: its values are the same on every rank, while the
    # saver runs on rank 0 only under torchrun.
    accuracies = [row[-1] for row in learn.recorder.values]
    if not accuracies or all(math.isnan(a) for a in accuracies):
        raise RuntimeError("the demo recorded no validation accuracy")
    best = max(a for a in accuracies if not math.isnan(a))
    return DemoResult(
        valid_accuracy=best, best_epoch=accuracies.index(best), epochs_run=len(accuracies)
    )
