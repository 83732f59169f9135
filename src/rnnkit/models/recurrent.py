"""Build an rnnkit recurrent layer from a task's RNNConfig: one place maps config options to layer arguments."""
from __future__ import annotations

from torch import nn

from ..nn.variants import LAYERS, OPTIONS, layer_options


def make_rnn(cfg, input_size: int, bidirectional: bool | None = None) -> nn.Module:
    """A batch-first RNN/LSTM/GRU with the variants `cfg` asks for (`cfg` is validated beforehand).

    `bidirectional` overrides cfg.bidirectional (autoregressive models pass False).
    """
    if cfg.cell not in LAYERS:
        raise ValueError(f"cell must be one of {', '.join(map(repr, LAYERS))}; got {cfg.cell!r}")
    return LAYERS[cfg.cell](input_size, cfg.hidden, num_layers=cfg.layers, batch_first=True,
                            dropout=cfg.dropout if cfg.layers > 1 else 0.0,
                            bidirectional=cfg.bidirectional if bidirectional is None else bidirectional,
                            **layer_options(cfg.cell, variant_values(cfg)))


def variant_values(cfg) -> dict:
    """A config's variant options as the layers' keyword arguments (rnnkit.nn.variants.OPTIONS): the config's
    one --activation is the RNN's nonlinearity, and --forget-bias 0 is the layers' None (torch.nn's init)."""
    values = {name: getattr(cfg, name) for name in OPTIONS if hasattr(cfg, name)}
    values["nonlinearity"] = cfg.activation
    values["forget_bias"] = cfg.forget_bias or None
    return values


def rnn_output_size(rnn: nn.Module) -> int:
    """Features per time step of a layer's output: D * (proj_size or hidden_size)."""
    return (2 if rnn.bidirectional else 1) * (getattr(rnn, "proj_size", 0) or rnn.hidden_size)
