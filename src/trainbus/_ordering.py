"""Dependency order of subscribers.

The rule, in full:

1. ``A`` must run before ``B`` when ``B`` is an instance of a class in ``A.run_before``,
   or ``A`` is an instance of a class in ``B.run_after``. Constraints that name classes
   with no registered instance are ignored; a subscriber never constrains itself.
2. The order is built by inserting the subscribers one by one, in registration order.
   Each goes to the latest position that its ``order`` allows (just before the first
   placed subscriber of larger ``order``) and no later than its first placed successor
   (one it must precede). Those of its predecessors (through any chain of constraints)
   that stand at or after that position move with it, keeping their relative order,
   to just before it.
3. A cycle is an error naming its members; nothing is changed when it is raised.

So the order is deterministic, it is the registration order whenever no constraint or
``order`` says otherwise, and it is stable under additions: registering one more
subscriber moves only that subscriber and the subscribers that must run before it, and
those only earlier; every other pair keeps its relative order. A constraint pulls the
constrained subscriber forward (to just before what it precedes); it never pushes
others back. ``order`` places a subscriber among those free to go anywhere; it never
moves one past a constraint.
"""

from __future__ import annotations

import graphlib
from collections import Counter
from collections.abc import Callable, Sequence
from typing import TypeVar, final

__all__ = ["CallbackOrderError", "dependency_order"]

T = TypeVar("T")


@final
class CallbackOrderError(ValueError):
    """The ``run_before``/``run_after`` constraints form a cycle."""


def dependency_order(
    items: Sequence[T],
    *,
    must_precede: Callable[[T, T], bool],
    tie_break: Callable[[T], int],
    describe: Callable[[T], str],
) -> list[T]:
    """Return ``items`` sorted by the rule in this module's docstring.

    Args:
        items: The subscribers, in registration order.
        must_precede: ``must_precede(a, b)`` is true when ``a`` must run before ``b``.
        tie_break: The ``order`` of an item (smaller runs earlier where free to).
        describe: The name used for an item in a cycle error.

    Raises:
        CallbackOrderError: The constraints form a cycle; the message lists its members.
    """
    n = len(items)
    preds: list[set[int]] = [set() for _ in range(n)]
    succs: list[set[int]] = [set() for _ in range(n)]
    for b in range(n):
        for a in range(n):
            if a != b and must_precede(items[a], items[b]):
                preds[b].add(a)
                succs[a].add(b)
    _check_acyclic(items, preds, describe)
    orders = [tie_break(item) for item in items]
    placed: list[int] = []
    for new in range(n):
        position = next((k for k, i in enumerate(placed) if orders[i] > orders[new]), len(placed))
        first_successor = next((k for k, i in enumerate(placed) if i in succs[new]), len(placed))
        position = min(position, first_successor)
        ancestors = _ancestors(new, preds)
        moving = [i for i in placed[position:] if i in ancestors]
        staying = [i for i in placed[position:] if i not in ancestors]
        placed[position:] = [*moving, new, *staying]
    return [items[i] for i in placed]


def _ancestors(index: int, preds: list[set[int]]) -> set[int]:
    """The items registered before ``items[index]`` that must run before it, through any
    chain of constraints among those items (a later registration is not there yet)."""
    found: set[int] = set()
    todo = [i for i in preds[index] if i < index]
    while todo:
        item = todo.pop()
        if item not in found:
            found.add(item)
            todo.extend(i for i in preds[item] if i < index)
    return found


def _check_acyclic(items: Sequence[T], preds: list[set[int]], describe: Callable[[T], str]) -> None:
    sorter: graphlib.TopologicalSorter[int] = graphlib.TopologicalSorter()
    for index, before in enumerate(preds):
        sorter.add(index, *sorted(before))
    try:
        sorter.prepare()
    except graphlib.CycleError as cycle:
        members: list[int] = cycle.args[1]
        labels = _distinct_labels(items, describe)
        path = " -> ".join(labels[i] for i in members)
        shared = sorted({describe(items[i]) for i in members if labels[i] != describe(items[i])})
        hint = "".join(
            f" ({name}#1, {name}#2, ...: the instances of {name}, in registration order)"
            for name in shared
        )
        raise CallbackOrderError(
            f"run_before/run_after constraints form a cycle: {path}{hint}; "
            "remove one of these constraints"
        ) from None


def _distinct_labels(items: Sequence[T], describe: Callable[[T], str]) -> list[str]:
    """Each item's name, numbered ``Name#1``, ``Name#2`` where instances share a name."""
    names = [describe(item) for item in items]
    counts = Counter(names)
    seen: Counter[str] = Counter()
    labels: list[str] = []
    for name in names:
        if counts[name] > 1:
            seen[name] += 1
            labels.append(f"{name}#{seen[name]}")
        else:
            labels.append(name)
    return labels
