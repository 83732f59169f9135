"""The Triton kernels (rnnkit.kernels.triton) as rnnkit's custom ops, the engine's sequence path "triton":

    rnnkit::triton_{cell}_sequence, triton_{cell}_sequence_backward, triton_{cell}_sequence_infer

for cell in lstm, gru, rnn, with the schemas of the C++ kernels' ops (engine/ops.py, ops.Backend), so that the engine
runs both families the same way: in eager mode it calls the implementations directly; where a compiler, tracer or
dispatch mode watches, the ops, one per sequence, with the forward op's autograd formula (loop.py). The kept outputs
are what the kernels' backward needs beyond the op's inputs and `out`. The ops take any device: CUDA tensors, or CPU
tensors under Triton's interpreter (TRITON_INTERPRET=1, as the tests run them). Defining them imports no Triton; the
first call imports the kernels (ImportError naming the package and the install command where it is missing).
Everything else a layer does on this path (one step, the input projection, the double backward's recomputation under
autograd) is the cell's own.
"""
from __future__ import annotations

import importlib

import torch
from torch import Tensor

from . import ops
from .cells import GRUStep, LSTMStep, RNNStep, Step

# what each kernel's sequence call keeps for its backward, in its order (kernels/triton/*.py), and which of those the
# forward op returns (the rest are the op's inputs and `out`)
_SAVED = {LSTMStep: ("h0", "out", "w_hh", "w_hr", "mask", "peep", "ln_w_hh", "ln_w_c", "ln_b_c", "lengths", "gates",
                     "cs", "a", "stats", "h_new"),
          GRUStep: ("h0", "out", "w_hh", "b_hh", "mask", "lengths", "gates", "extra"),
          RNNStep: ("h0", "out", "w_hh", "mask", "lengths")}
KEPT = {LSTMStep: ("lengths", "gates", "cs", "a", "stats", "h_new"), GRUStep: ("lengths", "gates", "extra"),
        RNNStep: ("lengths",)}


def _kernels(step: Step):
    return importlib.import_module(f"rnnkit.kernels.triton.{ops.CELLS[type(step)]}")


def _inputs(step: Step, p: dict, state0, mask) -> dict:
    """The kernels' arguments that are the op's inputs, by their names in _SAVED."""
    named = {"h0": state0[0], "w_hh": p["weight_hh"], "mask": mask}
    if isinstance(step, LSTMStep):
        named.update(w_hr=p.get("weight_hr"), peep=p.get("weight_peephole"), ln_w_hh=p.get("ln_weight_hh"),
                     ln_w_c=p.get("ln_weight_c"), ln_b_c=p.get("ln_bias_c"))
    elif isinstance(step, GRUStep):
        named["b_hh"] = p.get("bias_hh") if step.reset_after else None  # hoisted into xp otherwise
    return named


def _options(step: Step, batch_sizes) -> dict:
    ragged = batch_sizes is not None
    if isinstance(step, LSTMStep):
        return {"coupled": step.coupled, "activation": step.activation, "ragged": ragged}
    if isinstance(step, GRUStep):
        return {"reset_after": step.reset_after, "activation": step.activation, "ragged": ragged}
    return {"nonlinearity": step.nonlinearity, "ragged": ragged}


def _launch(step: Step, xp: Tensor, state0, params, mask, batch_sizes, keep: bool):
    """One kernel launch over the sequence: out, final states, and with `keep` the kernel's saved values by name."""
    p = ops._params(step, params)
    sizes = None if batch_sizes is None else batch_sizes.tolist()
    named = _inputs(step, p, state0, mask)
    kernels = _kernels(step)
    if isinstance(step, LSTMStep):
        ln = (named["ln_w_hh"], named["ln_w_c"], named["ln_b_c"]) if step.layer_norm else None
        out, final, saved = kernels.lstm_sequence(xp, *state0, named["w_hh"], named["w_hr"], mask, sizes,
                                                  named["peep"], ln, step.coupled, step.activation, keep)
    elif isinstance(step, GRUStep):
        out, final, saved = kernels.gru_sequence(xp, *state0, named["w_hh"], named["b_hh"], mask, sizes,
                                                 step.reset_after, step.activation, keep)
    else:
        out, final, saved = kernels.rnn_sequence(xp, *state0, named["w_hh"], mask, sizes, step.nonlinearity, keep)
    return out, final, (dict(zip(_SAVED[type(step)], saved[0])) if keep else None)


def _forward(step: Step, xp, state0, params, mask, batch_sizes, source, op: bool = True):
    """The forward op's computation. Called directly (op=False) by the engine, which keeps the results to itself,
    it leaves the kept values past each row's end as the kernels left them (unwritten, never read); as an op's
    outputs they are zeros there, so that the op is a function of its inputs."""
    out, final, saved = _launch(step, xp, state0, params, mask, batch_sizes, keep=True)
    kept = [saved[k] for k in KEPT[type(step)]]
    if op and batch_sizes is not None:
        lengths = saved["lengths"].long()
        for name, t in zip(KEPT[type(step)], kept):
            if t is not None and name != "lengths":
                first = 1 if name == "cs" else 0  # cs[0] is c_0, cs[t + 1] the state after step t
                steps = torch.arange(t.shape[0], device=t.device).unsqueeze(1) - first  # (n, 1)
                t.masked_fill_((steps >= lengths.unsqueeze(0)).unsqueeze(-1), 0)
    return (out, *final, *kept)


def _backward(step: Step, d_out, d_final, state0, params, mask, batch_sizes, out, kept):
    p = ops._params(step, params)
    named = {**_inputs(step, p, state0, mask), "out": out,
             **{k: None if _absent(step, k) else t for k, t in zip(KEPT[type(step)], kept)}}
    saved = ([named[k] for k in _SAVED[type(step)]], _options(step, batch_sizes))
    backward = getattr(_kernels(step), f"{ops.CELLS[type(step)]}_sequence_backward")
    d_xp, d_state0, grads = backward(saved, d_out, *d_final)
    return d_xp, list(d_state0), [grads[n] for n in ops.sequence_params(step)]


def _absent(step: Step, name: str) -> bool:
    """Whether this configuration's kernels keep nothing under `name` (the op returns an empty tensor for it)."""
    if name in ("a", "stats"):
        return not step.layer_norm
    return name == "h_new" and not step.proj_size


def _infer(step: Step, x, state0, params, mask, batch_sizes, chunk, op: bool = True):
    out, final, _ = _launch(step, x, state0, params, mask, batch_sizes, keep=False)
    return (out, *final)


def _kept_fake(step: Step, xp: Tensor, mask) -> list[Tensor]:
    """The kept outputs' shapes and dtypes as the kernels allocate them, for a compiler's tracing."""
    T, B = xp.shape[:2]
    H, GH = step.hidden_size, step.gates * step.hidden_size
    lengths = xp.new_empty(B, dtype=torch.int32)
    if isinstance(step, LSTMStep):
        ln, acc = step.layer_norm, torch.float64 if xp.dtype == torch.float64 else torch.float32
        return [lengths, xp.new_empty(T, B, GH), xp.new_empty(T + 1, B, H), xp.new_empty((T, B, GH) if ln else (0,)),
                xp.new_empty((T, B, 4) if ln else (0,), dtype=acc if ln else xp.dtype),
                xp.new_empty((T, B, H) if step.proj_size else (0,))]
    if isinstance(step, GRUStep):
        return [lengths, xp.new_empty(T, B, GH), xp.new_empty(T, B, H)]
    return [lengths]


TRITON = ops.Backend("triton_", {"": _forward, "_backward": _backward, "_infer": _infer}, KEPT, _kept_fake, None)
