"""Task models built from rnnkit's layers, one contract for all: `forward(inputs, targets=None) -> (output, loss)`."""
from .classifier import READOUTS, SequenceClassifier, readout
from .recurrent import make_rnn, rnn_output_size

__all__ = ["SequenceClassifier", "readout", "READOUTS", "make_rnn", "rnn_output_size"]
