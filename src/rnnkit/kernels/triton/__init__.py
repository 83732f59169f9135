"""Triton kernels for the recurrent part of every cell the engine runs (impl="triton"): LSTM with any combination of
peephole, coupled gate, softsign, layer norm, proj_size and recurrent-dropout mask; GRU in both conventions and
softsign; RNN tanh/relu/softsign. One direction of one layer over a whole sequence is one launch forward and one
backward, with variable lengths (zeros included) and initial states; float32, bfloat16 and float16 (products and
gate math in float32) and float64.

    lstm_sequence / lstm_sequence_backward     (lstm.py)
    gru_sequence / gru_sequence_backward       (gru.py)
    rnn_sequence / rnn_sequence_backward       (rnn.py)

Each `*_sequence(xp, states..., weights..., mask, batch_sizes, options..., keep)` takes the input projections xp
(T, B, G*H), made before the loop as one matrix product (cuBLAS), as in the engine, and returns the outputs (T, B, P),
zero past each row's end, the final states, and with keep=True what `*_sequence_backward` needs; that returns d_xp,
the initial states' gradients and {parameter name: gradient} (names as in rnnkit.engine.cells). batch_sizes is the engine's
(rows sorted longest first, batch_sizes[t] rows active at step t); a row that has ended keeps its state.

Design: a persistent kernel, one program per block of 16 batch rows, runs the whole time loop on the device. Batch rows
are independent, so no program waits for another and no grid-wide synchronisation is needed; nothing runs in Python
between steps. Each step's recurrent product is a loop of tl.dot over tiles of h (16 rows x 32) and of W_hh, which is
read from global memory (L2-resident for the sizes that matter) at every step, one tile of hidden units at a time;
where a step has no row-wide reduction (LSTM without layer norm and projection, GRU, RNN) the product of all gates
for a tile of units and their gate math are one pass, FlashRNN's "fused" kernel without W_hh held on chip. h goes
through a double buffer (step t reads one half, writes the other), the carried c and the gradients of the carried
states are updated in place, and the phases of a step (products, layer-norm moments, projection) are separated by
tl.debug_barrier, a barrier within the program. The backward kernel walks time in reverse the same way; the gradients
of W_hh and W_hr are then one cuBLAS product over all steps (as in the engine), the vector parameters' gradients
are summed by each program as it goes and then over programs.

Why this and not per-step cuBLAS products with a fused pointwise kernel in a CUDA graph (FlashRNN's "alternating"
kernels): it is one code path that also runs, unchanged, under Triton's interpreter on the CPU, where the tests run
(a CUDA graph cannot), and it launches once per sequence. Its cost: with 16 rows per program a batch of 64 is four
programs, each streaming all of W_hh every step, so at large H and small B the GPU is mostly idle where cuBLAS
would split the hidden units over all SMs. Which wins where has NOT been measured (no GPU has been available to this
project): benchmarks/bench_gpu.py measures it against cuDNN, the engine and torch.nn.

float64: tl.dot on float64 is not supported on every GPU and Triton version, so float64 takes a broadcast multiply
and sum in the product (`_common.launch`); under the interpreter both run on NumPy.

Triton is optional (`pip install "rnnkit[gpu]"`); `available()` / `unavailable_reason()` say whether it imports.
On the CPU the kernels run only under Triton's interpreter: TRITON_INTERPRET=1 must be set before this package's
kernel modules are first imported (the tests do).
"""
from __future__ import annotations

import importlib

INSTALL = 'pip install -e ".[gpu]" in a checkout of rnnkit (the gpu extra), or pip install triton==3.9.0'
_error: str | None = None
_checked = False


def unavailable_reason() -> str | None:
    """Why the Triton kernels cannot be used (the missing package and how to install it), or None."""
    global _error, _checked
    if not _checked:
        _checked = True
        try:
            importlib.import_module("triton")
            importlib.import_module("triton.language")
        except ImportError as e:  # not installed, or a broken install
            _error = (f"the Triton kernels need the 'triton' package, which is not importable ({e}); "
                      f"install it with {INSTALL}")
    return _error


def available() -> bool:
    return unavailable_reason() is None


def require() -> None:
    """Raise ImportError naming the package and the install command when Triton is not importable."""
    reason = unavailable_reason()
    if reason is not None:
        raise ImportError(reason)


_EXPORTS = {
    "lstm_sequence": "lstm", "lstm_sequence_backward": "lstm",
    "gru_sequence": "gru", "gru_sequence_backward": "gru",
    "rnn_sequence": "rnn", "rnn_sequence_backward": "rnn",
}


def __getattr__(name: str):
    """The kernels' modules are imported on first use: importing this package never imports Triton."""
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    require()
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


__all__ = ["available", "unavailable_reason", "require"]  # the kernels are documented in their own modules
