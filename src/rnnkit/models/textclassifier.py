"""Many-to-one over words: word ids -> embeddings -> models.classifier.SequenceClassifier (recurrent layer,
last/final/mean/max readout with lengths, linear). SequenceClassifier reads feature vectors; this adds the
embedding in front, with the two regularisers a from-scratch embedding needs (word and embedding dropout)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .classifier import SequenceClassifier
from .tagger import WordDropout


class FixedVectorEmbedding(nn.Module):
    """ids (B, T) -> (B, T, E): the first `fixed` columns are pretrained vectors held fixed (`vectors`, a buffer
    for every word, zeros for a word without one); the other E - fixed columns are trained, for the first
    `trained_words` ids only (the words seen in training). A later id (a word known only from the vectors) has
    zeros there, so it reads exactly as its vector, in the same space the training words' vectors stay in."""

    def __init__(self, num_words: int, embedding: int, fixed: int, trained_words: int):
        super().__init__()
        if not 0 < fixed < embedding:
            raise ValueError(f"fixed columns must lie in (0, embedding {embedding}); got {fixed}")
        if not 2 <= trained_words <= num_words:
            raise ValueError(f"trained_words must lie in [2, num_words {num_words}]; got {trained_words}")
        self.register_buffer("vectors", torch.zeros(num_words, fixed))
        self.trained = nn.Embedding(trained_words, embedding - fixed, padding_idx=0)

    def forward(self, ids: Tensor) -> Tensor:
        seen = ids < self.trained.num_embeddings
        learned = self.trained(torch.where(seen, ids, 0))  # id 0 is padding: zeros, never trained
        return torch.cat([F.embedding(ids, self.vectors), learned], -1)


class TextClassifier(nn.Module):
    """inputs (ids (B, T), lengths (B,)) -> logits (B, C); cross-entropy loss against labels (B,).

    Word dropout replaces a training token by <unk> (id 1) with probability `word_dropout`; embedding
    dropout is ordinary dropout on the embedded vectors. Padding (id 0) embeds as zeros and the
    classifier sees `lengths`, so it never affects the result. With `fixed` > 0 the embedding is a
    FixedVectorEmbedding: its first `fixed` columns are pretrained vectors that training leaves as they are.
    """

    def __init__(self, classifier: SequenceClassifier, num_words: int, embedding: int, word_dropout: float = 0.0,
                 embed_dropout: float = 0.0, fixed: int = 0, trained_words: int | None = None):
        super().__init__()
        if fixed:
            self.embed = FixedVectorEmbedding(num_words, embedding, fixed, trained_words or num_words)
        else:
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
