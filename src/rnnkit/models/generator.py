"""One-to-many: a class-conditional generator that writes an image one row at a time, each row fed back as
the next step's input (the captioning pattern turned around: one label in, a sequence of rows out)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .recurrent import rnn_output_size


class RowGenerator(nn.Module):
    """inputs: class labels (B,); targets: images (B, T, W) with pixels in [0, 1] (T rows of W pixels).

    Step t reads x_t = [row_{t-1}, onehot(label)] (I = W + C; row_{-1} is zeros), so the label
    conditions every step's input, and a linear layer maps the output to W pixel logits. Training
    uses teacher forcing (the true previous row); the loss is the per-pixel binary cross-entropy of
    sigmoid(logits) against the grey levels, a Bernoulli likelihood per pixel, which suits MNIST's
    nearly binary ink better than a squared error (that blurs strokes towards grey).

    forward returns (logits (B, T, W), loss); without targets it generates (see `generate`) and
    returns the logits of the mean rows it produced, loss None.
    """

    def __init__(self, rnn: nn.Module, classes: int, rows: int, width: int):
        super().__init__()
        if rnn.bidirectional:
            raise ValueError("a generator writes each row from the rows above it only: a bidirectional layer "
                             "would read the answer (use a unidirectional one)")
        if rnn.input_size != width + classes:
            raise ValueError(f"the recurrent layer must read a row plus a one-hot label, {width} + {classes} "
                             f"inputs; got input_size {rnn.input_size}")
        self.rnn, self.classes, self.rows, self.width = rnn, classes, rows, width
        self.head = nn.Linear(rnn_output_size(rnn), width)

    def _check_labels(self, labels: Tensor) -> None:
        if labels.dim() != 1 or (len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < self.classes):
            raise ValueError(f"labels must be a 1-D tensor of classes in [0, {self.classes}); got shape "
                             f"{tuple(labels.shape)} with values {labels.unique().tolist()[:10]}")

    def forward(self, labels: Tensor, targets: Tensor | None = None):
        self._check_labels(labels)
        if targets is None:
            return self.generate(labels, temperature=0.0)[1], None
        B, T, W = targets.shape
        onehot = F.one_hot(labels, self.classes).to(targets.dtype)                  # (B, C)
        previous = torch.cat([targets.new_zeros(B, 1, W), targets[:, :-1]], dim=1)   # (B, T, W) teacher forcing
        x = torch.cat([previous, onehot.unsqueeze(1).expand(B, T, self.classes)], dim=2)  # (B, T, W+C)
        output, _ = self.rnn(x)                                                      # (B, T, H)
        logits = self.head(output)                                                   # (B, T, W)
        return logits, F.binary_cross_entropy_with_logits(logits, targets)

    def rows_step(self, previous: Tensor, labels: Tensor, state=None):
        """previous rows (B, S, W) and labels (B,) -> logits of the next S rows (B, S, W) and the state:
        generation calls it with S = 1 and its own last row, carrying the state."""
        onehot = F.one_hot(labels, self.classes).to(previous.dtype)                   # (B, C)
        B, S, _ = previous.shape
        x = torch.cat([previous, onehot.unsqueeze(1).expand(B, S, self.classes)], dim=2)  # (B, S, W+C)
        output, state = self.rnn(x, state)                                           # (B, S, H)
        return self.head(output), state

    @torch.no_grad()
    def generate(self, labels: Tensor, temperature: float = 0.0,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """Images (B, T, W) in [0, 1] for labels (B,), and the logits (B, T, W) of each step.

        temperature 0 feeds back the mean row sigmoid(logits) (deterministic: one image per label);
        temperature > 0 feeds back a row of pixels drawn from Bernoulli(sigmoid(logits / temperature)).
        """
        self._check_labels(labels)
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0: the mean row); got {temperature}")
        was_training = self.training
        self.eval()
        try:
            weight = self.head.weight
            onehot = F.one_hot(labels.to(weight.device), self.classes).to(weight.dtype)  # (B, C)
            row = weight.new_zeros(len(labels), self.width)                               # (B, W)
            state, rows, logits = None, [], []
            for _ in range(self.rows):
                output, state = self.rnn.step(torch.cat([row, onehot], dim=1), state)    # (B, H)
                step_logits = self.head(output)                                          # (B, W)
                if temperature == 0:
                    row = torch.sigmoid(step_logits)
                else:
                    probs = torch.sigmoid(step_logits / temperature)
                    row = torch.bernoulli(probs.cpu(), generator=generator).to(probs)
                rows.append(row)
                logits.append(step_logits)
            return torch.stack(rows, 1), torch.stack(logits, 1)
        finally:
            self.train(was_training)
