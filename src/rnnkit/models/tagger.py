"""Many-to-many: a (bidirectional) recurrent layer reads word embeddings plus character-level features of
each word, and a linear layer gives every token a tag distribution; padding is masked throughout."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.layers import LSTM
from .recurrent import rnn_output_size

IGNORE = -100  # the target of a padding position: cross_entropy and the accuracy skip it
CHAR_ENCODERS = ("cnn", "lstm", "none")


class WordDropout(nn.Module):
    """In training, replace word id w by `unk` with probability probs[w] (B, T) -> (B, T).

    With probs[w] = alpha / (alpha + count(w)) (Kiperwasser & Goldberg 2016), rare words are often
    dropped, so the model learns what to do with unknown words from the character features and the
    context; frequent words almost never are. Padding (id 0) is never replaced."""

    def __init__(self, probs: Tensor, unk: int = 1):
        super().__init__()
        self.unk = unk
        self.register_buffer("probs", probs.float(), persistent=False)  # (V,), rebuilt from the config

    def forward(self, ids: Tensor) -> Tensor:
        if not self.training or not bool(self.probs.any()):
            return ids
        drop = torch.rand(ids.shape, device=ids.device) < self.probs[ids]
        return ids.masked_fill(drop, self.unk)


class CharFeatures(nn.Module):
    """Characters of N words (N, C), id 0 padding after each word -> features (N, F).

    'cnn': F filters of width 3 over the character embeddings, max-pooled over each word's own
    characters (positions past its end are masked, so the result does not depend on C).
    'lstm': a bidirectional LSTM over the characters; F = both directions' final states."""

    def __init__(self, num_chars: int, embedding: int, features: int, kind: str = "cnn"):
        super().__init__()
        if kind not in ("cnn", "lstm"):
            raise ValueError(f"character encoder must be 'cnn' or 'lstm'; got {kind!r}")
        if kind == "lstm" and features % 2:
            raise ValueError(f"a character BiLSTM needs an even number of features (two directions); got {features}")
        self.kind = kind
        self.embed = nn.Embedding(num_chars, embedding, padding_idx=0)
        if kind == "cnn":
            self.conv = nn.Conv1d(embedding, features, kernel_size=3, padding=1)
        else:
            self.lstm = LSTM(embedding, features // 2, batch_first=True, bidirectional=True)

    def forward(self, chars: Tensor) -> Tensor:
        lengths = (chars != 0).sum(1)                                    # (N,)
        x = self.embed(chars)                                            # (N, C, E)
        if self.kind == "lstm":
            _, (h, _) = self.lstm(x, lengths=lengths)                    # h: (2, N, F/2)
            return torch.cat([h[0], h[1]], dim=-1)                       # (N, F)
        out = self.conv(x.transpose(1, 2))                               # (N, F, C)
        valid = torch.arange(chars.shape[1], device=chars.device) < lengths.unsqueeze(1)  # (N, C)
        return out.masked_fill(~valid.unsqueeze(1), float("-inf")).amax(2)  # (N, F)


class Tagger(nn.Module):
    """inputs (words (B, T), chars (B, T, C), lengths (B,)) -> logits (B, T, K); loss against tags (B, T).

    x_t = [embed(word_t); chars(word_t)], dropout, the recurrent layer with lengths=, dropout, linear.
    The loss is the mean cross-entropy over real tokens: padding positions carry the target IGNORE.
    `chars` may be None when the model has no character encoder.
    """

    def __init__(self, rnn: nn.Module, num_words: int, num_tags: int, embedding: int,
                 chars: CharFeatures | None = None, char_features: int = 0, dropout: float = 0.0,
                 word_drop: Tensor | None = None):
        super().__init__()
        if rnn.input_size != embedding + char_features:
            raise ValueError(f"the recurrent layer reads {rnn.input_size} features per token; the tagger gives "
                             f"{embedding} (words) + {char_features} (characters)")
        self.embed = nn.Embedding(num_words, embedding, padding_idx=0)
        self.word_drop = WordDropout(torch.zeros(num_words) if word_drop is None else word_drop)
        self.chars, self.char_features = chars, char_features
        self.rnn, self.drop = rnn, nn.Dropout(dropout)
        self.head = nn.Linear(rnn_output_size(rnn), num_tags)

    def forward(self, inputs, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        words, chars, lengths = inputs
        B, T = words.shape
        x = self.embed(self.word_drop(words))                            # (B, T, E)
        if self.chars is not None:
            valid = torch.arange(T, device=words.device) < lengths.to(words.device).unsqueeze(1)  # (B, T)
            features = x.new_zeros(B, T, self.char_features)             # only real tokens are encoded
            features[valid] = self.chars(chars[valid]).to(x.dtype)      # (N, F) for the N real tokens
            x = torch.cat([x, features], dim=-1)                         # (B, T, E + F)
        output, _ = self.rnn(self.drop(x), lengths=lengths)             # (B, T, D*H), zeros past each end
        logits = self.head(self.drop(output))                            # (B, T, K)
        return logits, None if targets is None else tagging_loss(logits, targets)


def tagging_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over the tokens whose target is not IGNORE: logits (B, T, K), targets (B, T)."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE)
