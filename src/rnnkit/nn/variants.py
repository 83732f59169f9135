"""The variants, listed once: each option the layers take beyond torch.nn's (which layers take it, the value
that leaves torch.nn's layer as it is, what it does), and the named configurations that `rnnkit demo`,
`rnnkit info` and the benchmarks show. The recipes' config (rnnkit.training.config) checks its options against
`OPTIONS`, and the model builder (rnnkit.models.recurrent) passes them on with `layer_options`."""
from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .layers import GRU, LSTM, RNN

LAYERS = {"rnn": RNN, "lstm": LSTM, "gru": GRU}
TORCH_LAYERS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


@dataclass(frozen=True)
class Option:
    name: str  # the layers' keyword argument
    layers: tuple[str, ...]  # the layers that take it (keys of LAYERS)
    neutral: object  # the value that leaves torch.nn's layer as it is
    help: str
    in_torch_nn: bool = False  # torch.nn's layers take it too

    def applies_to(self, layer: str) -> bool:
        return layer in self.layers


OPTIONS: dict[str, Option] = {o.name: o for o in (
    Option("nonlinearity", ("rnn",), "tanh", "the RNN's activation: 'tanh', 'relu' (as torch.nn) or 'softsign'",
           in_torch_nn=True),
    Option("activation", ("lstm", "gru"), "tanh", "activation of the candidate and output: 'tanh' or 'softsign'"),
    Option("peephole", ("lstm",), False, "diagonal peephole connections"),
    Option("coupled", ("lstm",), False, "coupled input-forget gate (CIFG)"),
    Option("layer_norm", ("lstm",), False, "layer-normalised gates and cell"),
    Option("forget_bias", ("lstm",), None, "initial forget-gate bias (None keeps torch.nn's init)"),
    Option("proj_size", ("lstm",), 0, "project h to this many units (0: no projection)", in_torch_nn=True),
    Option("reset_after", ("gru",), True, "reset gate after the recurrent product (torch.nn/cuDNN); False: before"),
    Option("recurrent_dropout", ("rnn", "lstm", "gru"), 0.0, "variational dropout on h entering the recurrence"),
)}

HALF = "H/2"  # an option value that stands for half the hidden size (proj_size)


@dataclass(frozen=True)
class Variant:
    """A named configuration of a layer: `layer` (a key of LAYERS) with `options` (keyword arguments)."""

    label: str
    layer: str
    options: dict = field(default_factory=dict)
    train_only: bool = False  # differs from the plain layer in training only (recurrent dropout)

    def __post_init__(self):
        unknown = [k for k in self.options if k not in OPTIONS or not OPTIONS[k].applies_to(self.layer)]
        if unknown:
            raise ValueError(f"variant {self.label!r}: {self.layer} takes no option {unknown[0]!r}")

    def kwargs(self, hidden: int) -> dict:
        return {k: hidden // 2 if v == HALF else v for k, v in self.options.items()}

    @property
    def in_torch_nn(self) -> bool:
        """torch.nn's layer computes the same function (with the same keyword arguments)."""
        return all(OPTIONS[k].in_torch_nn and (k != "nonlinearity" or v in ("tanh", "relu"))
                   for k, v in self.options.items())

    def build(self, input_size: int, hidden: int, *args, **kwargs) -> nn.Module:
        """The rnnkit layer; other arguments as the layer's (num_layers, batch_first, device...)."""
        return LAYERS[self.layer](input_size, hidden, *args, **self.kwargs(hidden), **kwargs)

    def torch_equivalent(self, input_size: int, hidden: int, *args, **kwargs) -> nn.Module:
        """torch.nn's layer of the same size, with the options torch.nn has (the baseline to compare with)."""
        options = {k: v for k, v in self.kwargs(hidden).items() if OPTIONS[k].in_torch_nn and v != "softsign"}
        return TORCH_LAYERS[self.layer](input_size, hidden, *args, **options, **kwargs)


VARIANTS: dict[str, Variant] = {v.label: v for v in (
    Variant("RNN tanh", "rnn"),
    Variant("RNN relu", "rnn", {"nonlinearity": "relu"}),
    Variant("RNN softsign", "rnn", {"nonlinearity": "softsign"}),
    Variant("LSTM", "lstm"),
    Variant("LSTM proj_size=H/2", "lstm", {"proj_size": HALF}),
    Variant("LSTM peephole", "lstm", {"peephole": True}),
    Variant("LSTM coupled", "lstm", {"coupled": True}),
    Variant("LSTM layer_norm", "lstm", {"layer_norm": True}),
    Variant("LSTM softsign", "lstm", {"activation": "softsign"}),
    Variant("LSTM recurrent_dropout", "lstm", {"recurrent_dropout": 0.25}, train_only=True),
    Variant("GRU", "gru"),
    Variant("GRU reset_before", "gru", {"reset_after": False}),
    Variant("GRU softsign", "gru", {"activation": "softsign"}),
)}


def layer_options(layer: str, values: dict) -> dict:
    """The options of `values` ({option name: value}, e.g. a config's) that `layer` takes."""
    return {name: values[name] for name, option in OPTIONS.items() if option.applies_to(layer) and name in values}


def misapplied(layer: str, values: dict) -> list[str]:
    """The options of `values` set to other than their neutral value that `layer` does not take."""
    return [name for name, value in values.items()
            if name in OPTIONS and not OPTIONS[name].applies_to(layer) and value != OPTIONS[name].neutral]
