"""RNNRegularizer on both model layouts: plain tensors (fastbook) and per-layer lists."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from typing_extensions import override

from trainbus import Callback, DataLoaders, Learner
from trainbus.callbacks import ModelResetter, RNNRegularizer

BS, SEQ, HIDDEN = 3, 5, 4


class TwoLayerRNN(nn.Module):
    """Two "layers" of activations, batch first; returns tensors or per-layer lists."""

    def __init__(self, layout: str) -> None:
        super().__init__()
        self.layout = layout
        self.first = nn.Linear(2, HIDDEN)
        self.second = nn.Linear(HIDDEN, HIDDEN)
        self.head = nn.Linear(HIDDEN, 1)

    def layers(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        raw1 = torch.tanh(self.first(x))
        raw2 = torch.tanh(self.second(raw1))
        return raw1, raw2, raw2 * 0.5  # dropped: a deterministic stand-in for dropout

    def reset(self) -> None:
        """Nothing to reset: ModelResetter calls it."""

    @override
    def forward(self, x: torch.Tensor) -> tuple[object, object, object]:
        raw1, raw2, dropped2 = self.layers(x)
        out = self.head(dropped2[:, -1])
        if self.layout == "tensors":  # fastbook's LMModel7: the last layer's tensors
            return out, raw2, dropped2
        return out, [raw1, raw2], (raw1 * 0.5, dropped2)  # AWD-LSTM: one per layer


class Capture(Callback):
    run_after = RNNRegularizer

    def __init__(self) -> None:
        self.rows: list[tuple[float, float]] = []

    @override
    def after_loss(self) -> None:
        if not self.training:
            return
        model = self.model
        assert isinstance(model, TwoLayerRNN)
        with torch.no_grad():
            _, raw, dropped = model.layers(self.x)
            out = model.head(dropped[:, -1])
            expected = nn.functional.mse_loss(out, self.y)
            expected += 2.0 * dropped.pow(2).mean()  # AR over every sample and time step
            expected += 1.0 * (raw[:, 1:] - raw[:, :-1]).pow(2).mean()  # TAR over time
        self.rows.append((self.loss.item(), expected.item()))


@pytest.mark.parametrize("layout", ["tensors", "lists"])
def test_ar_and_tar_follow_the_formula_for_both_layouts(layout: str) -> None:
    # Before: with plain tensors, out[-1] took the last sample (AR of one sample) and TAR
    # differenced hidden units (37.69 instead of 28.65 on a probe).
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(2 * BS, SEQ, 2, generator=generator)
    y = torch.randn(2 * BS, 1, generator=generator)
    dls = DataLoaders.from_tensors((x, y), (x, y), bs=BS, shuffle=False)
    capture = Capture()
    cbs = [ModelResetter(), RNNRegularizer(alpha=2.0, beta=1.0), capture]
    model = TwoLayerRNN(layout)
    learn = Learner(model, dls, nn.functional.mse_loss, lr=0.01, cbs=cbs)
    learn.fit(1)
    assert len(capture.rows) == 2
    for got, expected in capture.rows:
        assert got == pytest.approx(expected, rel=1e-6)


class Wrong(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(2, 1)

    @override
    def forward(self, x: torch.Tensor) -> tuple[object, object, object]:
        return self.lin(x[:, -1]), "raw", []


def test_a_wrong_layout_is_named() -> None:
    x, y = torch.randn(4, SEQ, 2), torch.randn(4, 1)
    dls = DataLoaders.from_tensors((x, y), (x, y), bs=2)
    learn = Learner(Wrong(), dls, nn.functional.mse_loss, cbs=[RNNRegularizer(1.0, 1.0)])
    with pytest.raises(TypeError, match=r"raw output \(second item\) must be a tensor"):
        learn.fit(1)
