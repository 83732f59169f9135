"""Attention over the encoder's outputs: Bahdanau's additive score and Luong's dot and general scores.
Padding positions get weight exactly 0 (their scores are -inf before the softmax)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

KINDS = ("none", "additive", "dot", "general")


class Attention(nn.Module):
    """score(q, k_s) for a decoder query q (B, Q) and encoder outputs k_s (B, S, M):

    additive (Bahdanau): v^T tanh(W q + U k_s); dot (Luong): q . k_s (needs Q == M);
    general (Luong): q . W k_s. The context is sum_s softmax(score)_s k_s over the valid positions.
    """

    def __init__(self, kind: str, query_size: int, memory_size: int, size: int | None = None):
        super().__init__()
        if kind not in KINDS[1:]:
            raise ValueError(f"attention must be one of {', '.join(KINDS[1:])}; got {kind!r}")
        if kind == "dot" and query_size != memory_size:
            raise ValueError(f"dot attention needs the decoder state ({query_size}) and the encoder outputs "
                             f"({memory_size}) to have one size; use 'general', which projects them")
        self.kind = kind
        if kind == "additive":
            size = size or query_size
            self.query = nn.Linear(query_size, size, bias=False)
            self.key = nn.Linear(memory_size, size)
            self.v = nn.Linear(size, 1, bias=False)
        elif kind == "general":
            self.key = nn.Linear(memory_size, query_size, bias=False)

    def keys(self, memory: Tensor) -> Tensor:
        """The part of the score that depends on the encoder only, computed once per sentence: (B, S, K)."""
        return memory if self.kind == "dot" else self.key(memory)

    def forward(self, query: Tensor, keys: Tensor, memory: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """query (B, Q), keys (B, S, K) from keys(), memory (B, S, M), mask (B, S) True where valid ->
        (context (B, M), weights (B, S))."""
        if self.kind == "additive":
            scores = self.v(torch.tanh(keys + self.query(query).unsqueeze(1))).squeeze(2)   # (B, S)
        else:
            scores = torch.bmm(keys, query.unsqueeze(2)).squeeze(2)                           # (B, S)
        weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        return torch.bmm(weights.unsqueeze(1), memory).squeeze(1), weights
