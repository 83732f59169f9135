"""Which implementation runs a layer, decided here and nowhere else.

  native    PyTorch's fused kernel (oneDNN on CPU, cuDNN on GPU) through torch.lstm / torch.gru /
            torch.rnn_tanh / torch.rnn_relu: only for the configurations torch.nn itself has.
  engine    rnnkit's time loop with hand-written BPTT (engine.run, bptt="explicit").
  autograd  the same loop recorded by autograd: the reference, and twice differentiable.
  triton    the engine with each sequence (one direction of one layer) in one Triton kernel launch forward and one
            backward (rnnkit.kernels.triton): CUDA tensors, or CPU tensors under Triton's interpreter
            (TRITON_INTERPRET=1, how the tests run them). Needs the optional `triton` package (the `gpu` extra).

`impl="auto"` picks native where it can run and is the faster of the two for that device, batch
size and kind of call (`engine_is_faster`, from measurements). Otherwise, on CUDA it picks triton where Triton is
importable (the engine's per-step loop is 10-20 small kernel launches per time step there), and else the engine.
All give the same numbers (tests/test_layers.py runs the torch.nn parity suite through each; tests/test_triton*.py
the Triton kernels against the engine's loop of PyTorch ops).
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..kernels import triton as triton_kernels
from ..kernels.cpu import fused
from . import triton as triton_step
from .cells import GRUStep, LSTMStep, RNNStep, Step

IMPLS = ("auto", "native", "engine", "autograd", "triton")


def engine_is_faster(device_type: str, step: Step, batch: int, recording: bool, steps: int | None = None,
                     packed: bool = False) -> bool:
    """Where both can run, whether the engine beat PyTorch's kernel in `rnnkit bench` and benchmarks/bench_layers.py
    and bench_batches.py (2-core CPU, torch 2.13; the README's speed tables). Only on CPU, where some of PyTorch's
    kernels are not oneDNN's fused ones or carry a fixed cost per call:
      - GRU (torch's CPU GRU runs per-step aten ops): the engine's C++ sequence loop (fused.sequence_available)
        measured 0.2-0.9x in train steps and 0.35-0.9x in inference at batches 1-256, from 5 steps on (0.9x at
        T=5, B=1); a single step costs it 1.5-1.7x (a fixed cost per call), so below GRU_MIN_STEPS torch's kernel
        stays;
      - RNN train steps: the same loop measured 0.3-0.9x at T=28-512 (1.2x at T=5; inference is even: oneDNN's
        kernel stays);
      - LSTM with proj_size (oneDNN has no projection) train steps: the engine is 0.44-1.01x;
      - LSTM train steps with lengths (`packed`: torch runs its packed-sequence kernel, not oneDNN's):
        the engine's C++ sequence loop is 0.26-0.61x;
      - LSTM single steps (T=1, as in generation): oneDNN's call costs 0.2-3.6 ms, the engine's
        matrix products 0.12-0.73 ms at B=1 (H=128-512), and they are even at B=64-128.
    Otherwise PyTorch's kernel wins or they are even (LSTM train steps of whole batches: the engine is
    0.83-1.12x; inference 1.0-1.15x)."""
    if device_type != "cpu":
        return False
    kernel = native_kernel(step)
    sequence = fused.sequence_available()
    if kernel == "gru" and sequence and (steps is None or steps >= GRU_MIN_STEPS):
        return True
    if kernel in ("rnn_tanh", "rnn_relu") and recording and sequence and (steps is None or steps >= RNN_MIN_STEPS):
        return True
    if kernel == "lstm" and steps == 1 and batch <= 64:
        return True
    if not recording:
        return False
    if kernel == "lstm" and packed and sequence:
        return True
    return kernel == "lstm" and step.proj_size > 0


GRU_MIN_STEPS, RNN_MIN_STEPS = 4, 16  # see engine_is_faster


def native_kernel(step: Step) -> str | None:
    """The torch kernel that computes exactly this cell, or None."""
    if isinstance(step, LSTMStep):
        plain = not (step.peephole or step.coupled or step.layer_norm) and step.activation == "tanh"
        return "lstm" if plain else None
    if isinstance(step, GRUStep):
        return "gru" if step.reset_after and step.activation == "tanh" else None
    if isinstance(step, RNNStep) and step.nonlinearity in ("tanh", "relu"):
        return f"rnn_{step.nonlinearity}"
    return None


def why_not_native(step: Step, recurrent_dropout: float, training: bool, lengths: Tensor | None,
                   steps: int | None = None) -> str | None:
    """Why PyTorch's kernel cannot run this call, or None if it can."""
    if native_kernel(step) is None:
        return f"torch.nn has no kernel for {step}"
    if steps == 0:
        return "torch.nn's kernels refuse an empty sequence (T = 0)"
    if recurrent_dropout > 0 and training:
        return "torch.nn has no recurrent dropout"
    if lengths is not None and lengths.numel() and int(lengths.min()) == 0:
        return "torch.nn's packed sequences cannot hold zero-length sequences"
    return None


def choose(impl: str, step: Step, device: torch.device, batch: int, recurrent_dropout: float,
           training: bool, lengths: Tensor | None, recording: bool = True, steps: int | None = None) -> str:
    """Resolve `impl` to "native", "engine", "autograd" or "triton" for one forward call (`recording`:
    whether autograd records it, i.e. a backward pass will follow; `steps`: its time steps, if known).
    impl="triton" without Triton raises ImportError naming the package and the install command."""
    if impl in ("engine", "autograd"):
        return impl
    if impl == "triton":
        triton_kernels.require()
        return "triton"
    if impl == "auto" and lengths is not None and torch.compiler.is_compiling():
        # torch.nn's packed sequences need the lengths as Python numbers, which a compiled graph has not; the
        # engine takes them as a tensor
        return "triton" if device.type == "cuda" and triton_kernels.available() else "engine"
    reason = why_not_native(step, recurrent_dropout, training, lengths, steps)
    if impl == "native":
        if reason:
            raise ValueError(f"impl='native' cannot run this layer: {reason}")
        return "native"
    if not reason and not engine_is_faster(device.type, step, batch, recording, steps, packed=lengths is not None):
        return "native"
    return "triton" if device.type == "cuda" and triton_kernels.available() else "engine"


def explain(step: Step, device_type: str) -> tuple[str, str]:
    """(the path impl="auto" takes for a train step of this cell on this device, batch 32, whole sequences, no
    recurrent dropout; why), for `rnnkit info`."""
    path = choose("auto", step, torch.device(device_type), 32, 0.0, True, None, recording=True, steps=16)
    reason = why_not_native(step, 0.0, True, None, 16)
    if native_kernel(step) is None:
        reason = "torch.nn has no kernel for this variant"
    if path == "native":
        return path, "torch.nn has this configuration" + (" (cuDNN)" if device_type == "cuda" else " (oneDNN)")
    if reason is None:
        return path, "torch.nn has it, but the engine measured faster here (dispatch.engine_is_faster)"
    if path == "triton":
        return path, f"{reason}; Triton is importable"
    if device_type == "cuda":
        return path, f"{reason}; {triton_kernels.unavailable_reason()}: the engine's per-step PyTorch ops"
    return path, reason


def run_native(step: Step, weights: list[Tensor], x: Tensor, states: tuple[Tensor, ...],
               lengths: Tensor | None, num_layers: int, dropout: float, training: bool,
               bidirectional: bool) -> tuple[Tensor, tuple[Tensor, ...]]:
    """x (T, B, I), sorted longest first when lengths are given -> out (T, B, D*P), final states.

    `weights` are the flat per-layer, per-direction parameters in torch.nn's order
    (w_ih, w_hh[, b_ih, b_hh][, w_hr]).
    """
    kernel = getattr(torch, native_kernel(step))
    hx = states if len(states) == 2 else states[0]
    options = (step.bias, num_layers, dropout, training, bidirectional)
    if lengths is None:
        result = kernel(x, hx, weights, *options, False)
        out, finals = result[0], tuple(result[1:])
    else:
        out, finals = _run_packed(kernel, weights, x, hx, lengths, options)
    return out, finals


@torch.compiler.disable(reason="torch.nn's packed sequences take the lengths as Python numbers")
def _run_packed(kernel, weights, x, hx, lengths, options):
    """The packed-sequence kernel over x with lengths; outside a compiler's graph (impl='auto' runs the engine's
    ops there instead, see choose)."""
    packed = pack_padded_sequence(x, lengths.cpu(), enforce_sorted=True)
    result = kernel(packed.data, packed.batch_sizes, hx, weights, *options)
    out = pad_packed_sequence(packed._replace(data=result[0]), total_length=x.shape[0])[0]
    return out, tuple(result[1:])
