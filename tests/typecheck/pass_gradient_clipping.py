"""A gradient-clipping callback: change the gradients between backward and step."""

from __future__ import annotations

import torch
from torch import nn
from typing_extensions import override

from trainbus import Callback, DataLoaders, Learner


class GradientClipping(Callback):
    """Clips the global gradient norm to ``max_norm`` before every optimizer step.

    Args:
        max_norm: The largest norm the gradients keep.
    """

    def __init__(self, max_norm: float = 1.0) -> None:
        self.max_norm = max_norm
        self.norms: list[float] = []

    @override
    def after_backward(self) -> None:
        norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.max_norm)
        self.norms.append(norm.item())


def main() -> None:
    x = torch.randn(16, 2)
    y = 100 * x.sum(dim=1, keepdim=True)
    dls = DataLoaders.from_tensors([x, y], bs=8, seed=0)
    clip = GradientClipping(max_norm=0.5)
    learn = Learner(nn.Linear(2, 1), dls, nn.functional.mse_loss, cbs=[clip])
    learn.fit(1)
    assert len(clip.norms) == 2
    assert min(clip.norms) > 0.5  # the norms before clipping: every step was clipped


if __name__ == "__main__":
    main()
