"""The C++ whole-sequence kernels (rnnkit.kernels.cpu.fused) as PyTorch operators, so that autograd, torch.compile,
torch.export and torch.jit.trace see one op per sequence (one direction of one layer) instead of a ctypes call:

    rnnkit::{cell}_sequence(xp, state0, params, mask, batch_sizes, source, *config) -> (out, *final, *kept)
        a train step's forward: out (T, B, P), the final states, and what the backward needs (`kept`);
    rnnkit::{cell}_sequence_backward(d_out, d_final, state0, params, mask, batch_sizes, out, kept, *config)
        -> (d_xp, d_state0, d_params): the explicit BPTT over the kept sequence, d_params those of
        `sequence_params(cell)`;
    rnnkit::{cell}_sequence_infer(x, state0, params, mask, batch_sizes, chunk, *config) -> (out, *final)
        inference, keeping nothing; with chunk > 0, x is the layer's input (T, B, I), projected `chunk` steps at a
        time inside the loop, else x is the projection xp (T, B, G*H);

for cell in lstm, gru, rnn. `config` is the cell's own fields (cells.LSTMStep, GRUStep, RNNStep: hidden_size, ...),
from which each op rebuilds its cell; `params` are one direction's parameters in the cell's order (the keys of
`Step.param_shapes`); `batch_sizes` is None or (T,) int64 as in rnnkit.engine.loop (rows sorted longest first);
`source`, the input xp was projected from (or None), is not read here: the double backward recomputes the loop
from it (loop.py registers the forward op's autograd formula). Kept tensors a configuration lacks are empty (0,).
Every op has a fake implementation that allocates its outputs without calling C++, for the compiler's tracing.

Called directly by the engine (not through the dispatcher: `dispatched`), the forward and backward kernels also
take `finished=False` for a cell that `splits_input`: xp is then its `input_product` (the layer-norm LSTM's
x W_ih^T), finished in the loop (its input layer norm and biases), kept (the forward's last kept tensor), d_xp is
that of xp, and the gradients of the parameters finish_input uses come from the backward (`sequence_params`).
"""
from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..kernels.cpu import fused
from .cells import GRUStep, LSTMStep, RNNStep, Step

CELLS = {LSTMStep: "lstm", GRUStep: "gru", RNNStep: "rnn"}
KEPT = {LSTMStep: ("gates", "c", "act_c", "h_new", "a", "stats", "hr"), GRUStep: ("gates", "extra", "hr"),
        RNNStep: ("hr",)}
VECTORS = {"weight_peephole", "ln_weight_hh", "ln_weight_c", "ln_bias_c"}  # see fused.lstm_sequence_backward


def config(step: Step) -> tuple:
    """The cell's fields, as the ops take them."""
    return tuple(getattr(step, f.name) for f in dataclasses.fields(step))


def why_not(step, device: torch.device, dtype: torch.dtype, steps: int | None) -> str | None:
    """Why the ops cannot run a sequence of `steps` steps of this cell on tensors of this device and dtype, or None
    if they can (asked by rnnkit.engine.dispatch, which decides)."""
    if type(step) not in CELLS:
        return f"{type(step).__name__} has no C++ sequence kernel"
    if device.type != "cpu":
        return f"the C++ sequence kernels run on the CPU, not {device.type}"
    if dtype not in (torch.float32, torch.float64):
        return f"the C++ sequence kernels take float32 and float64, not {dtype}"
    if steps == 0:
        return "an empty sequence (T = 0)"
    if not _built(dtype):
        return fused.unavailable_reason() or "PyTorch's CPU library exports no BLAS gemm the kernels can call"
    return None


@torch.compiler.assume_constant_result  # a compiler takes it as a constant rather than trace the build and lookup
def _built(dtype: torch.dtype) -> bool:
    return dtype in (torch.float32, torch.float64) and fused.sequence_available(dtype)


def sequence_params(step: Step, finished: bool = True) -> list[str]:
    """The parameters whose gradients the backward op returns, in the cell's order (the others are the input
    projection's, which autograd differentiates outside the op; `finished` False: its input_product's)."""
    if isinstance(step, LSTMStep):
        own = {"weight_hh", "weight_hr", "weight_peephole", "ln_weight_hh", "ln_weight_c", "ln_bias_c"}
        if not finished:
            own |= {"ln_weight_ih", "bias_ih", "bias_hh"}
    elif isinstance(step, GRUStep):
        own = {"weight_hh", "bias_hh"} if step.reset_after else {"weight_hh"}
    else:
        own = {"weight_hh"}
    return [name for name in step.param_shapes(0) if name in own]


def _params(step: Step, params) -> dict[str, Tensor]:
    return dict(zip(step.param_shapes(0), params))


def _ordered(step: Step, p: dict[str, Tensor]) -> list[Tensor]:
    """p's tensors in the cell's order, as the ops take them."""
    return [p[name] for name in step.param_shapes(0)]


def _kept_shapes(step: Step, T: int, B: int, masked: bool) -> dict[str, tuple | None]:
    """The shape of each kept tensor (None: this configuration has none), as fused.py allocates them."""
    H, P, GH = step.hidden_size, step.output_size, step.gates * step.hidden_size
    shapes = {"hr": (T, B, P) if masked else None}
    if isinstance(step, LSTMStep):
        ln = step.layer_norm
        shapes.update(gates=(T, B, GH), c=(T + 1, B, H), act_c=(T, B, H), h_new=(T, B, H) if step.proj_size else None,
                      a=(T, B, GH) if ln else None, stats=(T, B, fused.STATS) if ln else None)
    elif isinstance(step, GRUStep):
        shapes.update(gates=(T, B, GH), extra=(T, B, H))
    return shapes


def _final(q: fused.Sequence) -> list[Tensor]:
    """The final states as outputs of their own (the LSTM's c is a step of a buffer that is kept or discarded)."""
    return [s if s is q.h else s.clone() for s in q.final_states()]


def _slots(step: Step, p: dict, state0, mask, batch_sizes) -> dict:
    """The input slots of a kept fused.Sequence, from the op's inputs, as the forward call filled them."""
    slots = dict(batch_sizes=None if batch_sizes is None else batch_sizes.to(torch.int64).contiguous(),
                 w_hh=p["weight_hh"].contiguous(), mask=None if mask is None else mask.contiguous(),
                 h0=state0[0].contiguous())
    if isinstance(step, LSTMStep):
        slots.update(w_hr=p.get("weight_hr"), peep=p.get("weight_peephole"))
        if step.layer_norm:
            slots.update(ln_w_hh=p["ln_weight_hh"], ln_w_c=p["ln_weight_c"], ln_b_c=p.get("ln_bias_c"))
        return {k: v if v is None else v.contiguous() for k, v in slots.items()}
    if isinstance(step, GRUStep) and step.reset_after and step.bias:
        slots["b_hh"] = p["bias_hh"].contiguous()
    return slots


def _options(step: Step) -> dict:
    if isinstance(step, LSTMStep):
        return dict(cell="lstm", activation=step.activation, coupled=step.coupled)
    if isinstance(step, GRUStep):
        return dict(cell="gru", activation=step.activation, reset_after=step.reset_after)
    return dict(cell="rnn", activation=step.nonlinearity)


def _forward(step: Step, xp, state0, params, mask, batch_sizes, source, op: bool = True, finished: bool = True):
    """The forward op's computation (`source` is not read: the op takes it for its autograd formula). Called directly
    (op=False) by the engine, which keeps the results to itself, it skips what only an op's outputs need: memory of
    their own for the final states (the LSTM's final c is a step of the kept c) and zeros past each row's end in the
    kept tensors. None for what a configuration does not keep (see _as_op_outputs). `finished`: see the module's
    docstring."""
    q = step.fused_sequence(xp, tuple(state0), _params(step, params), batch_sizes, mask, True, clear=op,
                            finished=finished)
    return (q.out, *(_final(q) if op else q.final_states()), *(getattr(q, k) for k in KEPT[type(step)]),
            *(() if finished else (q.xp,)))


def _backward(step: Step, d_out, d_final, state0, params, mask, batch_sizes, out, kept, finished: bool = True):
    p = _params(step, params)
    shapes = _kept_shapes(step, 1, 1, mask is not None)
    tensors = {k: t for k, t in zip(KEPT[type(step)], kept) if shapes[k] is not None}
    slots = _slots(step, p, state0, mask, batch_sizes)
    if not finished:  # the input projection's last part is the loop's (_forward)
        ln_w_ih, b = step.finish_params(p)
        slots.update(xp=kept[-1], ln_w_ih=ln_w_ih.contiguous(), b=None if b is None else b.contiguous())
    # h, the final h, is read for its shape only: h_0's
    q = fused.Sequence(keep=True, **_options(step), **slots, out=out, h=state0[0], **tensors)
    d_xp, d_state0, grads = fused.sequence_backward(q, d_out, list(d_final))
    return d_xp, list(d_state0), [grads[n] for n in sequence_params(step, finished)]


def _infer(step: Step, x, state0, params, mask, batch_sizes, chunk, op: bool = True):
    q = step.fused_sequence(x, tuple(state0), _params(step, params), batch_sizes, mask, False, chunk)
    return (q.out, *(_final(q) if op else q.final_states()))


def _kept_fake(step: Step, xp: Tensor, mask) -> list[Tensor]:
    T, B = xp.shape[:2]
    shapes = _kept_shapes(step, T, B, mask is not None)
    return [xp.new_empty(shapes[k] or (0,)) for k in KEPT[type(step)]]


def _as_op_outputs(step: Step, suffix: str, result: tuple, like: Tensor) -> tuple:
    """A kernel's results as an op's outputs, whichever family computed them: the kept values a configuration lacks
    as empty tensors (an op returns no None), and the LSTM's vector parameters' gradients, views of one buffer in
    both families' backward, each as its own tensor (an op's outputs never alias each other)."""
    if suffix == "":
        return tuple(like.new_empty(0) if t is None else t for t in result)
    if suffix == "_backward":
        d_xp, d_state0, d_params = result
        return d_xp, d_state0, [g.clone() if n in VECTORS else g for n, g in zip(sequence_params(step), d_params)]
    return result


_DIRECT = {"": {"op": False}, "_infer": {"op": False}, "_backward": {}}  # the direct calls' arguments (see _forward)


def dispatched() -> bool:
    """Whether the ops must be called through PyTorch's dispatcher, where a compiler (torch.compile, torch.export),
    the TorchScript tracer or a Python dispatch mode (fake tensors, make_fx) sees them as one op each. Elsewhere the
    engine calls their implementations directly: the same functions, without the dispatcher's Python cost (some
    0.05 ms a call, 0.2 ms for the forward op with its autograd formula; the engine's own autograd.Function runs them
    then)."""
    return torch.compiler.is_compiling() or torch._C._get_tracing_state() is not None \
        or torch._C._len_torch_dispatch_stack() > 0


class Backend:
    """One family of whole-sequence kernels as custom ops, rnnkit::{prefix}{cell}_sequence, _sequence_backward and
    _sequence_infer for cell in lstm, gru, rnn, with the schemas of this module's docstring (the C++ kernels here,
    engine.triton's Triton kernels). `kernels` maps "", "_backward", "_infer" to the three implementations, each
    kernel(cell, *tensor arguments) (the forward and infer kernels also take op=False: called directly by the
    engine, see `_forward`), their results made op outputs by _as_op_outputs; `kept` names
    the forward op's kept outputs per cell kind and `kept_fake(cell, xp, mask)` allocates them for a compiler's
    tracing. The forward op's autograd formula is registered by rnnkit.engine.loop."""

    def __init__(self, prefix: str, kernels: dict, kept: dict, kept_fake, device_types):
        self.prefix, self.kernels, self.kept, self.kept_fake = prefix, kernels, kept, kept_fake
        for kind in CELLS:
            self._define(kind, device_types)

    def name(self, kind: type, suffix: str = "") -> str:
        return f"{self.prefix}{CELLS[kind]}_sequence{suffix}"

    def _define(self, kind: type, device_types) -> None:
        fields = ", ".join(f"{f.type} {f.name}" for f in dataclasses.fields(kind))
        states = ["Tensor h_n", "Tensor c_n"][:kind.num_states]
        kept = [f"Tensor {k}" for k in self.kept[kind]]
        inputs = "Tensor[] state0, Tensor[] params, Tensor? mask, Tensor? batch_sizes"

        def forward_fake(xp, state0, params, mask, batch_sizes, source, *cfg):
            step = kind(*cfg)
            T, B = xp.shape[:2]
            return (xp.new_empty(T, B, step.output_size), *(s.new_empty(s.shape) for s in state0),
                    *self.kept_fake(step, xp, mask))

        def backward_fake(d_out, d_final, state0, params, mask, batch_sizes, out, kept, *cfg):
            step = kind(*cfg)
            p = _params(step, params)
            T, B = out.shape[:2]
            return (d_out.new_empty(T, B, step.gates * step.hidden_size), [s.new_empty(s.shape) for s in state0],
                    [p[n].new_empty(p[n].shape) for n in sequence_params(step)])

        def infer_fake(x, state0, params, mask, batch_sizes, chunk, *cfg):
            step = kind(*cfg)
            T, B = x.shape[:2]
            return (x.new_empty(T, B, step.output_size), *(s.new_empty(s.shape) for s in state0))

        def implementation(suffix: str, arguments: int):
            """The op's implementation: the kernel, on the cell rebuilt from the fields after the tensor arguments."""
            def run(*args):
                step = kind(*args[arguments:])
                return _as_op_outputs(step, suffix, self.kernels[suffix](step, *args[:arguments]), args[0])
            return run

        for suffix, arguments, fake, schema in [
            ("", 6, forward_fake,
             f"(Tensor xp, {inputs}, Tensor? source, {fields}) -> ({', '.join(['Tensor out', *states, *kept])})"),
            ("_backward", 8, backward_fake,
             f"(Tensor d_out, Tensor[] d_final, {inputs}, Tensor out, Tensor[] kept, {fields}) "
             f"-> (Tensor d_xp, Tensor[] d_state0, Tensor[] d_params)"),
            ("_infer", 6, infer_fake,
             f"(Tensor x, {inputs}, int chunk, {fields}) -> ({', '.join(['Tensor out', *states])})"),
        ]:
            op = torch.library.custom_op(f"rnnkit::{self.name(kind, suffix)}",
                                         implementation(suffix, arguments), mutates_args=(),
                                         device_types=device_types, schema=schema)
            op.register_fake(fake)

    def op(self, step: Step, suffix: str = ""):
        return getattr(torch.ops.rnnkit, self.name(type(step), suffix))

    def _call(self, step: Step, suffix: str, *args, finished: bool = True):
        if dispatched():
            if not finished:
                raise ValueError("an input projection the loop finishes is for the kernels called directly")
            return self.op(step, suffix)(*args, *config(step))
        return self.kernels[suffix](step, *args, **_DIRECT[suffix], **({} if finished else {"finished": False}))

    def sequence(self, step: Step, xp: Tensor, state0: tuple, p: dict, batch_sizes: Tensor | None,
                 mask: Tensor | None, source: Tensor | None) -> tuple[Tensor, tuple[Tensor, ...]]:
        """A train step's sequence through the forward op and its autograd formula (loop.py): out, final states."""
        out, *rest = self.op(step)(xp, list(state0), _ordered(step, p), mask, batch_sizes, source, *config(step))
        return out, tuple(rest[:step.num_states])

    def forward(self, step: Step, xp: Tensor, state0: tuple, p: dict, batch_sizes: Tensor | None,
                mask: Tensor | None, finished: bool = True) -> tuple[Tensor, tuple[Tensor, ...], list[Tensor]]:
        """The forward op's computation, for a caller that does autograd's part itself: out, final states, kept.
        `finished` False: xp is the cell's input_product (see the module's docstring)."""
        out, *rest = self._call(step, "", xp, list(state0), _ordered(step, p), mask, batch_sizes, None,
                                finished=finished)
        return out, tuple(rest[:step.num_states]), list(rest[step.num_states:])

    def infer(self, step: Step, x: Tensor, state0: tuple, p: dict, batch_sizes: Tensor | None, mask: Tensor | None,
              chunk: int = 0) -> tuple[Tensor, tuple[Tensor, ...]]:
        """Inference (the infer op): x the projection xp (chunk 0), or the input projected inside (chunk > 0, where
        the kernels do that)."""
        out, *final = self._call(step, "_infer", x, list(state0), _ordered(step, p), mask, batch_sizes, chunk)
        return out, tuple(final)

    def backward(self, step: Step, d_out: Tensor, d_final: list, state0, p: dict, mask, batch_sizes, out: Tensor,
                 kept, finished: bool = True):
        """The backward op from the gradients of out and the final states: (d_xp, d_state0, {name: gradient} of
        sequence_params(step, finished))."""
        d_xp, d_state0, d_params = self._call(step, "_backward", d_out, list(d_final), list(state0),
                                              _ordered(step, p), mask, batch_sizes, out, list(kept), finished=finished)
        return d_xp, d_state0, dict(zip(sequence_params(step, finished), d_params))


CPU = Backend("", {"": _forward, "_backward": _backward, "_infer": _infer}, KEPT, _kept_fake, "cpu")
_op = CPU.op
