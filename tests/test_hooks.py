"""What the type checkers reject is also rejected at run time, with a clear error."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from conftest import tiny_learner
from trainbus import Callback, EventBus, HookError, StateKey, Subscriber
from trainbus.callbacks import Recorder

SCALE = StateKey("scale", float)
MUST = "must be a Callback class or a collection of them, but holds"


def make_callback(**attributes: Any) -> Callback:
    cls: type[Callback] = type("Odd", (Callback,), dict(attributes))
    return cls()


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ({"run_before": 3}, f"Odd.run_before {MUST} 3"),
        ({"run_after": "Recorder"}, f"Odd.run_after {MUST} 'Recorder'"),
        ({"run_after": (Recorder, int)}, f"Odd.run_after {MUST} <class 'int'>"),
        ({"order": 0.5}, "Odd.order must be an int, got 0.5"),
        ({"order": True}, "Odd.order must be an int, got True"),
    ],
)  # fmt: skip
def test_bad_ordering_declarations_are_rejected_at_registration(
    attributes: dict[str, Any], message: str
) -> None:
    learn = tiny_learner()
    before = learn.state.cbs
    with pytest.raises(HookError) as error:
        learn.add_cb(make_callback(**attributes))
    assert str(error.value) == message
    assert learn.state.cbs == before


def test_good_ordering_declarations_are_accepted() -> None:
    class After(Callback):
        run_after: ClassVar[Any] = [Recorder]
        order = -3

    class Before(Subscriber):
        run_before = After

    bus = EventBus([After(), Before()])
    assert [type(s) for s in bus.subscribers] == [Before, After]


def test_extras_keys_must_be_state_keys() -> None:
    learn = tiny_learner()
    extras: Any = learn.extras
    with pytest.raises(TypeError, match=r"Extras keys are trainbus.StateKey objects, got 'scale'"):
        extras["scale"] = 1.0
    with pytest.raises(TypeError, match=r"Extras keys are trainbus.StateKey objects, got 'scale'"):
        extras["scale"]


def test_an_int_is_a_float_for_state_keys_as_for_type_checkers() -> None:
    learn = tiny_learner()
    learn.extras[SCALE] = 2
    assert learn.extras[SCALE] == 2.0
    assert type(learn.extras[SCALE]) is float
    untyped: Any = learn.extras
    with pytest.raises(TypeError, match=r"StateKey\('scale', float\) holds float, got bool"):
        untyped[SCALE] = True


def test_assigning_extras_on_a_callback_says_how_to_publish() -> None:
    cb: Any = Callback()
    with pytest.raises(AttributeError) as error:
        cb.extras = {}
    assert str(error.value) == (
        "Callback.extras is a mapping: publish with self.learn.extras[KEY] = value"
    )
