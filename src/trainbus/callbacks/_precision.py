"""Mixed precision: autocast around the forward pass and the loss, loss scaling for float16."""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from typing import Any, Final

import torch
from torch import nn
from typing_extensions import override

from .._callback import Callback

__all__ = ["MixedPrecision"]

_DTYPES: Final = (torch.bfloat16, torch.float16)


class MixedPrecision(Callback):
    """Runs the forward pass and the loss under ``torch.autocast``, scaling float16 losses.

    Autocast is entered at ``begin_batch`` and exited at ``after_loss``, so the backward
    pass, the step and every other hook run outside it; a batch or fit ended by a signal
    or an exception exits it too. Validation batches run under autocast as well.

    With a :class:`torch.amp.GradScaler` (float16 on CUDA gets one by default):

    * The loss *value* is never changed, so the Recorder and every callback see the
      unscaled loss. In ``after_loss`` a hook on the loss tensor multiplies the gradient
      that flows out of it by the scale: the same gradients, bit for bit, as
      ``scaler.scale(loss).backward()``. So that penalties count, it runs late in
      ``after_loss`` (``order = 10``); a callback that replaces ``learn.loss`` after it
      is reported as an error in ``after_backward``.
    * In ``after_backward`` (before :class:`GradientClip`, which thus clips true
      gradients) it unscales the gradients and calls ``scaler.update()``. When a gradient
      is inf or NaN the step is skipped as ``scaler.step`` would skip it: the gradients
      are set to ``None``, which every ``torch.optim`` optimizer documents as "skip this
      parameter". Unlike a ``CancelBatchException``, this keeps the batch recorded and
      ``after_step``/``after_batch`` on their usual cadence. :attr:`skipped_steps` counts
      the skipped steps. Checking costs one device-to-host read per step, as in
      ``scaler.step``.

    Args:
        dtype: ``torch.bfloat16`` (default; CPU and CUDA) or ``torch.float16`` (CUDA).
        device_type: Autocast device type (``"cpu"``, ``"cuda"``); ``None`` takes the
            device of the model's parameters at ``begin_fit``.
        scaler: The loss scaler. ``None``: a new ``GradScaler`` for float16, none for
            bfloat16 (whose range equals float32's, so gradients do not underflow). A
            scaler given here or created here is kept across fits, with its scale.

    Raises:
        ValueError: ``dtype`` is neither bfloat16 nor float16, float16 is asked for on
            CPU, or ``device_type`` has no autocast (at ``begin_fit`` when inferred).
    """

    # Late among the callbacks free to run: the loss it scales must be the final one.
    order = 10

    def __init__(
        self,
        dtype: torch.dtype = torch.bfloat16,
        device_type: str | None = None,
        *,
        scaler: torch.amp.GradScaler | None = None,
    ) -> None:
        if dtype not in _DTYPES:
            raise ValueError(
                f"MixedPrecision dtype must be torch.bfloat16 or torch.float16, got {dtype!r}"
            )
        if device_type is not None:
            _check_device_type(device_type, dtype)
        self.dtype: Final = dtype
        self.device_type = device_type
        self.scaler = scaler
        self.skipped_steps: int = 0
        self._active_device = "cpu"
        self._autocast: torch.autocast | None = None
        self._scaled_loss: torch.Tensor | None = None

    @override
    def begin_fit(self) -> None:
        device = self._resolve_device()
        if self.scaler is None and self.dtype == torch.float16:
            self.scaler = torch.amp.GradScaler(device)
        self.skipped_steps = 0

    @override
    def begin_validate(self) -> None:
        # Also the start of learn.validate(), get_preds() and predict(), which have no
        # begin_fit: autocast for the device the model is on now.
        self._resolve_device()

    def _resolve_device(self) -> str:
        """The autocast device type: ``device_type``, or that of the model's parameters."""
        model_device = _device_type_of(self.model)
        device = self.device_type if self.device_type is not None else model_device
        if model_device is not None and device != model_device:
            raise ValueError(
                f"MixedPrecision(device_type={device!r}) does not match the model, whose "
                f"parameters are on {model_device!r}"
            )
        device = device or "cpu"
        _check_device_type(device, self.dtype)
        self._active_device = device
        return device

    @override
    def state_dict(self) -> dict[str, Any]:
        scaler = self.scaler
        scaler_state = scaler.state_dict() if scaler is not None and scaler.is_enabled() else {}
        return {"skipped_steps": self.skipped_steps, "scaler": scaler_state}

    @override
    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.skipped_steps = int(state["skipped_steps"])
        if state["scaler"] and self.scaler is not None:
            self.scaler.load_state_dict(state["scaler"])

    @override
    def begin_batch(self) -> None:
        self._exit_autocast()
        context = torch.autocast(self._active_device, dtype=self.dtype)
        context.__enter__()
        self._autocast = context

    @override
    def after_loss(self) -> None:
        self._exit_autocast()
        scaler, loss = self.scaler, self.loss
        if scaler is None or not scaler.is_enabled() or not self.training:
            return
        if loss.requires_grad:
            # Scale the gradient, not the value: the recorded loss stays the true loss.
            on_gradient(loss, scaler.scale)
            self._scaled_loss = loss

    @override
    def after_backward(self) -> None:
        scaled, self._scaled_loss = self._scaled_loss, None
        scaler = self.scaler
        if scaled is None or scaler is None:
            return
        if self.loss is not scaled:
            raise RuntimeError(
                "learn.loss was replaced after MixedPrecision scaled its gradient in "
                "after_loss, so part of the gradient is not scaled: make the callback that "
                "changes the loss run before it (run_before = MixedPrecision)"
            )
        opt = self.opt
        scaler.unscale_(opt)
        finite = _grads_finite(opt)
        scaler.update()  # reads the inf check recorded by unscale_
        if not finite:
            opt.zero_grad(set_to_none=True)  # torch.optim skips parameters without grad
            self.skipped_steps += 1

    @override
    def after_cancel_batch(self) -> None:
        self._release()

    @override
    def after_cancel_train(self) -> None:
        self._release()

    @override
    def after_cancel_valid(self) -> None:
        self._release()

    @override
    def after_cancel_epoch(self) -> None:
        self._release()

    @override
    def after_cancel_fit(self) -> None:
        self._release()

    @override
    def teardown(self) -> None:
        self._release()

    @property
    def autocast_active(self) -> bool:
        """Whether this callback's autocast context is entered (only inside a batch)."""
        return self._autocast is not None

    def _release(self) -> None:
        # A signal for an outer stage skips after_loss: leave no autocast behind.
        self._exit_autocast()
        self._scaled_loss = None

    def _exit_autocast(self) -> None:
        context, self._autocast = self._autocast, None
        if context is not None:
            context.__exit__(None, None, None)


def on_gradient(loss: torch.Tensor, hook: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Make ``hook`` transform the gradient that flows out of ``loss`` in its backward."""
    loss.register_hook(hook)  # pyright: ignore[reportUnknownMemberType]


def _check_device_type(device_type: str, dtype: torch.dtype) -> None:
    try:
        available = torch.amp.is_autocast_available(device_type)
    except RuntimeError:  # not a device type torch knows at all
        available = False
    if not available:
        raise ValueError(f"MixedPrecision: torch has no autocast for device type {device_type!r}")
    if device_type == "cpu" and dtype == torch.float16:
        raise ValueError(
            "MixedPrecision(dtype=torch.float16) needs a CUDA device: float16 training with "
            "loss scaling is not supported on CPU here; use dtype=torch.bfloat16 on CPU"
        )


def _device_type_of(model: nn.Module) -> str | None:
    first = next(itertools.chain(model.parameters(), model.buffers()), None)
    return None if first is None else first.device.type


def _grads_finite(opt: torch.optim.Optimizer) -> bool:
    grads: list[torch.Tensor] = []
    for group in opt.param_groups:
        params: list[torch.Tensor] = group["params"]
        grads.extend(p.grad for p in params if p.grad is not None)
    if not grads:
        return True
    # The max-abs norm is inf or NaN exactly when some element is: one fused reduction.
    return math.isfinite(torch.nn.utils.get_total_norm(grads, math.inf).item())
