"""The subscriber base class: one no-op hook per event, plus ordering declarations.

A subclass subscribes to exactly the hooks it overrides, so an event nobody listens to
costs nothing. Hook names are checked when a subscriber is registered: a method whose
name is a near miss of an event (``after_los``, ``before_batch``) would otherwise never
run, so it is rejected with a "did you mean" message.
"""

from __future__ import annotations

import difflib
import inspect
import re
import weakref
from collections.abc import Collection
from typing import ClassVar, Final, TypeAlias, cast

from ._events import Event
from ._porting import foreign_hook_hint

__all__ = [
    "HookError",
    "Subscriber",
    "SubscriberClasses",
    "hooks_of",
    "ordering_classes",
    "subscriber_name",
]

EVENT_NAMES: Final = frozenset(event.value for event in Event)

SubscriberClasses: TypeAlias = "type[Subscriber] | Collection[type[Subscriber]]"
"""The type of ``run_before``/``run_after``: one subscriber class, or a collection of them.

A subclass in the library annotates its own (``run_after: ClassVar[SubscriberClasses] =
Recorder``) so that its public type is declared, not inferred.
"""

# Subscriber classes already checked, with the events they override.
_HOOKS_BY_CLASS: Final[weakref.WeakKeyDictionary[type[Subscriber], tuple[Event, ...]]] = (
    weakref.WeakKeyDictionary()
)


class HookError(TypeError):
    """A subscriber class declares a hook the bus cannot use (misspelled, wrong signature)."""


class Subscriber:
    """Base of everything an :class:`~trainbus.EventBus` dispatches to.

    Override the hooks you need; each takes no argument besides ``self`` and returns
    ``None``. Declare ordering with class variables:

    Attributes:
        run_before: Subscriber classes (one, or a collection) this one must precede.
        run_after: Subscriber classes (one, or a collection) this one must follow.
        order: Tie-break among subscribers free to run: smaller runs first (default 0).
    """

    run_before: ClassVar[SubscriberClasses] = ()
    run_after: ClassVar[SubscriberClasses] = ()
    order: ClassVar[int] = 0

    @property
    def name(self) -> str:
        """Snake-case class name without a ``Callback`` suffix: ``Recorder`` -> ``recorder``."""
        return subscriber_name(type(self))

    def begin_fit(self) -> None:
        """Set-up before the first epoch."""

    def begin_epoch(self) -> None:
        """Per-epoch resets."""

    def begin_train(self) -> None:
        """Set-up of the training phase (``model.train()``)."""

    def begin_batch(self) -> None:
        """Before the forward pass: change the batch, schedule hyper-parameters."""

    def after_pred(self) -> None:
        """After the forward pass: change the prediction before the loss."""

    def after_loss(self) -> None:
        """After the loss: add penalties before the backward pass."""

    def after_backward(self) -> None:
        """After the backward pass: change gradients before the step (clipping)."""

    def after_step(self) -> None:
        """After the optimizer step, before ``zero_grad``."""

    def after_batch(self) -> None:
        """End of a batch, cancelled or not."""

    def after_train(self) -> None:
        """End of the training phase, cancelled or not."""

    def begin_validate(self) -> None:
        """Set-up of the validation phase (``model.eval()``); runs under ``no_grad``."""

    def after_validate(self) -> None:
        """End of the validation phase, cancelled or not."""

    def after_epoch(self) -> None:
        """End of an epoch, cancelled or not."""

    def after_fit(self) -> None:
        """End of the fit, cancelled or not."""

    def after_cancel_batch(self) -> None:
        """A ``CancelBatchException`` ended the batch; ``after_batch`` follows."""

    def after_cancel_train(self) -> None:
        """A ``CancelTrainException`` ended the training phase; ``after_train`` follows."""

    def after_cancel_valid(self) -> None:
        """A ``CancelValidException`` ended validation; ``after_validate`` follows."""

    def after_cancel_epoch(self) -> None:
        """A ``CancelEpochException`` ended the epoch; ``after_epoch`` follows."""

    def after_cancel_fit(self) -> None:
        """A ``CancelFitException`` ended the fit; ``after_fit`` follows."""

    def on_exception(self, error: BaseException) -> None:
        """A run is ending with ``error``: called before :meth:`teardown`.

        Called once, in subscriber order, when an ordinary exception (not a signal)
        leaves the outermost stage, before it reaches the caller. ``after_*`` events do
        not run in that case. Release resources in :meth:`teardown`, which runs however
        the run ends; this hook is for what only a failure needs (saving an emergency
        checkpoint, say).
        """

    def teardown(self) -> None:
        """Release what this subscriber holds (files, bars, patched state): the run ended.

        Called once, in subscriber order, when the outermost stage (a fit, or an
        evaluation run) ends, however it ended: normally, cancelled by a signal, or by an
        exception (then after every :meth:`on_exception`). An exception raised here
        does not hide the run's own: it is added to that error as a note.
        """


def subscriber_name(cls: type[object]) -> str:
    """``TerminateOnNaNCallback`` -> ``terminate_on_nan``; ``Recorder`` -> ``recorder``."""
    base = cls.__name__.removesuffix("Callback") or cls.__name__
    base = base.replace("NaN", "Nan")  # one word, not "na_n"
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])", "_", base).lower()


def hooks_of(cls: type[Subscriber]) -> tuple[Event, ...]:
    """The events whose hooks ``cls`` overrides, after checking its hook names.

    Raises:
        HookError: A method name is a near miss of an event name, or a hook cannot be
            called without arguments.
    """
    cached = _HOOKS_BY_CLASS.get(cls)
    if cached is not None:
        return cached
    _reject_near_misses(cls)
    _check_ordering(cls)
    base = Subscriber
    hooks = tuple(e for e in Event if getattr(cls, e.value) is not getattr(base, e.value))
    for event in hooks:
        _check_signature(cls, event.value)
    _HOOKS_BY_CLASS[cls] = hooks
    return hooks


def ordering_classes(spec: SubscriberClasses) -> tuple[type[Subscriber], ...]:
    """``run_before``/``run_after`` as a tuple of classes (checked by :func:`hooks_of`)."""
    return cast("tuple[type[Subscriber], ...]", _as_items(spec))


def _as_items(spec: object) -> tuple[object, ...]:
    """One class, or a collection of them, as a tuple."""
    if isinstance(spec, Collection) and not isinstance(spec, str | bytes | type):
        return tuple(cast("Collection[object]", spec))
    return (spec,)


def _is_subscriber_class(item: object) -> bool:
    return isinstance(item, type) and issubclass(item, Subscriber)


def _check_ordering(cls: type[Subscriber]) -> None:
    for attribute in ("run_before", "run_after"):
        wrong = [c for c in _as_items(getattr(cls, attribute)) if not _is_subscriber_class(c)]
        if wrong:
            raise HookError(
                f"{cls.__qualname__}.{attribute} must be a Callback class or a collection of "
                f"them, but holds {wrong[0]!r}"
            )
    order = cast(object, cls.order)  # declared int, but a subclass may assign anything
    if isinstance(order, bool) or not isinstance(order, int):
        raise HookError(f"{cls.__qualname__}.order must be an int, got {order!r}")


def _suggestion(name: str) -> str | None:
    if name.startswith("before_") and "begin_" + name.removeprefix("before_") in EVENT_NAMES:
        return "begin_" + name.removeprefix("before_")
    close = difflib.get_close_matches(name, EVENT_NAMES, n=1, cutoff=0.8)
    return close[0] if close else None


def _reject_near_misses(cls: type[Subscriber]) -> None:
    for klass in cls.__mro__:
        if klass is Subscriber or not issubclass(klass, Subscriber):
            continue
        for name, value in vars(klass).items():
            if name.startswith("_") or name in EVENT_NAMES or not callable(value):
                continue
            hint = foreign_hook_hint(name)
            if hint is not None:
                raise HookError(
                    f"{cls.__qualname__}.{name} is not a trainbus event, so it would never "
                    f"run: {hint}. (Prefix a helper that is not a hook with '_'.)"
                )
            suggestion = _suggestion(name)
            if suggestion is not None:
                raise HookError(
                    f"{cls.__qualname__}.{name} is not an event, so it would never run: "
                    f"did you mean {suggestion}? (Prefix a helper that is not a hook with '_'.)"
                )


def _check_signature(cls: type[Subscriber], name: str) -> None:
    hook = getattr(cls, name)
    if not callable(hook):
        raise HookError(f"{cls.__qualname__}.{name} must be a method, not {type(hook).__name__}")
    if inspect.iscoroutinefunction(hook) or inspect.isasyncgenfunction(hook):
        raise HookError(
            f"hook {cls.__qualname__}.{name} is an async def: the bus calls hooks and never "
            "awaits them, so its body would never run; make it a plain def"
        )
    try:
        signature = inspect.signature(hook)
    except (TypeError, ValueError):  # builtins without signature metadata: trust them
        return
    required = [
        p
        for p in list(signature.parameters.values())[1:]
        if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    ]
    if required:
        raise HookError(
            f"hook {cls.__qualname__}.{name} must take no arguments besides self, "
            f"but requires {', '.join(p.name for p in required)}"
        )
