"""PNG plots: losses, LR finder curve, schedules. Real images, nothing left open or shown."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib import image

from conftest import tiny_learner
from trainbus import Learner
from trainbus.callbacks import (
    LRFinderResult,
    ParamScheduler,
    SchedCos,
    SchedExp,
    SchedLin,
    combine_schedules,
    plot_schedule,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def pixels(path: Path) -> np.ndarray:
    """The image at ``path``, after checking it is a PNG with more than one colour."""
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    img = np.asarray(image.imread(path))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert float(img.var()) > 0.0, "blank image"
    return img


def fitted() -> Learner:
    learn = tiny_learner(n_train=4)
    learn.fit(3)
    return learn


def test_plot_loss_draws_training_and_validation_losses(tmp_path: Path) -> None:
    learn = fitted()
    learn.recorder.plot_loss(tmp_path / "both.png")
    learn.recorder.plot_loss(tmp_path / "train.png", with_valid=False)
    learn.recorder.plot_loss(tmp_path / "skipped.png", skip_start=5, with_valid=False)
    both, train, skipped = (pixels(tmp_path / f"{n}.png") for n in ("both", "train", "skipped"))
    assert not np.array_equal(both, train)  # the validation curve is drawn
    assert not np.array_equal(train, skipped)  # the first batches are left out


def test_plot_loss_reports_what_it_cannot_draw(tmp_path: Path) -> None:
    learn = tiny_learner()
    with pytest.raises(ValueError, match="the Recorder holds no training loss yet"):
        learn.recorder.plot_loss(tmp_path / "loss.png")
    learn.fit(1)  # 3 batches
    with pytest.raises(ValueError, match="skip_start=3 skips all 3 recorded batches"):
        learn.recorder.plot_loss(tmp_path / "loss.png", skip_start=3)
    with pytest.raises(ValueError, match="skip_start must be an int >= 0, got -1"):
        learn.recorder.plot_loss(tmp_path / "loss.png", skip_start=-1)
    assert not (tmp_path / "loss.png").exists()


def test_lr_finder_result_plots_its_curve(tmp_path: Path) -> None:
    learn = tiny_learner(n_train=4)
    result = learn.lr_find(num_it=30, stop_div=False, end_lr=1.0)
    result.plot(tmp_path / "lr.png")
    other = LRFinderResult(result.lrs, tuple(reversed(result.losses)), 1e-3, 1e-3, 1e-3)
    other.plot(tmp_path / "other.png")
    assert not np.array_equal(pixels(tmp_path / "lr.png"), pixels(tmp_path / "other.png"))


def test_scheduler_plots_the_values_it_set(tmp_path: Path) -> None:
    scheduler = tiny_learner(n_train=4).fit_one_cycle(2)
    scheduler.plot(tmp_path / "sched.png")
    flat = tiny_learner(n_train=4).fit_one_cycle(2, moms=None)
    flat.plot(tmp_path / "lr_only.png")
    assert pixels(tmp_path / "sched.png").shape[0] > pixels(tmp_path / "lr_only.png").shape[0]
    with pytest.raises(ValueError, match="no hyper-parameter values recorded yet"):
        ParamScheduler({"lr": SchedLin(0.1, 0.0)}).plot(tmp_path / "none.png")


def test_plot_schedule_previews_schedules_before_a_fit(tmp_path: Path) -> None:
    warm = combine_schedules([0.3, 0.7], [SchedLin(0.0, 1.0), SchedCos(1.0, 0.0)])
    plot_schedule({"lr": warm}, tmp_path / "warm.png")
    plot_schedule({"lr": SchedExp(1e-3, 1.0)}, tmp_path / "exp.png", n_points=50)
    assert not np.array_equal(pixels(tmp_path / "warm.png"), pixels(tmp_path / "exp.png"))
    with pytest.raises(ValueError, match="n_points must be an int >= 2, got 1"):
        plot_schedule({"lr": warm}, tmp_path / "bad.png", n_points=1)
    with pytest.raises(ValueError, match="needs at least one schedule"):
        plot_schedule({}, tmp_path / "bad.png")


def test_plots_register_no_pyplot_figures(tmp_path: Path) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    learn = fitted()
    learn.recorder.plot_loss(tmp_path / "loss.png")
    learn.lr_find(num_it=10, stop_div=False, end_lr=1e-2).plot(tmp_path / "lr.png")
    plot_schedule({"lr": SchedLin(0.0, 1.0)}, tmp_path / "sched.png")
    assert plt.get_fignums() == before


def test_import_trainbus_does_not_import_matplotlib() -> None:
    code = "import sys, trainbus.callbacks; assert 'matplotlib' not in sys.modules"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
