"""The engine's side of the Triton kernels: a cell whose whole-sequence call (`sequence` / `sequence_backward`, see
rnnkit.engine.loop) runs them. Everything else (one step, its backward, the input projection, the double backward's
recomputation under autograd) is the cell's own, unchanged."""
from __future__ import annotations

import importlib

from torch import Tensor

from ..kernels.triton import require
from .cells import GRUStep, LSTMStep, RNNStep, Step


def _kernels(cell: str):
    return importlib.import_module(f"rnnkit.kernels.triton.{cell}")


class TritonStep:
    """`cell`, with `sequence` on the Triton kernels. The engine hands it every sequence it would loop over."""

    def __init__(self, cell: Step):
        require()
        if not isinstance(cell, (LSTMStep, GRUStep, RNNStep)):
            raise TypeError(f"the Triton kernels run LSTMStep, GRUStep and RNNStep cells; got {type(cell).__name__}")
        self.cell = cell

    def __getattr__(self, name):
        return getattr(self.cell, name)

    def __repr__(self) -> str:
        return f"TritonStep({self.cell!r})"

    def sequence(self, xp: Tensor, state0: tuple[Tensor, ...], p: dict[str, Tensor], batch_sizes, mask, keep: bool):
        cell = self.cell
        if isinstance(cell, LSTMStep):
            ln = (p["ln_weight_hh"], p["ln_weight_c"], p.get("ln_bias_c")) if cell.layer_norm else None
            out, final, saved = _kernels("lstm").lstm_sequence(
                xp, *state0, p["weight_hh"], p.get("weight_hr"), mask, batch_sizes, p.get("weight_peephole"), ln,
                cell.coupled, cell.activation, keep)
        elif isinstance(cell, GRUStep):
            b_hh = p.get("bias_hh") if cell.reset_after else None  # hoisted into xp otherwise
            out, final, saved = _kernels("gru").gru_sequence(xp, *state0, p["weight_hh"], b_hh, mask, batch_sizes,
                                                             cell.reset_after, cell.activation, keep)
        else:
            out, final, saved = _kernels("rnn").rnn_sequence(xp, *state0, p["weight_hh"], mask, batch_sizes,
                                                             cell.nonlinearity, keep)
        if not keep:
            return out, final, None
        tensors, options = saved
        return out, final, (tensors, {**options, "final": [s.shape for s in final]})

    def sequence_backward(self, kept, d_out: Tensor, d_final: list):
        tensors, options = kept
        d_final = [d_out.new_zeros(shape) if d is None else d for shape, d in zip(options["final"], d_final)]
        name = {LSTMStep: "lstm", GRUStep: "gru", RNNStep: "rnn"}[type(self.cell)]
        backward = getattr(_kernels(name), f"{name}_sequence_backward")
        d_xp, d_state0, grads = backward((tensors, options), d_out, *d_final)
        return d_xp, d_state0, grads
