"""Callbacks: subscribers with typed, read-only shortcuts to the learner's state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Final

from ._hooks import Subscriber
from ._state import STATE_FIELDS, state_write_error
from ._views import StateView

if TYPE_CHECKING:
    from ._learner import Learner
    from ._state import TrainingState

__all__ = ["Callback", "state_write_error"]

# Names a callback cannot assign on itself: the state's (read-only here) and its own.
_NOT_ASSIGNABLE: Final = STATE_FIELDS | {"learn", "extras"}


class Callback(Subscriber, StateView):
    """Base class of callbacks: override the hooks (methods named after events) you need.

    Inside a hook, ``self.<field>`` reads the learner's state (``self.loss``,
    ``self.epoch``) with its type, and ``self.learn.<field> = value`` writes it, validated.
    ``self.<field> = value`` is an error: the shortcut is read-only, and a silent new
    attribute on the callback would hide the bug. ``__init__`` need not call
    ``super().__init__()``.

    Example:
        >>> class ClampLoss(Callback):
        ...     def after_loss(self) -> None:
        ...         self.learn.loss = self.loss.clamp(max=10.0)
    """

    run_in_auxiliary: ClassVar[bool] = True
    """Whether this callback acts during auxiliary runs (``lr_find``, ``validate``,
    ``get_preds``, ``predict``). Trackers, loggers, schedulers and checkpoint writers set
    it ``False``: they are detached for such a run, so it cannot stop early, log, write a
    checkpoint or step a schedule; they are put back in their places when it ends."""
    rank_zero_only: ClassVar[bool] = False
    """Whether this callback runs on rank 0 only when training on many processes
    (progress bars, loggers, checkpoint writers): on other ranks its hooks never run,
    though it stays registered, and a resumed fit does not restore its state there.

    A rank-zero-only callback whose work needs every rank (``Checkpoint`` gathers every
    rank's training state into the file it writes) has a *stand-in*: a small callback
    that the other ranks run in its place, ordered as it is, for the fit, and that only
    takes part in its collectives (it sends this rank's state at each checkpoint)."""

    _learner: Learner | None = None

    @property
    def learn(self) -> Learner:
        """The Learner this callback is attached to."""
        learner = self._learner
        if learner is None:
            raise RuntimeError(
                f"{type(self).__qualname__} is not attached to a Learner: pass it in "
                "Learner(cbs=[...]), learn.add_cb(...) or learn.fit(..., cbs=[...])"
            )
        return learner

    def set_learner(self, learn: Learner | None) -> None:
        """Attach to ``learn`` (``None``: detach). Called by ``Learner.add_cb``/``remove_cb``."""
        if learn is not None and self._learner is not None and self._learner is not learn:
            raise ValueError(
                f"{type(self).__qualname__} is attached to another Learner already; "
                "remove it there first"
            )
        object.__setattr__(self, "_learner", learn)

    def _state(self) -> TrainingState:
        return self.learn.state

    def state_dict(self) -> dict[str, Any]:
        """What this callback must keep for a fit to resume exactly from a checkpoint.

        Default: nothing (``{}``). A callback whose attributes change during a fit (counters,
        records, a best value) returns them here, as tensors, numbers, strings, and lists,
        tuples and dicts of those (what ``torch.load(weights_only=True)`` reads back), and
        restores them in :meth:`load_state_dict`. On resume, the fit's ``begin_*`` events
        run first, then ``load_state_dict``: what ``begin_fit`` resets is overwritten.
        """
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned. Default: nothing to restore."""

    def _stand_in(self) -> Callback | None:
        """What ranks other than 0 run in the place of this rank-zero-only callback during
        a fit on many processes (``None``: nothing; see :attr:`rank_zero_only`).

        A new callback each fit, made at its start: it makes, at the same points, the
        collectives this callback makes, and keeps no state a checkpoint would hold.
        """
        return None

    if not TYPE_CHECKING:  # type checkers report these writes themselves

        def __setattr__(self, name: str, value: Any) -> None:
            if name in _NOT_ASSIGNABLE:
                raise AttributeError(state_write_error(type(self).__qualname__, name))
            object.__setattr__(self, name, value)
