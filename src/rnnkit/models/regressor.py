"""Many-to-one regression: a recurrent layer reads a sequence, an identity (linear) output layer predicts
real values from a readout of its outputs, with the mean squared error (the notes' regression setup)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .classifier import READOUTS, readout
from .recurrent import rnn_output_size


class SequenceRegressor(nn.Module):
    """(B, T, I) -> predictions (B, K): rnn -> readout -> dropout -> linear (no squashing); MSE loss."""

    def __init__(self, rnn: nn.Module, outputs: int = 1, how: str = "last", dropout: float = 0.0):
        super().__init__()
        if how not in READOUTS:
            raise ValueError(f"readout must be one of {', '.join(READOUTS)}; got {how!r}")
        self.rnn, self.how = rnn, how
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(rnn_output_size(rnn), outputs)

    def forward(self, inputs, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        x, lengths = inputs if isinstance(inputs, (tuple, list)) else (inputs, None)
        output, _ = self.rnn(x, lengths=lengths)                                 # (B, T, D*H)
        features = readout(output, self.how, lengths, 2 if self.rnn.bidirectional else 1)
        predictions = self.head(self.drop(features))                              # (B, K)
        loss = None if targets is None else F.mse_loss(predictions, targets.view_as(predictions))
        return predictions, loss
