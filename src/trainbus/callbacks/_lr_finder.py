"""The learning-rate finder: a short fit with an exponentially growing learning rate."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar, Final, TypeVar, cast, final

import attrs
from typing_extensions import override

from .._callback import Callback
from .._checkpoint import cpu_copy
from .._checks import checked_float, checked_int, require_training_batches
from .._hooks import SubscriberClasses
from .._signals import CancelFitException, CancelValidException
from ._core import Recorder, TrainEvalCallback
from ._schedule import ParamScheduler, SchedExp

if TYPE_CHECKING:
    from .._learner import Learner

__all__ = ["LRFinder", "LRFinderResult", "lr_find"]

T = TypeVar("T")

# Suggestions ignore the first tenth of the curve (the smoothed loss is still warming
# up) and its last few points (where it diverges).
_SKIP_END: Final = 5


@final
@attrs.frozen
class LRFinderResult:
    """What the learning-rate finder measured, and the learning rates it suggests.

    Attributes:
        lrs: The learning rate of each recorded batch, growing geometrically.
        losses: The smoothed training loss after each of those batches.
        valley: The middle (in log scale) of the loss's main descent: from where it last
            leaves the top quarter of its fall (from its highest point before the
            minimum down to the minimum) to where it first reaches the bottom quarter.
            The usual choice: neither timid nor close to divergence.
        steep: Where the loss falls fastest against ``log(lr)`` (the middle of the
            steepest span of a tenth of the curve).
        minimum: A tenth of the learning rate at the lowest loss.
    """

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    valley: float
    steep: float
    minimum: float

    def suggestions(self) -> dict[str, float]:
        """``{"valley": ..., "steep": ..., "minimum": ...}``."""
        return {"valley": self.valley, "steep": self.steep, "minimum": self.minimum}

    def plot(self, path: str | os.PathLike[str]) -> None:
        """Write the loss against the learning rate (log scale), suggestions marked, to a PNG.

        The last few points, where the loss diverges, are left out as they would
        squash the rest of the curve.
        """
        from ._plots import plot_lr_find

        points = _finite_points(self.lrs, self.losses)
        if len(points) > _SKIP_END + 2:
            points = points[:-_SKIP_END]
        plot_lr_find([p[0] for p in points], [p[1] for p in points], path, self.suggestions())


def _finite_points(lrs: Sequence[float], losses: Sequence[float]) -> list[tuple[float, float]]:
    return [(lr, loss) for lr, loss in zip(lrs, losses, strict=True) if math.isfinite(loss)]


def _window(points: list[T]) -> list[T]:
    start = len(points) // 10
    end = len(points) - _SKIP_END
    return points[start:end] if end - start >= 2 else points


def _valley(losses: Sequence[float]) -> int:
    """Index in the middle of the main descent of ``losses`` (see LRFinderResult.valley)."""
    bottom = losses.index(min(losses))
    top = losses.index(max(losses[: bottom + 1]))
    fall = losses[top] - losses[bottom]
    if fall <= 0.0:  # the loss never fell: the lowest point is the first
        return bottom
    # Noise on the plateau can dip below the top quarter and come back: the descent
    # begins after the loss last leaves it, and ends when it first reaches the bottom one.
    high, low = losses[top] - fall / 4, losses[bottom] + fall / 4
    begin = 1 + max(i for i in range(top, bottom + 1) if losses[i] > high)
    end = next(i for i in range(begin, bottom + 1) if losses[i] <= low)
    # lrs grow geometrically, so the middle index is the middle in log(lr).
    return (begin + end) // 2


def suggest(lrs: Sequence[float], losses: Sequence[float]) -> tuple[float, float, float]:
    """``(valley, steep, minimum)`` learning rates for a finder curve (see LRFinderResult).

    Raises:
        ValueError: Fewer than 2 finite losses.
    """
    points = _window(_finite_points(lrs, losses))
    if len(points) < 2:
        raise ValueError(
            f"the LR finder recorded {len(points)} usable point(s), too few to suggest a "
            "learning rate: lower start_lr, raise num_it, or give more training batches"
        )
    xs = [p[0] for p in points]
    ys = [p[1] for p in points]
    # Slopes over spans of a tenth of the curve: batch-to-batch noise would win otherwise.
    span = max(1, len(xs) // 10)
    slopes = [
        (ys[i + span] - ys[i]) / (math.log(xs[i + span]) - math.log(xs[i]))
        for i in range(len(xs) - span)
    ]
    steep = xs[slopes.index(min(slopes)) + span // 2]
    minimum = xs[ys.index(min(ys))] / 10
    return xs[_valley(ys)], steep, minimum


class LRFinder(Callback):
    """Trains with a learning rate growing geometrically per batch, recording the loss.

    Batch ``k`` (0-based) trains at ``start_lr * (end_lr / start_lr) ** (k / (num_it - 1))``
    in every param group, so the last of ``num_it`` batches uses ``end_lr``. Validation
    is skipped. The fit stops after ``num_it`` batches, when the smoothed loss is not
    finite, or (``stop_div``) when it exceeds 4 times the best so far. When the fit
    ends, however it ends, the model's and the optimizer's state (and the model's
    train/eval modes) are put back exactly as they were at ``begin_fit``.
    ``learn.lr_find()`` runs it for as many epochs as ``num_it`` needs.

    Args:
        start_lr: The first learning rate.
        end_lr: The last learning rate (greater than ``start_lr``).
        num_it: At most this many training batches (at least 2).
        stop_div: Stop when the smoothed loss exceeds 4 times its minimum.
        beta: Smoothing factor of the recorded loss (debiased exponential average).
    """

    # After the other schedulers, so the finder's learning rate is the one used.
    run_after: ClassVar[SubscriberClasses] = (TrainEvalCallback, ParamScheduler)
    run_before: ClassVar[SubscriberClasses] = Recorder

    def __init__(
        self,
        start_lr: float = 1e-7,
        end_lr: float = 10.0,
        num_it: int = 100,
        stop_div: bool = True,
        beta: float = 0.98,
    ) -> None:
        start_lr = checked_float("LRFinder start_lr", start_lr, what="positive and finite")
        end_lr = checked_float("LRFinder end_lr", end_lr, what="positive and finite")
        if end_lr <= start_lr:
            raise ValueError(f"LRFinder end_lr ({end_lr}) must exceed start_lr ({start_lr})")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"LRFinder beta must be in [0, 1), got {beta!r}")
        self.schedule: Final = SchedExp(start_lr, end_lr)
        self.num_it: Final = checked_int("LRFinder num_it", num_it, 2)
        self.stop_div: Final = stop_div
        self.beta: Final = beta
        self.lrs: list[float] = []
        self.losses: list[float] = []
        self._ema = 0.0
        self._best = math.inf
        self._cancelled = False
        self._done = False
        self._saved: tuple[dict[str, Any], dict[str, Any], list[bool]] | None = None

    @override
    def begin_fit(self) -> None:
        self.lrs, self.losses = [], []
        self._ema, self._best = 0.0, math.inf
        self._done = False
        model = self.model
        modes = [m.training for m in model.modules()]
        model_state = cast("dict[str, Any]", cpu_copy(model.state_dict()))
        opt_state = cast("dict[str, Any]", cpu_copy(self.opt.state_dict()))
        self._saved = (model_state, opt_state, modes)

    @override
    def begin_batch(self) -> None:
        if self._done:
            raise CancelFitException
        self._cancelled = False
        if self.training:
            lr = self.schedule(len(self.lrs) / (self.num_it - 1))
            for group in self.opt.param_groups:
                group["lr"] = lr

    @override
    def after_cancel_batch(self) -> None:
        self._cancelled = True

    @override
    def after_batch(self) -> None:
        if not self.training or self._cancelled:
            return
        loss = float(self.loss.detach().float().item())  # the finder must look every batch
        self.lrs.append(float(self.opt.param_groups[0]["lr"]))
        self._ema = self.beta * self._ema + (1 - self.beta) * loss
        smooth = self._ema / (1 - self.beta ** len(self.lrs))
        self.losses.append(smooth)
        # The fit stops at the next batch or at the end of the phase, so that every
        # callback's after_batch still sees this one.
        self._best = min(self._best, smooth)
        self._done = (
            not math.isfinite(smooth)
            or (self.stop_div and smooth > 4 * self._best)
            or len(self.lrs) >= self.num_it
        )

    @override
    def after_train(self) -> None:
        if self._done:
            raise CancelFitException

    @override
    def begin_validate(self) -> None:
        raise CancelValidException

    @override
    def teardown(self) -> None:
        self._restore()

    def _restore(self) -> None:
        saved, self._saved = self._saved, None
        if saved is None:
            return
        model_state, opt_state, modes = saved
        model = self.model
        model.load_state_dict(model_state)
        self.opt.load_state_dict(opt_state)
        self.opt.zero_grad(set_to_none=True)
        for module, mode in zip(model.modules(), modes, strict=True):
            module.training = mode

    def result(self) -> LRFinderResult:
        """The recorded curve and the suggested learning rates.

        Raises:
            ValueError: Too few batches were recorded (fewer than 2 with a finite loss).
        """
        valley, steep, minimum = suggest(self.lrs, self.losses)
        return LRFinderResult(tuple(self.lrs), tuple(self.losses), valley, steep, minimum)


def lr_find(
    learn: Learner,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    num_it: int = 100,
    stop_div: bool = True,
) -> LRFinderResult:
    """Run an :class:`LRFinder` on ``learn`` and leave ``learn`` as it was.

    Fits for enough epochs to see ``num_it`` training batches (cycling the training
    data). Besides the model and optimizer (which the finder restores), the Recorder's
    records and the loop counters are put back, so ``learn.recorder`` still shows the
    previous fit. ``Learner.lr_find`` runs it as an auxiliary run. The random number
    generators are not rewound.

    Raises:
        ValueError: The training data has no batches, or an argument is out of range.
    """
    finder = LRFinder(start_lr, end_lr, num_it, stop_div)
    require_training_batches(learn.dls.train, "lr_find")
    n_batches = len(learn.dls.train)
    state = learn.state
    recorders = [(cb, cb.snapshot()) for cb in state.callbacks if isinstance(cb, Recorder)]
    try:
        with state.counters_kept():
            learn.fit(math.ceil(num_it / n_batches), cbs=[finder])
    finally:
        for recorder, snapshot in recorders:
            recorder.restore(snapshot)
        state.invalidate("smooth_loss")
    return finder.result()
