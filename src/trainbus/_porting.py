"""Hook names of other training libraries, and the trainbus event that fires there.

A method named after another library's hook (``before_step``, ``on_train_batch_end``)
would never run on a trainbus callback, so registration rejects it and names the event
to write instead. The table is also what docs/porting.md shows.
"""

from __future__ import annotations

from typing import Final

__all__ = ["FOREIGN_HOOKS", "foreign_hook_hint"]

FOREIGN_HOOKS: Final[dict[str, tuple[str, str, str]]] = {
    # name: (library, trainbus event, what to know)
    # fastai (before_fit, before_epoch, ... are near misses of begin_fit, begin_epoch, ...:
    # the bus answers them with "did you mean")
    "before_loss": ("fastai", "after_pred", "after the forward pass, before the loss"),
    "before_backward": ("fastai", "after_loss", "after the loss, before backward"),
    "before_step": ("fastai", "after_backward", "after backward, before the optimizer step"),
    "after_cancel_step": (
        "fastai",
        "after_cancel_batch",
        "raise CancelBatchException in after_backward to skip the step",
    ),
    "after_cancel_validate": ("fastai", "after_cancel_valid", ""),
    "before_draw": ("fastai", "begin_batch", "change the batch there"),
    "after_create": ("fastai", "begin_fit", ""),
    # PyTorch Lightning
    "on_fit_start": ("Lightning", "begin_fit", ""),
    "on_fit_end": ("Lightning", "after_fit", ""),
    "on_train_start": ("Lightning", "begin_fit", ""),
    "on_train_end": ("Lightning and Keras", "after_fit", ""),
    "on_train_epoch_start": ("Lightning", "begin_train", "begin_epoch starts the whole epoch"),
    "on_train_epoch_end": ("Lightning", "after_train", "after_epoch ends the whole epoch"),
    "on_validation_start": ("Lightning", "begin_validate", ""),
    "on_validation_end": ("Lightning", "after_validate", ""),
    "on_validation_epoch_start": ("Lightning", "begin_validate", ""),
    "on_validation_epoch_end": ("Lightning", "after_validate", ""),
    "on_train_batch_start": ("Lightning", "begin_batch", "check self.training"),
    "on_train_batch_end": ("Lightning", "after_batch", "check self.training"),
    "on_validation_batch_start": ("Lightning", "begin_batch", "check not self.training"),
    "on_validation_batch_end": ("Lightning", "after_batch", "check not self.training"),
    "on_before_backward": ("Lightning", "after_loss", ""),
    "on_after_backward": ("Lightning", "after_backward", ""),
    "on_before_optimizer_step": ("Lightning", "after_backward", ""),
    "on_before_zero_grad": ("Lightning", "after_step", ""),
    # Keras (and older Lightning)
    "on_train_begin": ("Keras", "begin_fit", ""),
    "on_epoch_begin": ("Keras", "begin_epoch", ""),
    "on_epoch_start": ("Lightning", "begin_epoch", ""),
    "on_epoch_end": ("Keras", "after_epoch", ""),
    "on_batch_begin": ("Keras", "begin_batch", ""),
    "on_batch_start": ("Lightning", "begin_batch", ""),
    "on_batch_end": ("Keras", "after_batch", ""),
    "on_train_batch_begin": ("Keras", "begin_batch", "check self.training"),
    "on_test_begin": ("Keras", "begin_validate", ""),
    "on_test_end": ("Keras", "after_validate", ""),
    "on_test_batch_begin": ("Keras", "begin_batch", "check not self.training"),
    "on_test_batch_end": ("Keras", "after_batch", "check not self.training"),
}


def foreign_hook_hint(name: str) -> str | None:
    """For another library's hook name, what to write instead; ``None`` for other names."""
    entry = FOREIGN_HOOKS.get(name)
    if entry is None:
        return None
    library, event, note = entry
    return f"{name} is {library}'s hook name; trainbus calls it {event}" + (
        f" ({note})" if note else ""
    )
