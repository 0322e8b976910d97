"""Hyper-parameter schedules and the callback that applies them per training batch.

A schedule is any function of the training progress ``pos`` (0.0 at the start of the
fit, 1.0 at its end) to a value: the classes here (:class:`SchedLin`, :class:`SchedCos`,
:class:`SchedExp`, :class:`SchedConst`, :class:`SchedNo`) and their phases
(:func:`combine_schedules`), or a plain ``lambda pos: ...``. :class:`ParamScheduler`
sets optimizer hyper-parameters from schedules before every training batch.
"""

from __future__ import annotations

import bisect
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Final, Literal, Protocol, final

import attrs
import torch
from typing_extensions import override

from .._callback import Callback
from .._checkpoint import pack_floats, unpack_floats
from .._checks import checked_float
from .._hooks import SubscriberClasses
from ._core import Recorder, TrainEvalCallback

__all__ = [
    "ParamScheduler",
    "SchedConst",
    "SchedCos",
    "SchedExp",
    "SchedLin",
    "SchedNo",
    "Schedule",
    "combine_schedules",
    "one_cycle_schedules",
]


class Schedule(Protocol):
    """A hyper-parameter value as a function of the progress ``pos`` in ``[0, 1]``."""

    def __call__(self, pos: float, /) -> float: ...


def _finite(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    checked_float(f"{type(instance).__qualname__} {attribute.name}", value, None)


def _finite_positive(instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    _positive(type(instance).__qualname__, attribute.name, value)


def _check_pos(owner: object, pos: float) -> None:
    # `not (a <= x <= b)` is also true for NaN.
    if not 0.0 <= pos <= 1.0:
        raise ValueError(f"{owner!r} was called with pos={pos!r}; pos must be in [0, 1]")


@final
@attrs.frozen
class SchedLin:
    """Linear from ``start`` (pos 0) to ``end`` (pos 1)."""

    start: float = attrs.field(validator=_finite)
    end: float = attrs.field(validator=_finite)

    def __call__(self, pos: float, /) -> float:
        _check_pos(self, pos)
        return self.start + pos * (self.end - self.start)


@final
@attrs.frozen
class SchedCos:
    """Half a cosine from ``start`` (pos 0) to ``end`` (pos 1): flat at both ends."""

    start: float = attrs.field(validator=_finite)
    end: float = attrs.field(validator=_finite)

    def __call__(self, pos: float, /) -> float:
        _check_pos(self, pos)
        return self.start + (self.end - self.start) * (1.0 - math.cos(math.pi * pos)) / 2.0


def _positive(owner: str, name: str, value: object) -> float:
    return checked_float(
        f"{owner} {name}", value, what="positive and finite (the schedule is geometric)"
    )


@final
@attrs.frozen
class SchedExp:
    """Geometric from ``start`` to ``end`` (both positive): ``start * (end / start) ** pos``."""

    start: float = attrs.field(validator=_finite_positive)
    end: float = attrs.field(validator=_finite_positive)

    def __call__(self, pos: float, /) -> float:
        _check_pos(self, pos)
        return self.start * math.pow(self.end / self.start, pos)


@final
@attrs.frozen
class SchedConst:
    """Always ``value``."""

    value: float = attrs.field(validator=_finite)

    def __call__(self, pos: float, /) -> float:
        _check_pos(self, pos)
        return self.value


@final
@attrs.frozen
class SchedNo:
    """No change: always ``start``. Takes ``end`` too, like the other two-point schedules."""

    start: float = attrs.field(validator=_finite)
    end: float = attrs.field(default=0.0, validator=_finite)

    def __call__(self, pos: float, /) -> float:
        _check_pos(self, pos)
        return self.start


@final
@attrs.frozen
class _Combined:
    """Phases: schedule ``i`` runs over ``[bounds[i], bounds[i + 1]]``, rescaled to ``[0, 1]``."""

    bounds: tuple[float, ...]
    schedules: tuple[Schedule, ...]

    def __call__(self, pos: float, /) -> float:
        _check_pos(self, pos)
        bounds = self.bounds
        # The phase whose half-open span [start, end) holds pos: at a boundary the later
        # phase starts, and zero-width phases are never chosen.
        i = bisect.bisect_right(bounds, pos) - 1
        if i >= len(self.schedules):  # pos == 1: the last phase that has a width, at its end
            i = max(j for j in range(len(self.schedules)) if bounds[j + 1] > bounds[j])
        start, end = bounds[i], bounds[i + 1]
        return self.schedules[i](min(1.0, (pos - start) / (end - start)))


def combine_schedules(pcts: Sequence[float], schedules: Sequence[Schedule]) -> Schedule:
    """Run ``schedules`` one after another, schedule ``i`` over a fraction ``pcts[i]``.

    Each phase sees its own progress from 0 to 1. At a boundary between phases the
    later one starts (its value at pos 0); at pos 1 the last phase ends (its value at
    pos 1). Phases of width 0 are skipped.

    Args:
        pcts: Fractions of the run, each in ``[0, 1]``, summing to 1.
        schedules: One schedule per fraction.

    Raises:
        ValueError: The lengths differ, are 0, or the fractions are out of range or do
            not sum to 1.

    Example:
        >>> warm = combine_schedules([0.25, 0.75], [SchedLin(0.0, 1.0), SchedCos(1.0, 0.0)])
        >>> warm(0.125), warm(0.25), warm(1.0)
        (0.5, 1.0, 0.0)
    """
    fractions = [checked_float("combine_schedules pcts", p, None) for p in pcts]
    scheds = tuple(schedules)
    if not scheds or len(fractions) != len(scheds):
        raise ValueError(
            f"combine_schedules needs one fraction per schedule and at least one of each; "
            f"got {len(fractions)} fractions and {len(scheds)} schedules"
        )
    if any(p < 0.0 or p > 1.0 for p in fractions):
        raise ValueError(f"combine_schedules pcts must each be in [0, 1], got {fractions}")
    if not math.isclose(sum(fractions), 1.0, rel_tol=1e-9, abs_tol=1e-12):
        raise ValueError(
            f"combine_schedules pcts must sum to 1, got {fractions} (sum {sum(fractions)!r})"
        )
    for i, sched in enumerate(scheds):
        if not callable(sched):
            raise TypeError(f"combine_schedules schedules[{i}] is not callable: {sched!r}")
    bounds = [0.0]
    for p in fractions:
        bounds.append(bounds[-1] + p)
    bounds[-1] = 1.0  # the float sum may miss 1 by an ulp
    return _Combined(tuple(bounds), scheds)


def one_cycle_schedules(
    lr_max: float,
    *,
    div: float = 25.0,
    div_final: float = 1e5,
    pct_start: float = 0.25,
    moms: tuple[float, float, float] | None = (0.95, 0.85, 0.95),
) -> dict[str, Schedule]:
    """The one-cycle policy: schedules for ``lr`` and (unless ``moms`` is None) ``mom``.

    The learning rate warms up from ``lr_max / div`` to ``lr_max`` along a half cosine
    over the first ``pct_start`` of training, then anneals along a half cosine to
    ``lr_max / div_final``. The momentum goes ``moms[0] -> moms[1] -> moms[2]`` over the
    same two phases.

    Raises:
        ValueError: A number is out of range (``lr_max``, ``div``, ``div_final`` must be
            positive, ``pct_start`` in ``[0, 1]``, each momentum in ``[0, 1)``).
    """
    lr_max = _positive("one cycle", "lr_max", lr_max)
    div = _positive("one cycle", "div", div)
    div_final = _positive("one cycle", "div_final", div_final)
    pct_start = checked_float("one cycle pct_start", pct_start, None)
    if not 0.0 <= pct_start <= 1.0:
        raise ValueError(f"one cycle pct_start must be in [0, 1], got {pct_start!r}")
    pcts = (pct_start, 1.0 - pct_start)
    lr = combine_schedules(
        pcts, [SchedCos(lr_max / div, lr_max), SchedCos(lr_max, lr_max / div_final)]
    )
    scheds: dict[str, Schedule] = {"lr": lr}
    if moms is not None:
        if len(moms) != 3:
            raise ValueError(f"one cycle moms must hold 3 momentums, got {moms!r}")
        m0, m1, m2 = (checked_float("one cycle moms", m, None) for m in moms)
        if not all(0.0 <= m < 1.0 for m in (m0, m1, m2)):
            raise ValueError(f"one cycle moms must each be in [0, 1), got {moms!r}")
        scheds["mom"] = combine_schedules(pcts, [SchedCos(m0, m1), SchedCos(m1, m2)])
    return scheds


# How a hyper-parameter name maps onto a param group: a key, or the first of `betas`.
_Target = tuple[Literal["key", "beta1"], str]

# Common short names (fastai's): 'wd' is torch's 'weight_decay'. 'mom' is resolved per
# optimizer, in _target.
_ALIASES: Final = {"wd": "weight_decay"}


def momentum_key(group: Mapping[str, Any]) -> tuple[str, bool] | None:
    """Where a param group keeps its momentum: ``(key, whether it is the first of a tuple)``.

    ``("momentum", False)`` for SGD-like optimizers, ``("betas", True)`` for Adam-like
    ones, ``None`` for those with neither.
    """
    if "momentum" in group:
        return ("momentum", False)
    if "betas" in group:
        return ("betas", True)
    return None


def _target(name: str, group: Mapping[str, Any], opt: torch.optim.Optimizer) -> _Target:
    kind = type(opt).__qualname__
    if name == "mom":
        found = momentum_key(group)
        if found is not None:
            return ("beta1", found[0]) if found[1] else ("key", found[0])
        raise ValueError(
            f"ParamScheduler cannot schedule 'mom': the param groups of {kind} have neither "
            "'momentum' (SGD-like) nor 'betas' (Adam-like)"
        )
    key = _ALIASES.get(name, name)
    value = group.get(key)
    if value is None:
        known = ", ".join(sorted(k for k in group if k != "params"))
        raise ValueError(
            f"ParamScheduler cannot schedule {name!r}: the param groups of {kind} have no "
            f"{key!r} (they have: {known}; 'mom' also works)"
        )
    if isinstance(value, bool) or not isinstance(value, int | float | torch.Tensor):
        raise ValueError(
            f"ParamScheduler cannot schedule {name!r}: {kind} holds a "
            f"{type(value).__qualname__} there, not a number"
        )
    return ("key", key)


def _apply(group: dict[str, Any], target: _Target, value: float) -> None:
    kind, key = target
    if kind == "beta1":
        group[key] = (value, *tuple(group[key])[1:])
        return
    current = group[key]
    if isinstance(current, torch.Tensor):  # a tensor lr (capturable optimizers): keep it
        current.fill_(value)
    else:
        group[key] = value


class ParamScheduler(Callback):
    """Sets optimizer hyper-parameters from schedules before every training batch.

    At ``begin_batch`` of each training batch, for every ``name -> schedule``, it sets
    ``name`` in every param group of the optimizer to ``schedule(pct_train)``, and
    appends the value to ``hps[name]``. A name is a param group key (``lr``,
    ``weight_decay``, ``eps``...), ``wd`` (``weight_decay``), or ``mom``: ``momentum``
    for SGD-like optimizers, the first of ``betas`` for Adam-like ones. Names are
    checked against the optimizer at ``begin_fit``. Validation batches are untouched.

    Runs after TrainEvalCallback (which keeps ``pct_train``) and before Recorder (which
    records the learning rate of each batch).

    Args:
        scheds: Hyper-parameter name -> schedule of it.

    Raises:
        ValueError: ``scheds`` is empty; at begin_fit, a name the optimizer does not have.
    """

    run_after: ClassVar[SubscriberClasses] = TrainEvalCallback
    run_before: ClassVar[SubscriberClasses] = Recorder
    run_in_auxiliary: ClassVar[bool] = False  # lr_find, validate, ...: detached

    def __init__(self, scheds: Mapping[str, Schedule]) -> None:
        if not scheds:
            raise ValueError(
                "ParamScheduler needs at least one schedule, e.g. {'lr': SchedCos(...)}"
            )
        for name, sched in scheds.items():
            if not isinstance(name, str):  # pyright: ignore[reportUnnecessaryIsInstance]
                raise TypeError(f"ParamScheduler names must be str, got {name!r}")
            if not callable(sched):
                raise TypeError(f"ParamScheduler schedule for {name!r} is not callable: {sched!r}")
        self.scheds: Final[dict[str, Schedule]] = dict(scheds)
        self.hps: dict[str, list[float]] = {name: [] for name in self.scheds}
        self._targets: list[tuple[str, Schedule, list[_Target]]] = []
        self._resolved_for: tuple[torch.optim.Optimizer, int] | None = None

    @override
    def begin_fit(self) -> None:
        self.hps = {name: [] for name in self.scheds}
        self._resolve()

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"hps": {name: pack_floats(values) for name, values in self.hps.items()}}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.hps = {name: unpack_floats(values) for name, values in state["hps"].items()}

    def _resolve(self) -> None:
        opt = self.opt
        self._targets = [
            (name, sched, [_target(name, group, opt) for group in opt.param_groups])
            for name, sched in self.scheds.items()
        ]
        self._resolved_for = (opt, len(opt.param_groups))

    @override
    def begin_batch(self) -> None:
        if not self.training:
            return
        opt = self.opt
        groups = opt.param_groups
        resolved = self._resolved_for
        # Another callback may have replaced the optimizer or added a param group.
        if resolved is None or resolved[0] is not opt or resolved[1] != len(groups):
            self._resolve()
        pos = self.pct_train
        for name, sched, targets in self._targets:
            value = float(sched(pos))
            if not math.isfinite(value):
                raise ValueError(f"the schedule of {name!r} gave {value!r} at pos={pos!r}")
            for group, target in zip(groups, targets, strict=True):
                _apply(group, target, value)
            self.hps[name].append(value)

    def plot(self, path: str | os.PathLike[str]) -> None:
        """Write the values set during the last fit, one panel per name, to a PNG."""
        from ._plots import plot_hps

        plot_hps(self.hps, path)
