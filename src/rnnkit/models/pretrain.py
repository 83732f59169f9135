"""Language-model pretraining of a text model's word embedding and recurrent layer on unlabelled sentences,
before it is trained on its labels (Dai & Le 2015, "Semi-supervised sequence learning"; Peters et al. 2018):
the forward direction's output at word t predicts word t+1, the backward direction's predicts word t-1. One
bidirectional layer reads each direction on its own, so neither half sees the word it predicts; a stack of
bidirectional layers mixes the directions between layers and cannot be pretrained this way.

The prediction head (an adaptive softmax, Grave et al. 2017, so a large vocabulary stays cheap) is thrown
away afterwards; the embedding and the recurrent layer keep what they learnt."""
from __future__ import annotations

import math
import time
from typing import Callable

import torch
from torch import Tensor, nn

from .recurrent import rnn_output_size

CUTOFFS = (2000, 10000)  # adaptive-softmax clusters: the most frequent words, the next ones, the rest


def pretrainable(rnn: nn.Module) -> bool:
    """Whether `rnn` can be pretrained as a language model: one direction, or one bidirectional layer."""
    return not (rnn.bidirectional and rnn.num_layers > 1)


class LanguageModelHead(nn.Module):
    """Next/previous-word prediction from a recurrent layer's outputs; the loss of a padded batch."""

    def __init__(self, rnn: nn.Module, num_words: int, dropout: float = 0.0):
        super().__init__()
        if not pretrainable(rnn):
            raise ValueError(f"a language model reads each direction on its own: a bidirectional stack of "
                             f"{rnn.num_layers} layers mixes them (pretrain one bidirectional layer)")
        self.directions = 2 if rnn.bidirectional else 1
        features = rnn_output_size(rnn) // self.directions
        cutoffs = [c for c in CUTOFFS if c < num_words - 1] or [max(1, num_words // 2)]
        self.drop = nn.Dropout(dropout)
        self.softmax = nn.AdaptiveLogSoftmaxWithLoss(features, num_words, cutoffs, div_value=4.0)

    def forward(self, output: Tensor, ids: Tensor, lengths: Tensor) -> Tensor:
        """Mean negative log-likelihood per predicted word; output (B, T, D*F), ids (B, T), lengths (B,)."""
        T = ids.shape[1]
        valid = torch.arange(T, device=ids.device) < lengths.to(ids.device).unsqueeze(1)  # (B, T)
        pairs = valid[:, :-1] & valid[:, 1:]  # (B, T-1): word t and word t+1 both exist
        halves = output.chunk(self.directions, dim=-1)
        features = [halves[0][:, :-1][pairs]]  # forward at t -> word t+1
        targets = [ids[:, 1:][pairs]]
        if self.directions == 2:
            features.append(halves[1][:, 1:][pairs])  # backward at t+1 -> word t
            targets.append(ids[:, :-1][pairs])
        return self.softmax(self.drop(torch.cat(features)), torch.cat(targets)).loss


def pretrain(embed: nn.Module, rnn: nn.Module, num_words: int, sentences: list[Tensor], *,
             epochs: int, batch_size: int, lr: float = 1e-3, clip_norm: float = 0.0, dropout: float = 0.0,
             seed: int = 0, log: Callable[[str], None] = print) -> list[float]:
    """Train `embed` (ids (B, T) -> (B, T, E)) and `rnn` (batch-first, called with `lengths=`) as
    a language model on `sentences` (1-D word-id tensors; those of fewer than 2 words are skipped) for
    `epochs` epochs with Adam. Returns each epoch's mean loss (nats per word)."""
    from ..data.sentences import pad

    sentences = [s for s in sentences if len(s) >= 2]
    if not sentences:
        raise ValueError("language-model pretraining needs sentences of at least 2 words; got none")
    device = next(rnn.parameters()).device
    head = LanguageModelHead(rnn, num_words, dropout).to(device)
    modules = [embed, rnn, head]
    params = list({id(p): p for m in modules for p in m.parameters()}.values())
    optimizer = torch.optim.Adam(params, lr=lr)
    generator = torch.Generator().manual_seed(seed)
    was_training = [m.training for m in modules]
    for m in modules:
        m.train()
    losses = []
    try:
        for epoch in range(1, epochs + 1):
            start, total, words = time.perf_counter(), 0.0, 0
            order = torch.randperm(len(sentences), generator=generator).tolist()
            for first in range(0, len(order), batch_size):
                ids, lengths = pad([sentences[i] for i in order[first:first + batch_size]])
                ids = ids.to(device)
                output, _ = rnn(embed(ids), lengths=lengths)
                loss = head(output, ids, lengths)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if clip_norm > 0:
                    nn.utils.clip_grad_norm_(params, clip_norm)
                optimizer.step()
                n = int((lengths - 1).clamp(min=0).sum()) * head.directions
                total, words = total + loss.item() * n, words + n
            losses.append(total / words)
            log(f"pretraining epoch {epoch}/{epochs}: {losses[-1]:.3f} nats per word (perplexity "
                f"{math.exp(min(losses[-1], 50)):.0f}), {time.perf_counter() - start:.0f} s")
    finally:
        for m, mode in zip(modules, was_training):
            m.train(mode)
    return losses
