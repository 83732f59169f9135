"""Many-to-one over words: word ids -> embeddings -> models.classifier.SequenceClassifier (recurrent layer,
last/final/mean/max readout with lengths, linear). SequenceClassifier reads feature vectors; this adds the
embedding in front, with the two regularisers a from-scratch embedding needs (word and embedding dropout)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from .classifier import SequenceClassifier
from .tagger import WordDropout


class TextClassifier(nn.Module):
    """inputs (ids (B, T), lengths (B,)) -> logits (B, C); cross-entropy loss against labels (B,).

    Word dropout replaces a training token by <unk> (id 1) with probability `word_dropout`; embedding
    dropout is ordinary dropout on the embedded vectors. Padding (id 0) embeds as zeros and the
    classifier sees `lengths`, so it never affects the result.
    """

    def __init__(self, classifier: SequenceClassifier, num_words: int, embedding: int, word_dropout: float = 0.0,
                 embed_dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Embedding(num_words, embedding, padding_idx=0)
        probs = torch.full((num_words,), float(word_dropout))
        probs[:2] = 0  # padding and <unk> stay as they are
        self.word_drop, self.embed_drop = WordDropout(probs), nn.Dropout(embed_dropout)
        self.classifier = classifier

    def embedding(self) -> nn.Module:
        """ids (B, T) -> vectors (B, T, E) as the classifier reads them (word dropout, embedding dropout)."""
        return nn.Sequential(self.word_drop, self.embed, self.embed_drop)

    def forward(self, inputs, targets: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        ids, lengths = inputs
        x = self.embedding()(ids)                                       # (B, T, E)
        return self.classifier((x, lengths), targets)                   # (B, C), loss
