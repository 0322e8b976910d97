"""Dependency order of subscribers.

The rule, in full:

1. ``A`` must run before ``B`` when ``B`` is an instance of a class in ``A.run_before``,
   or ``A`` is an instance of a class in ``B.run_after``. Constraints that name classes
   with no registered instance are ignored; a subscriber never constrains itself.
2. Among the subscribers whose predecessors have all been placed, the one with the
   smallest ``(order, registration index)`` goes next. This is Kahn's algorithm with a
   priority queue, so the result is deterministic and is the registration order whenever
   no constraint or ``order`` says otherwise.
3. A cycle is an error naming its members; nothing is changed when it is raised.
"""

from __future__ import annotations

import graphlib
import heapq
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
        tie_break: The ``order`` of an item; smaller runs earlier among ready items.
        describe: The name used for an item in a cycle error.

    Raises:
        CallbackOrderError: The constraints form a cycle; the message lists its members.
    """
    sorter: graphlib.TopologicalSorter[int] = graphlib.TopologicalSorter()
    for b_index, b in enumerate(items):
        sorter.add(b_index)
        for a_index, a in enumerate(items):
            if a_index != b_index and must_precede(a, b):
                sorter.add(b_index, a_index)
    try:
        sorter.prepare()
    except graphlib.CycleError as cycle:
        members: list[int] = cycle.args[1]
        path = " -> ".join(describe(items[i]) for i in members)
        raise CallbackOrderError(
            f"run_before/run_after constraints form a cycle: {path}; "
            "remove one of these constraints"
        ) from None
    ready: list[tuple[int, int]] = []
    ordered: list[T] = []
    while sorter.is_active():
        for index in sorter.get_ready():
            heapq.heappush(ready, (tie_break(items[index]), index))
        _, index = heapq.heappop(ready)
        ordered.append(items[index])
        sorter.done(index)
    return ordered
