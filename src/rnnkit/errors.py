"""rnnkit's exception types: each is also the built-in type torch.nn raises for the same mistake.

rnnkit's messages name the argument and the value received; the classes let code written against
torch.nn catch them as it caught torch.nn's (`except RuntimeError` around a forward call with a wrong
h_0, `except TypeError` around a constructor given a float size), and code written against earlier
rnnkit versions catch them as `ValueError`.
"""


class ShapeError(ValueError, RuntimeError):
    """A tensor whose shape, size or dtype does not fit the module (torch.nn: RuntimeError from its
    kernels, or ValueError)."""


class StateTypeError(ShapeError, TypeError):
    """A state of the wrong kind: a tensor where the LSTM takes the tuple (h_0, c_0), or the reverse."""


class ArgumentTypeError(TypeError, ValueError):
    """A constructor argument of the wrong type: an integer size given as a float, a bool flag given as
    a string or an int (torch.nn: TypeError)."""
