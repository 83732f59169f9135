"""Synthetic long-range tasks (Hochreiter & Schmidhuber 1997): the adding problem."""
from __future__ import annotations

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
