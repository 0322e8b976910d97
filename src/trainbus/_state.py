"""The state of a run: a pydantic model that validates every write from a callback."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Generator, Iterable, Iterator
from typing import TYPE_CHECKING, Any, ClassVar, Final, Generic, Literal, TypeVar, final

import pydantic
import torch
from torch import nn

from ._data import BatchSource, DataLoaders

if TYPE_CHECKING:
    from ._callback import Callback

__all__ = [
    "BATCH_FIELDS",
    "LOOP_COUNTERS",
    "LOOP_OWNED_FIELDS",
    "STATE_FIELDS",
    "WRITABLE_FIELDS",
    "Extras",
    "FieldName",
    "StateKey",
    "TrainingState",
    "UnsetFieldError",
    "state_write_error",
]

T = TypeVar("T")

FieldName = Literal[
    "model", "dls", "loss_func", "opt", "opt_func", "cbs", "dl", "xb", "yb", "pred", "loss",
    "n_epoch", "epoch", "n_iter", "iter", "train_iter", "pct_train", "training", "smooth_loss",
]  # fmt: skip

# Fields that hold one batch's tensors: dropped when fit returns, so the learner holds no
# device memory between fits.
BATCH_FIELDS: Final = ("xb", "yb", "pred", "loss")

# Fields the loop writes; callbacks read them but cannot assign them.
LOOP_OWNED_FIELDS: Final = frozenset(
    {"epoch", "iter", "n_epoch", "n_iter", "dl", "dls", "x", "y", "cbs"}
)

# The loop counters a run overwrites: an auxiliary run (validate, lr_find) puts them back.
LOOP_COUNTERS: Final[tuple[FieldName, ...]] = (
    "n_epoch", "epoch", "n_iter", "iter", "train_iter", "pct_train", "training", "dl",
)  # fmt: skip

# Default of the fields that start unset: removed from the instance right after
# construction, so reading one raises UnsetFieldError (typed Any to fit every field).
_UNSET: Any = None

# When each field that starts unset gets its first value (for the error on early reads).
_AVAILABLE_FROM: Final = {
    "xb": "begin_batch",
    "yb": "begin_batch",
    "pred": "after_pred",
    "loss": "after_loss",
    "dl": "begin_train",
    "smooth_loss": "the first recorded training batch (Recorder, after_batch)",
}


class UnsetFieldError(AttributeError):
    """A state field was read before the loop gave it a value (``loss`` outside a batch)."""


@final
class StateKey(Generic[T]):
    """A typed key for extension state that callbacks publish for one another.

    Example:
        >>> EMA_LOSS = StateKey("ema_loss", float)
        >>> # publisher: self.learn.extras[EMA_LOSS] = 0.5
        >>> # reader:    value = self.extras[EMA_LOSS]   # typed float
    """

    __slots__ = ("name", "type")

    def __init__(self, name: str, type: type[T]) -> None:
        self.name: Final = name
        self.type: Final = type

    def __repr__(self) -> str:
        return f"StateKey({self.name!r}, {self.type.__qualname__})"


@final
class Extras:
    """Extension state: values keyed by :class:`StateKey`, type-checked on write."""

    __slots__ = ("_values",)

    def __init__(self) -> None:
        self._values: dict[StateKey[Any], object] = {}

    def __getitem__(self, key: StateKey[T]) -> T:
        _check_key(key)
        try:
            value = self._values[key]
        except KeyError:
            raise KeyError(f"no value was published for {key!r} yet") from None
        return value  # type: ignore[return-value]  # checked against key.type on write

    def __setitem__(self, key: StateKey[T], value: T) -> None:
        _check_key(key)
        stored: object = value
        if key.type is float and type(stored) is int:  # type checkers accept int for float
            stored = float(stored)
        if not isinstance(stored, key.type):
            raise TypeError(
                f"{key!r} holds {key.type.__qualname__}, got {type(stored).__qualname__}"
            )
        self._values[key] = stored

    def __delitem__(self, key: StateKey[Any]) -> None:
        _check_key(key)
        try:
            del self._values[key]
        except KeyError:
            raise KeyError(f"no value was published for {key!r} yet") from None

    def __contains__(self, key: StateKey[Any]) -> bool:
        return key in self._values

    def __iter__(self) -> Iterator[StateKey[Any]]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def get(self, key: StateKey[T], default: T) -> T:
        """The value of ``key``, or ``default`` when none was published."""
        return self[key] if key in self._values else default


def _check_key(key: object) -> None:
    if not isinstance(key, StateKey):
        raise TypeError(f"Extras keys are trainbus.StateKey objects, got {key!r}")


class TrainingState(pydantic.BaseModel):
    """Everything the loop knows, validated on every write from a callback.

    A callback reads fields as ``self.<name>`` and writes them as
    ``self.learn.<name> = value``; a value of the wrong type raises a pydantic
    ``ValidationError`` naming the field. The loop's own writes skip validation: they
    are trusted and sit on the hot path. Fields that have no value yet (``loss`` before
    the first ``after_loss``, any batch field after ``fit`` returned) raise
    :class:`UnsetFieldError` saying when they become available.
    """

    model_config: ClassVar[pydantic.ConfigDict] = pydantic.ConfigDict(
        arbitrary_types_allowed=True, validate_assignment=True, strict=True, extra="forbid"
    )

    model: nn.Module
    loss_func: Callable[..., torch.Tensor]
    opt_func: Callable[..., torch.optim.Optimizer]
    opt: torch.optim.Optimizer
    # The loop's own fields (LOOP_OWNED_FIELDS): read-only properties to type checkers,
    # refused at run time by __setattr__; the loop writes them with set_trusted.
    if TYPE_CHECKING:

        @property
        def dls(self) -> DataLoaders: ...
        @property
        def cbs(self) -> tuple[Any, ...]: ...
        @property
        def dl(self) -> BatchSource: ...
        @property
        def n_epoch(self) -> int: ...
        @property
        def epoch(self) -> int: ...
        @property
        def n_iter(self) -> int: ...
        @property
        def iter(self) -> int: ...
    else:
        dls: DataLoaders
        cbs: tuple[Any, ...] = ()
        dl: BatchSource = pydantic.Field(default=_UNSET)
        n_epoch: int = 0
        epoch: int = 0
        n_iter: int = 0
        iter: int = 0
    xb: tuple[torch.Tensor, ...] = pydantic.Field(default=_UNSET)
    yb: tuple[torch.Tensor, ...] = pydantic.Field(default=_UNSET)
    pred: torch.Tensor = pydantic.Field(default=_UNSET)
    loss: torch.Tensor = pydantic.Field(default=_UNSET)
    train_iter: int = 0
    pct_train: float = 0.0
    training: bool = False
    smooth_loss: torch.Tensor = pydantic.Field(default=_UNSET)
    extras: Extras = pydantic.Field(default_factory=Extras)

    # Fields computed when read (Recorder's smooth_loss), so that a value nobody reads
    # costs no tensor work per batch.
    _providers: dict[str, Callable[[], object]] = pydantic.PrivateAttr(default_factory=dict)

    # vars(self), not self.__dict__: pyright types a pydantic model's __dict__ as a
    # read-only mappingproxy (pyright#11548), though it is the instance's dict.
    def model_post_init(self, context: Any, /) -> None:
        for name in _AVAILABLE_FROM:
            vars(self).pop(name, None)

    @property
    def callbacks(self) -> tuple[Callback, ...]:
        """``cbs`` with its element type (pydantic stores it untyped to avoid a cycle)."""
        return self.cbs

    @property
    def x(self) -> torch.Tensor:
        """``xb[0]``; defined when the batch has exactly one input."""
        return _single(self.xb, "x", "xb")

    @property
    def y(self) -> torch.Tensor:
        """``yb[0]``; defined when the batch has exactly one target."""
        return _single(self.yb, "y", "yb")

    def set_trusted(self, name: FieldName, value: object) -> None:
        """Write a field without validation: for the loop and built-in callbacks only."""
        vars(self)[name] = value

    def provide(self, name: FieldName, provider: Callable[[], object] | None) -> None:
        """Compute ``name`` with ``provider()`` at every read while it has no value.

        The state keeps nothing, so nothing goes stale: a provider that is costly to call
        keeps its own result until its inputs change. ``None`` removes the provider.
        """
        if provider is None:
            self._providers.pop(name, None)
        else:
            self._providers[name] = provider
        vars(self).pop(name, None)

    def invalidate(self, name: FieldName) -> None:
        """Forget the value of ``name``: it is unset again, or computed by its provider."""
        vars(self).pop(name, None)

    @contextlib.contextmanager
    def counters_kept(self) -> Generator[None, None, None]:
        """Put the loop counters (:data:`LOOP_COUNTERS`) back as they were when the block
        ends, however it ends: for runs that are not the fit's own (lr_find, validate)."""
        values = vars(self)
        saved = {name: values[name] for name in LOOP_COUNTERS if name in values}
        try:
            yield
        finally:
            for name in LOOP_COUNTERS:
                if name in saved:
                    values[name] = saved[name]
                else:
                    values.pop(name, None)

    def drop_batch(self) -> None:
        """Forget the last batch's tensors (inputs, targets, prediction, loss)."""
        for name in BATCH_FIELDS:
            vars(self).pop(name, None)

    @property
    def trusted_values(self) -> dict[str, Any]:
        """The fields that have a value, by name, for the loop and built-in callbacks only.

        It is the instance's own dict and is never replaced, so the per-batch code fetches
        it once and then reads and writes fields by subscript (a fraction of the cost of an
        attribute read on a pydantic model), unvalidated like :meth:`set_trusted`.
        Validated writes (``learn.loss = ...``) land in it too.
        """
        return vars(self)

    if not TYPE_CHECKING:  # invisible to type checkers: an unknown name stays a type error

        def __setattr__(self, name: str, value: Any) -> None:
            if name in LOOP_OWNED_FIELDS:
                raise AttributeError(state_write_error("TrainingState", name))
            # pydantic validates an assignment into a copy of __dict__ and installs the
            # copy; the loop holds the original (see `trusted_values`), so the validated value
            # is moved into it and the original put back. A failed validation changes
            # neither.
            values = vars(self)
            super().__setattr__(name, value)
            validated = vars(self)
            if validated is not values:
                values[name] = validated[name]
                object.__setattr__(self, "__dict__", values)

        def __getattr__(self, name: str) -> Any:
            if name in _AVAILABLE_FROM:
                provider = self._providers.get(name)
                if provider is not None:
                    return provider()
                raise UnsetFieldError(
                    f"TrainingState.{name} has no value here: it is set from "
                    f"{_AVAILABLE_FROM[name]} on"
                    + (" while a batch is in flight" if name in BATCH_FIELDS else "")
                )
            return super().__getattr__(name)

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        return [(k, v) for k, v in super().__repr_args__() if k in vars(self)]


def _single(batch: tuple[torch.Tensor, ...], name: str, field: str) -> torch.Tensor:
    if len(batch) != 1:
        raise ValueError(
            f"{name} is defined for batches with one element, but {field} has {len(batch)}: "
            f"read {field} instead"
        )
    return batch[0]


STATE_FIELDS: Final = frozenset(TrainingState.model_fields) | {"x", "y"}

# Fields a callback may assign through the learner (validated): all but the loop's own.
WRITABLE_FIELDS: Final = STATE_FIELDS - LOOP_OWNED_FIELDS - {"extras"}


def state_write_error(owner: str, name: str) -> str:
    if name in LOOP_OWNED_FIELDS:
        return f"{owner}.{name} is owned by the training loop; callbacks can read it, not write it"
    if name == "extras":
        return f"{owner}.extras is a mapping: publish with self.learn.extras[KEY] = value"
    if name == "learn":
        return f"{owner}.learn is set by Learner.add_cb; it cannot be assigned"
    return (
        f"{owner}.{name} is a read-only view of the learner's state: "
        f"write self.learn.{name} = ... to change it"
    )
