"""Many-to-one regression: a recurrent layer reads a sequence, an identity (linear) output layer predicts
real values from a readout of its outputs, with the mean squared error (the notes' regression setup)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from .classifier import ManyToOne


class SequenceRegressor(ManyToOne):
    """(B, T, I) -> predictions (B, K) with no squashing; MSE loss against targets of K values each."""

    def __init__(self, rnn, outputs: int = 1, how: str = "last", dropout: float = 0.0):
        super().__init__(rnn, outputs, how, dropout)

    def loss(self, predictions: Tensor, targets: Tensor) -> Tensor:
        return F.mse_loss(predictions, targets.view_as(predictions))
