"""Schedules, their phases, ParamScheduler and Learner.fit_one_cycle."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from typing_extensions import override

from conftest import tiny_learner
from trainbus import Callback, Learner
from trainbus.callbacks import (
    ParamScheduler,
    Recorder,
    SchedConst,
    SchedCos,
    SchedExp,
    SchedLin,
    SchedNo,
    Schedule,
    TrainEvalCallback,
    combine_schedules,
    one_cycle_schedules,
)

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)
positive = st.floats(min_value=1e-6, max_value=1e6)
unit = st.floats(min_value=0.0, max_value=1.0)


# ------------------------------------------------------------------ single schedules


def test_schedules_at_known_points() -> None:
    assert [SchedLin(2.0, 4.0)(p) for p in (0.0, 0.25, 1.0)] == [2.0, 2.5, 4.0]
    # cos(pi/3) = 1/2, so a quarter of the way at pos 1/3, three quarters at 2/3.
    cos = SchedCos(1.0, 5.0)
    assert [cos(p) for p in (0.0, 1 / 3, 0.5, 2 / 3, 1.0)] == pytest.approx([1, 2, 3, 4, 5])
    assert [SchedExp(1.0, 100.0)(p) for p in (0.0, 0.5, 1.0)] == pytest.approx([1, 10, 100])
    assert [SchedConst(3.0)(p) for p in (0.0, 0.7, 1.0)] == [3.0, 3.0, 3.0]
    assert [SchedNo(5.0, 9.0)(p) for p in (0.0, 0.7, 1.0)] == [5.0, 5.0, 5.0]


@given(start=finite, end=finite, a=unit, b=unit)
def test_lin_and_cos_move_monotonically_from_start_to_end(
    start: float, end: float, a: float, b: float
) -> None:
    lo, hi = min(a, b), max(a, b)
    for sched in (SchedLin(start, end), SchedCos(start, end)):
        assert sched(0.0) == start
        assert sched(1.0) == pytest.approx(end, abs=1e-9)
        # Values move from start toward end as pos grows (up to rounding).
        slack = 1e-9 * (1 + abs(start) + abs(end))
        assert (sched(hi) - sched(lo)) * (end - start) >= -slack
        assert min(start, end) - slack <= sched(a) <= max(start, end) + slack


@given(start=positive, end=positive, a=unit, b=unit)
def test_exp_is_geometric(start: float, end: float, a: float, b: float) -> None:
    sched = SchedExp(start, end)
    assert sched(0.0) == start
    assert sched(1.0) == pytest.approx(end)
    # Equal steps in pos multiply the value by equal factors.
    assert sched(a) * sched(b) == pytest.approx(sched((a + b) / 2) ** 2)


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda: SchedLin(math.nan, 1.0), ValueError, "SchedLin start must be finite, got nan"),
        (lambda: SchedCos(0.0, math.inf), ValueError, "SchedCos end must be finite, got inf"),
        (lambda: SchedExp(0.0, 1.0), ValueError, "SchedExp start must be positive"),
        (lambda: SchedExp(1.0, -2.0), ValueError, "SchedExp end must be positive"),
        (lambda: SchedConst(True), TypeError, "SchedConst value must be a real number, got bool"),
        (lambda: SchedLin("1", 2.0), TypeError, "SchedLin start must be a real number, got str"),  # type: ignore[arg-type]
    ],
)
def test_schedule_arguments_are_validated(
    make: Callable[[], object], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        make()


@pytest.mark.parametrize("pos", [-0.1, 1.5, math.nan])
def test_pos_outside_unit_interval_is_an_error(pos: float) -> None:
    with pytest.raises(ValueError, match=r"SchedLin\(start=0.0, end=1.0\) was called with pos="):
        SchedLin(0.0, 1.0)(pos)


# ------------------------------------------------------------------------- phases


def test_phases_switch_at_boundaries_and_each_sees_its_own_progress() -> None:
    sched = combine_schedules(
        [0.25, 0.5, 0.25], [SchedLin(0.0, 1.0), SchedConst(5.0), SchedLin(2.0, 0.0)]
    )
    assert sched(0.0) == 0.0
    assert sched(0.125) == 0.5  # halfway through the first phase
    assert sched(0.25) == 5.0  # a boundary belongs to the later phase
    assert sched(0.5) == 5.0
    assert sched(0.75) == 2.0  # the third phase starts
    assert sched(0.875) == 1.0
    assert sched(1.0) == 0.0  # the last phase ends


def test_phases_of_zero_width_are_skipped() -> None:
    sched = combine_schedules(
        [0.5, 0.0, 0.5], [SchedLin(0.0, 1.0), SchedConst(99.0), SchedLin(10.0, 20.0)]
    )
    assert [sched(p) for p in (0.0, 0.25, 0.5, 0.75, 1.0)] == [0.0, 0.5, 10.0, 15.0, 20.0]
    # A last phase of width 0: pos 1 ends the last phase that has a width.
    warm_only = combine_schedules([1.0, 0.0], [SchedLin(0.0, 1.0), SchedConst(99.0)])
    assert [warm_only(p) for p in (0.0, 0.5, 1.0)] == [0.0, 0.5, 1.0]


@given(split=st.floats(min_value=0.01, max_value=0.99), pos=unit)
def test_phases_joined_end_to_start_are_continuous(split: float, pos: float) -> None:
    sched = combine_schedules([split, 1 - split], [SchedCos(1.0, 3.0), SchedCos(3.0, 2.0)])
    assert sched(split) == 3.0
    assert 1.0 <= sched(pos) <= 3.0


def test_phases_accept_plain_functions() -> None:
    def square(pos: float) -> float:
        return pos * pos

    sched = combine_schedules([0.5, 0.5], [square, SchedConst(7.0)])
    assert [sched(0.25), sched(0.5)] == [0.25, 7.0]


@pytest.mark.parametrize(
    ("pcts", "n_scheds", "message"),
    [
        ([0.5, 0.4], 2, r"must sum to 1, got \[0.5, 0.4\]"),
        ([0.5, 0.5], 1, "got 2 fractions and 1 schedules"),
        ([], 0, "got 0 fractions and 0 schedules"),
        ([1.5, -0.5], 2, r"must each be in \[0, 1\]"),
    ],
)
def test_phase_arguments_are_validated(pcts: list[float], n_scheds: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        combine_schedules(pcts, [SchedConst(1.0)] * n_scheds)


def test_phase_fractions_may_miss_one_by_rounding() -> None:
    sched = combine_schedules([0.1, 0.2, 0.7], [SchedConst(1.0), SchedConst(2.0), SchedLin(3, 4)])
    assert sched(1.0) == 4.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"div": 0.0}, "one cycle div must be positive"),
        ({"pct_start": 1.5}, r"pct_start must be in \[0, 1\]"),
        ({"moms": (0.95, 1.0, 0.95)}, r"moms must each be in \[0, 1\)"),
    ],
)
def test_one_cycle_arguments_are_validated(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        one_cycle_schedules(0.1, **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------ ParamScheduler


class HyperSpy(Callback):
    """Records, just before each optimizer step, every group's lr and momentum."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []
        self.moms: list[list[float]] = []
        self.valid_begin_lrs: list[float] = []

    @override
    def begin_batch(self) -> None:
        if not self.training:
            self.valid_begin_lrs.append(self.opt.param_groups[0]["lr"])

    @override
    def after_backward(self) -> None:
        groups = self.opt.param_groups
        self.lrs.append([g["lr"] for g in groups])
        self.moms.append([g["momentum"] if "momentum" in g else g["betas"][0] for g in groups])


def two_group_sgd(params: Iterator[nn.Parameter], lr: float) -> torch.optim.Optimizer:
    """SGD with the weight and the bias in separate param groups."""
    weight, bias = params
    return torch.optim.SGD([{"params": [weight]}, {"params": [bias]}], lr=lr)


def one_cycle_expected(
    n_steps: int, lr_max: float, div: float, div_final: float, moms: tuple[float, float, float]
) -> tuple[list[float], list[float]]:
    """One cycle with pct_start 0.25 over 12 steps, written out independently.

    Warm-up covers steps 0..2 (pos 0, 1/12, 2/12; phase progress 0, 1/3, 2/3, where the
    half cosine has gone 0, 1/4 and 3/4 of the way); annealing steps 3..11 at phase
    progress (k - 3) / 9.
    """
    assert n_steps == 12
    lo, hi, last = lr_max / div, lr_max, lr_max / div_final
    m0, m1, m2 = moms
    lrs = [lo + f * (hi - lo) for f in (0.0, 0.25, 0.75)]
    mom = [m0 + f * (m1 - m0) for f in (0.0, 0.25, 0.75)]
    for k in range(3, 12):
        near_start = (1 + math.cos(math.pi * (k - 3) / 9)) / 2  # 1 at step 3, 0 at the end
        lrs.append(last + near_start * (hi - last))
        mom.append(m2 + near_start * (m1 - m2))
    return lrs, mom


def test_fit_one_cycle_sets_exactly_the_one_cycle_values_in_every_group() -> None:
    spy = HyperSpy()
    learn = tiny_learner([spy], n_train=4, n_valid=2)
    learn.opt = two_group_sgd(learn.model.parameters(), lr=0.1)
    scheduler = learn.fit_one_cycle(3, lr_max=0.4, div=20.0, div_final=1e4, moms=(0.9, 0.8, 0.7))
    lrs, moms = one_cycle_expected(12, 0.4, 20.0, 1e4, (0.9, 0.8, 0.7))
    assert [step[0] for step in spy.lrs] == pytest.approx(lrs, rel=1e-12)
    assert [step[0] for step in spy.moms] == pytest.approx(moms, rel=1e-12)
    assert all(step[0] == step[1] for step in spy.lrs + spy.moms)  # both groups alike
    # What was recorded is what the optimizer stepped with.
    assert scheduler.hps["lr"] == [step[0] for step in spy.lrs]
    assert scheduler.hps["mom"] == [step[0] for step in spy.moms]
    assert learn.recorder.lrs == scheduler.hps["lr"]
    # Validation batches see the last training value: the scheduler leaves them alone.
    used = [step[0] for step in spy.lrs]
    assert spy.valid_begin_lrs == [used[3], used[3], used[7], used[7], used[11], used[11]]
    # The scheduler was for this fit only.
    assert not any(isinstance(cb, ParamScheduler) for cb in learn.cbs)


def test_fit_one_cycle_schedules_adams_first_beta() -> None:
    spy = HyperSpy()
    learn = tiny_learner([spy], n_train=4)
    learn.opt = torch.optim.Adam(learn.model.parameters(), lr=0.01, betas=(0.9, 0.99))
    learn.fit_one_cycle(3, lr_max=0.01)
    _, moms = one_cycle_expected(12, 0.01, 25.0, 1e5, (0.95, 0.85, 0.95))
    assert [step[0] for step in spy.moms] == pytest.approx(moms, rel=1e-12)
    assert learn.opt.param_groups[0]["betas"][1] == 0.99


def test_fit_one_cycle_defaults_to_the_optimizers_initial_lr_every_time() -> None:
    spy = HyperSpy()
    learn = tiny_learner([spy], n_train=4, lr=0.05)
    learn.fit_one_cycle(1)
    assert max(step[0] for step in spy.lrs) == pytest.approx(0.05)
    # The last of 4 batches starts at pos 3/4: 2/3 into the annealing, 3/4 of the way down.
    assert learn.opt.param_groups[0]["lr"] == pytest.approx(0.05 + 0.75 * (0.05 / 1e5 - 0.05))
    spy.lrs.clear()
    learn.fit_one_cycle(1)  # not from the annealed lr the last cycle left behind
    assert spy.lrs[0][0] == pytest.approx(0.05 / 25)
    assert max(step[0] for step in spy.lrs) == pytest.approx(0.05)


def test_fit_one_cycle_without_moms_leaves_momentum_alone() -> None:
    learn = tiny_learner(n_train=4)
    learn.opt = torch.optim.SGD(learn.model.parameters(), lr=0.1, momentum=0.5)
    scheduler = learn.fit_one_cycle(1, moms=None)
    assert set(scheduler.hps) == {"lr"}
    assert learn.opt.param_groups[0]["momentum"] == 0.5


def test_scheduler_runs_after_train_eval_and_before_recorder() -> None:
    learn = tiny_learner()
    scheduler = learn.add_cb(ParamScheduler({"lr": SchedConst(0.01)}))
    order = [type(cb) for cb in learn.cbs]
    assert order.index(TrainEvalCallback) < order.index(ParamScheduler) < order.index(Recorder)
    assert scheduler.run_after is TrainEvalCallback and scheduler.run_before is Recorder


def test_scheduler_reads_pct_train_and_accepts_plain_functions_and_aliases() -> None:
    seen: list[float] = []

    def lr_of(pos: float) -> float:
        seen.append(pos)
        return 0.1 * (1 - pos)

    learn = tiny_learner(n_train=2)
    learn.opt = torch.optim.SGD(learn.model.parameters(), lr=0.1, weight_decay=0.0)
    wd: Schedule = SchedLin(0.0, 0.1)
    scheduler = learn.add_cb(ParamScheduler({"lr": lr_of, "wd": wd}))
    learn.fit(2)
    assert seen == [0.0, 0.25, 0.5, 0.75]
    assert scheduler.hps["lr"] == pytest.approx([0.1, 0.075, 0.05, 0.025])
    assert scheduler.hps["wd"] == pytest.approx([0.0, 0.025, 0.05, 0.075])
    assert learn.opt.param_groups[0]["weight_decay"] == pytest.approx(0.075)
    learn.fit(1)  # hps hold the last fit's values
    assert len(scheduler.hps["lr"]) == 2


@pytest.mark.parametrize(
    ("opt", "name", "message"),
    [
        (
            torch.optim.Adagrad,
            "mom",
            "cannot schedule 'mom': the param groups of Adagrad have neither 'momentum' "
            r"\(SGD-like\) nor 'betas' \(Adam-like\)",
        ),
        (torch.optim.SGD, "gamma", r"cannot schedule 'gamma': the param groups of SGD have no"),
        (torch.optim.Adam, "betas", "holds a tuple there, not a number"),
    ],
)
def test_unknown_hyper_parameters_are_reported_at_begin_fit(
    opt: Callable[..., torch.optim.Optimizer], name: str, message: str
) -> None:
    learn = tiny_learner()
    learn.opt = opt(learn.model.parameters(), lr=0.1)
    before = [p.detach().clone() for p in learn.model.parameters()]
    with pytest.raises(ValueError, match=message):
        learn.fit(1, cbs=[ParamScheduler({name: SchedConst(0.5)})])
    assert all(torch.equal(a, b) for a, b in zip(before, learn.model.parameters(), strict=True))


def test_a_schedule_giving_nan_is_reported() -> None:
    learn = tiny_learner()
    with pytest.raises(ValueError, match=r"the schedule of 'lr' gave nan at pos=0.0"):
        learn.fit(1, cbs=[ParamScheduler({"lr": lambda pos: math.nan})])


def test_scheduler_arguments_are_validated() -> None:
    with pytest.raises(ValueError, match="needs at least one schedule"):
        ParamScheduler({})
    with pytest.raises(TypeError, match=r"schedule for 'lr' is not callable: 0\.1"):
        ParamScheduler({"lr": 0.1})  # type: ignore[dict-item]


def test_scheduler_follows_an_optimizer_replaced_mid_fit() -> None:
    class SwapOptimizer(Callback):
        @override
        def after_epoch(self) -> None:
            if self.epoch == 0:
                self.learn.opt = torch.optim.Adam(self.model.parameters(), lr=1.0)

    learn: Learner = tiny_learner([SwapOptimizer()], n_train=2)
    learn.fit(2, cbs=[ParamScheduler({"lr": SchedConst(0.01), "mom": SchedConst(0.5)})])
    assert learn.opt.param_groups[0]["lr"] == 0.01
    assert learn.opt.param_groups[0]["betas"][0] == 0.5
