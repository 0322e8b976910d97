"""PNG plots of a fit: losses, learning-rate finder curves, hyper-parameter schedules.

matplotlib is imported inside the functions, so ``import trainbus`` stays light. The
figures are built with ``matplotlib.figure.Figure`` and saved through the Agg canvas,
never through ``pyplot``: nothing is registered globally, nothing is shown, and a figure
is freed as soon as the function returns. On many processes only rank 0 writes files.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from .._checks import checked_int
from .._distributed import is_rank_zero

if TYPE_CHECKING:
    from ._core import Recorder
    from ._schedule import Schedule

__all__ = ["plot_hps", "plot_losses", "plot_lr_find", "plot_schedule"]


# The parts of matplotlib's Axes and Figure used here. matplotlib's own annotations
# leave **kwargs untyped, which strict pyright reports at every call; these don't.
class _Axes(Protocol):
    def plot(self, *args: Any, **kwargs: Any) -> object: ...
    def set_xscale(self, value: str, **kwargs: Any) -> None: ...
    def set_xlabel(self, xlabel: str, **kwargs: Any) -> object: ...
    def set_ylabel(self, ylabel: str, **kwargs: Any) -> object: ...
    def legend(self) -> object: ...


class _Figure(Protocol):
    def savefig(self, fname: str, **kwargs: Any) -> None: ...


def _figure(n_rows: int = 1) -> tuple[_Figure, list[_Axes]]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 2.4 + 1.6 * n_rows), layout="constrained")
    FigureCanvasAgg(fig)  # attaches itself to fig: savefig renders with Agg
    grid = fig.subplots(n_rows, 1, sharex=True, squeeze=False)
    axes: list[_Axes] = [row[0] for row in grid]
    return fig, axes


def _save(fig: _Figure, path: str | os.PathLike[str]) -> None:
    """Write ``fig`` to ``path``: on rank 0 only when training on many processes."""
    if is_rank_zero():
        fig.savefig(os.fspath(path), format="png", dpi=100)


def plot_losses(
    recorder: Recorder, path: str | os.PathLike[str], *, skip_start: int, with_valid: bool
) -> None:
    """Training loss per batch and (``with_valid``) validation loss per epoch, to a PNG.

    The validation loss of epoch ``e`` is drawn at the batch where that epoch's training
    ended, assuming epochs of equal length.

    Raises:
        ValueError: Nothing was recorded, or ``skip_start`` leaves no batch to draw.
    """
    checked_int("skip_start", skip_start, 0)
    losses = recorder.losses
    if not losses:
        raise ValueError("plot_loss: the Recorder holds no training loss yet; call fit first")
    if skip_start >= len(losses):
        raise ValueError(
            f"plot_loss: skip_start={skip_start} skips all {len(losses)} recorded batches"
        )
    fig, (ax,) = _figure()
    ax.plot(range(skip_start, len(losses)), losses[skip_start:], label="train")
    if with_valid and recorder.values:
        column = recorder.metric_names.index("valid_loss")
        per_epoch = len(losses) / len(recorder.values)
        points = [
            ((e + 1) * per_epoch, row[column])
            for e, row in enumerate(recorder.values)
            if (e + 1) * per_epoch > skip_start
        ]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o", label="valid")
    ax.set_xlabel("training batch")
    ax.set_ylabel("loss")
    ax.legend()
    _save(fig, path)


def plot_lr_find(
    lrs: Sequence[float],
    losses: Sequence[float],
    path: str | os.PathLike[str],
    suggestions: Mapping[str, float],
) -> None:
    """The learning-rate finder's loss against the learning rate (log scale), to a PNG.

    Each suggestion is marked at the loss of the nearest recorded learning rate.

    Raises:
        ValueError: ``lrs`` and ``losses`` differ in length or are empty.
    """
    if not lrs or len(lrs) != len(losses):
        raise ValueError(
            f"plot_lr_find needs as many losses as lrs, at least one; got {len(lrs)} lrs "
            f"and {len(losses)} losses"
        )
    fig, (ax,) = _figure()
    ax.plot(lrs, losses)
    for name, lr in suggestions.items():
        nearest = min(range(len(lrs)), key=lambda i: abs(lrs[i] - lr))
        ax.plot([lr], [losses[nearest]], marker="o", linestyle="none", label=f"{name}: {lr:.2e}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("smoothed loss")
    if suggestions:
        ax.legend()
    _save(fig, path)


def _panels(
    series: Mapping[str, tuple[Iterable[float], Sequence[float]]],
    xlabel: str,
    path: str | os.PathLike[str],
) -> None:
    fig, axes = _figure(len(series))
    for ax, (name, (xs, ys)) in zip(axes, series.items(), strict=True):
        ax.plot(xs, ys)
        ax.set_ylabel(name)
    axes[-1].set_xlabel(xlabel)
    _save(fig, path)


def plot_hps(hps: Mapping[str, Sequence[float]], path: str | os.PathLike[str]) -> None:
    """Hyper-parameter values per training batch, one panel per name, to a PNG.

    Raises:
        ValueError: No values (the scheduler has not run a training batch).
    """
    if not hps or not all(hps.values()):
        raise ValueError("no hyper-parameter values recorded yet; fit with the scheduler first")
    _panels({name: (range(len(v)), v) for name, v in hps.items()}, "training batch", path)


def plot_schedule(
    scheds: Mapping[str, Schedule], path: str | os.PathLike[str], *, n_points: int = 200
) -> None:
    """Schedules as functions of the progress ``pos`` in ``[0, 1]``, one panel each, to a PNG.

    Shows what a :class:`~trainbus.callbacks.ParamScheduler` would set, before a fit.

    Raises:
        ValueError: No schedule, or fewer than 2 points.
    """
    if not scheds:
        raise ValueError("plot_schedule needs at least one schedule")
    checked_int("n_points", n_points, 2)
    pos = [i / (n_points - 1) for i in range(n_points)]
    series = {name: (pos, [sched(p) for p in pos]) for name, sched in scheds.items()}
    _panels(series, "pos (fraction of training)", path)
