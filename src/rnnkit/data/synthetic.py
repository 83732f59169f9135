"""Synthetic long-range tasks (Hochreiter & Schmidhuber 1997): the adding problem and the copy task."""
from __future__ import annotations

import math

import torch
from torch import Tensor


def adding_problem(n: int, length: int, seed: int) -> tuple[Tensor, Tensor]:
    """n sequences (n, T, 2): channel 0 holds uniform [0, 1) values, channel 1 marks two positions, one
    in each half of the sequence; the target (n,) is the sum of the two marked values. Always
    predicting the mean (1.0) scores an MSE of 1/6 ≈ 0.167."""
    if length < 2:
        raise ValueError(f"the adding problem needs a length of at least 2; got {length}")
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(n, length, generator=g)
    half = length // 2
    first = torch.randint(0, half, (n,), generator=g)
    second = torch.randint(half, length, (n,), generator=g)
    marks = torch.zeros(n, length)
    rows = torch.arange(n)
    marks[rows, first] = 1.0
    marks[rows, second] = 1.0
    return torch.stack([values, marks], dim=2), values[rows, first] + values[rows, second]


BLANK = 0  # the copy task's token ids: 0 blank, 1..A the alphabet, A+1 the delimiter


def copy_task(n: int, length: int, seed: int, symbols: int = 10, alphabet: int = 8) -> tuple[Tensor, Tensor]:
    """The copy task in the form of Arjovsky et al. (2016): n sequences of T + 2K token ids.

    inputs (n, T+2K): K symbols drawn uniformly from 1..A, T-1 blanks, the delimiter A+1, K blanks.
    targets (n, T+2K): T+K blanks, then the K symbols. Blank is 0, so the vocabulary has A+2 ids.
    A memoryless model that predicts the blanks and then guesses scores a cross-entropy per step of
    K*log(A)/(T+2K) (`copy_baseline`).
    """
    if length < 1:
        raise ValueError(f"the copy task needs a delay T of at least 1; got {length}")
    if symbols < 1 or alphabet < 2:
        raise ValueError(f"the copy task needs K >= 1 symbols from an alphabet of A >= 2; got K={symbols}, "
                         f"A={alphabet}")
    g = torch.Generator().manual_seed(seed)
    data = torch.randint(1, alphabet + 1, (n, symbols), generator=g)           # (n, K)
    inputs = torch.full((n, length + 2 * symbols), BLANK, dtype=torch.long)   # (n, T+2K)
    targets = torch.full_like(inputs, BLANK)
    inputs[:, :symbols] = data
    inputs[:, symbols + length - 1] = alphabet + 1
    targets[:, symbols + length:] = data
    return inputs, targets


def copy_baseline(length: int, symbols: int = 10, alphabet: int = 8) -> float:
    """Cross-entropy per step (nats) of the memoryless strategy: blanks, then uniform guesses."""
    return symbols * math.log(alphabet) / (length + 2 * symbols)
