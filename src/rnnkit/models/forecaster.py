"""Multi-step forecasting: a recurrent layer reads a window of the past, a linear layer forecasts the next H
values of the target at once; optionally as a correction to a naive forecast read from the window."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from .classifier import ManyToOne


class Forecaster(ManyToOne):
    """(B, W, I) -> forecasts (B, H) of input column 0 (the target), with an identity output and MSE loss,
    or with `bce`, a sigmoid output and binary cross-entropy (for a target scaled to [0, 1]).

    `anchor` (H window indices, or None): the head's output is added to x[:, anchor[h], 0], so that the
    model learns a correction to a naive forecast (the last value: all W - 1; the value a season of m
    steps back: W + h - m*ceil((h + 1)/m)), and starts out as that naive forecast.

    `targets` is (B, H), or (B, H, 1 + R): the truth, then R reference forecasts that travel with it
    so that the metrics can score them on the same examples; the loss reads the truth only.
    """

    def __init__(self, rnn, horizon: int, anchor: list[int] | None = None, bce: bool = False, dropout: float = 0.0):
        super().__init__(rnn, horizon, "final", dropout)  # each direction's final state, if bidirectional
        if anchor is not None and bce:
            raise ValueError("a sigmoid output forecasts a level in [0, 1], not a correction: no anchor with bce")
        if anchor is not None and len(anchor) != horizon:
            raise ValueError(f"anchor needs one window index per step ahead ({horizon}); got {len(anchor)}")
        self.bce = bce
        self.register_buffer("anchor", None if anchor is None else torch.tensor(anchor), persistent=False)

    def forward(self, inputs: Tensor, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        out, _ = super().forward(inputs)  # (B, H)
        if self.anchor is not None:
            out = out + inputs[:, self.anchor, 0]  # (B, H)
        loss = None
        if targets is not None:
            truth = targets[..., 0] if targets.dim() == 3 else targets  # (B, H)
            loss = (F.binary_cross_entropy_with_logits(out, truth.clamp(0, 1)) if self.bce
                    else F.mse_loss(out, truth))
        return (torch.sigmoid(out) if self.bce else out), loss
