"""Where in the loop an ordinary exception was raised, as a PEP 678 note.

The bus notes the callback and event of an error raised by a subscriber; an error from
the data (a dataset raising at batch 5) or from the batch body (the model, the loss
function, backward, the optimizer step) gets a note of the same form naming the phase,
the epoch and the batch index.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._bus import add_origin_note
from ._signals import CancelException

__all__ = ["note_loop_failure"]


def note_loop_failure(
    error: BaseException, values: Mapping[str, Any], *, training: bool, from_data: bool
) -> None:
    """Note on ``error`` where it was raised, unless a subscriber's note says so already.

    Args:
        error: What left the batches of a phase.
        values: The state's fields (``TrainingState.trusted_values``).
        training: The training phase (else validation).
        from_data: Raised while the next batch was drawn from the loader (else by the
            batch body).
    """
    if isinstance(error, CancelException):
        return
    phase = "training" if training else "validation"
    epoch = values.get("epoch", 0)
    if from_data:
        # `iter` is the last batch put into the state; none yet in this phase: no `xb`.
        index = values.get("iter", 0) + 1 if "xb" in values else 0
        where = f"the {phase} data while loading batch {index} of epoch {epoch}"
    else:
        what = "model, loss_func, backward or optimizer step" if training else "model or loss_func"
        where = f"the {what} of {phase} batch {values.get('iter', 0)}, epoch {epoch}"
    add_origin_note(error, where)
