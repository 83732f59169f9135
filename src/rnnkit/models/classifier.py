"""Many-to-one: a recurrent layer reads a sequence, a linear layer classifies a readout of its outputs."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .recurrent import rnn_output_size

READOUTS = ("last", "final", "mean", "max")


def readout(output: Tensor, how: str, lengths: Tensor | None = None, directions: int = 1) -> Tensor:
    """Summarise outputs (B, T, D*F) as (B, D*F), looking only at each sequence's first `lengths` steps.

    'last': the output at the last valid step. In a bidirectional layer that step holds the forward
    direction's final state beside the backward direction's FIRST output (it has read one step
    only), as the notes describe. 'final': each direction's final state, i.e. the forward half at
    the last valid step and the backward half at step 0 (the same as 'last' in one direction).
    'mean' and 'max' pool over the valid steps. A sequence of length 0 reads as zeros.
    """
    B, T, _ = output.shape
    if how == "final" and directions == 2:
        forward, backward = output.chunk(2, dim=-1)
        first = backward[:, 0] if lengths is None else backward[:, 0] * (lengths > 0).to(output.device).unsqueeze(1)
        return torch.cat([readout(forward, "last", lengths), first], dim=-1)
    if how == "final":
        how = "last"
    if lengths is None:
        if how == "last":
            return output[:, -1]
        return output.mean(1) if how == "mean" else output.amax(1)
    lengths = lengths.to(output.device)
    if how == "last":
        last = (lengths - 1).clamp(min=0)
        return output[torch.arange(B, device=output.device), last] * (lengths > 0).unsqueeze(1)
    valid = (torch.arange(T, device=output.device) < lengths.unsqueeze(1)).unsqueeze(2)  # (B, T, 1)
    if how == "mean":
        return (output * valid).sum(1) / lengths.clamp(min=1).unsqueeze(1)
    if how == "max":
        pooled = output.masked_fill(~valid, float("-inf")).amax(1)
        return pooled.masked_fill((lengths == 0).unsqueeze(1), 0.0)
    raise ValueError(f"readout must be one of {', '.join(READOUTS)}; got {how!r}")


class ManyToOne(nn.Module):
    """(B, T, I) -> (B, K): rnn -> readout -> dropout -> linear; subclasses name the loss.

    `inputs` is a (B, T, I) tensor or a pair (x, lengths) for padded batches.
    """

    def __init__(self, rnn: nn.Module, outputs: int, how: str = "last", dropout: float = 0.0):
        super().__init__()
        if how not in READOUTS:
            raise ValueError(f"readout must be one of {', '.join(READOUTS)}; got {how!r}")
        self.rnn, self.how = rnn, how
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(rnn_output_size(rnn), outputs)

    def forward(self, inputs, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        x, lengths = inputs if isinstance(inputs, (tuple, list)) else (inputs, None)
        output, _ = self.rnn(x, lengths=lengths)                 # (B, T, D*H)
        features = readout(output, self.how, lengths, 2 if self.rnn.bidirectional else 1)  # (B, D*H)
        predictions = self.head(self.drop(features))  # (B, K)
        return predictions, None if targets is None else self.loss(predictions, targets)

    def loss(self, predictions: Tensor, targets: Tensor) -> Tensor:
        raise NotImplementedError


class SequenceClassifier(ManyToOne):
    """Many-to-one classification: logits (B, C), cross-entropy loss."""

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits, targets)
