"""Gradient flow through time, measured: ‖∂L/∂h_t‖ for a loss at the last step, for each cell.

The notes' argument: in a vanilla RNN, ∂L/∂h_t = W_hhᵀ diag(1 - h_{t+1}²) ∂L/∂h_{t+1}, a product of
one such factor per step, which shrinks geometrically through tanh; the LSTM's additive cell state
and the GRU's update gate give the gradient a path that does not.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..nn.layers import GRU, LSTM, RNN

CELLS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}


def gradients(layer: nn.Module, x: Tensor, readout: Tensor | None = None) -> list[Tensor]:
    """∂L/∂h_t for t = 1..T, each (B, H), for L = sum over the batch of <h_T, readout>.

    `layer` is a batch-first unidirectional rnnkit layer and `x` its input (B, T, I); h_t is the top
    layer's output at step t (for an LSTM, with c_t held fixed). The layer runs with `layer.step`, so
    each h_t is a node of the graph that the later steps read; a fixed random readout is the default.
    """
    if getattr(layer, "bidirectional", False):
        raise ValueError("gradient flow is measured forward in time; the layer is bidirectional")
    outputs, state = [], None
    for t in range(x.shape[1]):
        h, state = layer.step(x[:, t], state)  # (B, H)
        outputs.append(h)
    if readout is None:
        readout = torch.randn(outputs[-1].shape[-1], generator=torch.Generator().manual_seed(0)).to(x)
    return list(torch.autograd.grad((outputs[-1] * readout).sum(), outputs))


def gradient_norms(layer: nn.Module, x: Tensor, readout: Tensor | None = None) -> Tensor:
    """‖∂L/∂h_t‖ averaged over the batch, for t = 1..T -> (T,); see `gradients`."""
    return torch.stack([g.norm(dim=-1).mean() for g in gradients(layer, x, readout)]).detach()


def compare_cells(cells: list[str], length: int, hidden: int = 64, input_size: int = 8, batch: int = 32,
                  seed: int = 0, forget_bias: float | None = None) -> dict[str, list[float]]:
    """‖∂L/∂h_t‖ for t = 1..length for each cell at its initialisation (torch.nn's, and for the LSTM the
    given forget-gate bias), all on the same input."""
    unknown = [c for c in cells if c not in CELLS]
    if unknown or not cells:
        raise ValueError(f"cells must be a non-empty subset of {', '.join(CELLS)}; got {cells}")
    torch.manual_seed(seed)
    x = torch.randn(batch, length, input_size)
    result = {}
    for name in cells:
        torch.manual_seed(seed)
        extra = {"forget_bias": forget_bias} if name == "lstm" and forget_bias is not None else {}
        label = f"lstm (forget bias {forget_bias:g})" if extra else name
        result[label] = gradient_norms(CELLS[name](input_size, hidden, batch_first=True, **extra), x).tolist()
    return result


def trained_curve(loaded, length: int, batch: int = 32, seed: int = 0) -> list[float]:
    """‖∂L/∂h_t‖ through the recurrent layer of a loaded checkpoint (`rnnkit.tasks.load`), on its task's
    own sequences where the task makes them (the adding problem), else on random inputs."""
    layer = loaded.model.rnn
    if loaded.task.name == "adding":
        from ..data.synthetic import adding_problem

        x = adding_problem(batch, length, seed)[0]
    else:
        x = torch.randn(batch, length, layer.input_size, generator=torch.Generator().manual_seed(seed))
    return gradient_norms(layer, x.to(layer.weight_ih_l0)).tolist()
