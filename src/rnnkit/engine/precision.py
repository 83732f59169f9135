"""Which dtype a module computes in: its parameters' dtype, or under torch.autocast the one torch.nn's
module of the same kind computes in, whatever implementation runs the call.

torch.nn's recurrent modules follow autocast's op lists, which differ by device and module:
  - CUDA: every layer and cell runs in autocast's dtype (cuDNN's RNN and the cell functions are on the
    lower-precision list);
  - CPU: LSTM and RNN layers (oneDNN's RNN kernel, and the matrix products of the Elman loop) and
    RNNCell run in autocast's dtype; GRU, LSTMCell and GRUCell compute in the dtype of their input.
rnnkit's variants follow their family (an LSTM with peepholes as nn.LSTM, a reset-before GRU as nn.GRU,
minGRU/minLSTM, which are matrix products and pointwise ops, in autocast's dtype). The module casts its
parameters, input and states to that dtype once (differentiably: the gradients of float32 parameters
stay float32) and runs with autocast off, so the result's dtype never depends on the path the
dispatcher chose.
"""
from __future__ import annotations

import contextlib

import torch
from torch import Tensor

from ..errors import ShapeError

FOLLOW_INPUT = {"cpu": {"GRU", "LSTMCell", "GRUCell"}}  # else autocast's dtype; see the docstring


def autocast_enabled(device_type: str) -> bool:
    """torch.is_autocast_enabled for devices autocast knows; False for the others (meta tensors)."""
    return torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type)


def autocast_off(device_type: str):
    """A context that suspends autocast while a module runs in the dtype it cast to (nothing to do when
    autocast is off)."""
    if autocast_enabled(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def compute_dtype(kind: str, x: Tensor, param_dtype: torch.dtype) -> torch.dtype:
    """The dtype a module of `kind` ("LSTM", "GRUCell", "MinGRU", ...) computes in for input x.

    Without autocast (or for float64, which autocast leaves alone) the input must have the
    parameters' dtype, as torch.nn requires (ValueError naming both)."""
    device_type = x.device.type
    autocast = autocast_enabled(device_type) and x.is_floating_point() \
        and torch.float64 not in (x.dtype, param_dtype)
    if not autocast:
        if x.dtype != param_dtype:
            raise ShapeError(f"input has dtype {x.dtype}; the layer's parameters are {param_dtype}")
        return param_dtype
    if kind in FOLLOW_INPUT.get(device_type, ()):
        return x.dtype
    return torch.get_autocast_dtype(device_type)


def cast(t: Tensor | None, dtype: torch.dtype) -> Tensor | None:
    """t in `dtype` (differentiably), if it is a floating-point tensor of another dtype."""
    return t.to(dtype) if t is not None and t.is_floating_point() and t.dtype != dtype else t
