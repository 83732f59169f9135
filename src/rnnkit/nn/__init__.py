"""The layers users import: `RNN`, `LSTM`, `GRU` and their cells with torch.nn's signatures and state dicts,
plus the variants torch.nn lacks (layers.py), and minGRU/minLSTM (minimal.py). They check their arguments and
inputs, then hand each sequence to the engine's dispatcher (rnnkit.engine.dispatch)."""
from .layers import GRU, LSTM, RNN, GRUCell, LSTMCell, RNNCell
from .minimal import MinGRU, MinLSTM

__all__ = ["RNN", "LSTM", "GRU", "RNNCell", "LSTMCell", "GRUCell", "MinGRU", "MinLSTM"]
