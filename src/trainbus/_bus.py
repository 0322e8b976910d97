"""The event bus: ordered dispatch, stages, and the conversion of signals into skips.

The bus knows nothing about tensors or the Learner: any loop can drive it by handing
:meth:`EventBus.run` the body of each stage.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Sequence
from typing import Final, final

import attrs

from ._events import Event, Stage
from ._hooks import Subscriber, hooks_of, ordering_classes
from ._ordering import dependency_order
from ._signals import CancelException, SignalUsageError

__all__ = ["EventBus", "Handler", "add_origin_note"]

Handler = Callable[[], object]
"""What the bus calls for an event: a bound hook, or a plain function of no arguments."""

_NOTE_PREFIX: Final = "trainbus: raised in "

_ONCE: Final = (None,)  # run() is run_each() over one item


@attrs.frozen(eq=False)
class _Entry:
    """One registered node of the dependency graph: a subscriber, or a plain function."""

    seq: int
    subscriber: Subscriber | None = None
    function: Handler | None = None
    event: Event | None = None
    order: int = 0
    # A stand-in's entry: the subscriber whose place it holds (and is ordered as).
    stands_for: Subscriber | None = None

    @property
    def ordered_as(self) -> Subscriber | None:
        """The subscriber whose constraints and class place this entry."""
        return self.subscriber if self.stands_for is None else self.stands_for

    @property
    def label(self) -> str:
        if self.subscriber is not None:
            return type(self.subscriber).__qualname__
        return _function_label(self.function)

    def handler(self, event: Event) -> Handler | None:
        if self.subscriber is not None:
            if event in hooks_of(type(self.subscriber)):
                hook: Handler = getattr(self.subscriber, event.value)
                return hook
            return None
        return self.function if event is self.event else None


def _function_label(function: object) -> str:
    inner = getattr(function, "func", function)  # functools.partial wraps Learner.subscribe's
    return getattr(inner, "__qualname__", repr(inner))


def _must_precede(a: _Entry, b: _Entry) -> bool:
    first, second = a.ordered_as, b.ordered_as
    if first is None or second is None:
        return False
    return isinstance(second, ordering_classes(first.run_before)) or isinstance(
        first, ordering_classes(second.run_after)
    )


@final
class EventBus:
    """Holds subscribers in dependency order and dispatches events to them.

    Dispatch tables (event -> handlers, in order) are computed when subscribers change,
    never during dispatch. A subscriber's ``run_before``/``run_after``/``order`` decide
    its place (see :mod:`trainbus._ordering` for the rule).

    Example:
        >>> bus = EventBus()
        >>> bus.subscribe(Event.begin_fit, lambda: print("fit starts"))
        >>> bus.run(Stage.fit, lambda: None)
        fit starts
    """

    __slots__ = (
        "_active",
        "_entries",
        "_live",
        "_next_seq",
        "_ordered",
        "_stack",
        "_table",
        "cancelled_in",
    )

    def __init__(self, subscribers: Iterable[Subscriber] = ()) -> None:
        self._entries: list[_Entry] = []
        self._ordered: tuple[_Entry, ...] = ()
        # What dispatch iterates: a tuple an event, so a handler that changes the
        # subscribers cannot disturb the dispatch it runs in.
        self._table: dict[Event, tuple[Handler, ...]] = {event: () for event in Event}
        # The same handlers in lists that are updated in place, never replaced, so that a
        # loop can keep one and test its truth (see live_handlers).
        self._live: dict[Event, list[Handler]] = {event: [] for event in Event}
        # Stages whose body is running, outermost first: a signal is legal only for these.
        self._stack: list[Stage] = []
        # Whether an outermost run is in progress (its handler releases subscribers on error).
        self._active = False
        self._next_seq = 0
        self.cancelled_in: Event | None = None
        """The event whose dispatch raised the signal being handled (``None``: a stage body
        raised it). Meaningful in ``after_cancel_*`` hooks."""
        for subscriber in subscribers:
            self.add(subscriber)

    # ----------------------------------------------------------------- registration

    def add(self, subscriber: Subscriber) -> None:
        """Register ``subscriber`` for the hooks it overrides.

        Raises:
            HookError: A method name is a near miss of an event, or a hook needs arguments.
            CallbackOrderError: Its ordering constraints close a cycle (nothing is added).
            ValueError: It is registered already.
        """
        # Checked although annotated: callers without a type checker exist.
        if not isinstance(subscriber, Subscriber):  # pyright: ignore[reportUnnecessaryIsInstance]
            raise TypeError(
                f"EventBus.add expects a Subscriber (e.g. a trainbus.Callback), got "
                f"{type(subscriber).__qualname__}; use subscribe() for a plain function"
            )
        if any(entry.subscriber is subscriber for entry in self._entries):
            raise ValueError(f"{type(subscriber).__qualname__} instance is registered already")
        hooks_of(type(subscriber))  # validates hook names before anything changes
        self._insert(_Entry(self._take_seq(), subscriber=subscriber, order=subscriber.order))

    def remove(self, subscriber: Subscriber) -> None:
        """Unregister ``subscriber``.

        Raises:
            ValueError: It is not registered.
        """
        kept = [entry for entry in self._entries if entry.subscriber is not subscriber]
        if len(kept) == len(self._entries):
            raise ValueError(f"{type(subscriber).__qualname__} instance is not registered")
        self._rebuild(kept)

    def suspend(
        self,
        subscribers: Iterable[Subscriber],
        stand_ins: Iterable[tuple[Subscriber, Subscriber]] = (),
    ) -> Callable[[], None]:
        """Unregister ``subscribers`` until the returned function is called.

        That function registers them again with their original registration index, so
        they take back the places they had (ordering depends on registration order), and
        it skips any that were registered again meanwhile.

        Meanwhile, each ``(subscriber, stand_in)`` of ``stand_ins`` (``subscriber`` one of
        ``subscribers``) registers ``stand_in`` in ``subscriber``'s place: ordered as
        ``subscriber`` (its registration index, ``order``, ``run_before``/``run_after``,
        and the constraints of others that name its class), so it runs exactly where
        ``subscriber`` would have, with its own hooks. The returned function unregisters it.

        Raises:
            ValueError: One of ``subscribers`` is not registered, a stand-in's subscriber
                is not one of them, or a stand-in is registered already.
        """
        chosen = list(subscribers)
        for subscriber in chosen:
            if not any(entry.subscriber is subscriber for entry in self._entries):
                raise ValueError(f"{type(subscriber).__qualname__} instance is not registered")
        ids = {id(subscriber) for subscriber in chosen}
        held = [entry for entry in self._entries if id(entry.subscriber) in ids]
        standing = self._stand_in_entries(held, stand_ins)
        kept = [entry for entry in self._entries if id(entry.subscriber) not in ids]
        self._rebuild(sorted([*kept, *standing], key=lambda entry: entry.seq))
        placed = {id(entry) for entry in standing}

        def restore() -> None:
            remaining = [entry for entry in self._entries if id(entry) not in placed]
            present = {id(entry.subscriber) for entry in remaining}
            back = [entry for entry in held if id(entry.subscriber) not in present]
            self._rebuild(sorted([*remaining, *back], key=lambda entry: entry.seq))

        return restore

    def _stand_in_entries(
        self, held: list[_Entry], stand_ins: Iterable[tuple[Subscriber, Subscriber]]
    ) -> list[_Entry]:
        """The entries of ``stand_ins``, each in the place of the held entry it stands for."""
        standing: list[_Entry] = []
        for original, stand_in in stand_ins:
            entry = next((e for e in held if e.subscriber is original), None)
            if entry is None:
                raise ValueError(
                    f"a stand-in for {type(original).__qualname__}, which is not suspended"
                )
            if any(e.subscriber is stand_in for e in (*self._entries, *standing)):
                raise ValueError(f"{type(stand_in).__qualname__} instance is registered already")
            hooks_of(type(stand_in))  # validates its hook names before anything changes
            standing.append(attrs.evolve(entry, subscriber=stand_in, stands_for=original))
        return standing

    def subscribe(self, event: Event, function: Handler, *, order: int = 0) -> None:
        """Call ``function()`` at every ``event``, placed among subscribers by ``order``.

        Raises:
            ValueError: ``event`` is not an :class:`Event`, or ``function`` is registered
                for it already.
        """
        event = _as_event(event)
        if not callable(function):
            raise TypeError(f"subscribe expects a callable, got {type(function).__qualname__}")
        if inspect.iscoroutinefunction(function):
            raise TypeError(
                f"{_function_label(function)} is an async def: the bus calls subscribers and "
                "never awaits them, so its body would never run; make it a plain def"
            )
        if any(e.function is function and e.event is event for e in self._entries):
            raise ValueError(f"{_function_label(function)} is subscribed to {event} already")
        self._insert(_Entry(self._take_seq(), function=function, event=event, order=order))

    def unsubscribe(self, event: Event, function: Handler) -> None:
        """Stop calling ``function`` at ``event``.

        Raises:
            ValueError: It was not subscribed to ``event``.
        """
        event = _as_event(event)
        kept = [e for e in self._entries if not (e.function is function and e.event is event)]
        if len(kept) == len(self._entries):
            raise ValueError(f"{_function_label(function)} is not subscribed to {event}")
        self._rebuild(kept)

    @property
    def running(self) -> bool:
        """Whether a stage is running (between the outermost ``begin`` and its ``after``)."""
        return self._active

    @property
    def subscribers(self) -> tuple[Subscriber, ...]:
        """The registered subscribers, in resolved order."""
        return tuple(e.subscriber for e in self._ordered if e.subscriber is not None)

    def handlers(self, event: Event) -> tuple[Handler, ...]:
        """What ``event`` calls, in order."""
        return self._table[_as_event(event)]

    def live_handlers(self, event: Event) -> Sequence[Handler]:
        """What ``event`` calls, in order, as a sequence kept current in place.

        A loop can keep it and test its truth to skip :meth:`emit` for an event nobody
        hears, at the cost of a local read. It must not be modified.
        """
        return self._live[_as_event(event)]

    def describe(self) -> str:
        """Event by event, the subscribers that run, in order (events nobody hears omitted),
        then under ``teardown:`` those whose ``teardown`` runs when the outermost stage ends."""
        sections = [
            (event.value, [e.label for e in self._ordered if e.handler(event) is not None])
            for event in Event
        ]
        sections.append(
            ("teardown", [e.label for e, _ in self._subscribers_overriding("teardown")])
        )
        lines: list[str] = []
        for title, names in sections:
            if names:
                lines.append(f"{title}:")
                lines.extend(f"    {name}" for name in names)
        return "\n".join(lines)

    def _take_seq(self) -> int:
        self._next_seq += 1
        return self._next_seq

    def _insert(self, entry: _Entry) -> None:
        self._rebuild([*self._entries, entry])

    def _rebuild(self, entries: list[_Entry]) -> None:
        # Sort first: a cycle raises here and leaves the bus unchanged.
        ordered = dependency_order(
            entries,
            must_precede=_must_precede,
            tie_break=lambda entry: entry.order,
            describe=lambda entry: entry.label,
        )
        table: dict[Event, tuple[Handler, ...]] = {}
        for event in Event:
            handlers = (entry.handler(event) for entry in ordered)
            table[event] = tuple(h for h in handlers if h is not None)
        self._entries, self._ordered = entries, tuple(ordered)
        self._table.update(table)
        for event, snapshot in table.items():
            self._live[event][:] = snapshot

    # ------------------------------------------------------------------- dispatch

    def emit(self, event: Event) -> None:
        """Call every handler of ``event`` in order.

        A signal stops the dispatch at once and propagates to the stage it cancels; a
        signal for a stage that is not running becomes a :class:`SignalUsageError`. Any
        other exception propagates unchanged, with a note naming the handler and event.
        """
        # Hot path: one dict lookup, then the calls. The try costs nothing until a raise.
        for handler in self._table[event]:
            try:
                handler()
            except BaseException as error:
                replacement = self._failure(error, event, handler)
                if replacement is None:
                    raise
                raise replacement from error

    def run(self, stage: Stage, body: Callable[[], object]) -> None:
        """Run ``stage``: ``begin`` event, ``body()``, then the ``after`` event(s).

        ``CancelXException`` for this stage, raised in the ``begin`` event or anywhere in
        the body, skips the rest of both and publishes ``after_cancel`` then ``after``.
        Signals for outer stages pass through without this stage's ``after`` event.
        When the outermost stage ends, every subscriber's ``teardown`` runs, however it
        ended (after every ``on_exception`` when an ordinary exception leaves it).
        """
        self.run_each(stage, _ONCE, body)

    def run_each(self, stage: Stage, items: Iterable[object], body: Callable[[], object]) -> None:
        """Run ``stage`` (see :meth:`run`) once for each item ``items`` yields.

        The same as ``for _ in items: bus.run(stage, body)``, without a call of ``run``
        per item: the per-batch path of a loop, where ``items`` is a generator that puts
        the next batch into the state and yields.
        """
        if not self._active:
            self._run_outermost(stage, items, body)
            return
        stack, emit = self._stack, self.emit
        for _ in items:
            stack.append(stage)
            try:
                emit(stage.begin)
                body()
            except CancelException as signal:
                stack.pop()
                if signal.stage is not stage:
                    raise
                self.cancelled_in = signal.event
                emit(stage.after_cancel)
            except BaseException:
                stack.pop()
                raise
            else:
                stack.pop()
            emit(stage.after)

    def _failure(self, error: BaseException, event: Event, handler: Handler) -> Exception | None:
        """What a dispatch raises when ``handler`` raised ``error``: ``None`` for ``error`` itself.

        A signal for a running stage goes on to that stage, a signal for a stage that is not
        running becomes a :class:`SignalUsageError`, and any other exception gets a note
        naming the handler and the event.
        """
        if isinstance(error, CancelException):
            if error.stage not in self._stack:
                return _misplaced(error, event, handler)
            if error.event is None:  # the innermost dispatch is where it was raised
                error.event = event
            return None
        _annotate(error, handler, event)
        return None

    def _run_outermost(
        self, stage: Stage, items: Iterable[object], body: Callable[[], object]
    ) -> None:
        self._active = True
        failure: BaseException | None = None
        try:
            self.run_each(stage, items, body)
        except CancelException as signal:  # reached the top uncaught: raised out of place
            failure = SignalUsageError(
                f"{type(signal).__name__} was raised where no {signal.stage.name} stage is "
                f"running (outermost stage: {stage.name})"
            )
            self._release(failure)
            raise failure from signal
        except BaseException as error:
            failure = error
            self._release(error)
            raise
        finally:
            self._stack.clear()
            self._active = False
            self._teardown(failure)

    def _subscribers_overriding(self, name: str) -> list[tuple[_Entry, Subscriber]]:
        """The subscribers, in order, whose class overrides ``Subscriber.<name>``."""
        base = getattr(Subscriber, name)
        return [
            (entry, entry.subscriber)
            for entry in self._ordered
            if entry.subscriber is not None and getattr(type(entry.subscriber), name) is not base
        ]

    def _release(self, error: BaseException) -> None:
        for entry, subscriber in self._subscribers_overriding("on_exception"):
            try:
                subscriber.on_exception(error)
            except Exception as cleanup_error:  # keep the original error; record this one
                _note_cleanup_failure(error, entry, "on_exception", cleanup_error)

    def _teardown(self, failure: BaseException | None) -> None:
        """Every subscriber's ``teardown``; the first error raised is raised after all ran,
        unless the run is failing already (then each is a note on ``failure``)."""
        first: Exception | None = None
        for entry, subscriber in self._subscribers_overriding("teardown"):
            try:
                subscriber.teardown()
            except Exception as error:
                if failure is not None:
                    _note_cleanup_failure(failure, entry, "teardown", error)
                elif first is None:
                    first = error
                    error.add_note(f"{_NOTE_PREFIX}callback {entry.label} during teardown")
                else:
                    _note_cleanup_failure(first, entry, "teardown", error)
        if first is not None:
            raise first


def _note_cleanup_failure(
    error: BaseException, entry: _Entry, hook: str, cleanup_error: Exception
) -> None:
    error.add_note(
        f"trainbus: {entry.label}.{hook} failed while releasing: "
        f"{type(cleanup_error).__name__}: {cleanup_error}"
    )


def _as_event(event: Event) -> Event:
    try:
        return Event(event)
    except ValueError:
        raise ValueError(f"{event!r} is not a trainbus Event") from None


def _handler_label(handler: Handler) -> str:
    owner = getattr(handler, "__self__", None)
    if isinstance(owner, Subscriber):
        return f"callback {type(owner).__qualname__}"
    return f"subscriber {_function_label(handler)}"


def _annotate(error: BaseException, handler: Handler, event: Event) -> None:
    add_origin_note(error, f"{_handler_label(handler)} during event {event.value}")


def add_origin_note(error: BaseException, where: str) -> None:
    """Note on ``error`` where it was raised (``trainbus: raised in <where>``), unless an
    inner frame noted it already (the innermost origin is the one that helps)."""
    notes: list[str] = getattr(error, "__notes__", [])
    if not any(note.startswith(_NOTE_PREFIX) for note in notes):
        error.add_note(f"{_NOTE_PREFIX}{where}")


def _misplaced(signal: CancelException, event: Event, handler: Handler) -> SignalUsageError:
    stage = signal.stage
    return SignalUsageError(
        f"{type(signal).__name__} raised by {_handler_label(handler)} in {event.value}, "
        f"where no {stage.name} stage can be cancelled (it has ended or not begun): raise it "
        f"between {stage.begin.value} and the end of the {stage.name} body instead"
    )
