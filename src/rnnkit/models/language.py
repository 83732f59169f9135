"""A character-level language model: embedding -> unidirectional RNN -> linear over the vocabulary, with
the recurrent state carried in and out, and sampling one character at a time from the carried state."""
from __future__ import annotations

from bisect import bisect_right
from itertools import accumulate
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .recurrent import rnn_output_size


class CharLM(nn.Module):
    """inputs (B, T) character ids, or a pair (ids, state) to continue from a carried state.

    forward returns ((logits (B, T, V), state), loss): loss is the mean cross-entropy in nats per
    character against targets (B, T), the next characters. The model is autoregressive, so its
    recurrent layer must be unidirectional.
    """

    def __init__(self, rnn: nn.Module, vocab_size: int, embedding: int, dropout: float = 0.0):
        super().__init__()
        if rnn.bidirectional:
            raise ValueError("a language model predicts the next character from the past only: "
                             "a bidirectional layer would read the answer (use a unidirectional one)")
        self.embed = nn.Embedding(vocab_size, embedding)
        self.rnn, self.drop = rnn, nn.Dropout(dropout)
        self.head = nn.Linear(rnn_output_size(rnn), vocab_size)

    def forward(self, inputs, targets: Tensor | None = None):
        ids, state = inputs if isinstance(inputs, (tuple, list)) else (inputs, None)
        output, state = self.rnn(self.drop(self.embed(ids)), state)   # (B, T, H)
        logits = self.head(self.drop(output))                          # (B, T, V)
        loss = None if targets is None else F.cross_entropy(logits.flatten(0, 1), targets.flatten())
        return (logits, state), loss

    def step(self, ids: Tensor, state=None):
        """One character per sequence: ids (B,) and the carried state -> (logits (B, V), state)."""
        x = self.embed(ids)                                            # (B, E)
        if self.training:
            x = self.drop(x)
        output, state = self.rnn.step(x, state)                        # (B, H)
        return self.head(self.drop(output) if self.training else output), state


@torch.no_grad()
def generate(model: CharLM, prime: Tensor, length: int, temperature: float = 1.0, top_k: int = 0,
             generator: torch.Generator | None = None) -> Iterator[int]:
    """Yield `length` sampled ids after reading `prime` (1-D ids, at least one) once.

    Each step feeds only the last sampled id with the carried state: the prefix is never re-run.
    temperature 0 is greedy; top_k > 0 samples among the k most likely ids only.
    """
    was_training = model.training
    model.eval()
    device = model.head.weight.device
    try:
        (logits, state), _ = model((prime.to(device).view(1, -1), None))
        last = logits[0, -1]                                            # (V,)
        ids = torch.arange(model.head.out_features, device=device)     # ids[i:i+1] is a view, not a new tensor
        for _ in range(length):
            if temperature == 0:
                next_id = int(last.argmax())
            else:
                last = last / temperature
                if 0 < top_k < last.numel():
                    cutoff = last.topk(top_k).values[-1]
                    last = last.masked_fill(last < cutoff, float("-inf"))
                next_id = _draw(last.softmax(-1).tolist(), torch.rand((), generator=generator).item())
            yield next_id
            logits, state = model.step(ids[next_id:next_id + 1], state)
            last = logits[0]
    finally:
        model.train(was_training)


def _draw(probs: list[float], u: float) -> int:
    """Inverse-CDF sampling of one index from `probs` with a uniform u in [0, 1); in Python, as for one
    draw from a few dozen classes it costs a third of torch.multinomial's call."""
    cumulative = list(accumulate(probs))
    return min(bisect_right(cumulative, u * cumulative[-1]), len(probs) - 1)
