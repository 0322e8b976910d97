"""Ordering: run_before / run_after / order over random graphs of callback classes."""

from __future__ import annotations

import itertools
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typing_extensions import override

from conftest import tiny_learner
from trainbus import Callback, CallbackOrderError, Event, EventBus, Stage, Subscriber
from trainbus.callbacks import ProgressCallback, Recorder, TerminateOnNaNCallback

Spec = type[Subscriber] | Collection[type[Subscriber]]


class Node(Subscriber):
    """A subscriber that logs its class name at begin_fit."""

    log: list[str]

    def __init__(self, log: list[str]) -> None:
        self.log = log

    @override
    def begin_fit(self) -> None:
        self.log.append(type(self).__name__)


def make_node(name: str, order: int = 0) -> type[Node]:
    """A fresh Node subclass called ``name``."""

    class Made(Node):
        pass

    Made.__name__ = Made.__qualname__ = name
    Made.order = order
    return Made


def _as_classes(spec: Spec) -> tuple[type[Subscriber], ...]:
    return (spec,) if isinstance(spec, type) else tuple(spec)


def must_precede(a: Subscriber, b: Subscriber) -> bool:
    """The contract: ``a`` runs before ``b`` when a's run_before or b's run_after says so."""
    return any(isinstance(b, c) for c in _as_classes(type(a).run_before)) or any(
        isinstance(a, c) for c in _as_classes(type(b).run_after)
    )


def ancestors(subs: Sequence[Subscriber], index: int) -> set[int]:
    """Indices of the subscribers that must run before ``subs[index]``, through any chain."""
    found: set[int] = set()
    todo = [index]
    while todo:
        b = todo.pop()
        for a in range(len(subs)):
            if a != b and a not in found and must_precede(subs[a], subs[b]):
                found.add(a)
                todo.append(a)
    return found


def _express(classes: list[type[Subscriber]], form: str) -> Spec:
    if form == "single" and len(classes) == 1:
        return classes[0]
    if form == "list":
        return list(classes)
    if form == "set":
        return set(classes)
    if form == "frozenset":
        return frozenset(classes)
    return tuple(classes)


@dataclass
class Graph:
    classes: list[type[Node]]
    edges: list[tuple[int, int]]  # (a, b): class a must run before class b
    registration: list[int]

    def register(self, log: list[str]) -> tuple[EventBus, list[Node]]:
        nodes = [self.classes[i](log) for i in self.registration]
        return EventBus(nodes), nodes


FORMS = st.sampled_from(["single", "tuple", "list", "set", "frozenset"])


@st.composite
def graphs(draw: st.DrawFn) -> Graph:
    """Random acyclic constraints between 1-7 classes, plus constraints on absent classes."""
    n = draw(st.integers(1, 7))
    rank = draw(st.permutations(range(n)))  # a hidden topological order
    pairs = [(a, b) for a in range(n) for b in range(n) if rank[a] < rank[b]]
    edges = draw(st.lists(st.sampled_from(pairs), unique=True)) if pairs else []
    classes = [make_node(f"N{i}", draw(st.integers(-2, 2))) for i in range(n)]
    ghosts = [make_node(f"Ghost{i}") for i in range(2)]  # never registered
    before: list[list[type[Subscriber]]] = [[] for _ in range(n)]
    after: list[list[type[Subscriber]]] = [[] for _ in range(n)]
    for a, b in edges:
        if draw(st.booleans()):
            before[a].append(classes[b])
        else:
            after[b].append(classes[a])
    for i in range(n):
        for ghost in ghosts:
            if draw(st.booleans()):
                (before if draw(st.booleans()) else after)[i].append(ghost)
        if before[i]:
            classes[i].run_before = _express(before[i], draw(FORMS))
        if after[i]:
            classes[i].run_after = _express(after[i], draw(FORMS))
    registration = draw(st.permutations(range(n)))
    return Graph(classes, edges, list(registration))


@settings(max_examples=200, deadline=None)
@given(graphs())
def test_order_respects_constraints_and_tie_breaks(graph: Graph) -> None:
    log: list[str] = []
    bus, nodes = graph.register(log)
    resolved = list(bus.subscribers)
    assert sorted(map(id, resolved)) == sorted(map(id, nodes))
    position = {type(node): k for k, node in enumerate(resolved)}
    for a, b in graph.edges:
        assert position[graph.classes[a]] < position[graph.classes[b]]
    # Dispatch follows the resolved order.
    bus.run(Stage.fit, lambda: None)
    assert log == [type(node).__name__ for node in resolved]
    # Deterministic: the same registrations give the same order.
    again, _ = graph.register([])
    assert [type(s) for s in again.subscribers] == [type(s) for s in resolved]


@settings(max_examples=400, deadline=None)
@given(graphs())
def test_adding_a_callback_moves_only_it_and_its_predecessors_earlier(graph: Graph) -> None:
    """Stability: a pair of earlier callbacks keeps its relative order when one more is
    added, unless a chain of constraints through the new one requires the change; and
    then the one that moves is a predecessor of the new one, moving earlier."""
    nodes = [graph.classes[i]([]) for i in graph.registration]
    bus = EventBus()
    for k, node in enumerate(nodes):
        before = list(bus.subscribers)
        assert before == list(EventBus(nodes[:k]).subscribers)  # deterministic
        bus.add(node)
        after = list(bus.subscribers)
        must_move = ancestors(nodes[: k + 1], k)
        where = {id(s): i for i, s in enumerate(after)}
        for i, a in enumerate(before):
            for b in before[i + 1 :]:  # a ran before b
                if where[id(a)] > where[id(b)]:  # now b runs before a: b moved earlier
                    b_index = next(j for j, s in enumerate(nodes) if s is b)
                    a_index = next(j for j, s in enumerate(nodes) if s is a)
                    assert b_index in must_move and a_index not in must_move
        # Every constraint holds after each addition.
        for x, y in itertools.permutations(after, 2):
            if must_precede(x, y):
                assert where[id(x)] < where[id(y)]


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(-2, 2), min_size=1, max_size=8))
def test_unconstrained_callbacks_sort_by_order_then_registration(orders: list[int]) -> None:
    classes = [make_node(f"U{i}", o) for i, o in enumerate(orders)]
    bus = EventBus([cls([]) for cls in classes])
    expected = sorted(range(len(orders)), key=lambda i: (orders[i], i))
    assert [type(s).__name__ for s in bus.subscribers] == [f"U{i}" for i in expected]


@st.composite
def cyclic_graphs(draw: st.DrawFn) -> tuple[list[type[Node]], list[type[Node]], list[int]]:
    """A cycle of 2-4 classes, plus free classes that only point into the cycle or forward."""
    k = draw(st.integers(2, 4))
    m = draw(st.integers(0, 4))
    cycle = [make_node(f"Cyc{i}") for i in range(k)]
    free = [make_node(f"Free{i}") for i in range(m)]
    for i, cls in enumerate(cycle):
        nxt = cycle[(i + 1) % k]
        if draw(st.booleans()):
            cls.run_before = nxt
        else:
            nxt.run_after = (*_as_classes(nxt.run_after), cls)
    for i, cls in enumerate(free):
        targets = draw(st.lists(st.sampled_from([*free[i + 1 :], *cycle]), unique=True))
        cls.run_before = tuple(targets)
    everything = [*cycle, *free]
    registration = draw(st.permutations(range(len(everything))))
    return cycle, free, list(registration)


@settings(max_examples=100, deadline=None)
@given(cyclic_graphs())
def test_cycles_name_every_member_and_leave_the_bus_unchanged(
    graph: tuple[list[type[Node]], list[type[Node]], list[int]],
) -> None:
    cycle, free, registration = graph
    everything = [*cycle, *free]
    bus = EventBus()
    failures = 0
    for index in registration:
        before = (bus.subscribers, bus.handlers(Event.begin_fit))
        try:
            bus.add(everything[index]([]))
        except CallbackOrderError as error:
            failures += 1
            message = str(error)
            assert message.startswith("run_before/run_after constraints form a cycle: ")
            assert message.endswith("; remove one of these constraints")
            for cls in cycle:
                assert cls.__name__ in message
            for cls in free:
                assert cls.__name__ not in message
            assert bus.subscribers == before[0]
            assert bus.handlers(Event.begin_fit) is before[1]
    # Only the add that closes the cycle fails; the other members stay registered.
    assert failures == 1
    assert len(bus.subscribers) == len(everything) - 1


def test_cycle_error_on_a_learner_leaves_it_unchanged() -> None:
    class First(Callback):
        pass

    class Second(Callback):
        run_after = First

    First.run_after = Second
    learn = tiny_learner([First()])
    defaults = learn.cbs
    second = Second()
    with pytest.raises(CallbackOrderError) as info:
        learn.add_cb(second)
    assert "First" in str(info.value) and "Second" in str(info.value)
    assert learn.cbs == defaults
    with pytest.raises(RuntimeError, match="not attached"):
        _ = second.learn


# ------------------------------------------------------------- subclasses


class MyRecorder(Recorder):
    pass


class BeforeMyRecorder(Callback):
    run_before = MyRecorder

    @override
    def after_batch(self) -> None: ...


def _resolved_order(learn_cbs: Sequence[Callback]) -> list[str]:
    learn = tiny_learner()
    learn.remove_cb(learn.recorder)
    for cb in learn_cbs:
        learn.add_cb(cb)
    return [type(cb).__name__ for cb in learn.bus.subscribers]


def _owner_types(handlers: Sequence[object]) -> list[type[object]]:
    kinds: list[type[object]] = []
    for handler in handlers:
        owner: object = getattr(handler, "__self__", None)
        kinds.append(type(owner))
    return kinds


def test_constraints_apply_to_subclasses() -> None:
    # TerminateOnNaN declares run_before = Recorder: it must precede a Recorder subclass,
    # even when registered after it; ProgressCallback (run_after = Recorder) follows it.
    order = _resolved_order([MyRecorder(), TerminateOnNaNCallback()])
    assert order == [
        "TrainEvalCallback",
        "TerminateOnNaNCallback",
        "MyRecorder",
        "ProgressCallback",
    ]


def test_constraint_on_a_subclass_does_not_apply_to_its_base() -> None:
    order = _resolved_order([Recorder(), BeforeMyRecorder()])
    # Registration order stands: the plain Recorder is not a MyRecorder.
    assert order == ["TrainEvalCallback", "Recorder", "ProgressCallback", "BeforeMyRecorder"]


def test_terminate_on_nan_runs_before_the_recorder() -> None:
    learn = tiny_learner([TerminateOnNaNCallback()])
    kinds = _owner_types(learn.bus.handlers(Event.after_batch))
    assert kinds.index(TerminateOnNaNCallback) < kinds.index(Recorder)
    kinds = _owner_types(learn.bus.handlers(Event.after_epoch))
    assert kinds.index(Recorder) < kinds.index(ProgressCallback)


# ------------------------------------------------------- show_training_loop

DEFAULT_LOOP = """\
begin_fit:
    TrainEvalCallback
    Recorder
    ProgressCallback
begin_epoch:
    Recorder
begin_train:
    TrainEvalCallback
    ProgressCallback
after_batch:
    TrainEvalCallback
    Recorder
after_train:
    ProgressCallback
begin_validate:
    TrainEvalCallback
    ProgressCallback
after_validate:
    ProgressCallback
after_epoch:
    Recorder
    ProgressCallback
after_cancel_batch:
    Recorder
teardown:
    ProgressCallback
"""


def test_show_training_loop_of_the_default_learner(capsys: pytest.CaptureFixture[str]) -> None:
    tiny_learner().show_training_loop()
    assert capsys.readouterr().out == DEFAULT_LOOP


def test_show_training_loop_places_added_callbacks(capsys: pytest.CaptureFixture[str]) -> None:
    tiny_learner([TerminateOnNaNCallback()]).show_training_loop()
    out = capsys.readouterr().out
    after_batch = out.split("after_batch:\n")[1].split("after_train:")[0]
    assert after_batch.split() == [
        "TrainEvalCallback",
        "TerminateOnNaNCallback",
        "Recorder",
    ]


# ------------------------------------------------- stability under additions


def test_a_constraint_pulls_the_constrained_callback_forward() -> None:
    # Registered after Late, Sched must precede Recorder: it lands just before the
    # Recorder; the Recorder, ProgressCallback and Late keep their places relative to
    # each other (before the fix, Recorder and ProgressCallback moved behind Late).
    class Late(Callback):
        pass

    class Sched(Callback):
        run_before = Recorder

    learn = tiny_learner([Late()])
    learn.add_cb(Sched())
    assert [type(cb).__name__ for cb in learn.cbs] == [
        "TrainEvalCallback",
        "Sched",
        "Recorder",
        "ProgressCallback",
        "Late",
    ]


def test_predecessors_of_a_new_callback_move_with_it() -> None:
    # C must run after B and before A: it goes just before A, and B (after A so far)
    # moves with it, just before it.
    a_cls, b_cls, c_cls = make_node("A"), make_node("B"), make_node("C")
    c_cls.run_after, c_cls.run_before = b_cls, a_cls
    bus = EventBus([a_cls([]), b_cls([])])
    assert [type(s).__name__ for s in bus.subscribers] == ["A", "B"]
    bus.add(c_cls([]))
    assert [type(s).__name__ for s in bus.subscribers] == ["B", "C", "A"]


def test_removing_a_callback_restores_the_order_before_it_was_added() -> None:
    class Late(Callback):
        pass

    class Sched(Callback):
        run_before = Recorder

    learn = tiny_learner([Late()])
    before = learn.cbs
    sched = learn.add_cb(Sched())
    learn.remove_cb(sched)
    assert learn.cbs == before


class RunLast(Callback):
    run_after = Callback


def test_cycle_between_instances_of_one_class_names_each_instance() -> None:
    learn = tiny_learner([RunLast()])
    with pytest.raises(CallbackOrderError) as info:
        learn.add_cb(RunLast())
    message = str(info.value)
    assert "RunLast#1 -> RunLast#2 -> RunLast#1" in message or (
        "RunLast#2 -> RunLast#1 -> RunLast#2" in message
    )
    assert "instances of RunLast" in message
    assert "RunLast -> RunLast" not in message


class Reader(Callback):
    """Reads the Recorder's row of the epoch; declares no constraint."""

    def __init__(self) -> None:
        self.rows: list[list[float]] = []

    @override
    def after_epoch(self) -> None:
        self.rows.append(self.learn.recorder.values[-1])


@pytest.mark.parametrize("method", ["fit", "fit_one_cycle"])
def test_an_unconstrained_reader_runs_after_the_recorder_in_every_fit(method: str) -> None:
    # Before the fix, fit_one_cycle's ParamScheduler (run_before = Recorder) pushed the
    # Recorder behind Reader, which then raised IndexError reading values[-1].
    reader = Reader()
    learn = tiny_learner([reader])
    getattr(learn, method)(2)
    assert len(reader.rows) == 2
    assert reader.rows == learn.recorder.values
