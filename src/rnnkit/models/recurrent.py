"""Build an rnnkit recurrent layer from a task's RNNConfig: one place maps config options to layer arguments."""
from __future__ import annotations

from torch import nn

from ..nn.layers import GRU, LSTM, RNN


def make_rnn(cfg, input_size: int, bidirectional: bool | None = None) -> nn.Module:
    """A batch-first RNN/LSTM/GRU with the variants `cfg` asks for (`cfg` is validated beforehand).

    `bidirectional` overrides cfg.bidirectional (autoregressive models pass False).
    """
    common = dict(num_layers=cfg.layers, batch_first=True, dropout=cfg.dropout if cfg.layers > 1 else 0.0,
                  bidirectional=cfg.bidirectional if bidirectional is None else bidirectional,
                  recurrent_dropout=cfg.recurrent_dropout)
    if cfg.cell == "rnn":
        return RNN(input_size, cfg.hidden, nonlinearity=cfg.activation, **common)
    if cfg.cell == "gru":
        return GRU(input_size, cfg.hidden, reset_after=cfg.reset_after, activation=cfg.activation, **common)
    if cfg.cell == "lstm":
        return LSTM(input_size, cfg.hidden, proj_size=cfg.proj_size, peephole=cfg.peephole, coupled=cfg.coupled,
                    layer_norm=cfg.layer_norm, activation=cfg.activation,
                    forget_bias=cfg.forget_bias or None, **common)
    raise ValueError(f"cell must be one of 'rnn', 'lstm', 'gru'; got {cfg.cell!r}")


def rnn_output_size(rnn: nn.Module) -> int:
    """Features per time step of a layer's output: D * (proj_size or hidden_size)."""
    return (2 if rnn.bidirectional else 1) * (getattr(rnn, "proj_size", 0) or rnn.hidden_size)
