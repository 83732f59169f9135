"""rnnkit: recurrent networks for PyTorch, on one explicit backpropagation-through-time engine.

Drop-in `RNN`, `LSTM`, `GRU` layers and `RNNCell`, `LSTMCell`, `GRUCell` with torch.nn's
signatures and state dicts, plus the variants torch.nn lacks (softsign, peepholes, coupled
input-forget gate, layer norm, forget-gate bias, GRU reset-before, recurrent dropout, lengths=),
and minGRU/minLSTM with a parallel scan.
"""
from importlib.metadata import PackageNotFoundError, version

from .nn import GRU, LSTM, RNN, GRUCell, LSTMCell, MinGRU, MinLSTM, RNNCell

try:
    __version__ = version("rnnkit")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "MinGRU", "MinLSTM", "__version__"]
