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

Within the engine, each sequence (one direction of one layer) runs on one of:

  cpp       rnnkit's C++ sequence kernels as custom ops (rnnkit::{lstm,gru,rnn}_sequence, engine/ops.py): CPU,
            float32/float64, the kernels built and PyTorch's BLAS gemm found;
  triton    one Triton launch forward and one backward (impl="triton"), as the custom ops
            rnnkit::triton_{lstm,gru,rnn}_sequence (engine/triton.py);
  steps     the loop of the cell's steps in PyTorch ops (any device and dtype; also impl="autograd").

`plan` makes both choices for a layer's call and returns them with the reasons as a Plan, which the layer keeps
(`layer.last_plan`) and the engine follows; `sequence_path` is the second choice alone, for code that calls the
engine directly. A layer's `step()` (one time step, as in generation) is planned by `plan_step`, MinGRU/MinLSTM's
forward by `plan_minimal`. No other module asks a backend whether it can run a call (tests/test_plan.py). Below the
plan, the one choice left is inside the LSTM cell's step: its gate math runs in one C++ pass where no autograd graph
is recorded through that step (cells.LSTMStep.step, fused.direct), a property of each step call.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from ..kernels import triton as triton_kernels
from . import ops
from .cells import GRUStep, LSTMStep, RNNStep, Step

IMPLS = ("auto", "native", "engine", "autograd", "triton")


def engine_is_faster(device_type: str, step: Step, batch: int, recording: bool, steps: int | None = None,
                     packed: bool = False, dtype: torch.dtype = torch.float32) -> bool:
    """Where both can run, whether the engine beat PyTorch's kernel in `rnnkit bench` and benchmarks/bench_layers.py
    and bench_batches.py (2-core CPU, torch 2.13; the README's speed tables). Only on CPU, where some of PyTorch's
    kernels are not oneDNN's fused ones or carry a fixed cost per call:
      - GRU (torch's CPU GRU runs per-step aten ops): the engine's C++ sequence loop (ops.why_not is None)
        measured 0.2-0.9x in train steps and 0.35-0.9x in inference at batches 1-256, from 5 steps on (0.9x at
        T=5, B=1); a single step costs it 1.5-1.7x (a fixed cost per call), so below GRU_MIN_STEPS torch's kernel
        stays;
      - RNN: the same loop measured 0.3-0.9x in train steps at T=28-512 (1.2x at T=5; even, 0.98-1.16x, at
        B=256, T=100, H=256) and, with the recurrent products on packed weights, 0.3-0.8x in inference at
        T=16-512 and batches 1-256 (0.95x at T=16, B=1; 1.6-2.1x at T=1-5, B=1): from RNN_MIN_STEPS steps on;
      - LSTM with proj_size (oneDNN has no projection, torch runs its per-step aten loop): train steps 0.44-1.01x;
        inference 0.27-0.76x from 16 steps on (1.2-1.9x at T=1-5, B=1): from RNN_MIN_STEPS steps on;
      - LSTM train steps with lengths (`packed`: torch runs its packed-sequence kernel, not oneDNN's):
        the engine's C++ sequence loop is 0.21-0.87x;
      - LSTM single steps (T=1, as in generation): oneDNN's call costs 0.2-3.6 ms, the engine's
        matrix products 0.12-0.73 ms at B=1 (H=128-512), and they are even at B=64-128.
    Otherwise PyTorch's kernel wins or they are even, or the measurements are mixed (standard LSTM, whole batches,
    `impl="engine"` against oneDNN's kernel: train steps 0.7-1.05x and inference 0.8-1.06x at shapes A-D, but at
    batches 1-256 train steps 1.0-1.25x at T=28, H=128 and inference up to 1.2x at B=4-16: torch's kernel stays)."""
    if device_type != "cpu":
        return False
    kernel = native_kernel(step)
    sequence = ops.why_not(step, torch.device(device_type), dtype, steps) is None  # the C++ sequence kernels
    if kernel == "gru" and sequence and (steps is None or steps >= GRU_MIN_STEPS):
        return True
    long_enough = steps is None or steps >= RNN_MIN_STEPS
    if kernel in ("rnn_tanh", "rnn_relu") and sequence and long_enough:
        return True
    if kernel == "lstm" and step.proj_size > 0 and sequence and long_enough:
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


class Plan(NamedTuple):
    """What runs one call, and why (see the module docstring).

    impl: "native", "engine", "autograd" or "triton" (layers); "cell" (step(): torch's fused cell function) or
        "engine" (the cell's step); "scan" or "loop" (MinGRU/MinLSTM).
    sequence: how each sequence runs on the engine: "cpp", "triton" or "steps"; "native" when torch's kernel runs
        the whole stack; "-" where there is no sequence (step(), MinGRU/MinLSTM).
    reason: why this impl; detail: why this sequence path ("" where it is the fastest there is)."""

    impl: str
    sequence: str
    reason: str
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.impl}/{self.sequence}: {self.reason}" + (f"; {self.detail}" if self.detail else "")


def check_impl(impl: str, step: Step) -> str:
    """A layer's impl= at construction: 'triton' needs Triton (ImportError naming the package and its install
    command), 'native' a configuration torch.nn has (ValueError)."""
    if impl == "triton":
        triton_kernels.require()
    if impl == "native" and native_kernel(step) is None:
        raise ValueError(f"impl='native' needs a configuration torch.nn has; {step} is not one")
    return impl


def plan(impl: str, step: Step, device: torch.device, dtype: torch.dtype, batch: int, recurrent_dropout: float,
         training: bool, lengths: Tensor | None, recording: bool = True, steps: int | None = None) -> Plan:
    """The plan of one forward call of a layer: `impl` (the layer's impl=) resolved, and the sequence path the
    engine takes on tensors of this device and dtype (`recording`: whether autograd records the call, i.e. a
    backward pass will follow; `steps`: its time steps, if known). impl="triton" without Triton raises ImportError
    naming the package and the install command."""
    chosen, reason = _choose(impl, step, device, batch, recurrent_dropout, training, lengths, recording, steps,
                             dtype)
    if chosen == "native":
        return Plan("native", "native", reason)
    if chosen == "triton":
        if steps == 0 or batch == 0:
            return Plan("triton", "steps", reason, "an empty sequence: nothing to launch")
        return Plan("triton", "triton", reason)
    if chosen == "autograd":
        return Plan("autograd", "steps", reason, "impl='autograd' records the loop of steps")
    path, detail = _engine_path(step, device, dtype, steps)
    return Plan("engine", path, reason, detail)


def sequence_path(step, xp: Tensor, *tensors: Tensor) -> tuple[str, str]:
    """How the engine runs the sequence xp (T, B, G*H) of `step` with these states and parameters, for a caller
    without a Plan: ("cpp" | "steps", why not the C++ kernels or ""). (The Triton kernels run where a plan says
    so: impl="triton", or "auto" on CUDA.)"""
    if any(t.dtype != xp.dtype or t.device != xp.device for t in tensors):
        return "steps", "the tensors differ in dtype or device"
    return _engine_path(step, xp.device, xp.dtype, xp.shape[0])


def _engine_path(step: Step, device: torch.device, dtype: torch.dtype, steps: int | None) -> tuple[str, str]:
    reason = ops.why_not(step, device, dtype, steps)
    return ("steps", reason) if reason else ("cpp", "")


def choose(impl: str, step: Step, device: torch.device, batch: int, recurrent_dropout: float,
           training: bool, lengths: Tensor | None, recording: bool = True, steps: int | None = None) -> str:
    """`plan`'s impl alone: "native", "engine", "autograd" or "triton"."""
    return _choose(impl, step, device, batch, recurrent_dropout, training, lengths, recording, steps)[0]


def _choose(impl, step, device, batch, recurrent_dropout, training, lengths, recording, steps,
            dtype=torch.float32) -> tuple[str, str]:
    if impl in ("engine", "autograd"):
        return impl, f"impl={impl!r}"
    if impl == "triton":
        triton_kernels.require()
        return "triton", "impl='triton'"
    on_cuda = device.type == "cuda"
    if impl == "auto" and lengths is not None and torch.compiler.is_compiling():
        # torch.nn's packed sequences need the lengths as Python numbers, which a compiled graph has not; the
        # engine takes them as a tensor
        why = "under a compiler torch.nn's packed sequences cannot take the lengths (a tensor)"
        return _beyond_native(on_cuda, why)
    reason = why_not_native(step, recurrent_dropout, training, lengths, steps)
    if impl == "native":
        if reason:
            raise ValueError(f"impl='native' cannot run this layer: {reason}")
        return "native", "impl='native'"
    if not reason:
        if not engine_is_faster(device.type, step, batch, recording, steps, lengths is not None, dtype):
            return "native", "torch.nn has this configuration" + (" (cuDNN)" if on_cuda else "")
        reason = "torch.nn has it, but the engine measured faster here (dispatch.engine_is_faster)"
        return "engine", reason
    return _beyond_native(on_cuda, reason)


def _beyond_native(on_cuda: bool, reason: str) -> tuple[str, str]:
    """Where torch's kernel does not run: the Triton kernels on CUDA when Triton is importable, else the engine."""
    if on_cuda and triton_kernels.available():
        return "triton", f"{reason}; Triton is importable"
    if on_cuda:
        return "engine", f"{reason}; {triton_kernels.unavailable_reason()}: the engine's per-step PyTorch ops"
    return "engine", reason


def explain(step: Step, device_type: str) -> tuple[str, str]:
    """(the path impl="auto" takes for a train step of this cell on this device, batch 32, 16 steps, whole
    sequences, float32, no recurrent dropout; why), for `rnnkit info`."""
    chosen = plan("auto", step, torch.device(device_type), torch.float32, 32, 0.0, True, None, recording=True,
                  steps=16)
    why = chosen.reason.replace(f"for {step}", "for this variant")
    if chosen.impl == "native":
        why += " (oneDNN)" if device_type == "cpu" else ""
    elif chosen.impl == "engine" and device_type == "cpu":
        why += "; each sequence " + ("in one C++ call" if chosen.sequence == "cpp" else
                                     f"as a loop of steps ({chosen.detail})")
    return chosen.impl, why


_CELL_FUNCTIONS = {  # native kernel -> one step with PyTorch's fused cell function: (x, state, *weights) -> state
    "lstm": lambda x, s, *w: torch.lstm_cell(x, s, *w),
    "gru": lambda x, s, *w: (torch.gru_cell(x, s[0], *w),),
    "rnn_tanh": lambda x, s, *w: (torch.rnn_tanh_cell(x, s[0], *w),),
    "rnn_relu": lambda x, s, *w: (torch.rnn_relu_cell(x, s[0], *w),),
}


def plan_step(step: Step):
    """The plan of one time step of a layer (`step()`, as in generation), and the function that runs it:
    PyTorch's fused cell function (x, state, *weights in torch's order) -> state where the cell has one, else None
    (the cell's own step, whose gate math may run in C++: cells.LSTMStep.step)."""
    kernel = native_kernel(step)
    if kernel is not None and getattr(step, "proj_size", 0) == 0:
        return Plan("cell", "-", f"torch.{kernel}_cell computes this cell"), _CELL_FUNCTIONS[kernel]
    why = "torch has no cell function with a projection" if kernel else f"torch has no cell function for {step}"
    return Plan("engine", "-", why), None


def plan_minimal(mode: str, steps: int, device: torch.device, modes: tuple[str, ...]) -> Plan:
    """MinGRU/MinLSTM's forward: the log-space parallel scan or the step loop, for their `mode`."""
    if mode == "parallel":
        return Plan("scan", "-", "mode='parallel'") if steps > 0 else \
            Plan("loop", "-", "mode='parallel', but an empty sequence has nothing to scan")
    if mode == "sequential":
        return Plan("loop", "-", "mode='sequential'")
    if mode == "auto":  # torch's logcumsumexp is slow on CPU: there the loop wins
        if device.type == "cpu":
            return Plan("loop", "-", "mode='auto' on the CPU, where the loop measured 3-4x faster than the scan")
        if steps <= 1:
            return Plan("loop", "-", "mode='auto' with at most one step")
        return Plan("scan", "-", f"mode='auto' on {device.type}")
    raise ValueError(f"mode must be one of {', '.join(map(repr, modes))}; got {mode!r}")


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
